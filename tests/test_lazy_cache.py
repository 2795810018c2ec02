"""The seek index cache in the store (snapshotter.lazy.cache)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

from builders import LayerBuilder

from snapshotter.lazy import SeekIndex, build_index
from snapshotter.lazy.cache import index_path, load_index, save_index
from snapshotter.oci.digest import Digest
from snapshotter.store.store import Store

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _index() -> SeekIndex:
    layer = LayerBuilder().file("etc/hostname", b"lazy\n").file("big", bytes(200_000))
    tar = layer.tar_bytes()
    blob = gzip.compress(tar, mtime=0)
    index = build_index(
        io.BytesIO(blob).read,
        Digest.of_bytes(blob),
        Digest.of_bytes(tar),
        GZIP,
        span=64 << 10,
        min_layer_size=0,
    )
    assert isinstance(index, SeekIndex)
    return index


def test_an_index_round_trips_and_a_damaged_one_is_none(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    index = _index()
    digest = str(index.layer_digest)
    assert load_index(store, digest) is None
    save_index(store, digest, index)
    path = index_path(store, digest)
    assert path == store.root / "indexes" / "sha256" / index.layer_digest.hex
    loaded = load_index(store, digest)
    assert loaded is not None and loaded.to_bytes() == index.to_bytes()
    # Nothing else is left behind: no temp file beside it, no staging under tmp/.
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert [p for p in store.tmp.iterdir()] == []

    path.write_bytes(path.read_bytes()[:-20])  # truncated
    assert load_index(store, digest) is None
    save_index(store, digest, index)  # rewritten
    assert load_index(store, digest) is not None

    other = "sha256:" + "0" * 64  # a file holding another layer's index
    index_path(store, other).write_bytes(index.to_bytes())
    assert load_index(store, other) is None
