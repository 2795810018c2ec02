"""Warm the backing files of the view ahead of a reader, on threads beside the FUSE loop.

The daemon answers FUSE requests on one thread.  On a cold disk, every first read of a
file waits there for the store's disk twice (the data file's inode, then its data), and
every other request, from this reader or any other, waits behind it: the daemon's CPU
time and the disk's latency add up, where the kernel's overlayfs pays the disk alone.

Readers of an image mostly go through it in order: ``tar``, ``cp -r``, ``grep -r`` and
``rg`` read a directory's files one after another, and inodes are numbered in path order
(``merge``), so the files a reader will ask for next are the inodes that follow the one
it reads now.  A ``Prefetcher`` keeps a few such streams (one per reader walking its own
part of the tree); when a read lands on the window a stream has warmed, the stream goes
further ahead, doubling its window up to ``MAX_WINDOW`` files, the way the kernel's own
readahead grows.  A read anywhere else starts a new stream with a small window, so one
``cat`` of one file costs a few small files' worth of readahead.

Warming a file is ``open`` (the inode comes off the disk on a worker thread) and
``posix_fadvise(WILLNEED)`` of its first ``WARM_BYTES`` (the disk reads them while the
loop answers other requests); the open descriptor is handed to the loop, which then reads
without opening.  Nothing here blocks the loop: it only queues inodes and takes
descriptors.  A metadata walk (``find``, ``ls -R``) reads no file, so it warms nothing.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

# A stream's window, in files: where it starts and how far it may grow.
FIRST_WINDOW = 8
MAX_WINDOW = 512
# Streams followed at once (readers walking different parts of the tree).
MAX_STREAMS = 16
# How much of each file is asked for; the backing file's own readahead does the rest.
WARM_BYTES = 512 << 10
# Descriptors opened ahead and not yet taken by the loop, at most.
MAX_READY = 1024
WORKERS = 2

_STOP = -1


class _Stream:
    __slots__ = ("window", "until")

    def __init__(self, window: int, until: int):
        self.window = window
        self.until = until  # the last inode queued for warming


class Prefetcher:
    """Opens and warms the data files of the inodes after the ones being read.

    ``files_after(inode, count)`` names the regular, non-empty files among the ``count``
    inodes after ``inode`` as (inode, open function) pairs; the open function returns a
    descriptor of the file's content, or raises OSError.
    """

    def __init__(
        self,
        files_after: Callable[[int, int], list[tuple[int, Callable[[], int]]]],
        *,
        workers: int = WORKERS,
    ):
        self._files_after = files_after
        self._streams: collections.OrderedDict[int, _Stream] = collections.OrderedDict()
        self._queue: queue.SimpleQueue[tuple[int, Callable[[], int]] | None] = (
            queue.SimpleQueue()
        )
        self._ready: dict[int, int] = {}
        self._lock = threading.Lock()
        self.warmed = self.hits = self.misses = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"prefetch-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    # -- the loop's side: never blocks

    def reading(self, inode: int) -> None:
        """The loop is about to read ``inode`` for the first time: move the stream it
        belongs to ahead, or start one."""
        for key, s in self._streams.items():
            if key <= inode <= s.until:
                del self._streams[key]
                if s.until - inode < s.window:  # the reader caught up: go further
                    s.window = min(2 * s.window, MAX_WINDOW)
                    self._queue_after(s.until, s.window)
                    s.until += s.window
                self._streams[inode] = s
                return
        s = _Stream(FIRST_WINDOW, inode + FIRST_WINDOW)
        self._queue_after(inode, FIRST_WINDOW)
        self._streams[inode] = s
        if len(self._streams) > MAX_STREAMS:
            self._streams.popitem(last=False)

    def take(self, inode: int) -> int | None:
        """The descriptor a worker opened for ``inode``, now the caller's; None if none."""
        with self._lock:
            fd = self._ready.pop(inode, None)
        if fd is None:
            self.misses += 1
        else:
            self.hits += 1
        return fd

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=5)
        with self._lock:
            ready, self._ready = self._ready, {}
        for fd in ready.values():
            os.close(fd)
        log.info("prefetch: %d files warmed, %d reads found theirs open, %d did not",
                 self.warmed, self.hits, self.misses)

    def _queue_after(self, inode: int, count: int) -> None:
        try:
            files = self._files_after(inode, count)
        except Exception:  # a damaged tree is the loop's to report, on the read itself
            return
        for item in files:
            self._queue.put(item)

    # -- the workers

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            inode, open_data = item
            with self._lock:
                if inode in self._ready:
                    continue
            try:
                fd = open_data()
            except OSError:
                continue  # the loop's own open reports it, if the file is ever read
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, WARM_BYTES, os.POSIX_FADV_WILLNEED)
            self.warmed += 1
            stale = None
            with self._lock:
                if inode in self._ready:
                    stale = fd
                else:
                    self._ready[inode] = fd
                    if len(self._ready) > MAX_READY:
                        stale = self._ready.pop(next(iter(self._ready)))
            if stale is not None:
                os.close(stale)
