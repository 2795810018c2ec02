"""``snapshotter du``: where an image's bytes are."""

from __future__ import annotations

import argparse
import re

from ..explore.du import DiskUsage, disk_usage
from ..explore.image import display_path
from ..store.store import Store
from . import EXIT_OK
from .common import image_arguments, stored_image
from .format import kind_name, print_json, print_table, size_arguments, size_text, wants_human


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "du",
        help="apparent bytes per directory of an image, and per layer",
        description=(
            "Print the bytes of regular files under each directory of the image's merged "
            "view (what a container sees), a directory after everything below it, as 'du "
            "--apparent-size -b' prints them: SIZE<tab>PATH. A hardlinked file counts once, "
            "at its first name. Symlinks are not followed. With --by-layer, also the bytes "
            "each layer ships under each directory, including those a later layer "
            "overwrote or deleted."
        ),
    )
    image_arguments(p)
    p.add_argument("path", metavar="PATH", nargs="?", default="/", help="start here (default /)")
    p.add_argument(
        "-d",
        "--depth",
        type=_depth,
        metavar="N",
        help="print directories at most N levels below PATH (totals still count everything)",
    )
    p.add_argument(
        "--by-layer",
        action="store_true",
        help="add a column per layer (L1 = the base): the bytes that layer ships under the "
        "directory, hidden ones included; VISIBLE is what the merged view shows",
    )
    p.add_argument("--json", action="store_true", help="one JSON document")
    size_arguments(p)
    p.set_defaults(handler=cmd_du)


def _depth(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {value}")
    return value


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def shown(text: str) -> str:
    """A path from an image as a terminal may show it: control characters (which could
    drive the terminal) and undecodable bytes as ``\\xNN`` escapes."""

    def escape(m: re.Match[str]) -> str:
        ch = m.group()
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: a raw byte
            code -= 0xDC00
        return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"

    return _UNPRINTABLE.sub(escape, text)


# -- du ----------------------------------------------------------------------------------------


def cmd_du(store: Store, args: argparse.Namespace) -> int:
    image = stored_image(store, args)
    usage = disk_usage(image, args.path, args.depth, args.by_layer)
    if args.json:
        print_json(du_json(usage, args.by_layer))
        return EXIT_OK
    human = wants_human(args)
    if not args.by_layer:
        for row in usage.rows:
            print(f"{size_text(row.size, human)}\t{shown(display_path(row.path))}")
        return EXIT_OK
    header = ["VISIBLE", *(f"L{n}" for n in range(1, usage.layers + 1)), "PATH"]
    table = [header]
    for row in usage.rows:
        table.append(
            [
                size_text(row.size, human),
                *(size_text(b, human) for b in row.by_layer),
                shown(display_path(row.path)),
            ]
        )
    print_table(table, sep="  ")
    return EXIT_OK


def du_json(usage: DiskUsage, by_layer: bool) -> dict[str, object]:
    entries: list[dict[str, object]] = []
    for row in usage.rows:
        entry: dict[str, object] = {
            "path": display_path(row.path),
            "depth": row.depth,
            "size": row.size,
        }
        if by_layer:
            entry["by_layer"] = [
                {"layer": n, "size": b} for n, b in enumerate(row.by_layer, start=1)
            ]
        entries.append(entry)
    return {
        "path": display_path(usage.path),
        "type": kind_name(usage.kind),
        "layers": usage.layers,
        "entries": entries,
    }
