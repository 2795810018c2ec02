"""``pull``: resolve a source, unpack its missing layers concurrently, commit atomically.

Layers unpack in worker threads (``trio.to_thread``), as many at once as there are cores;
each thread already pipelines decompression against tar parsing.  The first failure stops
the others (they poll a shared event between tar entries), and nothing reaches the store:
staged snapshots live under the store's ``tmp/`` until ``Store.commit_image``.

``pull_all`` (``pull --all-platforms``) does the same for every image of an index at once:
their layers are unpacked together, each diff_id once, and the index with all its images
is registered in one commit, so a failure anywhere leaves the store as it was.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ..errors import SnapshotterError
from ..oci.digest import Digest
from ..oci.model import INDEX_TYPES, Platform
from ..progress import Progress, QuietProgress
from ..store.store import ImageRecord, IndexEntry, IndexRecord, LayerRecord, Store, now_iso
from ..store.toc import TOC_NAME, Toc
from .transports import (
    LayerSource,
    ResolvedImage,
    ResolvedIndex,
    open_source,
    open_source_all,
    synthesize_manifest,
)

if TYPE_CHECKING:
    from .registry import RegistryOptions
from ..store.unpack import unpack_layer


@dataclass(slots=True)
class PullResult:
    digest: str  # manifest digest
    config: str
    names: list[str]
    moved: list[str]  # names that pointed at another image before
    platform: str
    layers: int
    unpacked: int  # layers unpacked by this pull
    reused: int  # layers already in the store
    size: int  # unpacked bytes of the image
    blob_bytes: int = 0  # compressed bytes read
    diff_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PullAllResult:
    """What ``pull --all-platforms`` did: an index and its images, or one image."""

    digest: str  # index digest, or the manifest digest of a single-image source
    media_type: str
    names: list[str]  # point at ``digest``
    moved: list[str]
    images: list[PullResult]  # index order; ``names`` of each are its own (none for an index)
    skipped: list[str]  # index entries that are not images (attestations, artifacts)
    unpacked: int  # distinct layers unpacked by this pull
    reused: int  # distinct layers already in the store

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


@dataclass(slots=True)
class _Unpacked:
    layer_digest: Digest
    blob_size: int
    unpacked_size: int
    path: Path | None  # staged snapshot dir, or None if the store already had it


async def pull(
    store: Store,
    source: str,
    *,
    name: str | None = None,
    platform: Platform | None = None,
    progress: Progress | None = None,
    jobs: int | None = None,
    registry: RegistryOptions | None = None,
) -> PullResult:
    progress = progress or QuietProgress()
    image = await trio.to_thread.run_sync(open_source, source, platform, registry)
    try:
        return await _pull_resolved(store, image, source, name, progress, jobs)
    finally:
        if image.close is not None:
            image.close()


async def pull_all(
    store: Store,
    source: str,
    *,
    name: str | None = None,
    progress: Progress | None = None,
    jobs: int | None = None,
    registry: RegistryOptions | None = None,
) -> PullAllResult:
    """Pull every image of SOURCE's index (or its one image) and, for an index, the index
    itself, which ``name`` (default: the source's) then points at."""
    progress = progress or QuietProgress()
    resolved = await trio.to_thread.run_sync(open_source_all, source, registry)
    try:
        if isinstance(resolved, ResolvedImage):
            one = await _pull_resolved(store, resolved, source, name, progress, jobs)
            return PullAllResult(
                one.digest,
                resolved.manifest_media_type,
                one.names,
                one.moved,
                [one],
                [],
                one.unpacked,
                one.reused,
            )
        return await _pull_index(store, resolved, source, name, progress, jobs)
    finally:
        if resolved.close is not None:
            resolved.close()


async def _pull_resolved(
    store: Store,
    image: ResolvedImage,
    source: str,
    name: str | None,
    progress: Progress,
    jobs: int | None,
) -> PullResult:
    store.ensure()
    with store.staging() as staging:
        done = await _unpack_layers(store, image.layers, staging.path, progress, jobs)
        record, manifest_bytes = _record(image, done, source)
        names = [name] if name else list(image.names)
        staged = {str(d): u.path for d, u in done.items() if u.path is not None}
        moved = await trio.to_thread.run_sync(
            lambda: store.commit_image(
                record,
                names,
                staged,
                {record.digest: manifest_bytes, record.config: image.config_bytes},
                {str(u.layer_digest): str(d) for d, u in done.items()},
            )
        )
    unpacked = sum(1 for u in done.values() if u.path is not None)
    return _result(image, record, names, moved, unpacked, len(done) - unpacked, progress)


async def _pull_index(
    store: Store,
    index: ResolvedIndex,
    source: str,
    name: str | None,
    progress: Progress,
    jobs: int | None,
) -> PullAllResult:
    store.ensure()
    with store.staging() as staging:
        layers = [layer for item in index.images for layer in item.image.layers]
        done = await _unpack_layers(store, layers, staging.path, progress, jobs)
        records: list[ImageRecord] = []
        blobs = {str(index.index_digest): index.index_bytes}
        for item in index.images:
            record, manifest_bytes = _record(item.image, done, source)
            records.append(record)
            blobs[record.digest] = manifest_bytes
            blobs[record.config] = item.image.config_bytes
        index_record = IndexRecord(
            digest=str(index.index_digest),
            media_type=index.media_type,
            manifests=[
                IndexEntry(r.digest, str(item.platform))
                for r, item in zip(records, index.images, strict=True)
            ],
            pulled=now_iso(),
            source=source,
        )
        names = [name] if name else list(index.names)
        staged = {str(d): u.path for d, u in done.items() if u.path is not None}
        moved = await trio.to_thread.run_sync(
            lambda: store.commit(
                records,
                index_record,
                names,
                staged,
                blobs,
                {str(u.layer_digest): str(d) for d, u in done.items()},
            )
        )
    unpacked = {d for d, u in done.items() if u.path is not None}
    results = [
        _result(
            item.image,
            record,
            [],
            [],
            sum(1 for d in set(record.diff_ids) if Digest.parse(d) in unpacked),
            sum(1 for d in set(record.diff_ids) if Digest.parse(d) not in unpacked),
            progress,
        )
        for item, record in zip(index.images, records, strict=True)
    ]
    return PullAllResult(
        str(index.index_digest),
        index.media_type,
        names,
        moved,
        results,
        list(index.skipped),
        len(unpacked),
        len(done) - len(unpacked),
    )


def _record(
    image: ResolvedImage, done: dict[Digest, _Unpacked], source: str
) -> tuple[ImageRecord, bytes]:
    """The store's record of ``image`` once its layers are unpacked, and its manifest."""
    layer_digests = [
        (done[lay.diff_id].layer_digest, done[lay.diff_id].blob_size) for lay in image.layers
    ]
    manifest_bytes = image.manifest_bytes or synthesize_manifest(image, layer_digests)
    record = ImageRecord(
        digest=str(Digest.of_bytes(manifest_bytes)),
        config=str(image.config_digest),
        media_type=image.manifest_media_type,
        platform=str(image.platform),
        layers=[
            LayerRecord(
                digest=str(done[lay.diff_id].layer_digest),
                diff_id=str(lay.diff_id),
                media_type=lay.media_type,
                size=done[lay.diff_id].blob_size,
                unpacked_size=done[lay.diff_id].unpacked_size,
            )
            for lay in image.layers
        ],
        created=image.config.created,
        pulled=now_iso(),
        source=source,
    )
    return record, manifest_bytes


def _result(
    image: ResolvedImage,
    record: ImageRecord,
    names: list[str],
    moved: list[str],
    unpacked: int,
    reused: int,
    progress: Progress,
) -> PullResult:
    return PullResult(
        digest=record.digest,
        config=record.config,
        names=names,
        moved=moved,
        platform=str(image.platform),
        layers=len(image.layers),
        unpacked=unpacked,
        reused=reused,
        size=record.size,
        blob_bytes=progress.done_bytes,
        diff_ids=record.diff_ids,
    )


async def _unpack_layers(
    store: Store,
    layers: Sequence[LayerSource],
    staging: Path,
    progress: Progress,
    jobs: int | None,
) -> dict[Digest, _Unpacked]:
    """Unpack each distinct diff_id of ``layers`` once (of one image, or several)."""
    done: dict[Digest, _Unpacked] = {}
    unique: dict[Digest, LayerSource] = {}
    for layer in layers:
        unique.setdefault(layer.diff_id, layer)
    stop = threading.Event()
    failures: list[BaseException] = []
    limiter = trio.CapacityLimiter(jobs or max(2, os.cpu_count() or 2))
    n = len(layers)

    async def one(layer: LayerSource) -> None:
        label = f"layer {layer.index + 1}/{n} {layer.diff_id.short()}"
        try:
            async with limiter:
                if stop.is_set():
                    return
                done[layer.diff_id] = await trio.to_thread.run_sync(
                    _unpack_one,
                    store,
                    layer,
                    staging,
                    progress.task(label, layer.size),
                    stop,
                )
        except BaseException as exc:
            stop.set()
            failures.append(exc)
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for layer in unique.values():
            nursery.start_soon(one, layer)
    if failures:
        real = [f for f in failures if not isinstance(f, trio.Cancelled)]
        raise (real or failures)[0]
    return done


def _unpack_one(
    store: Store,
    layer: LayerSource,
    staging: Path,
    advance: object,
    stop: threading.Event,
) -> _Unpacked:
    what = f"layer {layer.index + 1} {layer.digest or layer.diff_id}"
    if store.has_snapshot(layer.diff_id):
        toc = Toc.read(store.snapshot_path(layer.diff_id) / TOC_NAME)
        digest, size = layer.digest, layer.size
        if digest is None or size is None:  # docker-archive: hash the blob for the manifest
            digest, size = _hash_blob(layer)
        return _Unpacked(digest, size, toc.size, None)
    dest = staging / layer.diff_id.hex
    dest.mkdir()
    with layer.open() as blob:
        result = unpack_layer(
            blob,
            dest,
            compression=layer.compression,
            diff_id=layer.diff_id,
            layer_digest=layer.digest,
            blob_size=layer.size,
            what=what,
            progress=advance,  # type: ignore[arg-type]
            cancelled=stop.is_set,
        )
    return _Unpacked(result.layer_digest, result.blob_size, result.toc.size, dest)


def fetch_whole(store: Store, layers: Sequence[LayerSource], progress: Progress) -> None:
    """Unpack ``layers`` into the store as pull does (verified, staged, committed at once)
    without registering an image: the layers of a lazy view that are not worth a seek
    index.  Layers whose snapshot the store has are skipped.  Synchronous, one layer after
    the other (a lazy view has few such layers, and they are small)."""
    store.ensure()
    stop = threading.Event()
    with store.staging() as staging:
        done: dict[Digest, _Unpacked] = {}
        for layer in layers:
            if layer.diff_id in done:
                continue
            label = f"layer {layer.index + 1} {layer.diff_id.short()}"
            done[layer.diff_id] = _unpack_one(
                store, layer, staging.path, progress.task(label, layer.size), stop
            )
        staged = {str(d): u.path for d, u in done.items() if u.path is not None}
        if staged:
            store.commit_snapshots(staged, {str(u.layer_digest): str(d) for d, u in done.items()})


def _hash_blob(layer: LayerSource) -> tuple[Digest, int]:
    h = hashlib.sha256()
    size = 0
    with layer.open() as blob:
        while chunk := blob.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return Digest("sha256", h.hexdigest()), size


__all__ = ["PullAllResult", "PullResult", "fetch_whole", "pull", "pull_all", "SnapshotterError"]
