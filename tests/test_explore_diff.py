"""``snapshotter diff``: what one layer changed, and how two images differ, on images whose
answers are known by construction."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import CliResult, on_terminal, run_snapshotter

from snapshotter.explore.diff import file_changes, layer_diff, view_changes
from snapshotter.explore.image import open_image
from snapshotter.store.store import Store

Cli = Callable[..., CliResult]
LATER = 1_800_000_000  # an mtime other than the builders' default


def pull(tmp_path: Path, cli: Cli, name: str, image: ImageBuilder) -> None:
    layout = tmp_path / f"layout-{name.replace(':', '-').replace('/', '-')}"
    write_oci_layout(layout, {"t": image})
    result = cli("pull", "-q", f"oci:{layout}:t", "--name", name)
    assert result.rc == 0, result.err


# -- diff --layer ------------------------------------------------------------------------------


def base_layer() -> LayerBuilder:
    lb = LayerBuilder().dir("dev").chardev("dev/null", 1, 3).dir("etc")
    lb.file("etc/attr", b"x", xattrs={"user.a": b"1"})
    lb.file("etc/conf", b"v1")
    lb.symlink("etc/link", "conf")
    lb.file("etc/mode", b"m", mode=0o644)
    lb.file("etc/own", b"o")
    lb.file("etc/same", b"same")
    lb.file("etc/time", b"t")
    lb.file("fd", b"a file, then a directory")
    lb.file("gone", b"deleted in layer 3")
    lb.file("hard", b"h")
    lb.file("pair1", b"p").hardlink("pair2", "pair1")
    lb.dir("opq").file("opq/a", b"a").file("opq/keep", b"k").dir("opq/sub")
    lb.file("opq/sub/deep", b"d")
    lb.dir("tree").file("tree/x", b"x").file("tree/y", b"y")
    lb.dir("usr").dir("var")
    return lb


def top_layer() -> LayerBuilder:
    lb = LayerBuilder().chardev("dev/null", 1, 5)
    lb.file("etc/attr", b"x", xattrs={"user.a": b"2"})
    lb.file("etc/conf", b"v2")
    lb.symlink("etc/link", "same")  # retargeted: dive sees no change
    lb.file("etc/mode", b"m", mode=0o600)
    lb.file("etc/own", b"o", uid=1000, gid=1000)
    lb.file("etc/same", b"same")  # written again, identical
    lb.file("etc/time", b"t", mtime=LATER)
    lb.dir("fd").file("fd/in", b"i")
    lb.whiteout("gone").whiteout("never-there")
    lb.file("hard", b"h").hardlink("hard2", "hard")
    lb.file("pair1", b"q")  # its partner pair2 keeps the old content
    lb.opaque("opq").file("opq/a", b"a").dir("opq/sub").file("opq/new", b"n")
    lb.file("tree", b"a file where a directory was")
    lb.file("usr/new", b"u")  # usr is only implied: not changed
    lb.dir("var", mode=0o750)
    return lb


TOP_CHANGES = [
    "C /dev/null",
    "C /etc/attr",
    "C /etc/conf",
    "C /etc/link",
    "C /etc/mode",
    "C /etc/own",
    "C /fd",
    "A /fd/in",
    "D /gone",
    "A /hard2",
    "D /opq/keep",
    "A /opq/new",
    "D /opq/sub/deep",
    "C /pair1",
    "C /tree",
    "A /usr/new",
    "C /var",
]


@pytest.fixture
def layered(tmp_path: Path, cli: Cli) -> str:
    middle = LayerBuilder().file("opt/two", b"2")
    pull(tmp_path, cli, "layers:1", ImageBuilder([base_layer(), middle, top_layer()]))
    return "layers:1"


def lines(out: str) -> list[str]:
    return out.splitlines()


def test_a_layer_lists_what_it_added_changed_and_deleted(cli, layered):
    result = cli("diff", layered, "--layer", "3")
    assert result.rc == 0, result.err
    assert lines(result.out) == TOP_CHANGES


def test_an_mtime_alone_is_a_change_only_when_asked(cli, layered):
    result = cli("diff", layered, "--layer", "3", "--mtime")
    assert result.rc == 0, result.err
    expected = [*TOP_CHANGES]
    expected.insert(expected.index("C /etc/own") + 1, "C /etc/time")
    assert lines(result.out) == expected


def test_layer_json_has_podmans_lists_and_the_fields(cli, layered):
    result = cli("diff", layered, "--layer", "3", "--json")
    assert result.rc == 0, result.err
    doc = json.loads(result.out)
    assert doc["added"] == ["/fd/in", "/hard2", "/opq/new", "/usr/new"]
    assert doc["deleted"] == ["/gone", "/opq/keep", "/opq/sub/deep"]
    assert doc["changed"] == [
        "/dev/null",
        "/etc/attr",
        "/etc/conf",
        "/etc/link",
        "/etc/mode",
        "/etc/own",
        "/fd",
        "/pair1",
        "/tree",
        "/var",
    ]
    assert doc["fields"] == {
        "/dev/null": ["device"],
        "/etc/attr": ["xattrs"],
        "/etc/conf": ["digest"],
        "/etc/link": ["link"],
        "/etc/mode": ["mode"],
        "/etc/own": ["uid", "gid"],
        "/fd": ["type"],
        "/pair1": ["digest"],
        "/tree": ["type"],
        "/var": ["mode"],
    }
    assert doc["layer"] == 3


def test_the_base_layer_is_everything_added(cli, layered):
    result = cli("diff", layered, "--layer", "1")
    assert result.rc == 0, result.err
    assert lines(result.out) == [
        "A /dev",
        "A /dev/null",
        "A /etc",
        "A /etc/attr",
        "A /etc/conf",
        "A /etc/link",
        "A /etc/mode",
        "A /etc/own",
        "A /etc/same",
        "A /etc/time",
        "A /fd",
        "A /gone",
        "A /hard",
        "A /opq",
        "A /opq/a",
        "A /opq/keep",
        "A /opq/sub",
        "A /opq/sub/deep",
        "A /pair1",
        "A /pair2",
        "A /tree",
        "A /tree/x",
        "A /tree/y",
        "A /usr",
        "A /var",
    ]


def test_an_implied_directory_is_added_with_its_file(cli, layered):
    result = cli("diff", layered, "--layer", "2", "--json")
    assert result.rc == 0, result.err
    assert json.loads(result.out)["added"] == ["/opt", "/opt/two"]
    assert json.loads(result.out)["changed"] == []


def test_an_opaque_directory_deletes_lower_children_it_does_not_readd(tmp_path, cli):
    # d/sub is re-added empty: its lower child is lost with the rest; d itself is only
    # implied by the marker, so it is not changed.
    base = LayerBuilder().dir("d").file("d/a", b"1").dir("d/sub").file("d/sub/x", b"2")
    base.dir("d/sub/deeper").file("d/sub/deeper/y", b"3").file("d/z", b"4")
    top = LayerBuilder().opaque("d").dir("d/sub").file("d/z", b"4")
    pull(tmp_path, cli, "opq:1", ImageBuilder([base, top]))
    result = cli("diff", "opq:1", "--layer", "2")
    assert result.rc == 0, result.err
    assert lines(result.out) == ["D /d/a", "D /d/sub/deeper", "D /d/sub/x"]


def test_an_implied_directory_over_a_file_is_a_change_of_type(tmp_path, cli):
    base = LayerBuilder().file("a", b"a file").dir("d").file("d/x", b"x")
    top = LayerBuilder().file("a/b", b"b").file("d/y", b"y")  # a and d only implied
    pull(tmp_path, cli, "implied:1", ImageBuilder([base, top]))
    result = cli("diff", "implied:1", "--layer", "2", "--json")
    assert result.rc == 0, result.err
    doc = json.loads(result.out)
    assert (doc["added"], doc["changed"], doc["deleted"]) == (["/a/b", "/d/y"], ["/a"], [])
    assert doc["fields"] == {"/a": ["type"]}


def test_a_whiteout_of_a_directory_is_one_line(tmp_path, cli):
    base = LayerBuilder().dir("d").file("d/a", b"1").dir("d/e").file("d/e/f", b"2")
    pull(tmp_path, cli, "wh:1", ImageBuilder([base, LayerBuilder().whiteout("d")]))
    result = cli("diff", "wh:1", "--layer", "2")
    assert (result.rc, result.out) == (0, "D /d\n")


def test_a_character_device_0_0_is_a_whiteout_and_an_implied_dir_may_drop_xattrs(tmp_path, cli):
    """overlayfs takes a 0/0 character device for a whiteout (view/merge.py); a directory
    only implied over a lower one is that layer's copy, without trusted.* xattrs."""
    base = LayerBuilder().dir("d").file("d/a", b"1").file("f", b"f")
    base.dir("t", xattrs={"trusted.x": b"1", "user.y": b"2"}).file("t/a", b"a")
    top = LayerBuilder().chardev("d", 0, 0).chardev("f", 0, 0).chardev("n", 0, 0)
    top.file("t/b", b"b")
    pull(tmp_path, cli, "wh0:1", ImageBuilder([base, top]))
    result = cli("diff", "wh0:1", "--layer", "2", "--json")
    assert result.rc == 0, result.err
    doc = json.loads(result.out)
    assert (doc["added"], doc["changed"], doc["deleted"]) == (["/t/b"], ["/t"], ["/d", "/f"])
    assert doc["fields"] == {"/t": ["xattrs"]}


def test_a_layer_that_changes_nothing_prints_nothing(tmp_path, cli):
    base = LayerBuilder().file("a", b"1")
    again = LayerBuilder().file("a", b"1").whiteout("nothing")
    pull(tmp_path, cli, "same:1", ImageBuilder([base, again]))
    result = cli("diff", "same:1", "--layer", "2", "--json")
    assert result.rc == 0, result.err
    assert json.loads(result.out) == {
        "added": [],
        "changed": [],
        "deleted": [],
        "fields": {},
        "layer": 2,
    }


def test_a_root_whose_own_metadata_changes_is_changed(tmp_path, cli):
    base = LayerBuilder().dir("./", mode=0o755, raw_name=True).file("a", b"1")
    top = LayerBuilder().dir("./", mode=0o700, raw_name=True)
    pull(tmp_path, cli, "root:1", ImageBuilder([base, top]))
    assert cli("diff", "root:1", "--layer", "1").out == "A /a\n"
    # Layer 1 never changes the root, whose mtime the empty image below has as 0.
    assert cli("diff", "root:1", "--layer", "1", "--mtime").out == "A /a\n"
    assert cli("diff", "root:1", "--layer", "2").out == "C /\n"


def test_a_layer_out_of_range_is_an_error_with_exit_2(cli, layered):
    for n in ("0", "4"):
        result = cli("diff", layered, "--layer", n)
        assert result.rc == 2
        assert result.out == ""
        assert result.err == (
            f"snapshotter: error: image {layered!r}: layer {n} is out of range 1..3\n"
        )


def digest_of(cli: Cli, name: str) -> str:
    result = cli("images", "--digests", "--no-trunc")
    for row in result.out.splitlines()[1:]:
        if row.split()[0] + ":" + row.split()[1] in (name, f"docker.io/library/{name}"):
            return str(next(c for c in row.split() if c.startswith("sha256:")))
    raise AssertionError(result.out)


def test_names_are_escaped_on_a_terminal_and_exact_in_pipes_and_json(tmp_path, cli, store_root):
    top = LayerBuilder().file("bad\x1b[31mname", b"1").file("caf\udce9", b"2")
    pull(tmp_path, cli, "names:1", ImageBuilder([LayerBuilder().file("a", b""), top]))
    shown = on_terminal("--root", str(store_root), "diff", "names:1", "--layer", "2")
    assert shown.splitlines() == ["A /bad\\x1b[31mname", "A /caf\\xe9"]
    result = cli("diff", "names:1", "--layer", "2")
    assert result.rc == 0, result.err
    assert lines(result.out) == ["A /bad\x1b[31mname", "A /caf\udce9"]  # as find prints
    doc = json.loads(cli("diff", "names:1", "--layer", "2", "--json").out)
    assert doc["added"] == ["/bad\x1b[31mname", "/caf\udce9"]


# -- diff IMAGE OTHER --------------------------------------------------------------------------


class HistoryImage(ImageBuilder):
    """An image whose config history is given, not made up by the builder."""

    def __init__(self, layers: list[LayerBuilder], history: list[dict[str, Any]], **kw: Any):
        super().__init__(layers, **kw)
        self.history = history

    def config_bytes(self) -> bytes:
        cfg = json.loads(super().config_bytes())
        cfg["history"] = self.history
        return json.dumps(cfg, separators=(",", ":")).encode()


def shared_base() -> LayerBuilder:
    lb = LayerBuilder().dir("etc").file("etc/a", b"a").file("etc/b", b"b")
    lb.dir("srv").file("srv/one", b"1").dir("srv/deep").file("srv/deep/two", b"2")
    return lb.symlink("etc/link", "a").file("etc/keep", b"k")


def test_identical_images_are_the_same(tmp_path, cli):
    pull(tmp_path, cli, "one:1", ImageBuilder([shared_base()]))
    pull(tmp_path, cli, "one:2", ImageBuilder([shared_base()]))
    result = cli("diff", "one:1", "one:2")
    assert (result.rc, result.out, result.err) == (0, "", "")
    doc = json.loads(cli("diff", "one:1", "one:2", "--json").out)
    assert doc["same"] is True and doc["shared_layers"] == 1
    assert doc["files"] == {"added": [], "changed": [], "deleted": []}


@pytest.fixture
def pair(tmp_path: Path, cli: Cli) -> tuple[str, str]:
    """Two images on one base: OTHER changes a file, adds one, deletes one."""
    mine = LayerBuilder().file("etc/a", b"a-mine").file("etc/same", b"s")
    theirs = LayerBuilder().file("etc/a", b"a-theirs", mode=0o600).file("etc/same", b"s")
    theirs.file("etc/new", b"n").whiteout("etc/b").symlink("etc/link", "b")
    pull(tmp_path, cli, "pair:1", ImageBuilder([shared_base(), mine]))
    pull(tmp_path, cli, "pair:2", ImageBuilder([shared_base(), theirs]))
    return "pair:1", "pair:2"


def test_images_differing_in_files(cli, pair):
    result = cli("diff", *pair)
    assert result.rc == 1, result.err
    assert lines(result.out) == [
        "C /etc/a (digest, mode)",
        "D /etc/b",
        "C /etc/link (link)",
        "A /etc/new",
    ]
    doc = json.loads(cli("diff", *pair, "--json").out)
    assert doc["files"] == {
        "added": ["/etc/new"],
        "changed": [
            {"path": "/etc/a", "fields": ["digest", "mode"]},
            {"path": "/etc/link", "fields": ["link"]},
        ],
        "deleted": ["/etc/b"],
    }
    assert doc["same"] is False and doc["shared_layers"] == 1
    assert doc["config"] == [] and doc["history"] == []


def test_contents_compare_by_the_tocs_digests_without_reading_a_file(tmp_path, cli, store_root):
    pull(tmp_path, cli, "c:1", ImageBuilder([shared_base(), LayerBuilder().file("f", b"aaaa")]))
    pull(tmp_path, cli, "c:2", ImageBuilder([shared_base(), LayerBuilder().file("f", b"bbbb")]))
    pull(tmp_path, cli, "c:3", ImageBuilder([shared_base(), LayerBuilder().file("f", b"aaaa")]))
    for data in (store_root / "snapshots").glob("*/*/data"):
        for content in data.iterdir():
            content.unlink()  # the same size: only digests can tell
    assert lines(cli("diff", "c:1", "c:2").out) == ["C /f (digest)"]
    result = cli("diff", "c:1", "c:3")
    assert (result.rc, result.out, result.err) == (0, "", "")


def test_shared_layers_are_not_read(cli, store_root, pair):
    before = cli("diff", *pair)  # builds both merged trees
    store = Store(store_root)
    base = open_image(store, pair[0]).snapshot(1)
    (base / "toc.json.zst").write_bytes(b"not a toc")
    for content in (base / "data").iterdir():
        content.unlink()
    after = cli("diff", *pair)
    assert (after.rc, after.out, after.err) == (1, before.out, "")
    a, b = open_image(store, pair[0]), open_image(store, pair[1])
    assert file_changes(a, b, walk=True) == file_changes(a, b)


def test_swapping_the_images_swaps_added_and_deleted(cli, pair):
    result = cli("diff", pair[1], pair[0])
    assert result.rc == 1
    assert lines(result.out) == [
        "C /etc/a (digest, mode)",
        "A /etc/b",
        "C /etc/link (link)",
        "D /etc/new",
    ]


def test_a_deleted_directory_is_one_line_and_an_added_one_lists_everything(tmp_path, cli):
    pull(tmp_path, cli, "dirs:1", ImageBuilder([shared_base()]))
    top = LayerBuilder().whiteout("srv").dir("opt").file("opt/x", b"x").dir("opt/y")
    pull(tmp_path, cli, "dirs:2", ImageBuilder([shared_base(), top]))
    result = cli("diff", "dirs:1", "dirs:2", "--ignore-history")  # 1 layer against 2
    assert result.rc == 1
    assert lines(result.out) == ["A /opt", "A /opt/x", "A /opt/y", "D /srv"]
    result = cli("diff", "dirs:2", "dirs:1", "--ignore-history")
    assert lines(result.out) == ["D /opt", "A /srv", "A /srv/deep", "A /srv/deep/two", "A /srv/one"]


def test_an_opaque_directory_against_the_shared_base(tmp_path, cli):
    pull(tmp_path, cli, "o:1", ImageBuilder([shared_base()]))
    top = LayerBuilder().opaque("srv").dir("srv/deep").file("srv/one", b"1")
    pull(tmp_path, cli, "o:2", ImageBuilder([shared_base(), top]))
    result = cli("diff", "o:1", "o:2", "--ignore-history")
    assert (result.rc, lines(result.out)) == (1, ["D /srv/deep/two"])


def test_a_directory_replaced_by_a_file_is_one_change(tmp_path, cli):
    pull(tmp_path, cli, "r:1", ImageBuilder([shared_base()]))
    pull(tmp_path, cli, "r:2", ImageBuilder([shared_base(), LayerBuilder().file("srv", b"f")]))
    result = cli("diff", "r:1", "r:2", "--ignore-history")
    assert (result.rc, lines(result.out)) == (1, ["C /srv (type)"])
    result = cli(
        "diff", "r:2", "r:1", "--ignore-history"
    )  # the other way round, the directory's files are new
    assert lines(result.out) == [
        "C /srv (type)",
        "A /srv/deep",
        "A /srv/deep/two",
        "A /srv/one",
    ]


def test_the_same_files_in_other_layers_differ_only_in_history(tmp_path, cli):
    one = LayerBuilder().dir("etc").file("etc/a", b"a").file("etc/b", b"b")
    split1 = LayerBuilder().dir("etc").file("etc/a", b"a")
    split2 = LayerBuilder().file("etc/b", b"b")
    pull(tmp_path, cli, "flat:1", ImageBuilder([one]))
    pull(tmp_path, cli, "split:1", ImageBuilder([split1, split2]))
    result = cli("diff", "flat:1", "split:1")
    assert result.rc == 1
    assert lines(result.out) == [
        'Hist 2: (absent) -> {"author":"","comment":"","created":"2024-01-01T00:00:00Z",'
        '"created_by":"tests/builders.py layer 1","empty_layer":false}'
    ]
    result = cli("diff", "flat:1", "split:1", "--ignore-history")
    assert (result.rc, result.out) == (0, "")


def test_config_differences_are_rows(tmp_path, cli):
    cfg1 = {"Env": ["A=1"], "Cmd": ["sh"], "Labels": {"foo": "x", "same": "s"}}
    cfg2 = {"Env": ["A=2"], "Cmd": ["sh"], "Labels": {"bar": "y", "same": "s"}, "User": "me"}
    pull(tmp_path, cli, "cfg:1", ImageBuilder([shared_base()], config_extra=cfg1))
    pull(tmp_path, cli, "cfg:2", ImageBuilder([shared_base()], config_extra=cfg2))
    result = cli("diff", "cfg:1", "cfg:2")
    assert result.rc == 1, result.err
    assert lines(result.out) == [
        'Cfg Env: ["A=1"] -> ["A=2"]',
        'Cfg Labels.bar: (absent) -> "y"',
        'Cfg Labels.foo: "x" -> (absent)',
        'Cfg User: (absent) -> "me"',
    ]
    doc = json.loads(cli("diff", "cfg:1", "cfg:2", "--json").out)
    assert doc["config"] == [
        {"key": "Env", "image": ["A=1"], "other": ["A=2"]},
        {"key": "Labels.bar", "image": None, "other": "y"},
        {"key": "Labels.foo", "image": "x", "other": None},
        {"key": "User", "image": None, "other": "me"},
    ]
    assert doc["files"] == {"added": [], "changed": [], "deleted": []}
    # The flags that ignore times and history ignore no config key.
    assert cli("diff", "cfg:1", "cfg:2", "--semantic").rc == 1


def test_history_differences_are_rows_and_ignore_history_drops_them(tmp_path, cli):
    h1 = [{"created": "2024-01-01T00:00:00Z", "created_by": "COPY . /"}]
    h2 = [{"created": "2024-01-01T00:00:00Z", "created_by": "ADD . /", "comment": "c"}]
    pull(tmp_path, cli, "hist:1", HistoryImage([shared_base()], h1))
    pull(tmp_path, cli, "hist:2", HistoryImage([shared_base()], h2))
    result = cli("diff", "hist:1", "hist:2")
    assert result.rc == 1, result.err
    assert lines(result.out) == [
        'Hist 1 created_by: "COPY . /" -> "ADD . /"',
        'Hist 1 comment: "" -> "c"',
    ]
    doc = json.loads(cli("diff", "hist:1", "hist:2", "--json").out)
    assert doc["history"] == [
        {"index": 1, "field": "created_by", "image": "COPY . /", "other": "ADD . /"},
        {"index": 1, "field": "comment", "image": "", "other": "c"},
    ]
    for flag in ("--ignore-history", "--semantic"):
        result = cli("diff", "hist:1", "hist:2", flag)
        assert (result.rc, result.out) == (0, ""), flag
    assert cli("diff", "hist:1", "hist:2", "--ignore-timestamps").rc == 1


def test_ignore_timestamps_drops_mtimes_and_created_times(tmp_path, cli):
    pull(tmp_path, cli, "ts:1", ImageBuilder([shared_base(), LayerBuilder().file("f", b"1")]))
    later = ImageBuilder(
        [shared_base(), LayerBuilder().file("f", b"1", mtime=LATER)],
        created="2025-06-01T00:00:00Z",
    )
    pull(tmp_path, cli, "ts:2", later)
    result = cli("diff", "ts:1", "ts:2")
    assert result.rc == 1, result.err
    assert lines(result.out) == [
        "C /f (mtime)",
        'Cfg created: "2024-01-01T00:00:00Z" -> "2025-06-01T00:00:00Z"',
        'Hist 1 created: "2024-01-01T00:00:00Z" -> "2025-06-01T00:00:00Z"',
        'Hist 2 created: "2024-01-01T00:00:00Z" -> "2025-06-01T00:00:00Z"',
    ]
    for flag in ("--ignore-timestamps", "--semantic"):
        result = cli("diff", "ts:1", "ts:2", flag)
        assert (result.rc, result.out, result.err) == (0, "", ""), flag
    result = cli("diff", "ts:1", "ts:2", "--ignore-history")
    assert lines(result.out) == [
        "C /f (mtime)",
        'Cfg created: "2024-01-01T00:00:00Z" -> "2025-06-01T00:00:00Z"',
    ]


def test_images_with_no_shared_layer_are_walked_in_step(tmp_path, cli):
    # Different base layers (one byte of difference): nothing is shared, every path is
    # compared; the same content and metadata are still the same.
    one = LayerBuilder().dir("etc").file("etc/a", b"a").file("etc/b", b"b").file("etc/c", b"c")
    two = LayerBuilder().dir("etc").file("etc/a", b"a").file("etc/b", b"B").file("etc/d", b"d")
    pull(tmp_path, cli, "w:1", ImageBuilder([one]))
    pull(tmp_path, cli, "w:2", ImageBuilder([two]))
    result = cli("diff", "w:1", "w:2", "--json")
    doc = json.loads(result.out)
    assert result.rc == 1 and doc["shared_layers"] == 0
    assert doc["files"] == {
        "added": ["/etc/d"],
        "changed": [{"path": "/etc/b", "fields": ["digest"]}],
        "deleted": ["/etc/c"],
    }


PAIRS = {
    # name: (IMAGE's layers above the shared base, OTHER's, the changes)
    "same": ([], [], []),
    "one-file": ([LayerBuilder().file("etc/a", b"x")], [], ["C etc/a (digest)"]),
    "whiteout-against-opaque": (
        [LayerBuilder().whiteout("srv")],
        [LayerBuilder().opaque("srv").file("srv/n", b"n")],
        ["A srv", "A srv/n"],
    ),
    "file-then-dir-again": (
        [LayerBuilder().file("srv", b"f"), LayerBuilder().dir("srv").file("srv/one", b"1")],
        [LayerBuilder().dir("srv/deep", mode=0o700)],
        ["A srv/deep", "A srv/deep/two"],
    ),
    "whiteout-then-dir-again": (
        [LayerBuilder().whiteout("srv"), LayerBuilder().dir("srv").file("srv/one", b"1")],
        [],
        ["A srv/deep", "A srv/deep/two"],
    ),
    "recreated-in-one-layer": (
        [LayerBuilder().whiteout("etc").dir("etc").file("etc/a", b"a")],
        [LayerBuilder().file("etc/a", b"a", uid=5).symlink("etc/keep", "a")],
        ["C etc/a (uid)", "A etc/b", "A etc/keep", "A etc/link"],
    ),
}


@pytest.mark.parametrize("name", PAIRS)
def test_only_the_unshared_layers_are_compared_and_that_is_enough(tmp_path, cli, store_root, name):
    mine, theirs, expected = PAIRS[name]
    pull(tmp_path, cli, "s:1", ImageBuilder([shared_base(), *mine]))
    pull(tmp_path, cli, "s:2", ImageBuilder([shared_base(), *theirs]))
    store = Store(store_root)
    a, b = open_image(store, "s:1"), open_image(store, "s:2")
    fast = file_changes(a, b)
    shown = [
        f"{c.action.value} {c.path}" + (f" ({', '.join(c.fields)})" if c.fields else "")
        for c in fast
    ]
    assert shown == expected
    assert fast == file_changes(a, b, walk=True)  # every path of both trees compared


def test_an_unknown_image_exits_2(cli, pair):
    for args in (("nope:1", pair[0]), (pair[0], "nope:1"), ("nope:1", "--layer", "1")):
        result = cli("diff", *args)
        assert result.rc == 2
        assert result.out == ""
        assert result.err == (
            "snapshotter: error: image 'nope:1': not in the store (see 'snapshotter images')\n"
        )


def test_usage_errors_exit_2(cli, pair):
    for args in (
        (pair[0],),
        (*pair, "--layer", "1"),
        (pair[0], "--layer", "1", "--semantic"),
        (*pair, "--mtime"),
    ):
        result = cli("diff", *args)
        assert result.rc == 2, args
        assert result.out == ""
        assert "snapshotter: error: " in result.err


def test_the_real_command_exits_1_on_a_difference(tmp_path, cli, store_root, pair):
    result = run_snapshotter("--root", str(store_root), "diff", *pair)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[0] == "C /etc/a (digest, mode)"
    same = run_snapshotter("--root", str(store_root), "diff", pair[0], pair[0])
    assert (same.returncode, same.stdout) == (0, "")


# -- two views, of one image or two (view_changes) ---------------------------------------------


def story_layers() -> list[LayerBuilder]:
    """base, middle and top of ``diff --layer`` above, then layers that re-add what went
    (identical), replace types back and forth, white out and re-create directories."""
    middle = LayerBuilder().file("opt/two", b"2").dir("data").file("data/x", b"x")
    middle.file("data/y", b"y").dir("data/sub").file("data/sub/z", b"z")
    fourth = LayerBuilder().file("gone", b"deleted in layer 3")  # re-added identical
    fourth.whiteout("data").symlink("tree", "etc").file("etc/conf", b"v2")
    fourth.opaque("fd").file("fd/in", b"i").dir("./", mode=0o700, raw_name=True)
    fifth = LayerBuilder().dir("data").file("data/x", b"x")  # re-created, one file again
    fifth.dir("tree").file("tree/x", b"x").whiteout("etc/link").fifo("pipe")
    fifth.opaque("opq").file("opq/a", b"a").chardev("dev/null", 1, 3)
    return [base_layer(), middle, top_layer(), fourth, fifth]


@pytest.fixture
def stories(tmp_path: Path, cli: Cli, store_root: Path) -> tuple[Any, Any]:
    """The story image (5 layers) and one sharing its first two layers (4 layers)."""
    layers = story_layers()
    other = [
        *story_layers()[:2],
        LayerBuilder().whiteout("etc").file("data/x", b"changed").opaque("data/sub"),
        LayerBuilder().dir("etc").file("etc/conf", b"v1").file("gone", b"deleted in layer 3"),
    ]
    pull(tmp_path, cli, "story:1", ImageBuilder(layers))
    pull(tmp_path, cli, "story:2", ImageBuilder(other))
    store = Store(store_root)
    return open_image(store, "story:1"), open_image(store, "story:2")


def test_two_views_compare_the_same_walked_or_not_for_every_pair_of_layer_counts(stories):
    image, other = stories
    assert len(image.layers) == 5 and len(other.layers) == 4
    for a_img, b_img in ((image, image), (image, other), (other, image)):
        for a in range(len(a_img.layers) + 1):
            for b in range(len(b_img.layers) + 1):
                for mtime in (True, False):
                    fast = view_changes(a_img, b_img, upto=a, other_upto=b, mtime=mtime)
                    walked = view_changes(
                        a_img, b_img, upto=a, other_upto=b, mtime=mtime, walk=True
                    )
                    assert fast == walked, (a_img.what, a, b_img.what, b, mtime)
                    if a_img is b_img and a == b:
                        assert fast == ()
    # None is all layers: file_changes.
    assert view_changes(image, other) == file_changes(image, other) != ()
    assert view_changes(image, other, upto=5, other_upto=4) == file_changes(image, other)


def test_aggregated_changes_of_one_image(stories):
    image, _ = stories
    shown = [
        f"{c.action.value} {c.path}" + (f" ({', '.join(c.fields)})" if c.fields else "")
        for c in view_changes(image, image, upto=2, other_upto=5, mtime=False)
    ]
    # "gone" went in layer 3 and came back identical in 4, data/x in 4 and 5, dev/null
    # changed in 3 and changed back in 5: no change.  tree went file -> symlink -> a
    # directory again with one of its files: only the other is gone.
    assert shown == [
        "C  (mode)",
        "D data/sub",
        "D data/y",
        "C etc/attr (xattrs)",
        "C etc/conf (digest)",
        "D etc/link",
        "C etc/mode (mode)",
        "C etc/own (uid, gid)",
        "C fd (type)",
        "A fd/in",
        "A hard2",
        "D opq/keep",
        "D opq/sub",
        "C pair1 (digest)",
        "A pipe",
        "D tree/y",
        "A usr/new",
        "C var (mode)",
    ]


def test_one_layer_as_two_views_is_what_layer_diff_says(stories):
    """``layer_diff(image, n)`` looks only where layer n's toc has entries; the two views
    as of n-1 and n differ only there, with the same rules (a D for a top path only,
    every path of an added subtree), so the lists are equal, but for the root of layer 1,
    which layer_diff never lists (the empty image's made-up root is no lower version)."""
    for image in stories:
        for n in range(1, len(image.layers) + 1):
            changes = view_changes(image, image, upto=n - 1, other_upto=n, mtime=False)
            if n == 1:
                changes = tuple(c for c in changes if c.path != "")
            assert changes == layer_diff(image, n).changes, (image.what, n)
