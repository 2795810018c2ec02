"""One planner for every lazy mount: how each layer of an image will be read.

``plan_layers`` readies an image's layers, base first, wherever their blobs are (a layout
or archive on this machine, ``lazy.local``; a registry, ``lazy.remote``), through a
``LayerAccess`` that says how to reach them.  Per layer, the first of these that applies:

1. its snapshot is already in the store (a pull or an earlier mount unpacked it);
2. a seek index in the store's cache (``lazy.cache``) for this blob, diff_id, media type
   and size;
3. a seek index published beside the image (registries only: an OCI referrer);
4. a TOC the layer carries itself, read with one closed request (eStargz,
   ``lazy.estargz``; zstd:chunked, ``lazy.zstd_chunked``);
5. not worth indexing (under 10 MiB, a media type we do not read lazily): fetched whole;
6. the source cannot serve ranges (a registry that answers a first closed Range request,
   of two bytes or of a zstd layer's tail, with 200): fetched whole;
7. a zstd layer's seek table (seekable zstd, ``lazy.seekable_zstd``: in that tail) that
   shows a single frame, or none past the first span: fetched whole, with no pass;
8. one verified pass over the blob builds the seek index (and caches it), checking a seek
   table's frames as it goes; a layer the pass finds not worth it (single-frame zstd with
   no seek table to say so before) is fetched whole.

Layers fetched whole are unpacked as ``pull`` unpacks them and committed together
(``sources.pull.fetch_whole``), so a failure leaves the store as it was, but for cached
indexes, each complete in itself.  Each layer's ``how`` says which step readied it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import RangeNotSupported
from ..progress import Progress
from ..sources.pull import fetch_whole
from ..sources.transports import LayerSource
from ..store.store import Store
from ..text import human_size
from . import estargz, zstd_chunked
from .cache import load_index, save_index
from .layer_toc import TocIndex
from .layers import LazyLayer, RangeSource
from .seek_index import MIN_LAYER_SIZE, SeekIndex, Unindexed, build_index, not_worth_indexing
from .seekable_zstd import SeekTable, read_seek_table

IN_STORE = "in the store already (unpacked)"


class LayerAccess(Protocol):
    """How the planner reaches one source's layer blobs.  (Whether they can be read by
    ranges shows in the first range read: a registry raises ``RangeNotSupported``.)"""

    def open(self, layer: LayerSource) -> tuple[LayerSource, RangeSource]:
        """The layer with its digest and size filled in (a docker save names neither) and
        its blob read by closed ranges (opened, not yet read)."""
        ...

    def published(self, layer: LayerSource) -> tuple[SeekIndex, bytes] | None:
        """A seek index published for this layer beside the image, checked against it,
        and the bytes it was loaded from; None where the source has none (or publishes
        none)."""
        ...

    def view_source(
        self, layer: LayerSource, index: SeekIndex | TocIndex, blob: RangeSource
    ) -> RangeSource:
        """Where the view reads an indexed layer's bytes (the blob, or a cache over it)."""
        ...


def matches(index: SeekIndex, layer: LayerSource) -> bool:
    """Whether ``index`` is this layer's: digest, diff_id, media type and size agree."""
    return (
        layer.digest is not None
        and index.layer_digest == layer.digest
        and index.diff_id == layer.diff_id
        and index.media_type == layer.media_type
        and (layer.size is None or index.blob_size == layer.size)
    )


def cached_index(store: Store, layer: LayerSource) -> SeekIndex | None:
    """The store's cached index of ``layer``, if it is this layer's."""
    if layer.digest is None:
        return None
    index = load_index(store, layer.digest)
    return index if index is not None and matches(index, layer) else None


def carried_toc(layer: LayerSource, blob: RangeSource, what: str) -> TocIndex | None:
    """The layer's index from a TOC it carries (eStargz, zstd:chunked), when its
    descriptor vouches for one and the blob holds it; None otherwise."""
    try:
        if estargz.TOC_DIGEST_ANNOTATION in layer.annotations:
            return estargz.layer_index(layer.annotations, blob, str(layer.diff_id), what)
        return zstd_chunked.layer_index(
            layer.annotations, layer.media_type, blob, str(layer.diff_id), what
        )
    except RangeNotSupported:
        return None


@dataclass(slots=True)
class _Ready:
    layer: LayerSource
    index: SeekIndex | TocIndex | None
    blob: RangeSource | None
    how: str
    fetch: bool = False  # to be fetched whole into the store (``_whole``)


def plan_layers(
    store: Store,
    layers: Sequence[LayerSource],
    access: LayerAccess,
    progress: Progress,
    *,
    min_layer_size: int = MIN_LAYER_SIZE,
) -> tuple[LazyLayer, ...]:
    """Every layer readied for a lazy view, base first (see the module doc).
    ``min_layer_size`` is the smallest blob worth a seek index (tests index tiny ones)."""
    n = len(layers)
    ready: list[_Ready] = []
    whole: list[LayerSource] = []
    store.ensure()
    try:
        for layer in layers:
            layer, blob = access.open(layer)
            assert layer.digest is not None and layer.size is not None
            what = f"layer {layer.index + 1}/{n} {layer.digest.short()}"
            try:
                found = _plan_one(store, layer, blob, access, progress, what, min_layer_size)
            except BaseException:
                _release(blob)
                raise
            if found.index is None:
                _release(blob)
                found.blob = None
            if found.fetch:
                whole.append(layer)
            ready.append(found)
        fetch_whole(store, whole, progress)
    except BaseException:
        for r in ready:
            if r.blob is not None:
                _release(r.blob)
        raise
    out = []
    for r in ready:
        layer = r.layer
        assert layer.digest is not None and layer.size is not None
        source = None
        if r.index is not None:
            assert r.blob is not None
            source = access.view_source(layer, r.index, r.blob)
        out.append(
            LazyLayer(
                number=layer.index + 1,
                digest=str(layer.digest),
                diff_id=str(layer.diff_id),
                media_type=layer.media_type,
                size=layer.size,
                index=r.index,
                source=source,
                how=r.how,
            )
        )
    return tuple(out)


def _plan_one(
    store: Store,
    layer: LayerSource,
    blob: RangeSource,
    access: LayerAccess,
    progress: Progress,
    what: str,
    min_layer_size: int,
) -> _Ready:
    assert layer.digest is not None and layer.size is not None
    if store.has_snapshot(layer.diff_id):
        return _Ready(layer, None, None, IN_STORE)
    index = cached_index(store, layer)
    if index is not None:
        return _Ready(layer, index, blob, "indexed (cache)")
    published = access.published(layer)
    if published is not None:
        index, serialized = published
        save_index(store, layer.digest, index, serialized)
        return _Ready(layer, index, blob, "indexed (referrer)")
    toc = carried_toc(layer, blob, what)
    if toc is not None:
        return _Ready(
            layer, toc, blob, f"indexed ({toc.format} TOC: {human_size(toc.toc_bytes)} read)"
        )
    reason = not_worth_indexing(layer.media_type, layer.size, min_layer_size)
    if reason:
        return _whole(layer, reason)
    # A first closed range read: it shows whether the source serves ranges at all (a
    # registry may answer 200), and for zstd it is the tail, where a seek table would be.
    table = None
    seekable = ""
    try:
        if layer.compression == "zstd":
            table = read_seek_table(blob, what)
        else:
            blob.read_range(0, 1)  # (for a registry, resolves and caches the CDN location)
    except RangeNotSupported:
        return _whole(layer, "the registry ignores Range")
    if table is not None:
        seekable = f"; seek table of {len(table.frames)} frames"
        reason = not_worth_indexing(layer.media_type, layer.size, 0, frames=table)
        if reason:
            return _whole(layer, reason + " (its seek table says)")
    began = time.monotonic()
    progress.note(f"{what}: no seek index; building it (one pass over the blob)")
    # (min_layer_size: the layer was found worth it above)
    built = index_layer(
        layer, progress.task(what, layer.size), what, min_layer_size=0, frames=table
    )
    if isinstance(built, Unindexed):
        return _whole(layer, built.reason)
    save_index(store, layer.digest, built)
    took = time.monotonic() - began
    size = human_size(layer.size)
    return _Ready(layer, built, blob, f"indexed (built: 1 pass, {size} in {took:.1f}s{seekable})")


def _whole(layer: LayerSource, reason: str) -> _Ready:
    """The layer is to be fetched whole, for ``reason``."""
    how = "fetched whole: " + reason.removesuffix(": fetched whole")
    return _Ready(layer, None, None, how, fetch=True)


def _release(blob: RangeSource) -> None:
    close = getattr(blob, "close", None)
    if close is not None:
        close()


def index_layer(
    layer: LayerSource,
    advance: Callable[[int], None],
    what: str,
    min_layer_size: int = MIN_LAYER_SIZE,
    frames: SeekTable | None = None,
) -> SeekIndex | Unindexed:
    """One verified streaming pass over the layer's blob (through its opener, wherever
    the source keeps it: a layout, an archive, a registry) that builds its seek index,
    checking a seek table's frames (``frames``) when the blob has one; ``advance`` is
    told of every byte read."""
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
            frames=frames,
        )


__all__ = [
    "IN_STORE",
    "LayerAccess",
    "cached_index",
    "carried_toc",
    "index_layer",
    "matches",
    "plan_layers",
]
