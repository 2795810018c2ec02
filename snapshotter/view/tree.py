"""Reading images out of the store without mounting: merged trees, and what is built on them.

``open_tree`` gives the merged tree of an image (or of its first N layers), built once per
layer chain and cached under ``merged/<chain_id>``, so a second mount or listing only reads
one file.  ``open_lazy_tree`` gives the tree of a lazy image (``lazy.layers.LazyImage``):
indexed layers contribute their seek index's (or TOC's) toc and are read through a
``LayerReader`` (``layer_toc.Reader``), layers fetched whole their snapshot's toc and files;
its tree is cached too, under ``merged/lazy-<key>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidReference, StoreCorrupt
from ..oci.digest import Digest
from ..oci.model import chain_ids
from ..store.store import ImageRecord, Store
from ..store.toc import TOC_NAME, Toc
from .merge import MergedTree, merge

if TYPE_CHECKING:
    from ..lazy.layers import ContentReader, LazyImage


@dataclass(frozen=True, slots=True)
class ImageView:
    """A merged tree and the snapshot directories its nodes' ``layer`` indexes name."""

    tree: MergedTree
    snapshots: tuple[Path, ...]  # base first
    diff_ids: tuple[str, ...]
    chain_id: str
    # Lazy views: per layer, the reader of an indexed layer's files, or None for a layer
    # whose snapshot is in the store.  Empty for a view of a pulled image.
    readers: tuple[ContentReader | None, ...] = ()

    def data_dir(self, layer: int) -> Path:
        return self.snapshots[layer] / "data"

    def reader(self, layer: int) -> ContentReader | None:
        return self.readers[layer] if self.readers else None

    @property
    def lazy(self) -> bool:
        return any(r is not None for r in self.readers)

    def data_path(self, layer: int, data: int) -> Path:
        return self.data_dir(layer) / data_name(data)


def data_name(data: int) -> str:
    """The name of content file ``data`` in its snapshot's ``data_dir``."""
    return f"{data:x}"


def open_tree(store: Store, record: ImageRecord, layers: int | None = None) -> ImageView:
    diff_ids = record.diff_ids
    if layers is not None:
        if not 0 <= layers <= len(diff_ids):
            raise InvalidReference(
                f"image {record.digest}: --layer {layers} is out of range 0..{len(diff_ids)}"
            )
        diff_ids = diff_ids[:layers]
    parsed = [Digest.parse(d) for d in diff_ids]
    snapshots = tuple(store.snapshot_path(d) for d in parsed)
    for d, snap in zip(parsed, snapshots, strict=True):
        if not (snap / TOC_NAME).is_file():
            raise StoreCorrupt(f"image {record.digest}: snapshot {d} is missing from the store")
    chain = str(chain_ids(parsed)[-1]) if parsed else "empty"
    cache = store.root / "merged" / (Digest.parse(chain).hex if parsed else "empty")
    tree = _cached_merge(cache, lambda: [Toc.read(s / TOC_NAME) for s in snapshots])
    return ImageView(tree, snapshots, tuple(diff_ids), chain)


def _cached_merge(cache: Path, tocs: Callable[[], list[Toc]]) -> MergedTree:
    """The merged tree cached at ``cache``, else ``merge(tocs())``, written there (a cache
    file that does not read back whole is rebuilt; one that cannot be written is not)."""
    if cache.is_file():
        with contextlib.suppress(StoreCorrupt):
            return MergedTree.read(cache)
    tree = merge(tocs())
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        tree.write(cache)
    return tree


def open_lazy_tree(store: Store, image: LazyImage, cache_bytes: int | None = None) -> ImageView:
    """The merged view of a lazy image: its indexed layers' tocs from their seek indexes
    or TOCs, the others' from their snapshots (which must be in the store).

    The merged tree is cached under ``merged/`` as a pulled image's is (merging takes
    about 2 s per 100k entries; reading the cache, milliseconds): with no indexed layer it
    is the pulled image's own tree, cached by chain_id; otherwise by ``lazy_merge_key``,
    which names where each layer's toc came from (an index's toc differs from the
    snapshot's in ``blocks``, computed rather than measured)."""
    from ..lazy import layer_toc
    from ..lazy.reader import CACHE_BYTES, InflatedSpans, LayerReader

    spans = InflatedSpans(CACHE_BYTES if cache_bytes is None else cache_bytes)
    tocs: list[Toc] = []
    snapshots: list[Path] = []
    readers: list[ContentReader | None] = []
    for layer in image.layers:
        diff_id = Digest.parse(layer.diff_id)
        snapshot = store.snapshot_path(diff_id)
        snapshots.append(snapshot)
        if layer.index is not None:
            if layer.source is None:
                raise ValueError(f"layer {layer.number}: indexed, but with no source of bytes")
            tocs.append(layer.index.toc)
            if isinstance(layer.index, layer_toc.TocIndex):
                readers.append(layer_toc.Reader(layer.index, layer.source))
            else:
                readers.append(LayerReader(layer.index, layer.source, spans))
            continue
        if not (snapshot / TOC_NAME).is_file():
            raise StoreCorrupt(
                f"{image.label}: layer {layer.number} ({diff_id}) is neither indexed nor "
                "in the store"
            )
        tocs.append(Toc.read(snapshot / TOC_NAME))
        readers.append(None)
    parsed = [Digest.parse(layer.diff_id) for layer in image.layers]
    chain = str(chain_ids(parsed)[-1]) if parsed else "empty"
    if any(r is not None for r in readers):
        name = "lazy-" + lazy_merge_key(image)
    else:
        name = Digest.parse(chain).hex if parsed else "empty"
    tree = _cached_merge(store.root / "merged" / name, lambda: tocs)
    return ImageView(tree, tuple(snapshots), tuple(map(str, parsed)), chain, tuple(readers))


def lazy_merge_key(image: LazyImage) -> str:
    """What a lazy image's merged tree is made of, as a sha256 hex: per layer, its
    snapshot (by diff_id), or its index (seek index or TOC, by blob digest and diff_id,
    and the version of the code that turns either into a toc)."""
    from ..lazy import layer_toc, seek_index

    lines = ["lazy merged tree 1"]
    for layer in image.layers:
        if layer.index is None:
            lines.append(f"snapshot {layer.diff_id}")
        elif isinstance(layer.index, layer_toc.TocIndex):
            lines.append(
                f"{layer.index.format} TOC {layer_toc.TOC_PARSER_VERSION} "
                f"{layer.digest} {layer.diff_id}"
            )
        else:
            lines.append(f"seek index {seek_index.VERSION} {layer.digest} {layer.diff_id}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def merged_cache_names(store: Store) -> list[str]:
    path = store.root / "merged"
    return sorted(os.listdir(path)) if path.is_dir() else []
