"""Lazy mounts (``mount --lazy``): real FUSE mounts of OCI layouts read through seek indexes.

The reference is the eager mount of the same image pulled into another store: entry for
entry (names, kinds, modes, owners, sizes, mtimes, xattrs, link targets, devices, inode
numbers, link counts and every file's bytes) the two must agree.  ``st_blocks`` is left
out: an index computes it from the stored bytes, where a snapshot measures its data file.

Blob reads are counted through ``CountingBlob``, a ``LocalBlob`` that appends each range
it serves to a file (the daemon is a forked process, and forks workers of its own).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gzip
import hashlib
import os
import random
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import Run, assert_daemon_pyfuse3, run_in
from test_fusefs import cleanup, daemons, need_fuse, oracle_layers, walk

from snapshotter.lazy.layers import LazyImage
from snapshotter.lazy.local import LocalBlob, open_lazy_layout
from snapshotter.oci.model import Platform
from snapshotter.store.store import Store
from snapshotter.view.mount import mount_lazy, mounted_at

AMD64 = Platform.parse("linux/amd64")


class CountingBlob(LocalBlob):
    """A ``LocalBlob`` that logs every range it serves to ``log`` ("first last" lines)."""

    def __init__(self, blob: LocalBlob, log: Path):
        super().__init__(blob.path, fd=blob.fileno(), start=blob.start, size=blob.size)
        self._log = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)

    def read_range(self, first: int, last: int) -> bytes:
        os.write(self._log, f"{first} {last}\n".encode())
        return super().read_range(first, last)


def same(a: bytes, b: bytes) -> bool:
    """``a == b``, for asserts whose failure pytest would otherwise explain byte by byte
    (minutes for megabytes)."""
    return a == b


def ranges(log: Path) -> list[tuple[int, int]]:
    if not log.exists():
        return []
    return [(int(a), int(b)) for a, b in (line.split() for line in log.read_text().splitlines())]


def counted(image: LazyImage, log: Path) -> LazyImage:
    """``image`` with each indexed layer's source replaced by a ``CountingBlob``."""
    layers = []
    for layer in image.layers:
        if layer.source is not None:
            assert isinstance(layer.source, LocalBlob)
            layer = dataclasses.replace(layer, source=CountingBlob(layer.source, log))
        layers.append(layer)
    return dataclasses.replace(image, layers=tuple(layers))


@contextlib.contextmanager
def lazy_mounted(root: Path, image: LazyImage, mp: Path) -> Iterator[int]:
    """``mount_lazy`` in a daemon forked from here; yield its pid; always unmount."""
    pids: list[int] = []
    try:
        mount_lazy(Store(root), image, mp)
        pids = daemons(root, mp)
        assert len(pids) == 1, pids
        assert_daemon_pyfuse3(pids[0])
        yield pids[0]
    finally:
        cleanup(run_in(root), root, mp, pids)


@contextlib.contextmanager
def cli_mounted(run: Run, root: Path, mp: Path, *args: str) -> Iterator[str]:
    """``snapshotter mount ARGS... MP``; yield its stderr; always unmount."""
    try:
        result = run("mount", *args, str(mp))
        assert result.rc == 0, result.err
        assert result.out == ""
        pids = daemons(root, mp)
        assert len(pids) == 1, pids
        assert_daemon_pyfuse3(pids[0])
        yield result.err
    finally:
        cleanup(run, root, mp, [])


def seen(root: Path) -> tuple[dict[str, object], dict[str, tuple[int, int]]]:
    """What ``walk`` sees but ``st_blocks``; and each path's (inode, nlink)."""
    entries, stats = walk(root)
    return (
        {p: dataclasses.replace(s, blocks=-1) for p, s in entries.items()},
        {p: (st.st_ino, st.st_nlink) for p, st in stats.items()},
    )


def assert_same_view(lazy: Path, eager: Path) -> int:
    ours, our_stats = seen(lazy)
    theirs, their_stats = seen(eager)
    problems = [
        f"  {p!r}:\n    lazy:  {ours.get(p)}\n    eager: {theirs.get(p)}"
        for p in sorted(set(ours) | set(theirs))
        if ours.get(p) != theirs.get(p)
    ]
    assert not problems, f"{len(problems)} entries differ\n" + "\n".join(problems[:8])
    assert our_stats == their_stats
    return len(ours)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    need_fuse()
    path = Path(tempfile.mkdtemp(prefix="snapshotter-lazy-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for mp in path.glob("**/mp*"):
            if mounted_at(mp):
                cleanup(run_in(path / "unused"), path / "unused", mp, [])
        shutil.rmtree(path, ignore_errors=True)


def fresh(world: Path, prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=world))


# -- the oracle image, made big enough to index ---------------------------------------------


def _filler(layer: LayerBuilder, seed: int, total: int, where: str) -> LayerBuilder:
    """Files of ``total`` bytes under ``where``: two thirds random (incompressible), the
    rest text, so the gzip blob is over 10 MiB and spans several checkpoints."""
    rnd = random.Random(seed)
    words = [rnd.randbytes(rnd.randrange(2, 7)).hex() for _ in range(300)]
    layer.dir(where)
    done = i = 0
    while done < total:
        size = rnd.choice([1, 900, 4096, 70_000, 600_000, 1 << 20])
        if i % 3 != 2:
            data = rnd.randbytes(size)
        else:
            data = " ".join(rnd.choice(words) for _ in range(size // 5 + 1)).encode()[:size]
        layer.file(f"{where}/f{i}", data, mode=0o644 if i % 2 else 0o600, uid=i % 5)
        done += size
        i += 1
    return layer


@pytest.fixture(scope="module")
def oracle_layout(world: Path) -> Path:
    """The image test_fusefs checks against overlayfs (whiteouts, opaque directories,
    hardlinks, symlinks, devices, xattrs, a 64 MiB sparse file), its first two layers
    grown past 10 MiB (indexed), its top one small (fetched whole); gzip."""
    base, middle, top = oracle_layers()
    _filler(base, 1, 15 << 20, "usr")
    _filler(middle, 2, 16 << 20, "opt")
    middle.whiteout("usr/f3").file("usr/f4", b"replaced in layer 2")
    return write_oci_layout(world / "oracle", {"1": ImageBuilder([base, middle, top])})


def test_a_lazy_mount_equals_the_eager_one(world: Path, oracle_layout: Path) -> None:
    eager_root, lazy_root = world / "eager", world / "lazy"
    eager, lazy = fresh(world, "mp-eager"), fresh(world, "mp-lazy")
    source = f"oci:{oracle_layout}:1"
    eager_run, lazy_run = run_in(eager_root), run_in(lazy_root)
    assert eager_run("pull", "-q", source, "--name", "oracle:1").rc == 0
    began = time.monotonic()
    with (
        cli_mounted(eager_run, eager_root, eager, "oracle:1"),
        cli_mounted(lazy_run, lazy_root, lazy, "--lazy", source) as err,
    ):
        print(f"mount --lazy (3 layers, 2 indexed): {time.monotonic() - began:.2f}s")
        lines = err.strip().splitlines()
        assert len(lines) == 3, err
        assert lines[0].startswith("layer 1 sha256:") and "indexed (built: 1 pass" in lines[0]
        assert lines[1].startswith("layer 2 sha256:") and "indexed (built: 1 pass" in lines[1]
        assert lines[2].startswith("layer 3 sha256:")
        assert lines[2].endswith("fetched whole: smaller than 10 MiB (" + lines[2].split("(")[-1])
        with open("/proc/mounts") as f:
            assert f"snapshotter:lazy:{source} {lazy} fuse.snapshotter ro," in f.read()
        assert assert_same_view(lazy, eager) > 60
    # A second lazy mount takes both indexes from the store's cache, and the small layer
    # from its snapshot.
    with cli_mounted(lazy_run, lazy_root, lazy, "--lazy", source) as err:
        hows = [line.partition(": ")[2] for line in err.strip().splitlines()]
        assert hows == ["indexed (cache)", "indexed (cache)", "in the store already (unpacked)"]
    assert not any((lazy_root / "tmp").iterdir())


@pytest.mark.parametrize("tag", ["v1", "v2", "v3"])
def test_fixture_layouts_mount_lazily_as_they_mount_eagerly(
    world: Path, fixtures_dir: Path, tag: str
) -> None:
    """regclient's testrepo: 2, 3 and 5 real gzip layers (BuildKit), each indexed (they
    are tiny: the size limit is lifted here)."""
    layout = fixtures_dir / "oci-layout" / "regclient--testrepo"
    source = f"oci:{layout}:{tag}"
    eager_root, lazy_root = world / f"eager-{tag}", world / f"lazy-{tag}"
    eager, lazy = fresh(world, "mp-eager"), fresh(world, "mp-lazy")
    eager_run = run_in(eager_root)
    assert eager_run("pull", "-q", "--platform", "linux/amd64", source, "--name", "f:1").rc == 0
    image = open_lazy_layout(Store(lazy_root), source, platform=AMD64, min_layer_size=0)
    assert len(image.layers) >= 2
    assert all(layer.index is not None for layer in image.layers), [
        layer.how for layer in image.layers
    ]
    with cli_mounted(eager_run, eager_root, eager, "f:1"), lazy_mounted(lazy_root, image, lazy):
        assert assert_same_view(lazy, eager) > 1


# -- what is read, and when ------------------------------------------------------------------

SMALL = {
    "etc/os-release": b'PRETTY_NAME="lazy"\nID=lazy\n',
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": b"root:x:0:\n",
    "etc/hostname": b"lazy\n",
}


@pytest.fixture(scope="module")
def spread(world: Path) -> tuple[Path, LayerBuilder]:
    """One 32 MiB layer (gzip): a few small files first, then files of every size, two
    thirds of them random; the layout it is in, and the layer."""
    layer = LayerBuilder()
    for path, data in SMALL.items():
        layer.file(path, data)
    _filler(layer, 3, 32 << 20, "usr/lib")
    layer.file("usr/bin/tool", random.Random(4).randbytes(3 << 20), mode=0o755)
    layout = write_oci_layout(world / "spread", {"1": ImageBuilder([layer])})
    return layout, layer


@pytest.fixture(scope="module")
def spread_mount(
    world: Path, spread: tuple[Path, LayerBuilder]
) -> Iterator[tuple[Path, LazyImage, Path]]:
    """The spread image mounted lazily, its blob reads counted: (mountpoint, image, log).
    The daemon serves alone, without worker processes: each of those keeps its own cache
    of inflated spans, so a span read by two of them is fetched twice (the eager/lazy
    comparisons above run with them)."""
    layout, _ = spread
    root, log = world / "spread-store", world / "spread.log"
    image = counted(open_lazy_layout(Store(root), f"oci:{layout}:1"), log)
    assert image.layers[0].index is not None, image.layers[0].how
    mp = fresh(world, "mp-spread")
    workers = os.environ.get("SNAPSHOTTER_FUSE_WORKERS")
    os.environ["SNAPSHOTTER_FUSE_WORKERS"] = "0"  # read by the daemon when it starts
    try:
        with lazy_mounted(root, image, mp):
            if workers is None:
                del os.environ["SNAPSHOTTER_FUSE_WORKERS"]
            else:
                os.environ["SNAPSHOTTER_FUSE_WORKERS"] = workers
            yield mp, image, log
    finally:
        if workers is None:
            os.environ.pop("SNAPSHOTTER_FUSE_WORKERS", None)
        else:
            os.environ["SNAPSHOTTER_FUSE_WORKERS"] = workers


def _contents(layout: Path) -> dict[str, bytes]:
    import tarfile

    blob = max((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    out = {}
    with tarfile.open(fileobj=gzip.open(blob)) as tar:
        for info in tar:
            if info.isfile():
                f = tar.extractfile(info)
                assert f is not None
                out[info.name] = f.read()
    return out


def metadata(root: Path) -> dict[str, tuple[int, int, int, str, tuple[tuple[str, bytes], ...]]]:
    """Every path's mode, size and mtime, link target and xattrs: lstat, listdir,
    readlink, listxattr and getxattr, and no read."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            keys = os.listxattr(path, follow_symlinks=False)
            out[os.path.relpath(path, root)] = (
                st.st_mode,
                st.st_size,
                st.st_mtime_ns,
                os.readlink(path) if stat.S_ISLNK(st.st_mode) else "",
                tuple((k, os.getxattr(path, k, follow_symlinks=False)) for k in keys),
            )
    return out


def test_listing_the_whole_tree_reads_no_blob_bytes(spread_mount) -> None:
    mp, _, log = spread_mount
    before = len(ranges(log))
    # Lookups by name first (a listing hands the kernel its entries' attributes: READDIRPLUS)
    for path in [*SMALL, "usr/bin/tool", "usr/lib/f7", "usr/lib/f8"]:
        assert os.lstat(mp / path).st_size > 0
    assert not os.path.lexists(mp / "etc/nothing")
    entries = metadata(mp)
    assert len(entries) > 60 and entries["usr/bin/tool"][:2] == (0o100755, 3 << 20)
    os.statvfs(mp)
    assert len(ranges(log)) == before, ranges(log)[before:]


def test_reading_a_handful_of_files_reads_a_small_fraction_of_the_blob(
    spread_mount, spread
) -> None:
    mp, image, log = spread_mount
    layout, _ = spread
    contents = _contents(layout)
    blob_size = image.layers[0].size
    before = len(ranges(log))
    for path in [*SMALL, "usr/lib/f40", "usr/lib/f41"]:
        assert same((mp / path).read_bytes(), contents[path]), path
    fetched = sum(b + 1 - a for a, b in ranges(log)[before:])
    spans = len(image.layers[0].index.checkpoints)
    print(
        f"read 6 files: fetched {fetched} of {blob_size} blob bytes "
        f"({fetched / blob_size:.1%}; {len(ranges(log)) - before} reads, {spans} spans)"
    )
    assert 0 < fetched < blob_size * 0.3


def test_a_big_file_read_in_sequence_fetches_each_span_once(spread_mount, spread) -> None:
    """The kernel reads 3 MiB in many READs; the reader inflates each span once."""
    mp, image, log = spread_mount
    index = image.layers[0].index
    entry = index.toc.find("usr/bin/tool")
    extent = index.extents[entry.inode]
    points = index.checkpoints
    touched = [
        k
        for k, cp in enumerate(points)
        if cp.out < extent.offset + entry.size
        and (points[k + 1].out if k + 1 < len(points) else index.tar_size) > extent.offset
    ]
    before = len(ranges(log))
    data = b""
    with open(mp / "usr/bin/tool", "rb", buffering=0) as f:
        while chunk := f.read(128 << 10):
            data += chunk
    assert (
        hashlib.sha256(data).digest()
        == hashlib.sha256(random.Random(4).randbytes(3 << 20)).digest()
    )
    reads = ranges(log)[before:]
    assert 1 <= len(reads) <= len(touched), (reads, touched)


def test_a_tampered_span_is_eio_and_the_mount_stays_up(spread_mount, spread) -> None:
    mp, image, log = spread_mount
    layout, _ = spread
    contents = _contents(layout)
    layer = image.layers[0]
    index = layer.index
    points = index.checkpoints
    fetched = {(a, b) for a, b in ranges(log)}

    def span_of(path: str) -> int:
        entry = index.toc.find(path)
        at = index.extents[entry.inode].offset
        k = max(i for i, cp in enumerate(points) if cp.out <= at)
        end = points[k + 1].out if k + 1 < len(points) else index.tar_size
        return k if at + entry.size <= end else -1

    # A span no read touched yet (so no process of the daemon holds it inflated), with a
    # file wholly inside it, and a file in another untouched span.
    untouched = [
        k
        for k, cp in enumerate(points)
        if not any(a < cp.end and b >= cp.start for a, b in fetched)
    ]
    files = {}
    for path in contents:
        k = span_of(path)
        if k in untouched and contents[path]:
            files.setdefault(k, path)
    assert len(files) >= 2, (untouched, files)
    (bad, victim), (good, other) = list(files.items())[:2]
    blob = layout / "blobs" / layer.digest.replace(":", "/")
    at = (points[bad].start + points[bad].end) // 2
    original = blob.read_bytes()[at]
    fd = os.open(blob, os.O_WRONLY)
    os.pwrite(fd, bytes([original ^ 0xFF]), at)
    try:
        for _ in range(2):  # and again: a failure is not remembered
            with pytest.raises(OSError) as caught:
                (mp / victim).read_bytes()
            assert caught.value.errno == errno.EIO
        assert same((mp / other).read_bytes(), contents[other]), other
        assert os.path.isdir(mp / "etc") and mounted_at(mp)
    finally:
        os.pwrite(fd, bytes([original]), at)
        os.close(fd)
    assert same((mp / victim).read_bytes(), contents[victim]), victim
    assert good != bad


# -- the command line ------------------------------------------------------------------------


def test_mount_lazy_errors_are_one_line_and_exit_1(world: Path, spread) -> None:
    layout, _ = spread
    root = world / "errors"
    run = run_in(root)
    mp = fresh(world, "mp-errors")
    cases = {
        "no-such-dir": ("--lazy", f"oci:{world}/nowhere:1"),
        "missing tag": ("--lazy", f"oci:{layout}:nosuchtag"),
        "bare name": ("--lazy", "alpine"),
        "archive": ("--lazy", f"oci-archive:{layout}.tar"),
        "--layer too far": ("--lazy", "--layer", "2", f"oci:{layout}:1"),
        "registry": ("--lazy", "docker://127.0.0.1:9/none/such:1"),
    }
    try:
        for what, args in cases.items():
            result = run("mount", *args, str(mp))
            lines = result.err.strip().splitlines()
            assert result.rc == 1, (what, result)
            assert len(lines) == 1 and lines[0].startswith("snapshotter: error: "), (what, lines)
            assert not mounted_at(mp)
        assert "no image tagged 'nosuchtag'" in run("mount", *cases["missing tag"], str(mp)).err
    finally:
        cleanup(run, root, mp, [])
    # Nothing was left in the store by the failures.
    assert not (root / "snapshots").exists() or not any((root / "snapshots").rglob("*.zst"))


def test_a_failed_lazy_mount_leaves_the_store_as_it_was(world: Path) -> None:
    """A small layer whose blob is damaged fails the mount after the big one was indexed:
    no snapshot of the other small layer is committed, nothing stays in tmp/."""
    big = _filler(LayerBuilder(), 5, 15 << 20, "big")
    small_ok = LayerBuilder().file("ok", b"fine")
    small_bad = LayerBuilder().file("bad", b"damaged below")
    image = ImageBuilder([big, small_ok, small_bad])
    layout = write_oci_layout(world / "damaged", {"1": image})
    bad_blob = layout / "blobs" / image.built_layers()[2].digest.replace(":", "/")
    data = bytearray(bad_blob.read_bytes())
    data[-12] ^= 0xFF  # in the gzip trailer's crc: the tar itself still parses
    bad_blob.write_bytes(bytes(data))
    root = world / "damaged-store"
    run = run_in(root)
    mp = fresh(world, "mp-damaged")
    try:
        result = run("mount", "--lazy", f"oci:{layout}:1", str(mp))
    finally:
        cleanup(run, root, mp, [])
    assert result.rc == 1 and len(result.err.strip().splitlines()) == 1, result.err
    assert "layer 3" in result.err, result.err
    assert not mounted_at(mp)
    assert list((root / "snapshots").rglob("toc*")) == []
    assert list((root / "tmp").iterdir()) == []
    assert len(list((root / "indexes" / "sha256").iterdir())) == 1  # the big one, whole


def test_local_blob_reads_closed_ranges(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 4)
    blob = LocalBlob(path)
    assert blob.size == 1024
    assert blob.read_range(0, 0) == b"\x00"
    assert blob.read_range(250, 261) == bytes(range(250, 256)) + bytes(range(6))
    assert blob.read_range(1020, 2000) == bytes(range(252, 256))  # the blob ends
    with pytest.raises(ValueError):
        blob.read_range(5, 4)
    assert stat.S_ISREG(os.stat(path).st_mode)


ARCHIVES = [
    "docker-archive/container-inspector--she-image_from_scratch-1.0.tar",
    "docker-archive/osv-scalibr--symlinks.tar",
    "docker-archive/ggcr--test_link.tar:bazel/v1/tarball:test_image_3",
    "docker-archive/ggcr--whiteout_image.tar",
    "docker-archive/ggcr--whiteout_dir.tar",
    "docker-archive/snyk--skopeo-nodes-fake-multi.tar",
    "oci-archive/dive--test-oci-gzip-image.tar",
    "oci-archive/dive--test-oci-uncompressed-image.tar",
]


@pytest.mark.parametrize("fixture", ARCHIVES)
def test_archives_mount_lazily_in_place_as_they_mount_eagerly(
    world: Path, fixtures_dir: Path, fixture: str
) -> None:
    """Every multi-layer archive of the shared fixtures (and two one-layer OCI ones), its
    blobs read where they lie in the tar (tiny: every layer indexed here, the size limit
    lifted), against the pulled image."""
    path, _, name = fixture.partition(":")
    transport = path.partition("/")[0]
    source = f"{transport}:{fixtures_dir / path}" + (f":{name}" if name else "")
    tag = fixture.replace("/", "-").replace(":", "-")
    eager_root, lazy_root = world / f"eager-{tag}", world / f"lazy-{tag}"
    eager, lazy = fresh(world, "mp-eager"), fresh(world, "mp-lazy")
    eager_run = run_in(eager_root)
    pulled = eager_run("pull", "-q", source, "--name", "f:1")
    assert pulled.rc == 0, pulled.err
    image = open_lazy_layout(Store(lazy_root), source, min_layer_size=0)
    assert all(layer.index is not None for layer in image.layers), [
        layer.how for layer in image.layers
    ]
    with cli_mounted(eager_run, eager_root, eager, "f:1"), lazy_mounted(lazy_root, image, lazy):
        assert assert_same_view(lazy, eager) > 1
    assert not (lazy_root / "snapshots").exists() or not any((lazy_root / "snapshots").iterdir())


def test_mount_lazy_of_an_archive_from_the_command_line(world: Path, fixtures_dir: Path) -> None:
    source = f"docker-archive:{fixtures_dir / 'docker-archive/ggcr--whiteout_dir.tar'}"
    root, mp = world / "lazy-cli-archive", fresh(world, "mp-lazy")
    with cli_mounted(run_in(root), root, mp, "--lazy", source) as err:
        lines = err.strip().splitlines()
        assert len(lines) == 4 and all("fetched whole: smaller than 10 MiB" in x for x in lines)
        # docker save names no blob digests: hashed where the blob lies
        assert all(x.startswith(f"layer {n} sha256:") for n, x in enumerate(lines, 1)), lines
        assert sorted(os.listdir(mp))


def test_mount_lazy_as_of_a_layer_equals_mount_layer(world: Path, oracle_layout: Path) -> None:
    """`mount --lazy --layer N` shows what `mount --layer N` of the pulled image shows."""
    eager_root, lazy_root = world / "eager-layer", world / "lazy-layer"
    source = f"oci:{oracle_layout}:1"
    eager_run, lazy_run = run_in(eager_root), run_in(lazy_root)
    assert eager_run("pull", "-q", source, "--name", "oracle:1").rc == 0
    for n in (1, 2):
        eager, lazy = fresh(world, "mp-eager"), fresh(world, "mp-lazy")
        with (
            cli_mounted(eager_run, eager_root, eager, "--layer", str(n), "oracle:1"),
            cli_mounted(lazy_run, lazy_root, lazy, "--lazy", "--layer", str(n), source) as err,
        ):
            assert len(err.strip().splitlines()) == n
            with open("/proc/mounts") as f:
                assert f"snapshotter:lazy:{source}@layer{n} {lazy} " in f.read()
            assert assert_same_view(lazy, eager) > 10


# -- the merged tree, cached ------------------------------------------------------------------


def test_a_lazy_views_merged_tree_is_cached_by_what_its_layers_are(
    world: Path, spread: tuple[Path, LayerBuilder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first open merges and caches under merged/lazy-<key>; the next reads the cache
    (merging is not even possible then) and gives the same tree; a view whose layer comes
    from elsewhere (its snapshot instead of its index) is another key; a cache file that
    does not read back is rebuilt."""
    from snapshotter.view import tree as view_tree

    layout, _ = spread
    store = Store(fresh(world, "merge-cache"))
    image = open_lazy_layout(store, f"oci:{layout}:1")
    assert image.layers[0].index is not None
    first = view_tree.open_lazy_tree(store, image)
    cache = store.root / "merged" / ("lazy-" + view_tree.lazy_merge_key(image))
    assert cache.is_file()
    expected = sorted((path, node.inode) for path, node in first.tree.walk())

    def no_merge(*_: object) -> None:
        raise AssertionError("merged again")

    with monkeypatch.context() as m:
        m.setattr(view_tree, "merge", no_merge)
        again = view_tree.open_lazy_tree(store, image)
    assert sorted((path, node.inode) for path, node in again.tree.walk()) == expected
    assert again.lazy and len(again.tree) == len(first.tree)

    whole = dataclasses.replace(
        image, layers=(dataclasses.replace(image.layers[0], index=None, source=None),)
    )
    assert view_tree.lazy_merge_key(whole) != view_tree.lazy_merge_key(image)

    cache.write_bytes(cache.read_bytes()[:100])  # torn
    rebuilt = view_tree.open_lazy_tree(store, image)
    assert sorted((path, node.inode) for path, node in rebuilt.tree.walk()) == expected
    assert view_tree.MergedTree.read(cache) is not None  # written whole again
