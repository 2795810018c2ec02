"""du: images whose answers are known by construction, checked in both the human output
and --json; GNU du on the mounted view as the oracle."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import need_tool
from test_fusefs import mounted, need_fuse


@pytest.fixture(autouse=True)
def outside_ci(monkeypatch, tmp_path):
    """No CI=true and no files from the checkout: each test says what it wants."""
    monkeypatch.delenv("CI", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)


def pull(cli, tmp_path: Path, name: str, image: ImageBuilder) -> str:
    layout = write_oci_layout(tmp_path / name.replace(":", "_"), {"t": image})
    result = cli("pull", "-q", f"oci:{layout}:t", "--name", name)
    assert result.rc == 0, result.err
    return name


def go_json(cli, *args: str) -> dict[str, Any]:
    result = cli(*args)
    assert result.rc == 0, result.err
    return json.loads(result.out)


# -- du ----------------------------------------------------------------------------------------


def du_image() -> ImageBuilder:
    return ImageBuilder(
        [
            LayerBuilder()
            .dir("etc")
            .file("etc/a", b"a" * 100)
            .dir("usr")
            .dir("usr/lib")
            .file("usr/lib/big", b"b" * 1000)
            .file("usr/lib/gone", b"g" * 300)
            .dir("usr/bin")
            .file("usr/bin/tool", b"t" * 50)
            .dir("usr/sbin")
            .hardlink("usr/sbin/tool", "usr/bin/tool")
            .file("opt/a.d/f", b"h" * 5)
            .hardlink("opt/a/f", "opt/a.d/f"),
            LayerBuilder()
            .file("usr/lib/big", b"B" * 400)
            .whiteout("usr/lib/gone")
            .file("etc/b", b"b" * 7)
            .file("etc/b2", b"")
            .hardlink("etc/b3", "etc/b"),
        ]
    )


# Visible: /etc a 100 + b 7 (b3 is b); /opt/a 5 (a walk meets /opt/a/f before /opt/a.d/f,
# though "a.d/f" < "a/f" as strings); /usr/bin tool 50; /usr/lib big 400; /usr/sbin 0 (its
# tool is /usr/bin/tool, met first).  Shipped, layer 1: /etc 100, /opt/a 5, /usr/bin 50,
# /usr/lib 1000 + 300, /usr/sbin 0; layer 2: /etc 7, /usr/lib 400.
DU_ROWS = [
    ("/etc", 1, 107, [100, 7]),
    ("/opt/a", 2, 5, [5, 0]),
    ("/opt/a.d", 2, 0, [0, 0]),
    ("/opt", 1, 5, [5, 0]),
    ("/usr/bin", 2, 50, [50, 0]),
    ("/usr/lib", 2, 400, [1300, 400]),
    ("/usr/sbin", 2, 0, [0, 0]),
    ("/usr", 1, 450, [1350, 400]),
    ("/", 0, 562, [1455, 407]),
]


def test_du_prints_each_directory_after_its_children_like_du(cli, tmp_path):
    name = pull(cli, tmp_path, "du:1", du_image())
    result = cli("du", name, "--bytes")
    assert result.rc == 0, result.err
    assert result.out == "".join(f"{size}\t{path}\n" for path, _, size, _ in DU_ROWS)
    assert cli("du", name, "-d", "1", "--bytes").out == "107\t/etc\n5\t/opt\n450\t/usr\n562\t/\n"
    assert cli("du", name, "/usr/", "-d", "0", "--bytes").out == "450\t/usr\n"
    assert cli("du", name, "/usr/lib/big", "--bytes").out == "400\t/usr/lib/big\n"
    assert cli("du", name, "--depth", "0", "--human").out == "562B\t/\n"
    assert cli("du", name, "/usr/lib/big", "--by-layer", "--bytes").out.splitlines() == [
        "VISIBLE  L1    L2   PATH",
        "400      1000  400  /usr/lib/big",
    ]


def test_du_json(cli, tmp_path):
    name = pull(cli, tmp_path, "du:1", du_image())
    doc = go_json(cli, "du", name, "--json")
    assert doc == {
        "path": "/",
        "type": "dir",
        "layers": 2,
        "entries": [{"path": p, "depth": d, "size": s} for p, d, s, _ in DU_ROWS],
    }
    doc = go_json(cli, "du", name, "/usr", "--json", "--by-layer", "--depth", "0")
    assert doc["entries"] == [
        {
            "path": "/usr",
            "depth": 0,
            "size": 450,
            "by_layer": [{"layer": 1, "size": 1350}, {"layer": 2, "size": 400}],
        }
    ]


def test_du_by_layer_counts_the_bytes_later_layers_hid(cli, tmp_path):
    name = pull(cli, tmp_path, "du:1", du_image())
    result = cli("du", name, "--by-layer", "--bytes")
    assert result.rc == 0, result.err
    lines = [line.split() for line in result.out.splitlines()]
    assert lines[0] == ["VISIBLE", "L1", "L2", "PATH"]
    assert lines[1:] == [[str(s), *map(str, by), p] for p, _, s, by in DU_ROWS]
    doc = go_json(cli, "du", name, "--by-layer", "--json")
    assert [[b["size"] for b in e["by_layer"]] for e in doc["entries"]] == [
        by for *_, by in DU_ROWS
    ]


def test_du_of_a_missing_path_or_through_a_symlink_is_one_line(cli, tmp_path):
    image = ImageBuilder(
        [LayerBuilder().dir("usr/lib").file("usr/lib/x", b"x").symlink("lib", "usr/lib")]
    )
    name = pull(cli, tmp_path, "link:1", image)
    result = cli("du", name, "/nope")
    assert result.rc == 1 and result.out == ""
    assert result.err.startswith("snapshotter: error: image sha256:")
    assert result.err.endswith("no such path '/nope'\n")
    result = cli("du", name, "/lib/x")
    assert result.rc == 1
    assert "'/lib' is a symlink (du follows no symlinks)" in result.err
    assert cli("du", name, "/lib", "--bytes").out == "0\t/lib\n"  # the link itself, as du
    assert cli("du", name, "--depth", "-1").rc == 2
    assert cli("du", "nosuch:image").rc == 1


def test_du_agrees_with_gnu_du_on_the_mounted_view(cli, tmp_path, store_root):
    """``du -b`` counts a directory's own size (0 on our mount) and a symlink's length: with
    no symlinks in the image the two must print the same numbers in the same order."""
    need_fuse()
    du = need_tool("du")
    name = pull(cli, tmp_path, "du:1", du_image())
    ours = cli("du", name, "--bytes").out
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(cli, store_root, name, mp):
        gnu = subprocess.run([du, "-b", str(mp)], capture_output=True, text=True, check=True)
        assert gnu.stdout.replace(str(mp), "/").replace("//", "/") == ours
        gnu = subprocess.run(
            [du, "-b", "-d", "1", str(mp / "usr")], capture_output=True, text=True, check=True
        )
        assert gnu.stdout.replace(str(mp), "") == cli("du", name, "/usr", "-d", "1", "--bytes").out


# -- the rest ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["du"])
def test_help(cli, command):
    result = cli(command, "--help")
    assert result.rc == 0 and result.out.startswith(f"usage: snapshotter {command} ")


def test_hostile_names_do_not_reach_the_terminal(cli, tmp_path):
    image = ImageBuilder([LayerBuilder().file("evil\x1b[2Jname", b"x" * 10).dir("d\x07")])
    name = pull(cli, tmp_path, "evil:1", image)
    out = cli("du", name, "--bytes").out
    assert "\x07" not in out and "/d\\x07" in out
    assert json.loads(cli("du", name, "--json").out)["entries"][0]["path"] == "/d\x07"
