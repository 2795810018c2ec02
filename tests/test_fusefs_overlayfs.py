"""The mounted view against the kernel's overlayfs, on random layer stacks (hypothesis).

Each example is a stack of one to three layers written with tests/builders.py: regular
files (empty, small, larger, sparse), directories, symlinks, hardlinks, character devices
(0/0 included: overlayfs' own whiteout), block devices, fifos, whiteouts and opaque
markers; every mode (setuid, setgid and sticky bits included, symlinks too), owners up to
2^32 - 2, nanosecond mtimes, user.* and trusted.* xattrs on files and directories, and
directories the tar never names.  The image is pulled and mounted through the CLI (a real
FUSE mount), and compared with the kernel's overlayfs over the same layers, applied by an
independent applier written here the way containerd's overlay applier
(pkg/archive/tar.go, ``applyNaive`` with ``OverlayConvertWhiteout``) leaves them:

- GNU tar extracts each layer as root (numeric owners, modes, devices, xattrs);
- a whiteout becomes a 0/0 character device, an opaque marker trusted.overlay.opaque=y
  (test_fusefs.extract_for_overlay);
- a directory the tar never names gets what containerd's ``mkparent`` gives it: owner,
  mode, times and xattrs but trusted.* of the first lower layer's own directory, top down,
  with anything at the path, looked up as containerd does (continuity's RootPath: symlinks
  followed within that layer); 0755 root:root, mtime 0 when that is no directory (or lies
  under one that is none, or behind a link loop: containerd fails there), or no layer has
  one.  The mtime is mkparent's copy: containerd then writes the children, so a runtime
  shows the time of unpacking, which no oracle can;
- no layer names the root, whose directory a snapshotter makes: each layer's root is
  pinned at 0755 root:root, mtime 0, as the view shows a root no layer names.

Both trees are walked with lstat & co (``test_fusefs.compare``): kind, mode, owner, size,
content, link target, device numbers, xattrs, mtime, st_blocks of regular files (what du
counts), nlink and hardlink groups.

Not generated:

- a root entry (``./``) and an opaque marker at the root, two known differences: containerd
  skips the first, and overlayfs ignores trusted.overlay.opaque on a layer's root, while the
  view applies both as the image spec says;
- a directory named after its children, a known difference: containerd keeps the xattrs
  mkparent copied into it besides the tar's, the view (and GNU tar) the tar's only;
- a path written twice in one layer, or a whiteout of what its own layer writes: the
  overlay applier fails on those (test_merge's reference covers what the view makes).
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from builders import ImageBuilder, LayerBuilder, Mtime, write_oci_layout
from conftest import need_root, need_tool, run_in
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from oracle import listed_names
from test_fusefs import (
    compare,
    extract_for_overlay,
    hardlink_groups,
    mounted,
    need_fuse,
    overlay,
    walk,
)

# -- what a layer may hold -------------------------------------------------------------------

OWNERS = [0, 1, 1000, 65534, 2_097_152, 4_294_967_294]  # 2^21: past the tar octal field
MTIMES: list[Mtime] = [
    0,
    Decimal("1.000000001"),
    Decimal("1700000000.123456789"),
    4_294_967_301,  # past 2106
]
XATTRS: list[dict[str, bytes]] = [
    {},
    {"user.a": b"1"},
    {"user.b": b"\x00\xff\n"},
    {"trusted.t": b"t", "user.a": b"2"},  # trusted.*: never copied into implied directories
]
SPARSE = -1  # DATAS index of the sparse file
SPARSE_SIZE = 1 << 20
DATAS = [b"", b"x", random.Random(11).randbytes(5000)]
TARGETS = ["a", "../b", "/etc/passwd", "t" * 100]
CHAR_RDEVS = [(1, 3), (0, 0), (4095, 1048575)]  # 0/0: overlayfs' whiteout
BLOCK_RDEVS = [(8, 0), (259, 65536)]
KINDS = ["file", "dir", "symlink", "hardlink", "char", "block", "fifo", "whiteout", "opaque"]
NAMES = ["a", "b", "c"]


@dataclass(frozen=True)
class Entry:
    kind: str
    path: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: Mtime = 0
    data: int = 0  # DATAS index, or SPARSE
    xattrs: int = 0  # XATTRS index
    target: str = ""  # symlink target, or the hardlink's file
    rdev: tuple[int, int] = (0, 0)


def below(path: str, d: str) -> bool:
    return path.startswith(d + "/")


@st.composite
def layers_of(draw: st.DrawFn) -> list[Entry]:
    """One layer: each path once, nothing below a non-directory or whiteout of the layer,
    and every named directory before what lies below it (as tar writers do)."""
    paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
    entries: list[Entry] = []
    leaves: set[str] = set()  # non-directories and whiteouts of this layer
    named_dirs: set[str] = set()
    for _ in range(draw(st.integers(2, 10))):
        kind, path = draw(st.sampled_from(KINDS)), draw(paths)
        parts = path.split("/")
        if any("/".join(parts[:i]) in leaves for i in range(1, len(parts))) or path in leaves:
            continue
        meta = dict(
            mode=draw(st.integers(0, 0o7777)),
            uid=draw(st.sampled_from(OWNERS)),
            gid=draw(st.sampled_from(OWNERS)),
            mtime=draw(st.sampled_from(MTIMES)),
        )
        if kind == "opaque":
            entries.append(Entry(kind, path))
            continue
        if kind == "dir":
            if path not in named_dirs:
                named_dirs.add(path)
                entries.append(Entry(kind, path, xattrs=draw(st.integers(0, 3)), **meta))
            continue
        if path in named_dirs or any(e.path == path or below(e.path, path) for e in entries):
            continue
        if kind == "hardlink":
            files = [e.path for e in entries if e.kind == "file"]
            if not files:
                continue
            entry = Entry(kind, path, target=draw(st.sampled_from(files)))
        elif kind == "file":
            data = draw(st.sampled_from([*range(len(DATAS)), SPARSE]))
            xattrs = 0 if data == SPARSE else draw(st.integers(0, 3))
            entry = Entry(kind, path, data=data, xattrs=xattrs, **meta)
        elif kind == "symlink":
            entry = Entry(kind, path, target=draw(st.sampled_from(TARGETS)), **meta)
        elif kind in ("char", "block"):
            rdevs = CHAR_RDEVS if kind == "char" else BLOCK_RDEVS
            entry = Entry(kind, path, rdev=draw(st.sampled_from(rdevs)), **meta)
        elif kind == "fifo":
            entry = Entry(kind, path, **meta)
        else:
            entry = Entry(kind, path)
        leaves.add(path)
        entries.append(entry)
    ordered: list[Entry] = []
    for e in entries:  # a named directory goes before anything in it (its marker too)
        at = None
        if e.kind == "dir":
            inside = (
                i
                for i, o in enumerate(ordered)
                if below(o.path, e.path) or (o.kind == "opaque" and o.path == e.path)
            )
            at = next(inside, None)
        ordered.insert(len(ordered) if at is None else at, e)
    return ordered


def build(entries: list[Entry]) -> LayerBuilder:
    lb = LayerBuilder()
    for e in entries:
        meta = dict(mode=e.mode, uid=e.uid, gid=e.gid, mtime=e.mtime)
        if e.kind == "file" and e.data == SPARSE:
            lb.sparse_file(e.path, SPARSE_SIZE, {300_000: b"sparse" * 100}, **meta)
        elif e.kind == "file":
            lb.file(e.path, DATAS[e.data], xattrs=XATTRS[e.xattrs], **meta)
        elif e.kind == "dir":
            lb.dir(e.path, xattrs=XATTRS[e.xattrs], **meta)
        elif e.kind == "symlink":
            lb.symlink(e.path, e.target, **meta)
        elif e.kind == "hardlink":
            lb.hardlink(e.path, e.target)
        elif e.kind == "char":
            lb.chardev(e.path, *e.rdev, **meta)
        elif e.kind == "block":
            lb.blockdev(e.path, *e.rdev, **meta)
        elif e.kind == "fifo":
            lb.fifo(e.path, **meta)
        elif e.kind == "whiteout":
            lb.whiteout(e.path)
        else:
            lb.opaque(e.path)
    return lb


# -- the independent applier -------------------------------------------------------------------

DEFAULT_DIR: tuple[int, int, int, int, tuple[tuple[str, bytes], ...]] = (0o755, 0, 0, 0, ())


class Fails(Exception):
    """Where containerd's applier returns an error."""


def root_path(root: Path, rel: str) -> Path:
    """continuity's ``fs.RootPath``, as containerd's mkparent calls it on each lower
    layer: ``rel`` with every symlink on the way resolved within ``root`` (``..`` and
    absolute targets bounded by it); a missing component is taken as it is."""
    parts = [p for p in rel.split("/") if p]
    links = 0
    i = 0
    while i < len(parts):
        here = root.joinpath(*parts[: i + 1])
        try:
            st_ = os.lstat(here)
        except FileNotFoundError:
            i += 1
            continue
        except NotADirectoryError as exc:
            raise Fails("a component is no directory") from exc
        if stat.S_ISLNK(st_.st_mode):
            links += 1
            if links > 255:
                raise Fails("too many links")
            target = os.readlink(here)
            joined = ([] if target.startswith("/") else parts[:i]) + target.split("/")
            parts = clean(joined) + parts[i + 1 :]
            i = 0
            continue
        i += 1
    return root.joinpath(*parts)


def clean(parts: list[str]) -> list[str]:
    """Go's filepath.Join("/", ...): ``.`` and ``..`` taken lexically, never above /."""
    out: list[str] = []
    for p in parts:
        if p == "..":
            if out:
                out.pop()
        elif p and p != ".":
            out.append(p)
    return out


def mkparent_meta(lowers: list[Path], rel: str) -> tuple[int, int, int, int, tuple]:
    """What containerd's mkparent copies into a directory a layer implies: from the first
    lower layer (top down) with anything at ``rel``, looked up with ``root_path``."""
    for lower in reversed(lowers):
        try:
            full = root_path(lower, rel)
            st_ = os.lstat(full)
        except FileNotFoundError:
            continue
        except (NotADirectoryError, Fails):
            return DEFAULT_DIR  # containerd fails: the lower directory is gone
        if full == lower:
            return DEFAULT_DIR  # a link to the root: the snapshot's own directory
        if not stat.S_ISDIR(st_.st_mode):
            return DEFAULT_DIR  # replaced, or whited out ("do not copy attributes")
        xattrs = tuple(
            (k, os.getxattr(full, k, follow_symlinks=False))
            for k in os.listxattr(full, follow_symlinks=False)
            if not k.startswith("trusted.")  # copyUpXAttrs
        )
        return stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid, st_.st_mtime_ns, xattrs
    return DEFAULT_DIR


def apply_layer(tar: bytes, dest: Path, lowers: list[Path]) -> None:
    """``dest``: the layer as containerd's overlay applier leaves it over ``lowers``."""
    extract_for_overlay(tar, dest)
    tar_path = dest.with_suffix(".tar")
    listed = listed_names(tar_path)
    implied = [  # real directories only: a symlink to one is listed with them
        Path(dirpath, name).relative_to(dest)
        for dirpath, dirnames, _ in os.walk(dest)
        for name in dirnames
        if str(Path(dirpath, name).relative_to(dest)) not in listed
        and not os.path.islink(Path(dirpath, name))
    ]
    for rel in implied:
        mode, uid, gid, mtime_ns, xattrs = mkparent_meta(lowers, str(rel))
        full = dest / rel
        os.chown(full, uid, gid)
        os.chmod(full, mode)  # after chown, which may clear setgid
        for k, v in xattrs:
            os.setxattr(full, k, v)
        os.utime(full, ns=(mtime_ns, mtime_ns))
    os.chown(dest, 0, 0)
    os.chmod(dest, 0o755)
    os.utime(dest, ns=(0, 0))


def is_whiteout(lower: Path, rel: str) -> bool:
    """Whether ``rel`` is a whiteout in ``lower`` (reached through directories only)."""
    parts = rel.split("/")
    try:
        for i in range(1, len(parts)):
            if not stat.S_ISDIR(os.lstat(lower.joinpath(*parts[:i])).st_mode):
                return False
        st_ = os.lstat(lower / rel)
    except OSError:
        return False
    return stat.S_ISCHR(st_.st_mode) and st_.st_rdev == 0


# -- the property ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world() -> Iterator[Path]:
    need_root()
    need_fuse()
    need_tool("tar")
    path = Path(tempfile.mkdtemp(prefix="snapshotter-overlayfs-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


_images = itertools.count()

ISSUE_11 = [  # an implied directory under an opaque marker of its own layer
    [
        Entry("dir", "a", mode=0o751, uid=7, mtime=MTIMES[1]),
        Entry("dir", "a/b", mode=0o2710, uid=1000, gid=65534, mtime=MTIMES[2], xattrs=3),
        Entry("file", "a/b/old", data=1),
        Entry("symlink", "a/l", mode=0o755, target="b"),
    ],
    [Entry("opaque", "a"), Entry("file", "a/b/new", data=2), Entry("char", "c", rdev=(0, 0))],
]


@settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.sampled_from([2, 3, 1]).flatmap(lambda n: st.lists(layers_of(), min_size=n, max_size=n)))
@example(ISSUE_11)
def test_view_matches_kernel_overlayfs_on_random_layers(world, layers):
    number = next(_images)
    work = world / f"x{number}"
    work.mkdir()
    try:
        builders = [build(entries) for entries in layers]
        store = world / "store"
        run = run_in(store)
        name = f"example.com/overlayfs/x{number}:1"
        write_oci_layout(work / "layout", {"1": ImageBuilder(builders)})
        pulled = run("pull", "-q", f"oci:{work / 'layout'}:1", "--name", name)
        assert pulled.rc == 0, pulled.err
        lowers: list[Path] = []
        for i, lb in enumerate(builders):
            apply_layer(lb.tar_bytes(), work / f"lower{i}", lowers)
            lowers.append(work / f"lower{i}")
        kernel_mp, our_mp = work / "kernel", work / "ours"
        kernel_mp.mkdir()
        our_mp.mkdir()
        with overlay(lowers, kernel_mp), mounted(run, store, name, our_mp):
            vanished: set[str] = set()
            kernel, kernel_stats = walk(kernel_mp, vanished)
            # A hardlink whose partner a later layer hid or replaced: overlayfs shows the
            # lower inode's count (the tar's names), the view the names still visible.
            groups = hardlink_groups(kernel_stats)
            differs = {
                p
                for g in groups
                for p in g
                if kernel_stats[p].st_nlink > len(g) and not stat.S_ISDIR(kernel_stats[p].st_mode)
            }
            count = compare(our_mp, kernel_mp, differs, vanished=set())
        # Only whiteouts may be listed and not found (see test_fusefs.walk).
        for rel in vanished:
            assert any(is_whiteout(lower, rel) for lower in lowers), rel
        event(f"paths in the view: {count // 4 * 4}+")
        for what, found in (
            ("a hidden hardlink partner", differs),
            (
                "a symlink of a mode other than 0777",
                any(e.kind == "symlink" and e.mode != 0o777 for entries in layers for e in entries),
            ),
            (
                "a character device 0/0",
                any(e.rdev == (0, 0) and e.kind == "char" for entries in layers for e in entries),
            ),
            (
                "a sparse file in the view",
                any(s.kind == "-" and s.size == SPARSE_SIZE for s in kernel.values()),
            ),
            (
                "an opaque marker",
                any(e.kind == "opaque" for entries in layers[1:] for e in entries),
            ),
        ):
            if found:
                event(f"example has {what}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
