"""``snapshotter export``: the merged view of an image as one tar, on stdout or in a file."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from ..errors import SnapshotterError
from ..explore import files
from ..explore.export import ExportSummary, atomic_output, write_tar
from ..explore.image import display_path
from ..progress import for_stream
from ..store.store import Store
from ..view.tree import ImageView
from . import EXIT_OK
from .common import image_arguments, layer_argument, stored_image
from .format import human_size

# Progress bars are redrawn at most once per this many bytes of content (a bar update
# per file would cost more than the file on an image of 100k small files).
_PROGRESS_STEP = 4 << 20


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export",
        help="write the image's merged file system as one tar",
        description=(
            "Write the file system a container started from IMAGE would see (every layer "
            "applied, no whiteouts) as one PAX tar: owners, modes, xattrs, devices, "
            "hardlinks and nanosecond mtimes kept. Member names are relative: './' (the "
            "root) first, then e.g. 'etc/', 'etc/passwd'. With --path, only that entry "
            "and what is below it, named from its own name: '--path /usr/lib' writes "
            "'lib/', 'lib/x', ... To stdout when it is not a terminal, or to FILE with -o."
        ),
    )
    image_arguments(p)
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the tar to FILE, which appears only once complete (an existing FILE "
        "is replaced then, and left untouched by a failure); '-' is stdout",
    )
    layer_argument(p, "the file system")
    p.add_argument(
        "--path",
        metavar="PATH",
        help="export only PATH in the image (a directory with everything below it); "
        "symlinks among its parents are followed, PATH itself only when it ends in '/'",
    )
    p.set_defaults(handler=cmd_export)


def cmd_export(store: Store, args: argparse.Namespace) -> int:
    to_stdout = args.output in (None, "-")
    if to_stdout and sys.stdout.isatty():
        raise SnapshotterError(
            "export: refusing to write a tar to a terminal; use -o FILE or redirect stdout"
        )
    image = stored_image(store, args)
    view = image.view(args.layer)
    label = args.image if args.layer is None else f"{args.image} (layer {args.layer})"
    path = ""
    if args.path is not None:
        # As ls finds it: symlinks among the parents followed in the merged view.
        path = files.locate(image, args.path, args.layer, follow=False).path
        label += f" {display_path(path)}"
    with _terminated_as_interrupt():
        if to_stdout:
            sys.stdout.flush()
            _export(view, sys.stdout.fileno(), label, path)
        else:
            with atomic_output(Path(args.output)) as fd:
                _export(view, fd, label, path)
    return EXIT_OK


def _export(view: ImageView, fd: int, label: str, path: str) -> ExportSummary:
    progress = for_stream(sys.stderr, quiet=not sys.stderr.isatty())
    # A subtree's content size is known only once it is written.
    total = None if path else view.tree.content_size()
    advance = progress.task(f"export {label}", total)
    pending = 0

    def step(n: int) -> None:
        nonlocal pending
        pending += n
        if pending >= _PROGRESS_STEP:
            advance(pending)
            pending = 0

    try:
        summary = write_tar(view, fd, step, path=path)
    except BaseException:
        progress.close()
        raise
    advance(pending)
    progress.finish(
        f"exported {summary.members} entries, {human_size(summary.content_bytes)} of content"
    )
    return summary


@contextlib.contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the export as Ctrl-C does, so its cleanup runs (an output
    file being written is removed)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous: list[tuple[signal.Signals, Callable[[int, FrameType | None], object] | int | None]]
    previous = []
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous.append((signum, signal.signal(signum, interrupt)))
    except ValueError:  # not the main thread: leave the signals alone
        pass
    try:
        yield
    finally:
        for number, handler in previous:
            signal.signal(number, handler)
