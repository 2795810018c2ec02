"""The ``snapshotter`` command: argparse over the library; ``main(argv) -> int``.

Stdout carries data only (tables, JSON, digests); progress and errors go to stderr.
Exit status: 0 success, 1 error, 2 usage, 3 a check failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import InUse, InvalidReference, NotFound, SnapshotterError
from ..oci.model import Platform
from ..oci.reference import Reference, familiar_repository, split_name
from ..store.store import ImageRecord, State, Store, check_not_in_use, default_root, in_use

if TYPE_CHECKING:
    from ..progress import Progress
    from ..sources.pull import PullResult
    from ..sources.registry import RegistryOptions as RegistryOptionsT

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CHECK = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"snapshotter: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
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

    p = sub.add_parser(
        "pull",
        help="import an image into the store",
        description=(
            "Import an image: every layer is verified (blob digest and size, diff_id) and "
            "unpacked once into a snapshot; the image is then registered atomically. "
            "SOURCE uses skopeo's transports: oci:DIR[:TAG], oci-archive:FILE[:TAG], "
            "docker-archive:FILE[:NAME:TAG|:@N], docker://REF, or a bare REF resolved as "
            "docker does (alpine = docker.io/library/alpine:latest)."
        ),
    )
    p.add_argument("source", metavar="SOURCE")
    _registry_arguments(p)
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

    p = sub.add_parser(
        "images",
        help="list images in the store",
        description=(
            "List images: one row per name; images without a name show as <none>. A name "
            "that points at an image index (pull --all-platforms) gives a row for each "
            "platform's image."
        ),
    )
    p.add_argument("--json", action="store_true", help="one JSON document, an object per image")
    p.add_argument("--digests", action="store_true", help="show manifest digests")
    p.add_argument("-q", "--quiet", action="store_true", help="only image ids")
    p.add_argument("--no-trunc", action="store_true", help="do not shorten ids")
    p.add_argument(
        "-f",
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dangling=true|false, reference=PATTERN (glob, as docker's)",
    )

    p = sub.add_parser(
        "tags",
        help="list the tags of a repository in a registry",
        description=(
            "List the tags of a repository in a registry (all pages of its tags/list), "
            "with credentials from the auth files or --creds."
        ),
    )
    p.add_argument("reference", metavar="REF", help="e.g. registry.example:5000/app")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    _registry_arguments(p)

    p = sub.add_parser(
        "search",
        help="list a registry's repositories (its catalog)",
        description=(
            "List the repositories in a registry's catalog whose names contain TERM, "
            "as names 'pull' takes."
        ),
    )
    p.add_argument("registry", metavar="REGISTRY")
    p.add_argument("term", metavar="TERM", nargs="?", default="", help="substring to match")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    _registry_arguments(p)

    p = sub.add_parser(
        "login",
        help="check and store credentials for a registry",
        description=(
            "Verify USER/PASSWORD against REGISTRY and store them (mode 0600) in the auth file "
            "podman uses: $REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json."
        ),
    )
    p.add_argument("registry", metavar="REGISTRY")
    p.add_argument("-u", "--username", required=True)
    p.add_argument("-p", "--password", help="the password (prefer --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    _registry_arguments(p, creds=False)

    p = sub.add_parser(
        "logout",
        help="remove stored credentials for a registry",
        description="Remove the credentials 'login' stored for REGISTRY from the auth file.",
    )
    p.add_argument("registry", metavar="REGISTRY")
    _registry_arguments(p, creds=False)

    p = sub.add_parser(
        "tag",
        help="give an image another name",
        description=(
            "Give an image another name: NEW_NAME points at the image SOURCE_NAME "
            "resolves to, moving away from any image it named before."
        ),
    )
    p.add_argument("source_name", metavar="SOURCE_NAME", help="name, digest or id prefix")
    p.add_argument("new_name", metavar="NEW_NAME")

    p = sub.add_parser(
        "rmi",
        help="remove image names, and images with their last name",
        description=(
            "Remove names; an image goes with its last name, and then its snapshots and blobs "
            "if nothing else uses them. An image mounted by a live mount is refused unless "
            "--force; the mount keeps working either way."
        ),
    )
    p.add_argument("images", nargs="+", metavar="NAME|DIGEST")
    p.add_argument(
        "-f", "--force", action="store_true", help="remove even if mounted or multi-named"
    )

    p = sub.add_parser(
        "prune",
        help="remove unused images, snapshots and blobs",
        description=(
            "Remove dangling images (no name), or with -a every image no live mount uses; then "
            "remove snapshots and blobs nothing references."
        ),
    )
    p.add_argument("-a", "--all", action="store_true", help="remove every image not in use")
    p.add_argument("--json", action="store_true", help="print what was removed as JSON")

    p = sub.add_parser(
        "inspect",
        help="show an image's record as JSON",
        description=(
            "Print an image's record as JSON: names, manifest digest, config, platform, "
            "and each layer's digest, diff_id, media type and size. A name of an image "
            "index gives the image for the host's platform, or --platform's, with the "
            "index's digest under 'index'."
        ),
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--platform", help="OS/ARCH[/VARIANT] to pick from an index")

    p = sub.add_parser(
        "mount",
        help="mount an image read-only at a directory (FUSE)",
        description=(
            "Show the image's root file system at MOUNTPOINT exactly as a container started "
            "from it would see it: layers merged, whiteouts applied, every owner, mode, "
            "device, xattr and mtime as the layers said. The view is read-only, and mounted "
            "nosuid,nodev: images are untrusted. Returns once the view is ready; the daemon "
            "serving it runs in the background until 'snapshotter umount', fusermount3 -u, "
            "or SIGTERM/SIGINT."
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
    p.add_argument(
        "--platform", help="OS/ARCH[/VARIANT] to pick from an index (default: the host's)"
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

    p = sub.add_parser(
        "umount",
        help="unmount a view made by 'mount'",
        description=(
            "Unmount a view made by 'mount' and end its daemon; also clears the mountpoint "
            "of a daemon that was killed."
        ),
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    return parser


def _registry_arguments(p: argparse.ArgumentParser, *, creds: bool = True) -> None:
    g = p.add_argument_group("registry options (docker:// sources)")
    if creds:
        g.add_argument("--creds", metavar="USER:PASS", help="credentials for the registry")
    g.add_argument(
        "--authfile",
        type=Path,
        help="auth file (podman auth.json or docker config.json, whose credHelpers and "
        "credsStore are asked)",
    )
    g.add_argument(
        "--tls-verify",
        default="true",
        choices=["true", "false"],
        help="verify TLS; false also allows plain HTTP (loopback registries always may)",
    )
    g.add_argument("--insecure", action="store_true", help="same as --tls-verify=false")
    g.add_argument("--cert-dir", type=Path, help="directory of CA certificates (*.crt)")


def _registry_options(args: argparse.Namespace) -> RegistryOptionsT:
    from ..sources.registry import RegistryOptions

    creds = None
    text = getattr(args, "creds", None)
    if text:
        user, sep, password = text.partition(":")
        if not sep or not user:
            raise InvalidReference("--creds: expected USER:PASSWORD")
        creds = (user, password)
    return RegistryOptions(
        insecure=args.insecure or args.tls_verify == "false",
        cert_dir=args.cert_dir,
        creds=creds,
        auth_file=args.authfile,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    store = Store(args.root or default_root())
    try:
        handler = _HANDLERS[args.command]
        return handler(store, args)
    except SnapshotterError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"snapshotter: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
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
        print(f"snapshotter: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def entry_point() -> None:
    raise SystemExit(main())


# -- commands ------------------------------------------------------------------------------


def cmd_pull(store: Store, args: argparse.Namespace) -> int:
    import trio

    from ..progress import for_stream
    from ..sources.pull import pull

    platform = Platform.parse(args.platform) if args.platform else None
    name = Reference.parse(args.name).name() if args.name else None
    if args.all_platforms:
        return _pull_all_platforms(store, args, name)
    progress = for_stream(sys.stderr, quiet=args.quiet)
    try:
        kwargs = _pull_kwargs(args, name, progress)
        result = trio.run(lambda: pull(store, args.source, platform=platform, **kwargs))
    finally:
        progress.close()
    if args.json:
        _print_json(_pull_json(result))
    else:
        print(result.digest)
    shown = ", ".join(result.names) or "<none>"
    plural = "s" if result.layers != 1 else ""
    progress.finish(
        f"pulled {shown} ({result.platform}, {result.layers} layer{plural}: "
        f"{result.unpacked} unpacked, "
        f"{result.reused} already stored; {_human_size(result.size)})"
    )
    return EXIT_OK


def _pull_kwargs(args: argparse.Namespace, name: str | None, progress: Progress) -> dict[str, Any]:
    """What every pull takes from the command line besides its source and platform."""
    return {
        "name": name,
        "progress": progress,
        "jobs": args.jobs,
        "registry": _registry_options(args),
    }


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

    progress = for_stream(sys.stderr, quiet=args.quiet)
    try:
        kwargs = _pull_kwargs(args, name, progress)
        result = trio.run(lambda: pull_all(store, args.source, **kwargs))
    finally:
        progress.close()
    if args.json:
        # One shape whatever the source: the images list has one entry for a plain image.
        _print_json(
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


def _image_rows(names: list[str]) -> list[tuple[str, str]]:
    if not names:
        return [("<none>", "<none>")]
    return [(familiar_repository(split_name(n)[0]), split_name(n)[1]) for n in names]


def _glob_to_re(pattern: str) -> re.Pattern[str]:
    """docker's reference filter uses path.Match: '*' does not cross '/'."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _filter_images(state: State, filters: list[str]) -> list[tuple[ImageRecord, list[str]]]:
    """Images that pass ``filters`` (docker's: keys AND, repeated reference= OR), newest
    first, each with the names to show: with reference filters, only the matching ones."""
    dangling: bool | None = None
    patterns: list[re.Pattern[str]] = []
    for text in filters:
        key, sep, value = text.partition("=")
        if not sep:
            raise InvalidReference(f"filter {text!r}: expected KEY=VALUE")
        if key == "dangling":
            if value not in ("true", "false", "1", "0"):
                raise InvalidReference(f"filter {text!r}: dangling takes true or false")
            dangling = value in ("true", "1")
        elif key == "reference":
            patterns.append(_glob_to_re(value))
        else:
            raise InvalidReference(f"filter {text!r}: unknown key {key!r} (dangling, reference)")

    def matches(name: str) -> bool:
        repo, tag = split_name(name)
        short = familiar_repository(repo)
        forms = (short, f"{short}:{tag}", repo, f"{repo}:{tag}")
        return any(rx.match(s) for rx in patterns for s in forms)

    named = state.reachable()
    out = []
    for record in sorted(state.images.values(), key=lambda r: r.pulled, reverse=True):
        names = state.all_names_of(record.digest)
        if dangling is not None and (record.digest not in named) != dangling:
            continue
        if patterns:
            names = [n for n in names if matches(n)]
            if not names:
                continue
        out.append((record, names))
    return out


def cmd_images(store: Store, args: argparse.Namespace) -> int:
    state = store.current_state()
    images = _filter_images(state, args.filter)
    mounted = in_use(store) if args.json else {}
    if args.json:
        named = state.reachable()
        _print_json(
            [
                {
                    "names": names,
                    "indexes": state.indexes_of(r.digest),
                    "digest": r.digest,
                    "id": r.config,
                    "platform": r.platform,
                    "layers": len(r.layers),
                    "size": r.size,
                    "created": r.created,
                    "pulled": r.pulled,
                    "dangling": r.digest not in named,
                    "mounts": mounted.get(r.digest, []),
                }
                for r, names in images
            ]
        )
        return EXIT_OK
    if args.quiet:
        seen = set()
        for r, _ in images:
            ident = r.config if args.no_trunc else r.config.removeprefix("sha256:")[:12]
            if ident not in seen:
                seen.add(ident)
                print(ident)
        return EXIT_OK
    header = ["REPOSITORY", "TAG"] + (["DIGEST"] if args.digests else [])
    header += ["IMAGE ID", "PLATFORM", "LAYERS", "CREATED", "SIZE"]
    rows = [header]
    for r, names in images:
        ident = r.config if args.no_trunc else r.config.removeprefix("sha256:")[:12]
        for repo, tag in _image_rows(names):
            row = [repo, tag] + ([r.digest] if args.digests else [])
            row += [ident, r.platform, str(len(r.layers)), _ago(r.created), _human_size(r.size)]
            rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_tag(store: Store, args: argparse.Namespace) -> int:
    new_name = Reference.parse(args.new_name).name()
    with store.locked() as state:
        digest = store.resolve(state, args.source_name)
        state.names[new_name] = digest
        store.save(state)
    return EXIT_OK


def cmd_rmi(store: Store, args: argparse.Namespace) -> int:
    failed = False
    with store.locked() as state:
        for text in args.images:
            try:
                _rmi_one(store, state, text, args.force)
            except (NotFound, InUse, InvalidReference) as exc:
                print(f"snapshotter: error: {exc}", file=sys.stderr)
                failed = True
        report = store.collect_garbage(state)
    if report.freed:
        print(f"Freed {_human_size(report.freed)}", file=sys.stderr)
    return EXIT_ERROR if failed else EXIT_OK


def _rmi_one(store: Store, state: State, text: str, force: bool) -> None:
    """Drop a name, or an image or index by digest; with it goes whatever no other name
    reaches any more (an index's images with the index's last name), as docker does."""
    name = next((n for n in store.names_for(text) if n in state.names), None)
    if name is not None and "@" not in text:
        reachable = state.reachable()
        gone = reachable - state.reachable(without_names={name})
        if not force:
            for digest in gone & state.images.keys():
                check_not_in_use(store, digest, text)
        store.untag(state, name)
        print(f"Untagged: {name}")
        _remove(store, state, gone)
        return
    digest = store.resolve(state, text)
    names = state.names_of(digest)
    if len(names) > 1 and not force:
        raise InUse(
            f"image {text!r} has {len(names)} names ({', '.join(names)}); "
            "remove them by name, or use --force"
        )
    holders = state.indexes_of(digest)
    if holders and not force:
        listed = "; ".join(f"{i} ({', '.join(state.names_of(i)) or '<none>'})" for i in holders)
        raise InUse(
            f"image {text!r} is one platform of the image index {listed}; remove the index, "
            "or use --force"
        )
    gone = {digest}
    if digest in state.indexes:
        others = state.reachable(without_names=set(names), without_indexes={digest})
        gone |= {e.digest for e in state.indexes[digest].manifests} - others
    if not force:
        for image in gone & state.images.keys():
            check_not_in_use(store, image, text)
    for n in names:
        print(f"Untagged: {n}")
    _remove(store, state, gone)


def _remove(store: Store, state: State, digests: set[str]) -> None:
    """Remove images and indexes, indexes first (as docker lists an index's deletion)."""
    for digest in sorted(digests, key=lambda d: (d not in state.indexes, d)):
        if digest in state.indexes:
            store.remove_index(state, digest)
        elif digest in state.images:
            store.remove_image(state, digest)
        else:
            continue
        print(f"Deleted: {digest}")


def cmd_prune(store: Store, args: argparse.Namespace) -> int:
    with store.locked() as state:
        busy = in_use(store)
        removed = []
        named = state.reachable()
        indexes_before = set(state.indexes)
        for digest in list(state.images):
            if digest in busy:
                continue
            if args.all or digest not in named:
                store.remove_image(state, digest)
                removed.append(digest)
        # Indexes: those no name points at; with -a, every one none of whose images is busy
        # (remove_image already dropped indexes left empty).
        for digest, index in list(state.indexes.items()):
            if not state.names_of(digest) or (
                args.all and not any(e.digest in busy for e in index.manifests)
            ):
                store.remove_index(state, digest)
        removed += sorted(indexes_before - state.indexes.keys())
        report = store.collect_garbage(state)
    if args.json:
        _print_json(
            {
                "images": removed,
                "snapshots": report.snapshots,
                "blobs": report.blobs,
                "freed": report.freed,
            }
        )
    else:
        for digest in removed:
            print(f"Deleted: {digest}")
        print(
            f"Removed {len(removed)} images, {len(report.snapshots)} snapshots, "
            f"{len(report.blobs)} blobs; total reclaimed space: {_human_size(report.freed)}"
        )
    return EXIT_OK


def cmd_inspect(store: Store, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    state = store.read_state()
    platform = Platform.parse(args.platform) if args.platform else None
    record, index = store.resolve_image(state, args.image, platform)
    doc = asdict(record)
    doc["names"] = state.all_names_of(record.digest)
    doc["size"] = record.size
    if index is not None:
        doc["index"] = {
            "digest": index.digest,
            "media_type": index.media_type,
            "names": state.names_of(index.digest),
            "platforms": [e.platform for e in index.manifests],
        }
    _print_json(doc)
    return EXIT_OK


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

    umount(store, args.mountpoint)
    return EXIT_OK


def cmd_tags(store: Store, args: argparse.Namespace) -> int:
    from ..sources.registry import RegistryClient

    ref = Reference.parse(args.reference)
    with RegistryClient(_registry_options(args)) as client:
        tags = client.tags(ref)
    if args.json:
        _print_json(tags)
    else:
        for tag in tags:
            print(tag)
    return EXIT_OK


def cmd_search(store: Store, args: argparse.Namespace) -> int:
    from ..sources.registry import RegistryClient, normalize_registry

    with RegistryClient(_registry_options(args)) as client:
        names = client.catalog(args.registry, args.term)
    host = normalize_registry(args.registry)
    if args.json:
        _print_json(names)
    else:
        for name in names:
            print(f"{host}/{name}")
    return EXIT_OK


def cmd_login(store: Store, args: argparse.Namespace) -> int:
    from ..sources.registry import login

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif args.password is not None:
        password = args.password
    else:
        import getpass

        password = getpass.getpass(f"password for {args.username}@{args.registry}: ")
    path = login(args.registry, args.username, password, _registry_options(args))
    print(f"Login succeeded; credentials stored in {path}", file=sys.stderr)
    return EXIT_OK


def cmd_logout(store: Store, args: argparse.Namespace) -> int:
    from ..sources.registry import logout

    path = logout(args.registry, _registry_options(args))
    print(f"Removed login credentials for {args.registry} from {path}", file=sys.stderr)
    return EXIT_OK


_HANDLERS = {
    "tags": cmd_tags,
    "search": cmd_search,
    "login": cmd_login,
    "logout": cmd_logout,
    "mount": cmd_mount,
    "umount": cmd_umount,
    "pull": cmd_pull,
    "images": cmd_images,
    "tag": cmd_tag,
    "rmi": cmd_rmi,
    "prune": cmd_prune,
    "inspect": cmd_inspect,
}


# -- formatting ----------------------------------------------------------------------------


def _print_json(doc: object) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _human_size(n: int) -> str:
    """docker's SI sizes: 1kB = 1000 bytes."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.3g}{unit}"
        size /= 1000
    return f"{n}B"


def _ago(created: str) -> str:
    if not created:
        return "N/A"
    try:
        when = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return created
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    seconds = (datetime.datetime.now(datetime.UTC) - when).total_seconds()
    for unit, span in (
        ("years", 31536000),
        ("months", 2592000),
        ("weeks", 604800),
        ("days", 86400),
        ("hours", 3600),
        ("minutes", 60),
    ):
        if seconds >= 2 * span:
            return f"{int(seconds // span)} {unit} ago"
    return "Less than a minute ago" if seconds >= 0 else created


if __name__ == "__main__":
    entry_point()
