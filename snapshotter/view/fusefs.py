"""The read-only FUSE view of a merged tree (pyfuse3).

Each handler is a few lines: inode to node, ask the tree, fill ``EntryAttributes``.  The
image is immutable, so the kernel may cache everything: entries and attributes never time
out and page cache is kept across opens.  That is also why nothing per inode is kept here:
attributes are made per request (the kernel asks again only after it dropped its own
copy), so the daemon's memory is the tree's compact columns, whatever the walk.  Inodes
live as long as the mount (the tree is numbered once), so lookup counts need no
bookkeeping and ``forget`` has nothing to free.

Writes never reach us: the mount is ``ro`` and the kernel answers EROFS; the write
handlers pyfuse3 would call are left unimplemented (ENOSYS) as a second line.

Every request costs the daemon far more than the kernel's cache would, so with the
pyfuse3 that scripts/bootstrap builds (third_party/pyfuse3/, feature ``no_open_inode``)
``open`` and ``opendir`` answer ENOSYS: the kernel then never sends open, release, opendir
or releasedir again, keeps file pages (FOPEN_KEEP_CACHE) and directory listings
(FOPEN_CACHE_DIR) across opens, and names the inode where a file handle would be.  Reads
then open the data file themselves and keep a bounded set of descriptors.  With a stock
pyfuse3 the view is the same, one open/release (opendir/releasedir) pair per open slower.

With that build the daemon also serves without an event loop (``serve``: requests read
and answered in the calling thread, trio never imported) and in one more process per CPU
(each answers requests from the same FUSE device; nothing changes after INIT that they
would have to agree on), names that do not exist and symlink targets stay in the
kernel's caches, and the first read of a file has a child process warm the files after
it (view/prefetch.py).

A lazy view (``tree.open_lazy_tree``) reads the files of its indexed layers through their
``lazy.reader.LayerReader`` instead of data files; everything else is the same, and
lookup, getattr, readdir, readlink and the xattr handlers never touch a reader (the tree
holds all they answer).  A read the reader fails (its source, a span that is not the one
indexed) answers EIO for that request only, and a later read tries again.  A lazy view
warms nothing (prefetch is off); its worker processes share the blob sources (which must
survive a fork: ``lazy.local.LocalBlob`` does) and keep one span cache each.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import stat
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import pyfuse3

from ..errors import SnapshotterError
from ..store.toc import EntryKind
from .merge import Node, Stat
from .prefetch import Streams, Warmer
from .tree import ImageView, data_name

if TYPE_CHECKING:  # a view of a pulled image never imports lazy/
    from ..lazy.layers import ContentReader

log = logging.getLogger(__name__)
T = TypeVar("T")

# The view never changes under the kernel: cache entries and attributes "forever".
TIMEOUT = 365 * 24 * 3600.0
BLOCK_SIZE = 4096
# Whether pyfuse3 passes the inode as ``fh`` once open/opendir answered ENOSYS.
NO_OPEN = "no_open_inode" in getattr(pyfuse3, "FEATURES", ())
# Whether pyfuse3 can serve without trio (``main_blocking``).
BLOCKING = "main_blocking" in getattr(pyfuse3, "FEATURES", ())
# Processes that answer requests beside the daemon's (pyfuse3 main_blocking(workers=N)):
# readers in parallel are then answered in parallel.  One per CPU beyond the first, at
# most 3; SNAPSHOTTER_FUSE_WORKERS sets the number, to measure.
WORKERS = "main_blocking_workers" in getattr(pyfuse3, "FEATURES", ())
# Without open/release, data files stay open until this many others were opened after them.
MAX_OPEN_DATA_FILES = 256
# Reads warm the files that follow them (view/prefetch.py); SNAPSHOTTER_PREFETCH=0 turns
# it off, to measure what it brings (scripts/bench_mount.py).
PREFETCH = os.environ.get("SNAPSHOTTER_PREFETCH", "1") != "0"
# A READ this big is the kernel's readahead of a file read in sequence.
STREAM_READ = 128 << 10
# Files from this size on are read with the backing file's readahead doubled.
SEQUENTIAL_SIZE = 1 << 20

_TYPE_BITS = {
    EntryKind.FILE: stat.S_IFREG,
    EntryKind.DIR: stat.S_IFDIR,
    EntryKind.SYMLINK: stat.S_IFLNK,
    EntryKind.CHAR: stat.S_IFCHR,
    EntryKind.BLOCK: stat.S_IFBLK,
    EntryKind.FIFO: stat.S_IFIFO,
}


def attributes(node: Node | Stat) -> pyfuse3.EntryAttributes:
    a = pyfuse3.EntryAttributes()
    a.st_ino = pyfuse3.InodeT(node.inode)
    a.generation = 0
    a.entry_timeout = TIMEOUT
    a.attr_timeout = TIMEOUT
    a.st_mode = pyfuse3.ModeT(_TYPE_BITS[node.kind] | node.mode)
    a.st_nlink = node.nlink
    a.st_uid = node.uid
    a.st_gid = node.gid
    a.st_rdev = os.makedev(node.rdev_major, node.rdev_minor)
    a.st_size = node.size
    a.st_blksize = BLOCK_SIZE
    a.st_blocks = node.blocks
    a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
    return a


NO_ENTRY = pyfuse3.EntryAttributes()
NO_ENTRY.st_ino = pyfuse3.InodeT(0)
NO_ENTRY.entry_timeout = TIMEOUT


def _ask(query: Callable[[int], T], inode: int) -> T:
    """``query(inode)`` in FUSE's terms: ENOENT for an unknown inode, EIO (and a log
    line) for a damaged tree."""
    try:
        return query(inode)
    except KeyError:
        raise pyfuse3.FUSEError(errno.ENOENT) from None
    except SnapshotterError as exc:
        log.error("inode %d: %s", inode, exc)
        raise pyfuse3.FUSEError(errno.EIO) from exc


class ImageFS(pyfuse3.Operations):
    """pyfuse3 operations over one ``ImageView``."""

    # Honoured by the pyfuse3 that scripts/bootstrap builds (feature ``conn_flags``),
    # ignored by a stock one.  Nothing in the view ever changes: the kernel may keep
    # symlink targets, need not check attributes before a cached read, and gets no
    # splice(2) per request (no request carries data worth it).
    enable_cache_symlinks = True
    enable_auto_inval_data = False
    enable_splice_read = False

    def __init__(self, view: ImageView, *, no_open: bool = NO_OPEN, prefetch: bool = PREFETCH):
        super().__init__()
        self.view = view
        self.tree = view.tree
        self.no_open = no_open
        self.open_unsupported = no_open  # pyfuse3 patch 0005: known before any open
        self._content_size: int | None = None  # for statfs, summed on first use
        # fh -> host fd of the data file (-1: empty file).  With no_open the fh is the
        # inode, entries are made by read and the oldest is closed past MAX_OPEN_DATA_FILES.
        self._files: dict[int, int] = {}
        self._next_fh = 1
        self._data_dirs: dict[int, int] = {}  # layer -> O_PATH fd of its data_dir
        # fh -> a lazy layer's file, opened through open (stock pyfuse3 only).
        self._lazy_files: dict[int, tuple[ContentReader, Stat]] = {}
        self.prefetch = prefetch and not view.lazy
        # Called once, on the first lookup, getattr, readdir or read: after INIT was
        # answered, and before any file of the view can have been opened.
        self.after_init: Callable[[], object] | None = None
        self._warmer: Warmer | None = None
        self._streams: Streams | None = None

    def init(self) -> None:
        # FUSE's INIT: in the process that serves, after any fork.
        if self.prefetch:
            self._warmer = Warmer(
                [str(self.view.data_dir(i)) for i in range(len(self.view.snapshots))]
            )
            self._streams = Streams(self._warm)

    def close(self) -> None:
        """Stop the prefetch process (after the loop ended)."""
        if self._warmer is not None:
            self._warmer.close()
            self._warmer = self._streams = None

    def _warm(self, inode: int, count: int) -> None:
        """Have the non-empty regular files among the ``count`` inodes after ``inode``
        warmed (view/prefetch.py)."""
        stat = self.tree.stat
        files = []
        for i in range(inode + 1, min(inode + count, self.tree.max_inode) + 1):
            try:
                node = stat(i)
            except (KeyError, SnapshotterError):  # unused numbers; damage is the read's to report
                continue
            if node.kind is EntryKind.FILE and node.size:
                files.append((node.layer, node.data))
        if files and self._warmer is not None:
            self._warmer.warm(files)

    def _node(self, inode: int) -> Node:
        return _ask(self.tree.node, inode)

    def _stat(self, inode: int) -> Stat:
        return _ask(self.tree.stat, inode)

    def _first_request(self) -> None:
        hook, self.after_init = self.after_init, None
        if hook is not None:
            hook()

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if self.after_init is not None:
            self._first_request()
        try:
            inode = self.tree.lookup_raw(parent_inode, name)
        except SnapshotterError as exc:
            log.error("inode %d: lookup %r: %s", parent_inode, name, exc)
            raise pyfuse3.FUSEError(errno.EIO) from exc
        if inode is None:
            # An entry with inode 0: "no such name", which the kernel keeps (a negative
            # dentry) for the entry timeout instead of asking again on every probe of
            # a search path (ld.so, Python's imports, shells).
            return NO_ENTRY
        return attributes(self._stat(inode))

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        pass  # inodes live as long as the mount

    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if self.after_init is not None:
            self._first_request()
        return attributes(self._stat(inode))

    async def readlink(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileNameT:
        node = self._node(inode)
        if node.kind is not EntryKind.SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return pyfuse3.FileNameT(os.fsencode(node.link))

    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        if self.no_open:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # readdir gets the inode as fh
        if self._node(inode).kind is not EntryKind.DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return pyfuse3.FileHandleT(inode)

    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        if self.after_init is not None:
            self._first_request()
        # The listing never changes, so a position in it is a stable next_id: "." and
        # ".." first (the kernel lists what FUSE gives it, and every Linux file system
        # gives those two), then the children.
        try:
            stat = self.tree.stat
            if start_id < 2:
                parent = self.tree.parent(fh)  # KeyError: no directory
                for position in range(start_id, 2):
                    name, node = (b".", stat(fh)) if position == 0 else (b"..", stat(parent))
                    if not pyfuse3.readdir_reply(token, name, attributes(node), position + 1):
                        return
            for i, name, inode in self.tree.scan(fh, max(start_id - 2, 0)):
                if not pyfuse3.readdir_reply(token, name, attributes(stat(inode)), i + 3):
                    break
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOTDIR) from None
        except SnapshotterError as exc:
            log.error("inode %d: readdir: %s", fh, exc)
            raise pyfuse3.FUSEError(errno.EIO) from exc

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        pass

    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        if self.no_open:
            # The ro mount has the kernel refuse writes before open; reads get the inode.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        node = self._stat(inode)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if node.kind is not EntryKind.FILE:
            raise pyfuse3.FUSEError(errno.EISDIR if node.kind is EntryKind.DIR else errno.EINVAL)
        fh = self._next_fh
        self._next_fh += 1
        reader = self.view.reader(node.layer)
        if reader is not None:
            self._lazy_files[fh] = (reader, node)
        else:
            self._files[fh] = self._first_open(node)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=True)

    def _first_open(self, node: Stat) -> int:
        """A descriptor of ``node``'s content for its first read (-1: empty file); the
        reader's prefetch stream moves on."""
        if not node.size:
            return -1
        if self.after_init is not None:
            self._first_request()
        if self._streams is not None:
            self._streams.reading(node.inode)
        try:
            fd = self._open_data_file(node)
        except OSError as exc:
            log.error("inode %d: cannot open its content: %s", node.inode, exc)
            raise pyfuse3.FUSEError(errno.EIO) from exc
        if node.size >= SEQUENTIAL_SIZE:
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return fd

    def _open_data_file(self, node: Stat) -> int:
        dir_fd = self._data_dirs.get(node.layer)
        if dir_fd is None:
            dir_fd = self._data_dirs[node.layer] = os.open(
                self.view.data_dir(node.layer), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
            )
        # relative to the directory: no path to build, and a one-name lookup
        return os.open(
            data_name(node.data), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dir_fd
        )

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        fd = self._files.get(fh)
        if fd is None:
            opened = self._lazy_files.get(fh)
            if opened is not None:
                return read_lazy(*opened, off, size)
            if not self.no_open:
                raise pyfuse3.FUSEError(errno.EBADF)
            node = self._stat(fh)
            if node.kind is not EntryKind.FILE:
                raise pyfuse3.FUSEError(errno.EINVAL)
            reader = self.view.reader(node.layer)
            if reader is not None:
                return read_lazy(reader, node, off, size)
            if len(self._files) >= MAX_OPEN_DATA_FILES:
                self._close(next(iter(self._files)))
            fd = self._files[fh] = self._first_open(node)
        if fd < 0:
            return b""
        try:
            data = os.pread(fd, size, off)
        except OSError as exc:
            raise pyfuse3.FUSEError(errno.EIO) from exc
        if size >= STREAM_READ and len(data) == size:
            # The kernel's readahead: the next requests will follow.  Have the disk
            # read them while this one is answered.
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, off + size, 2 * size, os.POSIX_FADV_WILLNEED)
        return data

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        self._lazy_files.pop(fh, None)
        self._close(fh)

    def _close(self, fh: int) -> None:
        fd = self._files.pop(fh, -1)
        if fd >= 0:
            os.close(fd)

    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        wanted = os.fsdecode(name)
        for key, value in self._node(inode).xattrs:
            if key == wanted:
                return value
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        return [pyfuse3.XAttrNameT(os.fsencode(k)) for k, _ in self._node(inode).xattrs]

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        if self._content_size is None:
            self._content_size = self.tree.content_size()
        total = self._content_size
        s.f_bsize = BLOCK_SIZE
        s.f_frsize = BLOCK_SIZE
        s.f_blocks = (total + BLOCK_SIZE - 1) // BLOCK_SIZE
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.tree)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s


def read_lazy(reader: ContentReader, node: Stat, off: int, size: int) -> bytes:
    """A READ of a lazy layer's file; EIO (and a log line) when the reader fails."""
    try:
        return reader.read(node.data, node.size, off, size)
    except (SnapshotterError, OSError, ValueError) as exc:
        log.error("inode %d: read of %d bytes at %d: %s", node.inode, size, off, exc)
        raise pyfuse3.FUSEError(errno.EIO) from exc


def mount_options(fsname: str, *, allow_other: bool, debug: bool) -> set[str]:
    options = {
        "ro",
        "nosuid",
        "nodev",
        "default_permissions",
        f"fsname={fsname}",
        "subtype=snapshotter",
    }
    if allow_other:
        options.add("allow_other")
    if debug:
        options.add("debug")
    return options


def start(view: ImageView, mountpoint: str, options: set[str]) -> ImageFS:
    """Mount (the kernel sees the file system from here on); ``serve`` answers it."""
    fs = ImageFS(view)
    pyfuse3.init(fs, mountpoint, options)
    return fs


SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def serve(on_ready: Callable[[], None] | None = None) -> None:
    """Answer the kernel until unmounted or signalled (SIGTERM, SIGINT, SIGHUP), then
    unmount.  ``on_ready`` is called once signals are handled: a signal right after the
    view is announced must unmount it, not kill the daemon with the view still mounted.

    Every handler answers without waiting for anything but a local system call, so with
    the pyfuse3 that scripts/bootstrap builds (feature ``main_blocking``) requests are read
    and answered in this thread with no event loop, and trio is never imported; a stock
    pyfuse3 runs on trio with one task (as does SNAPSHOTTER_FUSE_LOOP=trio, to measure).
    """
    blocking = BLOCKING and os.environ.get("SNAPSHOTTER_FUSE_LOOP") != "trio"
    try:
        if blocking:
            _serve_blocking(on_ready)
        else:
            import trio

            trio.run(_serve_trio, on_ready)
    finally:
        pyfuse3.close(unmount=True)


def _serve_blocking(on_ready: Callable[[], None] | None) -> None:
    wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous = {sig: signal.signal(sig, lambda *_: pyfuse3.terminate()) for sig in SIGNALS}
    previous_fd = signal.set_wakeup_fd(wakeup_write)
    try:
        if on_ready is not None:
            on_ready()
        if WORKERS:
            workers = os.environ.get("SNAPSHOTTER_FUSE_WORKERS")
            count = int(workers) if workers else min((os.cpu_count() or 1) - 1, 3)
            pyfuse3.main_blocking(wakeup_read, workers=count)
        else:
            pyfuse3.main_blocking(wakeup_read)
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wakeup_read)
        os.close(wakeup_write)


async def _serve_trio(on_ready: Callable[[], None] | None) -> None:
    import trio

    async with trio.open_nursery() as nursery:

        async def watch_signals(task_status: trio.TaskStatus[None]) -> None:
            with trio.open_signal_receiver(*SIGNALS) as sigs:
                task_status.started()
                async for _ in sigs:
                    pyfuse3.terminate()
                    return

        await nursery.start(watch_signals)
        if on_ready is not None:
            on_ready()
        # Handlers never block on anything but a local pread, so extra worker tasks
        # only add trio scheduling to every request: one task answered a warm
        # metadata walk about 30% faster in scripts/bench_mount.py.
        await pyfuse3.main(min_tasks=1, max_tasks=1)
        nursery.cancel_scope.cancel()
