"""One layer -> one snapshot: the layer's own rules, metadata, and hostile input.

Hostile tars form a named table; each case is pulled through the real CLI into a store that
sits beside an ``outside`` directory the layer aims at, and must either be refused with one
clear line (the store unchanged) or be confined (the toc says what the case expects).  In
every case nothing outside the store changes.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import zstandard
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import tree_state

from snapshotter.errors import DigestMismatch, StoreCorrupt, UnsafeArchive
from snapshotter.oci.digest import Digest
from snapshotter.store.toc import EntryKind, Toc, TocEntry
from snapshotter.store.unpack import UnpackResult, unpack_layer

# -- unpack_layer directly -------------------------------------------------------------------


_UNSET: Any = object()


def fresh_dir(tmp_path: Path) -> Path:
    dest = tmp_path / f"snap{len(list(tmp_path.iterdir()))}"
    dest.mkdir()
    return dest


def unpack_blob(
    tmp_path: Path,
    blob: bytes,
    tar: bytes,
    compression: str = "none",
    *,
    diff_id: Digest | None = None,
    layer_digest: Digest | None = _UNSET,
    blob_size: int | None = _UNSET,
    what: str = "layer",
    dest: Path | None = None,
    **options: Any,
) -> UnpackResult:
    """unpack_layer into ``dest`` (default: a fresh directory), the digests and size taken
    from ``tar`` and ``blob`` unless given (``None`` for a source that does not say them)."""
    dest = dest or fresh_dir(tmp_path)
    return unpack_layer(
        io.BytesIO(blob),
        dest,
        compression=compression,
        diff_id=diff_id or Digest.of_bytes(tar),
        layer_digest=Digest.of_bytes(blob) if layer_digest is _UNSET else layer_digest,
        blob_size=len(blob) if blob_size is _UNSET else blob_size,
        what=what,
        **options,
    )


def unpack(tmp_path: Path, layer: LayerBuilder | bytes, compression: str = "none") -> Toc:
    tar = layer if isinstance(layer, bytes) else layer.tar_bytes()
    blob = {
        "none": lambda b: b,
        "gzip": gzip.compress,
        "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    }[compression](tar)
    dest = fresh_dir(tmp_path)
    result = unpack_blob(tmp_path, blob, tar, compression, dest=dest)
    assert Toc.read(dest / "toc.json.zst") == result.toc
    return result.toc


def entries(toc: Toc) -> dict[str, TocEntry]:
    return toc.by_path()


def data(tmp_path: Path, toc: Toc, path: str) -> bytes:
    snap = next(
        p
        for p in tmp_path.iterdir()
        if (p / "toc.json.zst").exists() and Toc.read(p / "toc.json.zst") == toc
    )
    e = entries(toc)[path]
    return (snap / "data" / f"{e.inode:x}").read_bytes() if e.size else b""


def test_every_metadata_field_is_recorded(tmp_path):
    layer = (
        LayerBuilder()
        .dir("bin", mode=0o755, uid=0, gid=0)
        .file("bin/su", b"#!", mode=0o4755, uid=0, gid=0)
        .dir("tmp", mode=0o1777)
        .file("usr/bin/wall", b"w", mode=0o2755, uid=0, gid=5)
        .file("home/u/f", b"x", mode=0o600, uid=1000, gid=1001, mtime=1_600_000_000)
        .file(
            "cap", b"c", xattrs={"security.capability": b"\x01\x00\x00\x02\xff\x00", "user.k": b"v"}
        )
        .symlink("lib", "usr/lib")
        .symlink("abs", "/etc/hostname")
        .chardev("dev/null", 1, 3, mode=0o666)
        .blockdev("dev/sda", 8, 0, mode=0o660, gid=6)
        .fifo("run/fifo", mode=0o600)
    )
    toc = entries(unpack(tmp_path, layer))
    assert toc["bin/su"].mode == 0o4755 and toc["bin/su"].kind is EntryKind.FILE
    assert toc["tmp"].mode == 0o1777 and toc["tmp"].kind is EntryKind.DIR
    assert toc["usr/bin/wall"].mode == 0o2755 and toc["usr/bin/wall"].gid == 5
    assert (toc["home/u/f"].uid, toc["home/u/f"].gid, toc["home/u/f"].mode) == (1000, 1001, 0o600)
    assert toc["home/u/f"].mtime_ns == 1_600_000_000 * 10**9
    assert toc["bin/su"].mtime_ns == 1_700_000_000_123_456_789  # ns survive, never a float
    assert dict(toc["cap"].xattrs) == {
        "security.capability": b"\x01\x00\x00\x02\xff\x00",
        "user.k": b"v",
    }
    assert toc["lib"].link == "usr/lib" and toc["abs"].link == "/etc/hostname"
    assert (toc["dev/null"].kind, toc["dev/null"].rdev_major, toc["dev/null"].rdev_minor) == (
        EntryKind.CHAR,
        1,
        3,
    )
    assert (toc["dev/sda"].kind, toc["dev/sda"].rdev_major) == (EntryKind.BLOCK, 8)
    assert toc["run/fifo"].kind is EntryKind.FIFO
    assert toc["usr"].implied and toc["usr/bin"].implied and not toc["bin"].implied


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_content_round_trips_for_each_compression(tmp_path, compression):
    big = os.urandom(3 << 20)
    toc = unpack(tmp_path, LayerBuilder().file("big", big).file("empty", b""), compression)
    assert data(tmp_path, toc, "big") == big
    assert entries(toc)["empty"].size == 0 and not entries(toc)["empty"].has_data


def test_multi_frame_zstd_and_multi_member_gzip(tmp_path):
    tar = LayerBuilder().file("a", b"1" * 100_000).file("b", b"2" * 100_000).tar_bytes()
    half = len(tar) // 2
    for compression, blob in (
        (
            "zstd",
            b"".join(zstandard.ZstdCompressor().compress(p) for p in (tar[:half], tar[half:])),
        ),
        ("gzip", gzip.compress(tar[:half]) + gzip.compress(tar[half:])),
    ):
        result = unpack_blob(tmp_path, blob, tar, compression)
        assert sorted(result.toc.by_path()) == ["", "a", "b"]


def test_whiteout_never_hides_its_own_layer_in_either_order(tmp_path):
    before = LayerBuilder().file("keep", b"k").whiteout("keep").whiteout("gone")
    after = LayerBuilder().whiteout("keep").file("keep", b"k").whiteout("gone")
    for layer in (before, after):
        toc = entries(unpack(tmp_path, layer))
        assert toc["keep"].kind is EntryKind.FILE
        assert toc["gone"].kind is EntryKind.WHITEOUT


def test_directory_recreated_after_whiteout_in_one_layer_is_opaque(tmp_path):
    # Lower a/ is deleted and made anew: its lower children must not reappear.
    toc = entries(unpack(tmp_path, LayerBuilder().whiteout("a").file("a/new", b"n")))
    assert toc["a"].kind is EntryKind.DIR and toc["a"].opaque
    assert toc["a/new"].kind is EntryKind.FILE


def test_opaque_marker_sets_the_flag_and_is_not_a_file(tmp_path):
    toc = entries(unpack(tmp_path, LayerBuilder().dir("var").opaque("var").file("var/x", b"x")))
    assert toc["var"].opaque
    assert set(toc) == {"", "var", "var/x"}


def test_later_entries_win_and_replace_whole_subtrees(tmp_path):
    layer = (
        LayerBuilder()
        .file("f", b"first")
        .file("f", b"second")
        .file("d/child", b"c")
        .dir("d/sub")
        .file("d", b"now a file")
        .dir("keep", mode=0o700)
        .file("keep/x", b"x")
        .dir("keep", mode=0o755, uid=7)
        .symlink("s", "/etc")
        .dir("s", mode=0o700)
    )
    toc = unpack(tmp_path, layer)
    e = entries(toc)
    assert data(tmp_path, toc, "f") == b"second"
    assert e["d"].kind is EntryKind.FILE and "d/child" not in e and "d/sub" not in e
    assert (e["keep"].mode, e["keep"].uid) == (0o755, 7) and "keep/x" in e
    assert e["s"].kind is EntryKind.DIR and e["s"].mode == 0o700


def test_hardlinks_share_an_inode_and_keep_old_content_when_target_is_replaced(tmp_path):
    layer = LayerBuilder().file("a", b"old").hardlink("b", "a").file("a", b"new")
    toc = unpack(tmp_path, layer)
    e = entries(toc)
    assert e["a"].inode != e["b"].inode
    assert data(tmp_path, toc, "b") == b"old" and data(tmp_path, toc, "a") == b"new"
    toc2 = entries(
        unpack(tmp_path, LayerBuilder().file("x", b"1").hardlink("y", "x").hardlink("z", "y"))
    )
    assert toc2["x"].inode == toc2["y"].inode == toc2["z"].inode


def test_sparse_file_keeps_its_holes(tmp_path):
    size = 64 << 20
    layer = LayerBuilder().sparse_file("sparse", size, {0: b"head", size - 4096: b"tail" * 1024})
    toc = unpack(tmp_path, layer)
    snap = next(p for p in tmp_path.iterdir() if (p / "toc.json.zst").exists())
    path = snap / "data" / f"{entries(toc)['sparse'].inode:x}"
    content = path.read_bytes()
    assert len(content) == size and content[:4] == b"head" and content[-4096:] == b"tail" * 1024
    assert content[4 : size - 4096].count(0) == size - 4100
    assert os.stat(path).st_blocks * 512 < 1 << 20  # holes stay holes on disk


def sha256(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def test_the_toc_records_each_files_content_digest(tmp_path):
    size = 8 << 20
    layer = (
        LayerBuilder()
        .file("a", b"hello")
        .hardlink("b", "a")
        .file("empty", b"")
        .file("big", bytes(range(256)) * 8192)
        .sparse_file("sparse", size, {0: b"head", size - 4096: b"tail" * 1024})
        .dir("d")
        .symlink("l", "a")
        .file("replaced", b"first")
        .file("replaced", b"second")
    )
    got = entries(unpack(tmp_path, layer))
    assert got["a"].digest == got["b"].digest == sha256(b"hello")
    assert got["big"].digest == sha256(bytes(range(256)) * 8192)
    sparse = b"head" + bytes(size - 4100) + b"tail" * 1024
    assert got["sparse"].digest == sha256(sparse)  # holes hash as the zeros they read as
    assert got["replaced"].digest == sha256(b"second")
    # no content, no data file, no digest
    assert got["empty"].digest == got["d"].digest == got["l"].digest == ""


def test_the_toc_records_the_blocks_each_data_file_takes(tmp_path):
    size = 64 << 20
    layer = (
        LayerBuilder()
        .file("small", b"x")
        .hardlink("partner", "small")
        .file("big", bytes(range(256)) * 4096)
        .sparse_file("sparse", size, {0: b"head", size - 4096: b"tail" * 1024})
        .file("empty", b"")
        .symlink("l", "small")
        .dir("d")
        .chardev("c", 1, 3)
    )
    tar = layer.tar_bytes()
    dest = fresh_dir(tmp_path)
    got = entries(unpack_blob(tmp_path, tar, tar, dest=dest).toc)
    for e in got.values():
        if e.has_data:  # what the file system says of the data file
            assert e.blocks == os.stat(dest / "data" / e.data_name()).st_blocks > 0, e.path
        else:
            assert e.blocks == 0, e.path
    assert got["partner"].blocks == got["small"].blocks
    assert got["big"].blocks >= (1 << 20) // 512
    assert got["sparse"].blocks < 64  # two data regions of 4 KiB, not 64 MiB
    assert Toc.read(dest / "toc.json.zst").by_path()["sparse"].blocks == got["sparse"].blocks


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_toc_is_still_read(tmp_path, version):
    """Version 1 has no digests, versions 1 and 2 no blocks: files then take those of
    content without holes."""
    size = 1 << 20
    layer = LayerBuilder().file("a", b"x", mode=0o600).sparse_file("s", size, {0: b"head"})
    toc = unpack(tmp_path, layer.symlink("l", "a").dir("d"))
    rows = [e.to_row()[: 12 + version] for e in toc.entries]
    doc = {"version": version, "diff_id": toc.diff_id, "entries": rows}
    path = tmp_path / "old.toc.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(json.dumps(doc).encode()))
    old = Toc.read(path)
    assert old.by_path()["a"].digest == ("" if version == 1 else toc.by_path()["a"].digest)
    assert (old.by_path()["a"].blocks, old.by_path()["s"].blocks) == (1, size // 512)
    assert {e.blocks for e in old.entries if e.kind is not EntryKind.FILE} == {0}
    plain = [
        replace(
            e,
            digest=e.digest if version > 1 else "",
            blocks=(e.size + 511) // 512 if e.kind is EntryKind.FILE else 0,
        )
        for e in toc.entries
    ]
    assert plain == list(old.entries)
    assert old.entries == tuple(TocEntry.from_row(r) for r in rows)


def write_toc_doc(path: Path, rows: list[Any], version: int = 2) -> Path:
    doc = {"version": version, "diff_id": "sha256:" + "0" * 64, "entries": rows}
    path.write_bytes(zstandard.ZstdCompressor().compress(json.dumps(doc).encode()))
    return path


def test_toc_read_takes_every_row_as_from_row_does(tmp_path):
    # Toc.read sets plain rows slot by slot; anything else must still go through from_row.
    plain = ["a", "-", 0o644, 1, 2, 3, 4, 5, "", 0, 0, 0, 0, "sha256:" + "a" * 64]
    odd_rows = [
        plain,
        ["b", "l", 0o777, 0, 0, 0, 0, 6, "target", 0, 0, 0, 0, ""],
        ["c", "c", True, 0, 0, 0, 0, 7, "", 1, 3, 0, 0, ""],  # a bool is not an int here
        ["d", "-", 0o600, "5", 0, 1.0, 0, 8, "", 0, 0, 0, 0, ""],  # converted as from_row
        ["e", "-", 0o600, 0, 0, 0, 0, 9, "", 0, 0, 0, [["user.k", "dg=="]], ""],  # xattrs
        ["f", "d", 0o755, 0, 0, 0, 0, 10, "", 0, 0, 3, 0, ""],
        ["g", "-", 0o644, 0, 0, 0, 0, 11, "", 0, 0, 0, 0],  # a version 1 row
        [7, "p", 0o644, 0, 0, 0, 0, 12, None, 0, 0, 0, None, None],  # str() of odd values
        [*plain[:13], "", 7],  # version 3: the blocks
    ]
    toc = Toc.read(write_toc_doc(tmp_path / "t.zst", odd_rows))
    expected = tuple(TocEntry.from_row(r) for r in odd_rows)
    assert toc.entries == expected
    for got, want in zip(toc.entries, expected, strict=True):
        assert [type(getattr(got, f)) for f in TocEntry.__slots__] == [
            type(getattr(want, f)) for f in TocEntry.__slots__
        ]
    assert toc.entries[2].mode == 1 and type(toc.entries[2].mode) is int
    assert toc.entries[4].xattrs == (("user.k", b"v"),)
    assert hash(toc.entries[0]) == hash(TocEntry.from_row(plain))
    assert gc.isenabled()  # read with the collector off, which it turns back on
    with pytest.raises(FrozenInstanceError):
        toc.entries[0].mode = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    "row",
    [
        ["a", "z", 0, 0, 0, 0, 0, 1, "", 0, 0, 0, 0, ""],  # unknown kind
        ["a", ["-"], 0, 0, 0, 0, 0, 1, "", 0, 0, 0, 0, ""],  # unhashable kind
        ["a", "-", "x", 0, 0, 0, 0, 1, "", 0, 0, 0, 0, ""],  # not a number
        ["a", "-", None, 0, 0, 0, 0, 1, "", 0, 0, 0, 0, ""],
        ["a", "-", 0, 0, 0, 0, 0, 1, "", 0, 0, 0, 1, ""],  # xattrs must be 0 or a list
        ["a", "-", 0, 0, 0, 0, 0, 1, "", 0, 0, 0, 0, "", "extra"],
        ["a", "-", 0, 0, 0, 0, 0, 1, "", 0, 0, 0, 0, "", -1],  # blocks below 0
        ["a", "-", 0, 0, 0, 0, 0, 1, "", 0, 0, 0, 0, "", True],
        ["a", "-", 0, 0, 0, 0, 0, 1, "", 0, 0, 0, 0, "", 1, 2],
        ["a", "-", 0],
        {"path": "a"},
        "a",
    ],
)
def test_toc_read_refuses_a_bad_row_as_store_corrupt(tmp_path, row):
    with pytest.raises(StoreCorrupt, match="unreadable"):
        Toc.read(write_toc_doc(tmp_path / "t.zst", [row]))
    assert gc.isenabled()


def test_missing_final_padding_is_read_like_go_but_cut_content_is_refused(tmp_path):
    # umoci insert 0.4.7 writes tars without padding or end-of-archive blocks.
    tar = LayerBuilder().file("a", b"x" * 100).tar_bytes()
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        start = tf.getmember("a").offset_data
    unpadded = tar[: start + 100]  # headers + content, nothing after
    toc = unpack(tmp_path, unpadded)
    assert data(tmp_path, toc, "a") == b"x" * 100
    cut = tar[: start + 60]  # the content itself is cut short: never padded into a file
    with pytest.raises(UnsafeArchive, match="cut short"):
        unpack(tmp_path, cut)


def test_whiteouts_below_a_file_of_the_same_layer_are_dropped_in_either_order(tmp_path):
    # umoci repack writes `d` (now a file) and then `d/.wh.child` when a dir becomes a file.
    for layer in (
        LayerBuilder().file("d", b"f").whiteout("d/child").opaque("d"),
        LayerBuilder().whiteout("d/child").file("d", b"f"),
    ):
        toc = entries(unpack(tmp_path, layer))
        assert set(toc) == {"", "d"} and toc["d"].kind is EntryKind.FILE


def test_a_layer_with_too_many_entries_is_refused(tmp_path):
    layer = LayerBuilder()
    for i in range(11):
        layer.file(f"f{i}", b"")
    tar = layer.tar_bytes()
    result = unpack_blob(tmp_path, tar, tar, what="layer 1", max_entries=11)
    assert len(result.toc.entries) == 12  # and the root
    with pytest.raises(UnsafeArchive, match=r"^layer 1: more than 10 entries$"):
        unpack_blob(tmp_path, tar, tar, what="layer 1", max_entries=10)


def test_pax_global_header_and_long_names(tmp_path):
    long_path = "/".join(["d" * 100] * 5) + "/file"
    toc = entries(unpack(tmp_path, LayerBuilder().file(long_path, b"x")))
    assert long_path in toc


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda blob: blob[:-1] + bytes([blob[-1] ^ 1]), "hashes to"),
        (lambda blob: blob + b"\0" * 512, "longer than descriptor"),
    ],
    ids=["flipped-byte", "too-long"],
)
def test_digest_and_size_are_verified(tmp_path, mutate, message):
    tar = LayerBuilder().file("a", b"x" * 5000).tar_bytes()
    blob = gzip.compress(tar)
    with pytest.raises(DigestMismatch, match=message):
        unpack_blob(
            tmp_path,
            mutate(blob),
            tar,
            "gzip",
            layer_digest=Digest.of_bytes(blob),
            blob_size=len(blob),
        )


def test_diff_id_is_verified(tmp_path):
    tar = LayerBuilder().file("a", b"x").tar_bytes()
    with pytest.raises(DigestMismatch, match="rootfs.diff_ids"):
        unpack_blob(tmp_path, tar, tar, diff_id=Digest.of_bytes(b"other"))


def test_corrupt_compressed_data_is_a_clear_error(tmp_path):
    # The diff_id is the right one and the blob's digest is not known (as from a
    # docker-archive), so only the corruption itself can make this fail, and it must say so.
    tar = LayerBuilder().file("a", os.urandom(100_000)).tar_bytes()
    blob = gzip.compress(tar)
    broken = blob[:200] + bytes(100) + blob[300:]
    with pytest.raises(DigestMismatch) as info:
        unpack_blob(
            tmp_path, broken, tar, "gzip", what="layer 1", layer_digest=None, blob_size=None
        )
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("layer 1: cannot decompress (gzip): "), message


def test_memory_stays_flat_with_layer_size(tmp_path):
    """A 1 GiB layer (gzip of mostly zeros) unpacks in a child whose peak RSS stays small."""
    script = r"""
import gzip, hashlib, io, os, resource, sys, tarfile, zlib
from pathlib import Path
from snapshotter.oci.digest import Digest
from snapshotter.store.unpack import UnpackResult, unpack_layer
size = 1 << 30
blob_path = Path(sys.argv[1]) / "layer.gz"
h = hashlib.sha256()
with open(blob_path, "wb") as raw:
    gz = zlib.compressobj(1, zlib.DEFLATED, 31)
    info = tarfile.TarInfo("big"); info.size = size
    header = info.tobuf(tarfile.PAX_FORMAT)
    h.update(header); raw.write(gz.compress(header))
    chunk = b"\x01" * (1 << 20)
    for _ in range(size >> 20):
        h.update(chunk); raw.write(gz.compress(chunk))
    tail = b"\0" * 1024
    h.update(tail); raw.write(gz.compress(tail)); raw.write(gz.flush())
dest = Path(sys.argv[1]) / "snap"; dest.mkdir()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open(blob_path, "rb") as blob:
    unpack_layer(blob, dest, compression="gzip", diff_id=Digest("sha256", h.hexdigest()),
                 layer_digest=None, blob_size=None, what="layer")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base, peak)
"""
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], check=True, capture_output=True, text=True
    ).stdout.split()
    base_kib, peak_kib = int(out[0]), int(out[1])
    assert peak_kib - base_kib < 64 * 1024, f"unpacking 1 GiB grew RSS by {peak_kib - base_kib} KiB"


# -- hostile layers, through the CLI ---------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    name: str
    build: Callable[[Path], LayerBuilder]  # gets the absolute path of the outside directory
    error: str | None  # substring of the one-line error, or None when it must be confined
    check: Callable[[dict[str, TocEntry], Path], None] | None = None


def _no_escape(toc: dict[str, TocEntry], outside: Path) -> None:
    assert all(not p.startswith("/") and ".." not in p.split("/") for p in toc)


HOSTILE = [
    Hostile(
        "dotdot",
        lambda o: LayerBuilder().file("../escape", b"x", raw_name=True),
        "escapes the layer root",
    ),
    Hostile(
        "dotdot-deep",
        lambda o: LayerBuilder().file("a/../../escape", b"x", raw_name=True),
        "escapes",
    ),
    Hostile("dotdot-dir", lambda o: LayerBuilder().dir("../../../tmp", raw_name=True), "escapes"),
    Hostile(
        "absolute-name-confined",
        lambda o: LayerBuilder().file(f"{o}/target", b"pwned", raw_name=True),
        None,
        lambda t, o: _assert(t[f"{o}/target".lstrip("/")].kind is EntryKind.FILE),
    ),
    Hostile(
        "symlink-parent",
        lambda o: LayerBuilder().symlink("evil", str(o)).file("evil/target", b"pwned"),
        "below symlink 'evil'",
    ),
    Hostile(
        "symlink-parent-relative",
        lambda o: LayerBuilder().symlink("evil", "../../../../../../..").file("evil/tmp/x", b"x"),
        "below symlink",
    ),
    Hostile(
        "symlink-chain",
        lambda o: LayerBuilder().symlink("a", "b").symlink("b", "/").file("a/etc/passwd", b"x"),
        "below symlink 'a'",
    ),
    Hostile(
        "file-replaces-symlink",
        lambda o: LayerBuilder().symlink("s", f"{o}/target").file("s", b"pwned", mode=0o777),
        None,
        lambda t, o: _assert(t["s"].kind is EntryKind.FILE and t["s"].size == 5),
    ),
    Hostile(
        "dir-replaces-symlink",  # CVE-2021-32760 / CVE-2021-41089: chmod through a link
        lambda o: LayerBuilder().symlink("s", str(o)).dir("s", mode=0o777),
        None,
        lambda t, o: _assert(t["s"].kind is EntryKind.DIR and t["s"].mode == 0o777),
    ),
    Hostile(
        "hardlink-out",
        lambda o: LayerBuilder().hardlink("h", "../../../../etc/passwd", raw_name=False),
        "escapes",
    ),
    Hostile(
        "hardlink-absolute",
        lambda o: LayerBuilder().hardlink("h", f"{o}/target"),
        "not a file earlier in this layer",
    ),
    Hostile(
        "hardlink-through-symlink",
        lambda o: LayerBuilder().symlink("s", str(o)).hardlink("h", "s/target"),
        "not a file earlier in this layer",
    ),
    Hostile(
        "hardlink-to-directory",
        lambda o: LayerBuilder().dir("d").hardlink("h", "d"),
        "not a file earlier in this layer",
    ),
    Hostile(
        "whiteout-dotdot",
        lambda o: LayerBuilder().file(".wh..", b"", raw_name=True),
        "names no entry",
    ),
    Hostile(
        "whiteout-climbs",
        lambda o: LayerBuilder().file("../.wh.target", b"", raw_name=True),
        "escapes",
    ),
    Hostile(
        "whiteout-under-symlink",
        lambda o: LayerBuilder().symlink("s", str(o)).whiteout("s/target"),
        None,  # the link already hides all of lower s/: the marker is dropped, never followed
        lambda t, o: _assert(t["s"].kind is EntryKind.SYMLINK and set(t) == {"", "s"}),
    ),
    Hostile(
        "name-too-long", lambda o: LayerBuilder().file("a" * 256, b"x"), "longer than 255 bytes"
    ),
    Hostile(
        "root-symlink-dot",
        lambda o: LayerBuilder().symlink(".", str(o), raw_name=True),
        "replace the layer root",
    ),
    Hostile(
        "root-symlink-slash",
        lambda o: LayerBuilder().symlink("/", "/etc", raw_name=True),
        "replace the layer root",
    ),
    Hostile(
        "root-file",
        lambda o: LayerBuilder().file("./", b"x", raw_name=True),
        "replace the layer root",
    ),
    Hostile(  # tarfile would read the whole header into memory
        "huge-pax-header",
        lambda o: LayerBuilder().file("a", b"x", xattrs={"user.big": b"x" * (2 << 20)}),
        "tar header of",
    ),
    Hostile(
        "huge-gnu-long-name",
        lambda o: LayerBuilder(format=tarfile.GNU_FORMAT).file("n" * (2 << 20), b"x"),
        "tar header of",
    ),
    Hostile(
        "device-named-like-host",
        lambda o: LayerBuilder().chardev(f"{o}/target", 1, 3, raw_name=True),
        None,
        _no_escape,
    ),
]


def _assert(condition: bool) -> None:
    assert condition


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    o = tmp_path / "outside"
    o.mkdir(mode=0o755)
    (o / "target").write_bytes(b"original")
    os.chmod(o / "target", 0o644)
    return o


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_hostile_layer_gets_nowhere(case, tmp_path, outside, cli, store_root):
    layout = write_oci_layout(
        tmp_path / "layout", {"t": ImageBuilder(layers=[case.build(outside)], compression="none")}
    )
    # A first image makes the store exist, so "unchanged" compares real content.
    benign = write_oci_layout(
        tmp_path / "benign", {"t": ImageBuilder(layers=[LayerBuilder().file("ok", b"ok")])}
    )
    assert cli("pull", "-q", f"oci:{benign}:t").rc == 0
    everything_else = tmp_path.parent
    watched = {p: tree_state(p) for p in (outside, tmp_path / "layout")}
    store_before = tree_state(store_root)
    etc_passwd = os.stat("/etc/passwd")

    result = cli("pull", "-q", "--json", f"oci:{layout}:t")

    assert {p: tree_state(p) for p in watched} == watched
    assert os.stat("/etc/passwd") == etc_passwd
    assert not (tmp_path / "escape").exists() and not (everything_else / "escape").exists()
    if case.error is not None:
        assert result.rc == 1, result.out
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and case.error in lines[0], result.err
        assert tree_state(store_root) == store_before
    else:
        assert result.rc == 0, result.err
        from snapshotter.store.store import Store

        diff_id = json.loads(result.out)["diff_ids"][0]
        toc = Toc.read(Store(store_root).snapshot_path(Digest.parse(diff_id)) / "toc.json.zst")
        assert case.check is not None
        case.check(toc.by_path(), outside)
        # The snapshot holds only our own files: a toc and data files named by inode.
        snap = Store(store_root).snapshot_path(Digest.parse(diff_id))
        for dirpath, _dirnames, filenames in os.walk(snap):
            rel = Path(dirpath).relative_to(snap)
            assert str(rel) in (".", "data")
            for f in filenames:
                assert (rel / f).as_posix() == "toc.json.zst" or (
                    rel.as_posix() == "data" and all(c in "0123456789abcdef" for c in f)
                )
                assert not os.path.islink(os.path.join(dirpath, f))


def test_absolute_names_are_confined_like_containerd(tmp_path):
    toc = entries(unpack(tmp_path, LayerBuilder().file("/etc/passwd", b"x", raw_name=True)))
    assert toc["etc/passwd"].kind is EntryKind.FILE
