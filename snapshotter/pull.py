"""``pull``: resolve a source, unpack its missing layers concurrently, commit atomically.

Layers unpack in worker threads (``trio.to_thread``), as many at once as there are cores;
each thread already pipelines decompression against tar parsing.  The first failure stops
the others (they poll a shared event between tar entries), and nothing reaches the store:
staged snapshots live under the store's ``tmp/`` until ``Store.commit_image``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from .digest import Digest
from .errors import SnapshotterError
from .oci import Platform
from .progress import Progress, QuietProgress
from .store import ImageRecord, LayerRecord, Store, now_iso
from .toc import TOC_NAME, Toc
from .transports import LayerSource, ResolvedImage, open_source, synthesize_manifest

if TYPE_CHECKING:
    from .registry import RegistryOptions
from .unpack import unpack_layer


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
        done = await _unpack_layers(store, image, staging.path, progress, jobs)
        layer_digests = [
            (done[lay.diff_id].layer_digest, done[lay.diff_id].blob_size) for lay in image.layers
        ]
        manifest_bytes = image.manifest_bytes or synthesize_manifest(image, layer_digests)
        manifest_digest = Digest.of_bytes(manifest_bytes)
        record = ImageRecord(
            digest=str(manifest_digest),
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
        names = [name] if name else list(image.names)
        staged = {str(d): u.path for d, u in done.items() if u.path is not None}
        moved = await trio.to_thread.run_sync(
            lambda: store.commit_image(
                record,
                names,
                staged,
                {
                    str(manifest_digest): manifest_bytes,
                    str(image.config_digest): image.config_bytes,
                },
                {str(u.layer_digest): str(d) for d, u in done.items()},
            )
        )
    unpacked = sum(1 for u in done.values() if u.path is not None)
    return PullResult(
        digest=str(manifest_digest),
        config=str(image.config_digest),
        names=names,
        moved=moved,
        platform=str(image.platform),
        layers=len(image.layers),
        unpacked=unpacked,
        reused=len(done) - unpacked,
        size=record.size,
        blob_bytes=progress.done_bytes,
        diff_ids=[str(lay.diff_id) for lay in image.layers],
    )


async def _unpack_layers(
    store: Store, image: ResolvedImage, staging: Path, progress: Progress, jobs: int | None
) -> dict[Digest, _Unpacked]:
    done: dict[Digest, _Unpacked] = {}
    unique: dict[Digest, LayerSource] = {}
    for layer in image.layers:
        unique.setdefault(layer.diff_id, layer)
    stop = threading.Event()
    failures: list[BaseException] = []
    limiter = trio.CapacityLimiter(jobs or max(2, os.cpu_count() or 2))
    n = len(image.layers)

    async def one(layer: LayerSource) -> None:
        label = f"layer {layer.index + 1}/{n} {layer.diff_id.short()}"
        try:
            async with limiter:
                if stop.is_set():
                    return
                done[layer.diff_id] = await trio.to_thread.run_sync(
                    _unpack_one,
                    store,
                    image,
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
    image: ResolvedImage,
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


def _hash_blob(layer: LayerSource) -> tuple[Digest, int]:
    h = hashlib.sha256()
    size = 0
    with layer.open() as blob:
        while chunk := blob.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return Digest("sha256", h.hexdigest()), size


__all__ = ["PullResult", "pull", "SnapshotterError"]
