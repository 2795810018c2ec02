"""``snapshotter browse`` as a command: its options and errors, textual imported by it
alone, and one run in a real terminal (tmux: send-keys, capture-pane)."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from browse_images import build
from conftest import REPO, child_env, need_tool, run_in, run_snapshotter


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("browse-cli")
    build(tmp / "store", tmp)
    return tmp / "store"


def test_help_names_the_keys(root: Path) -> None:
    result = run_in(root)("browse", "--help")
    assert result.rc == 0
    for key in (
        "ctrl+a",
        "ctrl+l",
        "ctrl+f",
        "ctrl+space",
        "ctrl+o",
        "ctrl+b",
        "enter",
        "--compare",
    ):
        assert key in result.out


def test_errors_are_one_line(root: Path) -> None:
    # Without a terminal: refused (a subprocess, so that an app started by mistake
    # cannot hang the test run).
    done = run_snapshotter(
        "--root", str(root), "browse", "browse:1", stdin=subprocess.DEVNULL, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr == (
        "snapshotter: error: browse needs a terminal (for scripts: ls, blame, diff, wasted)\n"
    )
    cli = run_in(root)
    for args, message in (
        (("browse", "--layer", "4", "browse:1"), "--layer 4 is out of range 1..3"),
        (("browse", "--layer", "0", "browse:1"), "--layer 0 is out of range 1..3"),
        (("browse", "nosuch:1"), "nosuch"),
        (("browse", "--compare", "nosuch:2", "browse:1"), "nosuch"),
    ):
        result = cli(*args)
        assert result.rc == 1, args
        assert result.err.count("\n") == 1 and message in result.err, result.err


def test_only_browse_imports_textual(root: Path) -> None:
    code = (
        "import sys\n"
        "from snapshotter.cli import build_parser, main\n"
        "build_parser()\n"  # every command family
        f"assert main(['--root', {str(root)!r}, 'ls', '-R', 'browse:1']) == 0\n"
        f"assert main(['--root', {str(root)!r}, 'diff', '--layer', '2', 'browse:1']) == 0\n"
        "print('textual' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "False"


# -- a real terminal -------------------------------------------------------------------------


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``tmux ARGS`` on a server of the test's own."""
    need_tool("tmux")
    socket = str(tmp_path / "tmux.sock")

    def run(*args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", socket, *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    yield run
    subprocess.run(["tmux", "-S", socket, "kill-server"], capture_output=True)


def wait_for(tmux: Callable[..., str], found: Callable[[str], bool], what: str) -> str:
    """The pane's text once ``found`` says it shows what is awaited (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        screen = tmux("capture-pane", "-p", "-t", "browse")
        if found(screen):
            return screen
        if time.monotonic() > deadline:
            raise AssertionError(f"the terminal never showed {what}:\n{screen}")
        time.sleep(0.05)


def test_browse_in_a_real_terminal(root: Path, tmux: Callable[..., str]) -> None:
    command = shlex.join(
        [sys.executable, "-m", "snapshotter.cli", "--root", str(root), "browse", "browse:1"]
    )
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in child_env().items() if k == "PYTHONPATH")
    tmux(
        "new-session",
        "-d",
        "-s",
        "browse",
        "-x",
        "80",
        "-y",
        "24",
        "-e",
        "TERM=xterm-256color",
        f"cd {shlex.quote(str(REPO))}; printf 'before\\n'; env {env} {command}; "
        "echo EXIT=$?; sleep 60",
    )
    shown = ("Layers", "Layer Details", "Image Details", "Current Layer Contents", "▸ etc")
    shown += ("ADD file:abc in", "DiffID:", "Image efficiency score")
    screen = wait_for(tmux, lambda s: all(x in s for x in shown), "every pane filled in")
    lines = screen.splitlines()
    assert len(lines) == 24 and max(len(line) for line in lines) <= 80
    # tab to the tree, open etc, then step to layer 2 from the layers pane.
    tmux("send-keys", "-t", "browse", "Tab")
    tmux("send-keys", "-t", "browse", "Down", "Space")
    screen = wait_for(tmux, lambda s: "▾ etc" in s and "hosts" in s, "etc opened")
    tmux("send-keys", "-t", "browse", "Tab", "Down")
    screen = wait_for(tmux, lambda s: "layer 2" in s and "link → conf" in s, "layer 2")
    tmux("send-keys", "-t", "browse", "q")
    screen = wait_for(tmux, lambda s: "EXIT=" in s, "the app's exit")
    assert "EXIT=0" in screen
    # The terminal is given back as it was: the shell's lines, none of the app's frame.
    assert "before" in screen and "Layers" not in screen and "╭" not in screen
