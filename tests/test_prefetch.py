"""Prefetch on its own: which inodes the streams warm, and the process that warms them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from snapshotter.view import prefetch
from snapshotter.view.prefetch import FIRST_WINDOW, MAX_STREAMS, MAX_WINDOW, Streams, Warmer


def streams() -> tuple[Streams, list[range]]:
    warmed: list[range] = []
    return Streams(lambda first, count: warmed.append(range(first + 1, first + count + 1))), warmed


def test_a_first_read_warms_a_small_window_after_it() -> None:
    s, warmed = streams()
    s.reading(10)
    assert warmed == [range(11, 11 + FIRST_WINDOW)]
    s.reading(12)  # inside the window, before its middle: nothing more yet
    assert len(warmed) == 1


def test_a_reader_that_keeps_up_doubles_its_window() -> None:
    s, warmed = streams()
    inode = 1
    for _ in range(9):
        s.reading(inode)
        inode = s.windows()[-1][2]  # the reader got to the last file warmed
    assert [len(r) for r in warmed] == [8, 16, 32, 64, 128, 256, 512, 512, 512]
    # one contiguous run ahead of the reader, nothing warmed twice
    assert [i for r in warmed for i in r] == list(range(2, inode + 1))
    assert MAX_WINDOW == 512


def test_readers_elsewhere_get_streams_of_their_own_up_to_a_bound() -> None:
    s, warmed = streams()
    s.reading(1)
    s.reading(1000)
    assert warmed == [range(2, 10), range(1001, 1009)]
    assert len(s.windows()) == 2
    for k in range(MAX_STREAMS * 2):
        s.reading(10_000 + 100 * k)
    assert len(s.windows()) == MAX_STREAMS
    assert s.windows()[-1][0] == 10_000 + 100 * (2 * MAX_STREAMS - 1)


def wait_for_lines(path: Path, n: int) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.01)
    return path.read_text().splitlines() if path.exists() else []


def test_the_warmer_opens_what_it_is_told_and_holds_nothing_else(tmp_path: Path) -> None:
    dirs = [tmp_path / "l0", tmp_path / "l1"]
    for d in dirs:
        d.mkdir()
    for name in (0x1, 0x2A, 0xFFFF):
        (dirs[0] / f"{name:x}").write_bytes(b"x" * 100)
    (dirs[1] / "7").write_bytes(b"y")
    trace = tmp_path / "trace"
    held = os.open(tmp_path, os.O_RDONLY)  # stands for /dev/fuse: the child must not keep it
    try:
        w = Warmer([str(d) for d in dirs], trace=str(trace))
    finally:
        os.close(held)
    try:
        w.warm([(0, 0x1), (1, 0x7), (0, 0x99), (5, 0x1), (0, 0x2A)])  # 0x99, layer 5: none
        w.warm([(0, 0xFFFF)])
        assert wait_for_lines(trace, 4) == ["0 1", "1 7", "0 2a", "0 ffff"]
        assert (w.sent, w.dropped) == (6, 0)
        fds = os.listdir(f"/proc/{w.pid}/fd")
        assert str(tmp_path) not in {os.readlink(f"/proc/{w.pid}/fd/{fd}") for fd in fds}
    finally:
        w.close()
    assert not os.path.exists(f"/proc/{w.pid}")  # reaped


def test_a_full_pipe_drops_hints_and_never_blocks(tmp_path: Path) -> None:
    (tmp_path / "1").write_bytes(b"x")
    w = Warmer([str(tmp_path)])
    try:
        os.kill(w.pid, 19)  # SIGSTOP: the child reads nothing
        hints = [(0, 1)] * (1 << 20)
        started = time.monotonic()
        w.warm(hints)
        assert time.monotonic() - started < 5
        assert w.dropped > 0 and w.sent + w.dropped == len(hints)
        os.kill(w.pid, 18)  # SIGCONT
    finally:
        w.close()


def test_the_warmer_ends_when_the_daemon_is_gone(tmp_path: Path) -> None:
    w = Warmer([str(tmp_path)])
    os.close(w._write_fd)  # what the kernel does when the daemon dies
    w._write_fd = -1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pid, _ = os.waitpid(w.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.01)
    assert pid == w.pid
    assert prefetch.WARM_BYTES >= 128 << 10
