"""eStargz layers, read through the TOC they carry: no indexing pass, one request for the TOC.

An eStargz blob (containerd/stargz-snapshotter, docs/estargz.md) is a gzip tar in which
every file's content starts a gzip member of its own (a large file is cut into chunks,
each its own member), followed, after the tar's end, by the TOC (``stargz.index.json``,
a tar entry in its own member) and a 51-byte footer: an empty gzip member whose extra
field holds ``%016xSTARGZ``, the TOC's offset in the blob.

Trust: the layer descriptor's annotation ``containerd.io/snapshot/stargz/toc.digest`` is
the sha256 of the TOC's JSON, so the manifest vouches for the TOC; each chunk's
``chunkDigest`` (the sha256 of its uncompressed bytes) in the TOC vouches for the chunk,
and every chunk is checked before a byte of it is used.  A layer without the annotation
is not read through its TOC (nothing would tie the TOC to the image).  What a lazy read
cannot check is the layer's digest and diff_id: those cover the whole blob.

The TOC gives what a tar header gives, and its entries go through the store's own layer
rules (``store.unpack.toc_from_headers``: confinement, whiteouts, opaque markers,
hardlinks), so the merged tree is built exactly as for a pulled layer.  Two things the
TOC cannot say: mtimes are whole seconds (RFC 3339 without fraction), and the tar's own
PAX records beyond xattrs are not kept.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import datetime
import hashlib
import io
import json
import tarfile
import threading
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ..errors import DigestMismatch, UnsafeArchive
from ..store.toc import Toc
from ..store.unpack import toc_from_headers
from .seek_index import file_blocks


class RangeSource(Protocol):
    """A blob read by closed ranges (lazy.layers.RangeSource)."""

    @property
    def size(self) -> int: ...

    def read_range(self, first: int, last: int) -> bytes: ...


FOOTER_SIZE = 51
TOC_JSON = "stargz.index.json"
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
TAIL_READ = 512 * 1024  # the tail asked for first: the footer and, usually, the whole TOC
MAX_TOC = 64 << 20  # bytes of TOC JSON (or of its member) accepted
_MAGIC = b"STARGZ"

_TYPES = {
    "dir": tarfile.DIRTYPE,
    "reg": tarfile.REGTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def footer_toc_offset(footer: bytes) -> int | None:
    """The TOC offset an eStargz footer names, or None when ``footer`` is none: a gzip
    header with FEXTRA, the extra subfield ``SG`` of 22 bytes ``%016xSTARGZ``, and an
    empty deflate stream."""
    if len(footer) != FOOTER_SIZE or footer[:4] != b"\x1f\x8b\x08\x04":
        return None
    if footer[10:16] != b"\x1a\x00SG\x16\x00" or footer[32:38] != _MAGIC:
        return None
    try:
        return int(footer[16:32], 16)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a regular file, in a gzip member of its own (or shared, packed)."""

    offset: int  # where its member starts in the blob
    end: int  # where the member ends (the next member's start)
    chunk_offset: int  # where the chunk starts in the file
    size: int
    inner_offset: int  # where the chunk starts in the member's uncompressed bytes
    digest: str  # "sha256:..." of the chunk's bytes


@dataclass(frozen=True, slots=True)
class EStargzIndex:
    """A layer's toc and where each file's chunks lie, from the layer's own TOC."""

    toc: Toc
    toc_offset: int
    chunks: Mapping[int, tuple[Chunk, ...]]  # toc inode -> chunks in file order
    toc_bytes: int  # bytes fetched to read the TOC (footer included)


def read_index(
    source: RangeSource, diff_id: str, toc_digest: str | None, what: str
) -> EStargzIndex | str:
    """The layer's index from its TOC, or why it cannot be read that way (not eStargz, no
    TOC digest annotation).  One closed Range request of the tail (two for a TOC larger
    than ``TAIL_READ``).  A TOC that does not match its digest, or that a layer could not
    hold, raises (DigestMismatch, UnsafeArchive)."""
    size = source.size
    if size < FOOTER_SIZE:
        return "too small for an eStargz footer"
    first = max(0, size - TAIL_READ)
    tail = source.read_range(first, size - 1)
    fetched = len(tail)
    toc_offset = footer_toc_offset(tail[-FOOTER_SIZE:])
    if toc_offset is None:
        return "no eStargz footer"
    if toc_digest is None:
        return f"no {TOC_DIGEST_ANNOTATION} annotation to check its TOC against"
    if not 0 <= toc_offset <= size - FOOTER_SIZE or size - FOOTER_SIZE - toc_offset > MAX_TOC:
        raise UnsafeArchive(f"{what}: eStargz footer points outside the blob ({toc_offset})")
    if toc_offset < first:
        head = source.read_range(toc_offset, first - 1)
        fetched += len(head)
        tail = head + tail
        first = toc_offset
    member = tail[toc_offset - first : len(tail) - FOOTER_SIZE]
    toc_json = _toc_json(member, what)
    actual = "sha256:" + hashlib.sha256(toc_json).hexdigest()
    if actual != toc_digest:
        raise DigestMismatch(
            f"{what}: eStargz TOC has digest {actual}, the manifest says {toc_digest}"
        )
    toc, chunks = _index(toc_json, toc_offset, diff_id, what)
    return EStargzIndex(toc, toc_offset, chunks, fetched)


def layer_index(
    annotations: Mapping[str, str], source: RangeSource, diff_id: str, what: str
) -> EStargzIndex | None:
    """The index of a layer whose descriptor names an eStargz TOC digest, read from its
    TOC; None for any other layer (or one whose blob has no eStargz footer after all: it
    is then indexed or fetched like any gzip layer)."""
    toc_digest = annotations.get(TOC_DIGEST_ANNOTATION)
    if toc_digest is None:
        return None
    found = read_index(source, diff_id, toc_digest, what)
    return found if isinstance(found, EStargzIndex) else None


def _toc_json(member: bytes, what: str) -> bytes:
    """The JSON of the TOC member: one tar entry named stargz.index.json, gzipped."""
    try:
        inflater = zlib.decompressobj(31)
        tar = inflater.decompress(member, MAX_TOC + 4096)
        if inflater.unconsumed_tail:
            raise UnsafeArchive(f"{what}: eStargz TOC larger than {MAX_TOC} bytes")
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
            info = tf.next()
            if info is None or info.name != TOC_JSON or not info.isfile():
                raise UnsafeArchive(f"{what}: eStargz TOC member holds no {TOC_JSON}")
            data = tf.extractfile(info)
            assert data is not None
            return data.read()
    except (zlib.error, tarfile.TarError, EOFError) as exc:
        raise UnsafeArchive(f"{what}: eStargz TOC is not a gzip tar ({exc})") from exc


def _number(entry: Mapping[str, object], key: str, what: str) -> int:
    value = entry.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UnsafeArchive(f"{what}: eStargz TOC entry has a bad {key!r}: {value!r}")
    return value


def _text(entry: Mapping[str, object], key: str, what: str) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise UnsafeArchive(f"{what}: eStargz TOC entry has a bad {key!r}: {value!r}")
    return value


def _header(entry: Mapping[str, object], kind: bytes, what: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(_text(entry, "name", what))
    info.type = kind
    info.size = _number(entry, "size", what) if kind == tarfile.REGTYPE else 0
    info.mode = _number(entry, "mode", what) & 0o7777
    info.uid = _number(entry, "uid", what)
    info.gid = _number(entry, "gid", what)
    info.linkname = _text(entry, "linkName", what)
    info.devmajor = _number(entry, "devMajor", what)
    info.devminor = _number(entry, "devMinor", what)
    modtime = _text(entry, "modtime", what)
    if modtime:
        try:
            when = datetime.datetime.fromisoformat(modtime.replace("Z", "+00:00"))
        except ValueError as exc:
            raise UnsafeArchive(f"{what}: eStargz TOC entry has a bad modtime {modtime!r}") from exc
        info.mtime = int(when.timestamp())
    xattrs = entry.get("xattrs") or {}
    if not isinstance(xattrs, dict):
        raise UnsafeArchive(f"{what}: eStargz TOC entry has bad xattrs")
    pax: dict[str, str] = {}
    for name, value in xattrs.items():
        try:
            raw = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise UnsafeArchive(f"{what}: eStargz TOC xattr {name!r} is not base64") from exc
        pax["SCHILY.xattr." + str(name)] = raw.decode("utf-8", "surrogateescape")
    info.pax_headers = pax
    return info


def _index(
    toc_json: bytes, toc_offset: int, diff_id: str, what: str
) -> tuple[Toc, dict[int, tuple[Chunk, ...]]]:
    try:
        doc = json.loads(toc_json)
    except ValueError as exc:
        raise UnsafeArchive(f"{what}: eStargz TOC is not JSON ({exc})") from exc
    entries = doc.get("entries") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UnsafeArchive(f"{what}: eStargz TOC has no list of entries")
    # Member starts, to know where each member ends.
    starts = sorted({_number(e, "offset", what) for e in entries if e.get("offset")})
    starts.append(toc_offset)
    if starts[-2:-1] and starts[-2] >= toc_offset:
        raise UnsafeArchive(f"{what}: eStargz TOC names content at or after the TOC")

    def chunk(e: Mapping[str, object], file_size: int) -> Chunk:
        offset = _number(e, "offset", what)
        at = bisect.bisect_right(starts, offset)
        chunk_offset = _number(e, "chunkOffset", what)
        size = _number(e, "chunkSize", what) or file_size - chunk_offset
        digest = _text(e, "chunkDigest", what) or _text(e, "digest", what)
        if not digest.startswith("sha256:") or chunk_offset + size > file_size or size <= 0:
            raise UnsafeArchive(f"{what}: eStargz chunk of {e.get('name')!r} is not usable")
        return Chunk(
            offset, starts[at], chunk_offset, size, _number(e, "innerOffset", what), digest
        )

    headers: list[tarfile.TarInfo] = []
    file_chunks: dict[int, list[Chunk]] = {}  # id(header) -> chunks
    digests: dict[int, str] = {}
    last_file: tuple[tarfile.TarInfo, int] | None = None
    for e in entries:
        kind = _text(e, "type", what)
        if kind == "chunk":
            if last_file is None or _text(e, "name", what) != last_file[0].name:
                raise UnsafeArchive(f"{what}: eStargz chunk entry follows no file of its name")
            file_chunks[id(last_file[0])].append(chunk(e, last_file[1]))
            continue
        tar_type = _TYPES.get(kind)
        if tar_type is None:
            raise UnsafeArchive(f"{what}: eStargz TOC entry of unknown type {kind!r}")
        info = _header(e, tar_type, what)
        headers.append(info)
        last_file = None
        if tar_type == tarfile.REGTYPE and info.size > 0:
            file_chunks[id(info)] = [chunk(e, info.size)]
            digests[id(info)] = _text(e, "digest", what)
            last_file = (info, info.size)
    for info in headers:
        pieces = file_chunks.get(id(info))
        if pieces is None:
            continue
        covered = 0
        for piece in pieces:
            if piece.chunk_offset != covered:
                raise UnsafeArchive(f"{what}: eStargz chunks of {info.name!r} leave a gap")
            covered += piece.size
        if covered != info.size:
            raise UnsafeArchive(f"{what}: eStargz chunks of {info.name!r} cover {covered} bytes")

    def meta(info: tarfile.TarInfo) -> tuple[str, int]:
        return digests.get(id(info), ""), file_blocks(info.size)

    toc, files = toc_from_headers(headers, diff_id, what, meta)
    return toc, {inode: tuple(file_chunks[id(info)]) for inode, info in files.items()}


class Reader:
    """Reads files of one eStargz layer, chunk by verified chunk, keeping the last few
    chunks (a 128 KiB read in a 4 MiB chunk would otherwise fetch it 32 times).  Safe to
    share between threads."""

    def __init__(self, index: EStargzIndex, source: RangeSource, keep: int = 16):
        self.index = index
        self.source = source
        self._keep = keep
        self._chunks: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.fetches = 0  # Range requests made, for tests and reports

    def read(self, inode: int, size: int, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` of the file with toc inode ``inode`` (``size``
        bytes long), as ``pread`` gives them (``lazy.layers.ContentReader``)."""
        what = "eStargz layer"
        out = bytearray()
        end = min(size, offset + length)
        for piece in self.index.chunks.get(inode, ()):
            lo, hi = piece.chunk_offset, piece.chunk_offset + piece.size
            if hi <= offset or lo >= end:
                continue
            data = self._chunk(piece, what)
            out += data[max(offset, lo) - lo : min(end, hi) - lo]
        return bytes(out)

    def _chunk(self, piece: Chunk, what: str) -> bytes:
        key = (piece.offset, piece.inner_offset)
        with self._lock:
            data = self._chunks.get(key)
            if data is not None:
                self._chunks.move_to_end(key)
                return data
        member = self.source.read_range(piece.offset, piece.end - 1)
        self.fetches += 1
        try:
            inflater = zlib.decompressobj(31)
            plain = inflater.decompress(member, piece.inner_offset + piece.size)
        except zlib.error as exc:
            raise DigestMismatch(f"{what}: chunk at {piece.offset} is not gzip ({exc})") from exc
        data = plain[piece.inner_offset : piece.inner_offset + piece.size]
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != piece.digest:
            raise DigestMismatch(
                f"{what}: chunk at {piece.offset} has digest {actual}, its TOC says {piece.digest}"
            )
        with self._lock:
            self._chunks[key] = data
            while len(self._chunks) > self._keep:
                self._chunks.popitem(last=False)
        return data


__all__ = [
    "FOOTER_SIZE",
    "TOC_DIGEST_ANNOTATION",
    "Chunk",
    "EStargzIndex",
    "Reader",
    "footer_toc_offset",
    "layer_index",
    "read_index",
]
