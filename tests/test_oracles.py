"""Images made by independent tools (umoci, skopeo), checked against independent readers.

A directory tree built here (every file type, special mode bits, foreign owners, xattrs,
hardlinks) becomes three layers with ``umoci repack``, whose later layers delete files and
directories (umoci writes ``.wh.`` whiteouts), replace a directory by a file and a file by
a directory, modify files and change a directory's mode; ``umoci insert --opaque`` adds a
fourth layer with an opaque marker.  Then:

1. every layer of our snapshot equals GNU tar's extraction of the same blob;
2. ``skopeo copy`` of that image to every transport we read pulls to the same image id and
   diff_ids, sharing the snapshots; the zstd copy also matches GNU tar layer by layer;
3. the image mounted (a real FUSE mount of the merged view) equals ``umoci unpack``'s
   rootfs, entry by entry.

umoci writes whole-second mtimes (Go's archive/tar rounds them when no format is forced),
so the nanoseconds set below do not reach the layers; nanosecond mtimes are covered by the
builder-made layers of other tests.  Two kinds of umoci layer that umoci itself reads but
we once refused are at the end.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import need_root, need_tool
from oracle import Node, assert_same_tree, decompress_to, gnu_tar_tree, oci_layers, snapshot_tree
from test_fusefs import Seen, compare, mounted, need_fuse, walk

from snapshotter.oci.digest import Digest
from snapshotter.store.store import Store

TAG = "t"
LAYERS = 4
NS = 1_600_000_000_123_456_789  # a base mtime with a nanosecond part


def _bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _write(path: Path, data: bytes, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chown(path, *owner)
    os.chmod(path, mode)  # after chown, which clears setuid/setgid
    os.utime(path, ns=(NS, NS + len(data)))


def _layer1(r: Path) -> None:
    """The base: every kind of entry."""
    _write(r / "etc/hostname", b"box\n")
    os.setxattr(r / "etc/hostname", "user.comment", b"hello")
    os.setxattr(r / "etc/hostname", "trusted.blob", b"\x00\xff\x01binary")
    _write(r / "bin/tool", _bytes(65536, 1), 0o4755)  # setuid
    _write(r / "bin/sgid", _bytes(1000, 2), 0o2711, (0, 42))  # setgid file
    _write(r / "big.bin", _bytes(3 * 1024 * 1024, 3))
    _write(r / "empty", b"")
    _write(r / "a/b/c/d/deep.txt", b"deep\n", 0o600)
    _write(r / "home/user/.profile", b"PATH=/bin\n", 0o640, (1000, 1000))
    _write(r / "home/nobody/file", b"nobody\n", 0o644, (65534, 65533))
    os.chown(r / "home/user", 1000, 1000)
    os.chmod(r / "home/user", 0o700)
    (r / "srv/share").mkdir(parents=True)
    os.chown(r / "srv/share", 1000, 100)
    os.chmod(r / "srv/share", 0o2775)  # setgid directory
    os.setxattr(r / "srv/share", "user.dir", b"on a directory")
    (r / "tmp").mkdir()
    os.chmod(r / "tmp", 0o1777)  # sticky
    (r / "links").mkdir()
    os.symlink("../etc/hostname", r / "links/rel")
    os.symlink("/etc/hostname", r / "links/abs")
    os.symlink("/does/not/exist", r / "links/dangling")
    os.lchown(r / "links/rel", 7, 8)
    _write(r / "hard/one", b"shared content\n", 0o664)
    os.link(r / "hard/one", r / "hard/two")
    (r / "dev").mkdir()
    os.mkfifo(r / "dev/fifo")
    os.chmod(r / "dev/fifo", 0o620)
    os.mknod(r / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(r / "dev/null", 0o666)
    os.mknod(r / "dev/loop9", stat.S_IFBLK | 0o660, os.makedev(7, 9))
    # Things later layers change.
    _write(r / "gone/x", b"x")
    _write(r / "gone/sub/y", b"y")
    _write(r / "del.txt", b"delete me")
    (r / "replace_me").mkdir(0o750)  # empty: see test_dir_with_children_replaced_by_file
    _write(r / "becomes_dir", b"a file for now")
    _write(r / "modify.txt", b"v1\n")
    _write(r / "chmod_dir/inside", b"inside")
    os.chmod(r / "chmod_dir", 0o755)
    _write(r / "redo/a", b"a")
    _write(r / "redo/b", b"b")
    for d in ("a/b/c/d", "a/b/c", "etc", "dev", "links"):
        os.utime(r / d, ns=(NS, NS + 7))


def _layer2(r: Path) -> None:
    """Delete a file and a directory, replace a directory by a file, modify, chmod."""
    (r / "del.txt").unlink()
    shutil.rmtree(r / "gone")
    (r / "replace_me").rmdir()
    _write(r / "replace_me", b"now a file\n")
    _write(r / "modify.txt", b"v2, longer than v1\n", 0o600)
    os.chmod(r / "chmod_dir", 0o700)
    os.chown(r / "home/nobody/file", 2000, 2001)  # metadata only
    (r / "hard/two").unlink()
    _write(r / "new/in/layer2.txt", b"two\n")
    os.remove(r / "links/rel")
    os.symlink("../modify.txt", r / "links/rel")


def _layer3(r: Path) -> None:
    """A file becomes a directory, a directory is re-created, a nested subtree goes."""
    (r / "becomes_dir").unlink()
    _write(r / "becomes_dir/child", b"under the new dir\n")
    shutil.rmtree(r / "redo")
    _write(r / "redo/c", b"c")
    shutil.rmtree(r / "a/b")
    with open(r / "big.bin", "r+b") as f:  # same size, new content
        f.seek(1_500_000)
        f.write(b"changed in layer 3")
    os.removexattr(r / "etc/hostname", "trusted.blob")
    os.setxattr(r / "etc/hostname", "user.comment", b"changed")
    _write(r / "gone", b"back as a file\n")


def _run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True)


Change = Callable[[Path], None]


def _umoci_image(work: Path, layers: list[Change], insert: Change | None = None) -> Path:
    """An OCI layout (tag ``t``): one ``umoci repack`` per change of the unpacked rootfs,
    then, if ``insert`` is given, ``umoci insert --opaque`` of the tree it makes at /home."""
    need_root()
    need_tool("umoci")
    need_tool("tar")
    layout, bundle = work / "layout", work / "bundle"
    _run("umoci", "init", "--layout", layout)
    _run("umoci", "new", "--image", f"{layout}:{TAG}")
    old = os.umask(0o022)
    try:
        for change in layers:
            _run("umoci", "unpack", "--image", f"{layout}:{TAG}", bundle)
            change(bundle / "rootfs")
            _run("umoci", "repack", "--image", f"{layout}:{TAG}", bundle)
            shutil.rmtree(bundle)
        if insert is not None:
            insert(work / "newhome")
            image = f"{layout}:{TAG}"
            _run("umoci", "insert", "--image", image, "--opaque", work / "newhome", "/home")
    finally:
        os.umask(old)
    return layout


def _newhome(src: Path) -> None:
    """What ``umoci insert --opaque`` puts at /home.  umoci 0.4.7 never closes the tar
    writer here (no end-of-archive blocks), so the last file's size is a multiple of 512:
    then the tar merely ends at a header boundary, which GNU tar accepts (compare
    test_umoci_insert_layer_without_final_padding)."""
    _write(src / "fresh.txt", _bytes(1024, 4), 0o600, (3000, 3000))
    os.chmod(src, 0o751)


@pytest.fixture(scope="module")
def umoci_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three repacked layers, then a fourth with an opaque whiteout (umoci insert)."""
    return _umoci_image(tmp_path_factory.mktemp("umoci"), [_layer1, _layer2, _layer3], _newhome)


def _pull(cli: Callable[..., object], source: str, root: Path | None = None) -> dict[str, object]:
    result = cli("pull", "--json", "-q", source, root=root)
    assert result.rc == 0, result.err  # type: ignore[attr-defined]
    return json.loads(result.out)  # type: ignore[attr-defined,no-any-return]


def _compare_with_gnu_tar(
    layout: Path, doc: dict[str, object], store_root: Path, work: Path
) -> list[dict[str, Node]]:
    """Each layer's snapshot against GNU tar's extraction of the layout's blob."""
    pairs = oci_layers(layout, TAG)
    assert [d for d, _ in pairs] == doc["diff_ids"]
    store = Store(store_root)
    trees = []
    for i, (diff_id, blob) in enumerate(pairs):
        tar = decompress_to(blob, work / f"layer{i}.tar")
        expected = gnu_tar_tree(tar, work / f"gnu{i}")
        actual = snapshot_tree(store.snapshot_path(Digest.parse(diff_id)))
        assert_same_tree(actual, expected, f"{layout} layer {i + 1}")
        trees.append(expected)
    return trees


def test_umoci_layers_match_gnu_tar(umoci_image, cli, store_root, tmp_path):
    doc = _pull(cli, f"oci:{umoci_image}:{TAG}")
    assert doc["layers"] == LAYERS and doc["unpacked"] == LAYERS
    base, second, third, fourth = _compare_with_gnu_tar(umoci_image, doc, store_root, tmp_path)
    # The image really holds what this test is about (umoci decides the tar form).
    assert {p for p, n in second.items() if n.kind == "w"} >= {"del.txt", "gone", "hard/two"}
    assert second["replace_me"].kind == "-" and second["chmod_dir"].mode == 0o700
    assert (second["home/nobody/file"].uid, second["home/nobody/file"].gid) == (2000, 2001)
    assert third["becomes_dir"].kind == "d" and third["gone"].kind == "-"
    assert {"a/b", "redo/a", "redo/b"} <= {p for p, n in third.items() if n.kind == "w"}
    assert base["bin/tool"].mode == 0o4755 and base["srv/share"].mode == 0o2775
    assert base["tmp"].mode == 0o1777 and base["home/nobody/file"].uid == 65534
    assert base["hard/one"].group == ("hard/one", "hard/two")
    assert base["dev/null"].kind == "c" and base["dev/null"].rdev == (1, 3)
    assert base["dev/loop9"].kind == "b" and base["dev/fifo"].kind == "p"
    assert dict(base["etc/hostname"].xattrs)["trusted.blob"] == b"\x00\xff\x01binary"
    assert base["links/abs"].link == "/etc/hostname" and base["links/rel"].link == "../etc/hostname"
    assert fourth["home"].opaque and fourth["home/fresh.txt"].uid == 3000
    assert base["big.bin"].size == 3 * 1024 * 1024
    # umoci rounded the nanoseconds away; GNU tar and we agree on what it wrote.
    assert base["modify.txt"].mtime_ns == (NS + 3) // 10**9 * 10**9


@pytest.fixture(scope="module")
def skopeo_copies(umoci_image: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    need_tool("skopeo")
    work = tmp_path_factory.mktemp("skopeo")
    src = f"oci:{umoci_image}:{TAG}"
    copies = {
        "oci-archive": f"oci-archive:{work / 'image.tar'}:{TAG}",
        # Layers uncompressed (docker-archive always stores them so).
        "docker-archive": f"docker-archive:{work / 'docker.tar'}:example.com/oracle:1",
        # skopeo 1.9 recompresses for oci: with just --dest-compress-format; --dest-compress
        # only concerns the dir: transport.  (--dest-decompress does not decompress for oci:,
        # and an oci: copy of the docker archive with --dest-oci-accept-uncompressed-layers
        # keeps raw tars but labels them tar+gzip, so there is no honest uncompressed layout.)
        "zstd": f"oci:{work / 'zstd'}:{TAG}",
    }
    for name, dest in copies.items():
        extra = ["--dest-compress-format", "zstd"] if name == "zstd" else []
        _run("skopeo", "copy", "-q", *extra, src, dest)
    return {"oci": src, **copies}


def test_skopeo_copies_pull_to_the_same_image_and_share_snapshots(skopeo_copies, cli):
    docs = {name: _pull(cli, source) for name, source in skopeo_copies.items()}
    first = docs["oci"]
    assert first["unpacked"] == first["layers"] == LAYERS
    for name, doc in docs.items():
        # skopeo keeps the config blob byte for byte, even converting to docker-archive,
        # and diff_ids name uncompressed tars, so recompression cannot change them.
        assert doc["id"] == first["id"], name
        assert doc["diff_ids"] == first["diff_ids"], name
        if name != "oci":
            assert (doc["reused"], doc["unpacked"]) == (LAYERS, 0), name
    # Manifests differ where the layer blobs do.
    assert docs["oci-archive"]["digest"] == first["digest"]
    assert len({docs[n]["digest"] for n in ("oci", "docker-archive", "zstd")}) == 3


def test_zstd_copy_matches_gnu_tar(skopeo_copies, cli, store_root, tmp_path):
    layout = Path(skopeo_copies["zstd"].split(":")[1])
    for _, blob in oci_layers(layout, TAG):
        assert blob.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    doc = _pull(cli, skopeo_copies["zstd"])
    assert doc["unpacked"] == LAYERS
    _compare_with_gnu_tar(layout, doc, store_root, tmp_path)


def test_symlink_modes_of_a_bsd_tar_layer_match_gnu_tar(cli, store_root, tmp_path):
    """BSD tar (macOS) writes a symlink's own bits in its header; GNU tar, like every Linux
    extraction, makes 0777 of them, and so must we."""
    need_root()
    need_tool("tar")
    layer = LayerBuilder().dir("l")
    for mode in (0o755, 0o700, 0o1777, 0o4755, 0o777, 0):
        layer.symlink(f"l/m{mode:o}", "../target", mode=mode, uid=7, gid=8)
    layout = write_oci_layout(tmp_path / "layout", {TAG: ImageBuilder([layer])})
    doc = _pull(cli, f"oci:{layout}:{TAG}")
    (layer1,) = _compare_with_gnu_tar(layout, doc, store_root, tmp_path)
    assert {n.mode for p, n in layer1.items() if p.startswith("l/m")} == {0o777}


# -- merged view ---------------------------------------------------------------------------


def _assert_view_matches_umoci(layout: Path, cli, store_root: Path, work: Path) -> dict[str, Seen]:
    """The image pulled and mounted (a real FUSE mount: merge, the daemon, the kernel),
    walked entry by entry against ``umoci unpack``'s rootfs of the same layout: type,
    mode, owner, size, content, link target, device, xattrs, mtime (umoci restores
    directory mtimes too), st_blocks of files, nlink and hardlink groups."""
    need_fuse()
    name = f"example.com/umoci/{work.name.lower()}:t"
    pulled = cli("pull", "-q", f"oci:{layout}:{TAG}", "--name", name)
    assert pulled.rc == 0, pulled.err
    bundle = work / "bundle"
    _run("umoci", "unpack", "--image", f"{layout}:{TAG}", bundle)
    mp = work / "mp"
    mp.mkdir()
    with mounted(cli, store_root, name, mp):
        compare(mp, bundle / "rootfs", set(), reference="umoci")
        return walk(mp)[0]


def test_mounted_view_matches_umoci_unpack(umoci_image, cli, store_root, tmp_path):
    ours = _assert_view_matches_umoci(umoci_image, cli, store_root, tmp_path)
    # What the layers did shows in the result.
    assert "del.txt" not in ours and ours["gone"].kind == "-" and "gone/x" not in ours
    assert ours["replace_me"].kind == "-"
    assert ours["becomes_dir"].kind == "d" and ours["becomes_dir/child"].kind == "-"
    assert {p for p in ours if p.startswith("redo/")} == {"redo/c"}
    assert {p for p in ours if p.startswith("home/")} == {"home/fresh.txt"}
    assert "a/b" not in ours and ours["a"].kind == "d"
    assert ours["chmod_dir"].mode == 0o700
    assert (ours["home"].mode, ours["home"].uid, ours["home"].gid) == (0o751, 0, 0)
    assert ours["etc/hostname"].xattrs == (("user.comment", b"changed"),)


# -- umoci layers we refuse, though umoci (and Go's archive/tar) read them -----------------


def _small_base(r: Path) -> None:
    _write(r / "d/child", b"child\n")
    _write(r / "d/sub/x", b"x\n")
    _write(r / "keep", b"keep\n")


def _last_layer_tar(layout: Path, work: Path) -> Path:
    return decompress_to(oci_layers(layout, TAG)[-1][1], work / "last.tar")


def _precondition(ok: bool, what: str) -> None:
    """Not an AssertionError, so a changed umoci fails these xfail tests instead of
    passing for them."""
    if not ok:
        pytest.fail(f"umoci no longer writes {what}")


def test_dir_with_children_replaced_by_file(cli, store_root, tmp_path):
    def replace(r: Path) -> None:
        shutil.rmtree(r / "d")
        _write(r / "d", b"now a file\n")

    layout = _umoci_image(tmp_path / "img", [_small_base, replace])
    # umoci writes the file, then whiteouts for the old children *below* it.  GNU tar
    # cannot extract that ("Cannot open: Not a directory"), so umoci unpack is the oracle.
    listed = subprocess.run(
        ["tar", "--list", "-f", _last_layer_tar(layout, tmp_path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    _precondition(
        "d/.wh.child" in listed and listed.index("d") < listed.index("d/.wh.child"),
        "whiteouts below the file that replaced their directory",
    )
    ours = _assert_view_matches_umoci(layout, cli, store_root, tmp_path)
    assert ours["d"].kind == "-" and "d/child" not in ours


def test_umoci_insert_layer_without_final_padding(cli, store_root, tmp_path):
    def insert(src: Path) -> None:
        _write(src / "fresh.txt", b"fresh\n")

    layout = _umoci_image(tmp_path / "img", [_small_base], insert)
    size = _last_layer_tar(layout, tmp_path).stat().st_size
    _precondition(size % 512 == 6, "insert layers that end without padding")
    ours = _assert_view_matches_umoci(layout, cli, store_root, tmp_path)
    assert {p for p in ours if p.startswith("home/")} == {"home/fresh.txt"}
