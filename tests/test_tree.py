"""Reading stored images without mounting: ``open_tree`` and its cache of merged trees."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import CliResult

from snapshotter.oci.digest import Digest
from snapshotter.store.store import Store
from snapshotter.view.merge import MergedTree, Node
from snapshotter.view.tree import ImageView, open_tree


def pulled(
    tmp_path: Path, cli: Callable[..., CliResult], store_root: Path
) -> Callable[[], ImageView]:
    """Pull a two-layer image; return a function that opens its merged tree."""
    base = LayerBuilder().dir("etc").file("etc/hosts", b"127.0.0.1 localhost\n")
    base.file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", xattrs={"user.k": b"\x00v"})
    base.symlink("bin", "usr/bin").dir("usr").dir("usr/bin").file("usr/bin/sh", b"#!")
    top = LayerBuilder().whiteout("etc/hosts").file("etc/motd", b"hi").hardlink("sh2", "etc/motd")
    layout = tmp_path / "layout"
    write_oci_layout(layout, {"1": ImageBuilder([base, top])})
    result = cli("pull", "-q", f"oci:{layout}:1", "--name", "example.com/explore:1")
    assert result.rc == 0, result.err
    store = Store(store_root)

    def view() -> ImageView:
        record, _ = store.resolve_image(store.read_state(), "example.com/explore:1")
        return open_tree(store, record)

    return view


def listing(tree: MergedTree) -> dict[str, Node]:
    return dict(tree.walk())


def cache_of(view: ImageView, store_root: Path) -> Path:
    return store_root / "merged" / Digest.parse(view.chain_id).hex


def test_the_merged_tree_is_cached_and_read_back(tmp_path, cli, store_root):
    view = pulled(tmp_path, cli, store_root)
    first = view()
    cache = cache_of(first, store_root)
    assert cache.is_file()
    written = cache.stat().st_mtime_ns
    second = view()
    assert cache.stat().st_mtime_ns == written  # read, not rebuilt
    assert listing(second.tree) == listing(first.tree)
    assert set(listing(first.tree)) == {
        "",
        "bin",
        "etc",
        "etc/motd",
        "etc/passwd",
        "sh2",
        "usr",
        "usr/bin",
        "usr/bin/sh",
    }


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda good: b"",
    "truncated": lambda good: good[: len(good) - 3],
    "cut in the header": lambda good: good[:9],
    "a flipped byte": lambda good: good[:100] + bytes([good[100] ^ 1]) + good[101:],
    "garbage of the same size": lambda good: os.urandom(len(good)),
    "version 1 (zstd json)": lambda good: zstandard.ZstdCompressor().compress(
        json.dumps({"version": 1, "nodes": [None], "dirs": {}, "parents": {}}).encode()
    ),
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_cache_is_rebuilt(tmp_path, cli, store_root, damage):
    view = pulled(tmp_path, cli, store_root)
    expected = listing(view().tree)
    cache = cache_of(view(), store_root)
    good = cache.read_bytes()
    cache.write_bytes(damage(good))
    assert listing(view().tree) == expected
    assert cache.read_bytes() == good  # rewritten as it was
    assert sorted(os.listdir(cache.parent)) == [cache.name]  # no temporary left


def test_an_unreadable_cache_is_rebuilt_in_memory(tmp_path, cli, store_root):
    view = pulled(tmp_path, cli, store_root)
    expected = listing(view().tree)
    cache = cache_of(view(), store_root)
    cache.unlink()
    cache.mkdir()  # neither readable as a file nor replaceable by one
    assert listing(view().tree) == expected


def test_pull_builds_the_merged_tree_so_a_first_mount_reads_the_cache(tmp_path, cli, store_root):
    view = pulled(tmp_path, cli, store_root)
    merged = store_root / "merged"
    assert sorted(os.listdir(merged)) == [Digest.parse(view().chain_id).hex]
    written = (merged / os.listdir(merged)[0]).stat().st_mtime_ns
    assert listing(view().tree)["etc/motd"].size == 2
    assert (merged / os.listdir(merged)[0]).stat().st_mtime_ns == written


def test_pull_of_every_platform_builds_each_merged_tree(tmp_path, cli, store_root):
    images = [
        ImageBuilder(
            [LayerBuilder().file("arch", arch.encode()), LayerBuilder().file(arch, b"x")],
            architecture=arch,
        )
        for arch in ("amd64", "arm64")
    ]
    layout = tmp_path / "layout"
    write_oci_layout(layout, {}, index_of={"1": images})
    result = cli("pull", "-q", "--all-platforms", f"oci:{layout}:1", "--name", "example.com/m:1")
    assert result.rc == 0, result.err
    built = sorted(os.listdir(store_root / "merged"))
    store = Store(store_root)
    chains = {open_tree(store, r).chain_id for r in store.read_state().images.values()}
    assert len(chains) == 2
    assert built == sorted(Digest.parse(c).hex for c in chains)
