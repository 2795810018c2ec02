"""The ``snapshotter`` command: argparse over the library; ``main(argv) -> int``.

One module per command family, each with a ``register(sub)`` that adds its subcommands
and binds each to its handler (``handler(store, args) -> int``):

- ``pull``: pull.
- ``images``: images, tag, rmi, prune.
- ``inspect``: history, inspect (docker's; ``docker://REF`` without pulling).
- ``mount``: mount, umount.
- ``registry``: tags, search, login, logout (and the registry options pull shares).
- ``index``: index build, index push (seek indexes for lazy mounts).
- ``files``: ls, cat, blame.
- ``diff``: diff (what a layer changed; two images' merged views, config, history).
- ``export``: export (the merged view as one tar).
- ``usage``: du, wasted.
- ``browse``: browse (the full-screen browser; the only command that imports textual).
- ``format``: sizes, ages, tables and ``--json``, shared by all.

Stdout carries data only (tables, JSON, digests); progress and errors go to stderr.
Exit status: 0 success, 1 error (or a failed check: ``wasted --ci``), 2 usage; ``diff``
exits 0 same, 1 different, 2 error (diffoci's).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import __version__
from ..errors import SnapshotterError
from ..store.store import Store, default_root

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

Handler = Callable[[Store, argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"snapshotter: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


# The command families (modules of this package), in --help's order, and the family of
# each command: a command line that names a command imports only its family, so that
# `mount` (whose start-up is timed by scripts/bench_mount.py) does not import `diff`.
FAMILIES = (
    "pull",
    "images",
    "inspect",
    "files",
    "diff",
    "usage",
    "export",
    "browse",
    "registry",
    "index",
    "mount",
)
COMMANDS = {
    "pull": "pull",
    **dict.fromkeys(("images", "tag", "rmi", "prune"), "images"),
    **dict.fromkeys(("history", "inspect"), "inspect"),
    **dict.fromkeys(("ls", "cat", "blame"), "files"),
    "diff": "diff",
    **dict.fromkeys(("du", "wasted"), "usage"),
    "export": "export",
    "browse": "browse",
    **dict.fromkeys(("tags", "search", "login", "logout"), "registry"),
    "index": "index",
    **dict.fromkeys(("mount", "umount"), "mount"),
}


def _command_in(argv: Sequence[str]) -> str | None:
    """The command a command line names: its first word that is neither an option nor
    ``--root``'s value.  (An abbreviated ``--root`` makes it guess wrong: then every
    family is loaded, which only costs time.)"""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--root":
            skip = True
        elif arg == "--" or not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or, given the command line, of the one it names."""
    command = _command_in(argv) if argv is not None else None
    families = (COMMANDS[command],) if command in COMMANDS else FAMILIES

    parser = _Parser(
        prog="snapshotter",
        description=(
            "Container images as plain directories. Layers are unpacked once into a "
            "content-addressed store of snapshots; images are kept by manifest digest and "
            "named like docker's."
        ),
        epilog="Run 'snapshotter COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "--root",
        type=Path,
        help="store directory (default: $SNAPSHOTTER_ROOT, else /var/lib/snapshotter as root, "
        "$XDG_DATA_HOME/snapshotter otherwise)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks on errors (and, for mount, log every FUSE request)",
    )
    parser.add_argument("--version", action="version", version=f"snapshotter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for family in families:
        importlib.import_module(f".{family}", __name__).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    store = Store(args.root or default_root())
    # Names from images are str with surrogate escapes for the bytes that were not UTF-8:
    # write them back out as those bytes (stderr already escapes them).
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="surrogateescape")
    # A command may exit otherwise on errors (diff: 2, as diffoci; 1 means "different").
    error_status: int = getattr(args, "error_status", EXIT_ERROR)
    try:
        handler: Handler = args.handler
        return handler(store, args)
    except SnapshotterError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"snapshotter: error: {exc}", file=sys.stderr)
        return error_status
    except KeyboardInterrupt:
        print("snapshotter: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout's reader went away (| head): not our error to report.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"snapshotter: error: {os_error(exc)}", file=sys.stderr)
        return error_status


def os_error(exc: OSError) -> str:
    """An OSError as one line: ``'/x/out.tar': no such file or directory``."""
    if exc.filename is not None and exc.strerror:
        return f"{str(exc.filename)!r}: {exc.strerror[:1].lower()}{exc.strerror[1:]}"
    return str(exc)


def entry_point() -> None:
    raise SystemExit(main())
