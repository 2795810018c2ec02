"""The seek index cache in the store: one serialized ``SeekIndex`` per layer blob.

Files live at ``<store root>/indexes/<algorithm>/<hex>`` (the layer blob's digest).  An
index is only ever written whole: serialized into a staging directory under ``tmp/`` (which
a sweep removes if the writer dies) and renamed into place, so a reader sees either no file
or a complete one.  A file that does not load (damaged, truncated, another layer's) is
treated as absent: ``load_index`` returns None and the caller builds the index again and
``save_index`` replaces the file.  The index is trusted as the store's own files are: it
came from a verified pass over the blob, and each span it names is checked on every read.
"""

from __future__ import annotations

import os
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


def save_index(store: Store, layer_digest: str | Digest, index: SeekIndex) -> None:
    """Write ``index`` as the cached seek index of ``layer_digest``, atomically (a reader
    never sees part of it), replacing any file there."""
    if str(index.layer_digest) != str(layer_digest):
        raise ValueError(f"seek index of {index.layer_digest} saved as {layer_digest}")
    path = index_path(store, layer_digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    with store.staging() as staging:
        temp = staging.path / "index"
        _write_synced(temp, index.to_bytes())
        os.rename(temp, path)
    _fsync_dir(path.parent)
