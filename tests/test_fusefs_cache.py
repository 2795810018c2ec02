"""What the kernel keeps of the view, counted in the FUSE requests it sends (``--debug``).

The view never changes, so the kernel may keep symlink targets (with the pyfuse3 that
scripts/bootstrap builds: feature ``conn_flags``) and names that do not exist (negative
entries, with any pyfuse3); and reading through the view warms the files that follow.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyfuse3
import pytest
from builders import ImageBuilder, LayerBuilder
from conftest import Run, need_root
from test_fusefs import gone, mounted, need_fuse, pull

from snapshotter.view.mount import mounted_at

CONN_FLAGS = "conn_flags" in getattr(pyfuse3, "FEATURES", ())


def opcodes(log: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in re.findall(r"opcode: ([A-Z_]+)", log):
        counts[op] = counts.get(op, 0) + 1
    return counts


@pytest.fixture
def linked(tmp_path: Path, cli: Run) -> str:
    need_fuse()
    image = ImageBuilder(
        [
            LayerBuilder()
            .dir("usr")
            .dir("usr/lib")
            .file("usr/lib/libc.so", b"ELF" * 100)
            .symlink("lib", "usr/lib")
            .symlink("libc", "lib/libc.so")
        ]
    )
    return pull(cli, tmp_path, "example.com/linked:1", image)


def requests_for(tmp_path: Path, cli: Run, store_root: Path, image: str, work) -> dict[str, int]:
    mp = tmp_path / "mp"
    mp.mkdir(exist_ok=True)
    with mounted(cli, store_root, image, mp, "--debug") as pid:
        log = store_root / "mounts" / f"daemon-{pid}.log"
        os.listdir(mp)  # the root's entries are known before the counting starts
        before = opcodes(log.read_text())
        work(mp)
        assert cli("umount", str(mp)).rc == 0
        assert gone(pid, 10)
    after = opcodes(log.read_text())
    return {op: after[op] - before.get(op, 0) for op in after if after[op] > before.get(op, 0)}


def test_symlink_targets_are_read_once(tmp_path, cli, store_root, linked):
    def work(mp: Path) -> None:
        for _ in range(5):
            assert (mp / "lib/libc.so").read_bytes() == b"ELF" * 100
            assert (mp / "libc").stat().st_size == 300
            assert os.readlink(mp / "libc") == "lib/libc.so"

    sent = requests_for(tmp_path, cli, store_root, linked, work)
    # two symlinks; a stock pyfuse3 cannot ask the kernel to keep their targets
    assert sent.get("READLINK", 0) == (2 if CONN_FLAGS else 20), sent


def test_names_that_do_not_exist_are_asked_once(tmp_path, cli, store_root, linked):
    def work(mp: Path) -> None:
        for _ in range(5):
            for name in ("usr/lib/libm.so", "usr/lib/libc.so.6", "nothing"):
                assert not (mp / name).exists()
                with pytest.raises(FileNotFoundError):
                    (mp / name).read_bytes()

    sent = requests_for(tmp_path, cli, store_root, linked, work)
    assert sent.get("LOOKUP", 0) == 1 + 3, sent  # usr/lib (usr came with the root), the 3 misses


BLOCKING = "main_blocking" in getattr(pyfuse3, "FEATURES", ())


@pytest.mark.parametrize("loop", ["blocking", "trio"] if BLOCKING else ["trio"])
def test_both_request_loops_serve_and_stop_on_a_signal(tmp_path, cli, store_root, linked, loop):
    """The pyfuse3 that scripts/bootstrap builds serves without trio; with a stock one
    (or SNAPSHOTTER_FUSE_LOOP=trio) trio runs the loop: both answer and unmount."""
    mp = tmp_path / "mp"
    mp.mkdir()
    with pytest.MonkeyPatch.context() as m:
        m.setenv("SNAPSHOTTER_FUSE_LOOP", loop)
        with mounted(cli, store_root, linked, mp) as pid:
            assert (mp / "lib/libc.so").read_bytes() == b"ELF" * 100
            assert sorted(os.listdir(mp / "usr/lib")) == ["libc.so"]
            os.kill(pid, signal.SIGHUP)
            assert gone(pid, 10)
            assert not mounted_at(mp)


def test_the_daemon_does_not_import_trio_when_pyfuse3_serves_without_it():
    code = (
        "import sys; import snapshotter.cli.mount, snapshotter.view.mount, "
        "snapshotter.view.fusefs; print('trio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(not BLOCKING)


def test_the_view_reads_ahead_in_1_mib_requests(tmp_path, cli, store_root):
    """As root, the view's readahead window is raised to libfuse's largest READ (1 MiB),
    so a big file comes in 1 MiB requests, not the default 128 KiB ones."""
    need_root()
    need_fuse()
    data = os.urandom(1 << 20) * 8
    image = ImageBuilder([LayerBuilder().file("small", b"s").file("big", data)])
    name = pull(cli, tmp_path, "example.com/big:1", image)
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(cli, store_root, name, mp, "--debug") as pid:
        device = os.stat(mp).st_dev
        ra = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
        assert int(ra.read_text()) == 1024  # raised by the daemon on its first request
        with open(mp / "big", "rb") as f:
            assert f.read() == data
        log = (store_root / "mounts" / f"daemon-{pid}.log").read_text()
        assert cli("umount", str(mp)).rc == 0
        assert gone(pid, 10)
    reads = set(re.findall(r"unique: (\d+), opcode: READ \(", log))
    sizes = [
        int(size) - 16  # the reply's header
        for unique, size in re.findall(r"unique: (\d+), success, outsize: (\d+)", log)
        if unique in reads
    ]
    assert max(sizes) == 1 << 20, sizes


WORKERS = "main_blocking_workers" in getattr(pyfuse3, "FEATURES", ())


def fuse_holders(pid: int) -> list[int]:
    """``pid`` and its children that hold a /dev/fuse descriptor."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            fds = [os.readlink(f"/proc/{entry}/fd/{fd}") for fd in os.listdir(f"/proc/{entry}/fd")]
        except (OSError, ValueError, IndexError):
            continue
        if (int(entry) == pid or ppid == pid) and "/dev/fuse" in fds:
            out.append(int(entry))
    return sorted(out)


def read_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def test_worker_processes_answer_in_parallel_and_die_with_the_daemon(tmp_path, cli, store_root):
    """With the patched pyfuse3 two workers answer beside the daemon; a stock one answers
    in the daemon alone (tests/test_stock_pyfuse3.py runs this file there).  Either way
    nothing serves the view once the daemon is killed."""
    need_fuse()
    files = {f"f{i:02}": os.urandom(1 << 20) for i in range(48)}
    layer = LayerBuilder()
    for name, data in files.items():
        layer.file(name, data)
    name = pull(cli, tmp_path, "example.com/workers:1", ImageBuilder([layer]))
    mp = tmp_path / "mp"
    mp.mkdir()
    with pytest.MonkeyPatch.context() as m:
        m.setenv("SNAPSHOTTER_FUSE_WORKERS", "2")
        with mounted(cli, store_root, name, mp) as pid:
            assert os.listdir(mp)  # INIT answered: the workers are being forked
            deadline = time.monotonic() + 10
            processes = 3 if WORKERS else 1
            while len(holders := fuse_holders(pid)) < processes and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(holders) == processes and pid in holders, holders
            before = {p: read_bytes(p) for p in holders}
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                got = dict(pool.map(lambda n: (n, (mp / n).read_bytes()), files))
            assert got == files
            served = [p for p in holders if read_bytes(p) - before[p] >= 1 << 20]
            assert len(served) >= min(processes, 2), (holders, served)
            os.kill(pid, signal.SIGKILL)
            assert gone(pid, 10)
            deadline = time.monotonic() + 10
            while (
                any(os.path.exists(f"/proc/{p}") for p in holders) and time.monotonic() < deadline
            ):
                time.sleep(0.02)
            assert not any(os.path.exists(f"/proc/{p}") for p in holders)
            with pytest.raises(OSError) as exc:
                os.statvfs(mp)  # always asks the daemon (a listing may come from cache)
            assert exc.value.errno == errno.ENOTCONN
            subprocess.run(["umount", "-l", str(mp)], check=False)


def test_directories_list_dot_and_dotdot_first_as_every_linux_file_system(
    tmp_path, cli, store_root
):
    """`ls -a` shows "." and ".." (FUSE lists only what the daemon gives), with their
    inodes, and a listing that takes several readdir calls loses or repeats nothing."""
    need_fuse()
    layer = LayerBuilder().dir("big").dir("big/sub").file("big/sub/f", b"f")
    names = [f"n{i:04}" for i in range(3000)]
    for name in names:
        layer.file(f"big/{name}", b"")
    image = pull(cli, tmp_path, "example.com/dots:1", ImageBuilder([layer]))
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(cli, store_root, image, mp):
        for directory, parent in ((mp / "big", mp), (mp / "big/sub", mp / "big")):
            out = subprocess.run(
                ["ls", "-a1if", str(directory)], capture_output=True, text=True, check=True
            ).stdout.split("\n")[:-1]
            listed = [line.split(maxsplit=1) for line in out]
            assert [n for _, n in listed[:2]] == [".", ".."], listed[:3]
            assert int(listed[0][0]) == os.stat(directory).st_ino
            if parent != mp:  # the root's ".." is the mount point's parent, the kernel's
                assert int(listed[1][0]) == os.stat(parent).st_ino
            children = [n for _, n in listed[2:]]
            expected = ["f"] if directory.name == "sub" else sorted([*names, "sub"])
            assert children == expected
