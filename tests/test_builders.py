"""The image builders produce output that independent tools accept.

Readers used: Python's ``tarfile`` (PAX/GNU parsing), GNU ``tar`` (sparse files, xattrs,
ns mtimes), ``gzip``/``zstd`` CLIs, ``umoci unpack`` (Go archive/tar, OCI layer semantics,
whiteouts) and ``skopeo`` (manifest parsing, digest verification on copy, docker-archive and
oci-archive transports).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pytest
import zstandard
from builders import (
    DEFAULT_MTIME,
    INDEX_MEDIA_TYPE,
    LAYER_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPE,
    Compression,
    ImageBuilder,
    LayerBuilder,
    decompress,
    mtime_ns,
    sha256_digest,
    tar_entries,
    tar_files,
    write_docker_archive,
    write_oci_archive,
    write_oci_layout,
    xattrs_of,
)
from conftest import IN_CI

UMOCI = shutil.which("umoci")
SKOPEO = shutil.which("skopeo")
GNU_TAR = shutil.which("tar")
IS_ROOT = os.geteuid() == 0

# Outside CI a missing tool skips; in CI (IN_CI) these marks are inert, so the test runs and
# fails on the missing tool, as conftest.unavailable does.
needs_umoci = pytest.mark.skipif(
    (UMOCI is None or not IS_ROOT) and not IN_CI, reason="needs umoci and root"
)
needs_skopeo = pytest.mark.skipif(SKOPEO is None and not IN_CI, reason="needs skopeo")
needs_gnu_tar = pytest.mark.skipif(GNU_TAR is None and not IN_CI, reason="needs GNU tar")

ALL_COMPRESSIONS: list[Compression] = ["none", "gzip", "zstd"]
DockerLayout = Literal["classic", "oci", "crane"]
DOCKER_LAYOUTS: list[DockerLayout] = ["classic", "oci", "crane"]
NS_MTIME = 1_700_000_000_123_456_789
# For oci -> oci copies: fail instead of re-compressing, so blobs must come out identical.
PRESERVE = ("-q", "--preserve-digests", "--dest-oci-accept-uncompressed-layers")


def run(*args: str | Path) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


def by_name(data: bytes) -> dict[str, tarfile.TarInfo]:
    return {m.name: m for m in tar_entries(data)}


def header_names(data: bytes) -> list[tuple[bytes, bytes]]:
    """(raw name field, typeflag) of each ustar header, by walking the blocks by hand."""
    out = []
    pos = 0
    while pos + 512 <= len(data) and data[pos : pos + 512] != bytes(512):
        block = data[pos : pos + 512]
        size = int(block[124:136].rstrip(b"\0 ") or b"0", 8)
        out.append((block[0:100].rstrip(b"\0"), block[156:157]))
        pos += 512 + -(-size // 512) * 512
    return out


def member_bytes(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tar:
        fh = tar.extractfile(name)
        assert fh is not None
        return fh.read()


def zstd_frame_count(blob: bytes) -> int:
    frames = 0
    rest = blob
    while rest:
        dobj = zstandard.ZstdDecompressor().decompressobj()
        dobj.decompress(rest)
        rest = dobj.unused_data
        frames += 1
    return frames


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def layout_blob(layout: Path, digest: str) -> bytes:
    algo, _, hexd = digest.partition(":")
    return (layout / "blobs" / algo / hexd).read_bytes()


# --------------------------------------------------------------------------- tar level


def test_tar_bytes_shape_and_determinism() -> None:
    def build() -> LayerBuilder:
        return LayerBuilder().dir("a").file("a/f", b"x" * 700).symlink("a/l", "f")

    data = build().tar_bytes()
    assert data == build().tar_bytes()
    assert len(data) % 512 == 0
    assert data.endswith(b"\0" * 1024)
    assert build().diff_id() == "sha256:" + hashlib.sha256(data).hexdigest()
    assert LayerBuilder().tar_bytes() == b"\0" * 1024
    assert [m.name for m in tar_entries(data)] == ["a", "a/f", "a/l"]
    assert tar_files(data) == {"a/f": b"x" * 700}


def test_entry_kinds_read_back_by_tarfile() -> None:
    data = (
        LayerBuilder()
        .dir("d", mode=0o750, uid=5, gid=6)
        .file("d/f", b"hello", mode=0o4755, uid=1000, gid=1001, uname="u", gname="g")
        .symlink("d/s", "../target")
        .hardlink("d/h", "d/f")
        .whiteout("d/gone")
        .whiteout("top")
        .opaque("d")
        .chardev("dev/null", 1, 3)
        .blockdev("dev/loop0", 7, 0, mode=0o660)
        .fifo("p", mode=0o600)
        .tar_bytes()
    )
    m = by_name(data)
    assert m["d"].isdir() and stat.S_IMODE(m["d"].mode) == 0o750
    assert (m["d"].uid, m["d"].gid) == (5, 6)
    f = m["d/f"]
    assert f.isreg() and f.size == 5 and f.mode == 0o4755
    assert (f.uid, f.gid, f.uname, f.gname) == (1000, 1001, "u", "g")
    assert m["d/s"].issym() and m["d/s"].linkname == "../target"
    assert m["d/h"].islnk() and m["d/h"].linkname == "d/f" and m["d/h"].size == 0
    for name in ("d/.wh.gone", ".wh.top", "d/.wh..wh..opq"):
        assert m[name].isreg() and m[name].size == 0
    assert m["dev/null"].ischr() and (m["dev/null"].devmajor, m["dev/null"].devminor) == (1, 3)
    assert m["dev/loop0"].isblk() and (m["dev/loop0"].devmajor, m["dev/loop0"].devminor) == (7, 0)
    assert m["dev/loop0"].mode == 0o660
    assert m["p"].isfifo() and m["p"].mode == 0o600
    # Directories carry the conventional trailing slash in the raw header.
    ustar = [(n, t) for n, t in header_names(data) if t != b"x"]
    assert ustar[0] == (b"d/", b"5")
    assert [n for n, _ in ustar][1:4] == [b"d/f", b"d/s", b"d/h"]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_device_numbers_roundtrip_all_formats(fmt: int) -> None:
    data = LayerBuilder(format=fmt).chardev("c", 136, 2).blockdev("b", 259, 65537).tar_bytes()
    m = by_name(data)
    assert (m["c"].devmajor, m["c"].devminor) == (136, 2)
    assert (m["b"].devmajor, m["b"].devminor) == (259, 65537)


def test_ns_mtime_written_as_pax_decimal() -> None:
    lb = (
        LayerBuilder()
        .file("default")
        .file("dec", mtime=Decimal("1234567890.000000001"))
        .file("float", mtime=1.5)
        .file("whole", mtime=1_600_000_000)
        .file("neg", mtime=Decimal("-1.25"))
    )
    m = by_name(lb.tar_bytes())
    assert m["default"].pax_headers["mtime"] == "1700000000.123456789"
    assert mtime_ns(DEFAULT_MTIME) == NS_MTIME
    assert m["default"].mtime == pytest.approx(1_700_000_000.123456789)
    assert m["dec"].pax_headers["mtime"] == "1234567890.000000001"
    assert m["float"].pax_headers["mtime"] == "1.500000000"
    assert m["float"].mtime == 1.5
    assert "mtime" not in m["whole"].pax_headers and m["whole"].mtime == 1_600_000_000
    assert m["neg"].pax_headers["mtime"] == "-1.250000000"
    # The raw record is in the stream, byte for byte.
    assert b" mtime=1700000000.123456789\n" in lb.tar_bytes()


def test_gnu_format_keeps_whole_seconds() -> None:
    m = by_name(LayerBuilder(format=tarfile.GNU_FORMAT).file("f").tar_bytes())
    assert m["f"].mtime == 1_700_000_000 and m["f"].pax_headers == {}


@needs_gnu_tar
def test_ns_mtime_seen_by_gnu_tar() -> None:
    data = LayerBuilder().file("f", b"x").tar_bytes()
    out = subprocess.run(
        ["tar", "--full-time", "--utc", "-tvf", "-"], input=data, capture_output=True, check=True
    ).stdout.decode()
    assert "2023-11-14 22:13:20.123456789 f" in out


def test_xattrs_roundtrip_through_tarfile() -> None:
    xattrs = {
        "user.ascii": b"hello world",
        "user.utf8": "grüße".encode(),
        "user.binary": b"\x00\xff\xfe\n=\x80 end",
        "security.capability": bytes(range(20)),
    }
    lb = LayerBuilder().file("f", b"x", xattrs=xattrs).dir("d", xattrs={"user.a": b"1"})
    data = lb.tar_bytes()
    m = by_name(data)
    assert xattrs_of(m["f"]) == xattrs
    assert xattrs_of(m["d"]) == {"user.a": b"1"}
    assert b" SCHILY.xattr.user.ascii=hello world\n" in data
    assert b"SCHILY.xattr.user.binary=\x00\xff\xfe\n=\x80 end\n" in data


def test_xattrs_need_pax() -> None:
    with pytest.raises(ValueError):
        LayerBuilder(format=tarfile.GNU_FORMAT).file("f", xattrs={"user.a": b"1"})


@needs_gnu_tar
def test_xattrs_extracted_by_gnu_tar(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(
        LayerBuilder().file("f", b"x", xattrs={"user.k": b"value", "user.b": b"a\x00b"}).tar_bytes()
    )
    out = tmp_path / "out"
    out.mkdir()
    run("tar", "--xattrs", "--xattrs-include=user.*", "-xf", layer, "-C", out)
    assert os.getxattr(out / "f", "user.k") == b"value"
    assert os.getxattr(out / "f", "user.b") == b"a\x00b"
    assert os.stat(out / "f").st_mtime_ns == NS_MTIME


def test_raw_names_are_verbatim() -> None:
    hostile = ["../x", "/etc/passwd", "./a", "a/../../b"]
    lb = LayerBuilder()
    for name in hostile:
        lb.file(name, b"evil", raw_name=True)
    lb.dir(".", raw_name=True).symlink("/abs", "/etc", raw_name=True)
    lb.whiteout("../up", raw_name=True)
    data = lb.tar_bytes()
    names = [m.name for m in tar_entries(data)]
    assert names == [*hostile, ".", "/abs", "../.wh.up"]
    # Header name fields hold exactly those bytes (no "./" prefix, no added "/").
    raw = [n for n, t in header_names(data) if t != b"x"]
    assert raw == [n.encode() for n in [*hostile, ".", "/abs", "../.wh.up"]]


@pytest.mark.parametrize("bad", ["", "/abs", "a//b", "./a", "a/./b", "../x", "a/.."])
def test_unsafe_names_refused_without_raw(bad: str) -> None:
    with pytest.raises(ValueError):
        LayerBuilder().file(bad)


def test_raw_escape_hatch() -> None:
    info = tarfile.TarInfo("weird")
    info.type = b"Z"  # unknown type: readers treat it as a regular file
    lb = LayerBuilder().raw(info, b"payload")
    lying = tarfile.TarInfo("lying")
    lying.size = 10
    lb.raw(lying, b"short", fix_size=False)
    m = tar_entries(lb.tar_bytes())
    assert m[0].name == "weird" and m[0].size == 7
    assert m[1].name == "lying" and m[1].size == 10


def _expected_sparse(size: int, chunks: dict[int, bytes]) -> bytes:
    buf = bytearray(size)
    for off, data in chunks.items():
        buf[off : off + len(data)] = data
    return bytes(buf)


SPARSE_CHUNKS = {0: b"head", 5000: b"x" * 3000, 70_000: b"mid", 200_000 - 5: b"tail!"}
SPARSE_CHUNKS.update({100_000 + i * 4096: bytes([i]) * 600 for i in range(1, 12)})


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_sparse_read_by_tarfile(fmt: int) -> None:
    data = (
        LayerBuilder(format=fmt)
        .sparse_file("d/sparse", 200_000, SPARSE_CHUNKS)
        .sparse_file("holes", 10_000, {})
        .file("after", b"after")
        .tar_bytes()
    )
    m = by_name(data)
    assert m["d/sparse"].issparse() and m["d/sparse"].size == 200_000
    assert m["holes"].size == 10_000
    files = tar_files(data)
    assert files["d/sparse"] == _expected_sparse(200_000, SPARSE_CHUNKS)
    assert files["holes"] == bytes(10_000)
    assert files["after"] == b"after"
    assert len(data) < 60_000  # holes are not stored
    if fmt == tarfile.PAX_FORMAT:
        assert m["d/sparse"].pax_headers["GNU.sparse.major"] == "1"
        assert m["d/sparse"].pax_headers["mtime"] == "1700000000.123456789"
    else:
        assert m["d/sparse"].type == tarfile.GNUTYPE_SPARSE
        assert len(m["d/sparse"].sparse or []) > 4  # needed extension blocks


@needs_gnu_tar
@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_sparse_extracted_by_gnu_tar(fmt: int, tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(
        LayerBuilder(format=fmt)
        .sparse_file("d/sparse", 200_000, SPARSE_CHUNKS)
        .file("after", b"after")
        .tar_bytes()
    )
    out = tmp_path / "out"
    out.mkdir()
    run("tar", "-xf", layer, "-C", out)
    assert (out / "d/sparse").read_bytes() == _expected_sparse(200_000, SPARSE_CHUNKS)
    assert (out / "after").read_bytes() == b"after"
    assert sorted(p.name for p in out.rglob("*")) == ["after", "d", "sparse"]


def test_sparse_needs_sparse_capable_format() -> None:
    with pytest.raises(ValueError):
        LayerBuilder(format=tarfile.USTAR_FORMAT).sparse_file("s", 10, {0: b"a"})
    with pytest.raises(ValueError):
        LayerBuilder().sparse_file("s", 10, {0: b"abc", 2: b"x"})


# --------------------------------------------------------------------------- compression


@needs_gnu_tar
@pytest.mark.parametrize("compression", ALL_COMPRESSIONS)
def test_layer_blobs(compression: Compression, tmp_path: Path) -> None:
    layer = LayerBuilder().file("f", os.urandom(100_000)).file("g", b"g" * 100_000)
    img = ImageBuilder([layer], compression=compression)
    (built,) = img.built_layers()
    tar = layer.tar_bytes()
    assert built.media_type == LAYER_MEDIA_TYPES[compression]
    assert built.digest == sha256_digest(built.blob) and built.size == len(built.blob)
    assert built.diff_id == layer.diff_id() == sha256_digest(tar)
    assert decompress(built.blob) == tar
    blob = tmp_path / "blob"
    blob.write_bytes(built.blob)
    if compression == "gzip":
        assert subprocess.run(["gzip", "-dc", blob], capture_output=True).stdout == tar
    elif compression == "zstd":
        assert zstd_frame_count(built.blob) >= 2
        assert subprocess.run(["zstd", "-dc", blob], capture_output=True).stdout == tar
    else:
        assert built.blob == tar
    assert img.built_layers() == img.built_layers()  # deterministic


def test_zstd_frame_count_configurable() -> None:
    img = ImageBuilder([LayerBuilder().file("f", b"z" * 50_000)], compression="zstd", zstd_frames=5)
    assert zstd_frame_count(img.built_layers()[0].blob) == 5


def test_config_and_manifest_contents() -> None:
    layers = [LayerBuilder().file("a"), LayerBuilder().file("b")]
    img = ImageBuilder(
        layers,
        architecture="arm",
        variant="v7",
        config_extra={"Env": ["A=1"], "Cmd": ["/bin/sh"]},
        layer_compressions=["gzip", "zstd"],
    )
    cfg = json.loads(img.config_bytes())
    assert (cfg["os"], cfg["architecture"], cfg["variant"]) == ("linux", "arm", "v7")
    assert cfg["config"] == {"Env": ["A=1"], "Cmd": ["/bin/sh"]}
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": [lb.diff_id() for lb in layers]}
    assert len(cfg["history"]) == 2
    man = json.loads(img.manifest_bytes())
    assert man["mediaType"] == MANIFEST_MEDIA_TYPE and man["schemaVersion"] == 2
    assert man["config"]["digest"] == sha256_digest(img.config_bytes())
    assert [d["mediaType"] for d in man["layers"]] == [
        LAYER_MEDIA_TYPES["gzip"],
        LAYER_MEDIA_TYPES["zstd"],
    ]
    assert img.manifest_digest() == sha256_digest(img.manifest_bytes())


# --------------------------------------------------------------------------- umoci


def rich_image(compression: Compression) -> ImageBuilder:
    base = (
        LayerBuilder()
        .dir("etc")
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .file("etc/removed", b"lower file")
        .dir("opt")
        .dir("opt/app")
        .file("opt/app/old1", b"1")
        .dir("opt/app/sub")
        .file("opt/app/sub/old2", b"2")
        .dir("bin")
        .file("bin/busybox", b"\x7fELF...", mode=0o755)
        .file("owned", b"o", uid=1000, gid=1001, mode=0o600)
    )
    top = (
        LayerBuilder()
        .whiteout("etc/removed")
        .opaque("opt/app")
        .file("opt/app/new", b"fresh")
        .symlink("bin/sh", "busybox")
        .file("bin/data", b"linked")
        .hardlink("bin/data2", "bin/data")
        .file("etc/passwd", b"root:x:0:0::/root:/bin/ash\n", mode=0o640)
        .chardev("dev/null", 1, 3)
        .blockdev("dev/loop7", 7, 7, mode=0o660)
        .fifo("run/fifo")
        .file("xattr", b"x", xattrs={"user.test": b"val\x00\xff"})
        .file("ns", b"t", mtime=Decimal("1234567890.987654321"))
        .sparse_file("sparse_pax", 300_000, {1000: b"P" * 10, 299_990: b"Q" * 10})
        .sparse_file("sparse_many", 400_000, {i * 30_000: b"G" * 700 for i in range(13)})
    )
    # A GNU_FORMAT layer: long names via 'L'/'K' records. (Old-GNU sparse members are left
    # out: umoci rejects them, see LayerBuilder.sparse_file.)
    gnu = (
        LayerBuilder(format=tarfile.GNU_FORMAT)
        .dir("gnu")
        .file("gnu/" + "long" * 40, b"long name")
        .symlink("gnu/link", "../" + "target" * 30)
    )
    return ImageBuilder(
        [base, top, gnu],
        compression=compression,
        config_extra={"Env": ["PATH=/bin", "HELLO=world"], "Cmd": ["/bin/sh"]},
    )


@needs_umoci
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_umoci_unpack_rootfs(compression: Compression, tmp_path: Path) -> None:
    img = rich_image(compression)
    layout = write_oci_layout(tmp_path / "oci", {"latest": img})
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--image", f"{layout}:latest", bundle)
    root = bundle / "rootfs"

    assert (root / "etc/passwd").read_bytes() == b"root:x:0:0::/root:/bin/ash\n"
    assert stat.S_IMODE(os.lstat(root / "etc/passwd").st_mode) == 0o640
    # Whiteout removed the lower file and is not materialised itself.
    assert not os.path.lexists(root / "etc/removed")
    assert not os.path.lexists(root / "etc/.wh.removed")
    # Opaque dir: lower contents gone, same-layer content kept, marker not materialised.
    assert sorted(os.listdir(root / "opt/app")) == ["new"]
    assert (root / "opt/app/new").read_bytes() == b"fresh"
    # Symlink and hardlink.
    assert os.readlink(root / "bin/sh") == "busybox"
    assert stat.S_ISLNK(os.lstat(root / "bin/sh").st_mode)
    d1, d2 = os.lstat(root / "bin/data"), os.lstat(root / "bin/data2")
    assert d1.st_ino == d2.st_ino and d1.st_nlink == 2
    assert (root / "bin/data2").read_bytes() == b"linked"
    assert stat.S_IMODE(os.lstat(root / "bin/busybox").st_mode) == 0o755
    owned = os.lstat(root / "owned")
    assert (owned.st_uid, owned.st_gid, stat.S_IMODE(owned.st_mode)) == (1000, 1001, 0o600)
    # Special files.
    null = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1
    assert os.minor(null.st_rdev) == 3
    loop = os.lstat(root / "dev/loop7")
    assert stat.S_ISBLK(loop.st_mode) and (os.major(loop.st_rdev), os.minor(loop.st_rdev)) == (7, 7)
    assert stat.S_ISFIFO(os.lstat(root / "run/fifo").st_mode)
    # PAX metadata: ns mtimes and binary xattr values, as parsed by Go's archive/tar.
    assert os.lstat(root / "etc/passwd").st_mtime_ns == NS_MTIME
    assert os.lstat(root / "ns").st_mtime_ns == 1_234_567_890_987_654_321
    assert os.getxattr(root / "xattr", "user.test") == b"val\x00\xff"
    # Sparse files in both encodings.
    assert (root / "sparse_pax").read_bytes() == _expected_sparse(
        300_000, {1000: b"P" * 10, 299_990: b"Q" * 10}
    )
    assert (root / "sparse_many").read_bytes() == _expected_sparse(
        400_000, {i * 30_000: b"G" * 700 for i in range(13)}
    )
    # GNU_FORMAT layer with long names.
    assert (root / "gnu" / ("long" * 40)).read_bytes() == b"long name"
    assert os.readlink(root / "gnu/link") == "../" + "target" * 30
    # Config made it into the runtime spec.
    spec = read_json(bundle / "config.json")
    assert "HELLO=world" in spec["process"]["env"]
    assert spec["process"]["args"] == ["/bin/sh"]


# --------------------------------------------------------------------------- skopeo


def simple_image(compression: Compression, **kw: Any) -> ImageBuilder:
    base = LayerBuilder().dir("etc").file("etc/os-release", b"ID=test\n" * 200)
    app = LayerBuilder().dir("app").file("app/run", os.urandom(5000), mode=0o755)
    return ImageBuilder([base, app], compression=compression, config_extra={"Env": ["K=V"]}, **kw)


def assert_oci_copy_matches(out: Path, tag: str, img: ImageBuilder, *, same_blobs: bool) -> None:
    """``out`` (written by skopeo) holds ``img``: same config, same uncompressed layers."""
    index = read_json(out / "index.json")
    (desc,) = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    manifest_bytes = layout_blob(out, desc["digest"])
    assert sha256_digest(manifest_bytes) == desc["digest"]
    manifest = json.loads(manifest_bytes)
    assert layout_blob(out, manifest["config"]["digest"]) == img.config_bytes()
    built = img.built_layers()
    got = [layout_blob(out, d["digest"]) for d in manifest["layers"]]
    assert [sha256_digest(decompress(b)) for b in got] == [b.diff_id for b in built]
    if same_blobs:
        assert desc["digest"] == img.manifest_digest()
        assert got == [b.blob for b in built]


@needs_skopeo
@pytest.mark.parametrize("compression", ALL_COMPRESSIONS)
def test_skopeo_reads_and_copies_oci_layout(compression: Compression, tmp_path: Path) -> None:
    img = simple_image(compression)
    src = write_oci_layout(tmp_path / "src", {"v1": img})
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{src}:v1"], capture_output=True, check=True
    ).stdout
    assert raw == img.manifest_bytes()
    info = json.loads(run("skopeo", "inspect", f"oci:{src}:v1"))
    assert info["Layers"] == [b.digest for b in img.built_layers()]
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
    assert info["Env"] == ["K=V"]
    cfg = subprocess.run(
        ["skopeo", "inspect", "--config", "--raw", f"oci:{src}:v1"],
        capture_output=True,
        check=True,
    ).stdout
    assert cfg == img.config_bytes()
    run("skopeo", "copy", *PRESERVE, f"oci:{src}:v1", f"oci:{tmp_path / 'dst'}:v1")
    assert_oci_copy_matches(tmp_path / "dst", "v1", img, same_blobs=True)


@needs_skopeo
def test_skopeo_verifies_digests_so_corruption_fails(tmp_path: Path) -> None:
    """Control for the copy tests: a corrupted blob makes skopeo fail."""
    img = simple_image("none")
    src = write_oci_layout(tmp_path / "src", {"v1": img})
    victim = src / "blobs/sha256" / img.built_layers()[1].digest.split(":")[1]
    data = bytearray(victim.read_bytes())
    data[600] ^= 0xFF
    victim.write_bytes(bytes(data))
    proc = subprocess.run(
        ["skopeo", "copy", "-q", f"oci:{src}:v1", f"oci:{tmp_path / 'dst'}:v1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "digest" in proc.stderr.lower()


@needs_skopeo
def test_untagged_layout(tmp_path: Path) -> None:
    img = simple_image("gzip")
    src = write_oci_layout(tmp_path / "src", [img])
    index = read_json(src / "index.json")
    assert index["manifests"] == [
        {
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": img.manifest_digest(),
            "size": len(img.manifest_bytes()),
        }
    ]
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{src}"], capture_output=True, check=True
    ).stdout
    assert raw == img.manifest_bytes()


@needs_skopeo
@pytest.mark.parametrize("compression", ALL_COMPRESSIONS)
def test_skopeo_copies_oci_archive(compression: Compression, tmp_path: Path) -> None:
    img = simple_image(compression)
    other = simple_image(compression, architecture="arm64")
    archive = write_oci_archive(tmp_path / "img.tar", {"t": img, "other": other})
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert {"oci-layout", "index.json"} <= set(names)
    run("skopeo", "copy", *PRESERVE, f"oci-archive:{archive}:t", f"oci:{tmp_path / 'out'}:t")
    assert_oci_copy_matches(tmp_path / "out", "t", img, same_blobs=True)


@needs_skopeo
@pytest.mark.parametrize("layout", DOCKER_LAYOUTS)
@pytest.mark.parametrize("compression", ALL_COMPRESSIONS)
def test_skopeo_copies_docker_archive(
    layout: DockerLayout, compression: Compression, tmp_path: Path
) -> None:
    img = simple_image(compression)
    # Shares the base layer with img.
    small = ImageBuilder(img.layers[:1], compression=compression)
    archive = write_docker_archive(
        tmp_path / "docker.tar",
        {"example.com/team/app:1.0": img, "small:latest": small, "alias:2": img},
        layout=layout,
    )
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    manifest = json.loads(member_bytes(archive, "manifest.json"))
    assert [item["RepoTags"] for item in manifest] == [
        ["example.com/team/app:1.0", "alias:2"],
        ["small:latest"],
    ]
    assert manifest[1]["Layers"] == manifest[0]["Layers"][:1]
    # Every layer is stored once.
    unique_layers = {b.digest for b in img.built_layers()}
    assert len({p for item in manifest for p in item["Layers"]}) == len(unique_layers)
    assert all(names.count(p) == 1 for item in manifest for p in item["Layers"])
    if layout == "classic":
        assert sum(n.endswith("/layer.tar") for n in names) == len(unique_layers)
        assert sum(n.endswith("/VERSION") for n in names) == len(unique_layers)
        repos = json.loads(member_bytes(archive, "repositories"))
        assert set(repos) == {"example.com/team/app", "small", "alias"}
    elif layout == "oci":
        assert {"oci-layout", "index.json"} <= set(names)
        assert all(p.startswith("blobs/sha256/") for p in manifest[0]["Layers"])

    for ref, expect in (("example.com/team/app:1.0", img), ("small:latest", small)):
        out = tmp_path / "out"
        run("skopeo", "copy", "-q", f"docker-archive:{archive}:{ref}", f"oci:{out}:t")
        assert_oci_copy_matches(out, "t", expect, same_blobs=False)
        shutil.rmtree(out)

    if layout == "oci":  # Docker 25+ archives are also plain OCI layouts / archives
        run("skopeo", "copy", *PRESERVE, f"oci-archive:{archive}:1.0", f"oci:{tmp_path / 'o2'}:t")
        assert_oci_copy_matches(tmp_path / "o2", "t", img, same_blobs=True)


@needs_skopeo
def test_skopeo_multiplatform_index(tmp_path: Path) -> None:
    amd = simple_image("gzip")
    arm = simple_image("zstd", architecture="arm64", variant="v8")
    src = write_oci_layout(tmp_path / "src", {"single": amd}, index_of={"multi": [amd, arm]})
    index = read_json(src / "index.json")
    (entry,) = [m for m in index["manifests"] if m["mediaType"] == INDEX_MEDIA_TYPE]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "multi"
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{src}:multi"], capture_output=True, check=True
    ).stdout
    assert sha256_digest(raw) == entry["digest"]
    sub = json.loads(raw)
    assert sub["mediaType"] == INDEX_MEDIA_TYPE
    assert [m["platform"] for m in sub["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    assert [m["digest"] for m in sub["manifests"]] == [amd.manifest_digest(), arm.manifest_digest()]

    run("skopeo", "copy", *PRESERVE, "--all", f"oci:{src}:multi", f"oci:{tmp_path / 'all'}:multi")
    copied = read_json(tmp_path / "all/index.json")["manifests"]
    assert [m["digest"] for m in copied] == [entry["digest"]]

    for arch, variant, img in (("arm64", "v8", arm), ("amd64", None, amd)):
        out = tmp_path / f"one-{arch}"
        args = ["--override-arch", arch] + (["--override-variant", variant] if variant else [])
        run("skopeo", *args, "copy", *PRESERVE, f"oci:{src}:multi", f"oci:{out}:x")
        assert_oci_copy_matches(out, "x", img, same_blobs=True)
