"""Warm the backing files of the view ahead of a reader, in a process beside the FUSE loop.

The daemon answers FUSE requests on one thread.  On a cold disk, every first read of a
file waits there for the store's disk twice (the data file's inode, then its data), and
every other request, from this reader or any other, waits behind it: the daemon's CPU
time and the disk's latency add up, where the kernel's overlayfs pays the disk alone.

Readers of an image mostly go through it in order: ``tar``, ``cp -r``, ``grep -r`` and
``rg`` read a directory's files one after another, and inodes are numbered in path order
(``merge``), so the files a reader will ask for next are the inodes that follow the one
it reads now.  ``Streams`` follows a few such readers (each walking its own part of the
tree); when a read lands in the window a stream has warmed, the stream goes further
ahead, doubling its window up to ``MAX_WINDOW`` files, the way the kernel's own readahead
grows.  A read anywhere else starts a new stream with a small window, so one ``cat`` of
one file costs a few small files' worth of readahead.

The warming itself is done by a ``Warmer``: a child process that, for each file named to
it through a pipe, opens it (the inode comes off the disk there) and asks the kernel to
read its first ``WARM_BYTES`` (``posix_fadvise(WILLNEED)``), then closes it.  By the time
the loop opens and reads the file, its inode, directory entry and first pages are in the
kernel's caches.  A process rather than threads: a thread would take the loop's GIL
twice per file (around each system call), and those hand-overs cost the loop more than
the open they save.  The loop never waits for the warmer: a full pipe drops the hint.
A metadata walk (``find``, ``ls -R``) reads no file, so it warms nothing.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import struct
from collections.abc import Callable, Sequence

from .tree import data_name

log = logging.getLogger(__name__)

# A stream's window, in files: where it starts and how far it may grow.
FIRST_WINDOW = 8
MAX_WINDOW = 512
# Streams followed at once (readers walking different parts of the tree).
MAX_STREAMS = 16
# How much of each file is asked for; the backing file's own readahead does the rest.
WARM_BYTES = 512 << 10

# One hint on the pipe: the layer, and the file's name in its data directory.
_HINT = struct.Struct("<IQ")
# Hints per write: at most PIPE_BUF bytes, so that a write is whole or not at all.
_HINTS_PER_WRITE = 4096 // _HINT.size


class _Stream:
    __slots__ = ("window", "until")

    def __init__(self, window: int, until: int):
        self.window = window
        self.until = until  # the last inode queued for warming


class Streams:
    """Which inodes to warm, given the inodes read for the first time.

    ``warm(first, count)`` is called for each new range: the ``count`` inodes after
    ``first``.  Pure bookkeeping: testable, and cheap enough for the loop.
    """

    def __init__(self, warm: Callable[[int, int], None]):
        self._warm = warm
        self._streams: collections.OrderedDict[int, _Stream] = collections.OrderedDict()

    def reading(self, inode: int) -> None:
        """``inode`` is being read for the first time: move the stream it belongs to
        ahead, or start one."""
        for key, s in self._streams.items():
            if key <= inode <= s.until:
                del self._streams[key]
                if s.until - inode < s.window // 2:  # past the middle: go further
                    s.window = min(2 * s.window, MAX_WINDOW)
                    self._warm(s.until, s.window)
                    s.until += s.window
                self._streams[inode] = s
                return
        self._warm(inode, FIRST_WINDOW)
        self._streams[inode] = _Stream(FIRST_WINDOW, inode + FIRST_WINDOW)
        if len(self._streams) > MAX_STREAMS:
            self._streams.popitem(last=False)

    def windows(self) -> list[tuple[int, int, int]]:
        """(last inode read, window, last inode warmed) of each stream, oldest first."""
        return [(k, s.window, s.until) for k, s in self._streams.items()]


class Warmer:
    """A child process that warms the files it is told of (see the module's docstring).

    ``data_dirs[layer]`` is the directory holding layer ``layer``'s content files.  With
    ``trace``, the child appends a line "layer name" per file it warmed (for tests and
    ``--debug``).
    """

    def __init__(self, data_dirs: Sequence[str], *, trace: str | None = None):
        read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        self.sent = self.dropped = 0
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child; its effects are tested
            code = 1
            try:
                # Hold nothing of the daemon's: above all not /dev/fuse, or a killed
                # daemon's view would hang instead of failing with ENOTCONN.
                os.closerange(3, read_fd)
                os.closerange(read_fd + 1, os.sysconf("SC_OPEN_MAX"))
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                _warm_forever(read_fd, data_dirs, trace)
                code = 0
            finally:
                os._exit(code)
        os.close(read_fd)
        os.set_blocking(self._write_fd, False)

    def warm(self, files: Sequence[tuple[int, int]]) -> None:
        """Ask for (layer, name) files to be warmed; never blocks (a full pipe drops)."""
        for start in range(0, len(files), _HINTS_PER_WRITE):
            batch = files[start : start + _HINTS_PER_WRITE]
            try:
                os.write(self._write_fd, b"".join(_HINT.pack(*f) for f in batch))
                self.sent += len(batch)
            except BlockingIOError:
                self.dropped += len(files) - start
                return
            except OSError:  # the warmer is gone: reads still work, only colder
                self.dropped += len(files) - start
                return

    def close(self) -> None:
        """End the child (it finishes its current file) and reap it."""
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            log.info("prefetch: %d files hinted, %d hints dropped", self.sent, self.dropped)


def _warm_forever(read_fd: int, data_dirs: Sequence[str], trace: str | None) -> None:
    dirs = [os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for d in data_dirs]
    out = open(trace, "a", buffering=1) if trace else None  # noqa: SIM115 - for the life of the child
    pending = b""
    while chunk := os.read(read_fd, 1 << 16):
        pending += chunk
        whole = len(pending) - len(pending) % _HINT.size
        for layer, name in _HINT.iter_unpack(pending[:whole]):
            try:
                fd = os.open(
                    data_name(name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dirs[layer]
                )
            except (OSError, IndexError):
                continue
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, WARM_BYTES, os.POSIX_FADV_WILLNEED)
            os.close(fd)
            if out is not None:
                out.write(f"{layer} {data_name(name)}\n")
        pending = pending[whole:]
