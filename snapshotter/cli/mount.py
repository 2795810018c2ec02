"""``snapshotter mount`` and ``umount``: the image as a read-only directory (FUSE)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidReference
from ..oci.model import Platform
from ..store.store import Store
from ..text import human_size
from . import EXIT_OK
from .common import platform_argument
from .registry import registry_arguments, registry_options

if TYPE_CHECKING:
    from ..lazy.layers import LazyImage
    from ..progress import Progress


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "mount",
        help="mount an image read-only at a directory (FUSE)",
        description=(
            "Show the image's root file system at MOUNTPOINT exactly as a container started "
            "from it would see it: layers merged, whiteouts applied, every owner, mode, "
            "device, xattr and mtime as the layers said. The view is read-only, and mounted "
            "nosuid,nodev: images are untrusted. Returns once the view is ready; the daemon "
            "serving it runs in the background until 'snapshotter umount', fusermount3 -u, "
            "or SIGTERM/SIGINT/SIGHUP. With --lazy, IMAGE is a source that is not pulled: "
            "oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME] (read in "
            "place) or docker://REF; each layer is mounted through its seek index (from the "
            "store's cache, published beside the image in the registry, or built in one "
            "pass over the blob) or through the TOC it carries (eStargz, zstd:chunked), so "
            "a file's bytes are read only when it is read, or fetched whole into the store "
            "when it is small; one line per layer on stderr says which."
        ),
    )
    p.add_argument(
        "image",
        metavar="IMAGE",
        help="name, NAME@DIGEST, digest or id prefix; with --lazy, a source: oci:DIR[:TAG], "
        "oci-archive:FILE[:TAG], docker-archive:FILE[:NAME] or docker://REF",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    p.add_argument(
        "--layer",
        type=int,
        metavar="N",
        help="mount the image as it stood after its first N layers (0 = empty)",
    )
    platform_argument(p)
    p.add_argument(
        "--lazy",
        action="store_true",
        help="mount the source IMAGE (a layout, an archive or docker://REF) without pulling it: "
        "files are read from the layer blobs when they are read",
    )
    p.add_argument(
        "--no-published-index",
        dest="use_published",
        action="store_false",
        help="with --lazy docker://REF: do not use seek indexes published beside the image "
        "(trust only indexes this machine built: a layer with none cached is indexed here, "
        "in one verified pass)",
    )
    p.add_argument(
        "--foreground",
        action="store_true",
        help="serve in this process until unmounted (or SIGTERM/SIGINT) instead of in a "
        "background daemon",
    )
    p.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users see the view (the view's modes and owners still apply); "
        "needs root, or user_allow_other in /etc/fuse.conf",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,  # keeps a global --debug given before the command
        help="log every FUSE request: to stderr with --foreground, else to the daemon's "
        "log ROOT/mounts/daemon-PID.log, which is then kept after the unmount",
    )
    registry_arguments(p)
    p.set_defaults(handler=cmd_mount)

    p = sub.add_parser(
        "umount",
        help="unmount a view made by 'mount'",
        description=(
            "Unmount a view made by 'mount' and end its daemon; also clears the mountpoint "
            "of a daemon that was killed. A view still in use (a process has a file open "
            "in it, or its working directory there) is refused, as umount(8) refuses it, "
            "unless --lazy. Any other kind of mount is refused."
        ),
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    p.add_argument(
        "-l",
        "--lazy",
        action="store_true",
        help="detach a busy view at once (umount -l); its daemon keeps serving the files "
        "open in it and ends when the last is closed",
    )
    p.set_defaults(handler=cmd_umount)


def cmd_mount(store: Store, args: argparse.Namespace) -> int:
    from ..view.mount import mount

    if args.lazy:
        return _mount_lazy(store, args)
    state = store.read_state()
    platform = Platform.parse(args.platform) if args.platform else None
    record, _ = store.resolve_image(state, args.image, platform)
    mount(
        store,
        record,
        args.mountpoint,
        label=args.image,
        layers=args.layer,
        foreground=args.foreground,
        allow_other=args.allow_other,
        debug=args.debug,
    )
    return EXIT_OK


def _mount_lazy(store: Store, args: argparse.Namespace) -> int:
    from ..progress import for_stream
    from ..view.mount import check_mountpoint, mount_lazy

    text = args.image
    transport = text.partition(":")[0]
    if transport not in ("oci", "oci-archive", "docker-archive", "docker") or (
        transport == "docker" and "://" not in text
    ):
        raise InvalidReference(
            f"mount --lazy {text!r}: expected oci:DIR[:TAG], oci-archive:FILE[:TAG], "
            "docker-archive:FILE[:NAME] or docker://REF "
            "(an image already in the store mounts without --lazy)"
        )
    check_mountpoint(args.mountpoint)  # before any indexing or fetching
    platform = Platform.parse(args.platform) if args.platform else None
    progress = for_stream(sys.stderr)
    try:
        image = _open_lazy(store, text, platform, args, progress)
    finally:
        progress.close()
    if args.layer is not None:
        # (every layer was readied: an index is kept for the next mount of the image)
        if not 0 <= args.layer <= len(image.layers):
            raise InvalidReference(
                f"mount --lazy {text!r}: --layer {args.layer} is out of range "
                f"0..{len(image.layers)}"
            )
        image = dataclasses.replace(
            image, label=f"{image.label}@layer{args.layer}", layers=image.layers[: args.layer]
        )
    for layer in image.layers:
        digest = layer.digest.partition(":")
        print(
            f"layer {layer.number} {digest[0]}:{digest[2][:12]}… {human_size(layer.size)}: "
            f"{layer.how}",
            file=sys.stderr,
        )
    mount_lazy(
        store,
        image,
        args.mountpoint,
        foreground=args.foreground,
        allow_other=args.allow_other,
        debug=args.debug,
    )
    return EXIT_OK


def _open_lazy(
    store: Store,
    text: str,
    platform: Platform | None,
    args: argparse.Namespace,
    progress: Progress,
) -> LazyImage:
    if text.startswith(("oci:", "oci-archive:", "docker-archive:")):
        from ..lazy.local import open_lazy_layout

        return open_lazy_layout(store, text, progress, platform=platform)
    from ..lazy.remote import open_lazy_remote

    return open_lazy_remote(
        store,
        text,
        registry_options(args),
        progress,
        platform=platform,
        use_published=args.use_published,
    )


def cmd_umount(store: Store, args: argparse.Namespace) -> int:
    from ..view.mount import umount

    if umount(store, args.mountpoint, lazy=args.lazy):
        print(
            f"snapshotter: {str(args.mountpoint)!r} was busy and is detached; its daemon "
            "ends when the last file open in it is closed",
            file=sys.stderr,
        )
    return EXIT_OK
