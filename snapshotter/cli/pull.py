"""``snapshotter pull``: import an image, or a whole index, into the store."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TYPE_CHECKING, Any

from ..errors import SnapshotterError
from ..oci.model import Platform
from ..oci.reference import Reference
from ..store.store import Store
from . import EXIT_OK
from .format import human_size, print_json
from .registry import ask_short_name, registry_arguments, registry_options

if TYPE_CHECKING:
    from ..progress import Progress
    from ..sources.pull import PullResult
    from ..sources.registry import RegistryOptions


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "pull",
        help="import an image into the store",
        description=(
            "Import an image: every layer is verified (blob digest and size, diff_id) and "
            "unpacked once into a snapshot; the image is then registered atomically. "
            "SOURCE uses skopeo's transports: oci:DIR[:TAG], oci-archive:FILE[:TAG], "
            "docker-archive:FILE[:NAME:TAG|:@N], docker://REF, or a bare REF resolved as "
            "docker does (alpine = docker.io/library/alpine:latest), or, once a "
            "registries.conf exists, by its aliases and unqualified-search-registries. "
            "Registry pulls go through the mirrors registries.conf gives."
        ),
    )
    p.add_argument("source", metavar="SOURCE")
    registry_arguments(p)
    p.add_argument("--name", help="name the image in the store (default: the source's tag)")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--platform",
        help="OS/ARCH[/VARIANT] to pick from an image index (default: the host's)",
    )
    which.add_argument(
        "--all-platforms",
        action="store_true",
        help="keep every image of an image index (manifest list), and the index itself: the "
        "name then points at the index, and 'inspect'/'mount' pick the host's platform from "
        "it (or --platform); a source that is one image is pulled as usual",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--jobs", type=int, help="layers to unpack at once (default: cores)")
    p.set_defaults(handler=cmd_pull)


def cmd_pull(store: Store, args: argparse.Namespace) -> int:
    import trio

    from ..progress import for_stream
    from ..sources.pull import pull

    platform = Platform.parse(args.platform) if args.platform else None
    name = Reference.parse(args.name).name() if args.name else None
    if args.all_platforms:
        return _pull_all_platforms(store, args, name)
    options = registry_options(args)
    source = ask_short_name(args.source, options)
    progress = for_stream(sys.stderr, quiet=args.quiet)
    try:
        kwargs = _pull_kwargs(args, name, progress, options)
        result = trio.run(lambda: pull(store, source, platform=platform, **kwargs))
    finally:
        progress.close()
    merge_views(store, [result.digest])
    if args.json:
        print_json(_pull_json(result))
    else:
        print(result.digest)
    shown = ", ".join(result.names) or "<none>"
    plural = "s" if result.layers != 1 else ""
    progress.finish(
        f"pulled {shown} ({result.platform}, {result.layers} layer{plural}: "
        f"{result.unpacked} unpacked, "
        f"{result.reused} already stored; {human_size(result.size)})"
    )
    return EXIT_OK


def merge_views(store: Store, digests: list[str]) -> None:
    """Build the merged tree of each pulled image now (it is cached per layer chain), so
    that its first mount, ``ls`` or ``export`` opens it as a second one would."""
    from ..view.tree import open_tree

    state = store.read_state()
    for digest in digests:
        record = state.images.get(digest)
        if record is not None:
            # A tree that cannot be built now is reported by whatever opens it later.
            with contextlib.suppress(SnapshotterError, OSError):
                open_tree(store, record)


def _pull_kwargs(
    args: argparse.Namespace, name: str | None, progress: Progress, options: RegistryOptions
) -> dict[str, Any]:
    """What every pull takes from the command line besides its source and platform."""
    return {"name": name, "progress": progress, "jobs": args.jobs, "registry": options}


def _pull_json(result: PullResult) -> dict[str, object]:
    return {
        "digest": result.digest,
        "id": result.config,
        "names": result.names,
        "moved": result.moved,
        "platform": result.platform,
        "layers": result.layers,
        "unpacked": result.unpacked,
        "reused": result.reused,
        "size": result.size,
        "diff_ids": result.diff_ids,
    }


def _pull_all_platforms(store: Store, args: argparse.Namespace, name: str | None) -> int:
    import trio

    from ..progress import for_stream
    from ..sources.pull import pull_all

    options = registry_options(args)
    source = ask_short_name(args.source, options)
    progress = for_stream(sys.stderr, quiet=args.quiet)
    try:
        kwargs = _pull_kwargs(args, name, progress, options)
        result = trio.run(lambda: pull_all(store, source, **kwargs))
    finally:
        progress.close()
    merge_views(store, [image.digest for image in result.images])
    if args.json:
        # One shape whatever the source: the images list has one entry for a plain image.
        print_json(
            {
                "digest": result.digest,
                "media_type": result.media_type,
                "index": result.is_index,
                "names": result.names,
                "moved": result.moved,
                "unpacked": result.unpacked,
                "reused": result.reused,
                "skipped": result.skipped,
                "images": [_pull_json(image) for image in result.images],
            }
        )
    else:
        print(result.digest)
    shown = ", ".join(result.names) or "<none>"
    platforms = ", ".join(image.platform for image in result.images)
    what = f"index of {len(result.images)} images" if result.is_index else "1 image"
    skipped = f"; skipped {len(result.skipped)} non-images" if result.skipped else ""
    progress.finish(
        f"pulled {shown} ({what}: {platforms}; {result.unpacked} layers unpacked, "
        f"{result.reused} already stored{skipped})"
    )
    return EXIT_OK
