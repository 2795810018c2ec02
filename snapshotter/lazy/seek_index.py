"""The seek index of a layer blob, and verified random-access reads through it.

A lazy view of an ordinary gzip or zstd layer needs two things before it can answer
anything: every tar header of the layer (a whiteout may be anywhere), and a way to start
decompressing in the middle of the blob.  ``build_index`` gets both in **one streaming
pass** over the blob, the same verified pass ``unpack`` makes (``store.unpack.scan_layer``:
the blob's digest and the tar's diff_id are checked, the toc is the store's own) but with
nothing written: it keeps the toc, where each regular file's content lies in the
uncompressed tar, and a **checkpoint** about every ``SPAN`` (4 MiB) of uncompressed data,
then drops the data.

- gzip: a checkpoint is zran.c's: a deflate block boundary (compressed bit offset,
  uncompressed offset) and the 32 KiB of history before it (``zran.RawInflater``); the
  start of a gzip member needs no history (eStargz is one member per file or chunk).
- zstd: frame starts, which need no history.  A single-frame layer has no second one, and
  a checkpoint inside a frame would need its up-to-8-MiB window plus entropy state that
  libzstd does not expose: such a layer is not worth indexing (``Unindexed``).
- uncompressed: every ``SPAN`` bytes.

The compressed bytes from one checkpoint to the next are a **span**; the pass records the
sha256 of each.  ``read_tar`` / ``read_file`` fetch the spans a byte range lies in with one
``read_range(a, b)`` (closed, as an HTTP ``Range: bytes=a-b``) per group of adjacent spans
(up to ``MAX_FETCH``), check every span's digest before a single byte of it is used, and
inflate from the checkpoint.  The index must come from the verified pass (or be verified
by its own digest): it is what makes a span trustworthy.

A serialized index (``to_bytes``) is ``MAGIC``, a version and one zstd frame holding a
JSON header (the toc rows as the store's toc file has them, the extents, the checkpoints)
followed by the checkpoints' windows.
"""

from __future__ import annotations

import hashlib
import json
import struct
import tarfile
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import BinaryIO

import zstandard

from ..errors import DigestMismatch, StoreCorrupt, UnsafeArchive, UnsupportedMedia
from ..oci.digest import Digest, Readable
from ..oci.model import LAYER_COMPRESSION
from ..store.toc import Toc, TocEntry, sorted_entries
from ..store.unpack import scan_layer
from .seekable_zstd import SeekTable
from .zran import WINDOW, CorruptStream, RawInflater

SPAN = 4 << 20  # uncompressed bytes between checkpoints (SOCI, indexed_gzip, rapidgzip)
MIN_LAYER_SIZE = 10 << 20  # smaller blobs are fetched whole (SOCI's --min-layer-size)
MAX_FETCH = 16 << 20  # adjacent spans merged into one read_range up to this many bytes
CHUNK = 1 << 20

MAGIC = b"snapshotter seek index\n"
VERSION = 1

ReadRange = Callable[[int, int], bytes]  # (first, last) byte of the blob, both included


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where decompression can start, and the span of compressed bytes that follows."""

    out: int  # offset in the uncompressed tar
    start: int  # first compressed byte of the span
    end: int  # one past its last compressed byte (the next span may share that byte)
    bits: int  # gzip, inside a member: high bits of byte ``start`` that are the span's
    header: bool  # the span starts at a gzip member or zstd frame (or is uncompressed)
    window: bytes  # gzip, inside a member: up to 32 KiB of history before ``out``
    digest: str  # sha256 hex of blob[start:end]


@dataclass(frozen=True, slots=True)
class FileExtent:
    """Where a regular file's content lies in the uncompressed tar."""

    offset: int  # of its first stored byte
    # GNU/PAX sparse files: (file offset, length) of each stored region, stored back to
    # back from ``offset``; the rest of the file is holes.  () for an ordinary file.
    sparse: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class SeekIndex:
    """A layer blob's toc and checkpoints: enough to list it and read any file of it."""

    layer_digest: Digest  # compressed (the blob)
    diff_id: Digest  # uncompressed (the tar)
    media_type: str
    compression: str  # "gzip", "zstd" or "none"
    blob_size: int
    tar_size: int
    span_size: int  # checkpoint spacing asked for
    toc: Toc
    extents: Mapping[int, FileExtent]  # toc inode -> content, for files with content
    checkpoints: tuple[Checkpoint, ...] = field(repr=False)

    def extent(self, entry: TocEntry) -> FileExtent | None:
        return self.extents.get(entry.inode)

    def to_bytes(self, level: int = 10) -> bytes:
        return dumps(self, level)

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "seek index") -> SeekIndex:
        return loads(data, what)


@dataclass(frozen=True, slots=True)
class Unindexed:
    """A layer that a seek index would not help: fetch it whole (the resumable pull) and
    say so, with ``reason``, where the other layers are mounted lazily."""

    layer_digest: Digest
    media_type: str
    blob_size: int
    reason: str


def not_worth_indexing(
    media_type: str,
    blob_size: int,
    min_size: int = MIN_LAYER_SIZE,
    *,
    frames: SeekTable | None = None,
    span: int = SPAN,
) -> str:
    """Why a layer is not worth a seek index before anything is fetched ("" if it is):
    its descriptor says enough for small layers, and a seekable zstd layer's seek table
    (``frames``, from ``seekable_zstd.read_seek_table``) for single-frame ones.  Other
    single-frame zstd layers show only in the pass itself (``build_index`` returns
    ``Unindexed`` then)."""
    if media_type not in LAYER_COMPRESSION:
        return f"media type {media_type!r} is not a layer we read"
    if blob_size < min_size:
        return f"smaller than {min_size >> 20} MiB ({blob_size} bytes): fetched whole"
    if frames is not None:
        if LAYER_COMPRESSION[media_type] != "zstd":
            raise ValueError(f"a zstd seek table for a layer of media type {media_type!r}")
        if not frames.restart_frames(span):
            return _zstd_unindexed(frames.single_frame, span)
    return ""


def _zstd_unindexed(single_frame: bool, span: int) -> str:
    return (
        "single-frame zstd: no point to restart decompression at but the start"
        if single_frame
        else f"zstd: no frame starts past the first {span >> 20} MiB"
    )


# -- the verified pass -------------------------------------------------------------------


def build_index(
    read: Callable[[int], bytes] | Readable | BinaryIO,
    layer_digest: Digest,
    diff_id: Digest,
    media_type: str,
    *,
    blob_size: int | None = None,
    what: str = "",
    span: int = SPAN,
    min_layer_size: int = MIN_LAYER_SIZE,
    frames: SeekTable | None = None,
) -> SeekIndex | Unindexed:
    """Stream the blob once (``read(n)`` returns up to ``n`` more bytes, ``b""`` at its
    end), verify its digest and diff_id, and return its seek index, or ``Unindexed`` for a
    layer an index would not help (smaller than ``min_layer_size``, single-frame zstd).
    Raises ``DigestMismatch`` (wrong digest or diff_id, undecompressible), ``UnsafeArchive``
    (a hostile tar, as ``unpack`` refuses it), ``UnsupportedMedia``.

    ``frames``: the seek table of a seekable zstd blob, read from its tail before the pass
    (``seekable_zstd.read_seek_table``).  The pass then also checks that the table is the
    one the verified blob ends with (``DigestMismatch`` if not: the tail was read from
    other bytes) and that the frames it walks start where the table says, in the blob and
    in the tar (``UnsafeArchive`` if not: the blob's table lies)."""
    what = what or f"layer {layer_digest}"
    compression = LAYER_COMPRESSION.get(media_type)
    if compression is None:
        raise UnsupportedMedia(f"{what}: unsupported media type {media_type!r}")
    if span < 1:
        raise ValueError(f"span {span!r}: must be positive")
    if frames is not None and compression != "zstd":
        raise ValueError(f"a zstd seek table for a layer of media type {media_type!r}")
    blob: Readable | BinaryIO = _CallReader(read) if callable(read) else read
    recorder = _Recorder(compression, span, what, frames)
    extents: dict[int, FileExtent] = {}

    def content(inode: int, info: tarfile.TarInfo, src: Readable) -> tuple[str, int]:
        h = hashlib.sha256()
        left = info.size
        while left > 0:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        if left:
            raise UnsafeArchive(
                f"{what}: content is {info.size - left} bytes, header says {info.size}"
            )
        sparse: list[tuple[int, int]] | None = info.sparse  # type: ignore[assignment]
        regions = tuple((int(o), int(n)) for o, n in sparse) if sparse is not None else ()
        extents[inode] = FileExtent(info.offset_data, regions)
        stored = sum(n for _, n in regions) if sparse is not None else info.size
        return f"sha256:{h.hexdigest()}", file_blocks(stored)

    scan = scan_layer(
        blob,
        compression=compression,
        diff_id=diff_id,
        layer_digest=layer_digest,
        blob_size=blob_size,
        what=what,
        content=content,
        decompress=recorder.open,
    )
    if frames is not None:
        recorder.check_table(frames, scan.tar_size)
    if scan.blob_size < min_layer_size:
        return Unindexed(
            layer_digest,
            media_type,
            scan.blob_size,
            f"smaller than {min_layer_size >> 20} MiB ({scan.blob_size} bytes): fetched whole",
        )
    checkpoints = recorder.finish()
    if compression == "zstd" and len(checkpoints) < 2:
        # Every read would inflate from the blob's start: the index buys nothing.
        return Unindexed(
            layer_digest, media_type, scan.blob_size, _zstd_unindexed(recorder.frames < 2, span)
        )
    for inode in scan.dropped:
        extents.pop(inode, None)
    return SeekIndex(
        layer_digest=layer_digest,
        diff_id=diff_id,
        media_type=media_type,
        compression=compression,
        blob_size=scan.blob_size,
        tar_size=scan.tar_size,
        span_size=span,
        toc=scan.toc,
        extents=extents,
        checkpoints=checkpoints,
    )


def file_blocks(stored: int) -> int:
    """512-byte blocks of a file holding ``stored`` bytes, in 4 KiB file system blocks:
    what ``stat`` shows once it is written out (the index cannot ask a host)."""
    return (stored + 4095) // 4096 * 8


class _CallReader:
    def __init__(self, read: Callable[[int], bytes]):
        self._read = read

    def read(self, n: int = -1, /) -> bytes:
        return self._read(CHUNK if n is None or n < 0 else n)


class _SpanHasher:
    """Between the compressed stream and the decoder: hashes the spans the recorder cuts.
    A cut falls where the decoder is (or a byte before), which is in the newest chunk or
    the one before it (``_Input.need`` reads at most a header or a block ahead); the three
    latest are kept, and a cut behind them would be a bug, refused as one."""

    def __init__(self, read: Callable[[int], bytes]):
        self._read = read
        self._chunks: deque[tuple[int, bytes]] = deque()
        self.size = 0  # bytes read so far
        self._h: hashlib._Hash | None = None
        self._start = 0
        self._from = 0  # hashed up to here
        self.spans: list[tuple[int, int, str]] = []

    def read(self, n: int) -> bytes:
        chunk = self._read(n)
        if chunk:
            self._chunks.append((self.size, chunk))
            self.size += len(chunk)
            if len(self._chunks) > 3:
                base, data = self._chunks.popleft()
                self._hash_to(base + len(data), [(base, data)])
        return chunk

    def _hash_to(self, end: int, chunks: object = None) -> None:
        h = self._h
        if h is not None:
            for base, data in chunks or self._chunks:  # type: ignore[attr-defined]
                lo, hi = max(self._from, base), min(end, base + len(data))
                if lo < hi:
                    h.update(memoryview(data)[lo - base : hi - base])
        self._from = max(self._from, end)

    def cut(self, end: int, start: int) -> None:
        """The span being hashed ends at ``end``; the next starts at ``start``."""
        if start < end - 1 or (self._chunks and start < self._chunks[0][0]):
            raise AssertionError(f"span cut at {start} behind the bytes kept")
        if self._h is not None:
            self._hash_to(end)
            self.spans.append((self._start, end, self._h.hexdigest()))
        self._h = hashlib.sha256()
        self._start = self._from = start

    def finish(self) -> None:
        self._hash_to(self.size)
        if self._h is not None:
            self.spans.append((self._start, self.size, self._h.hexdigest()))
            self._h = None


class _TailTap:
    """Between the blob and the span hasher: hashes the blob from byte ``start`` to its
    end (a seek table's frame, to hold the table read from the tail to the verified
    blob)."""

    def __init__(self, read: Callable[[int], bytes], start: int):
        self._read = read
        self.start = start
        self.at = 0
        self.hash = hashlib.sha256()

    def read(self, n: int) -> bytes:
        chunk = self._read(n)
        if self.at + len(chunk) > self.start:
            self.hash.update(memoryview(chunk)[max(0, self.start - self.at) :])
        self.at += len(chunk)
        return chunk


class _Recorder:
    """The decompressor ``scan_layer`` runs in the verified pass: it inflates as usual and
    takes a checkpoint at the first boundary after every ``span`` bytes of output.  Given
    a zstd seek table, it also notes every frame start (zstd and skippable) and hashes
    the table's frame, for ``check_table``."""

    def __init__(self, compression: str, span: int, what: str, table: SeekTable | None = None):
        self.compression = compression
        self.span = span
        self.what = what
        # out, start, bits, header, window of each checkpoint taken
        self.points: list[tuple[int, int, int, bool, bytes]] = []
        self.last_out = 0
        self.frames = 0
        self.hasher: _SpanHasher | None = None
        self.decoder: _Decoder | None = None
        self.table = table
        self.tap: _TailTap | None = None
        self.walked: list[tuple[int, int]] = []  # (blob offset, tar offset) of each frame

    def open(self, compressed: Readable) -> Readable:
        read: Callable[[int], bytes] = compressed.read
        if self.table is not None:
            self.tap = _TailTap(read, self.table.table_offset)
            read = self.tap.read
        self.hasher = _SpanHasher(read)
        self.hasher.cut(0, 0)
        self.points.append((0, 0, 0, True, b""))
        if self.compression == "gzip":
            self.decoder = _GzipDecoder(
                self.hasher.read, self.what, on_block=self._on_block, on_header=self._on_header
            )
        elif self.compression == "zstd":
            self.decoder = _ZstdDecoder(
                self.hasher.read,
                self.what,
                on_header=self._on_header,
                on_skippable=self._on_skippable if self.table is not None else None,
            )
        else:
            self.decoder = _PlainDecoder(self.hasher.read, self.what, on_header=self._on_header)
        return self.decoder

    def _due(self, out: int) -> bool:
        return out - self.last_out >= self.span

    def _on_header(self, at: int, out: int) -> None:
        if self.compression == "zstd":
            self.frames += 1
            if self.table is not None:
                self.walked.append((at, out))
        if self._due(out):
            assert self.hasher is not None
            self.hasher.cut(at, at)
            self.points.append((out, at, 0, True, b""))
            self.last_out = out

    def _on_block(self, at: int, bits: int, out: int) -> None:
        if self._due(out):
            assert self.hasher is not None and isinstance(self.decoder, _GzipDecoder)
            start = at - 1 if bits else at
            self.hasher.cut(at, start)
            self.points.append((out, start, bits, False, self.decoder.window()))
            self.last_out = out

    def _on_skippable(self, at: int, out: int) -> None:
        self.walked.append((at, out))

    def check_table(self, table: SeekTable, tar_size: int) -> None:
        """After the verified pass: the seek table read from the tail is the one the blob
        ends with, and names every frame the pass walked, where the pass found it."""
        assert self.tap is not None
        if self.tap.hash.hexdigest() != table.digest:
            raise DigestMismatch(
                f"{self.what}: the seek table read from its tail is not the one the blob "
                f"ends with (bytes {table.table_offset}-{table.blob_size - 1})"
            )
        named = [(f.start, f.out) for f in table.frames]
        named.append((table.table_offset, table.decompressed_size))  # the table's own frame
        walked = self.walked
        for k, (claim, found) in enumerate(zip(named, walked, strict=False)):
            if claim != found:
                raise UnsafeArchive(
                    f"{self.what}: seek table says frame {k} starts at byte {claim[0]} "
                    f"(tar offset {claim[1]}), the blob has one at byte {found[0]} "
                    f"(tar offset {found[1]})"
                )
        if len(named) != len(walked):
            raise UnsafeArchive(
                f"{self.what}: seek table names {len(named) - 1} frames, the blob has "
                f"{len(walked) - 1} before its seek table"
            )
        assert table.decompressed_size == tar_size  # the last frame's start, just checked

    def finish(self) -> tuple[Checkpoint, ...]:
        assert self.hasher is not None
        self.hasher.finish()
        spans = self.hasher.spans
        assert len(spans) == len(self.points), (len(spans), len(self.points))
        return tuple(
            Checkpoint(out, start, end, bits, header, window, digest)
            for (out, start, bits, header, window), (_, end, digest) in zip(
                self.points, spans, strict=True
            )
        )


# -- decoders: the same code for the pass and for reads from a checkpoint --------------


class _Input:
    """Compressed bytes pulled from ``src`` on demand; ``base`` is the blob offset of
    ``buf[0]``."""

    __slots__ = ("src", "buf", "pos", "base", "eof")

    def __init__(self, src: Callable[[int], bytes], base: int):
        self.src = src
        self.buf = b""
        self.pos = 0
        self.base = base
        self.eof = False

    @property
    def at(self) -> int:
        return self.base + self.pos

    def more(self) -> bool:
        """Whether a byte is available at ``pos`` (pulling a chunk if needed)."""
        while self.pos >= len(self.buf):
            if self.eof:
                return False
            chunk = self.src(CHUNK)
            if not chunk:
                self.eof = True
                return False
            self.base += len(self.buf)
            self.buf, self.pos = chunk, 0
        return True

    def need(self, k: int) -> bytes | None:
        """The next ``k`` bytes (not consumed), or None if the input ends first."""
        while len(self.buf) - self.pos < k:
            if self.eof:
                return None
            chunk = self.src(CHUNK)
            if not chunk:
                self.eof = True
                return None
            self.base += self.pos
            self.buf, self.pos = self.buf[self.pos :] + chunk, 0
        return self.buf[self.pos : self.pos + k]

    def skip(self, k: int) -> bool:
        while k > 0:
            if not self.more():
                return False
            n = min(k, len(self.buf) - self.pos)
            self.pos += n
            k -= n
        return True


class _Decoder:
    """A ``read(n)`` stream of uncompressed bytes made by ``_step`` pieces."""

    def __init__(self, what: str, out: int):
        self.what = what
        self.out = out  # tar offset of the next byte made
        self._pending = b""
        self._done = False

    def _step(self, limit: int) -> bytes | None:
        """Make some output (at most ``limit`` bytes where the format allows), b"" for
        progress without output, None at the end of the stream."""
        raise NotImplementedError

    def read(self, n: int = -1, /) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        parts = []
        got = 0
        if self._pending:
            parts.append(self._pending[:n])
            got = len(parts[0])
            self._pending = self._pending[n:]
        while got < n and not self._done:
            piece = self._step(n - got)
            if piece is None:
                self._done = True
                break
            if len(piece) > n - got:
                piece, self._pending = piece[: n - got], piece[n - got :]
            if piece:
                parts.append(piece)
                got += len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def skip(self, n: int) -> int:
        done = 0
        while done < n:
            chunk = self.read(min(CHUNK, n - done))
            if not chunk:
                break
            done += len(chunk)
        return done


_GZIP_HEAD = struct.Struct("<BBBBIBB")
_FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 2, 4, 8, 16
MAX_GZIP_HEADER = 1 << 20


class _GzipDecoder(_Decoder):
    """gzip members, concatenated (RFC 1952), each a raw deflate stream for zran."""

    def __init__(
        self,
        src: Callable[[int], bytes],
        what: str,
        *,
        start: int = 0,
        out: int = 0,
        bits: int = -1,
        window: bytes = b"",
        on_block: Callable[[int, int, int], None] | None = None,
        on_header: Callable[[int, int], None] | None = None,
    ):
        super().__init__(what, out)
        self.inp = _Input(src, start)
        self.inflater = RawInflater(what)
        self.on_block = on_block
        self.on_header = on_header
        self.members = 0
        self.history: deque[bytes] = deque()
        self.history_size = 0
        self.mode = "header"
        if bits >= 0:  # a checkpoint inside a member
            self.members = 1
            self.mode = "deflate"
            if bits:
                first = self.inp.need(1)
                if first is None:
                    raise CorruptStream(f"{what}: no input at the checkpoint")
                self.inp.pos += 1
                self.inflater.prime(bits, first[0] >> (8 - bits))
            self.inflater.set_window(window)

    def window(self) -> bytes:
        return b"".join(self.history)[-WINDOW:]

    def _step(self, limit: int) -> bytes | None:
        inp = self.inp
        if self.mode == "deflate":
            if not inp.more():
                raise CorruptStream(f"{self.what}: gzip stream cut short")
            step = self.inflater.inflate(inp.buf, inp.pos, limit)
            inp.pos += step.consumed
            produced = step.produced
            if produced:
                self.out += len(produced)
                if self.on_block is not None:
                    history = self.history
                    history.append(produced)
                    self.history_size += len(produced)
                    while self.history_size - len(history[0]) >= WINDOW:
                        self.history_size -= len(history.popleft())
            if step.boundary and self.on_block is not None:
                self.on_block(inp.at, step.unused_bits, self.out)
            if step.end:
                self.mode = "trailer"
            return produced
        if self.mode == "trailer":
            if inp.need(8) is None:
                raise CorruptStream(f"{self.what}: gzip trailer cut short")
            inp.pos += 8
            self.mode = "header"
            return b""
        # header: the next member, zero padding, or the end
        while True:
            if not inp.more():
                return None  # the end (an empty blob is an empty layer, as for unpack)
            if self.members and inp.buf[inp.pos] == 0:
                rest = inp.buf[inp.pos :]
                inp.pos += len(rest) - len(rest.lstrip(b"\0"))
                continue
            break
        if self.on_header is not None:
            self.on_header(inp.at, self.out)
        self._header()
        self.inflater.reset()
        self.members += 1
        self.mode = "deflate"
        return b""

    def _header(self) -> None:
        inp = self.inp
        head = inp.need(10)
        if head is None:
            raise CorruptStream(f"{self.what}: gzip header cut short")
        id1, id2, cm, flags, _, _, _ = _GZIP_HEAD.unpack(head)
        if (id1, id2) != (0x1F, 0x8B) or cm != 8:
            raise CorruptStream(f"{self.what}: not a gzip member at byte {inp.at}")
        size = 10
        if flags & _FEXTRA:
            more = inp.need(size + 2)
            if more is None:
                raise CorruptStream(f"{self.what}: gzip header cut short")
            size += 2 + int.from_bytes(more[size:], "little")
        for flag in (_FNAME, _FCOMMENT):
            if flags & flag:
                while True:
                    got = inp.need(size + 1)
                    if got is None or size > MAX_GZIP_HEADER:
                        raise CorruptStream(f"{self.what}: gzip header cut short")
                    nul = inp.buf.find(b"\0", inp.pos + size)
                    if nul >= 0:
                        size = nul - inp.pos + 1
                        break
                    size = len(inp.buf) - inp.pos
        if flags & _FHCRC:
            size += 2
        if size > MAX_GZIP_HEADER or not inp.skip(size):
            raise CorruptStream(f"{self.what}: gzip header cut short")


_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE = 0x184D2A50  # ... 0x184D2A5F
_ZSTD_DID_SIZE = (0, 1, 2, 4)


class _ZstdDecoder(_Decoder):
    """zstd frames (RFC 8878), walked block by block: frame starts are checkpoints, and a
    block makes at most 128 KiB, so a hostile blob cannot make one call balloon."""

    def __init__(
        self,
        src: Callable[[int], bytes],
        what: str,
        *,
        start: int = 0,
        out: int = 0,
        on_header: Callable[[int, int], None] | None = None,
        on_skippable: Callable[[int, int], None] | None = None,
    ):
        super().__init__(what, out)
        self.inp = _Input(src, start)
        self.on_header = on_header
        self.on_skippable = on_skippable
        self.dctx = zstandard.ZstdDecompressor()
        self.dobj: zstandard.ZstdDecompressionObj | None = None
        self.checksum = False
        self.frames = 0

    def _cut(self) -> CorruptStream:
        return CorruptStream(f"{self.what}: zstd stream cut short")

    def _step(self, limit: int) -> bytes | None:
        inp = self.inp
        if self.dobj is None:  # at a frame
            if not inp.more():
                return None
            head = inp.need(4)
            if head is None:
                raise self._cut()
            magic = int.from_bytes(head, "little")
            if magic & 0xFFFFFFF0 == _ZSTD_SKIPPABLE:
                if self.on_skippable is not None:
                    self.on_skippable(inp.at, self.out)
                skippable = inp.need(8)
                if skippable is None or not inp.skip(8 + int.from_bytes(skippable[4:], "little")):
                    raise self._cut()
                return b""
            if magic != _ZSTD_MAGIC:
                raise CorruptStream(f"{self.what}: not a zstd frame at byte {inp.at}")
            if self.on_header is not None:
                self.on_header(inp.at, self.out)
            fhd_bytes = inp.need(5)
            if fhd_bytes is None:
                raise self._cut()
            fhd = fhd_bytes[4]
            single = fhd >> 5 & 1
            fcs = fhd >> 6
            header_size = (
                5
                + (not single)
                + _ZSTD_DID_SIZE[fhd & 3]
                + ((1 if single else 0) if fcs == 0 else (2, 4, 8)[fcs - 1])
            )
            header = inp.need(header_size)
            if header is None:
                raise self._cut()
            inp.pos += header_size
            self.checksum = bool(fhd >> 2 & 1)
            self.dobj = self.dctx.decompressobj()
            return self._feed(header)
        head = inp.need(3)
        if head is None:
            raise self._cut()
        value = int.from_bytes(head, "little")
        kind, size = value >> 1 & 3, value >> 3
        if kind == 3:
            raise CorruptStream(f"{self.what}: reserved zstd block type at byte {inp.at}")
        block = inp.need(3 + (1 if kind == 1 else size))
        if block is None:
            raise self._cut()
        inp.pos += len(block)
        produced = self._feed(block)
        if value & 1:  # the frame's last block
            if self.checksum:
                check = inp.need(4)
                if check is None:
                    raise self._cut()
                inp.pos += 4
                produced += self._feed(check)
            self.dobj = None
            self.frames += 1
        return produced

    def _feed(self, data: bytes) -> bytes:
        assert self.dobj is not None
        try:
            produced: bytes = self.dobj.decompress(data)
        except zstandard.ZstdError as exc:
            raise CorruptStream(f"{self.what}: invalid zstd data ({exc})") from exc
        self.out += len(produced)
        return produced


class _PlainDecoder(_Decoder):
    """An uncompressed tar: checkpoints every span, at chunk starts."""

    def __init__(
        self,
        src: Callable[[int], bytes],
        what: str,
        *,
        start: int = 0,
        out: int = 0,
        on_header: Callable[[int, int], None] | None = None,
    ):
        super().__init__(what, out)
        self.inp = _Input(src, start)
        self.on_header = on_header

    def _step(self, limit: int) -> bytes | None:
        inp = self.inp
        if not inp.more():
            return None
        if self.on_header is not None:
            self.on_header(inp.at, self.out)
        piece = inp.buf[inp.pos : inp.pos + limit]
        inp.pos += len(piece)
        self.out += len(piece)
        return piece


# -- reads -------------------------------------------------------------------------------

_out_key = attrgetter("out")


def tar_spans(index: SeekIndex, start: int, end: int) -> range:
    """The numbers of the spans holding bytes ``[start, end)`` of the layer's tar (empty
    for an empty range); ValueError for a range outside the tar."""
    if not 0 <= start <= end <= index.tar_size:
        raise ValueError(f"range {start}-{end} outside the tar's {index.tar_size} bytes")
    if start == end:
        return range(0)
    points = index.checkpoints
    first = bisect_right(points, start, key=_out_key) - 1
    last = bisect_left(points, end, key=_out_key) - 1
    return range(first, last + 1)


def span_end(index: SeekIndex, k: int) -> int:
    """Where span ``k`` ends in the layer's tar (the next checkpoint, or the tar's end)."""
    points = index.checkpoints
    return points[k + 1].out if k + 1 < len(points) else index.tar_size


def read_tar(
    index: SeekIndex,
    read_range: ReadRange,
    start: int,
    end: int,
    *,
    max_fetch: int = MAX_FETCH,
) -> bytes:
    """Bytes ``[start, end)`` of the layer's uncompressed tar, from the spans holding
    them: one ``read_range`` per group of adjacent spans (at most ``max_fetch`` bytes, or
    one span), each span's sha256 checked before any of its bytes is used."""
    spans = tar_spans(index, start, end)
    if not spans:
        return b""
    points = index.checkpoints
    first, last = spans[0], spans[-1]
    what = f"layer {index.layer_digest}"
    groups = _verified_spans(points, first, last, read_range, max_fetch, what)

    def src(_: int) -> bytes:
        return next(groups, b"")

    cp = points[first]
    decoder: _Decoder
    if index.compression == "gzip":
        decoder = _GzipDecoder(
            src,
            what,
            start=cp.start,
            out=cp.out,
            bits=-1 if cp.header else cp.bits,
            window=cp.window,
        )
    elif index.compression == "zstd":
        decoder = _ZstdDecoder(src, what, start=cp.start, out=cp.out)
    else:
        decoder = _PlainDecoder(src, what, start=cp.start, out=cp.out)
    try:
        decoder.skip(start - cp.out)
        data = decoder.read(end - start)
    except CorruptStream as exc:
        raise StoreCorrupt(f"seek index of {what}: does not decode its blob ({exc})") from exc
    if len(data) != end - start:
        raise StoreCorrupt(f"seek index of {what}: its spans end before tar byte {end}")
    return data


def _verified_spans(
    points: tuple[Checkpoint, ...],
    first: int,
    last: int,
    read_range: ReadRange,
    max_fetch: int,
    what: str,
) -> Iterator[bytes]:
    """The compressed bytes of spans ``first..last`` in order, fetched in groups and
    verified span by span before a group is handed on."""
    k = first
    handed = points[first].start  # blob offset of the next byte to hand on
    while k <= last:
        m = k
        while m < last and points[m + 1].end - points[k].start <= max_fetch:
            m += 1
        a, b = points[k].start, points[m].end
        data = read_range(a, b - 1)
        if len(data) != b - a:
            raise DigestMismatch(
                f"{what}: bytes {a}-{b - 1} came as {len(data)} bytes, not {b - a}"
            )
        view = memoryview(data)
        for cp in points[k : m + 1]:
            actual = hashlib.sha256(view[cp.start - a : cp.end - a]).hexdigest()
            if actual != cp.digest:
                raise DigestMismatch(
                    f"{what}: bytes {cp.start}-{cp.end - 1} hash to sha256:{actual}, "
                    f"but the seek index says sha256:{cp.digest}"
                )
        yield bytes(view[handed - a :])
        handed = b
        k = m + 1


def read_file(
    index: SeekIndex,
    entry: TocEntry,
    read_range: ReadRange,
    offset: int = 0,
    size: int = -1,
    *,
    max_fetch: int = MAX_FETCH,
) -> bytes:
    """``size`` bytes (all, if negative) from ``offset`` of a regular file of the layer,
    as ``pread`` gives them: fewer at the end of the file, none past it."""
    if offset < 0:
        raise ValueError(f"offset {offset!r}: negative")
    stop = entry.size if size < 0 else min(entry.size, offset + size)
    if offset >= stop:
        return b""
    extent = index.extents.get(entry.inode)
    if extent is None:
        raise ValueError(f"{entry.path!r}: no content in the seek index of this layer")
    if not extent.sparse:
        return read_tar(
            index, read_range, extent.offset + offset, extent.offset + stop, max_fetch=max_fetch
        )
    # A sparse file: the stored regions that meet [offset, stop), read as one tar range.
    pieces: list[tuple[int, int, int]] = []  # file offset, tar offset, length
    tar_at = extent.offset
    for region_at, length in extent.sparse:
        lo, hi = max(offset, region_at), min(stop, region_at + length)
        if lo < hi:
            pieces.append((lo, tar_at + lo - region_at, hi - lo))
        tar_at += length
    out = bytearray(stop - offset)
    if pieces:
        base = pieces[0][1]
        raw = read_tar(index, read_range, base, pieces[-1][1] + pieces[-1][2], max_fetch=max_fetch)
        for at, tar_offset, length in pieces:
            out[at - offset : at - offset + length] = raw[
                tar_offset - base : tar_offset - base + length
            ]
    return bytes(out)


# -- serialization -----------------------------------------------------------------------


def dumps(index: SeekIndex, level: int = 10) -> bytes:
    """The index as bytes: ``MAGIC``, a version byte, one zstd frame of (a 4-byte header
    length, the JSON header, every checkpoint's window back to back)."""
    header = {
        "layer_digest": str(index.layer_digest),
        "diff_id": str(index.diff_id),
        "media_type": index.media_type,
        "compression": index.compression,
        "blob_size": index.blob_size,
        "tar_size": index.tar_size,
        "span_size": index.span_size,
        "toc": [e.to_row() for e in index.toc.entries],
        "extents": [
            [inode, x.offset, [list(r) for r in x.sparse]] if x.sparse else [inode, x.offset]
            for inode, x in sorted(index.extents.items())
        ],
        "checkpoints": [
            [c.out, c.start, c.end, c.bits, int(c.header), len(c.window), c.digest]
            for c in index.checkpoints
        ],
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    body = b"".join([len(raw).to_bytes(4, "little"), raw, *(c.window for c in index.checkpoints)])
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    return MAGIC + bytes([VERSION]) + compressor.compress(body)


# An index is ~0.8 % of its tar at most: this bounds what a damaged or hostile one can
# make us allocate (the frame must declare its size, and libzstd holds it to it).
MAX_INDEX_BODY = 1 << 31


def loads(data: bytes, what: str = "seek index") -> SeekIndex:
    """``dumps`` undone, every field checked: a damaged index raises ``StoreCorrupt``."""
    if not data.startswith(MAGIC):
        raise StoreCorrupt(f"{what}: not a snapshotter seek index")
    version = data[len(MAGIC) : len(MAGIC) + 1]
    if version != bytes([VERSION]):
        raise StoreCorrupt(f"{what}: unknown version {version!r}")
    try:
        payload = data[len(MAGIC) + 1 :]
        declared = zstandard.frame_content_size(payload)
        if not 0 <= declared <= MAX_INDEX_BODY:
            raise ValueError(f"a body of {declared} bytes")
        body = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
        n = int.from_bytes(body[:4], "little")
        header = json.loads(body[4 : 4 + n])
        windows = memoryview(body)[4 + n :]
        compression = header["compression"]
        if compression not in ("gzip", "zstd", "none"):
            raise ValueError(f"compression {compression!r}")
        checkpoints: list[Checkpoint] = []
        at = 0
        prev: Checkpoint | None = None
        for out, start, end, bits, head, wlen, digest in header["checkpoints"]:
            if not (
                all(type(v) is int for v in (out, start, end, bits, head, wlen))
                and 0 <= bits < 8
                and 0 <= wlen <= WINDOW
                and start <= end
                and type(digest) is str
                and len(digest) == 64
                and (prev is None or (out > prev.out and start >= prev.end - 1))
            ):
                raise ValueError(f"checkpoint {len(checkpoints)}")
            window = bytes(windows[at : at + wlen])
            cp = Checkpoint(out, start, end, bits, bool(head), window, digest)
            at += wlen
            checkpoints.append(cp)
            prev = cp
        blob_size, tar_size = int(header["blob_size"]), int(header["tar_size"])
        if (
            at != len(windows)
            or not checkpoints
            or checkpoints[0].out != 0
            or checkpoints[0].start != 0
            or checkpoints[-1].end != blob_size
            or (tar_size and checkpoints[-1].out >= tar_size)
        ):
            raise ValueError("windows or checkpoints")
        extents = {}
        for row in header["extents"]:
            sparse = tuple((int(o), int(k)) for o, k in row[2]) if len(row) > 2 else ()
            if not 0 <= int(row[1]) <= tar_size:
                raise ValueError(f"extent {row[:2]!r}")
            extents[int(row[0])] = FileExtent(int(row[1]), sparse)
        entries = sorted_entries(TocEntry.from_row(row) for row in header["toc"])
        diff_id = Digest.parse(header["diff_id"], what)
        return SeekIndex(
            layer_digest=Digest.parse(header["layer_digest"], what),
            diff_id=diff_id,
            media_type=str(header["media_type"]),
            compression=compression,
            blob_size=blob_size,
            tar_size=tar_size,
            span_size=int(header["span_size"]),
            toc=Toc(str(diff_id), entries),
            extents=extents,
            checkpoints=tuple(checkpoints),
        )
    except (ValueError, KeyError, TypeError, IndexError, zstandard.ZstdError) as exc:
        raise StoreCorrupt(f"{what}: unreadable ({exc})") from exc
