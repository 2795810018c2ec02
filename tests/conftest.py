"""Shared fixtures: a fresh store, the CLI, real tools, and the shared real-world fixtures.

In CI (``CI=true``) a missing tool, FUSE or fixture directory is a failure, never a skip.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import pty
import shutil
import stat
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# tests/test_stock_pyfuse3.py runs the FUSE tests again in a child pytest with a stock
# pyfuse3 first on PYTHONPATH and this variable set: that child must really run the stock one.
STOCK_PYFUSE3 = os.environ.get("SNAPSHOTTER_TEST_STOCK_PYFUSE3") == "1"


def pytest_configure(config: pytest.Config) -> None:
    if STOCK_PYFUSE3:
        import pyfuse3

        if "no_open_inode" in getattr(pyfuse3, "FEATURES", ()):
            raise pytest.UsageError(
                f"SNAPSHOTTER_TEST_STOCK_PYFUSE3=1, but {pyfuse3.__file__} is the patched build"
            )


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child ``python -m snapshotter.cli``: this checkout first on
    PYTHONPATH, whatever was there after it (the stock pyfuse3 of a stock run)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def assert_daemon_pyfuse3(pid: int) -> None:
    """The mount daemon ``pid`` runs the pyfuse3 build this test process imported."""
    import pyfuse3

    with open(f"/proc/{pid}/maps") as f:
        loaded = {line.split()[-1] for line in f if "/pyfuse3/" in line}
    assert loaded == {os.path.realpath(pyfuse3.__file__)}, loaded


def unavailable(reason: str) -> None:
    """Fail in CI (CI=true), where every tool and FUSE must be there; skip elsewhere.

    The one place a test may be skipped: every need_* helper and test comes through here.
    """
    (pytest.fail if IN_CI else pytest.skip)(f"required in CI: {reason}" if IN_CI else reason)


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed")
    assert path is not None
    return path


def need_root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root (GNU tar oracle restores owners and devices)")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    candidates = [
        os.environ.get("SNAPSHOTTER_FIXTURES", ""),
        str(REPO.parent / "shared" / "fixtures"),
        "/work/shared/fixtures",
    ]
    for c in candidates:
        if c and (Path(c) / "README.md").is_file():
            return Path(c)
    unavailable("../shared/fixtures is not beside the checkout")
    raise AssertionError


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@dataclass
class CliResult:
    rc: int
    out: str
    err: str


Run = Callable[..., CliResult]


def run_in(root: Path) -> Run:
    """``snapshotter --root ROOT ...`` in-process, output captured (``cli`` for one test's
    store; this for module-scoped stores)."""
    from snapshotter.cli import main

    def run(*args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                rc = main(["--root", str(root), *args])
            except SystemExit as exc:
                rc = int(exc.code or 0)
        return CliResult(rc, out.getvalue(), err.getvalue())

    return run


@pytest.fixture
def cli(store_root: Path) -> Callable[..., CliResult]:
    """Run ``snapshotter --root STORE ARGS...`` in-process and capture its output
    (``root=`` runs it on another store)."""

    def run(*args: str, root: Path | None = None) -> CliResult:
        return run_in(root or store_root)(*args)

    return run


def run_snapshotter(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    """The real command in a subprocess (for kill -9, signals, exit codes)."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "snapshotter.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        **kw,
    )


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under ``root`` with type, mode, size and content hash (no following)."""
    out: dict[str, tuple[object, ...]] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = os.lstat(full)
            digest = ""
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(full.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                digest = os.readlink(full)
            out[str(full.relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_size,
                digest,
            )
    return out


@dataclass
class TerminalRun:
    rc: int
    shown: bytes  # what reached the terminal
    out: bytes  # stdout, when it was not the terminal
    err: bytes  # stderr, when it was not the terminal

    @property
    def text(self) -> str:
        return self.shown.decode("utf-8", "replace").replace("\r\n", "\n")


def run_on_a_terminal(
    *args: str, stdout: bool = True, stderr: bool = False, columns: int = 80
) -> TerminalRun:
    """The real command (a subprocess) with stdout and/or stderr on a pseudo-terminal
    ``columns`` wide.  The terminal is drained while the command runs, so one that wrongly
    writes a lot there ends instead of blocking."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm", "COLUMNS": str(columns), "LINES": "40"}
    shown: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: every writer of the terminal has gone
                return
            if not data:
                return
            shown.append(data)

    proc = None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "snapshotter.cli", *args],
            stdout=slave if stdout else subprocess.PIPE,
            stderr=slave if stderr else subprocess.PIPE,
            cwd=REPO,
            env=env,
        )
        os.close(slave)
        slave = -1
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        out, err = proc.communicate(timeout=120)
        reader.join(30)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return TerminalRun(proc.returncode, b"".join(shown), out or b"", err or b"")


def on_terminal(*args: str, columns: int = 80) -> str:
    """What the command showed with stdout on a terminal ``columns`` wide (it must exit 0)."""
    run = run_on_a_terminal(*args, columns=columns)
    assert run.rc == 0, run.err
    return run.text
