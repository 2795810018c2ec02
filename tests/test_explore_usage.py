"""du and wasted: images whose answers are known by construction, checked in both the human
output and --json; dive's own numbers on dive's own test image (tests/data/dive) as the
oracle for wasted, and GNU du on the mounted view as the oracle for du."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import need_tool, on_terminal
from test_fixtures import IMPORTS
from test_fusefs import mounted, need_fuse

from snapshotter.cli.usage import ci_report, go_json_float, go_string
from snapshotter.errors import InvalidConfig
from snapshotter.explore.wasted import (
    BaseBoundary,
    LayerSummary,
    PathWaste,
    WasteReport,
    evaluate,
    go_float,
    humanize_bytes,
    make_rules,
    parse_bytes,
    parse_ci_config,
)

DIVE = Path(__file__).parent / "data" / "dive"
MB = 1_000_000


@pytest.fixture(autouse=True)
def outside_ci(monkeypatch, tmp_path):
    """No CI=true (it turns wasted into its CI report, as in dive) and no .dive-ci from the
    checkout: each test says what it wants."""
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
    assert result.err.startswith(f"snapshotter: error: image {name!r}:")
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


# -- wasted: images known by construction ---------------------------------------------------------


def dup_image() -> ImageBuilder:
    """A 10 MB file written in three layers (rewritten, then chmod-ed)."""
    return ImageBuilder(
        [
            LayerBuilder().file("etc/base", b"e" * 1000).file("opt/big", b"1" * (10 * MB)),
            LayerBuilder().file("opt/big", b"2" * (10 * MB)),
            LayerBuilder().file("opt/big", b"2" * (10 * MB), mode=0o755),
        ]
    )


def test_a_file_in_three_layers_wastes_two_copies(cli, tmp_path):
    name = pull(cli, tmp_path, "dup:1", dup_image())
    result = cli("wasted", name, "--bytes")
    assert result.rc == 0, result.err
    # Σ smallest / Σ total = (1000 + 10 MB) / (1000 + 30 MB)
    assert result.out == (
        "Image efficiency:  33.34 %\n"
        "Wasted:            20000000\n"
        "User wasted:       100.00 % (of 20000000 in layers 2-3, above the base)\n"
        "\n"
        "Count  Wasted Space  File Path\n"
        "3      20000000      /opt/big\n"
    )
    assert cli("wasted", name, "--human").out.splitlines()[-1] == "3      20MB          /opt/big"
    doc = go_json(cli, "wasted", name, "--json")
    assert doc["image"] == {
        "sizeBytes": 30_001_000,
        "inefficientBytes": 30_000_000,  # dive's: the kept copy too (its bug #684)
        "efficiencyScore": 10_001_000 / 30_001_000,
        "fileReference": [{"count": 3, "sizeBytes": 30_000_000, "file": "/opt/big"}],
    }
    assert doc["snapshotter"] == {
        "wastedBytes": 20_000_000,
        "userSizeBytes": 20_000_000,
        "userWastedPercent": 1.0,
        "baseLayers": 1,
        "baseDigest": None,
        "inefficientFiles": [
            {"count": 3, "sizeBytes": 30_000_000, "wastedBytes": 20_000_000, "file": "/opt/big"}
        ],
    }
    result = cli("wasted", name, "--ci")
    assert result.rc == 1
    assert result.out == (
        "Analysis:\n"
        "  efficiency:        33.34 %\n"
        "  wastedBytes:       20000000 bytes (20 MB)\n"
        "  userWastedPercent: 100.00 %\n"
        "\n"
        "Inefficient Files:\n"
        "  Count  Wasted Space  File Path\n"
        "  3      20 MB         /opt/big\n"
        "\n"
        "Evaluation:\n"
        "  FAIL  highestUserWastedPercent (too many bytes wasted, relative to the user bytes "
        "added (%-user-wasted-bytes=1.00 > threshold=0.1))\n"
        "  SKIP  highestWastedBytes (disabled)\n"
        "  FAIL  lowestEfficiency (image efficiency is too low (efficiency=0.33 < threshold=0.9))\n"
        "\n"
        "FAIL [fail:2 skip:1]\n"
    )


def test_a_file_deleted_by_whiteout_wastes_all_of_it(cli, tmp_path):
    image = ImageBuilder(
        [
            LayerBuilder().file("etc/keep", b"k" * 100).file("tmp/junk", b"j" * 5000),
            LayerBuilder().whiteout("tmp/junk").file("etc/new", b"n" * 900),
        ]
    )
    name = pull(cli, tmp_path, "wh:1", image)
    doc = go_json(cli, "wasted", name, "--json")
    # /tmp/junk: 5000 then a whiteout of a file (0): smallest 0.
    assert doc["image"]["efficiencyScore"] == 1000 / 6000
    assert doc["image"]["fileReference"] == [{"count": 2, "sizeBytes": 5000, "file": "/tmp/junk"}]
    assert doc["snapshotter"]["wastedBytes"] == 5000
    assert doc["snapshotter"]["userWastedPercent"] == 5000 / 900
    result = cli("wasted", name, "--bytes")
    assert result.out.splitlines()[-1] == "2      5000          /tmp/junk"
    result = cli("wasted", name, "--hidden", "--bytes")
    assert result.out == (
        "LAYER  SIZE  HIDDEN                          PATH\n"
        "1      5000  deleted by whiteout in layer 2  /tmp/junk\n"
    )


def test_an_opaque_directory_is_not_in_the_score_as_in_dive_but_is_hidden(cli, tmp_path):
    image = ImageBuilder(
        [
            LayerBuilder()
            .dir("var/cache")
            .file("var/cache/a", b"a" * 300)
            .file("var/cache/b", b"b" * 200),
            LayerBuilder().dir("var/cache").opaque("var/cache").file("var/cache/c", b"c" * 10),
        ]
    )
    name = pull(cli, tmp_path, "opq:1", image)
    doc = go_json(cli, "wasted", name, "--json")
    assert doc["image"]["efficiencyScore"] == 1
    assert doc["image"]["fileReference"] == []
    assert doc["snapshotter"]["wastedBytes"] == 0
    result = cli("wasted", name, "--ci")
    assert result.rc == 0
    assert "  wastedBytes:       0 bytes \n  userWastedPercent: 0 %\n" in result.out
    assert "\nInefficient Files: (None)\n" in result.out
    assert result.out.endswith("\nPASS [pass:2 skip:1]\n")
    doc = go_json(cli, "wasted", name, "--hidden", "--json")
    assert [(h["path"], h["how"], h["by_layer"], h["by_path"]) for h in doc["hidden"]] == [
        ("/var/cache/a", "opaque", 2, "/var/cache"),
        ("/var/cache/b", "opaque", 2, "/var/cache"),
    ]
    assert doc["bytes"] == 500
    out = cli("wasted", name, "--hidden", "--bytes").out
    assert "300   deleted by opaque dir in layer 2  /var/cache/a\n" in out


def dir_whiteout_image() -> ImageBuilder:
    return ImageBuilder(
        [
            LayerBuilder().file("d/a", b"a" * 100).file("d/b", b"b" * 200).dir("f"),
            LayerBuilder().file("d/a", b"A" * 50).file("f/x", b"x" * 1000),
            LayerBuilder().whiteout("d").whiteout("f"),
        ]
    )


def test_a_whiteout_of_a_directory_counts_what_it_hid(cli, tmp_path):
    """dive's rule: the whiteout of a directory counts every byte below it as of the layer
    before.  Here /d's whiteout counts 50 + 200 and is /d's only leaf entry (in layers 1
    and 2 /d has children); /f was an empty directory (a leaf of 0) in layer 1, so its
    whiteout (1000, what layer 2 put below it) makes /f waste 1000."""
    name = pull(cli, tmp_path, "dwh:1", dir_whiteout_image())
    doc = go_json(cli, "wasted", name, "--json")
    # paths: d/a 100+50, d/b 200, f 0+1000, f/x 1000, d 250
    assert doc["image"]["efficiencyScore"] == (50 + 200 + 0 + 1000 + 250) / (
        150 + 200 + 1000 + 1000 + 250
    )
    assert doc["image"]["fileReference"] == [
        {"count": 2, "sizeBytes": 1000, "file": "/f"},
        {"count": 2, "sizeBytes": 150, "file": "/d/a"},
    ]
    assert doc["image"]["inefficientBytes"] == 1150
    assert doc["snapshotter"]["wastedBytes"] == 1100
    assert [f["path"] for f in doc["layer"][2]["fileList"]] == [".wh.d", ".wh.f"]
    result = cli("wasted", name, "--bytes")
    assert result.out.endswith(
        "Count  Wasted Space  File Path\n2      1000          /f\n2      100           /d/a\n"
    )
    result = cli("wasted", name, "--hidden", "--bytes")
    assert result.out == (
        "LAYER  SIZE  HIDDEN                          PATH\n"
        "1      100   overwritten in layer 2          /d/a\n"
        "1      200   deleted by whiteout in layer 3  /d/b\n"
        "2      50    deleted by whiteout in layer 3  /d/a\n"
        "2      1000  deleted by whiteout in layer 3  /f/x\n"
    )


def test_ties_come_in_dives_order(cli, tmp_path):
    """dive lists paths of equal totals last-seen first, seeing each layer's leaves in a
    walk by name, where a whiteout goes by its ``.wh.`` name: in layer 2 ``.wh.c`` comes
    before ``a``, so /c got its 2nd entry first and is listed last."""
    image = ImageBuilder(
        [
            LayerBuilder().file("a", b"a" * 100).file("c", b"c" * 100),
            LayerBuilder().whiteout("c").file("a", b""),
        ]
    )
    name = pull(cli, tmp_path, "ties:1", image)
    doc = go_json(cli, "wasted", name, "--json")
    assert [f["file"] for f in doc["image"]["fileReference"]] == ["/a", "/c"]
    assert [f["file"] for f in doc["snapshotter"]["inefficientFiles"]] == ["/a", "/c"]
    # Without the whiteout, a walk by name sees /a first: /c is listed first.
    image = ImageBuilder(
        [
            LayerBuilder().file("a", b"a" * 100).file("c", b"c" * 100),
            LayerBuilder().file("c", b"").file("a", b""),
        ]
    )
    name = pull(cli, tmp_path, "ties:2", image)
    doc = go_json(cli, "wasted", name, "--json")
    assert [f["file"] for f in doc["image"]["fileReference"]] == ["/c", "/a"]


def secret_image() -> ImageBuilder:
    return ImageBuilder(
        [
            LayerBuilder()
            .file("app/config", b"c" * 10)
            .file("opt/x/y", b"y" * 20)
            .file("etc/conf", b"5"),
            LayerBuilder()
            .file("root/.ssh/id_rsa", b"-----BEGIN SECRET-----\n")
            .file("opt/x", b"xyz")
            .file("etc/conf", b"66")
            .symlink("etc/old", "conf"),
            LayerBuilder().whiteout("root/.ssh/id_rsa").symlink("etc/old", "new"),
        ]
    )


def test_hidden_lists_a_secret_added_then_deleted(cli, tmp_path):
    name = pull(cli, tmp_path, "secret:1", secret_image())
    result = cli("wasted", name, "--hidden", "--bytes")
    assert result.rc == 0, result.err
    assert result.out == (
        "LAYER  SIZE  HIDDEN                          PATH\n"
        "1      1     overwritten in layer 2          /etc/conf\n"
        "1      20    replaced by parent in layer 2   /opt/x/y\n"
        "2      0     overwritten in layer 3          /etc/old\n"
        "2      23    deleted by whiteout in layer 3  /root/.ssh/id_rsa\n"
    )
    doc = go_json(cli, "wasted", name, "--hidden", "--json")
    secret = b"-----BEGIN SECRET-----\n"
    assert doc["hidden"][3] == {
        "path": "/root/.ssh/id_rsa",
        "layer": 2,
        "type": "file",
        "size": 23,
        "digest": "sha256:" + hashlib.sha256(secret).hexdigest(),
        "linkname": "",
        "how": "whiteout",
        "by_layer": 3,
        "by_path": "/root/.ssh/id_rsa",
    }
    assert doc["hidden"][1]["how"] == "parent replaced"
    assert doc["hidden"][1]["by_path"] == "/opt/x"
    assert doc["hidden"][2]["type"] == "symlink" and doc["hidden"][2]["linkname"] == "conf"
    assert doc["bytes"] == 1 + 20 + 23
    # --hidden is a listing, whatever CI says; asking it for --ci is a mistake.
    assert cli("wasted", name, "--hidden", "--ci").rc == 2
    assert cli("wasted", name, "--hidden", "--lowest-efficiency", "0.5").rc == 2


def assert_hidden_agrees_with_the_view(store_root: Path, name: str) -> None:
    """Every non-directory entry of every layer is either listed hidden or shown by the
    merged view, never both."""
    from snapshotter.explore.image import open_image
    from snapshotter.explore.wasted import hidden
    from snapshotter.store.store import Store
    from snapshotter.store.toc import EntryKind

    stored = open_image(Store(store_root), name)
    listed = {(h.layer, h.path) for h in hidden(stored)}
    tree = stored.view().tree
    for number in range(1, len(stored.layers) + 1):
        cols = stored.columns(number)
        for path, kind, inode in zip(cols.path, cols.kind, cols.inode, strict=True):
            if kind in (EntryKind.DIR, EntryKind.WHITEOUT):
                continue
            node = tree.resolve(path)
            shown = node is not None and (node.layer, node.data) == (number - 1, inode)
            assert shown != ((number, path) in listed), (name, number, path)


def test_hidden_agrees_with_the_merged_view(cli, tmp_path, store_root):
    root_opaque = ImageBuilder(
        [
            LayerBuilder().file("x/y", b"y").file("z", b"z"),
            LayerBuilder().file(".wh..wh..opq", raw_name=True).file("z", b"Z"),
        ]
    )
    images = [secret_image(), dir_whiteout_image(), du_image(), root_opaque]
    for n, image in enumerate(images):
        assert_hidden_agrees_with_the_view(store_root, pull(cli, tmp_path, f"h{n}:1", image))
    assert cli("wasted", "h3:1", "--hidden", "--bytes").out.splitlines()[1:] == [
        "1      1     deleted by opaque dir in layer 2  /x/y",
        "1      1     overwritten in layer 2            /z",
    ]


FIXTURES = [
    *(f"{transport}:{rel}" + (f":{ref}" if ref else "") for transport, rel, ref, *_ in IMPORTS),
    *(
        f"oci-archive:oci-archive/dive--test-oci-{kind}-image.tar"
        for kind in ("gzip", "zstd", "estargz", "uncompressed")
    ),
]


@pytest.mark.parametrize("source", FIXTURES)
def test_du_and_wasted_on_every_fixture(fixtures_dir, cli, store_root, source):
    """On real images: du's total is every byte of the view once; dive's file lists hold
    every entry of each toc and its sizes are the toc's; --hidden agrees with the view."""
    from snapshotter.explore.image import open_image
    from snapshotter.store.store import Store

    transport, _, rest = source.partition(":")
    result = cli("pull", "--json", "-q", f"{transport}:{fixtures_dir}/{rest}")
    assert result.rc == 0, result.err
    digest = json.loads(result.out)["digest"]
    image = open_image(Store(store_root), digest)
    du = go_json(cli, "du", digest, "--json", "--by-layer")
    assert du["entries"][-1]["path"] == "/"
    assert du["entries"][-1]["size"] == image.view().tree.content_size()
    doc = go_json(cli, "wasted", digest, "--json")
    for number, layer in enumerate(doc["layer"], start=1):
        columns = image.columns(number)
        assert layer["index"] == number - 1
        assert len(layer["fileList"]) == len([p for p in columns.path if p])
        assert (
            layer["sizeBytes"]
            == image.toc(number).size
            == du["entries"][-1]["by_layer"][number - 1]["size"]
        )
    assert 0 < doc["image"]["efficiencyScore"] <= 1
    assert_hidden_agrees_with_the_view(store_root, digest)


# -- CI rules ------------------------------------------------------------------------------------


def rules_image() -> ImageBuilder:
    """efficiency (1000 + 400) / (1000 + 800) = 0.78, 400 wasted, user bytes 800: 0.5."""
    return ImageBuilder(
        [
            LayerBuilder().file("base/file", b"b" * 1000),
            LayerBuilder().file("app/f", b"1" * 400),
            LayerBuilder().file("app/f", b"2" * 400),
        ]
    )


RULE_CASES = [
    ("--lowest-efficiency", "0.7", "  PASS  lowestEfficiency (0.7)", 0),
    (
        "--lowest-efficiency",
        "0.8",
        "  FAIL  lowestEfficiency (image efficiency is too low (efficiency=0.78 < threshold=0.8))",
        1,
    ),
    ("--lowest-efficiency", "disabled", "  SKIP  lowestEfficiency (disabled)", 0),
    ("--highest-wasted-bytes", "1kB", "  PASS  highestWastedBytes (1kB)", 0),
    (
        "--highest-wasted-bytes",
        "300",
        "  FAIL  highestWastedBytes (too many bytes wasted (wasted-bytes=400 > threshold=300))",
        1,
    ),
    ("--highestWastedBytes", "off", "  SKIP  highestWastedBytes (disabled)", 0),
    ("--highest-user-wasted-percent", "0.6", "  PASS  highestUserWastedPercent (0.6)", 0),
    (
        "--highest-user-wasted-percent",
        "0.4",
        "  FAIL  highestUserWastedPercent (too many bytes wasted, relative to the user bytes "
        "added (%-user-wasted-bytes=0.50 > threshold=0.4))",
        1,
    ),
    ("--highest-user-wasted-percent", "disabled", "  SKIP  highestUserWastedPercent (disabled)", 0),
]


@pytest.mark.parametrize(("option", "value", "line", "rc"), RULE_CASES)
def test_each_rule_passes_fails_or_is_disabled(cli, tmp_path, option, value, line, rc):
    name = pull(cli, tmp_path, "rules:1", rules_image())
    # The other two rules pass or are off, so the rule under test decides the exit status.
    others = {
        "lowestEfficiency": ("--lowest-efficiency", "0.5"),
        "highestWastedBytes": ("--highest-wasted-bytes", "disabled"),
        "highestUserWastedPercent": ("--highest-user-wasted-percent", "0.9"),
    }
    args = ["wasted", name, option, value]  # a rule option implies --ci
    for key, (flag, setting) in others.items():
        if key not in line:
            args += [flag, setting]
    result = cli(*args)
    assert result.rc == rc, result.out + result.err
    evaluation = result.out.split("Evaluation:\n")[1].splitlines()
    assert line in evaluation
    assert evaluation[-1] == ("FAIL" if rc else "PASS") + evaluation[-1][4:]


def test_ci_true_in_the_environment_turns_on_the_ci_report(cli, tmp_path, monkeypatch):
    name = pull(cli, tmp_path, "rules:1", rules_image())
    assert not cli("wasted", name).out.startswith("Analysis:")
    for truthy in ("true", "1", "yes"):
        monkeypatch.setenv("CI", truthy)
        result = cli("wasted", name)
        assert result.out.startswith("Analysis:\n") and result.rc == 1  # 0.5 > 0.1
    monkeypatch.setenv("CI", "false")
    assert cli("wasted", name).rc == 0
    monkeypatch.setenv("CI", "true")
    # --json and --hidden answer their own question, as dive's --json does.
    assert cli("wasted", name, "--json").rc == 0
    assert cli("wasted", name, "--hidden").rc == 0


DIVE_CI_KEBAB = """\
---
# as dive's config writes them
rules:
  lowest-efficiency: 0.80   # fails: 0.78
  highest-wasted-bytes: '1kB'
  highest-user-wasted-percent: "disabled"
plugins:
  - plugin1
"""

DIVE_CI_CAMEL = """\
rules:
  # If the efficiency is measured below X%, mark as failed.
  lowestEfficiency: 0.75

  highestWastedBytes: 300
  highestUserWastedPercent: 0.6
  plugin1/rule1: error
"""


def test_dive_ci_file_in_kebab_case(cli, tmp_path):
    name = pull(cli, tmp_path, "rules:1", rules_image())
    Path(".dive-ci").write_text(DIVE_CI_KEBAB)
    result = cli("wasted", name, "--ci")
    assert result.rc == 1
    assert result.err == ""
    assert result.out.split("Evaluation:\n")[1] == (
        "  SKIP  highestUserWastedPercent (disabled)\n"
        "  PASS  highestWastedBytes (1kB)\n"
        "  FAIL  lowestEfficiency (image efficiency is too low (efficiency=0.78 < threshold=0.8))\n"
        "\n"
        "FAIL [pass:1 fail:1 skip:1]\n"
    )
    # An option beats the file.
    assert cli("wasted", name, "--ci", "--lowest-efficiency", "0.7").rc == 0


def test_dive_ci_file_in_legacy_camel_case_warns(cli, tmp_path):
    name = pull(cli, tmp_path, "rules:1", rules_image())
    config = tmp_path / "elsewhere.yaml"
    config.write_text(DIVE_CI_CAMEL)
    result = cli("wasted", name, "--ci-config", str(config))  # implies --ci
    assert result.rc == 1
    assert result.err.splitlines() == [
        "snapshotter: warning: please specify ci rules in snake-case (the legacy camelCase "
        "format is deprecated)",
        f"snapshotter: warning: {config}: line 7: ignoring unknown rule 'plugin1/rule1'",
    ]
    assert result.out.split("Evaluation:\n")[1] == (
        "  PASS  highestUserWastedPercent (0.6)\n"
        "  FAIL  highestWastedBytes (too many bytes wasted (wasted-bytes=400 > threshold=300))\n"
        "  PASS  lowestEfficiency (0.75)\n"
        "\n"
        "FAIL [pass:2 fail:1]\n"
    )
    missing = cli("wasted", name, "--ci-config", str(tmp_path / "nope"))
    assert missing.rc == 1 and "cannot read it" in missing.err


def test_ci_config_parsing():
    both = parse_ci_config(
        "rules:\n  lowest-efficiency: 0.5\n  lowestEfficiency: '0.6'\n  highestWastedBytes:\n",
        "f",
    )
    assert both.rules == {"lowestEfficiency": "0.6"}  # legacy wins, an empty one does not
    assert parse_ci_config(
        "rules: {lowest-efficiency: 0.5, highestWastedBytes: 2MB}", "f"
    ).rules == {
        "lowestEfficiency": "0.5",
        "highestWastedBytes": "2MB",
    }
    assert parse_ci_config("other: 1\nrules:\n  lowest-efficiency: ~\n", "f").rules == {
        "lowestEfficiency": ""
    }
    assert parse_ci_config("# nothing\n", "f").rules == {}
    for bad in ("rules:\n\tlowest-efficiency: 1\n", "rules:\n  lowest-efficiency: [1]\n"):
        with pytest.raises(InvalidConfig):
            parse_ci_config(bad, "f")
    with pytest.raises(InvalidConfig, match="outside allowed range"):
        make_rules({"lowestEfficiency": "1.5"})
    with pytest.raises(InvalidConfig, match="unhandled size name: parsecs"):
        make_rules({"highestWastedBytes": "12 parsecs"})
    assert [r.threshold for r in make_rules({})] == [0.9, None, 0.1]  # dive's defaults


def test_the_base_image_annotation_moves_the_user_boundary(cli, tmp_path):
    base_layers = [
        LayerBuilder().file("bin/sh", b"s" * 1000),
        LayerBuilder().file("etc/os-release", b"o" * 100),
    ]
    base = ImageBuilder(base_layers)
    base_name = pull(cli, tmp_path, "base:1", base)
    app_layers = [
        *base_layers,
        LayerBuilder().file("app/f", b"a" * 500).file("etc/os-release", b"p" * 100),
    ]
    app = ImageBuilder(
        app_layers,
        annotations={"org.opencontainers.image.base.digest": base.manifest_digest()},
    )
    name = pull(cli, tmp_path, "app:1", app)
    result = cli("wasted", name, "--json")
    assert result.err == ""
    extra = json.loads(result.out)["snapshotter"]
    assert (extra["baseLayers"], extra["userSizeBytes"], extra["wastedBytes"]) == (2, 600, 100)
    assert extra["baseDigest"] == base.manifest_digest()
    assert "(of 600 in layer 3, above the base)" in cli("wasted", name, "--bytes").out
    # Without the base in the store: dive's boundary, and a warning.
    assert cli("rmi", base_name).rc == 0
    result = cli("wasted", name, "--json")
    assert json.loads(result.out)["snapshotter"]["baseLayers"] == 1
    assert result.err == (
        f"snapshotter: warning: base image {base.manifest_digest()!r} "
        "(org.opencontainers.image.base.digest) is not in the store (pull it to count from "
        "its last layer); user bytes are counted from layer 2, as dive counts them\n"
    )
    # A "base" whose layers are not this image's first layers is no base.
    other = ImageBuilder([LayerBuilder().file("x", b"x")])
    pull(cli, tmp_path, "other:1", other)
    liar = ImageBuilder(
        app_layers, annotations={"org.opencontainers.image.base.digest": other.manifest_digest()}
    )
    name = pull(cli, tmp_path, "liar:1", liar)
    result = cli("wasted", name, "--json")
    assert json.loads(result.out)["snapshotter"]["baseLayers"] == 1
    assert "has layers that are not this image's first layers" in result.err


def test_a_base_named_by_its_index_counts_the_layers_of_this_platform(cli, tmp_path):
    """BuildKit may name the base by the digest FROM resolved to: an index."""
    amd64_layers = [LayerBuilder().file("a", b"a" * 10), LayerBuilder().file("b", b"b" * 10)]
    amd64 = ImageBuilder(amd64_layers)
    arm64 = ImageBuilder([LayerBuilder().file("a", b"A")], architecture="arm64")
    base = write_oci_layout(tmp_path / "base", {}, index_of={"multi": [amd64, arm64]})
    index = json.loads((base / "index.json").read_text())["manifests"][0]["digest"]
    result = cli("pull", "-q", "--all-platforms", f"oci:{base}:multi", "--name", "base:multi")
    assert result.rc == 0, result.err
    app = ImageBuilder(
        [*amd64_layers, LayerBuilder().file("c", b"c" * 30)],
        annotations={"org.opencontainers.image.base.digest": index},
    )
    name = pull(cli, tmp_path, "app:1", app)
    result = cli("wasted", name, "--json", "--platform", "linux/amd64")
    assert result.err == ""
    extra = json.loads(result.out)["snapshotter"]
    assert (extra["baseLayers"], extra["userSizeBytes"], extra["baseDigest"]) == (2, 30, index)


# -- dive as the oracle --------------------------------------------------------------------------


def dive_export() -> dict[str, Any]:
    """dive's export snapshot of its .data/test-docker-image.tar (tests/data/dive)."""
    text = (DIVE / "export_test.snap").read_text()
    return json.loads(text[text.index("{") : text.rindex("}") + 1])


def layer_of(file_list: list[dict[str, Any]]) -> LayerBuilder:
    """A layer with the entries of one of dive's fileLists (content: zeros of each size)."""
    layer = LayerBuilder()
    # Parents before children; hardlinks after every file they may name.
    for f in sorted(file_list, key=lambda f: (f["typeFlag"] == 49, f["path"].split("/"))):
        path, go_mode, flag = f["path"], f["fileMode"], f["typeFlag"]
        mode = go_mode & 0o777
        for go_bit, bit in ((1 << 23, 0o4000), (1 << 22, 0o2000), (1 << 20, 0o1000)):
            if go_mode & go_bit:
                mode |= bit
        owner = {"uid": f["uid"], "gid": f["gid"]}
        parent, _, base = path.rpartition("/")
        if base.startswith(".wh."):
            layer.whiteout(f"{parent}/{base[4:]}" if parent else base[4:])
        elif flag == 53:
            layer.dir(path, mode=mode, **owner)
        elif flag == 48:
            layer.file(path, bytes(f["size"]), mode=mode, **owner)
        elif flag == 49:
            layer.hardlink(path, f["linkName"])
        elif flag == 50:
            layer.symlink(path, f["linkName"], **owner)
        else:
            raise AssertionError(f"no such entry in dive's test image: {f}")
    return layer


@dataclasses.dataclass
class HistoryImage(ImageBuilder):
    """An image whose history entries say ``created_by``."""

    created_by: list[str] = dataclasses.field(default_factory=list)

    def config_bytes(self) -> bytes:
        config = json.loads(super().config_bytes())
        config["history"] = [{"created_by": c} for c in self.created_by]
        return json.dumps(config, sort_keys=True).encode()


def test_wasted_json_is_dives_export_of_dives_test_image(cli, tmp_path):
    """dive's own test image, rebuilt from the file lists of dive's snapshot of it, gives
    dive's document: the same efficiency to the last digit, the same inefficient files in
    dive's order, sizes, commands and every file list (dive's ``id``, the layer's directory
    in a ``docker save`` archive, and the digests of our rebuilt layers aside)."""
    dive = dive_export()
    image = HistoryImage(
        [layer_of(layer["fileList"]) for layer in dive["layer"]],
        created_by=["/bin/sh -c " + layer["command"] for layer in dive["layer"]],
    )
    name = pull(cli, tmp_path, "dive:test", image)
    ours = go_json(cli, "wasted", name, "--json")
    extra = ours.pop("snapshotter")
    for layer in [*ours["layer"], *dive["layer"]]:
        layer.pop("id")
        layer.pop("digestId")
    assert ours == dive
    # Ours: bytes beyond one copy (dive PR #685): the same files, one copy each less.
    assert extra["wastedBytes"] == 3 * 6405
    assert [(f["file"], f["wastedBytes"]) for f in extra["inefficientFiles"]] == [
        ("/root/example/somefile1.txt", 6405),
        ("/root/example/somefile3.txt", 6405),
        ("/root/saved.txt", 6405),
    ]


def test_wasted_json_is_written_as_go_writes_it(cli, tmp_path):
    """Key order, indentation, floats and escapes as Go's json.MarshalIndent(v, "", "  ")."""
    image = ImageBuilder(
        [LayerBuilder().file("a<b>&c", b"x" * 3), LayerBuilder().file("a<b>&c", b"y")]
    )
    name = pull(cli, tmp_path, "go:1", image)
    out = cli("wasted", name, "--json").out
    assert out.startswith('{\n  "layer": [\n    {\n      "index": 0,\n      "id": "')
    assert '"path": "a\\u003cb\\u003e\\u0026c",' in out
    assert '\n  "image": {\n    "sizeBytes": 4,\n    "inefficientBytes": 4,\n' in out
    assert '"efficiencyScore": 0.25,' in out
    assert list(json.loads(out)) == ["layer", "image", "snapshotter"]
    assert go_json_float(1.0) == "1" and go_json_float(1e-7) == "1e-7"
    assert go_json_float(0.00002) == "0.00002" and go_json_float(1e21) == "1e+21"
    assert go_json_float(math.inf) == "null"
    assert go_string("é\u2028\udcff\n") == '"é\\u2028\ufffd\\n"'


def dive_ci_report() -> str:
    """The report dive's test expects for its multi-layer test image (tests/data/dive)."""
    text = (DIVE / "cli_ci_test.snap").read_text()
    return text.split("[Test_CI_Fail - 1]\n")[1].split("\n\n---")[0]


def test_ci_report_is_dives_text():
    """With numbers that make dive's (131 B wasted of 182 user bytes, efficiency rounding to
    100 %), the report is dive's, character for character, but for the two files dive
    lists as wasting 0 B."""
    report = WasteReport(
        layers=(
            LayerSummary(1, "sha256:a", "sha256:a", 4_000_000, "FROM"),
            LayerSummary(2, "sha256:b", "sha256:b", 182, "RUN"),
        ),
        efficiency=0.99997,
        inefficient=(
            PathWaste("root/saved.txt", 3, 80, 0),
            PathWaste("root/example/somefile1.txt", 2, 34, 0),
            PathWaste("root/example/somefile3.txt", 2, 17, 0),
            PathWaste("root", 2, 0, 0),
            PathWaste("etc", 10, 0, 0),
        ),
        base=BaseBoundary(1, None, None),
    )
    dive = dive_ci_report()
    zero_rows = ["  2      0 B           /root\n", "  10     0 B           /etc\n"]
    for row in zero_rows:  # dive's rows of files that waste nothing, which we leave out
        assert row in dive
        dive = dive.replace(row, "")
    assert ci_report(report, evaluate(make_rules({}), report)) == dive


def test_go_humanize_and_go_floats():
    assert [humanize_bytes(n) for n in (0, 9, 10, 131, 999, 1000, 1234, 12_345, 999_999)] == [
        "0 B",
        "9 B",
        "10 B",
        "131 B",
        "999 B",
        "1.0 kB",
        "1.2 kB",
        "12 kB",
        "1000 kB",  # go-humanize rounds after picking the unit
    ]
    assert humanize_bytes(20 * MB) == "20 MB" and humanize_bytes(1_500_000_000) == "1.5 GB"
    assert parse_bytes("20MB") == parse_bytes("19Mb") + MB == 20 * MB
    assert parse_bytes("1 MiB") == 1 << 20 and parse_bytes("1,000") == 1000
    assert parse_bytes("1.5kb") == 1500 and parse_bytes("7") == 7
    for bad in ("MB", "1 parsec", "", "1e3"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    assert [go_float(x) for x in (0.9, 1.0, 0.1, 1e-05, 0.0001, 1e6, 123456.0)] == [
        "0.9",
        "1",
        "0.1",
        "1e-05",
        "0.0001",
        "1e+06",
        "123456",
    ]


# -- the rest ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["du", "wasted"])
def test_help(cli, command):
    result = cli(command, "--help")
    assert result.rc == 0 and result.out.startswith(f"usage: snapshotter {command} ")


def test_hostile_names_do_not_reach_the_terminal(cli, tmp_path, store_root):
    image = ImageBuilder(
        [
            LayerBuilder().file("evil\x1b[2Jname", b"x" * 10).dir("d\x07"),
            LayerBuilder().file("evil\x1b[2Jname", b"y" * 10),
        ]
    )
    name = pull(cli, tmp_path, "evil:1", image)
    out = on_terminal("--root", str(store_root), "wasted", name, "--bytes")
    assert "\x1b" not in out and "/evil\\x1b[2Jname" in out
    out = on_terminal("--root", str(store_root), "du", name, "--bytes")
    assert "\x07" not in out and "/d\\x07" in out
    # to a pipe, names are exact (as du and find print them)
    assert "/evil\x1b[2Jname" in cli("wasted", name, "--bytes").out
    assert "/d\x07" in cli("du", name, "--bytes").out
    assert json.loads(cli("du", name, "--json").out)["entries"][0]["path"] == "/d\x07"
