"""``snapshotter browse``: the full-screen browser (textual is imported here only, when
the command runs)."""

from __future__ import annotations

import argparse
import sys

from ..errors import InvalidReference, SnapshotterError
from ..store.store import Store
from . import EXIT_OK
from .common import image_arguments, stored_image


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "browse",
        help="browse an image's layers and files full-screen (dive's view)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Browse an image in the terminal, as dive shows it: its layers (left) and the file
tree of the selected layer (right), coloured by what the layer changed: added green,
modified yellow, removed red.  Answered from the store: nothing is unpacked or mounted.

keys (dive's):
  tab            switch between the layers and the file tree
  ctrl+l         the selected layer's changes (the view before it against after it)
  ctrl+a         (layers) aggregated changes: every change since the first layer
  c              the --compare image's differences again
  ctrl+f         filter the tree by a path regex (enter applies, escape clears)
  space          collapse or expand a directory; ctrl+space collapses all
  shift+arrows   scroll the tree sideways (deep names)
  ctrl+a/r/m/u   (tree) show or hide added/removed/modified/unmodified paths
                 (ctrl+m arrives as enter in most terminals: M does the same)
  ctrl+b         show or hide the permission and owner columns
  ctrl+o         sort by size (largest first) or by name
  q, ctrl+c      quit
beyond dive:
  enter          a file's contents (text with syntax colour, binary as a hex dump,
                 read a screen at a time); on a directory, expand it
  b              the selected path's blame: every layer that changed it
  e              write the selected file (or a directory, as a tar) out

The tree's LAYER column names the layer whose entry each path shows.  NO_COLOR=1
turns colour off; the statuses are then marked + - ~ before the names.""",
    )
    image_arguments(p)
    p.add_argument(
        "--layer",
        type=int,
        metavar="N",
        help="start at layer N (layers count from 1, the base; default: 1)",
    )
    p.add_argument(
        "--compare",
        metavar="OTHER",
        help="colour the tree by how OTHER's merged view differs from IMAGE's "
        "(what 'snapshotter diff IMAGE OTHER' lists)",
    )
    p.add_argument(
        "--sort",
        choices=("name", "size"),
        default="name",
        help="order of the tree's entries at start (ctrl+o switches; default: name)",
    )
    p.set_defaults(handler=cmd_browse)


def cmd_browse(store: Store, args: argparse.Namespace) -> int:
    image = stored_image(store, args)
    if args.layer is not None and not 1 <= args.layer <= len(image.layers):
        raise InvalidReference(
            f"{image.what}: --layer {args.layer} is out of range 1..{len(image.layers)}"
        )
    other = None
    if args.compare is not None:
        from ..explore.image import open_image

        other = open_image(store, args.compare)
    if not sys.stdout.isatty() or not sys.stdin.isatty():
        raise SnapshotterError("browse needs a terminal (for scripts: ls, blame, diff, wasted)")
    from ..browse.app import BrowseApp

    app = BrowseApp(image, layer=args.layer, other=other, sort_by_size=args.sort == "size")
    app.run()
    return EXIT_OK
