"""blame (explore/blame.py, cli/files.py): which layer added, changed or deleted a path.

Images are built here with known stories (a file written in layer 1, overwritten in 3,
deleted in 4; an opaque directory; a directory replaced by a file; a hardlink pair split
across layers), and checked row by row, human and --json.  Blame must never disagree with
the merged view: for every path of built images and of random layer stacks, the state its
rows end with is the merged tree's node.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from hypothesis import HealthCheck, given, settings
from test_merge import FAST_TMP, LAYERS, Reference, build, unpack_all

from snapshotter.explore.blame import Action, BlameRow, Version, blame, blame_rows, trace
from snapshotter.explore.image import open_image
from snapshotter.store.store import Store
from snapshotter.store.toc import EntryKind, Toc
from snapshotter.view.merge import MergedTree, Node, merge


@dataclass
class StoryImage(ImageBuilder):
    """An image whose config history is given (``created_by`` per entry, ``None`` for an
    empty_layer entry)."""

    history: list[str | None] = field(default_factory=list)

    def config_bytes(self) -> bytes:
        cfg = json.loads(super().config_bytes())
        cfg["history"] = [
            {"created": self.created, "created_by": text}
            if text is not None
            else {"created": self.created, "created_by": "ENV A=b", "empty_layer": True}
            for text in self.history
        ]
        return json.dumps(cfg, separators=(",", ":")).encode()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def story_layers() -> list[LayerBuilder]:
    l1 = (
        LayerBuilder()
        .dir("etc")
        .file("etc/f", b"one\n")
        .dir("opq")
        .file("opq/old", b"old")
        .dir("opq/sub")
        .file("opq/sub/deep", b"deep")
        .dir("d2f")
        .file("d2f/child", b"c")
        .dir("hl")
        .file("hl/a", b"pair")
        .hardlink("hl/b", "hl/a")
        .file("same", b"same")
        .file("imp/a/file", b"i")  # imp and imp/a are implied
        .dir("meta", mode=0o755)
        .symlink("lnk", "etc/f")
        .chardev("null", 1, 3)
        .dir("rr")
        .file("rr/old", b"o")
    )
    l2 = (
        LayerBuilder()
        .file("hl/b", b"new b")  # splits the pair: hl/a keeps "pair"
        .file("d2f", b"now a file")
        .file("same", b"same")  # written again, same content
        .dir("meta", mode=0o700, uid=5)
        .file("imp/a/g", b"g")  # imp/a implied again: changes nothing
    )
    l3 = (
        LayerBuilder()
        .file("etc/f", b"three\n")
        .dir("opq")
        .opaque("opq")
        .file("opq/new", b"new")
        .file("opq/sub/deep", b"deep again")  # re-created under the opaque dir
        .symlink("lnk", "/etc/f")
        .dir("meta", mode=0o700, uid=5)  # listed again as it was: no row
    )
    l4 = LayerBuilder().whiteout("etc/f").whiteout("hl").whiteout("rr").file("rr/new", b"n")
    return [l1, l2, l3, l4]


HISTORY = ["COPY base /", None, "RUN\tsplit && rewrite", "RUN mkdir -p /opq", "RUN rm /etc/f"]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A store holding the story image as ``story:1``; (runner, store root)."""
    from test_explore_files import run_in

    root = tmp_path_factory.mktemp("blame")
    layout = write_oci_layout(root / "layout", {"1": StoryImage(story_layers(), history=HISTORY)})
    run = run_in(root / "store")
    assert run("pull", "-q", f"oci:{layout}:1", "--name", "story:1").rc == 0
    return run, root / "store"


def blame_json(story: tuple[Any, Path], path: str) -> dict[str, Any]:
    run, _ = story
    result = run("blame", "--json", "story:1", path)
    assert result.rc == 0, result.err
    doc: dict[str, Any] = json.loads(result.out)
    return doc


def rows(story: tuple[Any, Path], path: str) -> list[tuple[int, str]]:
    return [(r["layer"], r["action"]) for r in blame_json(story, path)["rows"]]


# -- the stories, human and --json --------------------------------------------------


def test_written_overwritten_deleted_human(story):
    run, _ = story
    result = run("blame", "story:1", "/etc/f")
    assert result.rc == 0, result.err
    one, three = sha(b"one\n")[7:19], sha(b"three\n")[7:19]
    assert result.out == (
        "LAYER   ACTION               SIZE   DIGEST         CREATED BY\n"
        f"1       added                4      {one}   COPY base /\n"
        f"3       modified             6      {three}   RUN mkdir -p /opq\n"
        "4       deleted (whiteout)   -      -              RUN rm /etc/f\n"
        "view    absent               -      -\n"
    )


def test_written_overwritten_deleted_json(story):
    doc = blame_json(story, "/etc/f")
    assert doc["path"] == "/etc/f" and doc["view"] is None
    assert doc["rows"] == [
        {
            "layer": 1,
            "action": "added",
            "kind": "file",
            "size": 4,
            "digest": sha(b"one\n"),
            "mode": 0o644,
            "uid": 0,
            "gid": 0,
            "mtime": "2023-11-14T22:13:20.123456789Z",
            "linkname": "",
            "created_by": "COPY base /",
            "hardlinks": [],
            "cause": "/etc/f",
            "same_content": False,
            "opaque": False,
            "implied": False,
        },
        {
            "layer": 3,
            "action": "modified",
            "kind": "file",
            "size": 6,
            "digest": sha(b"three\n"),
            "mode": 0o644,
            "uid": 0,
            "gid": 0,
            "mtime": "2023-11-14T22:13:20.123456789Z",
            "linkname": "",
            "created_by": "RUN mkdir -p /opq",
            "hardlinks": [],
            "cause": "/etc/f",
            "same_content": False,
            "opaque": False,
            "implied": False,
        },
        {
            "layer": 4,
            "action": "deleted (whiteout)",
            "kind": None,
            "size": None,
            "digest": None,
            "mode": None,
            "uid": None,
            "gid": None,
            "mtime": None,
            "linkname": None,
            "created_by": "RUN rm /etc/f",
            "hardlinks": [],
            "cause": "/etc/f",
            "same_content": False,
            "opaque": False,
            "implied": False,
        },
    ]


def test_the_view_row_is_the_merged_views_version(story):
    run, _ = story
    doc = blame_json(story, "/opq/sub/deep")
    assert doc["view"] == {
        "layer": 3,
        "kind": "file",
        "size": 10,
        "digest": sha(b"deep again"),
        "mode": 0o644,
        "uid": 0,
        "gid": 0,
        "mtime": "2023-11-14T22:13:20.123456789Z",
        "linkname": "",
        "nlink": 1,
        "hardlinks": [],
    }
    out = run("blame", "story:1", "/opq/sub/deep").out.splitlines()
    assert out[-1].split() == ["view", "from", "layer", "3", "10", sha(b"deep again")[7:19]]


def test_an_opaque_directory_deletes_what_was_below_it(story):
    assert rows(story, "/opq/old") == [(1, "added"), (3, "deleted (opaque directory)")]
    doc = blame_json(story, "/opq/old")
    assert doc["rows"][1]["cause"] == "/opq" and doc["view"] is None
    # Re-created below the opaque directory in the same layer: written again.
    assert rows(story, "/opq/sub/deep") == [(1, "added"), (3, "modified")]
    # The opaque directory itself: modified, its lower contents hidden.
    doc = blame_json(story, "/opq")
    assert [(r["layer"], r["action"], r["opaque"]) for r in doc["rows"]] == [
        (1, "added", False),
        (3, "modified", True),
    ]
    run, _ = story
    line = run("blame", "story:1", "/opq").out.splitlines()[2]
    assert "modified [opaque: lower contents hidden]" in line
    assert rows(story, "/opq/new") == [(3, "added")]


def test_rm_rf_then_mkdir_in_one_layer_is_an_opaque_directory(story):
    # The toc keeps a whiteout of a directory its own layer re-creates as an opaque
    # directory (crane #2029's case): the old children are deleted by it.
    assert rows(story, "/rr/old") == [(1, "added"), (4, "deleted (opaque directory)")]
    assert blame_json(story, "/rr/old")["rows"][1]["cause"] == "/rr"
    assert rows(story, "/rr/new") == [(4, "added")]


def test_a_directory_replaced_by_a_file(story):
    run, _ = story
    assert rows(story, "/d2f/child") == [(1, "added"), (2, "replaced")]
    assert blame_json(story, "/d2f/child")["rows"][1]["cause"] == "/d2f"
    assert "replaced [/d2f is no directory]" in run("blame", "story:1", "/d2f/child").out
    assert "modified [was a dir]" in run("blame", "story:1", "/d2f").out
    doc = blame_json(story, "/d2f")
    assert [(r["layer"], r["action"], r["kind"]) for r in doc["rows"]] == [
        (1, "added", "dir"),
        (2, "modified", "file"),
    ]
    assert doc["view"]["kind"] == "file" and doc["view"]["layer"] == 2


def test_a_hardlink_pair_split_across_layers(story):
    run, _ = story
    a, b = blame_json(story, "/hl/a"), blame_json(story, "/hl/b")
    assert [(r["layer"], r["action"], r["hardlinks"]) for r in a["rows"]] == [
        (1, "added", ["/hl/b"]),
        (4, "deleted (whiteout)", []),
    ]
    assert a["rows"][1]["cause"] == "/hl"
    assert [(r["layer"], r["action"], r["hardlinks"]) for r in b["rows"]] == [
        (1, "added", ["/hl/a"]),
        (2, "modified", []),
        (4, "deleted (whiteout)", []),
    ]
    assert b["rows"][1]["digest"] == sha(b"new b")
    human = run("blame", "story:1", "/hl/a").out.splitlines()
    assert "added [hardlink: /hl/b]" in human[1]
    assert "deleted (whiteout) [/hl whited out]" in human[2]
    # As of layer 3 the view still has both names, no longer linked: see ls/cat for that;
    # blame's view row names partners only when the view still shares the inode.
    assert a["view"] is None


def test_a_hardlink_pair_in_the_view_names_its_partner(tmp_path, cli):
    layout = write_oci_layout(
        tmp_path / "l",
        {"1": ImageBuilder([LayerBuilder().file("a", b"x").hardlink("b", "a").hardlink("c", "a")])},
    )
    assert cli("pull", "-q", f"oci:{layout}:1", "--name", "h:1").rc == 0
    doc = json.loads(cli("blame", "--json", "h:1", "/b").out)
    assert doc["rows"][0]["hardlinks"] == ["/a", "/c"]
    assert doc["view"]["hardlinks"] == ["/a", "/c"] and doc["view"]["nlink"] == 3


def test_written_again_with_the_same_content_is_a_row_that_says_so(story):
    run, _ = story
    doc = blame_json(story, "/same")
    assert [(r["layer"], r["action"], r["same_content"]) for r in doc["rows"]] == [
        (1, "added", False),
        (2, "modified", True),
    ]
    assert doc["rows"][0]["digest"] == doc["rows"][1]["digest"] == sha(b"same")
    assert "modified [same content]" in run("blame", "story:1", "/same").out


def test_directories_metadata_changes_and_implied_directories(story):
    doc = blame_json(story, "/meta")
    assert [(r["layer"], r["action"], r["mode"], r["uid"]) for r in doc["rows"]] == [
        (1, "added", 0o755, 0),
        (2, "modified", 0o700, 5),
    ]
    assert doc["view"]["layer"] == 3  # merge's node comes from the last listing
    # imp/a is implied in layers 1 and 2: it appears once (made by layer 1), marked implied.
    doc = blame_json(story, "/imp/a")
    assert [(r["layer"], r["action"], r["implied"]) for r in doc["rows"]] == [(1, "added", True)]
    assert doc["rows"][0]["mode"] == 0o755 and doc["rows"][0]["mtime"] == "1970-01-01T00:00:00Z"
    # A layer that only writes below a directory is no row of the directory.
    assert rows(story, "/etc") == [(1, "added")]


def test_symlinks_are_blamed_not_followed(story):
    run, _ = story
    doc = blame_json(story, "/lnk")
    assert [(r["layer"], r["action"], r["linkname"]) for r in doc["rows"]] == [
        (1, "added", "etc/f"),
        (3, "modified", "/etc/f"),
    ]
    assert doc["view"]["linkname"] == "/etc/f" and doc["view"]["kind"] == "symlink"
    assert "modified [-> /etc/f]" in run("blame", "story:1", "/lnk").out


def test_devices_show_their_numbers(story):
    run, _ = story
    assert "added [char 1,3]" in run("blame", "story:1", "/null").out


def test_the_root_and_paths_are_normalized(story):
    doc = blame_json(story, "/")
    assert doc["rows"] == []  # no layer has a "./" entry: the root is made up
    assert doc["path"] == "/" and doc["view"]["kind"] == "dir" and doc["view"]["layer"] is None
    assert blame_json(story, "etc/../etc/./f")["path"] == "/etc/f"


def test_a_path_no_layer_has_is_one_line_exit_1(story):
    run, _ = story
    result = run("blame", "story:1", "/nope")
    assert result.rc == 1 and result.out == ""
    assert result.err.startswith("snapshotter: error: image 'story:1': no layer has '/nope'")
    assert len(result.err.splitlines()) == 1


def test_a_history_shorter_than_the_layers_shows_missing(tmp_path, cli):
    img = StoryImage(
        [LayerBuilder().file("f", b"1"), LayerBuilder().file("f", b"2")], history=["ADD f"]
    )
    layout = write_oci_layout(tmp_path / "l", {"1": img})
    assert cli("pull", "-q", f"oci:{layout}:1", "--name", "short:1").rc == 0
    out = cli("blame", "short:1", "/f").out.splitlines()
    assert out[1].endswith("ADD f") and out[2].endswith("(missing)")
    doc = json.loads(cli("blame", "--json", "short:1", "/f").out)
    assert [r["created_by"] for r in doc["rows"]] == ["ADD f", ""]


def test_blame_rows_are_the_tables_cells_as_values(tmp_path, cli, store_root):
    """``blame_rows`` (what the browser shows) on an image with known layers: the action
    with its notes, sizes of files only, 12 hex digits, created_by on one line or
    "(missing)", and the view row."""
    layers = [
        LayerBuilder()
        .dir("d")
        .file("d/f", b"one")
        .file("h1", b"pair")
        .hardlink("h2", "h1")
        .file("gone", b"x")
        .chardev("tty", 4, 1),
        LayerBuilder().file("d/f", b"one"),
        LayerBuilder().whiteout("d").whiteout("gone"),
        LayerBuilder().symlink("d/f", "/h1\x1b[31m"),
    ]
    img = StoryImage(layers, history=["ADD\tbase\n", "RUN same"])  # layers 3, 4: none
    layout = write_oci_layout(tmp_path / "l", {"1": img})
    assert cli("pull", "-q", f"oci:{layout}:1", "--name", "rows:1").rc == 0
    image = open_image(Store(store_root), "rows:1")
    one, pair = sha(b"one")[7:19], sha(b"pair")[7:19]
    assert blame_rows(image, blame(image, "d/f")) == (
        BlameRow("1", "added", 3, one, "ADD base "),
        BlameRow("2", "modified [same content]", 3, one, "RUN same"),
        BlameRow("3", "deleted (whiteout) [/d whited out]", None, "-", "(missing)"),
        BlameRow("4", "added [-> /h1\x1b[31m]", None, "-", "(missing)"),
        BlameRow("view", "from layer 4 [-> /h1\x1b[31m]", None, "-", ""),
    )
    assert blame_rows(image, blame(image, "h2")) == (
        BlameRow("1", "added [hardlink: /h1]", 4, pair, "ADD base "),
        BlameRow("view", "from layer 1 [hardlink: /h1]", 4, pair, ""),
    )
    assert blame_rows(image, blame(image, "gone")) == (
        BlameRow("1", "added", 1, sha(b"x")[7:19], "ADD base "),
        BlameRow("3", "deleted (whiteout)", None, "-", "(missing)"),
        BlameRow("view", "absent", None, "-", ""),
    )
    assert blame_rows(image, blame(image, "tty")) == (
        BlameRow("1", "added [char 4,1]", None, "-", "ADD base "),
        BlameRow("view", "from layer 1", None, "-", ""),
    )
    # The table prints these cells (piped: names as the image has them).
    assert cli("blame", "--bytes", "rows:1", "/d/f").out.splitlines()[5].split() == [
        "view",
        "from",
        "layer",
        "4",
        "[->",
        "/h1\x1b[31m]",
        "-",
        "-",
    ]


def test_created_by_is_one_line_and_never_cut_when_piped(story):
    run, _ = story
    out = run("blame", "story:1", "/hl/b").out
    assert "RUN split && rewrite" in out  # the tab became a space


def test_parent_symlinks_are_followed_in_the_view(tmp_path, cli):
    img = ImageBuilder(
        [
            LayerBuilder().dir("usr/lib").file("usr/lib/x", b"x").symlink("lib", "usr/lib"),
        ]
    )
    layout = write_oci_layout(tmp_path / "l", {"1": img})
    assert cli("pull", "-q", f"oci:{layout}:1", "--name", "s:1").rc == 0
    doc = json.loads(cli("blame", "--json", "s:1", "/lib/x").out)
    assert doc["path"] == "/usr/lib/x" and doc["rows"][0]["action"] == "added"


# -- blame never disagrees with the merged view -----------------------------------------------


def same_state(version: Version | None, node: Node | None, what: str) -> None:
    if node is None:
        assert version is None, f"{what}: blame has {version}, the view has nothing"
        return
    assert version is not None, f"{what}: blame has nothing, the view has {node}"
    got = (
        version.kind,
        version.mode,
        version.uid,
        version.gid,
        version.mtime_ns,
        version.link,
        (version.rdev_major, version.rdev_minor),
        version.xattrs,
        version.layer,
    )
    want = (
        node.kind,
        node.mode,
        node.uid,
        node.gid,
        node.mtime_ns,
        node.link,
        (node.rdev_major, node.rdev_minor),
        node.xattrs,
        node.layer + 1,
    )
    assert got == want, what
    if node.kind is not EntryKind.DIR:
        assert (version.size, version.inode) == (node.size, node.data), what


def every_path(tocs: list[Toc], tree: MergedTree) -> set[str]:
    paths = {p for p, _ in tree.walk()}
    for toc in tocs:
        paths.update(e.path for e in toc.entries)
    return paths


def test_blame_ends_where_the_merged_view_is_for_every_path_of_built_images(story, tmp_path):
    _, root = story
    images = {"story:1": open_image(Store(root), "story:1")}
    from test_fusefs import oracle_layers

    layout = write_oci_layout(tmp_path / "l", {"1": ImageBuilder(oracle_layers())})
    from test_explore_files import run_in

    run = run_in(root)
    assert run("pull", "-q", f"oci:{layout}:1", "--name", "oracle:1").rc == 0
    images["oracle:1"] = open_image(Store(root), "oracle:1")
    checked = 0
    for name, image in images.items():
        tocs = [image.toc(n) for n in range(1, len(image.layers) + 1)]
        for upto in range(len(tocs) + 1):
            tree = image.view(upto).tree
            for path in sorted(every_path(tocs[:upto], tree)):
                found = trace(tocs[:upto], path, image.entry_digest)
                node = tree.resolve(path)
                same_state(found.final, node, f"{name} --layer {upto} {path!r}")
                if node is not None and node.kind is EntryKind.FILE:
                    assert found.final is not None
                    assert found.final.digest == image.node_digest(node)
                checked += 1
    assert checked > 150


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(LAYERS)
def test_blame_ends_where_merge_does_on_random_layer_stacks(layers):
    ref = Reference()
    builders = [build(ref.apply(i, ops)) for i, ops in enumerate(layers)]
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        tocs, _ = unpack_all(Path(tmp), builders)
    tree = merge(tocs)
    for path in sorted(every_path(tocs, tree) | {"a", "a/b", "a/b/c", "b/c", "c"}):
        found = trace(tocs, path, lambda n, e: e.digest)
        same_state(found.final, tree.resolve(path), repr(path))
        # Rows and state agree: each row's version is the state after its layer, and
        # a removal is the only row that leaves nothing.
        for change in found.changes:
            assert (change.version is None) == change.action.removes
        if found.changes:
            # The last row's version is the final state, but for the layer of a directory
            # listed again later with the same metadata (no row; merge takes that layer).
            last, final = found.changes[-1].version, found.final
            if last is not None and final is not None and final.kind is EntryKind.DIR:
                last = replace(last, layer=final.layer)
            assert last == final
        elif path:
            assert found.final is None


def test_a_row_is_made_only_by_a_change():
    # A whiteout of something absent, and an implied directory over a directory, are none.
    from snapshotter.store.toc import TocEntry

    def toc(*entries: TocEntry) -> Toc:
        return Toc("sha256:" + "0" * 64, tuple(sorted(entries, key=lambda e: e.path)))

    root = TocEntry("", EntryKind.DIR, 0o755, 0, 0, 0, 0, 1, flags=2)
    d = TocEntry("d", EntryKind.DIR, 0o750, 0, 0, 0, 5, 2)
    implied = TocEntry("d", EntryKind.DIR, 0o755, 0, 0, 0, 0, 2, flags=2)
    gone = TocEntry("x", EntryKind.WHITEOUT, 0, 0, 0, 0, 0, 0)
    found = trace([toc(root, d), toc(root, implied, gone), toc(root, gone)], "d", lambda n, e: "")
    assert [(c.layer, c.action) for c in found.changes] == [(1, Action.ADDED)]
    assert found.final is not None and found.final.mode == 0o750
    found = trace([toc(root, gone)], "x", lambda n, e: "")
    assert found.changes == () and found.final is None


def test_on_a_terminal_created_by_is_cut_to_fit_unless_no_trunc(tmp_path, cli, store_root):
    from conftest import on_terminal

    long = "RUN apt-get update && apt-get install -y " + " ".join(f"pkg{i}" for i in range(40))
    img = StoryImage([LayerBuilder().file("f", b"1" * 5000)], history=[long])
    layout = write_oci_layout(tmp_path / "l", {"1": img})
    assert cli("pull", "-q", f"oci:{layout}:1", "--name", "long:1").rc == 0
    lines = on_terminal("--root", str(store_root), "blame", "long:1", "/f", columns=70)
    row = lines.splitlines()[1]
    assert row.endswith("…") and len(row) == 70 and row.split()[2] == "5kB"
    lines = on_terminal("--root", str(store_root), "blame", "--no-trunc", "long:1", "/f")
    assert lines.splitlines()[1].endswith("pkg39")
