"""Seekable zstd layers (snapshotter.lazy.seekable_zstd): the seek table a blob ends with is
read with one closed range request, hostile tables are refused, and the verified pass
checks the table against the frames it walks.

Blobs are written by ``pyzstd.SeekableZstdFile``, an implementation of the format that is
not ours (it writes no checksums: the checksummed tables are made here from zstandard
frames, and pyzstd reads them back to confirm they are well formed).
"""

from __future__ import annotations

import gzip
import io
import random
import struct
import tarfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pyzstd
import zstandard
from builders import LayerBuilder

from snapshotter.errors import DigestMismatch, UnsafeArchive
from snapshotter.lazy import SeekIndex, Unindexed, build_index, not_worth_indexing, read_file
from snapshotter.lazy.seek_index import SPAN
from snapshotter.lazy.seekable_zstd import (
    MAX_TABLE,
    TAIL_READ,
    SeekTable,
    parse_seek_table,
    read_seek_table,
    seek_table_size,
)
from snapshotter.oci.digest import Digest
from snapshotter.store.toc import EntryKind
from snapshotter.store.unpack import unpack_layer

ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MiB = 1 << 20


class Source:
    """A blob in memory served by closed ranges (lazy.layers.RangeSource), counting them."""

    def __init__(self, blob: bytes):
        self.blob = blob
        self.calls: list[tuple[int, int]] = []

    @property
    def size(self) -> int:
        return len(self.blob)

    def read_range(self, first: int, last: int) -> bytes:
        assert 0 <= first <= last < len(self.blob), (first, last)
        self.calls.append((first, last))
        return self.blob[first : last + 1]


def _seekable(data: bytes, frame: int = 1024 * MiB, level: int = 3) -> bytes:
    """``data`` as pyzstd writes it: frames of ``frame`` bytes of content, then the table."""
    out = io.BytesIO()
    with pyzstd.SeekableZstdFile(
        out, "w", level_or_option=level, max_frame_content_size=frame
    ) as f:
        f.write(data)
    return out.getvalue()


def _table(
    entries: list[tuple[int, ...]], *, descriptor: int | None = None, count: int | None = None
) -> bytes:
    """A seek table frame: entries of (compressed, decompressed[, checksum])."""
    checksums = bool(entries) and len(entries[0]) == 3
    layout = struct.Struct("<III" if checksums else "<II")
    body = b"".join(layout.pack(*e) for e in entries)
    flags = (0x80 if checksums else 0) if descriptor is None else descriptor
    footer = struct.pack("<IBI", len(entries) if count is None else count, flags, 0x8F92EAB1)
    return struct.pack("<II", 0x184D2A5E, len(body) + len(footer)) + body + footer


def _skippable(payload: bytes) -> bytes:
    return struct.pack("<II", 0x184D2A50, len(payload)) + payload


def _tar(size: int, seed: int = 3) -> bytes:
    """A layer tar of about ``size`` bytes, partly compressible."""
    rnd = random.Random(seed)
    layer = LayerBuilder().dir("etc").file("etc/hostname", b"box\n")
    layer.symlink("etc/link", "hostname").whiteout("etc/old")
    total = i = 0
    while total < size:
        n = rnd.choice([0, 100, 5000, 70_000, 300_000, 900_000])
        data = rnd.randbytes(n // 2) + b"text " * (n // 10)
        layer.file(f"usr/d{i % 5}/f{i}", data)
        total += len(data)
        i += 1
    return layer.tar_bytes()


@pytest.fixture(scope="module")
def tar() -> bytes:
    return _tar(6 * MiB)


def _pass(
    blob: bytes, tar: bytes, *, digest: bytes | None = None, **kw: Any
) -> SeekIndex | Unindexed:
    """``build_index`` over ``blob``, a zstd layer of ``tar`` (its digest that of
    ``digest`` when given: a wrong one), indexed whatever its size."""
    return build_index(
        io.BytesIO(blob).read,
        Digest.of_bytes(blob if digest is None else digest),
        Digest.of_bytes(tar),
        ZSTD,
        min_layer_size=0,
        **kw,
    )


def _served(blob: bytes) -> Callable[[int, int], bytes]:
    def served(first: int, last: int) -> bytes:
        return blob[first : last + 1]

    return served


# -- the table ----------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [100_000, 256 << 10, MiB, 3 * MiB])
def test_pyzstd_tables_name_every_frame(tar: bytes, frame: int) -> None:
    blob = _seekable(tar, frame)
    source = Source(blob)
    table = read_seek_table(source, "layer")
    assert isinstance(table, SeekTable)
    assert source.calls == [(len(blob) - TAIL_READ, len(blob) - 1)]  # one request
    assert table == parse_seek_table(blob, len(blob))
    assert not table.checksums and not table.single_frame
    assert table.blob_size == len(blob) and table.decompressed_size == len(tar)
    with pyzstd.SeekableZstdFile(io.BytesIO(blob)) as theirs:
        assert theirs.seek_table_info == (len(table.frames), table.compressed_size, len(tar))
    assert len(table.frames) == -(-len(tar) // frame)
    dctx = zstandard.ZstdDecompressor()
    for f in table.frames:  # every frame decompresses on its own to its piece of the tar
        assert f.out_size == min(frame, len(tar) - f.out)
        assert (
            dctx.decompressobj().decompress(blob[f.start : f.start + f.size])
            == tar[f.out : f.out + f.out_size]
        )
    # the table's frame is the blob's end
    assert table.table_offset + table.table_size == len(blob)
    assert blob[table.table_offset : table.table_offset + 4] == b"\x5e\x2a\x4d\x18"


def test_a_table_with_checksums_is_read_too(tar: bytes) -> None:
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
    pieces = [tar[i : i + MiB] for i in range(0, len(tar), MiB)]
    frames = [cctx.compress(p) for p in pieces]
    # the entry's checksum is the frame's: the low 32 bits of XXH64 of its content
    entries = [
        (len(f), len(p), int.from_bytes(f[-4:], "little"))
        for f, p in zip(frames, pieces, strict=True)
    ]
    blob = b"".join(frames) + _table(entries)
    with pyzstd.SeekableZstdFile(io.BytesIO(blob)) as theirs:  # well formed, pyzstd says
        assert theirs.read() == tar
    table = read_seek_table(Source(blob))
    assert table is not None and table.checksums
    assert [(f.size, f.out_size) for f in table.frames] == [e[:2] for e in entries]
    assert table.table_size == 8 + 12 * len(entries) + 9


def test_a_large_table_costs_a_second_request() -> None:
    # 20,000 frames (a 20 GB layer in 1 MiB frames) still come with the first request
    typical = _seekable(bytes(range(256)) * 1250, frame=16)
    source = Source(typical)
    table = read_seek_table(source)
    assert table is not None and len(table.frames) == 20_000 and len(source.calls) == 1
    data = bytes(range(256)) * 2600
    blob = _seekable(data, frame=16)
    source = Source(blob)
    table = read_seek_table(source)
    assert table is not None and len(table.frames) == len(data) // 16
    assert table.table_size > TAIL_READ
    assert source.calls == [
        (len(blob) - TAIL_READ, len(blob) - 1),
        (len(blob) - table.table_size, len(blob) - TAIL_READ - 1),
    ]
    assert table == parse_seek_table(blob, len(blob))


def test_blobs_without_a_table_give_none(tar: bytes) -> None:
    blobs = {
        "one zstd frame": zstandard.ZstdCompressor().compress(tar),
        "zstd frames": b"".join(
            zstandard.ZstdCompressor().compress(tar[i : i + MiB]) for i in range(0, len(tar), MiB)
        ),
        "zstd ending in a skippable frame": zstandard.ZstdCompressor().compress(tar)
        + _skippable(b"not a seek table"),
        "gzip": gzip.compress(tar, mtime=0),
        "tiny": b"\xb1\xea\x92\x8f",
        "empty": b"",
    }
    for what, blob in blobs.items():
        source = Source(blob)
        assert read_seek_table(source, what) is None, what
        assert len(source.calls) <= 1, what
        assert parse_seek_table(blob, len(blob), what) is None, what


def test_a_tail_shorter_than_its_table_asks_for_more(tar: bytes) -> None:
    blob = _seekable(tar, 256 << 10)
    table = parse_seek_table(blob, len(blob))
    size = seek_table_size(blob[-9:], len(blob))
    assert table is not None and size == table.table_size == len(blob) - table.table_offset
    with pytest.raises(ValueError, match="read more|bytes of a"):
        parse_seek_table(blob[-size + 1 :], len(blob))


# -- hostile tables -----------------------------------------------------------------------


def _frames(tar: bytes) -> tuple[bytes, list[tuple[int, int]]]:
    cctx = zstandard.ZstdCompressor(level=1)
    pieces = [tar[i : i + MiB] for i in range(0, len(tar), MiB)]
    frames = [cctx.compress(p) for p in pieces]
    return b"".join(frames), [(len(f), len(p)) for f, p in zip(frames, pieces, strict=True)]


def test_tables_that_claim_the_impossible_are_refused(tar: bytes) -> None:
    data, entries = _frames(tar)
    first = entries[0]
    hostile = {
        "reserved bits": (data + _table(entries, descriptor=0x04), "sets reserved bits"),
        "reserved bit 6": (data + _table(entries, descriptor=0x40), "sets reserved bits"),
        "more frames than bytes": (
            data + _table(entries, count=len(data)),
            "is larger than the blob",
        ),
        "truncated: a frame's entry left out": (
            data + _table(entries[1:]),
            "the table starts at",
        ),
        "truncated: the footer counts an entry it lacks": (
            data + _table(entries, count=len(entries) + 1),
            "frame starts with|holds",
        ),
        "a frame past the table": (
            data + _table([(first[0] + len(data), first[1]), *entries[1:]]),
            "past the table's start",
        ),
        "sizes short of the table's position": (
            data + b"\0" * 64 + _table(entries),
            "the table starts at",
        ),
        "content out of nothing": (data + _table([(0, 5), *entries]), "out of none"),
        "a 3-byte frame": (
            data + _table([(3, 0), (first[0] - 3, first[1]), *entries[1:]]),
            "no frame is under 8",
        ),
        "not a skippable frame": (
            data + b"\x50" + _table(entries)[1:],
            "not the skippable magic",
        ),
        "frame size that is not the footer's": (
            data + _table(entries)[:4] + b"\xff\0\0\0" + _table(entries)[8:],
            "holds",
        ),
    }
    for what, (blob, message) in hostile.items():
        for found in (parse_seek_table, read_seek_table):
            with pytest.raises(UnsafeArchive, match=message) as caught:
                if found is parse_seek_table:
                    parse_seek_table(blob, len(blob), "layer x")
                else:
                    read_seek_table(Source(blob), "layer x")
            text = str(caught.value)
            assert text.startswith("layer x: ") and "\n" not in text, (what, text)
    # a footer alone can claim a table too large to fetch
    footer = struct.pack("<IBI", MAX_TABLE // 8, 0, 0x8F92EAB1)
    with pytest.raises(UnsafeArchive, match="larger than 8 MiB"):
        seek_table_size(footer, 1 << 40)


def test_lies_only_the_frames_reveal_fail_the_pass(tar: bytes) -> None:
    """Tables that add up but name other frames than the blob has: the pass refuses them,
    after verifying the blob (so the blob is what its manifest says, and lies)."""
    data, entries = _frames(tar)
    (c0, d0), (c1, d1) = entries[0], entries[1]
    lies = {
        "frame boundaries moved": [(c0 + 10, d0), (c1 - 10, d1), *entries[2:]],
        "decompressed sizes shifted": [(c0, d0 + 1), (c1, d1 - 1), *entries[2:]],
        "two frames named one": [(c0 + c1, d0 + d1), *entries[2:]],
        "a frame named two": [(c0 - 9, d0), (9, 0), *entries[1:]],
    }
    for what, lie in lies.items():
        blob = data + _table(lie)
        table = parse_seek_table(blob, len(blob))
        assert table is not None, what
        with pytest.raises(UnsafeArchive, match="seek table (says|names)") as caught:
            _pass(blob, tar, frames=table)
        assert "\n" not in str(caught.value), what


def test_a_table_that_is_not_the_blobs_fails_the_pass(tar: bytes) -> None:
    """A tail read from other bytes than the pass streams (a stale or tampered range)."""
    blob = _seekable(tar, MiB)
    other = _seekable(tar, MiB, level=1)
    table = parse_seek_table(other, len(other))
    assert table is not None
    with pytest.raises(DigestMismatch, match="not the one the blob ends with"):
        _pass(blob, tar, frames=table)
    # the blob's digest is still checked first
    with pytest.raises(DigestMismatch, match="content hashes to"):
        _pass(blob, tar, digest=other, frames=parse_seek_table(blob, len(blob)))


# -- the pass -----------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [256 << 10, MiB, 3 * MiB])
def test_a_seekable_layer_is_indexed_at_its_frames(tar: bytes, frame: int, tmp_path: Path) -> None:
    blob = _seekable(tar, frame)
    table = read_seek_table(Source(blob))
    assert table is not None
    span = MiB
    assert not_worth_indexing(ZSTD, len(blob), 0, frames=table, span=span) == ""
    index = _pass(blob, tar, span=span, frames=table)
    assert isinstance(index, SeekIndex)
    starts = {f.start: f.out for f in table.frames}
    assert all(starts[c.start] == c.out for c in index.checkpoints)  # at the table's frames
    assert [c.start for c in index.checkpoints[1:]] == [f.start for f in table.restart_frames(span)]
    assert index.checkpoints[-1].end == len(blob)  # the last span holds the table
    # the same pass without the table: the same index
    plain = _pass(blob, tar, span=span)
    assert plain == index
    # unpack (zstandard's decompressor) takes the trailing table frame as index does
    (tmp_path / "snap").mkdir()
    toc = unpack_layer(
        io.BytesIO(blob),
        tmp_path / "snap",
        compression="zstd",
        diff_id=Digest.of_bytes(tar),
        layer_digest=Digest.of_bytes(blob),
        blob_size=len(blob),
        what="layer",
    ).toc
    # (st_blocks aside: unpack takes them from the host file system)
    assert [replace(e, blocks=0) for e in toc] == [replace(e, blocks=0) for e in index.toc]
    with pyzstd.SeekableZstdFile(io.BytesIO(blob)) as theirs:
        for entry in index.toc:
            if entry.kind is EntryKind.FILE and entry.size:
                extent = index.extent(entry)
                assert extent is not None
                theirs.seek(extent.offset)
                assert read_file(index, entry, _served(blob)) == theirs.read(entry.size)


def test_skippable_frames_the_table_lists_are_walked_too(tar: bytes) -> None:
    """The format allows skippable frames among the data, listed with no content (pyzstd
    leaves the old table so when it appends to a file it cannot rewrite)."""
    data, entries = _frames(tar)
    half = sum(c for c, _ in entries[:3])
    note = _skippable(b"a note" * 50)
    blob = data[:half] + note + data[half:] + _table([*entries[:3], (len(note), 0), *entries[3:]])
    with pyzstd.SeekableZstdFile(io.BytesIO(blob)) as theirs:
        assert theirs.read() == tar
    table = read_seek_table(Source(blob))
    assert table is not None
    index = _pass(blob, tar, span=1, frames=table)
    assert isinstance(index, SeekIndex)
    assert [c.start for c in index.checkpoints] == [f.start for f in table.frames if f.out_size]
    entry = next(e for e in index.toc if e.kind is EntryKind.FILE and e.size > 500_000)
    at = index.extents[entry.inode].offset + 1000
    assert read_file(index, entry, _served(blob), 1000, 300_000) == tar[at : at + 300_000]


def test_a_single_frame_layer_is_known_before_any_pass(tar: bytes) -> None:
    blob = _seekable(tar)  # pyzstd's default: frames of 1 GiB, so one
    source = Source(blob)
    table = read_seek_table(source)
    assert table is not None and table.single_frame and len(source.calls) == 1
    reason = not_worth_indexing(ZSTD, len(blob), 0, frames=table)
    assert reason.startswith("single-frame zstd")
    result = _pass(blob, tar, frames=table)
    assert isinstance(result, Unindexed) and result.reason == reason
    # frames, but none past the first span: no better
    few = _seekable(tar[: 3 * MiB], MiB)
    table = parse_seek_table(few, len(few))
    assert table is not None and not table.single_frame
    assert not_worth_indexing(ZSTD, 20 * MiB, frames=table, span=SPAN).startswith(
        "zstd: no frame starts past the first 4 MiB"
    )
    with pytest.raises(ValueError, match="media type"):
        not_worth_indexing("application/vnd.oci.image.layer.v1.tar+gzip", 20 * MiB, frames=table)


# -- in the planner: a lazy mount's layers ---------------------------------------------------


def _seekable_layout(tmp_path: Path, frame: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An OCI layout of one image whose one layer (``_tar``, 9 MiB) is seekable zstd
    written by pyzstd with frames of ``frame`` bytes."""
    import builders

    def seekable(data: bytes, compression: str, **_: object) -> bytes:
        assert compression == "zstd"
        return _seekable(data, frame=frame)

    layer = LayerBuilder()
    layer.raw_bytes(_tar(9 * MiB)[:-1024])  # (the builder ends the tar itself)
    with monkeypatch.context() as m:
        m.setattr(builders, "compress", seekable)
        return builders.write_oci_layout(
            tmp_path / f"layout-{frame}", {"1": builders.ImageBuilder([layer], compression="zstd")}
        )


def test_a_lazy_mount_indexes_a_seekable_layer_checking_its_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from snapshotter.lazy.local import open_lazy_layout
    from snapshotter.store.store import Store

    layout = _seekable_layout(tmp_path, MiB, monkeypatch)
    image = open_lazy_layout(Store(tmp_path / "store"), f"oci:{layout}:1", min_layer_size=0)
    (layer,) = image.layers
    assert layer.how.startswith("indexed (built: 1 pass, "), layer.how
    assert layer.how.endswith("; seek table of 10 frames)"), layer.how
    assert isinstance(layer.index, SeekIndex) and layer.source is not None
    with tarfile.open(fileobj=io.BytesIO(_tar(9 * MiB))) as tf:
        expected = {
            i.name: tf.extractfile(i).read()  # type: ignore[union-attr]
            for i in tf
            if i.isfile() and ".wh." not in i.name
        }
    files = [e for e in layer.index.toc.entries if e.kind is EntryKind.FILE]
    assert {e.path for e in files} == set(expected)
    for entry in files:
        assert read_file(layer.index, entry, layer.source.read_range) == expected[entry.path]


def test_a_lazy_mount_fetches_a_single_frame_layer_whole_without_a_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from snapshotter.lazy.local import open_lazy_layout
    from snapshotter.store.store import Store

    layout = _seekable_layout(tmp_path, 1024 * MiB, monkeypatch)
    store = Store(tmp_path / "store")
    image = open_lazy_layout(store, f"oci:{layout}:1", min_layer_size=0)
    (layer,) = image.layers
    assert layer.how == (
        "fetched whole: single-frame zstd: no point to restart decompression at but the "
        "start (its seek table says)"
    )
    assert layer.index is None and store.has_snapshot(Digest.parse(layer.diff_id))
