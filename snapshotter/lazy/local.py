"""Lazy images from an OCI image layout on this machine (``oci:DIR[:TAG]``).

``open_lazy_layout`` resolves the layout as ``pull`` does (``sources.transports``: the
manifest and config verified against their digests, the platform picked from an index),
then readies each layer for a lazy view, base first:

- its snapshot is already in the store (a pull, or an earlier lazy mount, unpacked it):
  nothing to do; the view reads the snapshot's files;
- not worth indexing (``seek_index.not_worth_indexing``: under 10 MiB): unpacked into the
  store the normal way (``sources.pull``'s unpack of one layer, then
  ``Store.commit_snapshots``);
- a seek index cached in the store (``lazy.cache``) for that blob and diff_id: used;
- else one verified pass over the blob builds it (``build_index``) and it is cached; a
  layer the pass finds not worth it (single-frame zstd) is then unpacked instead.

An indexed layer's bytes come from its blob file through ``LocalBlob``.  Every layer the
view will read whole is in the store before this returns, and staged snapshots are
committed together, so a failure leaves the store as it was (but for cached indexes,
each complete in itself).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from ..errors import InvalidReference, NotFound, SnapshotterError
from ..oci.digest import Digest
from ..oci.model import Platform
from ..progress import Progress, QuietProgress
from ..sources.pull import _unpack_one
from ..sources.transports import LayerSource, SourceRef, open_source, synthesize_manifest
from ..store.store import Store
from ..text import human_size
from . import estargz
from .cache import load_index, save_index
from .layers import LazyImage, LazyLayer
from .seek_index import MIN_LAYER_SIZE, SeekIndex, Unindexed, build_index, not_worth_indexing


class LocalBlob:
    """A ``RangeSource`` over a blob file: ``pread`` of the closed range asked for.

    The descriptor is opened once and shared by every thread and by the processes a mount
    daemon forks (``pread`` keeps no file offset), so it is safe wherever the view runs."""

    def __init__(self, path: Path | str, *, fd: int | None = None, start: int = 0, size: int = -1):
        """The file at ``path``; or, given ``fd`` (duplicated), ``size`` bytes of it from
        ``start``: a layer inside an archive (``path`` then only names it)."""
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC) if fd is None else os.dup(fd)
        self._start = start
        self._size = os.fstat(self._fd).st_size - start if size < 0 else size

    @property
    def size(self) -> int:
        return self._size

    @property
    def start(self) -> int:
        """Where the blob starts in its file (0 but for a blob inside an archive)."""
        return self._start

    def fileno(self) -> int:
        return self._fd

    def read_range(self, first: int, last: int) -> bytes:
        if not 0 <= first <= last:
            raise ValueError(f"range {first}-{last}: not a closed range of a blob")
        want = min(last + 1, self._size) - first
        pieces: list[bytes] = []
        at = self._start + first
        try:
            while want > 0:
                chunk = os.pread(self._fd, want, at)
                if not chunk:
                    break  # the blob ends
                pieces.append(chunk)
                at += len(chunk)
                want -= len(chunk)
        except OSError as exc:
            raise SnapshotterError(
                f"{self.path}: bytes {first}-{last}: {exc.strerror or exc}"
            ) from exc
        return b"".join(pieces)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


LAZY_TRANSPORTS = ("oci", "oci-archive", "docker-archive")


def open_lazy_layout(
    store: Store,
    text: str,
    progress: Progress | None = None,
    *,
    platform: Platform | None = None,
    min_layer_size: int = MIN_LAYER_SIZE,
) -> LazyImage:
    """The lazy image of ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]`` or
    ``docker-archive:FILE[:NAME]``, every layer readied (see the module doc): a layer blob
    is read where it lies, in the layout's file or in the archive (in its decompressed copy,
    for a ``docker save | gzip`` archive).  ``min_layer_size`` is the smallest blob worth a
    seek index (tests index tiny ones)."""
    src = SourceRef.parse(text)
    if src.transport not in LAZY_TRANSPORTS:
        raise InvalidReference(
            f"source {text!r}: a lazy mount reads oci:DIR[:TAG], oci-archive:FILE[:TAG], "
            f"docker-archive:FILE[:NAME] or docker://REF, not {src}"
        )
    progress = progress or QuietProgress()
    image = open_source(text, platform)
    n = len(image.layers)
    ready: list[LazyLayer | None] = [None] * n
    whole: list[tuple[LayerSource, str]] = []
    store.ensure()
    for layer in image.layers:
        number = layer.index + 1
        blob = _blob(layer, text, number)
        # A docker save names no blob digests: an uncompressed blob is its tar (its digest
        # is the diff_id); a compressed one is hashed here, where it lies.
        digest = layer.digest or (layer.diff_id if layer.compression == "none" else _hash(blob))
        layer = replace(layer, digest=digest, size=blob.size)
        if store.has_snapshot(layer.diff_id):
            blob.close()
            ready[layer.index] = _whole(layer, "in the store already (unpacked)")
            continue
        toc_index = _estargz(blob, layer, number)
        if toc_index is not None:
            ready[layer.index] = toc_index
            continue
        reason = not_worth_indexing(layer.media_type, blob.size, min_layer_size)
        if reason:
            blob.close()
            whole.append((layer, f"fetched whole: {reason.removesuffix(': fetched whole')}"))
            continue
        index = load_index(store, digest)
        how = "indexed (cache)"
        if index is None or index.diff_id != layer.diff_id or index.blob_size != blob.size:
            began = time.monotonic()
            task = progress.task(f"index layer {number}/{n}", blob.size)
            # (min_layer_size: the caller decided the layer is worth it)
            built = index_layer(layer, task, f"layer {number} {digest}", min_layer_size=0)
            if isinstance(built, Unindexed):
                blob.close()
                whole.append((layer, f"fetched whole: {built.reason}"))
                continue
            index = built
            save_index(store, digest, index)
            how = (
                f"indexed (built: 1 pass, {human_size(blob.size)} "
                f"in {time.monotonic() - began:.1f}s)"
            )
        ready[layer.index] = _indexed(layer, index, blob, how)
    fetch_whole(store, [layer for layer, _ in whole], progress)
    for layer, how in whole:
        ready[layer.index] = _whole(layer, how)
    layers = tuple(r for r in ready if r is not None)
    assert len(layers) == n
    manifest = image.manifest_bytes or synthesize_manifest(
        image, [(Digest.parse(layer.digest), layer.size) for layer in layers]
    )
    return LazyImage(text, str(Digest.of_bytes(manifest)), image.config_bytes, layers)


def _hash(blob: LocalBlob) -> Digest:
    """The digest of a blob no manifest names (one read of it)."""
    h = hashlib.sha256()
    step = 1 << 20
    for first in range(0, blob.size, step):
        h.update(blob.read_range(first, min(first + step, blob.size) - 1))
    return Digest.parse(f"sha256:{h.hexdigest()}")


def _blob(layer: LayerSource, text: str, number: int) -> LocalBlob:
    """The layer's blob where the source keeps it, read by ranges."""
    try:
        section = layer.open()
    except OSError as exc:
        raise NotFound(f"{text}: layer {number} blob: {exc.strerror or exc}") from exc
    try:
        fileno = getattr(section, "fileno", None)
        start, size = getattr(section, "start", None), getattr(section, "size", None)
        if fileno is None or not isinstance(start, int) or not isinstance(size, int):
            raise InvalidReference(f"{text}: layer {number} cannot be read by ranges")
        return LocalBlob(f"{text} layer {number}", fd=fileno(), start=start, size=size)
    finally:
        close = getattr(section, "close", None)
        if close is not None:
            close()


def _indexed(
    layer: LayerSource, index: SeekIndex | estargz.EStargzIndex, blob: LocalBlob, how: str
) -> LazyLayer:
    return LazyLayer(
        number=layer.index + 1,
        digest=str(layer.digest),
        diff_id=str(layer.diff_id),
        media_type=layer.media_type,
        size=blob.size,
        index=index,
        source=blob,
        how=how,
    )


def _estargz(blob: LocalBlob, layer: LayerSource, number: int) -> LazyLayer | None:
    """An eStargz layer, indexed by its own TOC (whatever its size: one read of its
    tail); None for any other layer."""
    if estargz.TOC_DIGEST_ANNOTATION not in layer.annotations:
        return None
    what = f"layer {number} {layer.digest}"
    index = estargz.layer_index(layer.annotations, blob, str(layer.diff_id), what)
    if index is None:
        return None
    return _indexed(
        layer, index, blob, f"indexed (eStargz TOC: {human_size(index.toc_bytes)} read)"
    )


def _whole(layer: LayerSource, how: str) -> LazyLayer:
    return LazyLayer(
        number=layer.index + 1,
        digest=str(layer.digest),
        diff_id=str(layer.diff_id),
        media_type=layer.media_type,
        size=layer.size or 0,
        index=None,
        source=None,
        how=how,
    )


def index_layer(
    layer: LayerSource,
    advance: Callable[[int], None],
    what: str,
    min_layer_size: int = MIN_LAYER_SIZE,
) -> SeekIndex | Unindexed:
    """One verified streaming pass over the layer's blob (through its opener, wherever
    the source keeps it: a layout, an archive, a registry) that builds its seek index;
    ``advance`` is told of every byte read."""
    assert layer.digest is not None
    with layer.open() as blob:

        def read(k: int) -> bytes:
            data = blob.read(k)
            advance(len(data))
            return data

        return build_index(
            read,
            layer.digest,
            layer.diff_id,
            layer.media_type,
            blob_size=layer.size,
            what=what,
            min_layer_size=min_layer_size,
        )


def fetch_whole(store: Store, layers: Sequence[LayerSource], progress: Progress) -> None:
    """Unpack ``layers`` into the store as ``pull`` unpacks a layer (verified, staged under
    ``tmp/``), then commit their snapshots together (``Store.commit_snapshots``): all of
    them are in the store afterwards, or none."""
    if not layers:
        return
    n = len(layers)
    with store.staging() as staging:
        staged: dict[str, Path] = {}
        layer_map: dict[str, str] = {}
        for layer in layers:
            label = f"layer {layer.index + 1}/{n} {layer.diff_id.short()}"
            done = _unpack_one(
                store, layer, staging.path, progress.task(label, layer.size), threading.Event()
            )
            if done.path is not None:
                staged[str(layer.diff_id)] = done.path
            layer_map[str(done.layer_digest)] = str(layer.diff_id)
        store.commit_snapshots(staged, layer_map)
