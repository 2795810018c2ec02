"""The life of real mounts beyond test_fusefs.py: several views from one store, and what a
live view meets (missing data, signals, busy and foreign mounts, odd mountpoint names).

Every view here is made by the real ``snapshotter mount`` in its own process, so its daemon
is a real daemon (not a fork of pytest), and always unmounted and reaped.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import (
    REPO,
    assert_daemon_pyfuse3,
    need_root,
    need_tool,
    run_in,
    run_snapshotter,
    unavailable,
)
from test_fusefs import daemons, force_unmount, gone, need_fuse

from snapshotter.view.mount import mounted_at

# -- plumbing ------------------------------------------------------------------------------


def snapshotter(root: Path, *args: str) -> tuple[int, str, str]:
    """The command in-process (quick): for everything but a mount that succeeds, whose
    daemon must not be a fork of pytest."""
    done = run_in(root)(*args)
    return done.rc, done.out, done.err


def pull(root: Path, tmp: Path, name: str, image: ImageBuilder) -> str:
    layout = tmp / f"layout-{len(list(tmp.glob('layout-*')))}"
    write_oci_layout(layout, {"1": image})
    rc, _, err = snapshotter(root, "pull", "-q", f"oci:{layout}:1", "--name", name)
    assert rc == 0, err
    return name


@contextlib.contextmanager
def mounted(root: Path, image: str, mp: Path, *extra: str) -> Iterator[int]:
    """``snapshotter mount`` in its own process; yield the daemon's pid; always unmount."""
    pids: list[int] = []
    try:
        done = run_snapshotter("--root", str(root), "mount", image, str(mp), *extra)
        assert done.returncode == 0 and done.stdout == "", done.stderr
        pids = daemons(root, mp)
        assert len(pids) == 1, pids
        assert_daemon_pyfuse3(pids[0])
        yield pids[0]
    finally:
        if mounted_at(mp):
            snapshotter(root, "umount", str(mp))
        force_unmount(mp)
        if os.geteuid() == 0:  # blindly too: mounted_at is product code under test
            subprocess.run(["umount", "-l", str(mp)], capture_output=True)
        for pid in pids:
            if not gone(pid, 5):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                gone(pid, 5)


# -- several views of one store ------------------------------------------------------------


def test_images_sharing_their_top_layer_over_different_bases_each_show_their_own(tmp_path):
    """The merged-tree cache is keyed by the chain id of the whole stack, not by the top
    layer: two stacks ending in the same layer must not share a tree."""
    need_fuse()
    root = tmp_path / "store"
    top = LayerBuilder().file("top", b"shared").whiteout("gone").file("base", b"top wins here")
    base_a = LayerBuilder().file("base", b"a").file("only-a", b"a").dir("gone")
    base_b = LayerBuilder().file("kept", b"b").file("gone", b"b").dir("only-b")
    a = pull(root, tmp_path, "example.com/a:1", ImageBuilder([base_a, top]))
    b = pull(root, tmp_path, "example.com/b:1", ImageBuilder([base_b, top]))
    assert top.diff_id() == ImageBuilder([base_a, top]).layers[-1].diff_id()
    snapshots = root / "snapshots" / "sha256"
    assert len(list(snapshots.iterdir())) == 3  # the top layer is one snapshot for both
    mp_a, mp_b = tmp_path / "mp-a", tmp_path / "mp-b"
    mp_a.mkdir()
    mp_b.mkdir()
    with mounted(root, a, mp_a), mounted(root, b, mp_b):
        assert sorted(os.listdir(mp_a)) == ["base", "only-a", "top"]
        assert sorted(os.listdir(mp_b)) == ["base", "kept", "only-b", "top"]
        assert (mp_a / "only-a").read_bytes() == b"a" and (mp_b / "kept").read_bytes() == b"b"
        assert (mp_a / "top").read_bytes() == (mp_b / "top").read_bytes() == b"shared"
        assert (mp_a / "base").read_bytes() == (mp_b / "base").read_bytes() == b"top wins here"
    assert len(list((root / "merged").iterdir())) == 2


# -- what a live view meets ----------------------------------------------------------------

# A VFS_CAP_REVISION_2 capability set: magic with the effective bit, permitted =
# CAP_NET_BIND_SERVICE (bit 10), nothing inheritable (linux/capability.h).
CAP_NET_BIND_SERVICE = struct.pack("<IIIII", 0x0200_0001, 1 << 10, 0, 0, 0)


def test_security_xattrs_show_through_the_view(tmp_path):
    """security.capability is what makes `ping` work without setuid: the view must answer
    it (test_fusefs's walk leaves security.* out of its comparison)."""
    need_fuse()
    root = tmp_path / "store"
    layer = (
        LayerBuilder()
        .file(
            "bin/ping", b"\x7fELF", mode=0o755, xattrs={"security.capability": CAP_NET_BIND_SERVICE}
        )
        .file("bin/plain", b"\x7fELF", mode=0o755)
    )
    image = pull(root, tmp_path, "example.com/caps:1", ImageBuilder([layer]))
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(root, image, mp):
        assert os.getxattr(mp / "bin/ping", "security.capability") == CAP_NET_BIND_SERVICE
        assert "security.capability" in os.listxattr(mp / "bin/ping")
        with pytest.raises(OSError) as info:
            os.getxattr(mp / "bin/plain", "security.capability")
        assert info.value.errno == errno.ENODATA


def _data_file(root: Path, content: bytes) -> Path:
    """The content file in the store holding ``content`` (found by content, not by toc)."""
    found = [
        p
        for p in (root / "snapshots").glob("sha256/*/data/*")
        if p.stat().st_size == len(content) and p.read_bytes() == content
    ]
    assert len(found) == 1, found
    return found[0]


def test_a_data_file_missing_under_a_live_view_is_eio_and_the_view_stays_up(tmp_path):
    need_fuse()
    root = tmp_path / "store"
    lost, kept = b"lost " * 1000, b"kept " * 1000
    layer = LayerBuilder().file("lost", lost).file("kept", kept).dir("d").file("d/also", b"also")
    image = pull(root, tmp_path, "example.com/lossy:1", ImageBuilder([layer]))
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(root, image, mp) as pid:
        _data_file(root, lost).unlink()  # before anything read it: no fd, no cached page
        with pytest.raises(OSError) as info:
            (mp / "lost").read_bytes()
        assert info.value.errno == errno.EIO
        assert os.lstat(mp / "lost").st_size == len(lost)  # its metadata is still there
        assert (mp / "kept").read_bytes() == kept
        assert (mp / "d/also").read_bytes() == b"also"
        assert sorted(os.listdir(mp)) == ["d", "kept", "lost"]
        with pytest.raises(OSError) as info:  # asked again: the same answer, still up
            (mp / "lost").read_bytes()
        assert info.value.errno == errno.EIO
        assert not gone(pid, 0) and mounted_at(mp)
        log = root / "mounts" / f"daemon-{pid}.log"
        assert "cannot open its content" in log.read_text()


def test_sighup_unmounts_cleanly(tmp_path):
    need_fuse()
    root = tmp_path / "store"
    layer = LayerBuilder().file("a", b"alpha")
    image = pull(root, tmp_path, "example.com/hup:1", ImageBuilder([layer]))
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(root, image, mp) as pid:
        assert (mp / "a").read_bytes() == b"alpha"
        os.kill(pid, signal.SIGHUP)
        assert gone(pid, 10)
        assert not mounted_at(mp) and os.listdir(mp) == []
        assert list((root / "mounts").iterdir()) == []  # record and daemon log


# -- umount ------------------------------------------------------------------------------------


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapshotter: error: "), err
    return lines[0]


def test_umount_of_a_busy_view_is_refused_and_lazy_detaches_it(tmp_path):
    """As umount(8): a view with a file open in it, or a process's working directory,
    stays mounted and the command says why; --lazy detaches it at once, and its daemon
    serves the open file until it is closed, then ends."""
    need_fuse()
    root = tmp_path / "store"
    layer = LayerBuilder().file("a", b"alpha" * 1000).dir("d").file("d/b", b"beta")
    image = pull(root, tmp_path, "example.com/busy:1", ImageBuilder([layer]))
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(root, image, mp) as pid:
        fd = os.open(mp / "a", os.O_RDONLY)
        sleeper = None
        try:
            rc, out, err = snapshotter(root, "umount", str(mp))
            assert rc == 1 and out == ""
            assert "is busy" in one_line_error(err) and "--lazy" in err
            assert mounted_at(mp) and not gone(pid, 0)
            assert os.pread(fd, 5, 0) == b"alpha" and (mp / "d/b").read_bytes() == b"beta"
            os.close(fd)
            fd = -1
            sleeper = subprocess.Popen(["sleep", "60"], cwd=mp / "d")
            rc, out, err = snapshotter(root, "umount", str(mp))
            assert rc == 1 and "is busy" in one_line_error(err)
            assert mounted_at(mp) and (mp / "d/b").read_bytes() == b"beta"

            fd = os.open(mp / "a", os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # reads reach the daemon
            rc, out, err = snapshotter(root, "umount", "--lazy", str(mp))
            assert rc == 0 and out == "", err
            assert (
                err == f"snapshotter: {str(mp)!r} was busy and is detached; its daemon "
                "ends when the last file open in it is closed\n"
            )
            assert not mounted_at(mp) and os.listdir(mp) == []
            assert os.pread(fd, 5, 4995) == b"alpha"  # still served
            assert not gone(pid, 0)
        finally:
            if fd >= 0:
                os.close(fd)
            if sleeper is not None:
                sleeper.kill()
                sleeper.wait()
        assert gone(pid, 10)  # the last user let go
        assert list((root / "mounts").iterdir()) == []


@contextlib.contextmanager
def foreign_mount(kind: str, tmp_path: Path, mp: Path) -> Iterator[None]:
    """A mount at ``mp`` that is not a view: a tmpfs, or another FUSE file system."""
    if kind == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", "size=1m", "snapshotter-test", str(mp)]
    else:
        lower = tmp_path / "lower"
        lower.mkdir()
        (lower / "mine").write_text("not yours")
        command = [need_tool("fuse-overlayfs"), "-o", f"lowerdir={lower}", str(mp)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        unavailable(f"cannot mount a {kind}: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(mp)], capture_output=True)
        force_unmount(mp)


@pytest.mark.parametrize("kind", ["tmpfs", "fuse-overlayfs"])
def test_umount_refuses_a_mount_that_is_not_a_view(tmp_path, kind):
    need_root()
    mp = tmp_path / "mp"
    mp.mkdir()
    with foreign_mount(kind, tmp_path, mp):
        if kind == "tmpfs":
            (mp / "mine").write_text("not yours")
        rc, out, err = snapshotter(tmp_path / "store", "umount", str(mp))
        assert rc == 1 and out == ""
        fstype = "tmpfs" if kind == "tmpfs" else "fuse.fuse-overlayfs"
        assert f"is not a snapshotter view but a {fstype} mount" in one_line_error(err)
        assert mounted_at(mp) and (mp / "mine").read_text() == "not yours"


# -- odd mountpoints -----------------------------------------------------------------------------


def test_a_mountpoint_named_with_space_newline_tab_and_backslash(tmp_path):
    r"""/proc/self/mountinfo writes these four as \040 \012 \011 \134: mount, the busy check,
    the store's record, images --json, rmi's refusal and umount must all see the real name."""
    need_fuse()
    root = tmp_path / "store"
    layer = LayerBuilder().file("a", b"alpha")
    image = pull(root, tmp_path, "example.com/odd:1", ImageBuilder([layer]))
    mp = tmp_path / "a b\nc\td\\e \\012"
    mp.mkdir()
    with mounted(root, image, mp) as pid:
        assert mounted_at(mp) and not mounted_at(tmp_path / "a b")
        assert (mp / "a").read_bytes() == b"alpha"
        rc, _, err = snapshotter(root, "mount", image, str(mp))  # already mounted there
        assert rc == 1 and "is busy: something is already mounted there" in one_line_error(err)
        rc, out, err = snapshotter(root, "images", "--json")
        assert rc == 0, err
        assert [i["mounts"] for i in json.loads(out)] == [[str(mp)]]
        rc, _, err = snapshotter(root, "rmi", image)
        assert rc == 1 and repr(str(mp)) in one_line_error(err)
        rc, out, err = snapshotter(root, "umount", str(mp))
        assert rc == 0 and out == err == ""
        assert gone(pid, 10)
        assert not mounted_at(mp) and os.listdir(mp) == []
        assert list((root / "mounts").iterdir()) == []


# -- the default store roots -----------------------------------------------------------------


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A scratch directory every user can traverse (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="snapshotter-roots-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for mp in path.glob("mp*"):
            force_unmount(mp)
        shutil.rmtree(path, ignore_errors=True)


def in_mount_namespace(script: str, env: dict[str, str]) -> str:
    """``sh -c script`` as root in a private mount namespace (nothing it mounts reaches the
    host's); returns its stdout, the script must succeed."""
    done = subprocess.run(
        [need_tool("unshare"), "--mount", "--propagation", "private", "sh", "-euc", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout


def default_root_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SNAPSHOTTER_ROOT", "XDG_DATA_HOME")}
    return {**env, "HOME": str(home)}


def test_root_keeps_its_store_in_var_lib(open_dir):
    """Without --root or $SNAPSHOTTER_ROOT, root's store is /var/lib/snapshotter, whatever
    $HOME and $XDG_DATA_HOME say; a tmpfs over /var/lib in a private namespace keeps it
    off the host."""
    need_root()
    need_fuse()
    image = ImageBuilder([LayerBuilder().file("a", b"alpha")])
    write_oci_layout(open_dir / "layout", {"1": image})
    (open_dir / "home").mkdir()
    (open_dir / "mp").mkdir()
    host_has_it = os.path.lexists("/var/lib/snapshotter")
    cli = f"{sys.executable} -m snapshotter.cli"
    out = in_mount_namespace(
        f"""
        mount -t tmpfs -o mode=755 snapshotter-test /var/lib
        {cli} pull -q oci:{open_dir}/layout:1 --name example.com/default:1 >/dev/null
        XDG_DATA_HOME={open_dir}/xdg {cli} images -q --no-trunc
        {cli} mount example.com/default:1 {open_dir}/mp
        cat {open_dir}/mp/a; echo
        ls /var/lib/snapshotter/mounts/*.json | wc -l  # the daemon's record
        {cli} umount {open_dir}/mp
        ls /var/lib/snapshotter
        """,
        default_root_env(open_dir / "home"),
    )
    assert out.split("\n") == [
        image.config_digest(),
        "alpha",
        "1",
        *sorted(["blobs", "lock", "merged", "mounts", "snapshots", "state.json", "tmp"]),
        "",
    ], out
    assert os.listdir(open_dir / "home") == [] and not (open_dir / "xdg").exists()
    assert os.path.lexists("/var/lib/snapshotter") == host_has_it


def test_a_user_keeps_the_store_in_xdg_data_home_or_home(open_dir):
    """As uid 65534: ~/.local/share/snapshotter, or $XDG_DATA_HOME/snapshotter when set;
    a view mounted (through fusermount3) and unmounted from that default store.

    The user gets CAP_DAC_READ_SEARCH only to reach this Python, which may live under a
    0700 /root; and, in a private mount namespace, a /dev/fuse it may open (the host's
    may be root's alone, as in containers)."""
    need_root()
    need_fuse()
    image = ImageBuilder([LayerBuilder().file("a", b"alpha")])
    write_oci_layout(open_dir / "layout", {"1": image})
    for d in ("home", "mp", "xdg"):
        (open_dir / d).mkdir()
        os.chown(open_dir / d, 65534, 65534)
    node = open_dir / "fuse"
    os.mknod(node, stat.S_IFCHR, os.stat("/dev/fuse").st_rdev)
    node.chmod(0o666)
    cli = f"{sys.executable} -m snapshotter.cli"
    as_user = (
        "setpriv --reuid=65534 --regid=65534 --clear-groups "
        "--inh-caps=+dac_read_search --ambient-caps=+dac_read_search"
    )
    user_script = f"""
        test "$(id -u)" = 65534
        {cli} pull -q oci:{open_dir}/layout:1 --name example.com/mine:1 >/dev/null
        {cli} mount example.com/mine:1 {open_dir}/mp
        cat {open_dir}/mp/a; echo
        ls $HOME/.local/share/snapshotter/mounts/*.json | wc -l  # the daemon's record
        exec 3< {open_dir}/mp/a  # busy: fusermount3 refuses, and says so
        ! {cli} umount {open_dir}/mp 2>{open_dir}/home/err
        grep -o "is busy" {open_dir}/home/err
        exec 3<&-
        {cli} umount {open_dir}/mp
        {cli} images -q --no-trunc
        echo XDG
        export XDG_DATA_HOME={open_dir}/xdg
        {cli} images -q --no-trunc
        {cli} pull -q oci:{open_dir}/layout:1 --name example.com/elsewhere:1 >/dev/null
        {cli} images -q --no-trunc
    """
    out = in_mount_namespace(
        f"mount --bind {node} /dev/fuse\nexec {as_user} sh -euc {shlex.quote(user_script)}",
        default_root_env(open_dir / "home"),
    )
    assert out.split("\n") == [
        "alpha",
        "1",
        "is busy",
        image.config_digest(),
        "XDG",  # a store of its own: empty at first
        image.config_digest(),
        "",
    ], out
    store = open_dir / "home/.local/share/snapshotter"
    assert (store / "state.json").is_file() and os.stat(store).st_uid == 65534
    assert os.listdir(store / "mounts") == []
    assert (open_dir / "xdg/snapshotter/state.json").is_file()
    assert not mounted_at(open_dir / "mp")
