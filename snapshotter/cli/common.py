"""Arguments and lookups the explore commands share: IMAGE, --platform, --layer."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..oci.model import Platform
from ..store.store import Store

if TYPE_CHECKING:  # imported where used: `mount` and `umount` need none of explore
    from ..explore.image import StoredImage


def image_arguments(p: argparse.ArgumentParser) -> None:
    """IMAGE and --platform, as ``mount`` takes them."""
    p.add_argument("image", metavar="IMAGE", help="name, NAME@DIGEST, digest or id prefix")
    platform_argument(p)


def platform_argument(p: argparse._ActionsContainer) -> None:
    """--platform, to pick an image from an index, as pull picks it."""
    p.add_argument(
        "--platform", help="OS/ARCH[/VARIANT] to pick from an index (default: the host's)"
    )


def platforms_argument(p: argparse.ArgumentParser, all_help: str) -> None:
    """--platform, or --all-platforms (every image of an index), as ``pull`` takes them."""
    which = p.add_mutually_exclusive_group()
    platform_argument(which)
    which.add_argument("--all-platforms", action="store_true", help=all_help)


def layer_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--layer",
        type=int,
        metavar="N",
        help=f"{what} as of layer N (layers count from 1, the base; 0 is the empty image), "
        "as 'mount --layer N' shows it",
    )


def stored_image(store: Store, args: argparse.Namespace) -> StoredImage:
    from ..explore.image import open_image

    platform = Platform.parse(args.platform) if getattr(args, "platform", None) else None
    return open_image(store, args.image, platform)
