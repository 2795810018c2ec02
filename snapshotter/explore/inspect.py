"""What ``inspect`` says about an image: the facts docker's image inspect document holds,
plus the manifest, the layers' sizes and the store's snapshots.

One record, :class:`ImageInspect`, for a stored image (:func:`inspect_stored`) and for an
image read from a registry without its layers (:func:`inspect_remote`); ``cli`` lays it
out with docker's key names.

Names follow docker: ``repo_tags`` are ``repository:tag`` in docker's short form
(``alpine:3.20``, ``localhost/app:1``), ``repo_digests`` are ``repository@digest`` of what
each repository's names point at: the image's manifest, or the index it was picked from
(docker shows the index digest for an image pulled from a multi-platform tag).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..oci.digest import Digest
from ..oci.model import JSONObject, chain_ids
from ..oci.reference import familiar_repository, split_name
from ..store.store import State
from .image import Layer, StoredImage
from .remote import RemoteImage


@dataclass(frozen=True, slots=True)
class Target:
    """The blob a name points at (docker's ``Descriptor``): an image manifest, or the index
    the image was picked from."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class ImageInspect:
    id: str  # the config digest: docker's image id
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    created: str  # as the config writes it ("" when absent)
    author: str
    comment: str  # the last history entry's, as docker shows it
    docker_version: str
    config: JSONObject  # the config's "config" object as written ({} when absent)
    architecture: str
    variant: str
    os: str
    os_version: str
    size: int  # stored: uncompressed bytes of all layers; remote: compressed (all there is)
    remote: bool  # read from a registry: sizes are compressed, nothing is stored
    diff_ids: tuple[str, ...]
    target: Target
    manifest_digest: str
    manifest_media_type: str
    index_digest: str | None  # the index the image was picked from, if any
    platform: str
    layers: tuple[Layer, ...]  # base first
    snapshots: tuple[Path, ...]  # stored: each layer's snapshot directory, base first
    chain_id: str  # of the whole layer stack ("" for no layers); names the merged tree
    last_tag_time: str  # stored: when the image was pulled; remote: ""
    source: str  # where it came from: the pull's SOURCE, or docker://REF


def config_text(config: Mapping[str, object], key: str) -> str:
    value = config.get(key)
    return value if isinstance(value, str) else ""


def run_config(config: Mapping[str, object]) -> JSONObject:
    """The image config's ``config`` object (Env, Cmd, Labels ...); {} when absent."""
    value = config.get("config")
    return dict(value) if isinstance(value, dict) else {}


def image_labels(config: Mapping[str, object]) -> dict[str, str]:
    """The image's labels (``config.Labels``); values that are not strings are dropped."""
    labels = run_config(config).get("Labels")
    if not isinstance(labels, dict):
        return {}
    return {str(k): v for k, v in labels.items() if isinstance(v, str)}


def _comment(config: Mapping[str, object]) -> str:
    # docker's Comment is the image's own (docker commit -m, import), which BuildKit and
    # the classic builder record as the newest history entry's comment.
    comment = config_text(config, "comment")
    if comment:
        return comment
    history = config.get("history")
    if isinstance(history, list) and history and isinstance(history[-1], dict):
        last = history[-1].get("comment")
        return last if isinstance(last, str) else ""
    return ""


def _tag_name(name: str) -> str:
    repository, tag = split_name(name)
    return f"{familiar_repository(repository)}:{tag}"


def _digest_name(name: str, digest: str) -> str:
    return f"{familiar_repository(split_name(name)[0])}@{digest}"


def _chain_id(diff_ids: tuple[str, ...]) -> str:
    return str(chain_ids([Digest.parse(d) for d in diff_ids])[-1]) if diff_ids else ""


def inspect_stored(image: StoredImage, state: State) -> ImageInspect:
    """The facts of a stored image; ``state`` gives its names."""
    record, store, config = image.record, image.store, image.config
    digests = {_digest_name(n, record.digest) for n in state.names_of(record.digest)}
    for index_digest in state.indexes_of(record.digest):
        digests.update(_digest_name(n, index_digest) for n in state.names_of(index_digest))
    if image.index is not None:
        target_type, target_digest = image.index.media_type, image.index.digest
    else:
        target_type, target_digest = record.media_type, record.digest
    target_size = store.blob_path(Digest.parse(target_digest)).stat().st_size
    diff_ids = tuple(layer.diff_id for layer in image.layers)
    return ImageInspect(
        id=record.config,
        repo_tags=tuple(sorted({_tag_name(n) for n in state.all_names_of(record.digest)})),
        repo_digests=tuple(sorted(digests)),
        **_config_facts(config),
        size=record.size,
        remote=False,
        diff_ids=diff_ids,
        target=Target(target_type, target_digest, target_size),
        manifest_digest=record.digest,
        manifest_media_type=record.media_type,
        index_digest=image.index.digest if image.index is not None else None,
        platform=record.platform,
        layers=image.layers,
        snapshots=tuple(image.snapshot(layer.number) for layer in image.layers),
        chain_id=_chain_id(diff_ids),
        last_tag_time=record.pulled,
        source=record.source,
    )


def _config_facts(config: JSONObject) -> dict[str, Any]:
    """The fields of ``ImageInspect`` an image config gives, stored or remote alike."""
    return {
        "created": config_text(config, "created"),
        "author": config_text(config, "author"),
        "comment": _comment(config),
        "docker_version": config_text(config, "docker_version"),
        "config": run_config(config),
        "architecture": config_text(config, "architecture"),
        "variant": config_text(config, "variant"),
        "os": config_text(config, "os"),
        "os_version": config_text(config, "os.version"),
    }


def inspect_remote(image: RemoteImage) -> ImageInspect:
    """The facts of an image in a registry, from its manifest and config alone."""
    ref, config = image.served.reference, image.config
    repository = familiar_repository(ref.repository)
    diff_ids = tuple(layer.diff_id for layer in image.layers)
    return ImageInspect(
        id=str(image.config_digest),
        repo_tags=(_tag_name(ref.name()),) if ref.tag else (),
        repo_digests=(f"{repository}@{image.served.digest}",),
        **_config_facts(config),
        size=sum(layer.size for layer in image.layers),
        remote=True,
        diff_ids=diff_ids,
        target=Target(image.served.media_type, str(image.served.digest), len(image.served.raw)),
        manifest_digest=str(image.manifest.digest),
        manifest_media_type=image.manifest.media_type,
        index_digest=str(image.index_digest) if image.index_digest is not None else None,
        platform=str(image.platform),
        layers=image.layers,
        snapshots=(),
        chain_id=_chain_id(diff_ids),
        last_tag_time="",
        source=f"docker://{ref}",
    )


__all__ = [
    "ImageInspect",
    "Target",
    "config_text",
    "image_labels",
    "inspect_remote",
    "inspect_stored",
    "run_config",
]
