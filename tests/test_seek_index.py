"""The seek index of a layer blob (snapshotter.lazy): one verified pass builds it, and reads
through it fetch only the spans they need, verified.

Layers are built here with tests/builders.py (gzip: one member and many; zstd: many frames
with the ``zstandard`` package; uncompressed), the toc is compared with what
``store.unpack`` records for the same blob, and every file read through the index is
compared with ``tarfile``'s.  The real archives of ../shared/fixtures go through it too.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zstandard
from builders import LayerBuilder

from snapshotter.errors import DigestMismatch, StoreCorrupt, UnsafeArchive
from snapshotter.lazy import (
    SeekIndex,
    Unindexed,
    build_index,
    not_worth_indexing,
    read_file,
    read_tar,
)
from snapshotter.lazy.seek_index import MAGIC, MAX_FETCH, SPAN, FileExtent
from snapshotter.oci.digest import Digest
from snapshotter.store.toc import EntryKind, Toc, TocEntry
from snapshotter.store.unpack import unpack_layer

MT = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


def _big_layer() -> bytes:
    """A 24 MiB layer tar: every entry kind, and content that is partly incompressible
    (random), partly text, partly zeros, in files from 0 bytes to 3 MiB."""
    rnd = random.Random(13)
    layer = LayerBuilder()
    layer.dir("etc", mode=0o755).file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    layer.file("etc/shadow", b"root:*:1::::::\n", mode=0o600, uid=0, gid=42)
    layer.file(
        "bin/ping",
        b"\x7fELF" + rnd.randbytes(3000),
        mode=0o4755,
        xattrs={"security.capability": b"\x01\x00\x00\x02\x00\x20\x00\x00"},
    )
    layer.symlink("bin/sh", "busybox").hardlink("bin/ping6", "bin/ping")
    layer.chardev("dev/null", 1, 3).blockdev("dev/sda", 8, 0).fifo("run/pipe")
    layer.whiteout("var/cache/old").opaque("tmp")
    layer.sparse_file("var/sparse.img", 9 << 20, {0: b"head", 5 << 20: rnd.randbytes(70000)})
    words = [rnd.randbytes(rnd.randrange(2, 9)).hex() for _ in range(500)]
    total = 0
    i = 0
    while total < 24 << 20:
        size = rnd.choice([0, 1, 700, 1024, 5000, 40000, 300_000, 1 << 20, 3 << 20])
        style = i % 3
        if style == 0:
            data = rnd.randbytes(size)
        elif style == 1:
            data = " ".join(rnd.choice(words) for _ in range(size // 5 + 1)).encode()[:size]
        else:
            data = bytes(size // 2) + rnd.randbytes(size - size // 2)
        layer.file(f"usr/share/d{i % 7}/f{i}", data, mtime=1_700_000_000 + i)
        total += size
        i += 1
    layer.file("usr/share/d0/f0", b"replaced later in the same layer")
    layer.file("etc/small", b"x" * 1024)
    return layer.tar_bytes()


def _compress(tar: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(tar, compresslevel=6, mtime=0)
    if how == "gzip-members":  # concatenated members, as pigz --independent or eStargz
        step = 3 << 20
        return b"".join(gzip.compress(tar[i : i + step], mtime=0) for i in range(0, len(tar), step))
    if how == "zstd":  # several frames, as zstd:chunked or `zstd --stream-size` make
        step = 2 << 20
        cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
        return b"".join(cctx.compress(tar[i : i + step]) for i in range(0, len(tar), step))
    assert how == "none"
    return tar


def _media(how: str) -> str:
    return MT[how.partition("-")[0]]


class Layer:
    """A blob, its tar and its index; ``read_range`` serves the blob and counts calls."""

    def __init__(self, tar: bytes, how: str, **options: Any):
        self.tar = tar
        self.blob = _compress(tar, how)
        self.how = how
        index = build_index(
            io.BytesIO(self.blob).read,
            Digest.of_bytes(self.blob),
            Digest.of_bytes(tar),
            _media(how),
            blob_size=len(self.blob),
            **options,
        )
        assert isinstance(index, SeekIndex), index
        self.index = index
        self.calls: list[tuple[int, int]] = []

    def read_range(self, first: int, last: int) -> bytes:
        assert 0 <= first <= last < len(self.blob), (first, last)
        self.calls.append((first, last))
        return self.blob[first : last + 1]


@pytest.fixture(scope="module")
def big_tar() -> bytes:
    return _big_layer()


@pytest.fixture(scope="module", params=["gzip", "gzip-members", "zstd", "none"])
def big(request: pytest.FixtureRequest, big_tar: bytes) -> Layer:
    return Layer(big_tar, request.param)


def _files(tar: bytes) -> dict[str, bytes]:
    """Content of each regular file as tarfile reads it (sparse ones expanded); the last
    entry of a name wins, and ``/``-stripped names, as the toc has them; whiteout markers
    are not files."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        for member in tf:
            if (member.isreg() or member.islnk()) and not member.name.rpartition("/")[2].startswith(
                ".wh."
            ):
                fh = tf.extractfile(member)
                assert fh is not None
                out[member.name.strip("/")] = fh.read()
    return out


def _unpacked_toc(tmp_path: Path, blob: bytes, tar: bytes, how: str) -> Toc:
    dest = tmp_path / f"snap-{how}"
    dest.mkdir()
    compression = how.partition("-")[0]
    return unpack_layer(
        io.BytesIO(blob),
        dest,
        compression=compression,
        diff_id=Digest.of_bytes(tar),
        layer_digest=Digest.of_bytes(blob),
        blob_size=len(blob),
        what="layer",
    ).toc


def _without_blocks(toc: Toc) -> list[object]:
    # st_blocks is what the host file system gave unpack's data files; the index, which
    # writes none, says what a 4 KiB-block file system gives.
    return [replace(e, blocks=0) for e in toc.entries]


# -- the pass ---------------------------------------------------------------------------


def test_every_file_reads_back_through_the_index(big: Layer) -> None:
    index = big.index
    assert index.tar_size == len(big.tar)
    assert len(index.checkpoints) >= len(big.tar) // SPAN - 1  # about one per 4 MiB
    expected = _files(big.tar)
    files = [e for e in index.toc if e.kind is EntryKind.FILE]
    assert {e.path for e in files} == set(expected)
    for entry in files:
        assert read_file(index, entry, big.read_range) == expected[entry.path], entry.path
        digest = "sha256:" + hashlib.sha256(expected[entry.path]).hexdigest()
        assert entry.digest == (digest if entry.size else "")


def test_toc_is_the_one_unpack_records(big: Layer, tmp_path: Path) -> None:
    unpacked = _unpacked_toc(tmp_path, big.blob, big.tar, big.how)
    assert _without_blocks(big.index.toc) == _without_blocks(unpacked)
    kinds = {e.kind for e in unpacked}
    assert kinds == set(EntryKind)  # whiteouts, devices, fifos, links: all of them


def test_ranges_read_at_any_offset(big: Layer) -> None:
    rnd = random.Random(5)
    tar = big.tar
    cuts = [c.out for c in big.index.checkpoints]
    ranges = [(0, 1), (len(tar) - 1, len(tar)), (0, len(tar))]
    ranges += [(c - 3, c + 3) for c in cuts[1:]]  # across every checkpoint
    for _ in range(40):
        a = rnd.randrange(len(tar))
        ranges.append((a, min(len(tar), a + rnd.choice([1, 1024, 70000, 5 << 20]))))
    for a, b in ranges:
        assert read_tar(big.index, big.read_range, a, b) == tar[a:b], (a, b)


@pytest.mark.parametrize("level", [1, 9])
def test_gzip_checkpoints_in_text_restart_with_their_window_and_bits(level: int) -> None:
    # Text only: every block after a checkpoint refers back into the 32 KiB window, and
    # blocks end at any bit, so a wrong window or bit offset cannot go unnoticed.
    rnd = random.Random(level)
    words = [rnd.randbytes(rnd.randrange(1, 6)).hex() for _ in range(3000)]
    layer = LayerBuilder()
    for i in range(6):
        layer.file(f"doc/{i}.txt", " ".join(rnd.choices(words, k=330_000)).encode())
    tar = layer.tar_bytes()
    blob = gzip.compress(tar, compresslevel=level, mtime=0)
    index = build_index(
        io.BytesIO(blob).read,
        Digest.of_bytes(blob),
        Digest.of_bytes(tar),
        MT["gzip"],
        min_layer_size=0,
        span=1 << 20,
    )
    assert isinstance(index, SeekIndex)
    inside = [c for c in index.checkpoints if not c.header]
    assert len(inside) >= 8
    assert all(len(c.window) == 32768 for c in inside)
    assert len({c.bits for c in inside}) > 2  # blocks end at many bit offsets

    def served(first: int, last: int) -> bytes:
        return blob[first : last + 1]

    for c in inside:
        assert read_tar(index, served, c.out, c.out + 5000) == tar[c.out : c.out + 5000]


def test_a_small_file_costs_one_request_of_at_most_two_spans(big: Layer) -> None:
    points = big.index.checkpoints
    biggest = max(c.end - c.start for c in points)
    small = [e for e in big.index.toc if e.kind is EntryKind.FILE and 0 < e.size <= 1024]
    assert len(small) >= 10
    for entry in small:
        big.calls.clear()
        read_file(big.index, entry, big.read_range)
        assert len(big.calls) == 1, entry.path
        first, last = big.calls[0]
        assert last + 1 - first <= 2 * biggest
        spans = [c for c in points if first <= c.start and c.end <= last + 1]
        assert 1 <= len(spans) <= 2, entry.path
        assert spans[0].start == first and spans[-1].end == last + 1


def test_reads_from_many_threads_at_once(big: Layer) -> None:
    # FUSE serves reads from worker threads; zlib runs without the GIL under ctypes.
    expected = _files(big.tar)
    files = [e for e in big.index.toc if e.kind is EntryKind.FILE and e.size > 100_000]

    def served(first: int, last: int) -> bytes:
        return big.blob[first : last + 1]

    def check(entry: TocEntry) -> bool:
        half = entry.size // 2
        got = read_file(big.index, entry, served, half, 70_000)
        return got == expected[entry.path][half : half + 70_000]

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(check, files * 2))


def test_adjacent_spans_are_merged_up_to_the_fetch_limit(big: Layer) -> None:
    index = big.index
    big.calls.clear()
    assert read_tar(index, big.read_range, 0, index.tar_size) == big.tar
    assert sum(b + 1 - a for a, b in big.calls) <= index.blob_size + len(big.calls)
    assert len(big.calls) <= index.blob_size // (MAX_FETCH // 2) + 1
    assert all(b + 1 - a <= MAX_FETCH for a, b in big.calls)
    small_limit = 1 << 20
    big.calls.clear()
    assert read_tar(index, big.read_range, 0, index.tar_size, max_fetch=small_limit) == big.tar
    assert len(big.calls) == len(index.checkpoints)  # every span is bigger: one each


def test_a_tampered_span_is_refused(big: Layer) -> None:
    index = big.index
    victim = index.checkpoints[2]
    bad = bytearray(big.blob)
    bad[(victim.start + victim.end) // 2] ^= 0x01
    served = bytes(bad)

    def tampered(first: int, last: int) -> bytes:
        return served[first : last + 1]

    start, end = victim.out, victim.out + 100
    with pytest.raises(DigestMismatch, match="seek index says"):
        read_tar(index, tampered, start, end)
    # A range that lies wholly before it is still served, verified.
    before = index.checkpoints[1]
    assert (
        read_tar(index, tampered, before.out, before.out + 100)
        == big.tar[before.out : before.out + 100]
    )
    # A short answer (a cut connection, a proxy that ignores Range) is refused too.
    with pytest.raises(DigestMismatch, match="came as"):
        read_tar(index, lambda a, b: big.blob[a:b], start, end)


def test_the_index_survives_serialization_within_one_percent(big: Layer) -> None:
    data = big.index.to_bytes()
    ratio = len(data) / big.index.tar_size
    print(
        f"\n{big.how}: index {len(data)} B for a {big.index.tar_size} B tar "
        f"({len(big.index.checkpoints)} checkpoints, {len(big.index.toc.entries)} entries)"
        f" = {ratio:.3%}"
    )
    assert ratio <= 0.01
    loaded = SeekIndex.from_bytes(data)
    assert loaded == big.index
    entry = big.index.toc.find("etc/small")
    assert entry is not None
    assert read_file(loaded, entry, big.read_range, 10, 20) == b"x" * 20


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:-10],
        lambda d: b"not an index" + d[12:],
        lambda d: d[:23] + b"\x09" + d[24:],  # an unknown version
        lambda d: d[:-1] + bytes([d[-1] ^ 1]),
    ],
)
def test_a_damaged_index_is_refused(damage: Callable[[bytes], bytes]) -> None:
    rnd = random.Random(3)
    tar = LayerBuilder().file("a", rnd.randbytes(3 << 20)).file("b", b"b" * 9000).tar_bytes()
    layer = Layer(tar, "gzip", min_layer_size=0, span=1 << 20)
    assert len(layer.index.checkpoints) == 3
    with pytest.raises(StoreCorrupt):
        SeekIndex.from_bytes(damage(layer.index.to_bytes()))


def _member(data: bytes, *, name: bytes = b"", comment: bytes = b"", extra: bytes = b"") -> bytes:
    """One gzip member with the optional header fields RFC 1952 allows (and a header CRC)."""
    flags = 2 | (8 if name else 0) | (16 if comment else 0) | (4 if extra else 0)
    head = b"\x1f\x8b\x08" + bytes([flags]) + bytes(4) + b"\x00\xff"
    if extra:
        head += len(extra).to_bytes(2, "little") + extra
    if name:
        head += name + b"\0"
    if comment:
        head += comment + b"\0"
    head += (zlib.crc32(head) & 0xFFFF).to_bytes(2, "little")
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflate.compress(data) + deflate.flush()
    trailer = zlib.crc32(data).to_bytes(4, "little") + (len(data) & 0xFFFFFFFF).to_bytes(
        4, "little"
    )
    return head + body + trailer


def _skippable(payload: bytes) -> bytes:
    return (0x184D2A5E).to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload


def _odd_blobs(tar: bytes) -> Iterator[tuple[str, str, bytes]]:
    """Blobs of ``tar`` framed as real tools frame them, and as RFC 1952 and 8878 allow."""
    third = len(tar) // 3
    parts = [tar[:third], tar[third : 2 * third], tar[2 * third :]]
    yield (
        "gzip members with names, comments, extra fields, zero padding",
        "gzip",
        _member(parts[0], name=b"layer.tar", extra=b"SG\x04\x00abcd")
        + _member(b"")
        + _member(parts[1], comment=b"a comment")
        + bytes(7)
        + _member(parts[2], name=b"x" * 3000)
        + bytes(20),
    )
    plain = zstandard.ZstdCompressor(level=1)
    checked = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=False)
    yield (
        "zstd frames between skippable ones, as zstd:chunked writes its manifest",
        "zstd",
        _skippable(b"first")
        + plain.compress(parts[0])
        + checked.compress(b"")
        + checked.compress(parts[1])
        + plain.compress(parts[2])
        + _skippable(b"manifest" * 100),
    )


def test_every_framing_the_formats_allow_reads_like_unpack(tmp_path: Path) -> None:
    rnd = random.Random(8)
    layer = LayerBuilder()
    for i in range(12):
        layer.file(f"f{i}", rnd.randbytes(50_000) + b"text " * rnd.randrange(1, 30_000))
    tar = layer.tar_bytes()
    expected = _files(tar)
    for what, how, blob in _odd_blobs(tar):
        index = build_index(
            io.BytesIO(blob).read,
            Digest.of_bytes(blob),
            Digest.of_bytes(tar),
            MT[how],
            min_layer_size=0,
            span=1,
        )
        assert isinstance(index, SeekIndex), what
        assert len(index.checkpoints) >= 3, what
        toc = _unpacked_toc(tmp_path, blob, tar, f"{how}-odd")
        assert _without_blocks(index.toc) == _without_blocks(toc), what

        def served(first: int, last: int, blob: bytes = blob) -> bytes:
            return blob[first : last + 1]

        for entry in index.toc:
            if entry.kind is EntryKind.FILE:
                assert read_file(index, entry, served) == expected[entry.path], (what, entry.path)
        for c in index.checkpoints[1:]:
            assert read_tar(index, served, c.out - 1, c.out + 1) == tar[c.out - 1 : c.out + 1]


@pytest.mark.parametrize("how", ["gzip", "none"])  # zstd: no frame at all, so Unindexed
def test_an_empty_blob_is_an_empty_layer_as_for_unpack(how: str, tmp_path: Path) -> None:
    index = build_index(
        io.BytesIO(b"").read, Digest.of_bytes(b""), Digest.of_bytes(b""), MT[how], min_layer_size=0
    )
    assert isinstance(index, SeekIndex)
    assert _without_blocks(index.toc) == _without_blocks(_unpacked_toc(tmp_path, b"", b"", how))
    assert index.tar_size == 0 and read_tar(index, lambda a, b: b"", 0, 0) == b""


def test_an_index_that_points_outside_its_blob_is_refused() -> None:
    rnd = random.Random(4)
    tar = LayerBuilder().file("a", rnd.randbytes(3 << 20)).tar_bytes()
    index = Layer(tar, "gzip", min_layer_size=0, span=1 << 20).index
    points = index.checkpoints
    lies = [
        replace(index, checkpoints=(*points[:-1], replace(points[-1], end=index.blob_size + 9))),
        replace(index, checkpoints=(replace(points[0], start=5), *points[1:])),
        replace(index, checkpoints=(points[0], points[2], points[1])),
        replace(index, tar_size=points[-1].out),
        replace(index, extents={2: FileExtent(index.tar_size + 1)}),
    ]
    for lie in lies:
        with pytest.raises(StoreCorrupt):
            SeekIndex.from_bytes(lie.to_bytes())
    body = zstandard.ZstdCompressor(write_content_size=False).compress(b"{}")
    with pytest.raises(StoreCorrupt, match="a body of -1 bytes"):
        SeekIndex.from_bytes(MAGIC + bytes([1]) + body)


# -- refusals and the layers not worth indexing -------------------------------------------


@pytest.mark.parametrize("how", ["gzip", "zstd"])
def test_a_wrong_digest_or_diff_id_fails_the_pass(how: str) -> None:
    tar = LayerBuilder().file("a", b"a" * 5000).tar_bytes()
    blob = _compress(tar, how)
    good, other = Digest.of_bytes(blob), Digest.of_bytes(b"other")
    with pytest.raises(DigestMismatch, match="content hashes to"):
        build_index(io.BytesIO(blob).read, other, Digest.of_bytes(tar), MT[how], min_layer_size=0)
    with pytest.raises(DigestMismatch, match="diff_ids"):
        build_index(io.BytesIO(blob).read, good, other, MT[how], min_layer_size=0)
    corrupt = bytearray(blob)
    corrupt[len(blob) // 2] ^= 0xFF
    with pytest.raises(DigestMismatch):
        build_index(
            io.BytesIO(bytes(corrupt)).read, good, Digest.of_bytes(tar), MT[how], min_layer_size=0
        )


def test_a_hostile_tar_is_refused_as_unpack_refuses_it() -> None:
    tar = LayerBuilder().file("../etc/passwd", b"x", raw_name=True).tar_bytes()
    blob = gzip.compress(tar)
    with pytest.raises(UnsafeArchive, match="escapes the layer root"):
        build_index(
            io.BytesIO(blob).read,
            Digest.of_bytes(blob),
            Digest.of_bytes(tar),
            MT["gzip"],
            min_layer_size=0,
        )


def test_small_and_single_frame_layers_are_not_worth_indexing(big_tar: bytes) -> None:
    tar = LayerBuilder().file("a", b"a" * 5000).tar_bytes()
    blob = gzip.compress(tar)
    result = build_index(
        io.BytesIO(blob).read, Digest.of_bytes(blob), Digest.of_bytes(tar), MT["gzip"]
    )
    assert isinstance(result, Unindexed) and "smaller than 10 MiB" in result.reason
    assert not_worth_indexing(MT["gzip"], len(blob)) == result.reason
    assert not_worth_indexing(MT["gzip"], 20 << 20) == ""
    one_frame = zstandard.ZstdCompressor(level=1).compress(big_tar)
    assert len(one_frame) >= 10 << 20
    result = build_index(
        io.BytesIO(one_frame).read, Digest.of_bytes(one_frame), Digest.of_bytes(big_tar), MT["zstd"]
    )
    assert isinstance(result, Unindexed) and "single-frame zstd" in result.reason


# -- real archives ------------------------------------------------------------------------


def _oci_layers(root: Callable[[str], bytes | None]) -> Iterator[tuple[str, bytes, str, str]]:
    """(media type, blob, digest, diff_id) of every layer present in an OCI layout,
    ``root(path)`` reading its files."""
    seen = set()

    def blob(digest: str) -> bytes | None:
        return root("blobs/" + digest.replace(":", "/"))

    def walk(doc: dict[str, Any]) -> Iterator[tuple[str, bytes, str, str]]:
        for desc in doc.get("manifests") or []:
            raw = blob(desc["digest"])
            if raw is None:
                continue
            child = json.loads(raw)
            if "manifests" in child:
                yield from walk(child)
            elif "layers" in child and "config" in child:
                config_raw = blob(child["config"]["digest"])
                if config_raw is None:
                    continue
                config = json.loads(config_raw)
                diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
                for layer, diff_id in zip(child["layers"], diff_ids, strict=False):
                    data = blob(layer["digest"])
                    known = layer["mediaType"] in MT.values() and layer["digest"] not in seen
                    if data is not None and known:
                        seen.add(layer["digest"])
                        yield layer["mediaType"], data, layer["digest"], diff_id

    index = root("index.json")
    if index is not None:
        yield from walk(json.loads(index))


def _fixture_layers(fixtures: Path) -> Iterator[tuple[str, str, bytes, str, str]]:
    for path in sorted((fixtures / "oci-archive").glob("*.tar")):
        with tarfile.open(path) as tf:
            names = set(tf.getnames())

            def read(name: str, tf: tarfile.TarFile = tf, names: set[str] = names) -> bytes | None:
                if name not in names:
                    return None
                fh = tf.extractfile(name)
                return fh.read() if fh else None

            for layer in _oci_layers(read):
                yield (path.name, *layer)
    for path in sorted((fixtures / "oci-layout").iterdir()):

        def read_file_of(name: str, path: Path = path) -> bytes | None:
            p = path / name
            return p.read_bytes() if p.is_file() else None

        for layer in _oci_layers(read_file_of):
            yield (path.name, *layer)


def test_fixture_layers_index_and_read_like_unpack(fixtures_dir: Path, tmp_path: Path) -> None:
    done: dict[str, str] = {}
    for name, media_type, blob, digest, diff_id in _fixture_layers(fixtures_dir):
        what = f"{name} {digest[:19]}"
        # A span of one byte puts a checkpoint at every block boundary and gzip member.
        index = build_index(
            io.BytesIO(blob).read,
            Digest.parse(digest),
            Digest.parse(diff_id),
            media_type,
            min_layer_size=0,
            span=1,
        )
        tar = _decompressed(blob)
        how = {"application/vnd.oci.image.layer.v1.tar+gzip": "gzip"}.get(
            media_type, media_type.rpartition("+")[2] if "+" in media_type else "none"
        )
        if isinstance(index, Unindexed):
            assert how == "zstd" and "single-frame" in index.reason, (what, index)
            done[what] = "single-frame zstd"
            continue
        toc = _unpacked_toc(tmp_path, blob, tar, f"{how}-{len(done)}")
        assert _without_blocks(index.toc) == _without_blocks(toc), what
        expected = _files(tar)

        def served(first: int, last: int, blob: bytes = blob) -> bytes:
            return blob[first : last + 1]

        for entry in index.toc:
            if entry.kind is EntryKind.FILE:
                assert read_file(index, entry, served) == expected[entry.path], (what, entry.path)
        done[what] = f"{len(index.checkpoints)} checkpoints"
    print("\n" + "\n".join(f"{k}: {v}" for k, v in sorted(done.items())))
    assert any("estargz" in k for k in done)
    assert any("zstd" in k for k in done)
    assert len(done) >= 10


def _decompressed(blob: bytes) -> bytes:
    if blob.startswith(b"\x1f\x8b"):
        return gzip.decompress(blob)
    if blob.startswith(b"\x28\xb5\x2f\xfd"):
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(blob), read_across_frames=True
        )
        return reader.read()
    return blob
