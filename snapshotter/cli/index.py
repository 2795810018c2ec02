"""``snapshotter index build|push``: the seek indexes of an image's layers (lazy mounts).

``build`` makes and caches the index of every layer worth one (one streaming pass over
each blob, nothing unpacked) and prints a line per layer; ``push`` publishes the cached
indexes beside the image in its registry, as one OCI 1.1 artifact whose subject is the
image manifest, so that other hosts mount it lazily without a pass of their own.
With ``--all-platforms`` both take every image of an image index: ``build`` indexes each
layer once however many platforms share it, ``push`` publishes one artifact per platform,
its subject that platform's manifest (what ``mount --lazy --platform`` looks up).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..oci.model import Platform
from ..store.store import Store
from ..text import human_size
from . import EXIT_OK
from .common import platforms_argument
from .format import print_json
from .registry import ask_short_name, registry_arguments, registry_options

if TYPE_CHECKING:
    from ..lazy.remote import LayerIndexReport, PushReport


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "index",
        help="build or publish the seek indexes of an image's layers (for 'mount --lazy')",
        description=(
            "A seek index lists a layer's files and where decompression can start every "
            "4 MiB, so a lazy mount reads a file by fetching a few spans of the blob."
        ),
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    b = verbs.add_parser(
        "build",
        help="build and cache the seek index of every layer",
        description=(
            "Build the seek index of each layer of IMAGE that has none in the store's "
            "index cache and is worth one (10 MiB or more; not single-frame zstd): one "
            "verified streaming pass over the blob, nothing unpacked. IMAGE is an image "
            "in the store (its blobs are read again from the source it was pulled from, "
            "by digest), else what 'pull' takes: docker://REF, a name, oci:DIR[:TAG], "
            "oci-archive:FILE[:TAG]. "
            "Prints one line per layer: the index's size and its share of the "
            "uncompressed layer (with --all-platforms, prefixed by the platform)."
        ),
    )
    b.add_argument("source", metavar="IMAGE|SOURCE")
    platforms_argument(
        b,
        "index the layers of every image of an image index (a layer the platforms share "
        "is indexed once); a source that is one image is indexed as usual",
    )
    b.add_argument("--json", action="store_true", help="print one JSON document")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    registry_arguments(b)
    b.set_defaults(handler=cmd_build)

    u = verbs.add_parser(
        "push",
        help="publish the cached seek indexes beside the image in its registry",
        description=(
            "Publish the cached seek indexes of docker://REF's layers as one OCI 1.1 "
            "artifact (artifactType application/vnd.snapshotter.seek-index.v1) whose "
            "subject is the image manifest; where the registry has no referrers API, it "
            "is listed under the referrers tag sha256-<hex of the manifest digest>. Run "
            "'index build' first. Prints the artifact's digest (with --all-platforms, "
            "one line per platform: PLATFORM ARTIFACT, or '-' where none is cached)."
        ),
    )
    u.add_argument("reference", metavar="docker://REF")
    platforms_argument(
        u,
        "publish one artifact per image of the image index, each with that image's "
        "manifest as subject, so that 'mount --lazy --platform' of any of them finds its own",
    )
    u.add_argument("--json", action="store_true", help="print one JSON document")
    registry_arguments(u)
    u.set_defaults(handler=cmd_push)


def _platform(args: argparse.Namespace) -> Platform | None:
    return Platform.parse(args.platform) if args.platform else None


def _line(report: LayerIndexReport, n: int) -> str:
    head = f"layer {report.number}/{n} {report.digest[7:19] or '-':12}"
    if report.status == "not indexed":
        return f"{head}  not indexed: {report.reason}"
    return (
        f"{head}  {report.status:6}  index {human_size(report.index_size)} = "
        f"{report.percent:.2f}% of {human_size(report.tar_size)} uncompressed"
    )


def _layer_json(r: LayerIndexReport) -> dict[str, object]:
    return {
        "layer": r.number,
        "digest": r.digest,
        "diff_id": r.diff_id,
        "status": r.status,
        "reason": r.reason,
        "index_size": r.index_size,
        "tar_size": r.tar_size,
        "percent": round(r.percent, 3),
    }


def _counts(reports: list[LayerIndexReport]) -> str:
    built = sum(1 for r in reports if r.status == "built")
    cached = sum(1 for r in reports if r.status == "cached")
    return (
        f"{built} built, {cached} already cached, "
        f"{len(reports) - built - cached} layers not indexed"
    )


def cmd_build(store: Store, args: argparse.Namespace) -> int:
    from ..lazy.remote import build_indexes, stored_source
    from ..progress import for_stream

    if args.all_platforms:
        return _build_all(store, args)
    options = registry_options(args)
    source = args.source
    if stored_source(store, source, _platform(args)) is None:  # not an image in the store
        source = ask_short_name(source, options)
    progress = for_stream(sys.stderr, quiet=args.quiet)
    try:
        reports = build_indexes(store, source, options, progress, platform=_platform(args))
    finally:
        progress.close()
    if args.json:
        print_json({"source": source, "layers": [_layer_json(r) for r in reports]})
    else:
        for report in reports:
            print(_line(report, len(reports)))
    progress.finish(f"seek indexes of {source}: {_counts(reports)}")
    return EXIT_OK


def _build_all(store: Store, args: argparse.Namespace) -> int:
    from ..lazy.remote import build_all_indexes, stored_index_source
    from ..progress import for_stream

    options = registry_options(args)
    source = args.source
    if stored_index_source(store, source) is None:  # not an index or image in the store
        source = ask_short_name(source, options)
    progress = for_stream(sys.stderr, quiet=args.quiet)
    try:
        result = build_all_indexes(store, source, options, progress)
    finally:
        progress.close()
    if args.json:
        print_json(
            {
                "source": result.source,
                "index": result.index or None,
                "platforms": [
                    {
                        "platform": p.platform,
                        "manifest": p.manifest,
                        "layers": [_layer_json(r) for r in p.layers],
                    }
                    for p in result.platforms
                ],
            }
        )
    else:
        for p in result.platforms:
            for report in p.layers:
                print(f"{p.platform:14} {_line(report, len(p.layers))}")
    every = [r for p in result.platforms for r in p.layers]
    n = len(result.platforms)
    progress.finish(
        f"seek indexes of {result.source} ({n} platform{'s' if n != 1 else ''}): {_counts(every)}"
    )
    return EXIT_OK


def _push_json(report: PushReport) -> dict[str, object]:
    return {
        "subject": report.subject,
        "artifact": report.artifact or None,
        "layers": list(report.layers),
        "missing": list(report.missing),
        "referrers_api": report.referrers_api,
        "tag": report.tag or None,
    }


def _where(report: PushReport) -> str:
    return "the referrers API" if report.referrers_api else f"tag {report.tag}"


def cmd_push(store: Store, args: argparse.Namespace) -> int:
    from ..errors import InvalidReference
    from ..lazy.remote import push_all_indexes, push_indexes

    text = args.reference
    if not text.startswith("docker://"):
        raise InvalidReference(f"index push {text!r}: expected docker://REF")
    if args.all_platforms:
        result = push_all_indexes(store, text, registry_options(args))
        if args.json:
            print_json(
                {
                    "reference": result.reference,
                    "index": result.index or None,
                    "platforms": [
                        {"platform": platform, **_push_json(report)}
                        for platform, report in result.platforms
                    ],
                }
            )
        else:
            for platform, report in result.platforms:
                print(f"{platform} {report.artifact or '-'}")
        for platform, report in result.platforms:
            if report.artifact:
                skipped = f"; {len(report.missing)} layers have no cached index"
                print(
                    f"{platform}: published {len(report.layers)} seek indexes for "
                    f"{report.reference}@{report.subject} (found through {_where(report)})"
                    + (skipped if report.missing else ""),
                    file=sys.stderr,
                )
            else:
                print(
                    f"{platform}: nothing published for {report.reference}@{report.subject}: "
                    "no layer has a cached index",
                    file=sys.stderr,
                )
        return EXIT_OK
    report = push_indexes(store, text, registry_options(args), platform=_platform(args))
    if args.json:
        print_json({"reference": report.reference, **_push_json(report)})
    else:
        print(report.artifact)
    skipped = f"; {len(report.missing)} layers have no cached index" if report.missing else ""
    print(
        f"published {len(report.layers)} seek indexes for {report.reference}@{report.subject} "
        f"(found through {_where(report)}){skipped}",
        file=sys.stderr,
    )
    return EXIT_OK
