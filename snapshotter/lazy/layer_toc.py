"""Layers that carry their own TOC: eStargz (``lazy.estargz``) and zstd:chunked
(``lazy.zstd_chunked``).  Both write, beside an ordinary compressed tar, a JSON table of
contents in CRFS's format (``{"version": 1, "entries": [...]}``) and compress each file's
content (or each chunk of a large file) as a gzip member or zstd frame of its own, so
that one file is read with one closed Range request and no pass over the layer.

This module holds what the two formats share: the TOC's entries turned into tar headers
(then into the store's toc by unpack's own rules, ``store.unpack.toc_from_headers``:
confinement, whiteouts, opaque markers, hardlinks), each file's chunks and where they lie
in the blob, and ``Reader``, which reads a file chunk by verified chunk.

Trust: the layer descriptor names the TOC's digest in an annotation, so the manifest
vouches for the TOC; each chunk's ``chunkDigest`` (or the file's ``digest`` for a file in
one piece) vouches for its bytes, checked before a byte is used.  What a lazy read through
a TOC cannot check is the layer's digest and diff_id: those cover the whole blob.
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
from decimal import Decimal
from typing import TYPE_CHECKING

import zstandard

from ..errors import DigestMismatch, UnsafeArchive
from ..store.toc import Toc
from ..store.unpack import toc_from_headers
from .seek_index import file_blocks

if TYPE_CHECKING:
    from .layers import RangeSource

ESTARGZ = "eStargz"
ZSTD_CHUNKED = "zstd:chunked"
# The version of what ``parse_toc`` makes of a TOC: lazy views cache their merged tree by it
# (``view.tree.lazy_merge_key``), so bump it whenever the toc a TOC gives changes.
TOC_PARSER_VERSION = 1

_TYPES = {
    "dir": tarfile.DIRTYPE,
    "reg": tarfile.REGTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a regular file, compressed on its own (a gzip member or zstd frames)."""

    offset: int  # where its compressed bytes start in the blob
    end: int  # where they end (exclusive)
    chunk_offset: int  # where the chunk starts in the file
    size: int
    inner_offset: int  # where the chunk starts in the decompressed range (eStargz packs)
    digest: str  # "sha256:..." of the chunk's bytes
    # A hole (zstd:chunked's chunkType "zeros"): zeros, read from nowhere (writers may
    # leave the zeros' frames in the blob, or not; the TOC alone says it is a hole).
    zeros: bool = False


@dataclass(frozen=True, slots=True)
class TocIndex:
    """A layer's toc and where each file's chunks lie, from the TOC the layer carries."""

    format: str  # ESTARGZ or ZSTD_CHUNKED
    toc: Toc
    toc_offset: int  # where the TOC starts in the blob: no file content lies past it
    chunks: Mapping[int, tuple[Chunk, ...]]  # toc inode -> chunks in file order
    toc_bytes: int  # bytes fetched to read the TOC (footer included)

    @property
    def compression(self) -> str:
        return "gzip" if self.format == ESTARGZ else "zstd"


def parse_toc(
    toc_json: bytes, toc_offset: int, diff_id: str, what: str, fmt: str
) -> tuple[Toc, dict[int, tuple[Chunk, ...]]]:
    """The toc and chunks the TOC JSON describes, or UnsafeArchive for a TOC a layer
    could not hold (names escaping the layer, chunks that leave gaps or lie past the TOC,
    unknown entry types).

    Where chunks end: eStargz gives only where each member starts (a chunk's member ends
    where the next one, or the TOC, starts); zstd:chunked gives a file's ``endOffset``,
    and a chunk ends at its own ``endOffset`` where it has one, else where the file's next
    data chunk starts (a hole, ``zeros``, may have no range of its own)."""
    try:
        doc = json.loads(toc_json)
    except ValueError as exc:
        raise UnsafeArchive(f"{what}: {fmt} TOC is not JSON ({exc})") from exc
    entries = doc.get("entries") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UnsafeArchive(f"{what}: {fmt} TOC has no list of entries")
    fields = _Fields(what, fmt)
    starts: list[int] = []
    if fmt == ESTARGZ:
        starts = sorted({fields.number(e, "offset") for e in entries if e.get("offset")})
        if starts and starts[-1] >= toc_offset:
            raise UnsafeArchive(f"{what}: {fmt} TOC names content at or after the TOC")
        starts.append(toc_offset)

    headers: list[tarfile.TarInfo] = []
    pieces: dict[int, list[tuple[Mapping[str, object], int]]] = {}  # id(header) -> entries
    ends: dict[int, int] = {}  # id(header) -> the file's endOffset (zstd:chunked)
    digests: dict[int, str] = {}
    last_file: tarfile.TarInfo | None = None
    for e in entries:
        kind = fields.text(e, "type")
        if kind == "chunk":
            if last_file is None or fields.text(e, "name") != last_file.name:
                raise UnsafeArchive(f"{what}: {fmt} chunk entry follows no file of its name")
            pieces[id(last_file)].append((e, last_file.size))
            continue
        tar_type = _TYPES.get(kind)
        if tar_type is None:
            raise UnsafeArchive(f"{what}: {fmt} TOC entry of unknown type {kind!r}")
        info = fields.header(e, tar_type)
        headers.append(info)
        last_file = None
        if tar_type == tarfile.REGTYPE and info.size > 0:
            pieces[id(info)] = [(e, info.size)]
            digests[id(info)] = fields.text(e, "digest")
            ends[id(info)] = fields.number(e, "endOffset")
            last_file = info

    def chunk(e: Mapping[str, object], file_size: int, end: int) -> Chunk:
        offset = fields.number(e, "offset")
        chunk_offset = fields.number(e, "chunkOffset")
        size = fields.number(e, "chunkSize") or file_size - chunk_offset
        digest = fields.text(e, "chunkDigest") or fields.text(e, "digest")
        kind = fields.text(e, "chunkType")
        if kind not in ("", "zeros"):
            raise UnsafeArchive(f"{what}: {fmt} chunk of unknown type {kind!r}")
        zeros = kind == "zeros"
        if (
            not digest.startswith("sha256:")
            or chunk_offset + size > file_size
            or size <= 0
            or not (zeros or offset < end <= toc_offset)
        ):
            raise UnsafeArchive(f"{what}: {fmt} chunk of {e.get('name')!r} is not usable")
        inner = fields.number(e, "innerOffset")
        return Chunk(offset, end, chunk_offset, size, inner, digest, zeros)

    file_chunks: dict[int, tuple[Chunk, ...]] = {}
    for info in headers:
        listed = pieces.get(id(info))
        if listed is None:
            continue
        made: list[Chunk] = []
        for k, (e, size) in enumerate(listed):
            if fmt == ESTARGZ:
                offset = fields.number(e, "offset")
                end = starts[bisect.bisect_right(starts, offset)] if offset < toc_offset else 0
            else:  # its own endOffset, else where the file's next data chunk starts
                end = fields.number(e, "endOffset") if k else 0
                following = (f for f, _ in listed[k + 1 :] if f.get("chunkType") != "zeros")
                nxt = next(following, None)
                if not end:
                    end = fields.number(nxt, "offset") if nxt is not None else ends[id(info)]
            made.append(chunk(e, size, end))
        covered = 0
        for piece in made:
            if piece.chunk_offset != covered:
                raise UnsafeArchive(f"{what}: {fmt} chunks of {info.name!r} leave a gap")
            covered += piece.size
        if covered != info.size:
            raise UnsafeArchive(f"{what}: {fmt} chunks of {info.name!r} cover {covered} bytes")
        file_chunks[id(info)] = tuple(made)

    def meta(info: tarfile.TarInfo) -> tuple[str, int]:
        return digests.get(id(info), ""), file_blocks(info.size)

    toc, files = toc_from_headers(headers, diff_id, what, meta)
    return toc, {inode: file_chunks[id(info)] for inode, info in files.items()}


class _Fields:
    """Typed reads of TOC entry fields, each failure one line naming the format."""

    def __init__(self, what: str, fmt: str):
        self.what = what
        self.fmt = fmt

    def bad(self, key: str, value: object) -> UnsafeArchive:
        return UnsafeArchive(f"{self.what}: {self.fmt} TOC entry has a bad {key!r}: {value!r}")

    def number(self, entry: Mapping[str, object], key: str) -> int:
        value = entry.get(key, 0)
        if type(value) is not int or value < 0:  # (a bool is not an int here)
            raise self.bad(key, value)
        return value

    def text(self, entry: Mapping[str, object], key: str) -> str:
        value = entry.get(key, "")
        if type(value) is not str:
            raise self.bad(key, value)
        return value

    def header(self, entry: Mapping[str, object], kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.text(entry, "name"))
        info.type = kind
        info.size = self.number(entry, "size") if kind == tarfile.REGTYPE else 0
        info.mode = self.number(entry, "mode") & 0o7777
        info.uid = self.number(entry, "uid")
        info.gid = self.number(entry, "gid")
        info.linkname = self.text(entry, "linkName")
        info.devmajor = self.number(entry, "devMajor")
        info.devminor = self.number(entry, "devMinor")
        pax: dict[str, str] = {}
        modtime = self.text(entry, "modtime")
        if modtime:
            seconds, fraction = self._time(modtime)
            info.mtime = seconds
            if fraction:
                pax["mtime"] = str(Decimal(seconds) + Decimal("0." + fraction))
        xattrs = entry.get("xattrs") or {}
        if not isinstance(xattrs, dict):
            raise self.bad("xattrs", xattrs)
        for name, value in xattrs.items():
            try:
                raw = base64.b64decode(str(value), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise UnsafeArchive(
                    f"{self.what}: {self.fmt} TOC xattr {name!r} is not base64"
                ) from exc
            pax["SCHILY.xattr." + str(name)] = raw.decode("utf-8", "surrogateescape")
        info.pax_headers = pax
        return info

    def _time(self, text: str) -> tuple[int, str]:
        """(whole seconds since the epoch, fraction digits) of an RFC 3339 time, exactly
        (Go writes up to nine fraction digits; a float would lose them)."""
        head, dot, rest = text.partition(".")
        fraction = ""
        if dot:
            digits = len(rest) - len(rest.lstrip("0123456789"))
            fraction, rest = rest[:digits], rest[digits:]
            if not fraction:
                raise self.bad("modtime", text)
        try:
            when = datetime.datetime.fromisoformat((head + rest).replace("Z", "+00:00"))
        except ValueError as exc:
            raise self.bad("modtime", text) from exc
        if when.tzinfo is None:
            raise self.bad("modtime", text)
        epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
        delta = when - epoch
        return delta.days * 86400 + delta.seconds, fraction.rstrip("0")


def toc_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


READAHEAD_START = 128 * 1024  # the first readahead window, once reads go in blob order
READAHEAD_MAX = 4 << 20  # the largest (compressed bytes, one request)
SEQUENTIAL_GAP = 64 * 1024  # how far past the last fetch a read still counts as "next"
KEEP_BYTES = 32 << 20  # decompressed chunks kept per reader


class Reader:
    """Reads files of one layer through its TOC, chunk by verified chunk.

    Each chunk is its own compressed range, so reading file after file would cost a
    request per file (a tree walk of a Debian image through zstd:chunked: 11,483 requests).
    Reads that go on where the last fetch ended (in blob order, give or take the headers
    between files) are taken as sequential: the next fetch then also takes the chunks that
    follow, in one request, in a window that doubles from 128 KiB to 4 MiB; any other read
    fetches its chunk alone and starts over.  Chunks fetched are kept, decompressed and
    checked, up to ``keep_bytes`` (so a 128 KiB read in a 4 MiB chunk does not fetch it 32
    times).  A chunk that fails its check is never kept; one read ahead that fails is only
    dropped (its own read will fail, if it comes).  Safe to share between threads
    (``lazy.layers.ContentReader``)."""

    def __init__(self, index: TocIndex, source: RangeSource, keep_bytes: int = KEEP_BYTES):
        self.index = index
        self.source = source
        self._keep_bytes = keep_bytes
        self._kept = 0
        self._chunks: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._zero_digests: dict[int, str] = {}
        self._order = sorted(
            {
                (c.offset, c.inner_offset): c
                for cs in index.chunks.values()
                for c in cs
                if not c.zeros
            }.values(),
            key=lambda c: (c.offset, c.inner_offset),
        )
        self._starts = [(c.offset, c.inner_offset) for c in self._order]
        self._fetched_to = -1  # where the last fetch ended in the blob
        self._window = 0
        self.fetches = 0  # Range requests made, for tests and reports

    def read(self, inode: int, size: int, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` of the file with toc inode ``inode`` (``size``
        bytes long), as ``pread`` gives them."""
        out = bytearray()
        end = min(size, offset + length)
        for piece in self.index.chunks.get(inode, ()):
            lo, hi = piece.chunk_offset, piece.chunk_offset + piece.size
            if hi <= offset or lo >= end:
                continue
            first, last = max(offset, lo) - lo, min(end, hi) - lo
            if piece.zeros:  # (only the zeros asked for: a hole may be megabytes)
                self._check_hole(piece)
                out += bytes(last - first)
                continue
            out += self._chunk(piece)[first:last]
        return bytes(out)

    def _chunk(self, piece: Chunk) -> bytes:
        key = (piece.offset, piece.inner_offset)
        with self._lock:
            data = self._chunks.get(key)
            if data is not None:
                self._chunks.move_to_end(key)
                return data
            group = self._group(piece)
        first, last = group[0].offset, max(c.end for c in group)
        packed = self.source.read_range(first, last - 1)
        self.fetches += 1
        found: dict[tuple[int, int], bytes] = {}
        for chunk in group:
            try:
                found[(chunk.offset, chunk.inner_offset)] = self._verified(chunk, packed, first)
            except DigestMismatch:
                if chunk is group[0]:
                    raise
        with self._lock:
            for k, value in found.items():
                if k not in self._chunks:
                    self._chunks[k] = value
                    self._kept += len(value)
            while self._kept > self._keep_bytes and len(self._chunks) > 1:
                self._kept -= len(self._chunks.popitem(last=False)[1])
        return found[key]

    def _check_hole(self, piece: Chunk) -> None:
        """A hole's digest must be that of its zeros (hashed once per size)."""
        with self._lock:
            known = self._zero_digests.get(piece.size)
        if known is None:
            known = toc_digest(bytes(piece.size))
            with self._lock:
                self._zero_digests[piece.size] = known
        if known != piece.digest:
            raise DigestMismatch(
                f"{self.index.format} layer: a hole of {piece.size} bytes has digest {known}, "
                f"its TOC says {piece.digest}"
            )

    def _group(self, piece: Chunk) -> list[Chunk]:
        """The chunks one request fetches for ``piece``: it alone, or, for a read that
        follows the last fetch, it and those after it within the readahead window (called
        under the lock)."""
        sequential = 0 <= piece.offset - self._fetched_to <= SEQUENTIAL_GAP
        self._window = min(2 * self._window or READAHEAD_START, READAHEAD_MAX) if sequential else 0
        at = bisect.bisect_left(self._starts, (piece.offset, piece.inner_offset))
        group = [piece]
        for chunk in self._order[at + 1 :]:
            if chunk.end - piece.offset > self._window:
                break
            if (chunk.offset, chunk.inner_offset) not in self._chunks:
                group.append(chunk)
        self._fetched_to = max(c.end for c in group)
        return group

    def _verified(self, chunk: Chunk, packed: bytes, first: int) -> bytes:
        what = f"{self.index.format} layer"
        want = chunk.inner_offset + chunk.size
        member = packed[chunk.offset - first : chunk.end - first]
        try:
            plain = decompress_at_most(self.index.compression, member, want)
        except (zlib.error, zstandard.ZstdError) as exc:
            raise DigestMismatch(
                f"{what}: chunk at {chunk.offset} is not {self.index.compression} ({exc})"
            ) from exc
        data = plain[chunk.inner_offset : want]
        actual = toc_digest(data)
        if actual != chunk.digest:
            raise DigestMismatch(
                f"{what}: chunk at {chunk.offset} has digest {actual}, its TOC says {chunk.digest}"
            )
        return data


def decompress_at_most(compression: str, packed: bytes, want: int) -> bytes:
    """At most ``want`` bytes (hostile bytes may expand without bound) of a gzip member
    or of zstd frames; raises ``zlib.error`` or ``zstandard.ZstdError``."""
    if compression == "gzip":
        return zlib.decompressobj(31).decompress(packed, want)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(packed), read_across_frames=True)
    out = bytearray()
    while len(out) < want:
        piece = reader.read(want - len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


__all__ = [
    "ESTARGZ",
    "ZSTD_CHUNKED",
    "Chunk",
    "Reader",
    "TocIndex",
    "decompress_at_most",
    "parse_toc",
    "toc_digest",
]
