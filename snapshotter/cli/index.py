"""``snapshotter index build|push``: the seek indexes of an image's layers (lazy mounts).

``build`` makes and caches the index of every layer worth one (one streaming pass over
each blob, nothing unpacked) and prints a line per layer; ``push`` publishes the cached
indexes beside the image in its registry, as one OCI 1.1 artifact whose subject is the
image manifest, so that other hosts mount it lazily without a pass of their own.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..oci.model import Platform
from ..store.store import Store
from ..text import human_size
from . import EXIT_OK
from .common import platform_argument
from .format import print_json
from .registry import ask_short_name, registry_arguments, registry_options

if TYPE_CHECKING:
    from ..lazy.remote import LayerIndexReport


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
            "uncompressed layer."
        ),
    )
    b.add_argument("source", metavar="IMAGE|SOURCE")
    platform_argument(b)
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
            "'index build' first."
        ),
    )
    u.add_argument("reference", metavar="docker://REF")
    platform_argument(u)
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


def cmd_build(store: Store, args: argparse.Namespace) -> int:
    from ..lazy.remote import build_indexes, stored_source
    from ..progress import for_stream

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
        print_json(
            {
                "source": source,
                "layers": [
                    {
                        "layer": r.number,
                        "digest": r.digest,
                        "diff_id": r.diff_id,
                        "status": r.status,
                        "reason": r.reason,
                        "index_size": r.index_size,
                        "tar_size": r.tar_size,
                        "percent": round(r.percent, 3),
                    }
                    for r in reports
                ],
            }
        )
    else:
        for report in reports:
            print(_line(report, len(reports)))
    built = sum(1 for r in reports if r.status == "built")
    cached = sum(1 for r in reports if r.status == "cached")
    progress.finish(
        f"seek indexes of {source}: {built} built, {cached} already cached, "
        f"{len(reports) - built - cached} layers not indexed"
    )
    return EXIT_OK


def cmd_push(store: Store, args: argparse.Namespace) -> int:
    from ..errors import InvalidReference
    from ..lazy.remote import push_indexes

    text = args.reference
    if not text.startswith("docker://"):
        raise InvalidReference(f"index push {text!r}: expected docker://REF")
    report = push_indexes(store, text, registry_options(args), platform=_platform(args))
    if args.json:
        print_json(
            {
                "reference": report.reference,
                "subject": report.subject,
                "artifact": report.artifact,
                "layers": list(report.layers),
                "missing": list(report.missing),
                "referrers_api": report.referrers_api,
                "tag": report.tag or None,
            }
        )
    else:
        print(report.artifact)
    where = "the referrers API" if report.referrers_api else f"tag {report.tag}"
    skipped = f"; {len(report.missing)} layers have no cached index" if report.missing else ""
    print(
        f"published {len(report.layers)} seek indexes for {report.reference}@{report.subject} "
        f"(found through {where}){skipped}",
        file=sys.stderr,
    )
    return EXIT_OK
