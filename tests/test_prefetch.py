"""The prefetcher on its own: which inodes it warms, and the descriptors it hands over."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snapshotter.view import prefetch
from snapshotter.view.prefetch import FIRST_WINDOW, Prefetcher


class Files:
    """Inodes 1..n, each a file of its own under ``tmp``; records what was opened."""

    def __init__(self, tmp: Path, n: int, empty: frozenset[int] = frozenset()):
        self.tmp, self.n, self.empty = tmp, n, empty
        self.opened: list[int] = []
        for i in range(1, n + 1):
            (tmp / str(i)).write_bytes(b"" if i in empty else f"file {i}\n".encode())

    def after(self, inode: int, count: int) -> list[tuple[int, Callable[[], int]]]:
        return [
            (i, lambda i=i: self._open(i))
            for i in range(inode + 1, min(inode + count, self.n) + 1)
            if i not in self.empty
        ]

    def _open(self, i: int) -> int:
        self.opened.append(i)
        return os.open(self.tmp / str(i), os.O_RDONLY)


def settle(p: Prefetcher, files: Files, want: int) -> None:
    deadline = time.monotonic() + 10
    while len(files.opened) < want and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # nothing more should come


def test_a_read_warms_the_files_after_it_and_hands_their_descriptors(tmp_path: Path) -> None:
    files = Files(tmp_path, 100)
    p = Prefetcher(files.after)
    try:
        p.reading(10)
        settle(p, files, FIRST_WINDOW)
        assert sorted(files.opened) == list(range(11, 11 + FIRST_WINDOW))
        fd = p.take(11)
        assert fd is not None
        assert os.pread(fd, 100, 0) == b"file 11\n"
        os.close(fd)
        assert p.take(11) is None  # handed over once
        assert p.take(50) is None  # never warmed
        assert (p.hits, p.misses) == (1, 2)
    finally:
        p.close()


def test_a_reader_that_keeps_up_doubles_its_window(tmp_path: Path) -> None:
    files = Files(tmp_path, 3000)
    p = Prefetcher(files.after)
    try:
        inode, windows = 1, []
        for _ in range(9):
            p.reading(inode)
            stream = p._streams[inode]
            windows.append(stream.window)
            inode = stream.until  # the reader reached the last file warmed
        assert windows == [8, 16, 32, 64, 128, 256, 512, 512, 512]
        settle(p, files, inode - 1)
        assert sorted(files.opened) == list(range(2, inode + 1))
    finally:
        p.close()


def test_empty_files_and_reads_elsewhere(tmp_path: Path) -> None:
    files = Files(tmp_path, 100, empty=frozenset(range(2, 100, 2)))
    p = Prefetcher(files.after)
    try:
        p.reading(1)
        p.reading(60)  # another reader, far away: a stream of its own
        settle(p, files, FIRST_WINDOW)
        assert sorted(files.opened) == [3, 5, 7, 9, 61, 63, 65, 67]
        assert len(p._streams) == 2
    finally:
        p.close()


def test_streams_are_bounded(tmp_path: Path) -> None:
    files = Files(tmp_path, 10 * prefetch.MAX_STREAMS * 20)
    p = Prefetcher(files.after)
    try:
        for k in range(prefetch.MAX_STREAMS * 2):
            p.reading(1 + 20 * k)
        assert len(p._streams) == prefetch.MAX_STREAMS
    finally:
        p.close()


def test_ready_descriptors_are_bounded_and_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefetch, "MAX_READY", 4)
    files = Files(tmp_path, 50)
    p = Prefetcher(files.after)
    p.reading(1)  # 8 warmed, 4 kept
    settle(p, files, FIRST_WINDOW)
    kept = dict(p._ready)
    assert len(kept) == 4
    p.close()
    for fd in kept.values():
        with pytest.raises(OSError):
            os.fstat(fd)
    assert p._ready == {}
