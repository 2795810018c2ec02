"""Commands over the store's images: images, tag, rmi, prune."""

from __future__ import annotations

import argparse
import datetime
import re
import sys

from ..errors import InUse, InvalidReference, NotFound, StoreCorrupt
from ..explore.inspect import image_labels
from ..oci.digest import Digest
from ..oci.model import JSONObject, load_json
from ..oci.reference import Reference, familiar_repository, reference_pattern, split_name
from ..store.store import ImageRecord, State, Store, check_not_in_use, in_use
from . import EXIT_ERROR, EXIT_OK
from .format import ago, human_size, parse_time, print_json, print_table


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        help="dangling=true|false; reference=PATTERN (glob, as docker's); label=KEY or "
        "label=KEY=VALUE (the image config's labels); before=IMAGE, since=IMAGE (created "
        "strictly before or after IMAGE's config 'created' time). Repeats of one key match "
        "any of their values (OR); different keys must all match (AND)",
    )
    p.set_defaults(handler=cmd_images)

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
    p.set_defaults(handler=cmd_tag)

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
    p.set_defaults(handler=cmd_rmi)

    p = sub.add_parser(
        "prune",
        help="remove unused images, snapshots and blobs",
        description=(
            "Remove dangling images (no name), or with -a every image no live mount uses; then "
            "remove snapshots and blobs nothing references. The lazy mounts' caches (seek "
            "indexes in <store>/indexes, fetched spans in <store>/spans) are left alone "
            "unless --indexes or -a is given: then every cached index and span goes; both "
            "are rebuilt or fetched again on demand, and live lazy mounts keep working (their "
            "indexes are in memory, and a span gone is fetched again)."
        ),
    )
    p.add_argument(
        "-a",
        "--all",
        action="store_true",
        help="remove every image not in use, and the seek index and span caches",
    )
    p.add_argument(
        "--indexes",
        action="store_true",
        help="also remove every cached seek index and span (see 'index build')",
    )
    p.add_argument("--json", action="store_true", help="print what was removed as JSON")
    p.set_defaults(handler=cmd_prune)


def _image_rows(names: list[str]) -> list[tuple[str, str]]:
    if not names:
        return [("<none>", "<none>")]
    return [(familiar_repository(split_name(n)[0]), split_name(n)[1]) for n in names]


def _filter_images(
    store: Store, state: State, filters: list[str]
) -> list[tuple[ImageRecord, list[str]]]:
    """Images that pass ``filters``, newest pull first, each with the names to show: with
    reference filters, only the matching ones.

    Repeats of one key OR, different keys AND.  ``label=K`` / ``label=K=V`` look at the
    image config's labels; ``before=IMG`` / ``since=IMG`` compare the image config's
    ``created`` with IMG's (strictly: IMG itself never matches), as docker compares its
    Created; an image without a creation time matches neither.
    """
    dangling: bool | None = None
    patterns: list[re.Pattern[str]] = []
    labels: list[tuple[str, str | None]] = []
    before: list[datetime.datetime] = []
    since: list[datetime.datetime] = []
    for text in filters:
        key, sep, value = text.partition("=")
        if not sep:
            raise InvalidReference(f"filter {text!r}: expected KEY=VALUE")
        if key == "dangling":
            if value not in ("true", "false", "1", "0"):
                raise InvalidReference(f"filter {text!r}: dangling takes true or false")
            dangling = value in ("true", "1")
        elif key == "reference":
            patterns.append(reference_pattern(value))
        elif key == "label":
            label, has_value, wanted = value.partition("=")
            if not label:
                raise InvalidReference(f"filter {text!r}: label takes KEY or KEY=VALUE")
            labels.append((label, wanted if has_value else None))
        elif key in ("before", "since"):
            (before if key == "before" else since).append(_created_of(store, state, text, value))
        else:
            raise InvalidReference(
                f"filter {text!r}: unknown key {key!r} (before, dangling, label, reference, since)"
            )

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
        if labels:
            have = image_labels(_config(store, record))
            if not any(k in have and (v is None or have[k] == v) for k, v in labels):
                continue
        if before or since:
            created = parse_time(record.created)
            if created is None:
                continue
            if before and not any(created < t for t in before):
                continue
            if since and not any(created > t for t in since):
                continue
        out.append((record, names))
    return out


def _config(store: Store, record: ImageRecord) -> JSONObject:
    try:
        raw = store.read_blob(Digest.parse(record.config))
    except FileNotFoundError as exc:
        raise StoreCorrupt(f"image {record.digest}: config {record.config} is missing") from exc
    return load_json(raw, f"config {record.config}")


def _created_of(store: Store, state: State, text: str, image: str) -> datetime.datetime:
    """The creation time of the image a before=/since= filter names."""
    record, _ = store.resolve_image(state, image)
    created = parse_time(record.created)
    if created is None:
        raise InvalidReference(f"filter {text!r}: image {image!r} has no creation time")
    return created


def cmd_images(store: Store, args: argparse.Namespace) -> int:
    state = store.current_state()
    images = _filter_images(store, state, args.filter)
    mounted = in_use(store) if args.json else {}
    if args.json:
        named = state.reachable()
        print_json(
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
            row += [ident, r.platform, str(len(r.layers)), ago(r.created), human_size(r.size)]
            rows.append(row)
    print_table(rows)
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
        print(f"Freed {human_size(report.freed)}", file=sys.stderr)
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
    from ..lazy.cache import clear_caches

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
        caches = clear_caches(store) if args.all or args.indexes else None
    freed = report.freed + (caches.freed if caches is not None else 0)
    if args.json:
        print_json(
            {
                "images": removed,
                "snapshots": report.snapshots,
                "blobs": report.blobs,
                # null: the caches were left alone (no --indexes, no -a)
                "indexes": caches.indexes if caches is not None else None,
                "spans": caches.spans if caches is not None else None,
                "freed": freed,
            }
        )
    else:
        for digest in removed:
            print(f"Deleted: {digest}")
        cached = (
            f", {len(caches.indexes)} seek indexes, {caches.spans} cached spans"
            if caches is not None
            else ""
        )
        print(
            f"Removed {len(removed)} images, {len(report.snapshots)} snapshots, "
            f"{len(report.blobs)} blobs{cached}; total reclaimed space: {human_size(freed)}"
        )
    return EXIT_OK
