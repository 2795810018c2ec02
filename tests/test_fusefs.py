"""Real mounts through the CLI, checked against the kernel's own overlayfs and umoci.

The oracle: each layer tar is extracted by GNU tar (as root) into its own directory, its
whiteouts converted to overlayfs form, and the directories mounted ``-t overlay`` read-only,
top first.  Both trees are then walked with plain ``os`` calls and compared entry by entry.

Every mount is made in a ``try``/``finally`` that unmounts (``snapshotter umount``, then
``fusermount3 -u -z``, then ``umount -l``) and reaps the daemon, so a failing test never
leaves a mount or a process behind.  In CI a missing FUSE, tool or root is a failure.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import (
    REPO,
    Run,
    assert_daemon_pyfuse3,
    child_env,
    need_root,
    need_tool,
    run_in,
    unavailable,
)
from oracle import gnu_tar_extract, kind_letter, sha256_of

from snapshotter.store.store import Store
from snapshotter.view.mount import mounted_at

# -- plumbing ------------------------------------------------------------------------------


def need_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        unavailable("/dev/fuse is missing")
    need_tool("fusermount3")


def daemons(root: Path, mp: Path | None = None) -> list[int]:
    """Pids of the daemons recorded in ROOT/mounts (for ``mp`` only, if given)."""
    pids = []
    for record in (root / "mounts").glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(record.read_text())
            if mp is None or doc.get("mountpoint") == str(mp):
                pids.append(int(doc["pid"]))
    return pids


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Wait for ``pid`` to exit, reaping it when it is our child (daemons fork from here).
    A zombie that is not ours counts as gone: whoever adopted it reaps it in its own time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    if f.read().rpartition(b") ")[2][:1] == b"Z":
                        return True
            except FileNotFoundError:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def force_unmount(mp: Path) -> None:
    if mounted_at(mp):
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
    if mounted_at(mp):
        subprocess.run(["umount", "-l", str(mp)], capture_output=True)


def cleanup(run: Run, root: Path, mp: Path, pids: list[int]) -> None:
    pids = pids + daemons(root, mp)
    try:
        if mounted_at(mp):
            run("umount", str(mp))
    finally:
        force_unmount(mp)
        for pid in set(pids):
            if not gone(pid, 5):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                gone(pid, 5)


@contextlib.contextmanager
def mounted(run: Run, root: Path, image: str, mp: Path, *extra: str) -> Iterator[int]:
    """Mount through the CLI; yield the daemon's pid; always unmount and reap."""
    pids: list[int] = []
    try:
        result = run("mount", image, str(mp), *extra)
        assert result.rc == 0, result.err
        assert result.out == ""
        pids = daemons(root, mp)
        assert len(pids) == 1, pids
        assert_daemon_pyfuse3(pids[0])
        yield pids[0]
    finally:
        cleanup(run, root, mp, pids)


@contextlib.contextmanager
def overlay(lowers: list[Path], mp: Path) -> Iterator[None]:
    """The kernel's overlayfs over ``lowers`` (base first), read-only."""
    dirs = [str(p) for p in reversed(lowers)]
    if len(dirs) == 1:  # overlayfs wants two lower layers when there is no upper
        empty = mp.parent / "empty-lower"
        empty.mkdir(exist_ok=True)
        dirs.append(str(empty))
    result = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", "ro,lowerdir=" + ":".join(dirs), str(mp)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        unavailable(f"cannot mount overlayfs: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(mp)], capture_output=True)
        if mounted_at(mp):
            subprocess.run(["umount", "-l", str(mp)], capture_output=True)


def pull(run: Run, tmp: Path, name: str, image: ImageBuilder) -> str:
    layout = tmp / f"layout-{name.replace('/', '_').replace(':', '_')}"
    write_oci_layout(layout, {"1": image})
    result = run("pull", "-q", f"oci:{layout}:1", "--name", name)
    assert result.rc == 0, result.err
    return name


# -- the oracle image ----------------------------------------------------------------------

T = [Decimal("1700000000.123456789"), Decimal("1600000000.000000001"), 1_500_000_000, 7]
BIG = random.Random(5).randbytes(5 << 20)
SPARSE_SIZE = 64 << 20
SPARSE_CHUNKS = {
    0: b"head",
    (1 << 20) + 3: b"mid" * 1000,
    33 << 20: random.Random(6).randbytes(100_000),
    SPARSE_SIZE - 16: b"t" * 16,
}
HL_NLINK_DIFFERS = {"hl/one", "hl/three"}  # see compare()


def sparse_bytes(offset: int, length: int) -> bytes:
    end = min(offset + length, SPARSE_SIZE)
    out = bytearray(max(0, end - offset))
    for at, data in SPARSE_CHUNKS.items():
        lo, hi = max(at, offset), min(at + len(data), end)
        if lo < hi:
            out[lo - offset : hi - offset] = data[lo - at : hi - at]
    return bytes(out)


def oracle_layers() -> list[LayerBuilder]:
    """Every directory has its own entry in every layer that uses it: GNU tar would give an
    implied parent the extraction time as mtime, which no layer says."""
    base = (
        LayerBuilder(mtime=T[0])
        .dir("./", mode=0o755, raw_name=True)
        .dir("bin")
        .file("bin/su", b"#!su\n", mode=0o4755)
        .file("bin/sg", b"#!sg\n", mode=0o2755, gid=5)
        .dir("tmp", mode=0o1777)
        .dir("home")
        .dir("home/u", mode=0o700, uid=1000, gid=1000)
        .file("home/u/notes", b"n", mode=0o600, uid=1000, gid=1000, mtime=T[1])
        .file("pub", b"public\n", mode=0o644)
        .file("secret", b"secret\n", mode=0o600)
        .file("x", b"xattrs", xattrs={"user.k": b"v", "user.bin": b"\x00\xff\n"})
        .symlink("lib", "usr/lib")
        .symlink("abs", "/etc/hostname", mode=0o755, uid=3, gid=4, mtime=T[2])  # BSD tar
        .symlink("dangling", "../../nowhere", mode=0o700)
        .dir("hl")
        .file("hl/one", b"linked", mode=0o640, uid=7)
        .hardlink("hl/two", "hl/one")
        .hardlink("hl/three", "hl/one")
        .dir("hl2")
        .file("hl2/a", b"pair")
        .hardlink("hl2/b", "hl2/a")
        .dir("run")
        .fifo("run/fifo", mode=0o600)
        .dir("dev")
        .chardev("dev/null", 1, 3, mode=0o666)
        .blockdev("dev/sda", 8, 0, mode=0o660, gid=6)
        .dir("d2f")
        .file("d2f/child", b"c")
        .dir("d2l")
        .dir("d2l/sub")
        .file("d2l/sub/x", b"x")
        .file("f2d", b"was a file")
        .dir("etc")
        .file("etc/gone", b"g")
        .file("etc/keep", b"k")
        .dir("etc/gonedir")
        .file("etc/gonedir/inner", b"i")
        .dir("opq", mode=0o750)
        .file("opq/old1", b"1")
        .dir("opq/sub")
        .file("opq/sub/old2", b"2")
        .dir("chm", mode=0o755)
        .file("chm/c1", b"c1")
        .dir("wr")
        .file("wr/old", b"o")
        .file("big", BIG, mode=0o444)
        .sparse_file("sparse", SPARSE_SIZE, SPARSE_CHUNKS)
    )
    middle = (
        LayerBuilder(mtime=T[1])
        .dir("./", mode=0o751, raw_name=True)
        .file("d2f", b"now a file")
        .symlink("d2l", "/bin")
        .dir("f2d", mode=0o750)
        .file("f2d/inner", b"in")
        .file("f2d/keep", b"k")
        .dir("etc", mode=0o755, mtime=T[2])
        .whiteout("etc/gone")
        .whiteout("etc/gonedir")
        .dir("opq")
        .opaque("opq")
        .file("opq/new", b"n")
        .dir("chm", mode=0o750, uid=1000, gid=1000, mtime=T[3])
        .dir("hl")
        .file("hl/two", b"replaced partner")
        .whiteout("wr")
        .dir("wr", mode=0o700)
        .file("wr/new", b"n")
        .file("x", b"new xattrs", xattrs={"user.k": b"v2"})
    )
    top = (
        LayerBuilder(mtime=T[2])
        .dir("./", mode=0o755, raw_name=True)
        .dir("f2d", mode=0o755)
        .whiteout("f2d/inner")
        .dir("bin")
        .file("bin/su", b"#!su v2\n", mode=0o4750)
        .whiteout("dangling")
        .dir("home")
        .dir("home/u", mode=0o750, uid=1000, gid=1000)
        .file("home/u/new", b"u", uid=1000, gid=1000, mtime=T[0])
    )
    return [base, middle, top]


def extract_for_overlay(tar: bytes, dest: Path) -> None:
    """GNU tar extracts the layer; whiteouts then take overlayfs' form."""
    dest.mkdir()
    tar_path = dest.with_suffix(".tar")
    tar_path.write_bytes(tar)
    gnu_tar_extract(tar_path, dest)
    markers = [
        (Path(dirpath), name)
        for dirpath, dirnames, filenames in os.walk(dest)
        for name in filenames + dirnames
        if name.startswith(".wh.")
    ]
    times = {d: os.lstat(d) for d, _ in markers}
    for d, name in markers:
        os.unlink(d / name)
        if name == ".wh..wh..opq":
            os.setxattr(d, "trusted.overlay.opaque", b"y")
        elif name.startswith(".wh..wh."):
            continue
        else:
            target = d / name[len(".wh.") :]
            if target.is_dir() and not target.is_symlink():
                # whited out and re-created in this layer: an opaque directory
                os.setxattr(target, "trusted.overlay.opaque", b"y")
            elif not os.path.lexists(target):
                os.mknod(target, stat.S_IFCHR, os.makedev(0, 0))
    for d, st in times.items():  # removing markers must not change the layer's mtimes
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


# -- walking a mounted tree ------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    kind: str
    mode: int
    uid: int
    gid: int
    size: int  # -1 for directories (their size is the backing file system's business)
    sha256: str
    link: str
    rdev: tuple[int, int]
    xattrs: tuple[tuple[str, bytes], ...]
    mtime_ns: int
    # Regular files: st_blocks, what the file takes on disk (holes take none), so what du
    # counts; -1 for the rest (a directory's or symlink's is the backing file system's).
    blocks: int


def walk(
    root: Path, vanished: set[str] | None = None
) -> tuple[dict[str, Seen], dict[str, os.stat_result]]:
    """Every path under ``root`` (``""`` is the root) described with lstat & co.
    ``vanished``: where to put names readdir lists and lstat cannot find (else an error):
    overlayfs lists the whiteouts of a directory it does not merge (fs/overlayfs/readdir.c
    reads such a directory as it is), which its lookup then hides."""
    seen: dict[str, Seen] = {}
    stats: dict[str, os.stat_result] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        path = root / rel if rel else root
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if vanished is None or not rel:
                raise
            vanished.add(rel)
            continue
        kind = kind_letter(st.st_mode)
        names = [
            k
            for k in os.listxattr(path, follow_symlinks=False)
            if not k.startswith(("trusted.overlay.", "security."))
        ]
        xattrs = tuple(sorted((k, os.getxattr(path, k, follow_symlinks=False)) for k in names))
        seen[rel] = Seen(
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=-1 if kind == "d" else st.st_size,
            sha256=sha256_of(path) if kind == "-" else "",
            link=os.readlink(path) if kind == "l" else "",
            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in "cb" else (0, 0),
            xattrs=xattrs,
            mtime_ns=st.st_mtime_ns,
            blocks=st.st_blocks if kind == "-" else -1,
        )
        stats[rel] = st
        if kind == "d":
            names_here = os.listdir(path)
            assert len(names_here) == len(set(names_here)), f"{rel!r} lists a name twice"
            stack.extend(f"{rel}/{n}" if rel else n for n in names_here)
    return seen, stats


def hardlink_groups(stats: dict[str, os.stat_result]) -> set[frozenset[str]]:
    by: dict[int, set[str]] = {}
    for rel, st in stats.items():
        if not stat.S_ISDIR(st.st_mode):
            by.setdefault(st.st_ino, set()).add(rel)
    return {frozenset(g) for g in by.values()}


def compare(
    ours_root: Path,
    kernel_root: Path,
    nlink_differs: set[str],
    reference: str = "kernel",
    vanished: set[str] | None = None,
) -> int:
    """``vanished``: see ``walk``, for the reference's side."""
    ours, our_stats = walk(ours_root)
    kernel, kernel_stats = walk(kernel_root, vanished)
    problems = [
        f"  {p!r}:\n    ours:   {ours.get(p)}\n    {reference + ':':7} {kernel.get(p)}"
        for p in sorted(set(ours) | set(kernel))
        if ours.get(p) != kernel.get(p)
    ]
    assert not problems, f"{len(problems)} entries differ\n" + "\n".join(problems[:8])
    assert hardlink_groups(our_stats) == hardlink_groups(kernel_stats)
    for rel, st in our_stats.items():
        k = kernel_stats[rel]
        if stat.S_ISDIR(st.st_mode):
            # overlayfs reports nlink 1 for a directory merged from several layers
            # (fs/overlayfs/inode.c, ovl_getattr); elsewhere it passes the real count on.
            if k.st_nlink != 1:
                assert st.st_nlink == k.st_nlink, rel
        elif rel in nlink_differs:
            # Deliberate: a lower hardlink whose partner an upper layer replaced.
            # overlayfs shows the lower inode's own count (the tar's names); we count the
            # names still visible.
            assert st.st_nlink < k.st_nlink, rel
        else:
            assert st.st_nlink == k.st_nlink, rel
    for rel in nlink_differs & set(our_stats):
        group = next(g for g in hardlink_groups(our_stats) if rel in g)
        assert our_stats[rel].st_nlink == len(group)
    return len(ours)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A world-traversable scratch directory (an unprivileged user must reach the mounts)."""
    path = Path(tempfile.mkdtemp(prefix="snapshotter-fusefs-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for mp in path.glob("**/mp*"):
            force_unmount(mp)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def store(world: Path) -> Path:
    """A store with the oracle image (three layers) as ``example.com/fuse/oracle:1``."""
    need_fuse()
    root = world / "store"
    pull(run_in(root), world, "example.com/fuse/oracle:1", ImageBuilder(oracle_layers()))
    return root


@pytest.fixture(scope="module")
def lowers(world: Path) -> list[Path]:
    """The oracle's layers extracted by GNU tar, in overlayfs form (base first)."""
    need_root()
    need_tool("tar")
    out = []
    for i, layer in enumerate(oracle_layers()):
        dest = world / f"lower{i}"
        extract_for_overlay(layer.tar_bytes(), dest)
        out.append(dest)
    return out


@pytest.fixture(scope="module")
def view(store: Path, world: Path) -> Iterator[Path]:
    """The oracle image mounted once (``--allow-other``) for the behaviour tests."""
    mp = world / "mp-shared"
    mp.mkdir()
    other = ("--allow-other",) if os.geteuid() == 0 else ()  # for the permission test
    with mounted(run_in(store), store, "example.com/fuse/oracle:1", mp, *other):
        yield mp


def fresh_mp(world: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix="mp", dir=world))


# -- the kernel oracle -----------------------------------------------------------------------


@pytest.mark.parametrize("layers", [3, 2, 1])
def test_view_matches_kernel_overlayfs(store, lowers, world, layers):
    kernel_mp, our_mp = fresh_mp(world), fresh_mp(world)
    extra = () if layers == 3 else ("--layer", str(layers))
    with (
        overlay(lowers[:layers], kernel_mp),
        mounted(run_in(store), store, "example.com/fuse/oracle:1", our_mp, *extra),
    ):
        count = compare(our_mp, kernel_mp, HL_NLINK_DIFFERS if layers >= 2 else set())
        assert count > (20 if layers == 1 else 30)
        if layers == 3:  # a few spot checks that the oracle really holds what it should
            assert (our_mp / "d2f").read_bytes() == b"now a file"
            assert os.readlink(our_mp / "d2l") == "/bin"
            assert sorted(os.listdir(our_mp / "opq")) == ["new"]
            assert sorted(os.listdir(our_mp / "wr")) == ["new"]
            assert sorted(os.listdir(our_mp / "etc")) == ["keep"]
            assert stat.S_IMODE(os.lstat(our_mp / "chm").st_mode) == 0o750
            assert os.listdir(our_mp / "chm") == ["c1"]
            assert (our_mp / "big").read_bytes() == BIG
            assert os.lstat(our_mp / "hl/one").st_nlink == 2
        if layers == 1:  # du agrees on what files take on disk, holes not counted
            du = [our_mp / "sparse", our_mp / "big", kernel_mp / "sparse", kernel_mp / "big"]
            out = subprocess.run(["du", "-B1", *map(str, du)], capture_output=True, text=True)
            sizes = [int(line.split()[0]) for line in out.stdout.splitlines()]
            assert sizes[:2] == sizes[2:] and sizes[0] < SPARSE_SIZE // 100, out


def test_layer_zero_is_an_empty_root(store, world):
    mp = fresh_mp(world)
    with mounted(run_in(store), store, "example.com/fuse/oracle:1", mp, "--layer", "0"):
        assert os.listdir(mp) == []
        st = os.lstat(mp)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755


def test_layer_out_of_range_is_refused(store, world):
    mp = fresh_mp(world)
    try:
        result = run_in(store)("mount", "example.com/fuse/oracle:1", str(mp), "--layer", "4")
        assert result.rc == 1 and "out of range" in result.err
        assert not mounted_at(mp)
    finally:
        cleanup(run_in(store), store, mp, [])


# -- umoci ------------------------------------------------------------------------------------


def test_view_matches_umoci_unpack(tmp_path, cli, store_root):
    need_root()
    need_fuse()
    umoci = need_tool("umoci")
    layout = tmp_path / "layout"

    def umoci_run(*args: str) -> None:
        result = subprocess.run([umoci, *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr

    umoci_run("init", "--layout", str(layout))
    umoci_run("new", "--image", f"{layout}:t")
    bundle = tmp_path / "bundle"
    umoci_run("unpack", "--image", f"{layout}:t", str(bundle))
    rootfs = bundle / "rootfs"
    # layer 1
    (rootfs / "etc").mkdir()
    (rootfs / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (rootfs / "etc/gone").write_text("gone")
    (rootfs / "tree/a/b").mkdir(parents=True)
    (rootfs / "tree/a/b/leaf").write_text("leaf")
    (rootfs / "tree/a/other").write_text("o")
    (rootfs / "dir2file").mkdir()
    (rootfs / "dir2file/x").write_text("x")
    (rootfs / "bin").mkdir()
    (rootfs / "bin/tool").write_bytes(b"\x7fELF" + bytes(5000))
    os.chmod(rootfs / "bin/tool", 0o4755)
    os.link(rootfs / "bin/tool", rootfs / "bin/tool-alias")
    os.symlink("tool", rootfs / "bin/rel")
    os.symlink("/bin/tool", rootfs / "bin/abs")
    (rootfs / "owned").write_text("o")
    os.chown(rootfs / "owned", 1234, 5678)
    os.setxattr(rootfs / "owned", "user.note", b"hello\x00world")
    os.mkfifo(rootfs / "fifo", 0o640)
    os.mknod(rootfs / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.utime(rootfs / "owned", ns=(0, 1_600_000_000_123_456_789))
    umoci_run("repack", "--image", f"{layout}:t", str(bundle))
    # layer 2: deletions, replacements, chmod
    (rootfs / "etc/gone").unlink()
    shutil.rmtree(rootfs / "tree/a/b")
    shutil.rmtree(rootfs / "dir2file")
    (rootfs / "dir2file").write_text("now a file")
    os.chmod(rootfs / "tree", 0o700)
    (rootfs / "bin/tool").unlink()
    (rootfs / "bin/tool").write_text("replaced")
    (rootfs / "new").mkdir()
    (rootfs / "new/file").write_text("new")
    umoci_run("repack", "--image", f"{layout}:t", str(bundle))
    # layer 3: a directory emptied of everything (umoci writes whiteouts or an opaque dir)
    for child in (rootfs / "tree/a").iterdir():
        child.unlink()
    umoci_run("repack", "--image", f"{layout}:t", str(bundle))

    reference = tmp_path / "reference"
    umoci_run("unpack", "--image", f"{layout}:t", str(reference))
    assert cli("pull", "-q", f"oci:{layout}:t", "--name", "example.com/umoci:t").rc == 0
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(cli, store_root, "example.com/umoci:t", mp):
        # bin/tool's partner was replaced by the second layer: see compare().
        # bin/tool was replaced in layer 2: umoci's unpacked tree is a real file system,
        # so its alias shows nlink 1 there as here.
        count = compare(mp, reference / "rootfs", set(), reference="umoci")
        assert count >= 15
        assert (mp / "dir2file").read_text() == "now a file"
        assert not (mp / "etc/gone").exists() and os.listdir(mp / "tree/a") == []


# -- behaviour of a live view ------------------------------------------------------------------


def test_writes_of_every_kind_fail_with_erofs(view):
    f, d = view / "pub", view / "etc"
    attempts: dict[str, Callable[[], object]] = {
        "open O_WRONLY": lambda: os.open(f, os.O_WRONLY),
        "open O_RDWR": lambda: os.open(f, os.O_RDWR),
        "open O_APPEND": lambda: os.open(f, os.O_WRONLY | os.O_APPEND),
        "open O_TRUNC": lambda: os.open(f, os.O_RDONLY | os.O_TRUNC),
        "create": lambda: os.open(view / "newfile", os.O_WRONLY | os.O_CREAT, 0o644),
        "mkdir": lambda: os.mkdir(view / "newdir"),
        "unlink": lambda: os.unlink(f),
        "rmdir": lambda: os.rmdir(view / "tmp"),
        "rename": lambda: os.rename(f, view / "renamed"),
        "rename over": lambda: os.rename(f, view / "secret"),
        "chmod": lambda: os.chmod(f, 0o777),
        "chown": lambda: os.chown(f, 1, 1),
        "utime": lambda: os.utime(f, ns=(0, 0)),
        "setxattr": lambda: os.setxattr(f, "user.new", b"x"),
        "setxattr existing": lambda: os.setxattr(view / "x", "user.k", b"other"),
        "removexattr": lambda: os.removexattr(view / "x", "user.k"),
        "truncate": lambda: os.truncate(f, 0),
        "symlink": lambda: os.symlink("pub", view / "newlink"),
        "link": lambda: os.link(f, view / "newhard"),
        "mknod": lambda: os.mknod(d / "fifo2", stat.S_IFIFO | 0o644),
    }
    before, names = sha256_of(f), sorted(os.listdir(view))
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as info:
            fd = attempt()
            if isinstance(fd, int):
                os.close(fd)
        assert info.value.errno == errno.EROFS, f"{what}: {info.value}"
    assert sha256_of(f) == before and sorted(os.listdir(view)) == names
    assert os.listxattr(view / "x") == ["user.k"] and os.listdir(d) == ["keep"]


def test_statfs(view):
    st = os.statvfs(view)
    assert st.f_flag & os.ST_RDONLY and st.f_flag & os.ST_NOSUID
    assert st.f_bsize == 4096 and st.f_namemax == 255
    assert st.f_bfree == st.f_bavail == 0 and st.f_ffree == 0
    _, stats = walk(view)
    assert st.f_files == len({s.st_ino for s in stats.values()})
    files = {s.st_ino: s.st_size for s in stats.values() if stat.S_ISREG(s.st_mode)}
    assert st.f_blocks == (sum(files.values()) + 4095) // 4096


def test_xattrs(view):
    assert os.listxattr(view / "x") == ["user.k"]
    assert os.getxattr(view / "x", "user.k") == b"v2"
    assert os.listxattr(view / "pub") == []
    with pytest.raises(OSError) as info:
        os.getxattr(view / "pub", "user.k")
    assert info.value.errno == errno.ENODATA
    assert os.listxattr(view / "lib", follow_symlinks=False) == []


def test_xattr_values_are_byte_exact(store, world):
    mp = fresh_mp(world)
    with mounted(run_in(store), store, "example.com/fuse/oracle:1", mp, "--layer", "1"):
        assert sorted(os.listxattr(mp / "x")) == ["user.bin", "user.k"]
        assert os.getxattr(mp / "x", "user.bin") == b"\x00\xff\n"
        assert os.getxattr(mp / "x", "user.k") == b"v"


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)


def as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_drop_to_nobody)


def test_default_permissions_apply_to_other_users(view):
    need_root()
    cat = need_tool("cat")
    assert (view / "secret").read_bytes() == b"secret\n"  # root may read anything
    public = as_nobody(cat, str(view / "pub"))
    assert public.returncode == 0 and public.stdout == "public\n", public.stderr
    secret = as_nobody(cat, str(view / "secret"))
    assert secret.returncode != 0 and "Permission denied" in secret.stderr
    listing = as_nobody("ls", str(view / "home/u"))  # 0750 1000:1000
    assert listing.returncode != 0 and "Permission denied" in listing.stderr
    assert as_nobody("ls", str(view / "etc")).stdout.split() == ["keep"]


def test_inode_numbers_are_stable(view, store, world):
    _, first = walk(view)
    _, second = walk(view)
    assert {p: s.st_ino for p, s in first.items()} == {p: s.st_ino for p, s in second.items()}
    assert first[""].st_ino == 1
    mp = fresh_mp(world)
    with mounted(run_in(store), store, "example.com/fuse/oracle:1", mp):
        _, again = walk(mp)  # a second mount of the same image numbers alike
    assert {p: s.st_ino for p, s in again.items()} == {p: s.st_ino for p, s in first.items()}


def test_big_sparse_file_reads_right_at_any_offset(view):
    path = view / "sparse"
    assert os.lstat(path).st_size == SPARSE_SIZE
    rng = random.Random(1)
    edges = [
        o + d
        for at, data in SPARSE_CHUNKS.items()
        for o in (at, at + len(data))
        for d in (-1, 0, 1)
    ]
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # make the reads reach the daemon
        for i in range(300):
            if i < len(edges):
                offset = max(0, edges[i] - rng.randrange(0, 70_000))
            else:
                offset = rng.randrange(0, SPARSE_SIZE + 4096)
            length = rng.choice([1, 7, 4096, 65_536, 131_073, 300_000])
            assert os.pread(fd, length, offset) == sparse_bytes(offset, length), (offset, length)
        assert os.pread(fd, 100, SPARSE_SIZE) == b""
    finally:
        os.close(fd)


def test_proc_mounts_shows_fsname_type_and_options(view, store, world):
    def line_for(mp: Path) -> list[str]:
        with open("/proc/mounts") as f:
            lines = [ln.split() for ln in f if ln.split()[1] == str(mp)]
        assert len(lines) == 1, lines
        return lines[0]

    fsname, _, fstype, options, *_ = line_for(view)
    assert fsname == "snapshotter:example.com/fuse/oracle:1"
    assert fstype == "fuse.snapshotter"
    assert {"ro", "nosuid", "nodev"} <= set(options.split(","))
    mp = fresh_mp(world)
    with mounted(run_in(store), store, "example.com/fuse/oracle:1", mp, "--layer", "2"):
        fsname, _, fstype, options, *_ = line_for(mp)
        assert fsname == "snapshotter:example.com/fuse/oracle:1@layer2"
        assert {"ro", "nosuid", "nodev"} <= set(options.split(","))


def test_a_directory_of_100k_entries_lists_completely_and_once(tmp_path, cli, store_root):
    need_fuse()
    n = 100_000
    layer = LayerBuilder(format=tarfile.USTAR_FORMAT, mtime=1).dir("many")
    # LayerBuilder makes headers one by one; 100k identical ones are stamped from a template.
    info = tarfile.TarInfo("many/f000000")
    info.mode, info.mtime = 0o644, 1
    template = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    template[148:156] = b" " * 8
    base = sum(template) - sum(b"many/f000000")
    blocks = []
    for i in range(n):
        name = b"many/f%06d" % i
        template[0:12] = name
        template[148:155] = b"%06o\0" % (base + sum(name))
        blocks.append(bytes(template))
    layer.raw_bytes(b"".join(blocks))
    pull(cli, tmp_path, "example.com/many:1", ImageBuilder([layer], compression="zstd"))
    mp = tmp_path / "mp"
    mp.mkdir()
    expected = [f"f{i:06d}" for i in range(n)]
    # The first mount merges the tocs; the second reads the merged tree from its cache.
    for _ in ("merged", "from the cache"):
        with mounted(cli, store_root, "example.com/many:1", mp):
            names = os.listdir(mp / "many")
            assert len(names) == n and sorted(names) == expected
            with os.scandir(mp / "many") as it:
                entries = [(e.name, e.is_file(follow_symlinks=False)) for e in it]
            assert len(entries) == n and sorted(e[0] for e in entries) == expected
            assert all(is_file for _, is_file in entries)
            assert os.lstat(mp / "many/f099999").st_size == 0
            assert not os.path.exists(mp / "many/f100000")
        assert len(list((store_root / "merged").iterdir())) == 1


# -- lifecycle ------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path, cli: Run) -> str:
    need_fuse()
    image = ImageBuilder(
        [
            LayerBuilder().dir("d").file("d/a", b"alpha" * 1000).file("b", b"beta"),
            LayerBuilder().file("c", os.urandom(300_000)).whiteout("b"),
        ]
    )
    return pull(cli, tmp_path, "example.com/small:1", image)


def read_everything(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            with open(path, "rb") as f:
                # the kernel may keep pages of an immutable file: drop them, so the read
                # really reaches the daemon and the snapshot's data file
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                out[str(path.relative_to(root))] = f.read()
    return out


def data_files_open(pid: int, store_root: Path) -> set[Path]:
    """The store's content files the daemon ``pid`` holds open."""
    snapshots = str(store_root / "snapshots") + "/"
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith(snapshots) and Path(target).parent.name == "data":
                held.add(Path(target))  # not the data directories themselves (O_PATH)
    return held


def requests(log: Path, opcode: str) -> int:
    """How many ``opcode`` requests the daemon's FUSE debug log shows."""
    return log.read_text().count(f"opcode: {opcode} (")


def test_open_release_or_the_data_fd_limit_as_the_pyfuse3_build_allows(
    tmp_path, cli, store_root, monkeypatch
):
    """With the patched pyfuse3 (no_open_inode) open and opendir answer ENOSYS once, the
    kernel sends no open, opendir or release after that, and the daemon keeps data files
    open itself, closing the oldest past MAX_OPEN_DATA_FILES: interleaved reads of more
    files than that must each reach the right data and really evict.  With a stock pyfuse3
    every open and opendir reaches the daemon, which holds a data file per open file until
    its release.  tests/test_stock_pyfuse3.py runs this file under both builds."""
    need_fuse()
    from snapshotter.view import fusefs

    monkeypatch.setattr(fusefs, "MAX_OPEN_DATA_FILES", 3)  # the daemon forks from here
    # One process answers every read, so that its descriptors are all of them.
    monkeypatch.setenv("SNAPSHOTTER_FUSE_WORKERS", "0")
    contents = {f"f{i}": random.Random(i).randbytes(300_000) for i in range(8)}
    layer = LayerBuilder().dir("d").file("d/x", b"x")
    for name, data in contents.items():
        layer.file(name, data)
    ref = pull(cli, tmp_path, "example.com/fds:1", ImageBuilder([layer]))
    data_file = {  # name -> its content file in the store, found by content
        name: next(
            p for p in store_root.glob("snapshots/sha256/*/data/*") if p.read_bytes() == data
        )
        for name, data in contents.items()
    }
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(cli, store_root, ref, mp, "--debug") as pid:
        log = store_root / "mounts" / f"daemon-{pid}.log"
        fds = {name: os.open(mp / name, os.O_RDONLY) for name in contents}
        try:
            if fusefs.NO_OPEN:
                assert data_files_open(pid, store_root) == set()  # nothing opened yet
            else:  # one data file per open file
                assert data_files_open(pid, store_root) == set(data_file.values())
            read = []
            for offset in (250_000, 0, 140_000):
                for name, fd in fds.items():
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # reach the daemon
                    got = os.pread(fd, 5000, offset)
                    assert got == contents[name][offset : offset + 5000], (name, offset)
                    read.append(name)
                    held = data_files_open(pid, store_root)
                    if fusefs.NO_OPEN:  # the three last read, the older ones evicted
                        assert held == {data_file[n] for n in read[-3:]}, (name, offset)
                    else:
                        assert held == set(data_file.values())
        finally:
            for fd in fds.values():
                os.close(fd)
        for _ in range(3):
            assert sorted(os.listdir(mp / "d")) == ["x"]
        assert sorted(os.listdir(mp)) == ["d", *contents]
        if fusefs.NO_OPEN:
            assert requests(log, "OPEN") == requests(log, "OPENDIR") == 1  # ENOSYS, once
            assert requests(log, "RELEASE") == requests(log, "RELEASEDIR") == 0
            assert len(data_files_open(pid, store_root)) == 3  # until evicted or unmounted
        else:

            def released() -> bool:  # the kernel sends release after close has returned
                return not data_files_open(pid, store_root) and requests(
                    log, "RELEASEDIR"
                ) == requests(log, "OPENDIR")

            deadline = time.monotonic() + 10
            while not released() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert data_files_open(pid, store_root) == set()
            assert requests(log, "OPEN") == requests(log, "RELEASE") == len(contents)
            assert requests(log, "OPENDIR") >= 4  # each listing (the kernel caches none)
            assert requests(log, "RELEASEDIR") == requests(log, "OPENDIR")


def test_mount_then_umount_leaves_nothing_behind(tmp_path, cli, store_root, small):
    mp = tmp_path / "mp"
    mp.mkdir()
    (store_root / "mounts").mkdir(exist_ok=True)
    with mounted(cli, store_root, small, mp) as pid:
        assert mounted_at(mp)
        assert sorted(os.listdir(mp)) == ["c", "d"]
        records = list((store_root / "mounts").glob("*.json"))
        assert len(records) == 1
        result = cli("umount", str(mp))
        assert result.rc == 0 and result.out == "", result.err
        assert not mounted_at(mp)
        assert os.listdir(mp) == []
        assert gone(pid, 10)
        assert list((store_root / "mounts").iterdir()) == []  # record and daemon log
    result = cli("umount", str(mp))
    assert result.rc == 1 and "not mounted" in result.err


def test_relative_root_and_mountpoint_work_from_any_directory(tmp_path, cli, store_root, small):
    """The daemon changes to /: a relative --root or MOUNTPOINT must not break its reads."""
    (tmp_path / "mp").mkdir()
    rel_root = f"root-{os.getpid()}-{time.monotonic_ns()}"  # a name / surely lacks
    (tmp_path / rel_root).symlink_to(store_root)
    command = [sys.executable, "-m", "snapshotter.cli", "--root", rel_root]
    env = child_env()
    mp = tmp_path / "mp"
    pids: list[int] = []
    try:
        done = subprocess.run(
            [*command, "mount", small, "mp"], cwd=tmp_path, capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
        pids = daemons(store_root, mp)
        assert len(pids) == 1, pids  # recorded in the store, under the absolute mountpoint
        assert len((mp / "d" / "a").read_bytes()) == 5000 and sorted(os.listdir(mp)) == ["c", "d"]
        assert not (Path("/") / rel_root).exists()  # nothing written relative to /
        done = subprocess.run(
            [*command, "umount", "mp"], cwd=tmp_path, capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
        assert not mounted_at(mp)
    finally:
        cleanup(cli, store_root, mp, pids)


def test_fusermount3_u_ends_the_daemon_cleanly(tmp_path, cli, store_root, small):
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(cli, store_root, small, mp) as pid:
        assert (mp / "d/a").read_bytes() == b"alpha" * 1000
        done = subprocess.run([need_tool("fusermount3"), "-u", str(mp)], capture_output=True)
        assert done.returncode == 0, done.stderr
        assert gone(pid, 10)
        assert not mounted_at(mp) and os.listdir(mp) == []
        assert list((store_root / "mounts").iterdir()) == []  # record and daemon log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(tmp_path, cli, store_root, small, sig):
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(cli, store_root, small, mp) as pid:
        assert (mp / "d/a").read_bytes() == b"alpha" * 1000
        os.kill(pid, sig)
        assert gone(pid, 10)
        assert not mounted_at(mp)
        assert os.listdir(mp) == []
        assert list((store_root / "mounts").glob("*.json")) == []
        assert daemons(store_root) == []


def test_a_signal_as_soon_as_mount_returns_still_unmounts(tmp_path, cli, store_root, small):
    """`mount` returns once the daemon serves; from then on a signal must end it cleanly.
    (The daemon once said ready before its handlers were in place: SIGTERM then found
    the default action and left a dead mount.)"""
    mp = tmp_path / "mp"
    mp.mkdir()
    for sig in [signal.SIGTERM, signal.SIGINT, signal.SIGHUP] * 5:
        with mounted(cli, store_root, small, mp) as pid:
            os.kill(pid, sig)
            _, status = os.waitpid(pid, 0)  # the daemon forked from here
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (sig, status)
            assert not mounted_at(mp), sig
        assert Store(store_root).live_mounts() == []


def test_double_mount_on_one_directory_is_refused(tmp_path, cli, store_root, small):
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(cli, store_root, small, mp):
        result = cli("mount", small, str(mp))
        assert result.rc == 1
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and "busy" in lines[0], result.err
        assert len(daemons(store_root)) == 1
        assert sorted(os.listdir(mp)) == ["c", "d"]


def test_mount_errors_exit_1_with_one_line(tmp_path, cli, store_root, small):
    mp = tmp_path / "mp"
    mp.mkdir()
    try:
        missing = cli("mount", small, str(tmp_path / "nope"))
        assert missing.rc == 1 and "does not exist" in missing.err
        unknown = cli("mount", "example.com/no-such-image:1", str(mp))
        assert unknown.rc == 1
        for result in (missing, unknown):
            assert len(result.err.strip().splitlines()) == 1, result.err
        assert not mounted_at(mp) and daemons(store_root) == []
    finally:
        cleanup(cli, store_root, mp, [])


def test_missing_dev_fuse_is_one_line(tmp_path, store_root, small):
    """In a private mount namespace whose /dev is an empty tmpfs, as in a container."""
    need_root()
    unshare = need_tool("unshare")
    mp = tmp_path / "mp"
    mp.mkdir()
    script = (
        "mount -t tmpfs none /dev && exec "
        f"{sys.executable} -m snapshotter.cli --root {store_root} mount {small} {mp}"
    )
    done = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=child_env(),
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapshotter: error: /dev/fuse is missing")
    assert done.stdout == ""
    assert not mounted_at(mp) and daemons(store_root) == []


def wait_mounted(mp: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not mounted_at(mp):
        assert proc.poll() is None, f"mount --foreground exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{mp} not mounted after {timeout:.0f} s"
        time.sleep(0.02)


@contextlib.contextmanager
def foreground(store_root: Path, image: str, mp: Path, log: Path, *extra: str):
    """``snapshotter mount --foreground`` as a child process, stderr to ``log``."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "snapshotter.cli", "--root", str(store_root)]
            + ["mount", "--foreground", *extra, image, str(mp)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=REPO,
            env=child_env(),
        )
    try:
        wait_mounted(mp, proc)
        assert_daemon_pyfuse3(proc.pid)
        yield proc
    finally:
        force_unmount(mp)
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("end", ["umount", "SIGINT", "SIGTERM"])
def test_foreground_serves_until_unmounted_or_signalled(tmp_path, cli, store_root, small, end):
    mp = tmp_path / "mp"
    mp.mkdir()
    with foreground(store_root, small, mp, tmp_path / "stderr") as proc:
        assert (mp / "d/a").read_bytes() == b"alpha" * 1000
        assert proc.poll() is None  # still serving, in this process: no daemon forked
        assert daemons(store_root, mp) == [proc.pid]
        if end == "umount":
            assert cli("umount", str(mp)).rc == 0
        else:
            proc.send_signal(getattr(signal, end))
        assert proc.wait(10) == 0, (tmp_path / "stderr").read_text()
        assert not mounted_at(mp) and os.listdir(mp) == []
    assert (tmp_path / "stderr").read_text() == ""
    assert list((store_root / "mounts").iterdir()) == []


def test_debug_in_the_foreground_logs_fuse_requests_to_stderr(tmp_path, cli, store_root, small):
    mp = tmp_path / "mp"
    mp.mkdir()
    err = tmp_path / "stderr"
    with foreground(store_root, small, mp, err, "--debug") as proc:
        assert (mp / "d/a").read_bytes() == b"alpha" * 1000
        assert cli("umount", str(mp)).rc == 0
        assert proc.wait(10) == 0
    log = err.read_text()
    assert "opcode: LOOKUP" in log and "opcode: READ" in log, log[-2000:]


def test_debug_keeps_the_daemon_log_of_fuse_requests(tmp_path, cli, store_root, small):
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(cli, store_root, small, mp, "--debug") as pid:
        log = store_root / "mounts" / f"daemon-{pid}.log"
        assert (mp / "c").stat().st_size == 300_000
        assert cli("umount", str(mp)).rc == 0
        assert gone(pid, 10)
    assert "opcode: LOOKUP" in log.read_text()
    # without --debug, the log of a daemon that ended cleanly goes with it
    log.unlink()
    with mounted(cli, store_root, small, mp) as pid:
        assert (store_root / "mounts" / f"daemon-{pid}.log").is_file()
    assert list((store_root / "mounts").iterdir()) == []


def test_without_allow_other_only_the_mounting_user_sees_the_view(tmp_path, cli, store_root, small):
    need_root()
    world = Path(tempfile.mkdtemp(prefix="snapshotter-other-", dir="/tmp"))
    world.chmod(0o755)
    mp = world / "mp"
    mp.mkdir()
    try:
        with mounted(cli, store_root, small, mp):
            assert sorted(os.listdir(mp)) == ["c", "d"]  # 0755 root:root for everyone...
            denied = as_nobody("ls", str(mp))  # ...but FUSE keeps other users out
            assert denied.returncode != 0 and "Permission denied" in denied.stderr
        with mounted(cli, store_root, small, mp, "--allow-other"):
            assert as_nobody("ls", str(mp)).stdout.split() == ["c", "d"]
    finally:
        force_unmount(mp)
        shutil.rmtree(world, ignore_errors=True)


def test_umount_after_kill_9_clears_the_mountpoint(tmp_path, cli, store_root, small):
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(cli, store_root, small, mp) as pid:
        os.kill(pid, signal.SIGKILL)
        assert gone(pid, 10)
        assert mounted_at(mp)  # a dead FUSE mount stays until unmounted
        with pytest.raises(OSError) as info:
            os.listdir(mp)
        assert info.value.errno == errno.ENOTCONN
        result = cli("umount", str(mp))
        assert result.rc == 0, result.err
        assert not mounted_at(mp)
        assert os.listdir(mp) == []
        (mp / "usable").write_text("yes")
        (mp / "usable").unlink()
    # the killed daemon's record went stale with its lock: the image is no longer in use
    assert Store(store_root).live_mounts() == []
    assert cli("rmi", small).rc == 0


def test_a_mounted_image_survives_rmi_force_and_prune(tmp_path, cli, store_root, small):
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(cli, store_root, small, mp):
        before = read_everything(mp)
        assert set(before) == {"c", "d/a"}
        refused = cli("rmi", small)
        assert refused.rc == 1 and "in use" in refused.err
        assert len(refused.err.strip().splitlines()) == 1
        assert cli("rmi", "--force", small).rc == 0
        assert cli("images", "-q").out.strip() == ""
        assert read_everything(mp) == before
        pruned = cli("prune", "-a", "--json")
        assert pruned.rc == 0, pruned.err
        assert json.loads(pruned.out)["snapshots"] == []
        assert read_everything(mp) == before
    # unmounted, nothing keeps the snapshots any more
    pruned = cli("prune", "-a", "--json")
    assert len(json.loads(pruned.out)["snapshots"]) == 2
