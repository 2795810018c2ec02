"""Reading images out of the store without mounting: merged trees, and what is built on them.

``open_tree`` gives the merged tree of an image (or of its first N layers), built once per
layer chain and cached under ``merged/<chain_id>``, so a second mount or listing only reads
one file.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidReference, StoreCorrupt
from ..oci.digest import Digest
from ..oci.model import chain_ids
from ..store.store import ImageRecord, Store
from ..store.toc import TOC_NAME, Toc
from .merge import MergedTree, merge


@dataclass(frozen=True, slots=True)
class ImageView:
    """A merged tree and the snapshot directories its nodes' ``layer`` indexes name."""

    tree: MergedTree
    snapshots: tuple[Path, ...]  # base first
    diff_ids: tuple[str, ...]
    chain_id: str

    def data_dir(self, layer: int) -> Path:
        return self.snapshots[layer] / "data"

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
    tree: MergedTree | None = None
    if cache.is_file():
        with contextlib.suppress(StoreCorrupt):
            tree = MergedTree.read(cache)
    if tree is None:
        tree = merge([Toc.read(s / TOC_NAME) for s in snapshots])
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            tree.write(cache)
    return ImageView(tree, snapshots, tuple(diff_ids), chain)


def merged_cache_names(store: Store) -> list[str]:
    path = store.root / "merged"
    return sorted(os.listdir(path)) if path.is_dir() else []
