"""``snapshotter diff``: what one layer changed, or how two images differ.

Exit status (diffoci's, for both forms): 0 the images are the same (or ``--layer`` listed
its changes), 1 they differ, 2 an error of any kind, usage errors included.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable

from ..explore.diff import (
    Action,
    ImageDiff,
    LayerDiff,
    image_diff,
    layer_diff,
)
from ..explore.image import display_path, open_image
from ..oci.model import Platform
from ..store.store import Store
from . import EXIT_OK
from .common import image_arguments, stored_image
from .format import print_json, shown

EXIT_SAME, EXIT_DIFFERENT, EXIT_TROUBLE = 0, 1, 2

_DESCRIPTION = """\
Two forms.

diff IMAGE --layer N
  What layer N (1 = the base) added, changed and deleted: the image as of layer N against
  the image as of layer N-1, looked at only where layer N has entries. One line per path,
  as podman's 'image diff': 'A /path', 'C /path', 'D /path', in the image's order.
  Changed means: another type, content (by digest), mode, uid, gid, symlink target,
  xattrs or device numbers (dive compares neither targets nor xattrs); an mtime alone
  only with --mtime. A directory is C only when its own metadata changed, not because
  something in it did; one the layer only implies (a file's path names it, the tar has
  no entry for it) keeps the lower directory's metadata, so it is never C (unless it
  replaced a non-directory). The root is C when a layer above the first changes its own
  metadata. Every added path is listed, but a deleted
  directory is one D for its top path only (as podman): a whiteout of it, or its absence
  from an opaque directory the layer re-made. A directory replaced by a file is C, and
  the files that were in it go unlisted, like those under a D; a file replaced by a
  directory is C and each path in the directory A. A whiteout of a path that was not
  there is nothing. Layer 1 is everything added. Exit status 0, or 2 on any error.

diff IMAGE OTHER
  The two images' merged views (what a container sees, whiteouts applied; diffoci
  compares layer by layer instead), then their configs and histories. Lines: 'A /path'
  only in OTHER, 'C /path (fields)' with the fields that differ, 'D /path' only in IMAGE
  (top path only, as above); then 'Cfg KEY: VALUE -> VALUE' for each key of the config
  that differs (keys of its 'config' object such as Env, Cmd, Labels.foo, then top-level
  ones such as created or architecture; (absent) for a missing or null key; the layering,
  rootfs.diff_ids, is compared through the files), and 'Hist I FIELD: VALUE -> VALUE' for
  history entries (I counts from 1, oldest first). File mtimes are compared unless
  --ignore-timestamps. Layers the two images share from the base are not read at all.
  Exit status 0 when nothing differs, 1 when something does, 2 on any error.

Names are shown with non-printable characters as \\xNN escapes; --json has them exact."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "diff",
        help="what a layer changed (--layer N), or how two images differ",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    image_arguments(p)
    p.add_argument(
        "other",
        nargs="?",
        metavar="OTHER",
        help="the image to compare IMAGE with (also picked with --platform)",
    )
    p.add_argument(
        "--layer",
        type=int,
        metavar="N",
        help="list what layer N (1 = the base) changed, instead of comparing two images",
    )
    p.add_argument(
        "--mtime",
        action="store_true",
        help="with --layer: an mtime change alone is a change too",
    )
    p.add_argument(
        "--ignore-timestamps",
        action="store_true",
        help="with OTHER: compare no file mtimes, nor the config's or history's 'created'",
    )
    p.add_argument(
        "--ignore-history", action="store_true", help="with OTHER: do not compare histories"
    )
    p.add_argument(
        "--semantic",
        action="store_true",
        help="with OTHER: both --ignore-timestamps and --ignore-history (what else diffoci's "
        "--semantic ignores, file order, tar format, path spellings and mode bits beyond "
        "07777, a merged view never has)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document: with --layer {layer, added, changed, deleted, "
        "fields: {path: [field...]}}; with OTHER {files: {added, changed: [{path, fields}], "
        "deleted}, config: [{key, image, other}], history: [{index, field, image, other}], "
        "same, shared_layers, image, other} (null: absent)",
    )
    p.set_defaults(handler=cmd_diff, usage_error=p.error, error_status=EXIT_TROUBLE)


def cmd_diff(store: Store, args: argparse.Namespace) -> int:
    with_other = args.ignore_timestamps or args.ignore_history or args.semantic
    if (args.other is None) == (args.layer is None):
        args.usage_error("give either OTHER or --layer N")
    if args.layer is not None and with_other:
        args.usage_error("--semantic and --ignore-* compare two images; not with --layer")
    if args.other is not None and args.mtime:
        args.usage_error("--mtime is for --layer (IMAGE OTHER compares mtimes unless told not to)")
    if args.layer is not None:
        return _layer(store, args)
    return _images(store, args)


def _layer(store: Store, args: argparse.Namespace) -> int:
    image = stored_image(store, args)
    diff = layer_diff(image, args.layer, mtime=args.mtime)
    if args.json:
        print_json(layer_json(diff))
    else:
        tty = sys.stdout.isatty()
        _write_lines(f"{c.action.value} {shown(display_path(c.path), tty)}" for c in diff.changes)
    return EXIT_OK


def _images(store: Store, args: argparse.Namespace) -> int:
    platform = Platform.parse(args.platform) if args.platform else None
    image = open_image(store, args.image, platform)
    other = open_image(store, args.other, platform)
    diff = image_diff(
        image,
        other,
        ignore_timestamps=args.ignore_timestamps or args.semantic,
        ignore_history=args.ignore_history or args.semantic,
    )
    if args.json:
        doc = images_json(diff)
        doc["image"] = image.record.digest
        doc["other"] = other.record.digest
        print_json(doc)
    else:
        _write_lines(image_lines(diff, sys.stdout.isatty()))
    return EXIT_SAME if diff.same else EXIT_DIFFERENT


# -- output ------------------------------------------------------------------------------


def layer_json(diff: LayerDiff) -> dict[str, object]:
    """podman's three lists, plus ``fields``: what changed of each changed path."""
    return {
        "layer": diff.layer,
        "added": [display_path(p) for p in diff.paths(Action.ADDED)],
        "changed": [display_path(p) for p in diff.paths(Action.CHANGED)],
        "deleted": [display_path(p) for p in diff.paths(Action.DELETED)],
        "fields": {
            display_path(c.path): list(c.fields) for c in diff.changes if c.action is Action.CHANGED
        },
    }


def images_json(diff: ImageDiff) -> dict[str, object]:
    files = diff.files
    return {
        "files": {
            "added": [display_path(c.path) for c in files if c.action is Action.ADDED],
            "changed": [
                {"path": display_path(c.path), "fields": list(c.fields)}
                for c in files
                if c.action is Action.CHANGED
            ],
            "deleted": [display_path(c.path) for c in files if c.action is Action.DELETED],
        },
        "config": [{"key": c.key, "image": c.image, "other": c.other} for c in diff.config],
        "history": [
            {"index": h.index, "field": h.field, "image": h.image, "other": h.other}
            for h in diff.history
        ],
        "same": diff.same,
        "shared_layers": diff.shared_layers,
    }


def image_lines(diff: ImageDiff, tty: bool) -> list[str]:
    """The human report: file rows, then config and history rows; names escaped on a
    terminal (``shown``)."""
    lines: list[str] = []
    for c in diff.files:
        line = f"{c.action.value} {shown(display_path(c.path), tty)}"
        if c.fields:
            line += f" ({', '.join(c.fields)})"
        lines.append(line)
    for row in diff.config:
        lines.append(
            f"Cfg {shown(row.key, tty)}: {_value(row.image, tty)} -> {_value(row.other, tty)}"
        )
    for h in diff.history:
        name = f"Hist {h.index} {h.field}" if h.field else f"Hist {h.index}"
        lines.append(f"{name}: {_value(h.image, tty)} -> {_value(h.other, tty)}")
    return lines


def _value(value: object, tty: bool) -> str:
    if value is None:
        return "(absent)"
    return shown(json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True), tty)


def _write_lines(lines: Iterable[str]) -> None:
    out = sys.stdout
    for line in lines:
        out.write(line)
        out.write("\n")


__all__ = ["EXIT_DIFFERENT", "EXIT_SAME", "EXIT_TROUBLE", "register"]
