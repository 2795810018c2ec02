"""``snapshotter mount`` and ``umount``: the image as a read-only directory (FUSE)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..oci.model import Platform
from ..store.store import Store
from . import EXIT_OK
from .common import platform_argument


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
            "or SIGTERM/SIGINT/SIGHUP."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="name, NAME@DIGEST, digest or id prefix")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    p.add_argument(
        "--layer",
        type=int,
        metavar="N",
        help="mount the image as it stood after its first N layers (0 = empty)",
    )
    platform_argument(p)
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


def cmd_umount(store: Store, args: argparse.Namespace) -> int:
    from ..view.mount import umount

    if umount(store, args.mountpoint, lazy=args.lazy):
        print(
            f"snapshotter: {str(args.mountpoint)!r} was busy and is detached; its daemon "
            "ends when the last file open in it is closed",
            file=sys.stderr,
        )
    return EXIT_OK
