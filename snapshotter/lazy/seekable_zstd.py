"""The Zstandard seekable format: a zstd layer that lists its own frames at its end.

A seekable zstd blob (facebook/zstd ``contrib/seekable_format``, format 0.1.0) is any
sequence of zstd and skippable frames followed by one last skippable frame, the **seek
table**, which names the compressed and decompressed size of every frame before it::

    Skippable_Magic_Number 0x184D2A5E (4)  Frame_Size (4, the bytes that follow)
    Number_Of_Frames entries of
        Compressed_Size (4)  Decompressed_Size (4)  [Checksum (4)]
    Number_Of_Frames (4)  Seek_Table_Descriptor (1)  Seekable_Magic_Number 0x8F92EAB1 (4)

all little-endian.  Descriptor bit 7 says the entries carry a checksum (the low 32 bits
of the XXH64 of the frame's content, unused here); bits 6-2 are reserved and must be 0;
bits 1-0 are for compatible extensions and are not interpreted.  A skippable frame in the
data is listed with a decompressed size of 0.

What it buys a lazy mount: the frame starts (where decompression can begin, with no
history) are known from one closed Range request of the blob's tail, before any pass.  A
planner can tell a single-frame layer ("fetched whole") without reading the whole blob
first, and the verified pass (``seek_index.build_index(..., frames=table)``) checks that
the frames it walks are the ones the table names.

Trust: the table is read by a range request the blob's digest does not cover when it is
made.  ``parse_seek_table`` refuses a table no blob of this size could hold
(``UnsafeArchive``); everything else it says is held to the blob by the verified pass,
which hashes the table frame as it streams past (``SeekTable.digest``) and compares every
frame start.  Pure: bytes in, a table out; the only I/O is ``read_seek_table``'s reads.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ..errors import DigestMismatch, UnsafeArchive

SKIPPABLE_MAGIC = 0x184D2A5E  # the seek table's frame: zstd's skippable magic 0x184D2A5?
SEEKABLE_MAGIC = 0x8F92EAB1
FOOTER_SIZE = 9  # Number_Of_Frames, Seek_Table_Descriptor, Seekable_Magic_Number
HEADER_SIZE = 8  # Skippable_Magic_Number, Frame_Size
CHECKSUM_FLAG = 0x80
RESERVED_BITS = 0x7C
MIN_FRAME = 8  # the smallest frame: a skippable frame's header (a zstd frame takes 9)
# Bytes of the tail asked for first: the footer and a table of ~20,000 frames (a 20 GB
# layer in 1 MiB frames), so nearly every table costs one request.
TAIL_READ = 256 * 1024
# A table larger than this (~700,000 frames) is refused: it bounds what a hostile
# footer can make us fetch and hold.
MAX_TABLE = 8 << 20

_FOOTER = struct.Struct("<IBI")
_HEADER = struct.Struct("<II")


class RangeSource(Protocol):
    """A blob read by closed ranges (lazy.layers.RangeSource)."""

    @property
    def size(self) -> int: ...

    def read_range(self, first: int, last: int) -> bytes: ...


class Frame(NamedTuple):
    """One frame the seek table names (a zstd frame, or a skippable one: ``out_size`` 0)."""

    start: int  # compressed offset in the blob
    size: int  # compressed bytes
    out: int  # decompressed offset in the layer's tar
    out_size: int  # decompressed bytes


@dataclass(frozen=True, slots=True)
class SeekTable:
    """A blob's seek table: its frames in blob order, and where the table itself lies."""

    frames: tuple[Frame, ...] = field(repr=False)  # entries of compressed size 0 dropped
    compressed_size: int  # bytes of the frames: the table frame starts here
    decompressed_size: int  # bytes of the tar
    table_size: int  # bytes of the table's skippable frame, header and footer included
    checksums: bool  # the entries carry XXH64 checksums (not used)
    digest: str = field(repr=False)  # sha256 hex of the table frame's bytes, as read

    @property
    def table_offset(self) -> int:
        return self.compressed_size

    @property
    def blob_size(self) -> int:
        return self.compressed_size + self.table_size

    @property
    def single_frame(self) -> bool:
        """At most one frame with content: decompression can only start at the blob's
        start, so a seek index would buy nothing (fetch the layer whole)."""
        return sum(1 for f in self.frames if f.out_size) <= 1

    def restart_frames(self, span: int) -> tuple[Frame, ...]:
        """The frames after the first where the verified pass takes a checkpoint, given a
        checkpoint every ``span`` bytes of tar at the first frame start after it (as
        ``seek_index.build_index`` does); empty when an index would not help."""
        points = []
        last = 0
        for f in self.frames:
            if f.out_size and f.out - last >= span:
                points.append(f)
                last = f.out
        return tuple(points)


def seek_table_size(tail: bytes, blob_size: int, what: str = "blob") -> int | None:
    """Bytes of the seek table frame the footer at the end of ``tail`` (the last
    ``len(tail)`` bytes of a ``blob_size``-byte blob) declares, or None when there is no
    seekable footer.  Raises ``UnsafeArchive`` for a footer with reserved bits set or a
    table larger than the blob or than ``MAX_TABLE``."""
    if len(tail) < FOOTER_SIZE or blob_size < HEADER_SIZE + FOOTER_SIZE:
        return None
    count: int
    descriptor: int
    magic: int
    count, descriptor, magic = _FOOTER.unpack_from(tail, len(tail) - FOOTER_SIZE)
    if magic != SEEKABLE_MAGIC:
        return None
    if descriptor & RESERVED_BITS:
        raise UnsafeArchive(f"{what}: seek table descriptor {descriptor:#04x} sets reserved bits")
    entry = 12 if descriptor & CHECKSUM_FLAG else 8
    size = HEADER_SIZE + count * entry + FOOTER_SIZE
    if size > blob_size:
        raise UnsafeArchive(
            f"{what}: seek table of {count} frames ({size} bytes) is larger than "
            f"the blob ({blob_size} bytes)"
        )
    if size > MAX_TABLE:
        raise UnsafeArchive(
            f"{what}: seek table of {count} frames ({size} bytes) is larger than "
            f"{MAX_TABLE >> 20} MiB"
        )
    return size


def parse_seek_table(tail: bytes, blob_size: int, what: str = "blob") -> SeekTable | None:
    """The seek table at the end of a ``blob_size``-byte blob whose last ``len(tail)``
    bytes are ``tail``; None when the blob ends in no seekable footer.  Raises
    ``UnsafeArchive`` for a table that claims what no blob of this size could be (see
    ``seek_table_size``; a bad frame header, frames of impossible sizes, sizes that do not
    add up to where the table starts), ``ValueError`` when ``tail`` is shorter than the
    table it ends with (``seek_table_size`` says how much to read)."""
    if len(tail) > blob_size:
        raise ValueError(f"a tail of {len(tail)} bytes from a blob of {blob_size}")
    size = seek_table_size(tail, blob_size, what)
    if size is None:
        return None
    if len(tail) < size:
        raise ValueError(f"{what}: the tail holds {len(tail)} bytes of a {size}-byte seek table")
    frame = memoryview(tail)[len(tail) - size :]
    magic, frame_size = _HEADER.unpack_from(frame)
    if magic != SKIPPABLE_MAGIC:
        raise UnsafeArchive(
            f"{what}: seek table frame starts with {magic:#010x}, not the skippable "
            f"magic {SKIPPABLE_MAGIC:#010x}"
        )
    if frame_size != size - HEADER_SIZE:
        raise UnsafeArchive(
            f"{what}: seek table frame says it holds {frame_size} bytes, its footer "
            f"{size - HEADER_SIZE}"
        )
    checksums = bool(frame[-5] & CHECKSUM_FLAG)
    entries = frame[HEADER_SIZE : size - FOOTER_SIZE]
    layout = struct.Struct("<III" if checksums else "<II")
    table_offset = blob_size - size
    frames: list[Frame] = []
    at = out = 0
    for i, row in enumerate(layout.iter_unpack(entries)):
        compressed, decompressed = row[0], row[1]
        if compressed == 0:
            if decompressed:
                raise UnsafeArchive(
                    f"{what}: seek table frame {i} makes {decompressed} bytes out of none"
                )
            continue  # an empty entry (some writers leave them); it names nothing
        if compressed < MIN_FRAME:
            raise UnsafeArchive(
                f"{what}: seek table frame {i} is {compressed} bytes, no frame is under {MIN_FRAME}"
            )
        if at + compressed > table_offset:
            raise UnsafeArchive(
                f"{what}: seek table frame {i} ends at byte {at + compressed}, past the "
                f"table's start at {table_offset}"
            )
        frames.append(Frame(at, compressed, out, decompressed))
        at += compressed
        out += decompressed
    if at != table_offset:
        raise UnsafeArchive(
            f"{what}: seek table frames end at byte {at}, the table starts at {table_offset}"
        )
    return SeekTable(
        frames=tuple(frames),
        compressed_size=at,
        decompressed_size=out,
        table_size=size,
        checksums=checksums,
        digest=hashlib.sha256(frame).hexdigest(),
    )


def read_seek_table(source: RangeSource, what: str = "blob") -> SeekTable | None:
    """The seek table of the blob ``source`` serves, or None when it has none: one closed
    range read of the last ``TAIL_READ`` bytes (a second, of the rest, for a larger
    table).  Raises ``UnsafeArchive`` (see ``parse_seek_table``), ``DigestMismatch`` for a
    short answer, and whatever ``source.read_range`` raises."""
    size = source.size
    if size < HEADER_SIZE + FOOTER_SIZE:
        return None
    first = max(0, size - TAIL_READ)
    tail = _read(source, first, size - 1, what)
    need = seek_table_size(tail, size, what)
    if need is None:
        return None
    if need > len(tail):
        tail = _read(source, size - need, first - 1, what) + tail
    return parse_seek_table(tail, size, what)


def _read(source: RangeSource, first: int, last: int, what: str) -> bytes:
    data = source.read_range(first, last)
    if len(data) != last - first + 1:
        raise DigestMismatch(
            f"{what}: bytes {first}-{last} came as {len(data)} bytes, not {last - first + 1}"
        )
    return data


__all__ = [
    "FOOTER_SIZE",
    "MAX_TABLE",
    "SEEKABLE_MAGIC",
    "TAIL_READ",
    "Frame",
    "SeekTable",
    "parse_seek_table",
    "read_seek_table",
    "seek_table_size",
]
