"""``snapshotter export``: one PAX tar of the merged view.

The oracles are independent: ``umoci unpack`` of the same image (on images built here, by
umoci itself, and on every fixture in ../shared/fixtures umoci can unpack) against GNU
tar's extraction of our export, compared entry by entry with the walk test_fusefs uses
for the mount; and ``tar -c`` of the FUSE-mounted view read member by member beside ours.
Then the bugs crane shipped in ``crane export``, each with its own test, the name form, odd
names, big and sparse files, and the command's behaviour: stdout, a terminal, ``-o`` on
failure, Ctrl-C and ``kill -9``.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import os
import random
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import REPO, CliResult, need_root, need_tool, run_on_a_terminal
from oracle import gnu_tar_extract
from test_fixtures import IMPORTS, _source
from test_fusefs import (
    SPARSE_CHUNKS,
    SPARSE_SIZE,
    compare,
    mounted,
    need_fuse,
    oracle_layers,
    sparse_bytes,
)
from test_oracles import TAG, _layer1, _layer2, _layer3, _newhome, _umoci_image

from snapshotter.errors import NotFound
from snapshotter.explore.export import header, pax_time, write_tar
from snapshotter.explore.image import open_image
from snapshotter.store.store import Store
from snapshotter.store.toc import EntryKind
from snapshotter.view.merge import Node

Cli = Callable[..., CliResult]
NAME = "example.com/export:1"


# -- plumbing ------------------------------------------------------------------------------


def pull(cli: Cli, work: Path, layers: list[LayerBuilder], name: str = NAME) -> Path:
    """Build an OCI layout (tag ``t``) of ``layers``, pull it as ``name``; the layout."""
    layout = work / f"layout-{name.rsplit('/', 1)[-1].replace(':', '-')}"
    write_oci_layout(layout, {"t": ImageBuilder(layers)})
    result = cli("pull", "-q", f"oci:{layout}:t", "--name", name)
    assert result.rc == 0, result.err
    return layout


def export(cli: Cli, out: Path, image: str = NAME, *extra: str) -> Path:
    result = cli("export", image, "-o", str(out), *extra)
    assert result.rc == 0, result.err
    assert (result.out, result.err) == ("", "")  # stderr is no terminal: no progress
    check_form(out)
    return out


def listed(tar: Path) -> list[bytes]:
    """Member names exactly as stored, as GNU tar lists them (trailing ``/`` included),
    undoing its C-style quoting."""
    need_tool("tar")
    out = subprocess.run(
        ["tar", "--list", "--quoting-style=c", "-f", str(tar)],
        check=True,
        capture_output=True,
        env={**os.environ, "LC_ALL": "C"},
    ).stdout
    names = []
    for line in out.split(b"\n")[:-1]:
        assert line.startswith(b'"') and line.endswith(b'"'), line
        names.append(codecs.escape_decode(line[1:-1])[0])
    return names


def members(tar: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(tar, "r:", encoding="utf-8", errors="surrogateescape") as t:
        return t.getmembers()


def check_form(tar: Path) -> None:
    """The documented name form: ``./`` first, then relative names in tree order, a
    directory's ending in ``/``; no whiteout, no ``.``/``..``, no name twice."""
    names = listed(tar)
    infos = members(tar)
    assert len(names) == len(infos)
    assert names[0] == b"./" and infos[0].isdir()
    seen: set[bytes] = set()
    for raw, info in zip(names[1:], infos[1:], strict=True):
        assert not raw.startswith((b"/", b"./")), raw
        parts = raw.rstrip(b"/").split(b"/")
        assert all(p not in (b"", b".", b"..") for p in parts), raw
        assert not any(p.startswith(b".wh.") for p in parts), raw
        assert raw.endswith(b"/") == info.isdir(), raw
        assert raw not in seen, raw
        parent = raw.rstrip(b"/").rpartition(b"/")[0]
        assert not parent or parent + b"/" in seen, f"{raw!r} comes before its directory"
        seen.add(raw)
        if info.islnk():  # a later name of a file already written, in this very tar
            assert os.fsencode(info.linkname) in seen, raw
    assert tar.stat().st_size % 10240 == 0


def unpack(tar: Path, dest: Path) -> Path:
    """GNU tar as root: ``--xattrs --xattrs-include='*' --numeric-owner -xpf``."""
    need_root()
    need_tool("tar")
    dest.mkdir(parents=True)
    gnu_tar_extract(tar, dest)
    return dest


def umoci_rootfs(layout: Path, tag: str, bundle: Path) -> Path:
    need_root()
    need_tool("umoci")
    result = subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return bundle / "rootfs"


def assert_equals_umoci(tar: Path, layout: Path, tag: str, work: Path) -> int:
    """GNU tar's extraction of ``tar`` against ``umoci unpack`` of ``layout:tag``: every
    entry (the root too), hardlink groups and link counts; the number of entries."""
    ours = unpack(tar, work / "ours")
    theirs = umoci_rootfs(layout, tag, work / "bundle")
    return compare(ours, theirs, set())


def content(tar: Path) -> dict[str, bytes]:
    """Name -> content of each regular file (hardlinks resolved by tarfile)."""
    with tarfile.open(tar, "r:", encoding="utf-8", errors="surrogateescape") as t:
        out = {}
        for info in t.getmembers():
            if info.isfile() or info.islnk():
                f = t.extractfile(info)
                assert f is not None
                out[info.name] = f.read()
        return out


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshotter_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "snapshotter.cli", *args]


# -- oracles -------------------------------------------------------------------------------


def test_rich_image_equals_umoci_unpack(cli, tmp_path):
    """Every kind of entry, setuid/setgid/sticky, owners, binary xattrs, nanosecond
    mtimes, hardlinks (one partner replaced), opaque and re-created directories, a dir
    that became a file or a symlink and back, a 5 MB and a 64 MB sparse file."""
    layout = pull(cli, tmp_path, oracle_layers())
    tar = export(cli, tmp_path / "out.tar")
    count = assert_equals_umoci(tar, layout, "t", tmp_path)
    assert count >= 40
    by_name = {m.name: m for m in members(tar)}
    # What the comparison covered really is in the tar.
    assert by_name["bin/su"].mode == 0o4750 and by_name["tmp"].mode == 0o1777
    assert by_name["hl/three"].islnk() and by_name["hl/three"].linkname == "hl/one"
    assert by_name["hl/two"].isfile()  # replaced in layer 2: its own file now
    assert by_name["dev/sda"].isblk() and (
        by_name["dev/sda"].devmajor,
        by_name["dev/sda"].devminor,
    ) == (8, 0)
    assert by_name["run/fifo"].isfifo()
    assert by_name["x"].pax_headers["SCHILY.xattr.user.k"] == "v2"
    assert by_name["home/u/notes"].pax_headers["mtime"] == "1600000000.000000001"
    assert by_name["."].mode == 0o755 and by_name["abs"].linkname == "/etc/hostname"
    assert by_name["abs"].mode == 0o777  # the layer's header says 0755: Linux shows 0777
    assert {"etc/gone", "etc/gonedir", "opq/old1", "wr/old", "dangling"}.isdisjoint(by_name)


def test_umoci_built_image_equals_umoci_unpack(cli, tmp_path):
    """An image umoci wrote itself (whiteouts, replaced dirs, an opaque insert)."""
    layout = _umoci_image(tmp_path / "img", [_layer1, _layer2, _layer3], _newhome)
    assert cli("pull", "-q", f"oci:{layout}:{TAG}", "--name", NAME).rc == 0
    tar = export(cli, tmp_path / "out.tar")
    assert assert_equals_umoci(tar, layout, TAG, tmp_path) >= 30


@pytest.mark.parametrize(
    "transport,rel,ref,skopeo_ref",
    [(t, r, ref, s) for t, r, ref, s, *_ in IMPORTS],
    ids=[f"{t}:{Path(r).name}:{ref}" for t, r, ref, *_ in IMPORTS],
)
def test_fixture_exports_equal_umoci_unpack(
    fixtures_dir, cli, tmp_path, transport, rel, ref, skopeo_ref
):
    result = cli("pull", "--json", "-q", _source(fixtures_dir, transport, rel, ref))
    assert result.rc == 0, result.err
    digest = json.loads(result.out)["digest"]
    tar = export(cli, tmp_path / "out.tar", digest)
    need_tool("skopeo")
    layout = tmp_path / "skopeo"
    src = _source(fixtures_dir, transport, rel, skopeo_ref if skopeo_ref is not None else ref)
    # gzip for all: umoci 0.4 unpacks no zstd layer (dive--test-oci-zstd-image).
    subprocess.run(
        ["skopeo", "copy", "-q", "--dest-compress-format", "gzip", src, f"oci:{layout}:x"],
        check=True,
    )
    assert assert_equals_umoci(tar, layout, "x", tmp_path) >= 1


def test_export_equals_tar_of_the_mounted_view(cli, store_root, tmp_path):
    """GNU tar reading the FUSE mount and our export agree member by member, in order:
    the same names, types, modes, owners, nanosecond mtimes, link targets, devices,
    xattrs, hardlinks (the first name carries the content) and content."""
    need_root()
    need_fuse()
    need_tool("tar")
    pull(cli, tmp_path, oracle_layers())
    ours = export(cli, tmp_path / "out.tar")
    mp = tmp_path / "mp"
    mp.mkdir()
    theirs = tmp_path / "mount.tar"
    with mounted(cli, store_root, NAME, mp):
        subprocess.run(
            [
                "tar",
                "--create",
                "--format=pax",
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "--sort=name",
                "-C",
                str(mp),
                "-f",
                str(theirs),
                ".",
            ],
            check=True,
        )
    a, b = described(ours), described(theirs)
    assert [n for n, _ in a] == [n for n, _ in b]
    problems = [f"  {x}\n  {y}" for x, y in zip(a, b, strict=True) if x != y]
    assert not problems, f"{len(problems)} members differ\n" + "\n".join(problems[:8])
    assert len(a) >= 40


def described(tar: Path) -> list[tuple[str, tuple[object, ...]]]:
    """Each member as a comparable row; names without GNU tar's ``./`` prefix."""

    def norm(name: str) -> str:
        return "" if name in (".", "./") else name.removeprefix("./")

    rows = []
    with tarfile.open(tar, "r:", encoding="utf-8", errors="surrogateescape") as t:
        for m in t.getmembers():
            data = b""
            if m.isfile():
                f = t.extractfile(m)
                assert f is not None
                data = f.read()
            xattrs = sorted(
                (k, v) for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")
            )
            rows.append(
                (
                    norm(m.name),
                    (
                        m.type,
                        m.mode,
                        m.uid,
                        m.gid,
                        m.size,
                        mtime_ns(m),
                        norm(m.linkname) if m.islnk() else m.linkname,
                        (m.devmajor, m.devminor) if m.ischr() or m.isblk() else (0, 0),
                        xattrs,
                        hashlib.sha256(data).hexdigest(),
                    ),
                )
            )
    return rows


def mtime_ns(m: tarfile.TarInfo) -> int:
    text = m.pax_headers.get("mtime")
    if text is None:
        return int(m.mtime) * 10**9
    whole, _, frac = text.partition(".")
    return int(whole) * 10**9 + int((frac + "0" * 9)[:9])


# -- crane's bugs ----------------------------------------------------------------------------


def test_rm_rf_then_mkdir_hides_the_old_files_crane_2029(cli, tmp_path):
    base = LayerBuilder().dir("d").file("d/old", b"old").dir("d/sub").file("d/sub/deep", b"x")
    base.dir("e").file("e/old", b"old")
    # `RUN rm -rf /d && mkdir /d` as overlay2 exports it (an opaque marker), and as a
    # whiteout of the directory followed by the new one in the same layer.
    top = LayerBuilder().dir("d", mode=0o700).opaque("d").file("d/new", b"new")
    top.whiteout("e").dir("e").file("e/new", b"new")
    layout = pull(cli, tmp_path, [base, top])
    tar = export(cli, tmp_path / "out.tar")
    names = {m.name for m in members(tar)}
    assert {n for n in names if n.startswith(("d", "e"))} == {"d", "d/new", "e", "e/new"}
    assert {m.name: m.mode for m in members(tar)}["d"] == 0o700
    assert_equals_umoci(tar, layout, "t", tmp_path)


def test_hardlink_whose_partner_a_later_layer_replaces_keeps_old_content_crane_977(cli, tmp_path):
    base = LayerBuilder().dir("h").file("h/t1", b"123", mode=0o640, uid=5)
    base.hardlink("h/t2", "h/t1").hardlink("h/t3", "h/t1")
    base.dir("g").file("g/a", b"abc").hardlink("g/b", "g/a")
    # Layer 2 overwrites the first name of one group and deletes the first of the other.
    top = LayerBuilder().dir("h").file("h/t1", b"456").dir("g").whiteout("g/a")
    layout = pull(cli, tmp_path, [base, top])
    tar = export(cli, tmp_path / "out.tar")
    by_name = {m.name: m for m in members(tar)}
    files = content(tar)
    assert (files["h/t1"], files["h/t2"], files["h/t3"]) == (b"456", b"123", b"123")
    assert by_name["h/t2"].isfile() and by_name["h/t2"].mode == 0o640
    assert by_name["h/t3"].islnk() and by_name["h/t3"].linkname == "h/t2"
    assert by_name["g/b"].isfile() and files["g/b"] == b"abc" and "g/a" not in by_name
    assert_equals_umoci(tar, layout, "t", tmp_path)
    ours = tmp_path / "ours"
    assert os.lstat(ours / "h/t2").st_ino == os.lstat(ours / "h/t3").st_ino
    assert os.lstat(ours / "h/t1").st_ino != os.lstat(ours / "h/t2").st_ino


def test_symlink_targets_are_kept_verbatim_crane_2238_2268(cli, tmp_path):
    targets = {
        "lib64": "/usr/lib64",  # absolute (#2238 dropped these)
        "usr/bin/up": "../lib/x",  # relative, in the root (#2268 pruned these)
        "usr/lib/deep": "../../etc/passwd",
        "usr/lib/escape": "../../../../../etc/shadow",  # escapes: still data, kept
        "dot": "./usr/./lib//x",
        "dangling": "/nowhere",
        "self": "self",
    }
    layer = LayerBuilder().dir("usr").dir("usr/bin").dir("usr/lib").file("usr/lib/x", b"x")
    for path, target in targets.items():
        layer.symlink(path, target)
    layout = pull(cli, tmp_path, [layer])
    tar = export(cli, tmp_path / "out.tar")
    assert {m.name: m.linkname for m in members(tar) if m.issym()} == targets
    assert_equals_umoci(tar, layout, "t", tmp_path)


def test_root_entry_in_a_layer_crane_2399(cli, tmp_path):
    """A layer whose tar starts with ``./`` (distroless, bazel): imported, and the root's
    metadata is the export's one ``./`` member; the export read back as a layer gives the
    same tar again."""
    base = (
        LayerBuilder()
        .dir("./", mode=0o751, uid=3, gid=4, raw_name=True)
        .dir("./etc/", raw_name=True)
        .file("./etc/os-release", b"ID=distroless\n", raw_name=True)
    )
    top = LayerBuilder().dir(".", mode=0o755, raw_name=True).file("/abs", b"a", raw_name=True)
    pull(cli, tmp_path, [base])
    first = export(cli, tmp_path / "one.tar")
    assert listed(first) == [b"./", b"etc/", b"etc/os-release"]
    root = members(first)[0]
    assert (root.name, root.mode, root.uid, root.gid) == (".", 0o751, 3, 4)
    # Our own output as input: one layer made of the exported tar.
    again = LayerBuilder().raw_bytes(first.read_bytes())
    pull(cli, tmp_path, [again], "example.com/again:1")
    assert export(cli, tmp_path / "again.tar", "example.com/again:1").read_bytes() == (
        first.read_bytes()
    )
    # Python's tarfile extracts it too, the root member included.
    with tarfile.open(first, "r:") as t:
        t.extractall(tmp_path / "py", filter="tar")
    assert (tmp_path / "py/etc/os-release").read_bytes() == b"ID=distroless\n"
    assert stat.S_IMODE((tmp_path / "py").stat().st_mode) == 0o751
    layout = pull(cli, tmp_path, [base, top], "example.com/two:1")
    second = export(cli, tmp_path / "two.tar", "example.com/two:1")
    assert listed(second) == [b"./", b"abs", b"etc/", b"etc/os-release"]
    assert members(second)[0].mode == 0o755
    assert_equals_umoci(second, layout, "t", tmp_path)


def test_one_layer_image_with_whiteouts_exports_none_crane_1623(cli, tmp_path):
    layer = (
        LayerBuilder()
        .dir("d")
        .opaque("d")
        .file("d/kept", b"k")
        .whiteout("gone")
        .whiteout("d/also-gone")
        .file("plain", b"p")
    )
    assert any(b".wh." in n for n in listed_layer(layer))  # the input has them
    layout = pull(cli, tmp_path, [layer])
    tar = export(cli, tmp_path / "out.tar")  # check_form: no .wh. name
    assert listed(tar) == [b"./", b"d/", b"d/kept", b"plain"]
    assert_equals_umoci(tar, layout, "t", tmp_path)


def listed_layer(layer: LayerBuilder) -> list[bytes]:
    with tarfile.open(fileobj=io.BytesIO(layer.tar_bytes())) as t:
        return [os.fsencode(n) for n in t.getnames()]


# -- names and content -----------------------------------------------------------------------


def test_odd_names_round_trip(cli, tmp_path):
    """Names that are not UTF-8, long ones (PAX ``path``), a newline, non-ASCII link
    targets and a hardlink to an odd name come out byte for byte through GNU tar."""
    odd, binary = os.fsdecode(b"caf\xe9"), os.fsdecode(b"bin\xff\xfe")  # not UTF-8
    long_dir = "ü" * 60  # 120 bytes: too long for the ustar name field
    layer = (
        LayerBuilder()
        .dir(odd)
        .file(f"{odd}/file", b"1")
        .file(binary, b"2", xattrs={"user.v": b"\x00\xff"})
        .hardlink(os.fsdecode(b"link\xe9"), binary)
        .symlink("sym", os.fsdecode(b"../t\xe9rget"))
        .dir(long_dir)
        .file(f"{long_dir}/{'n' * 200}", b"3")
        .symlink("longlink", "/" + "t" * 150)
        .file("new\nline", b"4")
    )
    layout = pull(cli, tmp_path, [layer])
    tar = export(cli, tmp_path / "out.tar")
    long_raw = long_dir.encode()
    assert listed(tar) == [
        b"./",
        b"bin\xff\xfe",
        b"caf\xe9/",
        b"caf\xe9/file",
        b"link\xe9",
        b"longlink",
        b"new\nline",
        b"sym",
        long_raw + b"/",
        long_raw + b"/" + b"n" * 200,
    ]
    by_name = {os.fsencode(m.name): m for m in members(tar)}
    assert by_name[b"link\xe9"].islnk() and by_name[b"link\xe9"].linkname == binary
    ours = unpack(tar, tmp_path / "ours")
    raw = os.fsencode(ours)
    assert os.readlink(raw + b"/sym") == b"../t\xe9rget"
    assert os.readlink(raw + b"/longlink") == b"/" + b"t" * 150
    assert os.lstat(raw + b"/link\xe9").st_ino == os.lstat(raw + b"/bin\xff\xfe").st_ino
    assert os.getxattr(raw + b"/bin\xff\xfe", "user.v") == b"\x00\xff"
    assert Path(os.fsdecode(raw + b"/caf\xe9/file")).read_bytes() == b"1"
    assert assert_equals_umoci(tar, layout, "t", tmp_path / "u") == 10  # with the root


def test_big_and_sparse_files_export_their_content(cli, tmp_path):
    big = random.Random(10).randbytes(10 << 20)
    layer = (
        LayerBuilder()
        .file("big", big)
        .hardlink("big2", "big")
        .sparse_file("sparse", SPARSE_SIZE, SPARSE_CHUNKS)
        .file("small", b"s" * 100)
        .file("edge", b"e" * (64 * 1024))  # the largest file copied through the buffer
        .file("edge1", b"f" * (64 * 1024 + 1))  # the smallest through sendfile
    )
    pull(cli, tmp_path, [layer])
    tar = export(cli, tmp_path / "out.tar")
    files = content(tar)
    assert hashlib.sha256(files["big"]).digest() == hashlib.sha256(big).digest()
    assert files["big2"] == files["big"]
    assert files["sparse"] == sparse_bytes(0, SPARSE_SIZE)
    assert files["edge"] == b"e" * 65536 and files["edge1"] == b"f" * 65537
    big_member = next(m for m in members(tar) if m.name == "big2")
    assert big_member.islnk() and big_member.size == 0  # content once


def test_layer_n_is_the_image_as_of_layer_n(cli, tmp_path):
    layers = oracle_layers()
    pull(cli, tmp_path, layers)
    for n in (1, 2):
        pull(cli, tmp_path, layers[:n], f"example.com/first{n}:1")
        ours = export(cli, tmp_path / f"layer{n}.tar", NAME, "--layer", str(n))
        alone = export(cli, tmp_path / f"first{n}.tar", f"example.com/first{n}:1")
        assert sha256_file(ours) == sha256_file(alone)
    empty = export(cli, tmp_path / "empty.tar", NAME, "--layer", "0")
    root = members(empty)
    assert len(root) == 1 and (root[0].name, root[0].mode, root[0].mtime) == (".", 0o755, 0)


# -- --path: one subtree ---------------------------------------------------------------------


def subtree_layers() -> list[LayerBuilder]:
    """data/srv, with what the layers can do below it (every directory has its own entry
    in every layer that uses it, as for oracle_layers), a hardlink pair inside it and
    one split across its boundary; "link" leads to data."""
    t = Decimal("1700000000.123456789")
    base = LayerBuilder(mtime=t).dir("data").dir("data/srv", mode=0o750, uid=3, gid=4)
    base.dir("data/srv/etc").file("data/srv/etc/conf", b"v1").file("data/srv/etc/gone", b"g")
    base.dir("data/srv/opq").file("data/srv/opq/old", b"o").dir("data/srv/opq/sub")
    base.file("data/srv/opq/sub/deep", b"d").file("data/srv/f2d", b"a file first")
    base.file("data/srv/su", b"#!", mode=0o4755).fifo("data/srv/fifo")
    base.chardev("data/srv/null", 1, 3).symlink("data/srv/abs", "/etc/passwd")
    base.symlink("data/srv/up", "../../outside")
    base.file("data/srv/x", b"x", xattrs={"user.k": b"\x00\xff"}, mtime=Decimal("1.000000001"))
    base.file("data/srv/pair1", b"pair").hardlink("data/srv/pair2", "data/srv/pair1")
    base.dir("outside").file("outside/out", b"split").hardlink("data/srv/split", "outside/out")
    base.file("data/sibling", b"not exported").symlink("link", "data")
    top = LayerBuilder(mtime=t).dir("data").dir("data/srv", mode=0o750, uid=3, gid=4)
    top.dir("data/srv/etc").whiteout("data/srv/etc/gone").file("data/srv/etc/conf", b"v2")
    top.dir("data/srv/opq").opaque("data/srv/opq").file("data/srv/opq/new", b"n")
    top.dir("data/srv/f2d", mode=0o700).file("data/srv/f2d/in", b"i")
    return [base, top]


def subtree_export(cli: Cli, out: Path, path: str, image: str = NAME) -> list[bytes]:
    """``export --path``; the member names, checked for the subtree's form."""
    result = cli("export", image, "-o", str(out), "--path", path)
    assert result.rc == 0, result.err
    names = listed(out)
    top = names[0]
    assert top != b"./" and b"/" not in top.rstrip(b"/")
    assert all(n.startswith(top) for n in names[1:]) and len(set(names)) == len(names)
    assert out.stat().st_size % 10240 == 0
    return names


def test_export_path_of_a_directory_equals_that_subtree_of_umoci_unpack(cli, tmp_path):
    layout = pull(cli, tmp_path, subtree_layers())
    tar = tmp_path / "srv.tar"
    names = subtree_export(cli, tar, "/link/srv")  # a symlink among the parents: followed
    assert names[:3] == [b"srv/", b"srv/abs", b"srv/etc/"]
    assert b"srv/etc/gone" not in names and b"srv/opq/old" not in names
    ours = unpack(tar, tmp_path / "ours")
    assert os.listdir(ours) == ["srv"]
    theirs = umoci_rootfs(layout, "t", tmp_path / "bundle")
    # srv/split's other name is outside: its link count here is the subtree's.
    assert compare(ours / "srv", theirs / "data" / "srv", {"split"}, "umoci") == 16
    by_name = {m.name: m for m in members(tar)}
    assert by_name["srv"].mode == 0o750 and by_name["srv/split"].isfile()
    assert by_name["srv/pair2"].islnk() and by_name["srv/pair2"].linkname == "srv/pair1"


def test_export_path_splits_a_hardlink_group_at_the_subtree(cli, store_root, tmp_path):
    """The first name met inside the subtree carries the content, later ones link to it;
    names outside are not in the tar, whichever came first in the whole view."""
    layer = LayerBuilder().dir("a").file("a/one", b"linked").dir("b")
    layer.hardlink("b/two", "a/one").hardlink("b/three", "a/one").hardlink("c", "a/one")
    pull(cli, tmp_path, [layer])
    assert subtree_export(cli, tmp_path / "b.tar", "/b") == [b"b/", b"b/three", b"b/two"]
    infos = members(tmp_path / "b.tar")
    assert infos[1].isfile() and infos[1].size == 6
    assert infos[2].islnk() and infos[2].linkname == "b/three"
    assert content(tmp_path / "b.tar") == {"b/three": b"linked", "b/two": b"linked"}
    # A non-directory alone: one member, named by its own name, with the content.
    assert subtree_export(cli, tmp_path / "two.tar", "/b/two") == [b"two"]
    assert content(tmp_path / "two.tar") == {"two": b"linked"}
    # The whole view names the group from a/one as ever; "/" is the whole view.
    whole = export(cli, tmp_path / "all.tar", NAME, "--path", "/")
    assert content(whole)["b/two"] == b"linked"
    assert [m.name for m in members(whole) if m.islnk()] == ["b/three", "b/two", "c"]
    view = open_image(Store(store_root), NAME).view()
    buf = io.BytesIO()
    summary = write_tar(view, buf, path="b")
    assert (summary.members, summary.hardlinks, summary.content_bytes) == (3, 1, 6)
    with pytest.raises(NotFound, match="'/b/nope'"):
        write_tar(view, io.BytesIO(), path="b/nope")
    missing = cli("export", NAME, "-o", str(tmp_path / "x.tar"), "--path", "/nope")
    assert missing.rc == 1 and "no such path '/nope'" in missing.err
    assert not (tmp_path / "x.tar").exists()


def test_pax_times_are_exact():
    assert pax_time(1_700_000_000_123_456_789) == b"1700000000.123456789"
    assert pax_time(1_600_000_000_000_000_001) == b"1600000000.000000001"
    assert pax_time(1_500_000_000_500_000_000) == b"1500000000.5"
    assert pax_time(7_000_000_000) == b"7"
    assert pax_time(-1_500_000_000) == b"-1.5"


def test_times_and_owners_beyond_ustar_fields(cli, tmp_path):
    """A negative mtime, one past the 11 octal digits (year 2255), owners past 2**21:
    PAX records, read back exactly by tarfile and GNU tar."""
    layer = (
        LayerBuilder()
        .file("old", b"o", mtime=-1)
        .file("late", b"l", mtime=9 * 10**9)
        .file("owned", b"w", uid=3_000_000, gid=4_000_000)
    )
    pull(cli, tmp_path, [layer])
    tar = export(cli, tmp_path / "out.tar")
    by_name = {m.name: m for m in members(tar)}
    assert mtime_ns(by_name["old"]) == -(10**9)
    assert mtime_ns(by_name["late"]) == 9 * 10**18
    assert by_name["late"].pax_headers["mtime"] == "9000000000"
    assert (by_name["owned"].uid, by_name["owned"].gid) == (3_000_000, 4_000_000)
    ours = unpack(tar, tmp_path / "ours")
    st = os.lstat(ours / "owned")
    assert (st.st_uid, st.st_gid) == (3_000_000, 4_000_000)
    assert os.lstat(ours / "late").st_mtime_ns == 9 * 10**18
    assert os.lstat(ours / "old").st_mtime_ns == -(10**9)


def test_device_numbers_past_octal_use_base_256():
    """No builder writes them (tarfile refuses in PAX): the header alone, read back."""
    node = Node(5, EntryKind.CHAR, 0o600, 0, 0, 0, 7 * 10**9, 1, rdev_major=5, rdev_minor=3_000_000)
    block = header(b"dev", node, typeflag=b"3", size=0)
    info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    assert (info.name, info.devmajor, info.devminor, info.mtime) == ("dev", 5, 3_000_000, 7)
    assert info.mode == 0o600 and info.ischr()


# -- the command -----------------------------------------------------------------------------


@pytest.fixture
def small(cli: Cli, tmp_path: Path) -> str:
    pull(cli, tmp_path, oracle_layers()[:2])
    return NAME


def test_stdout_pipe_gets_the_same_bytes_as_o_file(cli, store_root, tmp_path, small):
    tar = export(cli, tmp_path / "out.tar")
    for extra in ([], ["-o", "-"]):
        result = subprocess.run(
            snapshotter_cmd("--root", str(store_root), "export", NAME, *extra),
            capture_output=True,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
        assert hashlib.sha256(result.stdout).hexdigest() == sha256_file(tar)
        assert result.stderr == b""


def on_a_terminal(args: list[str], *, stderr_too: bool = False) -> tuple[int, bytes, bytes]:
    """``snapshotter ARGS`` with stdout (and ``stderr_too``: stderr) on a pty: exit status,
    what reached the terminal, stderr otherwise."""
    run = run_on_a_terminal(*args, stderr=stderr_too)
    return run.rc, run.shown, run.err


def test_refuses_to_write_to_a_terminal(store_root, tmp_path, small):
    for extra in ([], ["-o", "-"]):
        rc, shown, err = on_a_terminal(["--root", str(store_root), "export", NAME, *extra])
        assert rc == 1
        assert err.decode().splitlines() == [
            "snapshotter: error: export: refusing to write a tar to a terminal; "
            "use -o FILE or redirect stdout"
        ]
        assert shown == b""


def test_o_file_with_stdout_on_a_terminal_works_and_shows_progress(store_root, tmp_path, small):
    out = tmp_path / "out.tar"
    args = ["--root", str(store_root), "export", NAME, "-o", str(out)]
    rc, shown, _ = on_a_terminal(args, stderr_too=True)
    assert rc == 0
    assert f"exported {len(members(out))} entries" in shown.decode(errors="replace"), shown
    check_form(out)


def _dir_state(d: Path) -> dict[str, bytes | str]:
    """Name -> content of each file in ``d`` (a size for big ones: a failure message must
    not print a tar)."""
    return {
        p.name: p.read_bytes() if p.stat().st_size < 100 else f"<{p.stat().st_size} bytes>"
        for p in d.iterdir()
    }


def test_o_into_a_missing_directory_fails_with_one_line(cli, tmp_path, small):
    out = tmp_path / "no" / "such" / "out.tar"
    result = cli("export", NAME, "-o", str(out))
    assert result.rc == 1
    assert result.err.splitlines() == [
        f"snapshotter: error: cannot write '{out}': no such directory '{out.parent}'"
    ]
    assert not (tmp_path / "no").exists()


def test_failures_leave_an_existing_file_untouched(cli, store_root, tmp_path, small):
    work = tmp_path / "outdir"
    work.mkdir()
    out = work / "out.tar"
    out.write_bytes(b"precious")
    result = cli("export", NAME, "--layer", "3", "-o", str(out))
    assert result.rc == 1 and "--layer 3 is out of range 0..2" in result.err
    assert _dir_state(work) == {"out.tar": b"precious"}
    # A content file gone from the store: found mid-way, after much was written.
    data = next(
        p for p in store_root.glob("snapshots/sha256/*/data/*") if p.stat().st_size == SPARSE_SIZE
    )
    data.unlink()
    result = cli("export", NAME, "-o", str(out))
    assert result.rc == 1
    assert len(result.err.splitlines()) == 1
    assert "is missing from the store" in result.err
    assert _dir_state(work) == {"out.tar": b"precious"}


def test_a_content_file_of_the_wrong_size_is_a_clear_error(cli, store_root, tmp_path, small):
    data = next(
        p for p in store_root.glob("snapshots/sha256/*/data/*") if p.stat().st_size == 5 << 20
    )
    os.truncate(data, 1000)
    out = tmp_path / "out.tar"
    result = cli("export", NAME, "-o", str(out))
    assert result.rc == 1
    assert result.err.splitlines() == [
        f"snapshotter: error: content file {data} has 1000 bytes where the merged tree says "
        f"{5 << 20}"
    ]
    assert not out.exists()


def test_o_onto_a_directory_fails(cli, tmp_path, small):
    result = cli("export", NAME, "-o", str(tmp_path))
    assert result.rc == 1 and len(result.err.splitlines()) == 1 and "is a directory" in result.err


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_export_leaves_nothing(cli, store_root, tmp_path, signum):
    """Killed mid-way (even with SIGKILL): no FILE, no temporary file, the old FILE kept."""
    layer = LayerBuilder().sparse_file("huge", 4 << 30, {0: b"head", (4 << 30) - 4: b"tail"})
    pull(cli, tmp_path, [layer], "example.com/huge:1")
    work = tmp_path / "outdir"
    work.mkdir()
    out = work / "out.tar"
    out.write_bytes(b"precious")
    proc = subprocess.Popen(
        snapshotter_cmd("--root", str(store_root), "export", "example.com/huge:1", "-o", str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        written = _wait_for_output(proc.pid, work, 64 << 20)
        assert proc.poll() is None, "the export ended before it could be interrupted"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert written >= 64 << 20
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130
        assert err.decode().splitlines() == ["snapshotter: interrupted"]
    assert _dir_state(work) == {"out.tar": b"precious"}


def _wait_for_output(pid: int, directory: Path, size: int) -> int:
    """Wait until process ``pid`` has written ``size`` bytes to a file in ``directory``
    (seen through /proc/PID/fd, which also sees an unnamed O_TMPFILE); that size."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = f"/proc/{pid}/fd/{fd}"
            try:
                if os.readlink(link).startswith(f"{directory}/"):
                    st = os.stat(link)
                    if stat.S_ISREG(st.st_mode) and st.st_size >= size:
                        return st.st_size
            except FileNotFoundError:
                continue
        time.sleep(0.005)
    raise AssertionError(f"process {pid} wrote no {size} bytes into {directory}")


def test_platform_picks_the_image_of_an_index(fixtures_dir, cli, tmp_path):
    layout = fixtures_dir / "oci-layout" / "stereoscope--multiplatform_oci_dir"
    assert cli("pull", "-q", "--all-platforms", f"oci:{layout}").rc == 0
    name = "docker.io/library/multi-platform:latest"
    for platform in ("linux/amd64", "linux/arm64"):
        tar = export(
            cli, tmp_path / f"{platform.replace('/', '-')}.tar", name, "--platform", platform
        )
        assert listed(tar) == [
            b"./",
            b"linux/",
            f"{platform}/".encode(),
            f"{platform}/README.md".encode(),
        ]
    result = cli("export", name, "--platform", "linux/s390x", "-o", str(tmp_path / "no.tar"))
    assert result.rc == 1 and "available: linux/amd64, linux/arm64" in result.err
    assert not (tmp_path / "no.tar").exists()


def test_write_tar_takes_a_descriptor_or_a_file_object(cli, store_root, tmp_path, small):
    reference = export(cli, tmp_path / "ref.tar").read_bytes()
    view = open_image(Store(store_root), NAME).view()
    memory = io.BytesIO()  # no fileno: write calls only
    summary = write_tar(view, memory)
    assert memory.getvalue() == reference and summary.tar_bytes == len(reference)
    assert (summary.members, summary.hardlinks) == (len(members(tmp_path / "ref.tar")), 2)
    with open(tmp_path / "buffered.tar", "wb") as f:
        f.write(b"pending")  # still in the buffer: flushed before the descriptor is used
        write_tar(view, f)
    assert (tmp_path / "buffered.tar").read_bytes() == b"pending" + reference
    with open(tmp_path / "fd.tar", "wb", buffering=0) as f:
        write_tar(view, f.fileno())
    assert (tmp_path / "fd.tar").read_bytes() == reference
