"""ls and cat (explore/files.py, cli/files.py): the merged view without mounting it.

``ls -R --json`` must list exactly what the mount shows, in the mount's order: it is
compared with a walk of the real FUSE mount (``snapshotter mount``) on images built here
and on every image of ../shared/fixtures.  ``cat`` resolves symlinks inside the image only,
streams content from the store, and names the layer that deleted a path.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import REPO, Run, on_terminal, run_in
from test_explore_blame import StoryImage

from snapshotter.cli.format import rfc3339_ns
from snapshotter.explore.files import MAX_SYMLINKS, Failure, resolve
from snapshotter.explore.image import open_image
from snapshotter.store.store import Store


def run_binary(root: Path, *args: str, mode: str = "w") -> tuple[int, bytes, str]:
    """The command in-process with stdout on a real file (opened with ``mode``): cat's
    sendfile path, or with "a" (O_APPEND, which sendfile refuses) its plain-write path."""
    from snapshotter.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / "out"
        out_path.touch()
        err = io.StringIO()
        with (
            open(out_path, mode, encoding="utf-8") as out,
            redirect_stdout(out),
            redirect_stderr(err),
        ):
            try:
                rc = main(["--root", str(root), *args])
            except SystemExit as exc:
                rc = int(exc.code or 0)
        return rc, out_path.read_bytes(), err.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- the image -------------------------------------------------------------------------------

PASSWD = b"root:x:0:0:the image's own passwd:/root:/bin/sh\n"
BINARY = bytes(range(256)) * 3 + b"\x00\xff\r\n"
BIG = random.Random(10).randbytes(10 << 20)
SPARSE_SIZE = 256 << 20
SPARSE_CHUNKS = {0: b"head", (100 << 20) + 5: b"middle", SPARSE_SIZE - 4: b"tail"}
HISTORY_NOTE = "tests/builders.py layer {}"


def files_layers(host_file: Path) -> list[LayerBuilder]:
    l1 = (
        LayerBuilder()
        .dir("./", raw_name=True)
        .dir("etc")
        .file("etc/passwd", PASSWD)
        .file("etc/f", b"one\n")
        .dir("bin")
        .file("bin/sh", BINARY, mode=0o755)
        .file("big", BIG, mode=0o444)
        .sparse_file("sparse", SPARSE_SIZE, SPARSE_CHUNKS)
        .file("empty", b"")
        .file("x", b"xattrs", xattrs={"user.k": b"v", "user.bin": b"\x00\xff"})
        .dir("links")
        .symlink("links/rel", "../etc/passwd")
        .symlink("links/abs", "/etc/passwd", mode=0o755)  # as BSD tar writes it: 0777 shows
        .symlink("links/escape", "../../../../etc/passwd")
        .symlink("links/escape-abs", "/../../etc/./passwd")
        .symlink("links/host", str(host_file))
        .symlink("links/chain1", "chain2")
        .symlink("links/chain2", "./chain3")
        .symlink("links/chain3", "/links/abs")
        .symlink("links/loop1", "loop2")
        .symlink("links/loop2", "loop1")
        .symlink("links/self", "self")
        .symlink("links/dangling", "nowhere")
        .symlink("links/dirlink", "/etc")
        .symlink("links/through", "dirlink/passwd")
        .symlink("links/dotdot", "dirlink/../bin/sh")
        .symlink("links/todir", "../etc")
        .symlink("links/notdir", "../etc/passwd/x")
        .dir("dev")
        .chardev("dev/null", 1, 3)
        .blockdev("dev/sda", 8, 0, mode=0o660, gid=6)
        .fifo("dev/fifo", mode=0o600)
        .dir("hl")
        .file("hl/a", b"pair")
        .hardlink("hl/b", "hl/a")
        .dir("opq")
        .file("opq/old", b"old")
        .dir("d2f")
        .file("d2f/child", b"c")
        .dir("gone")
        .file("gone/inner", b"secret")
        .dir("home/u", mode=0o700, uid=1000, gid=1000)
        .file("home/u/notes", b"n", mode=0o600, uid=1000, gid=1000)
    )
    # 40 links in a row resolve; one more is ELOOP (Linux's MAXSYMLINKS).
    for i in range(MAX_SYMLINKS - 1):
        l1.symlink(f"links/k{i}", f"k{i + 1}")
    l1.symlink(f"links/k{MAX_SYMLINKS - 1}", "/etc/passwd")
    l1.symlink("links/k-one-more", "k0")
    l2 = (
        LayerBuilder()
        .file("hl/b", b"new b")
        .file("d2f", b"now a file")
        .dir("opq")
        .opaque("opq")
        .file("opq/new", b"new")
    )
    l3 = LayerBuilder().file("etc/f", b"three\n")
    l4 = LayerBuilder().whiteout("etc/f").whiteout("gone")
    l5 = (
        LayerBuilder(format=tarfile.USTAR_FORMAT)
        .file("caf\udce9", b"latin-1 name")
        .file("ctl\nname\x1b[31m", b"control characters")
    )
    return [l1, l2, l3, l4, l5]


@pytest.fixture(scope="module")
def host_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file on the host that no link in the image may ever reach."""
    path = tmp_path_factory.mktemp("host") / "secret"
    path.write_bytes(b"HOST FILE: must never be printed\n")
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, host_file: Path) -> Path:
    """A store holding the files image as ``files:1``."""
    root = tmp_path_factory.mktemp("files")
    image = ImageBuilder(files_layers(host_file), compression="none")
    layout = write_oci_layout(root / "layout", {"1": image})
    result = run_in(root / "store")("pull", "-q", f"oci:{layout}:1", "--name", "files:1")
    assert result.rc == 0, result.err
    return root / "store"


@pytest.fixture(scope="module")
def run(store: Path) -> Run:
    return run_in(store)


# -- ls ----------------------------------------------------------------------------------------


def test_ls_lists_a_directory_as_absolute_paths(run):
    result = run("ls", "files:1")
    assert result.rc == 0, result.err
    assert result.out == "\n".join(
        [
            "/big",
            "/bin",
            "/caf\udce9",
            "/ctl\nname\x1b[31m",
            "/d2f",
            "/dev",
            "/empty",
            "/etc",
            "/hl",
            "/home",
            "/links",
            "/opq",
            "/sparse",
            "/x",
            "",
        ]
    )
    assert run("ls", "files:1", "/etc").out == "/etc/passwd\n"
    assert run("ls", "files:1", "etc/").out == "/etc/passwd\n"
    assert run("ls", "files:1", "/etc/passwd").out == "/etc/passwd\n"  # a file: itself
    assert run("ls", "-d", "files:1", "/etc").out == "/etc\n"
    assert run("ls", "-d", "files:1", "/").out == "/\n"
    assert run("ls", "-d", "-R", "files:1", "/home").out == "/home\n"  # -d wins, as in ls


def test_ls_recursive_is_depth_first_in_name_order(run):
    assert run("ls", "-R", "files:1", "/home").out == "/home/u\n/home/u/notes\n"
    lines = run("ls", "-R", "files:1").out.splitlines()
    assert lines[:4] == ["/big", "/bin", "/bin/sh", "/caf\udce9"]
    assert lines.index("/dev") + 1 == lines.index("/dev/fifo")
    assert "/etc/f" not in lines and "/gone" not in lines and "/opq/old" not in lines
    assert len(lines) == len(set(lines)) == 83  # the ctl name is two lines


def test_ls_long_columns(run):
    result = run("ls", "-l", "files:1", "/dev")
    assert result.rc == 0, result.err
    assert result.out == (
        "MODE        UID:GID  SIZE  MTIME             LAYER  PATH\n"
        "prw-------  0:0         0  2023-11-14 22:13      1  /dev/fifo\n"
        "crw-rw-rw-  0:0       1,3  2023-11-14 22:13      1  /dev/null\n"
        "brw-rw----  0:6       8,0  2023-11-14 22:13      1  /dev/sda\n"
    )
    out = run("ls", "-l", "files:1", "/hl").out
    assert out == (
        "MODE        UID:GID  SIZE  MTIME             LAYER  PATH\n"
        "-rw-r--r--  0:0         4  2023-11-14 22:13      1  /hl/a\n"
        "-rw-r--r--  0:0         5  2023-11-14 22:13      2  /hl/b\n"
    )
    line = run("ls", "-l", "files:1", "/links/todir").out.splitlines()[1]
    assert line == "lrwxrwxrwx  0:0         6  2023-11-14 22:13      1  /links/todir -> ../etc"
    line = run("ls", "-l", "--human", "files:1", "/big").out.splitlines()[1]
    assert line == "-r--r--r--  0:0      10.5MB  2023-11-14 22:13      1  /big"
    root = run("ls", "-l", "-d", "files:1", "/").out.splitlines()[1]
    assert root == "drwxr-xr-x  0:0         0  2023-11-14 22:13      1  /"


def test_ls_json_fields(run):
    result = run("ls", "--json", "files:1", "/hl")
    assert result.rc == 0, result.err
    assert json.loads(result.out) == [
        {
            "path": "/hl/a",
            "type": "file",
            "mode": 0o644,
            "uid": 0,
            "gid": 0,
            "size": 4,
            "mtime": "2023-11-14T22:13:20.123456789Z",
            "linkname": "",
            "digest": sha(b"pair"),
            "layer": 1,
        },
        {
            "path": "/hl/b",
            "type": "file",
            "mode": 0o644,
            "uid": 0,
            "gid": 0,
            "size": 5,
            "mtime": "2023-11-14T22:13:20.123456789Z",
            "linkname": "",
            "digest": sha(b"new b"),
            "layer": 2,
        },
    ]
    # Every object on its own line, keys sorted: what json.dumps(sort_keys=True) writes.
    lines = result.out.splitlines()
    assert lines[0] == "[" and lines[-1] == "]"
    assert lines[1] == json.dumps(json.loads(result.out)[0], sort_keys=True) + ","
    doc = json.loads(run("ls", "--json", "-d", "files:1", "/links/abs").out)
    assert doc == [
        {
            "path": "/links/abs",
            "type": "symlink",
            "mode": 0o777,
            "uid": 0,
            "gid": 0,
            "size": 11,
            "mtime": "2023-11-14T22:13:20.123456789Z",
            "linkname": "/etc/passwd",
            "digest": "",
            "layer": 1,
        }
    ]
    dev = json.loads(run("ls", "--json", "files:1", "/dev/null").out)[0]
    assert (dev["type"], dev["size"], dev["digest"]) == ("char", 0, "")
    empty = json.loads(run("ls", "--json", "files:1", "/empty").out)[0]
    assert empty["digest"] == sha(b"")
    assert json.loads(run("ls", "--json", "files:1", "/links/dangling/").out or "null") is None


def test_ls_json_of_an_empty_listing_and_of_the_made_up_root(run):
    assert run("ls", "--json", "files:1", "/home/u/notes/").rc == 1  # not a directory
    assert json.loads(run("ls", "--json", "--layer", "0", "files:1").out) == []
    root = json.loads(run("ls", "--json", "-d", "--layer", "0", "files:1", "/").out)
    assert root[0]["layer"] is None and root[0]["type"] == "dir" and root[0]["mode"] == 0o755
    assert run("ls", "-l", "-d", "--layer", "0", "files:1").out.splitlines()[1] == (
        "drwxr-xr-x  0:0         0  1970-01-01 00:00      -  /"
    )


def test_ls_as_of_a_layer(run):
    assert run("ls", "--layer", "3", "files:1", "/etc").out == "/etc/f\n/etc/passwd\n"
    assert run("ls", "--layer", "1", "files:1", "/opq").out == "/opq/old\n"
    assert run("ls", "files:1", "/opq").out == "/opq/new\n"
    got = json.loads(run("ls", "--json", "--layer", "3", "files:1", "/etc/f").out)
    assert got[0]["digest"] == sha(b"three\n") and got[0]["layer"] == 3
    result = run("ls", "--layer", "9", "files:1")
    assert result.rc == 1 and "--layer 9 is out of range 0..5" in result.err


def test_ls_follows_parent_symlinks_inside_the_image(run):
    # The entries are shown where they are: /etc, not /links/dirlink.
    assert run("ls", "files:1", "/links/dirlink/").out == "/etc/passwd\n"
    assert run("ls", "files:1", "/links/dirlink/passwd").out == "/etc/passwd\n"
    assert run("ls", "files:1", "/links/dirlink").out == "/links/dirlink\n"  # not followed


def test_ls_errors_are_one_line_exit_1(run, store):
    digest = "'files:1'"  # messages name the image as the command was given it
    cases = {
        "/nope": f"image {digest}: no such path '/nope'",
        "/etc/f": f"image {digest}: '/etc/f' was deleted in layer 4 by a whiteout "
        "(created by: tests/builders.py layer 3)",
        "/gone/inner": f"image {digest}: '/gone/inner' was deleted in layer 4 by a whiteout "
        "of '/gone' (created by: tests/builders.py layer 3)",
        "/links/loop1/x": f"image {digest}: '/links/loop1': too many levels of symbolic links "
        "(ELOOP)",
        "/etc/passwd/x": f"image {digest}: no such path '/etc/passwd/x' ('/etc/passwd' is not "
        "a directory)",
    }
    for path, message in cases.items():
        result = run("ls", "files:1", path)
        assert (result.rc, result.out, result.err) == (1, "", f"snapshotter: error: {message}\n")
    result = run("ls", "nosuch:1")
    assert result.rc == 1 and len(result.err.splitlines()) == 1


def test_ls_writes_names_as_the_bytes_the_image_holds(store):
    result = subprocess.run(
        [sys.executable, "-m", "snapshotter.cli", "--root", str(store), "ls", "files:1"],
        capture_output=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert b"/caf\xe9\n" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "snapshotter.cli", "--root", str(store), "ls", "--json"]
        + ["files:1", "/caf\udce9".encode("utf-8", "surrogateescape").decode("latin-1")],
        capture_output=True,
        cwd=REPO,
    )
    # argv arrives as bytes; a name given as latin-1 text is other bytes: not found
    assert result.returncode == 1


def test_on_a_terminal_control_characters_and_bad_bytes_show_as_escapes(store):
    shown = on_terminal("--root", str(store), "ls", "files:1").splitlines()
    assert "/caf\\xe9" in shown and "/ctl\\x0aname\\x1b[31m" in shown
    long = on_terminal("--root", str(store), "ls", "-l", "files:1", "/big").splitlines()
    assert long[1].split()[2] == "10.5MB"  # human sizes on a terminal


# -- ls against the real mount ------------------------------------------------------------------

_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
}


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def describe(full: Path, shown: str) -> dict[str, Any]:
    st = os.lstat(full)
    kind = _TYPES[stat.S_IFMT(st.st_mode)]
    return {
        "path": shown,
        "type": kind,
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "size": st.st_size,
        "mtime": rfc3339_ns(st.st_mtime_ns),
        "linkname": os.readlink(full) if kind == "symlink" else "",
        "digest": hash_file(full) if kind == "file" else "",
    }


def walk_mount(mp: Path) -> list[dict[str, Any]]:
    """Every entry below ``mp`` as the kernel shows it, in readdir order, depth first."""
    out: list[dict[str, Any]] = []
    stack: list[Iterator[str]] = [iter(os.listdir(mp))]
    prefixes = [""]
    while stack:
        name = next(stack[-1], None)
        if name is None:
            stack.pop()
            prefixes.pop()
            continue
        rel = prefixes[-1] + name
        entry = describe(mp / rel, "/" + rel)
        out.append(entry)
        if entry["type"] == "dir":
            stack.append(iter(os.listdir(mp / rel)))
            prefixes.append(rel + "/")
    return out


def check_ls_matches_the_mount(run: Run, root: Path, image: str, mp: Path, *extra: str) -> int:
    from test_fusefs import mounted, need_fuse

    need_fuse()
    listed = run("ls", "-R", "--json", *extra, image, "/")
    assert listed.rc == 0, listed.err
    itself = run("ls", "-d", "--json", *extra, image, "/")
    ours = json.loads(itself.out) + json.loads(listed.out)
    layers = [entry.pop("layer") for entry in ours]
    assert layers[0] is None or layers[0] >= 1
    assert all(n is not None and n >= 1 for n in layers[1:])
    with mounted(run, root, image, mp, *extra):
        theirs = [describe(mp, "/"), *walk_mount(mp)]
    assert [e["path"] for e in ours] == [e["path"] for e in theirs]  # same names, same order
    problems = [f"  ours:  {a}\n  mount: {b}" for a, b in zip(ours, theirs, strict=True) if a != b]
    assert not problems, f"{len(problems)} entries differ:\n" + "\n".join(problems[:6])
    return len(ours)


@pytest.fixture
def mp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="snapshotter-ls-mp-"))
    try:
        yield path
    finally:
        from test_fusefs import force_unmount

        force_unmount(path)
        with contextlib.suppress(OSError):
            path.rmdir()


@pytest.mark.parametrize("layer", [None, 1, 2, 4])
def test_ls_json_is_what_the_mount_shows(run, store, mp, layer):
    extra = () if layer is None else ("--layer", str(layer))
    count = check_ls_matches_the_mount(run, store, "files:1", mp, *extra)
    assert count > {None: 70, 1: 70, 2: 70, 4: 70}[layer]


def test_ls_json_is_what_the_mount_shows_for_the_oracle_image(tmp_path, cli, store_root, mp):
    from test_fusefs import oracle_layers

    layout = write_oci_layout(tmp_path / "l", {"1": ImageBuilder(oracle_layers())})
    assert cli("pull", "-q", f"oci:{layout}:1", "--name", "oracle:1").rc == 0
    assert check_ls_matches_the_mount(run_in(store_root), store_root, "oracle:1", mp) > 30


def fixture_sources() -> list[tuple[str, str, str]]:
    """(transport, path under ../shared/fixtures, ref): every source test_fixtures imports,
    and the regclient tags it does not."""
    from test_fixtures import IMPORTS

    out = [(transport, rel, ref) for transport, rel, ref, *_ in IMPORTS]
    out += [("oci", "oci-layout/regclient--testrepo", tag) for tag in ("v2", "b2", "b3")]
    return list(dict.fromkeys(out))


@pytest.mark.parametrize(
    "transport,rel,ref",
    fixture_sources(),
    ids=[f"{t}:{Path(r).name}:{f}" for t, r, f in fixture_sources()],
)
def test_ls_json_is_what_the_mount_shows_for_every_fixture(
    fixtures_dir, cli, store_root, mp, transport, rel, ref
):
    """Every platform's image of every source (a sparse index: the platforms it has)."""
    source = f"{transport}:{fixtures_dir / rel}" + (f":{ref}" if ref else "")
    pulled = cli("pull", "-q", "--all-platforms", source)
    if pulled.rc != 0:
        assert "is not in the layout" in pulled.err
        pulled = cli("pull", "-q", source)
    assert pulled.rc == 0, pulled.err
    digests = sorted({image["digest"] for image in json.loads(cli("images", "--json").out)})
    assert digests
    for digest in digests:
        assert check_ls_matches_the_mount(run_in(store_root), store_root, digest, mp) >= 2


# -- cat ---------------------------------------------------------------------------------------


def test_cat_prints_bytes_exactly(store):
    for path, data in {
        "/bin/sh": BINARY,
        "/etc/passwd": PASSWD,
        "/hl/a": b"pair",  # its partner was replaced: it keeps its own content
        "/hl/b": b"new b",
        "/d2f": b"now a file",
        "/caf\udce9": b"latin-1 name",
    }.items():
        assert run_binary(store, "cat", "files:1", path) == (0, data, "")


def test_cat_of_a_10_mb_file_by_sendfile_and_by_plain_writes(store):
    assert run_binary(store, "cat", "files:1", "/big") == (0, BIG, "")
    # O_APPEND: sendfile refuses it (EINVAL), the bytes go by plain writes instead
    assert run_binary(store, "cat", "files:1", "/big", mode="a") == (0, BIG, "")


def test_cat_streams_without_loading_the_file(store):
    """A 256 MiB file through a pipe: the peak RSS stays far below its size.  (VmHWM, the
    peak of this program's own memory: ru_maxrss would carry the pytest process's peak
    over fork and exec.)"""
    code = (
        "import sys\n"
        "from snapshotter.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "sys.stdout.flush()\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(hwm.split()[1], file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--root", str(store), "cat", "files:1", "/sparse"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    h, total = hashlib.sha256(), 0
    while chunk := proc.stdout.read(1 << 20):
        h.update(chunk)
        total += len(chunk)
    err = proc.stderr.read().decode()
    assert proc.wait() == 0, err
    expected = bytearray(SPARSE_SIZE)
    for at, data in SPARSE_CHUNKS.items():
        expected[at : at + len(data)] = data
    assert total == SPARSE_SIZE and h.hexdigest() == hashlib.sha256(expected).hexdigest()
    peak_kib = int(err.split()[-1])
    assert peak_kib < 120 * 1024, f"peak RSS {peak_kib} KiB for a {SPARSE_SIZE >> 20} MiB file"


def test_cat_of_an_empty_file_prints_nothing(store):
    assert run_binary(store, "cat", "files:1", "/empty") == (0, b"", "")


@pytest.mark.parametrize(
    "link",
    [
        "/links/rel",
        "/links/abs",
        "/links/escape",  # ../../../../etc/passwd: '..' stops at the image root
        "/links/escape-abs",
        "/links/chain1",  # chain1 -> chain2 -> ./chain3 -> /links/abs -> /etc/passwd
        "/links/through",  # through a symlinked directory
        "/links/dirlink/passwd",
        "/links/todir/../etc/passwd",  # '..' of the directory the link led to
        "/links/../../links/./rel",
        "/links/k0",  # exactly 40 links
    ],
)
def test_cat_resolves_symlinks_inside_the_image_only(store, link):
    rc, out, err = run_binary(store, "cat", "files:1", link)
    assert (rc, err) == (0, "")
    assert out == PASSWD
    assert out != Path("/etc/passwd").read_bytes()  # the host's is another file


def test_a_link_through_a_directory_link_then_dotdot(store):
    # dirlink -> /etc, so dirlink/.. is the image root, and dirlink/../bin/sh is /bin/sh.
    assert run_binary(store, "cat", "files:1", "/links/dotdot") == (0, BINARY, "")


def test_a_link_to_a_host_path_never_reaches_the_host(store, host_file):
    assert host_file.is_file()
    rc, out, err = run_binary(store, "cat", "files:1", "/links/host")
    assert rc == 1 and out == b""
    assert f"no such path '{host_file}'" in err and "HOST" not in err


def test_cat_errors_are_one_line_exit_1(store):
    cases = {
        "/etc": "'/etc' is a directory",
        "/links/todir": "'/etc' is a directory",
        "/dev/null": "'/dev/null' is not a regular file (a character device)",
        "/dev/sda": "'/dev/sda' is not a regular file (a block device)",
        "/dev/fifo": "'/dev/fifo' is not a regular file (a fifo)",
        "/nope": "no such path '/nope'",
        "/links/dangling": "no such path '/links/nowhere'",
        "/links/loop1": "'/links/loop1': too many levels of symbolic links (ELOOP)",
        "/links/self": "'/links/self': too many levels of symbolic links (ELOOP)",
        "/links/k-one-more": "'/links/k39': too many levels of symbolic links (ELOOP)",
        "/links/notdir": "no such path '/etc/passwd/x' ('/etc/passwd' is not a directory)",
        "/etc/f": "'/etc/f' was deleted in layer 4 by a whiteout (created by: tests/builders.py "
        "layer 3)",
        "/gone/inner": "'/gone/inner' was deleted in layer 4 by a whiteout of '/gone' (created "
        "by: tests/builders.py layer 3)",
        "/opq/old": "'/opq/old' was deleted in layer 2 by the opaque directory '/opq' (created "
        "by: tests/builders.py layer 1)",
        "/d2f/child": "'/d2f/child' was deleted in layer 2 when '/d2f' became a non-directory "
        "(created by: tests/builders.py layer 1)",
        "/links/dirlink/f": "'/etc/f' was deleted in layer 4 by a whiteout (created by: "
        "tests/builders.py layer 3)",
    }
    for path, message in cases.items():
        rc, out, err = run_binary(store, "cat", "files:1", path)
        expected = f"snapshotter: error: image 'files:1': {message}\n"
        assert (rc, out, err) == (1, b"", expected), path


def test_a_deleted_path_is_named_on_one_line_whatever_the_history_says(tmp_path, cli):
    created_by = "RUN\tapt-get install \\\n  " + "x" * 300
    img = StoryImage(
        [LayerBuilder().file("f", b"1"), LayerBuilder().whiteout("f")],
        history=["ADD f /", created_by],
    )
    layout = write_oci_layout(tmp_path / "l", {"1": img})
    assert cli("pull", "-q", f"oci:{layout}:1", "--name", "d:1").rc == 0
    result = cli("cat", "d:1", "/f")
    assert result.rc == 1 and len(result.err.splitlines()) == 1
    shown = result.err.split("(created by: ")[1]
    assert shown.startswith("RUN apt-get install \\   xxx") and shown.endswith("x…)\n")
    assert len(shown) == 100 + 2


def test_cat_as_of_a_layer_shows_overwritten_and_deleted_versions(store):
    assert run_binary(store, "cat", "--layer", "1", "files:1", "/etc/f") == (0, b"one\n", "")
    assert run_binary(store, "cat", "--layer", "2", "files:1", "/etc/f") == (0, b"one\n", "")
    assert run_binary(store, "cat", "--layer", "3", "files:1", "/etc/f") == (0, b"three\n", "")
    assert run_binary(store, "cat", "--layer", "1", "files:1", "/hl/b") == (0, b"pair", "")
    assert run_binary(store, "cat", "--layer", "1", "files:1", "/opq/old") == (0, b"old", "")
    assert run_binary(store, "cat", "--layer", "3", "files:1", "/gone/inner") == (0, b"secret", "")
    assert run_binary(store, "cat", "--layer", "1", "files:1", "/d2f/child") == (0, b"c", "")
    rc, _, err = run_binary(store, "cat", "--layer", "0", "files:1", "/etc/passwd")
    assert rc == 1 and "no such path '/etc/passwd'" in err


def test_cat_through_a_pipe(store):
    result = subprocess.run(
        [sys.executable, "-m", "snapshotter.cli", "--root", str(store), "cat", "files:1"]
        + ["/links/chain1"],
        capture_output=True,
        cwd=REPO,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, PASSWD, b"")


def test_cat_refuses_a_content_file_of_the_wrong_size(tmp_path, cli, store_root):
    layout = write_oci_layout(
        tmp_path / "l", {"1": ImageBuilder([LayerBuilder().file("f", b"x" * 100)])}
    )
    assert cli("pull", "-q", f"oci:{layout}:1", "--name", "c:1").rc == 0
    image = open_image(Store(store_root), "c:1")
    node = image.view().tree.resolve("f")
    assert node is not None
    data = image.data_path(node.layer + 1, node.data)
    data.write_bytes(b"x" * 50)
    rc, out, err = run_binary(store_root, "cat", "c:1", "/f")
    assert rc == 1 and out == b"" and "holds 50 bytes, the toc says 100" in err
    data.unlink()
    rc, out, err = run_binary(store_root, "cat", "c:1", "/f")
    assert rc == 1 and "is missing from the store" in err


# -- resolution, directly ----------------------------------------------------------------------


def test_resolution_reports_where_it_stopped(store):
    tree = open_image(Store(store), "files:1").view().tree
    found = resolve(tree, "/links/through")
    assert (found.path, found.failure) == ("etc/passwd", None)
    assert resolve(tree, "/links/through", follow=False).path == "links/through"
    found = resolve(tree, "/links/loop1")
    assert (found.failure, found.at) == (Failure.LOOP, "links/loop1")
    found = resolve(tree, "/etc/passwd/x/y")
    assert (found.failure, found.at, found.path) == (
        Failure.NOT_DIR,
        "etc/passwd",
        "etc/passwd/x/y",
    )
    found = resolve(tree, "/links/dirlink/nope/../x")
    assert (found.failure, found.path, found.at) == (Failure.MISSING, "etc/x", "etc/nope")
    assert resolve(tree, "/etc/passwd/").failure is Failure.NOT_DIR
    assert resolve(tree, "/links/dirlink/.", follow=False).path == "etc"  # as "dirlink/"
    assert resolve(tree, "/links/dirlink", follow=False).path == "links/dirlink"
    assert resolve(tree, "/links/todir/").path == "etc"
    assert resolve(tree, "/../..").path == ""
