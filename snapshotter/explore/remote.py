"""An image in a registry, read without pulling it: its manifest (or index) and its config,
never a layer blob.

``inspect docker://REF`` and ``history docker://REF`` answer from these alone.  What the
registry serves is verified as ``sources.registry.RegistryClient`` does it: a manifest
fetched by digest must hash to it (and be the size its index descriptor says), one fetched
by tag must hash to the registry's ``Docker-Content-Digest``, and the config must hash to
the digest and size its manifest gives.

Only the blobs' compressed sizes are known here: each :class:`Layer` has
``unpacked_size=None``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..errors import DigestMismatch, InvalidReference, NotFound, UnsupportedMedia
from ..oci.digest import Digest
from ..oci.model import (
    CONFIG_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    Descriptor,
    ImageConfig,
    Index,
    JSONObject,
    Manifest,
    Platform,
    load_json,
    select_platform,
)
from ..oci.reference import Reference
from .image import HistoryEntry, Layer, align_history

if TYPE_CHECKING:
    from ..sources.registry import RegistryClient

REMOTE_PREFIX = "docker://"
# Nested indexes deeper than this are refused (as pull refuses them).
_MAX_NESTING = 8


def remote_reference(text: str) -> Reference | None:
    """The registry reference of ``docker://REF``; None for anything else (a store name)."""
    if not text.startswith(REMOTE_PREFIX):
        return None
    rest = text[len(REMOTE_PREFIX) :]
    if not rest:
        raise InvalidReference(f"image {text!r}: expected docker://NAME[:TAG|@DIGEST]")
    return Reference.parse(rest)


@dataclass(frozen=True, slots=True)
class Served:
    """A manifest or index exactly as the registry served it."""

    reference: Reference  # what was asked for (a tag, or a digest)
    raw: bytes
    media_type: str
    digest: Digest  # of ``raw``, verified


@dataclass(frozen=True, slots=True)
class RemoteIndex:
    """An image index (or manifest list) shown whole: ``inspect`` without --platform."""

    served: Served
    manifests: tuple[Descriptor, ...]  # in the index's order


@dataclass(frozen=True, slots=True)
class RemoteImage:
    """One image of a registry, up to (not including) its layers."""

    served: Served  # what REF names: this image's manifest, or the index it was picked from
    manifest: Served  # this image's manifest (``served`` itself unless picked from an index)
    config_digest: Digest
    config: JSONObject
    layers: tuple[Layer, ...]  # base first; unpacked_size None
    history: tuple[HistoryEntry, ...]  # as the config lists it (oldest first)
    warnings: tuple[str, ...]
    platform: Platform  # as the config says

    @property
    def index_digest(self) -> Digest | None:
        return self.served.digest if self.served.digest != self.manifest.digest else None


def fetch(client: RegistryClient, ref: Reference) -> Served:
    """GET what ``ref`` names, verified (see the module docstring)."""
    raw, media_type, digest = client.manifest(ref)
    return Served(ref, raw, media_type, digest)


def open_remote(
    client: RegistryClient,
    ref: Reference,
    platform: Platform | None = None,
    *,
    whole_index: bool = False,
) -> RemoteImage | RemoteIndex:
    """The image ``ref`` names: an index gives its image for ``platform`` (default: the
    host's), or itself whole when ``whole_index`` and no ``platform`` is given."""
    served = fetch(client, ref)
    if whole_index and platform is None and served.media_type in INDEX_TYPES:
        index = Index.parse(served.raw, f"{ref}: index {served.digest}")
        return RemoteIndex(served, index.manifests)
    return open_image(client, served, platform)


def open_image(client: RegistryClient, served: Served, platform: Platform | None) -> RemoteImage:
    """The image ``served`` is, or the one its index (nested ones too) lists for
    ``platform`` (default: the host's); its config fetched, no layer."""
    ref = served.reference
    want = platform or Platform.host()
    manifest = served
    seen: set[Digest] = set()
    while manifest.media_type in INDEX_TYPES:
        if manifest.digest in seen or len(seen) >= _MAX_NESTING:
            raise InvalidReference(f"{ref}: image index {manifest.digest} nests in a loop")
        seen.add(manifest.digest)
        what = f"{ref}: index {manifest.digest}"
        desc = select_platform(Index.parse(manifest.raw, what), want, what)
        manifest = fetch(client, replace(ref, tag=None, digest=desc.digest))
        if len(manifest.raw) != desc.size:
            raise DigestMismatch(
                f"{ref}: manifest {desc.digest} is {len(manifest.raw)} bytes, "
                f"its index says {desc.size}"
            )
    what = f"{ref}: manifest {manifest.digest}"
    if manifest.media_type not in MANIFEST_TYPES:
        raise UnsupportedMedia(f"{what}: unsupported manifest media type {manifest.media_type!r}")
    parsed = Manifest.parse(manifest.raw, what)
    if parsed.config.media_type not in CONFIG_TYPES:
        raise UnsupportedMedia(
            f"{what}: an artifact (config type {parsed.config.media_type!r}), not a container image"
        )
    config_raw = client.blob(ref, parsed.config.digest, size=parsed.config.size)
    config_what = f"{ref}: config {parsed.config.digest}"
    config = load_json(config_raw, config_what)
    image_config = ImageConfig.parse(config_raw, config_what)
    if (
        platform is not None
        and image_config.platform.os
        and not image_config.platform.matches(platform)
    ):
        raise NotFound(f"{ref}: the image is for {image_config.platform}, not {platform}")
    if len(image_config.diff_ids) != len(parsed.layers):
        raise InvalidReference(
            f"{what}: {len(parsed.layers)} layers but the config lists "
            f"{len(image_config.diff_ids)} diff_ids"
        )
    history, of_layer, warnings = align_history(image_config.history, len(parsed.layers))
    layers = tuple(
        Layer(
            number=i + 1,
            digest=str(desc.digest),
            diff_id=str(diff_id),
            media_type=desc.media_type,
            size=desc.size,
            unpacked_size=None,
            history=of_layer[i],
        )
        for i, (desc, diff_id) in enumerate(zip(parsed.layers, image_config.diff_ids, strict=True))
    )
    return RemoteImage(
        served=served,
        manifest=manifest,
        config_digest=parsed.config.digest,
        config=config,
        layers=layers,
        history=history,
        warnings=warnings,
        platform=image_config.platform,
    )


__all__ = [
    "REMOTE_PREFIX",
    "RemoteImage",
    "RemoteIndex",
    "Served",
    "fetch",
    "open_image",
    "open_remote",
    "remote_reference",
]
