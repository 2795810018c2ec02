"""Lazy images from registries: each layer's seek index found, fetched or built, and its
bytes read by closed ranges through the span cache.

``open_lazy_remote`` gives a :class:`~.layers.LazyImage` for ``docker://REF`` (or a bare
name, resolved as ``pull`` resolves it, through registries.conf).  The manifest and config
are fetched and verified as a pull does (the host's platform picked from an index); then
the one lazy planner (``lazy.plan``) readies each layer: a snapshot already in the store,
the store's index cache, an index **published beside the image** (an OCI 1.1 artifact
whose ``subject`` is the image manifest, found with the referrers API, else the spec's
``sha256-<hex>`` tag, as distribution 2.8 has no referrers API; each index blob verified
by its digest and required to name the layer's digest, diff_id, size and media type), a
TOC the layer carries (eStargz, zstd:chunked), else, once a one-byte closed ``Range``
probe showed the registry serves ranges, one verified streaming pass.  Small layers,
single-frame zstd and endpoints that ignore ``Range`` are fetched whole with pull's own
unpacking.  Indexed layers are read by closed ranges through the span cache
(``lazy.spans``).  ``build_indexes`` and ``push_indexes`` are ``snapshotter index
build|push``.

Trust: a published index is as trustworthy as the repository's pushers (anyone who may
push may attach one), like the tag itself; every span read through it is checked against
the digests it holds, and its toc is what the view shows.  Digest-pinned users who do not
trust the pushers can build the index themselves (``index build``) and keep it cached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from ..errors import NotFound, SnapshotterError, StoreCorrupt
from ..oci.digest import Digest
from ..oci.model import MT_OCI_INDEX, MT_OCI_MANIFEST, Platform
from ..oci.reference import Reference
from ..progress import Progress
from ..sources.registry import RegistryBlob, RegistryClient, RegistryOptions
from ..sources.transports import (
    LayerSource,
    ResolvedImage,
    ResolvedIndex,
    open_registry_all,
    open_registry_image,
    open_source,
    open_source_all,
)
from ..store.store import Store
from .cache import index_path, save_index
from .layer_toc import TocIndex
from .layers import LazyImage, RangeSource
from .plan import cached_index, index_layer, matches, plan_layers
from .seek_index import SeekIndex, Unindexed, not_worth_indexing
from .spans import CachingSource, SpanCache

# The published artifact (image-spec 1.1 "artifacts guidance"): an image manifest with an
# artifactType, the empty config, one layer per seek index, the image manifest as subject.
ARTIFACT_TYPE = "application/vnd.snapshotter.seek-index.v1"
INDEX_MEDIA_TYPE = "application/vnd.snapshotter.seek-index.v1"
LAYER_ANNOTATION = "vnd.snapshotter.seek-index.layer.digest"
DIFF_ID_ANNOTATION = "vnd.snapshotter.seek-index.layer.diff_id"
MT_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
MAX_INDEX_BLOB = 256 << 20  # an index is ≤ 1 % of its tar: this is a 25 GB layer's


# -- open -----------------------------------------------------------------------------------


def open_lazy_remote(
    store: Store,
    ref_text: str,
    options: RegistryOptions,
    progress: Progress,
    *,
    platform: Platform | None = None,
    spans: SpanCache | None = None,
    use_published: bool = True,
) -> LazyImage:
    """The lazy view's layers of ``ref_text`` (``docker://REF`` or a name ``pull`` takes).

    The registry client stays open as long as the returned layers' sources are used (it
    closes with them, at garbage collection); on failure it is closed here.  ``spans`` is
    the span cache the sources read through (default: the store's, 2 GiB).
    ``use_published=False`` does not look for indexes published beside the image.
    """
    client = RegistryClient(options)
    try:
        ref, image = open_registry_image(ref_text, platform, client)
        assert image.manifest_bytes is not None  # registries always have one
        access = _RegistryAccess(
            client,
            ref,
            image,
            progress,
            spans if spans is not None else SpanCache.of_store(store),
            use_published,
        )
        layers = plan_layers(store, image.layers, access, progress)
        return LazyImage(
            label=ref_text,
            manifest_digest=str(access.manifest_digest),
            config=image.config_bytes,
            layers=layers,
        )
    except BaseException:
        client.close()
        raise


class _RegistryAccess:
    """``plan.LayerAccess`` over a registry: blobs read by closed ranges, published
    indexes looked up once (on the first layer that needs one), a one-byte probe for
    ranges, seek-indexed reads through the span cache."""

    def __init__(
        self,
        client: RegistryClient,
        ref: Reference,
        image: ResolvedImage,
        progress: Progress,
        spans: SpanCache,
        use_published: bool,
    ):
        assert image.manifest_bytes is not None
        self.client = client
        self.ref = ref
        self.image = image
        self.progress = progress
        self.spans = spans
        self.manifest_digest = Digest.of_bytes(image.manifest_bytes)
        self._published: dict[Digest, tuple[SeekIndex, bytes]] | None = (
            None if use_published else {}
        )

    def open(self, layer: LayerSource) -> tuple[LayerSource, RangeSource]:
        assert layer.digest is not None and layer.size is not None  # from a manifest
        return layer, RegistryBlob(self.client, self.ref, layer.digest, layer.size)

    def published(self, layer: LayerSource) -> tuple[SeekIndex, bytes] | None:
        if self._published is None:
            self._published = _published(
                self.client, self.ref, self.manifest_digest, self.image, self.progress
            )
        assert layer.digest is not None
        return self._published.get(layer.digest)

    def view_source(
        self, layer: LayerSource, index: SeekIndex | TocIndex, blob: RangeSource
    ) -> RangeSource:
        if isinstance(index, TocIndex):
            return blob  # (its chunks are checked against the TOC as they are read)
        assert isinstance(blob, RegistryBlob)
        return CachingSource(index, blob, self.spans)


def _published(
    client: RegistryClient,
    ref: Reference,
    manifest_digest: Digest,
    image: ResolvedImage,
    progress: Progress,
) -> dict[Digest, tuple[SeekIndex, bytes]]:
    """The seek indexes published for the image (by layer digest), each checked against
    its layer, with the bytes it came as; a lookup that fails, or an index that does not
    fit, is passed over."""
    wanted = {layer.digest: layer for layer in image.layers if layer.digest is not None}
    found: dict[Digest, tuple[SeekIndex, bytes]] = {}
    try:
        referrers = client.referrers(ref, manifest_digest, ARTIFACT_TYPE)
    except SnapshotterError as exc:
        progress.note(f"published seek indexes: lookup failed ({exc}); building them")
        return found
    for desc in referrers:
        if len(found) == len(wanted):
            break
        what = f"seek index artifact {desc.digest}"
        try:
            body, _, _ = client.manifest(replace(ref, tag=None, digest=desc.digest))
            entries = _artifact_layers(body, manifest_digest, what)
        except SnapshotterError as exc:
            progress.note(f"{what}: passed over ({exc})")
            continue
        for layer_digest, blob_digest, size in entries:
            layer = wanted.get(layer_digest)
            if layer is None or layer_digest in found:
                continue
            try:
                data = client.blob(ref, blob_digest, size=size, max_size=MAX_INDEX_BLOB)
                index = SeekIndex.from_bytes(data, f"{what}: {blob_digest}")
                if not matches(index, layer):
                    raise StoreCorrupt(f"the index it gives for {layer_digest} is another layer's")
            except SnapshotterError as exc:
                progress.note(f"{what}: passed over for layer {layer_digest} ({exc})")
                continue
            found[layer_digest] = (index, data)
    return found


def _artifact_layers(body: bytes, subject: Digest, what: str) -> list[tuple[Digest, Digest, int]]:
    """(layer digest, index blob digest, size) of each index a published artifact holds."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise StoreCorrupt(f"{what}: not json") from None
    if not isinstance(doc, dict) or doc.get("artifactType") != ARTIFACT_TYPE:
        raise StoreCorrupt(f"{what}: not a seek index artifact")
    named = doc.get("subject")
    if not isinstance(named, dict) or named.get("digest") != str(subject):
        raise StoreCorrupt(f"{what}: its subject is another manifest")
    out = []
    layers = doc.get("layers")
    for item in layers if isinstance(layers, list) else []:
        if not isinstance(item, dict) or item.get("mediaType") != INDEX_MEDIA_TYPE:
            continue
        annotations = item.get("annotations")
        if not isinstance(annotations, dict):
            continue
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            continue
        out.append(
            (
                Digest.parse(annotations.get(LAYER_ANNOTATION), what),
                Digest.parse(item.get("digest"), what),
                size,
            )
        )
    return out


# -- index build ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LayerIndexReport:
    """What ``index build`` did for one layer."""

    number: int  # 1 = base
    digest: str  # the blob's, "" when the source does not give it
    diff_id: str
    status: str  # "built", "cached" or "not indexed"
    reason: str  # why not indexed ("" otherwise)
    index_size: int  # bytes of the serialized index (0 when not indexed)
    tar_size: int  # uncompressed bytes of the layer (0 when not indexed)

    @property
    def percent(self) -> float:
        return 100.0 * self.index_size / self.tar_size if self.tar_size else 0.0


def build_indexes(
    store: Store,
    source: str,
    options: RegistryOptions,
    progress: Progress,
    *,
    platform: Platform | None = None,
) -> list[LayerIndexReport]:
    """Build and cache the seek index of every layer of ``source`` that has none cached
    and is worth one.  ``source`` is an image in the store (its layers' blobs are read
    again from where it was pulled, pinned to its manifest digest), else any pull source
    (``docker://REF``, a name, ``oci:DIR[:TAG]``...).  Each built layer costs one
    streaming pass over its blob; nothing is unpacked."""
    expected: str | None = None
    stored = stored_source(store, source, platform)
    if stored is not None:
        source, platform, expected = stored
    image = open_source(source, platform, options)
    try:
        if expected is not None and image.manifest_bytes is not None:
            found = str(Digest.of_bytes(image.manifest_bytes))
            if found != expected:
                raise NotFound(
                    f"image {expected}: its source {source} now holds {found}; "
                    "name the source to index that image"
                )
        return [_build_one(store, layer, len(image.layers), progress) for layer in image.layers]
    finally:
        if image.close is not None:
            image.close()


@dataclass(frozen=True, slots=True)
class PlatformIndexReport:
    """What ``index build --all-platforms`` did for one image of an index."""

    platform: str  # as the index's descriptor says (else the image config), e.g. linux/arm64/v8
    manifest: str  # the image manifest's digest ("" when the source does not give it)
    layers: tuple[LayerIndexReport, ...]


@dataclass(frozen=True, slots=True)
class AllIndexReport:
    """What ``index build --all-platforms`` did: one entry per image of the index (one
    entry in all when the source is a single image)."""

    source: str
    index: str  # the image index's digest ("" when the source is one image)
    platforms: tuple[PlatformIndexReport, ...]


def build_all_indexes(
    store: Store, source: str, options: RegistryOptions, progress: Progress
) -> AllIndexReport:
    """:func:`build_indexes` for every image of the index ``source`` names (``index build
    --all-platforms``).  A layer that several platforms share is indexed once: the first
    platform builds it, the others find it cached.  ``source`` may name an index in the
    store (``pull --all-platforms``): it is read again from where it was pulled, pinned to
    the index digest for a registry, and must still be that index."""
    expected: str | None = None
    stored = stored_index_source(store, source)
    if stored is not None:
        source, expected = stored
    resolved = open_source_all(source, options)
    try:
        if isinstance(resolved, ResolvedImage):
            images = [("", resolved)]
            digest = ""
            found = _manifest_digest(resolved)
        else:
            images = [(str(image.platform), image.image) for image in resolved.images]
            digest = found = str(resolved.index_digest)
        if expected is not None and found != expected:
            raise NotFound(
                f"image {expected}: its source {source} now holds {found or 'another image'}; "
                "name the source to index that"
            )
        platforms = []
        for platform, image in images:
            if not platform:
                platform = str(image.platform)
            n = len(image.layers)
            layers = tuple(_build_one(store, layer, n, progress) for layer in image.layers)
            platforms.append(PlatformIndexReport(platform, _manifest_digest(image), layers))
        return AllIndexReport(source, digest, tuple(platforms))
    finally:
        if resolved.close is not None:
            resolved.close()


def stored_index_source(store: Store, text: str) -> tuple[str, str] | None:
    """(source, digest) of the index (``pull --all-platforms``) or image in the store that
    ``text`` names, a registry source pinned to that digest; None when ``text`` is a
    ``TRANSPORT:`` source or names nothing in the store."""
    from ..sources.transports import TRANSPORTS

    if text.partition(":")[0] in TRANSPORTS:
        return None
    state = store.read_state()
    try:
        digest = store.resolve(state, text)
    except NotFound:
        return None
    record = state.images.get(digest) or state.indexes[digest]
    return _pinned(record.source, digest), digest


def _manifest_digest(image: ResolvedImage) -> str:
    return str(Digest.of_bytes(image.manifest_bytes)) if image.manifest_bytes else ""


def _pinned(source: str, digest: str) -> str:
    """``source`` pinned to ``digest`` when it is a registry's (whatever its tag names now);
    other sources as they are (their digest is checked once read)."""
    from ..sources.transports import TRANSPORTS

    transport = source.partition(":")[0]
    if transport not in TRANSPORTS or transport == "docker":
        ref = Reference.parse(source.removeprefix("docker://"))
        return f"docker://{replace(ref, tag=None, digest=Digest.parse(digest))}"
    return source


def stored_source(
    store: Store, text: str, platform: Platform | None
) -> tuple[str, Platform | None, str] | None:
    """(source, platform, manifest digest) of the stored image ``text`` names, or None
    when ``text`` is a ``TRANSPORT:`` source or names no stored image."""
    from ..sources.transports import TRANSPORTS

    if text.partition(":")[0] in TRANSPORTS:
        return None
    try:
        record, _ = store.resolve_image(store.read_state(), text, platform)
    except NotFound:
        return None
    source = _pinned(record.source, record.digest)  # a registry's: the same manifest
    return source, Platform.parse(record.platform) if record.platform else platform, record.digest


def _build_one(store: Store, layer: LayerSource, n: int, progress: Progress) -> LayerIndexReport:
    number = layer.index + 1
    digest = str(layer.digest) if layer.digest is not None else ""

    def report(
        status: str, reason: str = "", index: SeekIndex | None = None, size: int = 0
    ) -> LayerIndexReport:
        return LayerIndexReport(
            number,
            digest,
            str(layer.diff_id),
            status,
            reason,
            size,
            index.tar_size if index is not None else 0,
        )

    if layer.digest is None:
        return report("not indexed", "the source does not give the blob's digest")
    index = cached_index(store, layer)
    if index is not None:
        return report("cached", index=index, size=_index_size(store, layer.digest, index))
    if layer.size is not None:
        reason = not_worth_indexing(layer.media_type, layer.size)
        if reason:
            return report("not indexed", reason.removesuffix(": fetched whole"))
    label = f"layer {number}/{n} {layer.digest.short()}"
    built = index_layer(layer, progress.task(label, layer.size), label)
    if isinstance(built, Unindexed):
        return report("not indexed", built.reason.removesuffix(": fetched whole"))
    save_index(store, layer.digest, built)
    return report("built", index=built, size=_index_size(store, layer.digest, built))


def _index_size(store: Store, layer_digest: Digest, index: SeekIndex) -> int:
    """Bytes of the cached index file; of the index serialized again if a ``prune
    --indexes`` removed the file meanwhile."""
    try:
        return index_path(store, layer_digest).stat().st_size
    except FileNotFoundError:
        return len(index.to_bytes())


# -- index push -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushReport:
    """What ``index push`` published."""

    reference: str  # the repository pushed to
    subject: str  # the image manifest's digest
    artifact: str  # the artifact manifest's digest
    layers: tuple[str, ...]  # layer digests whose index it holds
    missing: tuple[str, ...]  # layer digests with no cached index (not published)
    referrers_api: bool  # the registry recorded the subject itself
    tag: str  # the referrers tag updated ("" when the registry has the referrers API)


def push_indexes(
    store: Store,
    ref_text: str,
    options: RegistryOptions,
    *,
    platform: Platform | None = None,
) -> PushReport:
    """Publish the cached seek indexes of ``ref_text``'s layers as one OCI 1.1 artifact
    whose subject is the image manifest, and, where the registry has no referrers API,
    list it in the referrers tag ``sha256-<hex>`` (the spec's fallback: an image index
    of the subject's referrers, kept with what it listed before)."""
    with RegistryClient(options) as client:
        ref, image = open_registry_image(ref_text, platform, client)
        report = _push_one(client, store, ref, image)
        if not report.artifact:
            raise NotFound(
                f"{ref}: no seek index cached for any of its {len(image.layers)} layers; "
                f"run 'snapshotter index build docker://{ref}' first"
            )
        return report


@dataclass(frozen=True, slots=True)
class AllPushReport:
    """What ``index push --all-platforms`` published: one artifact per image of the index
    (``platforms`` pairs each image's platform with its report; a platform with no cached
    index has an empty ``artifact`` and nothing published)."""

    reference: str
    index: str  # the image index's digest ("" when the reference names one image)
    platforms: tuple[tuple[str, PushReport], ...]


def push_all_indexes(store: Store, ref_text: str, options: RegistryOptions) -> AllPushReport:
    """:func:`push_indexes` for every image of the index ``ref_text`` names: one artifact
    per image manifest, each with that manifest as its subject (and, without a referrers
    API, listed in that manifest's referrers tag), so that a lazy mount of any platform
    finds its own.  Fails, publishing nothing, when no image has any index cached."""
    with RegistryClient(options) as client:
        ref, resolved = open_registry_all(ref_text, client)
        if isinstance(resolved, ResolvedIndex):
            images = [(str(image.platform), image.image) for image in resolved.images]
            digest = str(resolved.index_digest)
        else:
            images = [(str(resolved.platform), resolved)]
            digest = ""
        if not any(cached_index(store, layer) for _, image in images for layer in image.layers):
            raise NotFound(
                f"{ref}: no seek index cached for any layer of its {len(images)} images; run "
                f"'snapshotter index build --all-platforms docker://{ref}' first"
            )
        platforms = tuple(
            (platform, _push_one(client, store, ref, image)) for platform, image in images
        )
        return AllPushReport(replace(ref, tag=None, digest=None).repository, digest, platforms)


def _push_one(
    client: RegistryClient, store: Store, ref: Reference, image: ResolvedImage
) -> PushReport:
    """Publish the cached indexes of ``image``'s layers as one artifact with the image
    manifest as subject; with none cached, publish nothing (an empty ``artifact``)."""
    assert image.manifest_bytes is not None  # registries always have one
    subject = Digest.of_bytes(image.manifest_bytes)
    target = replace(ref, tag=None, digest=None)
    entries: list[tuple[LayerSource, bytes]] = []
    missing: list[str] = []
    for layer in image.layers:
        index = cached_index(store, layer)
        if index is None:
            missing.append(str(layer.digest))
            continue
        # the loaded index's own bytes (what save_index wrote): a prune removing the file
        # meanwhile cannot fail the push
        entries.append((layer, index.to_bytes()))
    if not entries:
        return PushReport(target.repository, str(subject), "", (), tuple(missing), False, "")
    config_digest = client.push_blob(target, EMPTY_CONFIG)
    layers_json = []
    for layer, data in entries:
        blob_digest = client.push_blob(target, data)
        layers_json.append(
            {
                "mediaType": INDEX_MEDIA_TYPE,
                "digest": str(blob_digest),
                "size": len(data),
                "annotations": {
                    LAYER_ANNOTATION: str(layer.digest),
                    DIFF_ID_ANNOTATION: str(layer.diff_id),
                },
            }
        )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": MT_EMPTY, "digest": str(config_digest), "size": 2},
        "layers": layers_json,
        "subject": {
            "mediaType": image.manifest_media_type,
            "digest": str(subject),
            "size": len(image.manifest_bytes),
        },
    }
    body = json.dumps(manifest, indent=2).encode()
    artifact = Digest.of_bytes(body)
    _, recorded = client.push_manifest(target, str(artifact), body, MT_OCI_MANIFEST)
    tag = ""
    if not recorded:
        tag = f"{subject.algorithm}-{subject.hex}"
        _update_referrers_tag(client, target, tag, artifact, len(body))
    return PushReport(
        reference=target.repository,
        subject=str(subject),
        artifact=str(artifact),
        layers=tuple(str(layer.digest) for layer, _ in entries),
        missing=tuple(missing),
        referrers_api=recorded,
        tag=tag,
    )


def _update_referrers_tag(
    client: RegistryClient, target: Reference, tag: str, artifact: Digest, size: int
) -> None:
    """Add the artifact to the referrers tag's index (distribution-spec "Pushing Manifests
    with Subject", the tag schema), dropping earlier seek-index artifacts it replaces."""
    manifests: list[object] = []
    try:
        body, media_type, _ = client.manifest(replace(target, tag=tag))
    except NotFound:
        body, media_type = b"", ""
    if media_type == MT_OCI_INDEX:
        doc = json.loads(body)
        listed = doc.get("manifests") if isinstance(doc, dict) else None
        if isinstance(listed, list):
            manifests = [
                m
                for m in listed
                if not (isinstance(m, dict) and m.get("artifactType") == ARTIFACT_TYPE)
            ]
    manifests.append(
        {
            "mediaType": MT_OCI_MANIFEST,
            "digest": str(artifact),
            "size": size,
            "artifactType": ARTIFACT_TYPE,
        }
    )
    index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": manifests}
    client.push_manifest(target, tag, json.dumps(index, indent=2).encode(), MT_OCI_INDEX)


__all__ = [
    "ARTIFACT_TYPE",
    "AllIndexReport",
    "AllPushReport",
    "INDEX_MEDIA_TYPE",
    "LAYER_ANNOTATION",
    "LayerIndexReport",
    "PlatformIndexReport",
    "PushReport",
    "build_all_indexes",
    "build_indexes",
    "cached_index",
    "open_lazy_remote",
    "push_all_indexes",
    "push_indexes",
    "stored_index_source",
]
