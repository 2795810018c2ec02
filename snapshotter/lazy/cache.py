"""The seek index cache in the store: one serialized ``SeekIndex`` per layer blob.

Files live at ``<store root>/indexes/<algorithm>/<hex>`` (the layer blob's digest).  An
index is only ever written whole: serialized into a staging directory under ``tmp/`` (which
a sweep removes if the writer dies) and renamed into place, so a reader sees either no file
or a complete one.  A file that does not load (damaged, truncated, another layer's) is
treated as absent: ``load_index`` returns None and the caller builds the index again and
``save_index`` replaces the file.  The index is trusted as the store's own files are: it
came from a verified pass over the blob, and each span it names is checked on every read.

``clear_caches`` (``prune --indexes``, ``prune -a``) empties this cache and the span cache
(``lazy.spans``): both are rebuilt on demand.  Live lazy mounts are unharmed: a view loads
its indexes into memory when it opens, and a span file that vanishes is a cache miss,
fetched again.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreCorrupt
from ..oci.digest import Digest
from ..store.store import Store, _fsync_dir, _write_synced
from .seek_index import SeekIndex

INDEXES = "indexes"


def index_path(store: Store, layer_digest: str | Digest) -> Path:
    digest = Digest.parse(str(layer_digest), "layer digest")
    return store.root / INDEXES / digest.algorithm / digest.hex


def load_index(store: Store, layer_digest: str | Digest) -> SeekIndex | None:
    """The cached seek index of the layer blob ``layer_digest``, or None when there is
    none or the file is damaged (it is then left for ``save_index`` to replace)."""
    path = index_path(store, layer_digest)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        index = SeekIndex.from_bytes(data, f"seek index {path}")
    except StoreCorrupt:
        return None
    if str(index.layer_digest) != str(layer_digest):
        return None
    return index


def save_index(
    store: Store, layer_digest: str | Digest, index: SeekIndex, serialized: bytes | None = None
) -> None:
    """Write ``index`` as the cached seek index of ``layer_digest``, atomically (a reader
    never sees part of it), replacing any file there.  ``serialized``: the bytes ``index``
    was loaded from (a published index, as fetched), written as they are rather than
    serialized again (which costs a zstd compression of the whole toc)."""
    if str(index.layer_digest) != str(layer_digest):
        raise ValueError(f"seek index of {index.layer_digest} saved as {layer_digest}")
    path = index_path(store, layer_digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    with store.staging() as staging:
        temp = staging.path / "index"
        _write_synced(temp, index.to_bytes() if serialized is None else serialized)
        os.rename(temp, path)
    _fsync_dir(path.parent)


@dataclass(frozen=True, slots=True)
class CacheReport:
    """What ``clear_caches`` removed."""

    indexes: list[str]  # layer digests whose cached seek index was removed
    spans: int  # span files removed
    freed: int  # bytes


def clear_caches(store: Store) -> CacheReport:
    """Remove every cached seek index and every cached span of the store.

    Call inside ``store.locked()``.  Only finished files go: directories stay, and so do
    the span cache's ``.tmp-*`` files that a reader is writing (it renames one into place
    next), so that a lazy mount reading meanwhile sees misses and fetches again, never an
    error.  Index writers stage under ``tmp/`` and rename: a file they rename in after
    this pass is simply kept."""
    from .spans import SPANS

    indexes: list[str] = []
    spans = 0
    freed = 0
    for algorithm_dir in _dirs(store.root / INDEXES):
        for entry in _files(algorithm_dir):
            size = _remove(entry)
            if size is not None:
                freed += size
                indexes.append(f"{algorithm_dir.name}:{entry.name}")
    for algorithm_dir in _dirs(store.root / SPANS):
        for entry in _files(algorithm_dir):
            if not entry.name.startswith("."):
                size = _remove(entry)
                if size is not None:
                    freed += size
                    spans += 1
    return CacheReport(sorted(indexes), spans, freed)


def _dirs(path: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _files(path: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(path) if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _remove(path: Path) -> int | None:
    """Unlink ``path``; its size, or None if it was gone already (a span cache's eviction
    in another process)."""
    with contextlib.suppress(FileNotFoundError):
        size = path.stat().st_size
        path.unlink()
        return size
    return None
