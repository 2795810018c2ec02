"""Progress of long work on stderr: bars on a terminal, one summary line otherwise.

Counters are bumped from worker threads (one per layer); rendering belongs to whoever owns
the ``Progress``.  ``rich`` draws the bars and is imported only when stderr is a terminal.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """Per-task byte counters; subclasses decide what the user sees."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.done_bytes = 0

    def task(self, label: str, total: int | None) -> Callable[[int], None]:
        def advance(n: int) -> None:
            with self.lock:
                self.done_bytes += n

        return advance

    def note(self, text: str) -> None:
        pass

    def finish(self, summary: str) -> None:
        pass

    def close(self) -> None:
        pass


class QuietProgress(Progress):
    pass


class LineProgress(Progress):
    """Off a terminal: no animation, one line at the end."""

    def __init__(self, stream: TextIO):
        super().__init__()
        self.stream = stream

    def finish(self, summary: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"{summary} in {elapsed:.1f}s", file=self.stream, flush=True)


class BarProgress(Progress):
    """On a terminal: a bar per task (bytes, rate), drawn by rich."""

    def __init__(self, stream: TextIO):
        super().__init__()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        self.stream = stream
        self.rich = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self.rich.start()

    def task(self, label: str, total: int | None) -> Callable[[int], None]:
        task_id = self.rich.add_task(label, total=total)
        parent = super().task(label, total)

        def advance(n: int) -> None:
            parent(n)
            self.rich.update(task_id, advance=n)

        return advance

    def note(self, text: str) -> None:
        self.rich.console.print(text)

    def finish(self, summary: str) -> None:
        self.rich.stop()
        elapsed = time.monotonic() - self.started
        print(f"{summary} in {elapsed:.1f}s", file=self.stream, flush=True)

    def close(self) -> None:
        self.rich.stop()


def for_stream(stream: TextIO = sys.stderr, *, quiet: bool = False) -> Progress:
    if quiet:
        return QuietProgress()
    if stream.isatty():
        return BarProgress(stream)
    return LineProgress(stream)
