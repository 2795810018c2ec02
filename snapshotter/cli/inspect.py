"""``snapshotter history`` and ``inspect``: an image's metadata as docker shows it, for a
stored image or, without pulling, for ``docker://REF``.

- ``history``: docker's table (``IMAGE  CREATED  CREATED BY  SIZE  COMMENT``, newest
  first, spaced as docker's tabwriter spaces it), ``-q``, ``--format json`` (docker's JSON
  Lines) and ``--json`` (ours: one document, never truncated, with layer numbers,
  digests and integer sizes).
- ``inspect``: docker's image inspect document (an array of one object), plus ours under
  ``Snapshotter``; ``--record`` prints the store's record; ``--raw`` the manifest as
  stored or served.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from ..explore.history import HistoryRow, history_rows
from ..explore.image import open_image
from ..explore.inspect import ImageInspect, inspect_remote, inspect_stored
from ..explore.remote import RemoteImage, RemoteIndex, fetch, open_remote, remote_reference
from ..oci.digest import Digest
from ..oci.model import Descriptor, Platform
from ..oci.reference import Reference
from ..store.store import Store
from . import EXIT_OK
from .common import platform_argument
from .format import (
    ago,
    ellipsis,
    human_size,
    parse_time,
    print_docker_table,
    print_json,
    print_json_lines,
)
from .registry import registry_arguments, registry_options

# docker's CREATED BY column width (formatter.Ellipsis(createdBy, 45)).
CREATED_BY_WIDTH = 45
_TRUE = ("true", "1", "t", "yes")
_FALSE = ("false", "0", "f", "no")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "history",
        help="show the history of an image, as docker history",
        usage="snapshotter history [options] IMAGE",
        description=(
            "Show how an image was built: one row per entry of its config's history, newest "
            "first, as docker history shows them: the image id on the top row and <missing> "
            "below; entries that made no layer (ENV, CMD, LABEL ...) are 0B; SIZE is the "
            "layer's uncompressed size; CREATED BY is cut to 45 columns unless --no-trunc. "
            "A history that does not match the layers is shown anyway, with a warning on "
            "stderr: a layer without an entry shows as (missing), an entry past the last "
            "layer has SIZE '-'. IMAGE is a stored image, or docker://REF to read a "
            "registry's manifest and config without pulling (no layer is fetched); its SIZE "
            "is then the layer's compressed size, the only one known."
        ),
        epilog=(
            "Sizes are docker's (4.62kB), on a terminal or not, unless -H=false or --bytes; "
            "--format json is docker's JSON Lines. -H=false, -H false and --human=false all "
            "work."
        ),
    )
    # nargs="?" only so that "-H IMAGE" works (see _HumanAction); IMAGE is required.
    p.add_argument(
        "image",
        metavar="IMAGE",
        nargs="?",
        help="name, NAME@DIGEST, digest, id prefix, or docker://REF",
    )
    p.add_argument("--no-trunc", action="store_true", help="do not cut ids and CREATED BY")
    p.add_argument(
        "-H",
        "--human",
        action=_HumanAction,
        nargs="?",
        metavar="BOOL",
        default=None,
        help="print sizes and dates for people (docker's default); -H=false prints "
        "CREATED AT (RFC 3339, UTC) and sizes in bytes",
    )
    p.add_argument(
        "--bytes",
        action="store_true",
        help="print sizes as exact byte counts (dates stay as -H says)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only image ids, as docker")
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--json",
        action="store_true",
        help="one JSON document, never truncated: each entry with its layer number, "
        "diff_id, digest and integer sizes (null when unknown)",
    )
    out.add_argument(
        "--format",
        choices=["table", "json"],
        default="table",
        help="json: docker's JSON Lines (Comment, CreatedAt, CreatedBy, CreatedSince, ID, "
        "Size: all strings)",
    )
    platform_argument(p)
    registry_arguments(p)
    p.set_defaults(handler=cmd_history, usage_error=p.error)

    p = sub.add_parser(
        "inspect",
        help="show an image's config and layers, as docker image inspect",
        description=(
            "Print docker's image inspect document for an image (a JSON array of one "
            "object: Id, RepoTags, RepoDigests, Created, Config, Architecture, Os, Size, "
            "RootFS, GraphDriver, Metadata, Descriptor ...) plus ours under 'Snapshotter': "
            "the manifest digest and media type, the index the image was picked from, and "
            "each layer's digest, diff_id, compressed size, unpacked size and snapshot "
            "directory. IMAGE is a stored image, or docker://REF to read a registry without "
            "pulling: the manifest and config only, no layer fetched. Descriptor and "
            "RepoDigests then name what the registry serves for the tag (skopeo inspect's "
            "Digest); Size and the layer sizes are compressed, the only sizes known; an "
            "index without --platform is shown whole, its manifests with their platforms."
        ),
    )
    p.add_argument(
        "image", metavar="IMAGE", help="name, NAME@DIGEST, digest, id prefix, or docker://REF"
    )
    platform_argument(p)
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--record",
        action="store_true",
        help="print the store's record instead: names, manifest digest, config, platform, "
        "each layer's digest, diff_id, media type and size, and the index it was picked from",
    )
    how.add_argument(
        "--raw",
        action="store_true",
        help="print the manifest exactly as stored or served (an index, if IMAGE names one "
        "and no --platform is given)",
    )
    p.add_argument("--json", action="store_true", help="(the output is always JSON)")
    registry_arguments(p)
    p.set_defaults(handler=cmd_inspect, usage_error=p.error)


class _HumanAction(argparse.Action):
    """docker's ``-H/--human`` bool flag: ``-H``, ``-H=false``, ``--human=false``, and also
    ``-H false``.  A value that is no boolean is IMAGE (``history -H alpine``), kept aside
    for the handler, since the optional took it before the positional could."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        if values is None:
            setattr(namespace, self.dest, True)
            return
        word = str(values).lower()
        if word in _TRUE or word in _FALSE:
            setattr(namespace, self.dest, word in _TRUE)
            return
        setattr(namespace, self.dest, True)
        namespace.image_after_h = str(values)


# -- history -------------------------------------------------------------------------------


def cmd_history(store: Store, args: argparse.Namespace) -> int:
    image_text = _history_image(args)
    platform = Platform.parse(args.platform) if args.platform else None
    ref = remote_reference(image_text)
    if ref is not None:
        from ..sources.registry import RegistryClient

        with RegistryClient(registry_options(args)) as client:
            remote = open_remote(client, ref, platform)
        assert isinstance(remote, RemoteImage)
        image_id, warnings = str(remote.config_digest), remote.warnings
        rows = history_rows(remote.layers, remote.history)
    else:
        image = open_image(store, image_text, platform)
        image_id, warnings = image.record.config, image.warnings
        rows = history_rows(image.layers, image.history)
    for warning in warnings:
        print(f"snapshotter: warning: {image_text}: {warning}", file=sys.stderr)
    remote_sizes = ref is not None
    if args.json:
        print_json(
            {
                "id": image_id,
                "remote": remote_sizes,
                "history": [_history_json(row) for row in rows],
                "warnings": list(warnings),
            }
        )
        return EXIT_OK
    trunc = not args.no_trunc
    ids = [_row_id(image_id, i, trunc) for i in range(len(rows))]
    if args.quiet:
        for ident in ids:
            print(ident)
        return EXIT_OK
    human_dates = args.human is not False
    if args.format == "json":
        human_sizes = args.human is not False and not args.bytes
        print_json_lines(
            [
                {
                    "Comment": row.comment,
                    "CreatedAt": _created_at(row),
                    "CreatedBy": _created_by(row, trunc),
                    "CreatedSince": ago(row.created) if human_dates else _created_at(row),
                    "ID": ident,
                    "Size": _size(row, remote_sizes, human_sizes),
                }
                for ident, row in zip(ids, rows, strict=True)
            ]
        )
        return EXIT_OK
    # docker's: human sizes whether or not stdout is a terminal, unless -H=false.
    human_sizes = args.human is not False and not args.bytes
    table = [["IMAGE", "CREATED" if human_dates else "CREATED AT", "CREATED BY", "SIZE", "COMMENT"]]
    for ident, row in zip(ids, rows, strict=True):
        table.append(
            [
                ident,
                ago(row.created) if human_dates else _created_at(row),
                _created_by(row, trunc),
                _size(row, remote_sizes, human_sizes),
                row.comment,
            ]
        )
    print_docker_table(table)
    return EXIT_OK


def _history_image(args: argparse.Namespace) -> str:
    after_h: str | None = getattr(args, "image_after_h", None)
    if args.image is not None and after_h is not None:
        args.usage_error(f"argument -H/--human: expected true or false, got {after_h!r}")
    image = args.image if args.image is not None else after_h
    if image is None:
        args.usage_error("the following arguments are required: IMAGE")
    assert image is not None
    return str(image)


def _row_id(image_id: str, position: int, trunc: bool) -> str:
    """docker's ID column: the image id on the top row, ``<missing>`` below."""
    if position > 0:
        return "<missing>"
    return Digest.parse(image_id).short() if trunc else image_id


def _created_at(row: HistoryRow) -> str:
    """docker's CreatedAt: RFC 3339 to the second; we print UTC where docker uses the local
    zone, and N/A for no date where docker prints the epoch."""
    when = parse_time(row.created)
    if when is None:
        return "N/A"
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _created_by(row: HistoryRow, trunc: bool) -> str:
    if row.missing:
        return "(missing)"
    text = row.created_by.replace("\t", " ")
    return ellipsis(text, CREATED_BY_WIDTH) if trunc else text


def _size(row: HistoryRow, remote: bool, human: bool) -> str:
    """SIZE: uncompressed, or for a registry's image the compressed blob (all there is);
    '-' for an entry past the last layer."""
    size = row.compressed_size if remote else row.size
    if size is None:
        return "-"
    return human_size(size) if human else str(size)


def _history_json(row: HistoryRow) -> dict[str, object]:
    layer = row.layer
    return {
        "created": row.created,
        "created_by": row.created_by,
        "author": row.author,
        "comment": row.comment,
        "empty_layer": row.empty_layer,
        "missing": row.missing,
        "layer": layer.number if layer is not None else None,
        "diff_id": layer.diff_id if layer is not None else None,
        "digest": layer.digest if layer is not None else None,
        "size": row.size,
        "compressed_size": row.compressed_size,
    }


# -- inspect -------------------------------------------------------------------------------


def cmd_inspect(store: Store, args: argparse.Namespace) -> int:
    platform = Platform.parse(args.platform) if args.platform else None
    ref = remote_reference(args.image)
    if ref is not None:
        if args.record:
            args.usage_error("--record shows the store's record; docker:// images have none")
        return _inspect_remote(args, ref, platform)
    if args.record:
        return _print_record(store, args.image, platform)
    if args.raw:
        # What the name points at (an index too), or the image picked for --platform.
        state = store.read_state()
        if platform is None:
            digest = store.resolve(state, args.image)
        else:
            digest = store.resolve_image(state, args.image, platform)[0].digest
        _write_raw(store.read_blob(Digest.parse(digest)))
        return EXIT_OK
    image = open_image(store, args.image, platform)
    _print_docker([docker_document(inspect_stored(image, store.read_state()))])
    return EXIT_OK


def _inspect_remote(args: argparse.Namespace, ref: Reference, platform: Platform | None) -> int:
    from ..explore.remote import open_image as open_remote_image
    from ..sources.registry import RegistryClient

    with RegistryClient(registry_options(args)) as client:
        if args.raw:
            served = fetch(client, ref)
            if platform is not None:
                served = open_remote_image(client, served, platform).manifest
            _write_raw(served.raw)
            return EXIT_OK
        found = open_remote(client, ref, platform, whole_index=True)
    if isinstance(found, RemoteIndex):
        _print_docker([_index_document(found)])
    else:
        _print_docker([docker_document(inspect_remote(found))])
    return EXIT_OK


def _print_record(store: Store, text: str, platform: Platform | None) -> int:
    """The store's record, as ``inspect`` printed it before it printed docker's document."""
    state = store.read_state()
    record, index = store.resolve_image(state, text, platform)
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
    print_json(doc)
    return EXIT_OK


def _write_raw(data: bytes) -> None:
    """Bytes to stdout exactly (no newline added)."""
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        buffer.write(data)
        buffer.flush()
    else:  # a text-only stdout (tests capture into a StringIO): manifests are UTF-8 JSON
        sys.stdout.write(data.decode("utf-8", "surrogateescape"))


# Key order and shape of docker 28's image inspect Config (API <= 1.51): keys docker always
# wrote, null or "" when the image has none, then those it writes only when set.
_CONFIG_KEYS = (
    ("User", ""),
    ("ExposedPorts", None),
    ("Env", None),
    ("Cmd", None),
    ("Healthcheck", None),
    ("ArgsEscaped", None),
    ("Volumes", None),
    ("WorkingDir", ""),
    ("Entrypoint", None),
    ("OnBuild", None),
    ("Labels", None),
    ("StopSignal", None),
    ("Shell", None),
)
_CONFIG_ALWAYS = frozenset(
    {"User", "Env", "Cmd", "Volumes", "WorkingDir", "Entrypoint", "OnBuild", "Labels"}
)


def docker_config(config: dict[str, object]) -> dict[str, object]:
    """The ``Config`` of docker's document: the image config's keys docker knows, in its
    order; absent ones as docker 28 shows them (null, "") or left out (omitempty ones)."""
    out: dict[str, object] = {}
    for key, empty in _CONFIG_KEYS:
        if key in config and config[key] is not None:
            out[key] = config[key]
        elif key in _CONFIG_ALWAYS:
            out[key] = empty
    return out


def docker_document(info: ImageInspect) -> dict[str, object]:
    """docker's image inspect object (its keys, in its order), then ours."""
    doc: dict[str, object] = {
        "Id": info.id,
        "RepoTags": list(info.repo_tags),
        "RepoDigests": list(info.repo_digests),
        "Parent": "",
        "Comment": info.comment,
        "Created": info.created,
        "DockerVersion": info.docker_version,
        "Author": info.author,
        "Config": docker_config(info.config),
        "Architecture": info.architecture,
    }
    if info.variant:
        doc["Variant"] = info.variant
    doc["Os"] = info.os
    if info.os_version:
        doc["OsVersion"] = info.os_version
    doc["Size"] = info.size
    if not info.remote:
        data = {"ChainID": info.chain_id} if info.chain_id else {}
        if info.snapshots:
            # overlay2's order: the top layer first.
            data["LowerDir"] = ":".join(str(p) for p in reversed(info.snapshots))
        doc["GraphDriver"] = {"Data": data, "Name": "snapshotter"}
    rootfs: dict[str, object] = {"Type": "layers"}
    if info.diff_ids:
        rootfs["Layers"] = list(info.diff_ids)
    doc["RootFS"] = rootfs
    if not info.remote:
        doc["Metadata"] = {"LastTagTime": info.last_tag_time}
    doc["Descriptor"] = {
        "mediaType": info.target.media_type,
        "digest": info.target.digest,
        "size": info.target.size,
    }
    snapshots = info.snapshots or (None,) * len(info.layers)
    doc["Snapshotter"] = {
        "source": info.source,
        "remote": info.remote,
        "manifest_digest": info.manifest_digest,
        "media_type": info.manifest_media_type,
        "index_digest": info.index_digest,
        "platform": info.platform,
        "compressed_size": sum(layer.size for layer in info.layers),
        "unpacked_size": None if info.remote else info.size,
        "layers": [
            {
                "number": layer.number,
                "digest": layer.digest,
                "diff_id": layer.diff_id,
                "media_type": layer.media_type,
                "size": layer.size,
                "unpacked_size": layer.unpacked_size,
                "snapshot": str(path) if path is not None else None,
            }
            for layer, path in zip(info.layers, snapshots, strict=True)
        ],
    }
    return doc


def _index_document(index: RemoteIndex) -> dict[str, object]:
    """A registry's index shown whole: what it is, and each manifest with its platform."""
    served = index.served
    ref = served.reference
    from ..oci.reference import familiar_repository

    repository = familiar_repository(ref.repository)
    tag = f"{repository}:{ref.tag}" if ref.tag else None
    return {
        "RepoTags": [tag] if tag else [],
        "RepoDigests": [f"{repository}@{served.digest}"],
        "Descriptor": {
            "mediaType": served.media_type,
            "digest": str(served.digest),
            "size": len(served.raw),
        },
        "Manifests": [{"Descriptor": d.to_json(), "Kind": _kind(d)} for d in index.manifests],
        "Snapshotter": {"source": f"docker://{ref}", "remote": True},
    }


def _kind(desc: Descriptor) -> str:
    """docker's ManifestSummary Kind: image, attestation or unknown (from the descriptor
    alone: nothing below the index is fetched)."""
    from ..oci.model import INDEX_TYPES, MANIFEST_TYPES

    if desc.annotations.get("vnd.docker.reference.type") == "attestation-manifest":
        return "attestation"
    if desc.media_type in MANIFEST_TYPES | INDEX_TYPES:
        return "image"
    return "unknown"


def _print_docker(docs: list[dict[str, object]]) -> None:
    """JSON as docker's inspect prints it: 4-space indent, keys in the given order (the
    daemon writes it without HTML escaping, and the CLI only indents it)."""
    sys.stdout.write(json.dumps(docs, indent=4, ensure_ascii=False) + "\n")


__all__ = ["docker_config", "docker_document", "register"]
