"""The life of a mount: checks, the daemon, its record in the store, and unmounting.

``mount`` checks everything it can in the calling process (image, mountpoint, /dev/fuse,
the merged tree), then forks a daemon that mounts and serves; the caller returns only when
the daemon says the view is ready, or with the daemon's one-line error.  While it lives,
the daemon holds an exclusive flock on its record ``mounts/<id>.json``, which is how
``rmi`` and ``prune`` know the image and its snapshots are in use; a killed daemon's lock
is released by the kernel, so its record goes stale by itself.

``mount_lazy`` does the same for a lazy image (``lazy.layers.LazyImage``), which the
caller readied first (``lazy.local.open_lazy_layout``, ``lazy.remote.open_lazy_remote``):
every seek index is in hand (and cached in the store) and every layer read whole is a
snapshot in the store.  The daemon is a fork of the caller, so it inherits the image, its
indexes and blob sources as they are; nothing is read again.  Its record names the
manifest digest and every diff_id, so ``prune`` leaves the snapshots of the layers it
fetched whole alone while it lives.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InUse, NotFound, SnapshotterError
from ..store.store import ImageRecord, Store, now_iso
from ..store.toc import TOC_NAME
from .tree import ImageView, open_tree

if TYPE_CHECKING:
    from ..lazy.layers import LazyImage

READY = b"ok\n"


# The file system type of every view in /proc/self/mountinfo (fusefs mounts subtype=snapshotter).
VIEW_FSTYPE = "fuse.snapshotter"


@dataclass(frozen=True, slots=True)
class MountEntry:
    fstype: str  # e.g. fuse.snapshotter, tmpfs
    source: str  # the fsname, e.g. snapshotter:docker.io/library/debian:12
    device: str  # "major:minor"


def mount_entry(path: Path) -> MountEntry | None:
    """The topmost mount at ``path`` (dead FUSE mounts, ENOTCONN, included), or None."""
    target = os.fsencode(str(path))
    found = None
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            # ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
            fields = line.rstrip(b"\n").split(b" ")
            if len(fields) > 4 and _unescape(fields[4]) == target:
                after = fields.index(b"-", 6) + 1 if b"-" in fields[6:] else len(fields)
                fstype, source = (fields[after:] + [b"?", b"?"])[:2]
                # a later line is mounted on top of an earlier one
                found = MountEntry(
                    os.fsdecode(_unescape(fstype)),
                    os.fsdecode(_unescape(source)),
                    fields[2].decode(),
                )
    return found


def mounted_at(path: Path) -> bool:
    """Whether ``path`` is a mount point, dead FUSE mounts (ENOTCONN) included."""
    try:
        return mount_entry(path) is not None
    except OSError:
        return os.path.ismount(path)


def _unescape(field: bytes) -> bytes:
    # mountinfo escapes space, tab, newline and backslash as \\ooo
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i : i + 1] == b"\\" and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)


def check_mountpoint(mountpoint: Path) -> Path:
    """The absolute mountpoint, if a view can be mounted there (and FUSE is at hand);
    ``InUse``/``NotFound``/``SnapshotterError`` otherwise.  ``mount`` checks again."""
    mp = _check_mountpoint(mountpoint)
    _check_fuse()
    return mp


def _check_mountpoint(mountpoint: Path) -> Path:
    mp = Path(os.path.abspath(mountpoint))
    if mounted_at(mp):
        raise InUse(f"mountpoint {str(mp)!r} is busy: something is already mounted there")
    if not mp.exists():
        raise NotFound(f"mountpoint {str(mp)!r} does not exist")
    if not mp.is_dir():
        raise NotFound(f"mountpoint {str(mp)!r} is not a directory")
    return mp


def _check_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        raise SnapshotterError(
            "/dev/fuse is missing: load the fuse kernel module (modprobe fuse) or, in a "
            "container, pass the device through"
        )
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        raise SnapshotterError("fusermount3 is not installed (Debian package fuse3)")


def fsname_for(store: Store, record: ImageRecord, label: str, layers: int | None) -> str:
    names = store.read_state().all_names_of(record.digest)
    name = names[0] if names else record.digest
    if layers is not None:
        name += f"@layer{layers}"
    return _fsname(name)


def _fsname(name: str) -> str:
    # mount options are comma-separated: keep the name to characters that cannot break them
    return "snapshotter:" + "".join(c if c.isalnum() or c in "._-:/@" else "_" for c in name)


def mount(
    store: Store,
    record: ImageRecord,
    mountpoint: Path,
    *,
    label: str,
    layers: int | None = None,
    foreground: bool = False,
    allow_other: bool = False,
    debug: bool = False,
) -> None:
    """Mount ``record`` at ``mountpoint``; return once the view is ready (or, in the
    foreground, once it has been unmounted again)."""
    mp = check_mountpoint(mountpoint)
    view = open_tree(store, record, layers)
    fsname = fsname_for(store, record, label, layers)
    _start(store, record.digest, view, mp, fsname, foreground, allow_other, debug)


def mount_lazy(
    store: Store,
    image: LazyImage,
    mountpoint: Path,
    *,
    foreground: bool = False,
    allow_other: bool = False,
    debug: bool = False,
) -> None:
    """Mount the readied lazy ``image`` at ``mountpoint``, as ``mount`` mounts an image of
    the store; its label names it in /proc/mounts (``snapshotter:lazy:LABEL``)."""
    from .tree import open_lazy_tree

    mp = check_mountpoint(mountpoint)
    view = open_lazy_tree(store, image)
    fsname = _fsname(f"lazy:{image.label}")
    _start(store, image.manifest_digest, view, mp, fsname, foreground, allow_other, debug)


def _start(
    store: Store,
    digest: str,
    view: ImageView,
    mp: Path,
    fsname: str,
    foreground: bool,
    allow_other: bool,
    debug: bool,
) -> None:
    """Serve ``view``: here (``foreground``), or in a daemon forked for it, returning once
    it says the view is ready."""
    from . import fusefs

    options = fusefs.mount_options(fsname, allow_other=allow_other, debug=debug)
    if foreground:
        _daemon(store, digest, view, mp, options, on_ready=None)
        return
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_fd)
        serving = False

        def ready() -> None:
            nonlocal serving
            os.write(write_fd, READY)
            os.close(write_fd)
            serving = True

        code = 1
        log: Path | None = None
        try:
            os.setsid()
            log = _detach(store)
            _daemon(store, digest, view, mp, options, on_ready=ready)
            code = 0
        except BaseException as exc:
            if serving:  # a daemon that failed while serving leaves its traceback
                traceback.print_exc()
                log = None
            else:  # report to the waiting parent, which prints the one line
                with contextlib.suppress(OSError):
                    os.write(write_fd, f"error: {_one_line(exc)}\n".encode())
        finally:
            if log is not None and not debug:
                with contextlib.suppress(OSError):
                    log.unlink()
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        answer = pipe.readline()
    if answer != READY:
        message = answer.decode(errors="replace").strip().removeprefix("error: ")
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        raise SnapshotterError(message or f"the mount daemon for {str(mp)!r} died at start")
    if debug:
        print(f"snapshotter: FUSE requests are logged to {daemon_log(store, pid)}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def daemon_log(store: Store, pid: int) -> Path:
    return store.mounts / f"daemon-{pid}.log"


def _detach(store: Store) -> Path:
    """Leave the terminal: stdin/stdout to /dev/null, stderr to a log in the store (its
    path is returned).  The log goes once the daemon ends cleanly, unless ``--debug``
    asked for it; a daemon that failed leaves its traceback there."""
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    store.mounts.mkdir(parents=True, exist_ok=True)
    path = daemon_log(store, os.getpid())
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 2)
    os.close(log)
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - the process's stderr
    return path


def _daemon(
    store: Store,
    digest: str,
    view: ImageView,
    mp: Path,
    options: set[str],
    on_ready: Callable[[], None] | None,
) -> None:
    from . import fusefs

    store.mounts.mkdir(parents=True, exist_ok=True)
    record_path = store.mounts / f"{secrets.token_hex(8)}.json"
    lock_fd = os.open(record_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        doc = {
            "image": digest,
            "diff_ids": list(view.diff_ids),
            "chain_id": view.chain_id,
            "mountpoint": str(mp),
            "pid": os.getpid(),
            "started": now_iso(),
        }
        if view.lazy:
            doc["lazy"] = True
        os.write(lock_fd, json.dumps(doc).encode())
        # From here on prune keeps the view's snapshots; one it removed before is an error.
        for layer, snapshot in enumerate(view.snapshots):
            if view.reader(layer) is None and not (snapshot / TOC_NAME).is_file():
                raise NotFound(
                    f"snapshot {view.diff_ids[layer]} was removed while mounting "
                    "(a concurrent prune?); mount again"
                )
        try:
            fs = fusefs.start(view, str(mp), options)
        except RuntimeError as exc:
            raise SnapshotterError(f"cannot mount at {str(mp)!r}: {exc}") from exc
        # The window can only be raised once the kernel has the daemon's INIT reply
        # (which caps it): on the first request after it, before any file is opened.
        # (From mountinfo: a stat(2) of the view would wait for this daemon.)
        with contextlib.suppress(OSError):
            if (entry := mount_entry(mp)) is not None:
                fs.after_init = functools.partial(set_readahead, entry.device)
        try:
            fusefs.serve(on_ready)
        finally:
            fs.close()
    finally:
        record_path.unlink(missing_ok=True)
        os.close(lock_fd)


# The kernel reads ahead of a FUSE file in requests of at most its backing device's
# readahead window: 128 KiB by default, which libfuse cannot raise.  1 MiB is the largest
# READ libfuse takes (its 256-page buffer), and eight times fewer requests per big file.
# (SNAPSHOTTER_READAHEAD_KB sets another window, to measure.)
READAHEAD_KB = int(os.environ.get("SNAPSHOTTER_READAHEAD_KB") or 1024)


def set_readahead(device: str, kb: int = READAHEAD_KB) -> int | None:
    """Set the readahead window of file system ``device`` to ``kb`` KiB where we may
    (root); the window now in force, or None when it cannot be read."""
    path = f"/sys/class/bdi/{device}/read_ahead_kb"
    with contextlib.suppress(OSError), open(path, "w") as f:
        f.write(str(kb))
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def umount(store: Store, mountpoint: Path, *, lazy: bool = False) -> bool:
    """Unmount a view, live or with a dead daemon, and wait for its daemon to exit.

    A view still in use (a process has a file open in it, or its working directory there)
    is refused with ``InUse``, as umount(8) refuses, unless ``lazy``: then it is detached
    at once, and its daemon goes on serving what is open until the last of it is closed;
    returns True in that case (and does not wait for the daemon).  A mount that is not a
    view is refused: it is not ours to unmount.
    """
    mp = Path(os.path.abspath(mountpoint))
    daemons = [m.pid for m in store.live_mounts() if m.mountpoint == str(mp)]
    entry = mount_entry(mp)
    if entry is None:
        raise NotFound(f"{str(mp)!r} is not mounted")
    if entry.fstype != VIEW_FSTYPE:
        raise NotFound(
            f"{str(mp)!r} is not a snapshotter view but a {entry.fstype} mount of "
            f"{entry.source!r}: unmount it with umount(8)"
        )
    if _unmount(mp, detach=False):
        if not lazy:
            raise InUse(
                f"cannot unmount {str(mp)!r}: it is busy (a process has a file open in it, or "
                "its working directory there); end that, or detach it now with --lazy"
            )
        if _unmount(mp, detach=True):
            raise InUse(f"cannot detach {str(mp)!r}: it is busy")
        return True
    deadline = time.monotonic() + 10
    for pid in daemons:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.02)
    return False


MNT_DETACH = 2  # linux/mount.h


def _unmount(mp: Path, *, detach: bool) -> bool:
    """Unmount ``mp`` (``detach``: lazily, umount -l); True if it is busy, an error for
    any other failure.  Root calls umount2(2) itself; a user goes through fusermount3."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.umount2(os.fsencode(str(mp)), MNT_DETACH if detach else 0) == 0:
            return False
        err = ctypes.get_errno()
        if err == errno.EBUSY:
            return True
        raise SnapshotterError(f"cannot unmount {str(mp)!r}: {os.strerror(err).lower()}")
    if shutil.which("fusermount3") is None:
        raise SnapshotterError("fusermount3 is not installed (Debian package fuse3)")
    result = subprocess.run(
        ["fusermount3", "-u", *(["-z"] if detach else []), str(mp)],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},  # its strerror text, which says "busy"
    )
    if result.returncode == 0:
        return False
    if "Device or resource busy" in result.stderr:
        return True
    raise SnapshotterError(f"cannot unmount {str(mp)!r}: {_one_line(RuntimeError(result.stderr))}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child, in tests) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b") ")[-1][:1] != b"Z"
    except OSError:
        return False
