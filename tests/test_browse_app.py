"""``snapshotter browse`` driven headless with textual's pilot: open an image whose layers are
known by construction, step through layers, toggle views and filters, open files, blame,
export and compare, asserting what the widgets show."""

from __future__ import annotations

import asyncio
import contextlib
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from browse_images import BINARY, MANY, PY_SOURCE, build
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import run_in
from rich.style import Style
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static
from textual.worker import WorkerCancelled

from snapshotter.browse.app import BlameScreen, BrowseApp, ContentScreen, FileTree, PagerView
from snapshotter.browse.model import Status
from snapshotter.explore import blame as blame_mod
from snapshotter.explore.image import StoredImage, open_image
from snapshotter.store.store import Store

Test = Callable[[BrowseApp, Pilot[None]], Awaitable[None]]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[StoredImage, StoredImage]:
    tmp = tmp_path_factory.mktemp("browse-app")
    return build(tmp / "store", tmp)


def run(app: BrowseApp, test: Test, size: tuple[int, int] = (120, 40)) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await settle(app, pilot)
            await test(app, pilot)

    asyncio.run(main())


async def settle(app: BrowseApp, pilot: Pilot[None]) -> None:
    """Let workers finish and the screen catch up (no sleeps: wait for the work itself)."""
    for _ in range(3):
        for worker in list(app.workers):
            with contextlib.suppress(WorkerCancelled):  # replaced by a newer one
                await worker.wait()
        await pilot.pause()


async def press(app: BrowseApp, pilot: Pilot[None], *keys: str) -> None:
    await pilot.press(*keys)
    await settle(app, pilot)


def screen_text(app: BrowseApp) -> list[str]:
    """Every line of the screen as text (what a terminal would show)."""
    strips = app.screen._compositor.render_strips()
    return ["".join(segment.text for segment in strip) for strip in strips]


def tree_lines(tree: FileTree) -> list[str]:
    return [tree.render_line(y).text.rstrip() for y in range(tree.size.height)]


def static_text(app: BrowseApp, selector: str) -> str:
    return str(app.query_one(selector, Static).content)


def row_of(tree: FileTree, path: str) -> int:
    assert tree.rows is not None
    index = tree.rows.index_of(path)
    assert index is not None, path
    return index


async def cursor_to(app: BrowseApp, pilot: Pilot[None], path: str) -> None:
    tree = app.file_tree
    tree.focus()
    tree.move_to(row_of(tree, path))
    await settle(app, pilot)


def colour_of(tree: FileTree, path: str) -> str | None:
    assert tree.rows is not None
    style = tree.row_text(tree.rows.rows[row_of(tree, path)]).style
    assert isinstance(style, Style)
    return style.color.name if style.color is not None else None


# -- panes ----------------------------------------------------------------------------------------


def test_opens_on_layer_one_with_dives_panes(images: tuple[StoredImage, StoredImage]) -> None:
    image, _ = images

    async def test(app: BrowseApp, pilot: Pilot[None]) -> None:
        text = "\n".join(screen_text(app))
        for title in ("Layers", "Layer Details", "Image Details", "Current Layer Contents"):
            assert title in text
        table = app.query_one("#layers", DataTable)
        assert table.row_count == 3
        assert [str(table.get_cell_at((r, 2))) for r in range(3)] == [
            "ADD file:abc in /",
            "apt-get install app↵&& clean",
            "COPY many /many # buildkit",
        ]
        details = static_text(app, "#layer-details")
        assert image.layers[0].digest in details and image.layers[0].diff_id in details
        assert "Image efficiency score:" in static_text(app, "#image-text")
        lines = tree_lines(app.file_tree)
        assert "Permission" in static_text(app, "#tree-header")
        assert [line.split("── ")[-1] for line in lines[:4]] == [
            "▸ bin",
            "▸ etc",
            "▸ many",
            "▸ usr",
        ]
        assert lines[0].startswith("drwxr-xr-x         0:0")
        # Layer 1: everything is added, green.
        assert {colour_of(app.file_tree, p) for p in ("bin", "etc", "many", "usr")} == {"green"}

    run(BrowseApp(image), test)


def test_stepping_through_layers_colours_the_changes(
    images: tuple[StoredImage, StoredImage],
) -> None:
    image, _ = images

    async def test(app: BrowseApp, pilot: Pilot[None]) -> None:
        await press(app, pilot, "down")  # layer 2, from the layers pane
        assert "layer 2" in str(app.query_one("#tree-pane").border_title)
        assert image.layers[1].digest in static_text(app, "#layer-details")
        tree = app.file_tree
        await cursor_to(app, pilot, "etc")
        await press(app, pilot, "space")
        assert colour_of(tree, "etc") == "yellow"  # changes below
        assert colour_of(tree, "etc/conf") == "yellow"
        assert colour_of(tree, "etc/hosts") == "red"  # whited out, still shown
        assert colour_of(tree, "etc/link") == "green"
        assert colour_of(tree, "etc/same") is None  # written again, identical
        assert any(
            line.endswith("etc/link → conf") or line.endswith("link → conf")
            for line in tree_lines(tree)
        )
        # The LAYER column: the layer each shown version comes from.
        line = tree.render_line(row_of(tree, "etc/hosts") - tree.scroll_offset.y).text
        at = static_text(app, "#tree-header").index("Layer")
        assert line[at : at + 5].strip() == "1"
        # Aggregated (from the layers pane): layer 1 against layer 3.
        app.query_one("#layers").focus()
        await press(app, pilot, "down", "ctrl+a")
        assert "Aggregated Layer Contents: layers 1-3" in str(
            app.query_one("#tree-pane").border_title
        )
        await cursor_to(app, pilot, "many")
        await press(app, pilot, "space")
        assert colour_of(tree, "many/only") == "green"
        assert colour_of(tree, "many/f000") == "red"
        assert colour_of(tree, "etc/hosts") == "red"
        app.query_one("#layers").focus()
        await press(app, pilot, "ctrl+l")
        assert "Current Layer Contents: layer 3" in str(app.query_one("#tree-pane").border_title)
        assert row_absent(tree, "etc/hosts")  # gone before layer 3
        assert colour_of(tree, "etc/conf") == "yellow"  # layer 3: v3, mode 0600

    run(BrowseApp(image), test)


def row_absent(tree: FileTree, path: str) -> bool:
    assert tree.rows is not None
    return tree.rows.index_of(path) is None


def test_tree_keys_filter_hide_sort_collapse(images: tuple[StoredImage, StoredImage]) -> None:
    image, _ = images

    async def test(app: BrowseApp, pilot: Pilot[None]) -> None:
        tree = app.file_tree
        await press(app, pilot, "tab")
        assert tree.has_focus
        await press(app, pilot, "ctrl+o")  # sort by size: app (180 kB), usr (50 kB), ...
        assert tree.rows is not None
        assert [r.item.name for r in tree.rows.rows] == ["app", "usr", "many", "bin", "etc"]
        await press(app, pilot, "ctrl+o")
        assert [r.item.name for r in tree.rows.rows] == ["app", "bin", "etc", "many", "usr"]
        # ctrl+f: a path filter, applied on enter.
        await press(app, pilot, "ctrl+f", *"f00[12]$", "enter")
        assert [r.item.path for r in tree.rows.rows] == ["many", "many/f001", "many/f002"]
        assert "filter /f00[12]$/" in str(app.query_one("#tree-pane").border_title)
        await press(app, pilot, "ctrl+f", "escape")
        assert len(tree.rows.rows) == 5
        # ctrl+u hides unmodified paths, ctrl+r removed ones.
        await press(app, pilot, "ctrl+u")
        assert [r.item.path for r in tree.rows.rows] == ["app", "etc"]
        await press(app, pilot, "ctrl+r")
        await cursor_to(app, pilot, "etc")
        await press(app, pilot, "space")
        assert [r.item.path for r in tree.rows.rows] == ["app", "etc", "etc/conf", "etc/link"]
        await press(app, pilot, "ctrl+u", "ctrl+r", "ctrl+a")
        assert "etc/link" not in [r.item.path for r in tree.rows.rows]
        await press(app, pilot, "ctrl+a")
        # ctrl+b: attributes off and on.
        await press(app, pilot, "ctrl+b")
        assert "Permission" not in static_text(app, "#tree-header")
        assert not tree_lines(tree)[0].startswith("d")
        await press(app, pilot, "ctrl+b")
        assert "Permission" in static_text(app, "#tree-header")
        # ctrl+space collapses everything.
        await press(app, pilot, "ctrl+@")
        assert len(tree.rows.rows) == 5 and not tree.rows.expanded

    run(BrowseApp(image, layer=2), test)


# -- contents, blame, export ----------------------------------------------------------------------


def test_enter_opens_text_paged_and_binary_as_hex(images: tuple[StoredImage, StoredImage]) -> None:
    image, _ = images

    async def test(app: BrowseApp, pilot: Pilot[None]) -> None:
        await cursor_to(app, pilot, "app")
        await press(app, pilot, "space")
        await cursor_to(app, pilot, "app/main.py")
        await press(app, pilot, "enter")
        screen = app.screen
        assert isinstance(screen, ContentScreen)
        pager = screen.query_one(PagerView)
        first = [pager.render_line(y).text.rstrip() for y in range(3)]
        assert first == ["def f0(x):", "    return x + 0  # line 0", "def f1(x):"]
        # Coloured as Python: a keyword has its own style.
        assert any(s.style and s.style.color for s in pager.render_line(0) if s.text == "def")
        # Only what was shown was read: 2 * 5000 lines, about 180 kB, in 64 KiB blocks.
        assert not pager.pages.complete and pager.pages.reads == 1
        await press(app, pilot, "end")
        last = pager.render_line(pager.size.height - 1).text.rstrip()
        assert last == "    return x + 4999  # line 4999"
        assert pager.pages.complete
        await press(app, pilot, "q")
        assert not isinstance(app.screen, ContentScreen)
        await cursor_to(app, pilot, "bin")
        await press(app, pilot, "space")
        await cursor_to(app, pilot, "bin/tool")
        await press(app, pilot, "enter")
        pager = app.screen.query_one(PagerView)
        assert pager.pages.binary and pager.virtual_size.height == -(-len(BINARY) // 16)
        assert pager.render_line(0).text.startswith("00000000: 0001 0203")
        assert "binary, hex dump" in str(app.screen.query_one("#content-title", Static).content)
        await press(app, pilot, "end")  # the last row, without reading the file through
        last = pager.render_line(pager.size.height - 1).text
        assert last.startswith(f"{(len(BINARY) - 1) // 16 * 16:08x}: ") and "tail" in last
        assert pager.pages.reads <= 2 and pager.pages.lines_known == 1
        await press(app, pilot, "escape")

    run(BrowseApp(image, layer=2), test)


def test_blame_shows_what_the_command_shows(images: tuple[StoredImage, StoredImage]) -> None:
    image, _ = images

    async def test(app: BrowseApp, pilot: Pilot[None]) -> None:
        await cursor_to(app, pilot, "etc")
        await press(app, pilot, "space")
        await cursor_to(app, pilot, "etc/conf")
        await press(app, pilot, "b")
        screen = app.screen
        assert isinstance(screen, BlameScreen)
        table = screen.query_one("#blame-table", DataTable)
        shown = [[str(table.get_cell_at((r, c))) for c in range(5)] for r in range(table.row_count)]
        rows = blame_mod.blame_rows(image, blame_mod.blame(image, "etc/conf"))
        assert [r[0] for r in shown] == ["1", "2", "3", "view"] == [r.layer for r in rows]
        assert [r[1] for r in shown] == [r.action for r in rows]
        assert [r[3] for r in shown] == [r.digest for r in rows]
        assert shown[1][4] == "/bin/sh -c apt-get install app&& clean" or "apt-get" in shown[1][4]
        await press(app, pilot, "escape")
        assert not isinstance(app.screen, BlameScreen)

    run(BrowseApp(image, layer=3), test)


def test_export_writes_a_file_and_a_directory(
    images: tuple[StoredImage, StoredImage], tmp_path: Path
) -> None:
    image, _ = images

    async def test(app: BrowseApp, pilot: Pilot[None]) -> None:
        await cursor_to(app, pilot, "app")
        await press(app, pilot, "space")
        await cursor_to(app, pilot, "app/main.py")
        await press(app, pilot, "e")
        box = app.screen.query_one("#export-path", Input)
        assert box.value == str(tmp_path / "main.py")
        await press(app, pilot, "enter")
        assert (tmp_path / "main.py").read_bytes() == PY_SOURCE
        await cursor_to(app, pilot, "app")
        await press(app, pilot, "e", "enter")
        with tarfile.open(tmp_path / "app.tar") as tar:
            assert tar.getnames() == ["app", "app/main.py"]
            member = tar.extractfile("app/main.py")
            assert member is not None and member.read() == PY_SOURCE
        # escape cancels: nothing written.
        await cursor_to(app, pilot, "many")
        await press(app, pilot, "e", "escape")
        assert not (tmp_path / "many.tar").exists()

    run(BrowseApp(image, layer=2, export_dir=tmp_path), test)


# -- compare, small terminals, no colour ----------------------------------------------------------


def test_compare_colours_by_the_other_image(images: tuple[StoredImage, StoredImage]) -> None:
    image, other = images

    async def test(app: BrowseApp, pilot: Pilot[None]) -> None:
        title = str(app.query_one("#tree-pane").border_title)
        assert title.startswith("Compared: browse:1 → browse:other")
        tree = app.file_tree
        assert colour_of(tree, "new") == "green"
        assert colour_of(tree, "usr") == "red"
        assert colour_of(tree, "app") == "red"
        assert colour_of(tree, "bin") is None
        await cursor_to(app, pilot, "etc")
        await press(app, pilot, "space")
        assert colour_of(tree, "etc/hosts") == "green"  # IMAGE deleted it, OTHER has it
        assert colour_of(tree, "etc/conf") == "yellow"
        # ctrl+l goes to the layer view, c back to the comparison.
        await press(app, pilot, "ctrl+l")
        assert "Current Layer Contents" in str(app.query_one("#tree-pane").border_title)
        await press(app, pilot, "c")
        assert colour_of(tree, "new") == "green"
        # Choosing a layer leaves the comparison for that layer's changes.
        app.query_one("#layers").focus()
        await press(app, pilot, "down")
        assert "Current Layer Contents: layer 2" in str(app.query_one("#tree-pane").border_title)
        assert colour_of(tree, "app") == "green"

    run(BrowseApp(image, other=other), test)


def test_small_terminal_without_colour(
    images: tuple[StoredImage, StoredImage], monkeypatch: pytest.MonkeyPatch
) -> None:
    image, _ = images
    monkeypatch.setenv("NO_COLOR", "1")

    async def test(app: BrowseApp, pilot: Pilot[None]) -> None:
        assert app.no_color
        text = screen_text(app)
        assert len(text) == 24 and all(len(line) == 80 for line in text)
        joined = "\n".join(text)
        for title in ("Layers", "Layer Details", "Image Details", "Current Layer Contents"):
            assert title in joined
        # Without colour the statuses are marked before the names.
        tree = app.file_tree
        await cursor_to(app, pilot, "etc")
        await press(app, pilot, "space")
        lines = tree_lines(tree)
        assert any(line.endswith("- hosts") for line in lines)
        assert any("~ conf" in line for line in lines)
        assert any("+ link → conf" in line for line in lines)
        # 80 columns: the owner and mode columns start hidden (ctrl+b shows them).
        assert "Permission" not in static_text(app, "#tree-header")
        # What does not fit scrolls sideways (shift+→), the cursor's row included.
        await press(app, pilot, "ctrl+b")
        assert tree.virtual_size.width > tree.size.width
        before = tree_lines(tree)
        await press(app, pilot, "shift+right")
        assert tree.scroll_offset.x == 8
        assert tree_lines(tree)[0].startswith(before[0][8:].rstrip())
        await press(app, pilot, "shift+left")
        assert tree.scroll_offset.x == 0

    run(BrowseApp(image, layer=2), test, size=(80, 24))


def test_a_big_directory_expands_to_rows_not_widgets(
    images: tuple[StoredImage, StoredImage],
) -> None:
    image, _ = images

    async def test(app: BrowseApp, pilot: Pilot[None]) -> None:
        tree = app.file_tree
        assert tree.rows is not None and len(tree.rows.rows) == 4
        await cursor_to(app, pilot, "many")
        await press(app, pilot, "space")
        assert len(tree.rows.rows) == 4 + MANY
        assert tree.virtual_size.height == 4 + MANY
        assert not tree.children  # lines drawn from rows: no widget per entry
        await press(app, pilot, "end")
        assert tree.item is not None and tree.item.path == "usr"
        assert tree.scroll_offset.y > 0

    run(BrowseApp(image), test)


def test_statuses_on_screen_match_the_model(images: tuple[StoredImage, StoredImage]) -> None:
    """Every row's colour is its status's (dive's palette)."""
    image, _ = images
    colours = {Status.ADDED: "green", Status.REMOVED: "red", Status.MODIFIED: "yellow"}

    async def test(app: BrowseApp, pilot: Pilot[None]) -> None:
        tree = app.file_tree
        assert tree.rows is not None
        index = 0
        while index < len(tree.rows.rows):  # open every directory, with the keys
            row = tree.rows.rows[index]
            if row.item.is_dir and not row.expanded:
                await cursor_to(app, pilot, row.item.path)
                await press(app, pilot, "right")
            index += 1
        seen = set()
        for row in tree.rows.rows:
            seen.add(row.item.status)
            assert colour_of(tree, row.item.path) == colours.get(row.item.status)
        assert seen == set(Status)

    run(BrowseApp(image, layer=3), test)


def test_keys_typed_into_inputs_stay_there(
    images: tuple[StoredImage, StoredImage], tmp_path: Path
) -> None:
    """q, b, e and c are keys of the app, and letters of a filter or a file name."""
    image, _ = images

    async def test(app: BrowseApp, pilot: Pilot[None]) -> None:
        tree = app.file_tree
        await press(app, pilot, "tab", "ctrl+f", *"q|only", "enter")
        assert app.is_running
        assert tree.rows is not None
        assert [r.item.path for r in tree.rows.rows] == ["many", "many/only"]
        await cursor_to(app, pilot, "many/only")
        await press(app, pilot, "e", "ctrl+u", *str(tmp_path / "q-b-e-c.txt"), "enter")
        assert app.is_running
        assert (tmp_path / "q-b-e-c.txt").read_bytes() == b"the one file left"

    run(BrowseApp(image, layer=3, export_dir=tmp_path), test)


def test_sorted_by_size_from_the_start(images: tuple[StoredImage, StoredImage]) -> None:
    image, _ = images

    async def test(app: BrowseApp, pilot: Pilot[None]) -> None:
        rows = app.file_tree.rows
        assert rows is not None and rows.sort_by_size
        assert [r.item.name for r in rows.rows] == ["usr", "many", "bin", "etc"]
        assert "by size" in str(app.query_one("#tree-pane").border_title)

    run(BrowseApp(image, sort_by_size=True), test)


def test_names_cannot_drive_the_terminal(tmp_path: Path) -> None:
    """A name with escape sequences shows them as \\xNN, in the tree and in the title."""
    layer = LayerBuilder().dir("d").file("d/evil\x1b]0;pwned\x07\x1b[2J", b"x")
    layer.symlink("d/link", "\x1b[31mred")
    image = ImageBuilder([layer], history=[{"created_by": "RUN \x1b[2J clear"}])
    write_oci_layout(tmp_path / "layout", {"t": image})
    cli = run_in(tmp_path / "store")
    assert cli("pull", "-q", f"oci:{tmp_path / 'layout'}:t", "--name", "evil:1").rc == 0
    stored = open_image(Store(tmp_path / "store"), "evil:1")

    async def test(app: BrowseApp, pilot: Pilot[None]) -> None:
        await cursor_to(app, pilot, "d")
        await press(app, pilot, "space")
        lines = "\n".join(tree_lines(app.file_tree))
        assert "evil\\x1b]0;pwned\\x07" in lines  # (cut at the pane's width)
        assert "link → \\x1b[31mred" in lines
        assert "\x1b" not in lines and "\x07" not in lines
        table = app.query_one("#layers", DataTable)
        assert str(table.get_cell_at((0, 2))) == "RUN \\x1b[2J clear"

    run(BrowseApp(stored), test)


def test_ctrl_c_and_q_quit(images: tuple[StoredImage, StoredImage]) -> None:
    image, _ = images
    for key, focus in (("ctrl+c", "#tree"), ("ctrl+c", "#layers"), ("q", "#tree")):

        async def test(
            app: BrowseApp, pilot: Pilot[None], key: str = key, focus: str = focus
        ) -> None:
            app.query_one(focus).focus()
            await press(app, pilot, key)
            assert not app.is_running

        run(BrowseApp(image), test)
