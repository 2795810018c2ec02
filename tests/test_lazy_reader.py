"""The span-caching reader of lazy layers (snapshotter.lazy.reader), without FUSE."""

from __future__ import annotations

import gzip
import io
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from builders import LayerBuilder, tar_files

from snapshotter.errors import DigestMismatch
from snapshotter.lazy import SeekIndex, build_index
from snapshotter.lazy.reader import InflatedSpans, LayerReader
from snapshotter.oci.digest import Digest

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
SPAN = 256 << 10
SPARSE = {0: b"head", 700_000: random.Random(2).randbytes(90_000), (3 << 20) - 3: b"end"}


class Blob:
    """The blob, served by range; counts the calls and can be made to fail or lie."""

    def __init__(self, data: bytes):
        self.data = data
        self.calls = 0
        self.lock = threading.Lock()
        self.fail = False
        self.flip: int | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def read_range(self, first: int, last: int) -> bytes:
        with self.lock:
            self.calls += 1
        if self.fail:
            raise OSError("the blob is gone")
        out = bytearray(self.data[first : last + 1])
        if self.flip is not None and first <= self.flip <= last:
            out[self.flip - first] ^= 1
        return bytes(out)


@pytest.fixture(scope="module")
def layer() -> tuple[SeekIndex, bytes, dict[str, bytes]]:
    rnd = random.Random(7)
    builder = LayerBuilder()
    for i in range(40):
        size = rnd.choice([0, 10, 5000, 100_000, 400_000])
        builder.file(f"d/f{i}", rnd.randbytes(size) if i % 2 else bytes(size))
    builder.sparse_file("sparse", 3 << 20, SPARSE)
    tar = builder.tar_bytes()
    blob = gzip.compress(tar, mtime=0)
    index = build_index(
        io.BytesIO(blob).read,
        Digest.of_bytes(blob),
        Digest.of_bytes(tar),
        GZIP,
        span=SPAN,
        min_layer_size=0,
    )
    assert isinstance(index, SeekIndex) and len(index.checkpoints) > 8
    return index, blob, tar_files(tar)


def _expected(path: str, files: dict[str, bytes]) -> bytes:
    if path == "sparse":
        out = bytearray(3 << 20)
        for at, data in SPARSE.items():
            out[at : at + len(data)] = data
        return bytes(out)
    return files[path]


def test_every_file_reads_right_in_pieces_from_many_threads(layer) -> None:
    index, blob_bytes, files = layer
    blob = Blob(blob_bytes)
    cache = InflatedSpans(limit=4 * SPAN)
    reader = LayerReader(index, blob, cache)
    entries = [e for e in index.toc if e.kind.value == "-"]

    def read_whole(entry: object) -> bool:
        rnd = random.Random(entry.path)  # type: ignore[attr-defined]
        out = bytearray()
        while len(out) < entry.size:  # type: ignore[attr-defined]
            out += reader.read(entry.inode, entry.size, len(out), rnd.randrange(1, 70_000))  # type: ignore[attr-defined]
        # (not ``assert a == b``: pytest's explanation of megabytes that differ takes minutes)
        if bytes(out) != _expected(entry.path, files):  # type: ignore[attr-defined]
            pytest.fail(f"{entry.path}: wrong bytes")  # type: ignore[attr-defined]
        assert reader.read(entry.inode, entry.size, entry.size, 10) == b""  # type: ignore[attr-defined]
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read_whole, entries * 2))
    assert cache.size <= 4 * SPAN and len(cache) <= 4 + 1


def test_a_span_is_fetched_once_while_it_stays_cached(layer) -> None:
    index, blob_bytes, files = layer
    blob = Blob(blob_bytes)
    reader = LayerReader(index, blob, InflatedSpans())
    entry = index.toc.find("sparse")
    for offset in range(0, entry.size, 4096):
        reader.read(entry.inode, entry.size, offset, 4096)
    touched = {
        k
        for k, cp in enumerate(index.checkpoints)
        if cp.out < index.extents[entry.inode].offset + 90_000 + 8  # its stored regions
        and (
            k + 1 == len(index.checkpoints)
            or index.checkpoints[k + 1].out > index.extents[entry.inode].offset
        )
    }
    assert 1 <= blob.calls <= len(touched) + 1, (blob.calls, touched)


def test_a_failed_or_wrong_span_caches_nothing_and_the_next_read_tries_again(layer) -> None:
    index, blob_bytes, files = layer
    blob = Blob(blob_bytes)
    cache = InflatedSpans()
    reader = LayerReader(index, blob, cache)
    entry = index.toc.find("d/f3")
    at = index.extents[entry.inode].offset
    blob.fail = True
    with pytest.raises(OSError):
        reader.read(entry.inode, entry.size, 0, entry.size)
    blob.fail = False
    k = max(i for i, cp in enumerate(index.checkpoints) if cp.out <= at)
    blob.flip = (index.checkpoints[k].start + index.checkpoints[k].end) // 2
    with pytest.raises(DigestMismatch):
        reader.read(entry.inode, entry.size, 0, entry.size)
    assert len(cache) == 0
    blob.flip = None
    assert reader.read(entry.inode, entry.size, 0, entry.size) == files["d/f3"], "wrong bytes"
    assert len(cache) >= 1


def test_the_cache_keeps_the_most_recent_spans_within_its_bytes() -> None:
    cache = InflatedSpans(limit=10)
    cache.put(("a", 0), b"1234")
    cache.put(("a", 1), b"5678")
    assert cache.get(("a", 0)) == b"1234"  # now the most recent
    cache.put(("a", 2), b"9abc")
    assert cache.get(("a", 1)) is None and cache.get(("a", 0)) == b"1234"
    cache.put(("a", 3), b"x" * 11)  # larger than the whole cache: not kept
    assert cache.get(("a", 3)) is None and cache.size == 8
