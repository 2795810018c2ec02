"""``snapshotter browse``: dive's screen, drawn with textual over ``browse.model``.

Left, the **Layers** pane (``Cmp  Size  Command``), the **Layer Details** and the **Image
Details** (dive's efficiency and inefficient files, from ``explore.wasted``); right, the
file tree (``Permission  UID:GID  Size  Layer  Filetree``).  Keys are dive's (the footer
names them); beyond dive: ``enter`` opens a file's contents, ``b`` its blame, ``e`` writes
it out, and ``--compare OTHER`` colours the tree by another image.

Everything slow runs in a worker thread (a layer's comparison, the waste analysis), so the
screen opens at once and keys never wait on the store; the tree is drawn a line at a time
from ``TreeRows`` (textual's line API), so a directory of 10k entries costs 10k small rows,
not 10k widgets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.syntax import Syntax
from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.geometry import Size
from textual.message import Message
from textual.screen import ModalScreen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import DataTable, Footer, Input, Static
from textual.worker import get_current_worker

from ..errors import SnapshotterError
from ..explore import blame as blame_mod
from ..explore import files as files_mod
from ..explore.export import atomic_output, write_tar
from ..explore.image import StoredImage, display_path
from ..explore.wasted import WasteReport, analyze, go_fixed, humanize_bytes
from ..store.toc import EntryKind
from ..text import mode_string, shown
from .model import (
    Comparison,
    Item,
    LayerRow,
    Mode,
    Pages,
    Row,
    Status,
    TreeRows,
    aggregated_comparison,
    compare_bar,
    image_comparison,
    layer_comparison,
    layer_rows,
)

# dive's colours (filetree/file_node.go): added green, removed red, modified yellow.
STATUS_STYLE = {
    Status.ADDED: Style(color="green"),
    Status.REMOVED: Style(color="red"),
    Status.MODIFIED: Style(color="yellow"),
    Status.UNMODIFIED: Style(),
}
_LOWER_BAR = Text("░░", style="black on green")  # dive's CompareBottom
_UPPER_BAR = Text("██", style="magenta")  # dive's CompareTop
_WIDE = 100  # from this many columns the tree shows every attribute by default


def _name(text: str) -> str:
    """A name from an image as the screen shows it: control characters and undecodable
    bytes as ``\\xNN``, so no image drives the terminal."""
    return shown(text, True)


def _line(widget: ScrollView, text: Text, scroll_x: int, width: int) -> Strip:
    """One line of a line-API widget: ``text`` over the widget's own style (so that every
    segment has a style, as textual's filters want), cropped to what is in view."""
    base = widget.rich_style
    segments = Segment.apply_style(text.render(widget.app.console, end=""), base)
    strip = Strip(list(segments)).crop(scroll_x, scroll_x + width)
    return strip.extend_cell_length(width, base)


# -- the file tree ---------------------------------------------------------------------------


class FileTree(ScrollView, can_focus=True):
    """The tree pane: one line per ``Row``, drawn on demand."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup,u", "page(-1)", "Page up", show=False),
        Binding("pagedown,d", "page(1)", "Page down", show=False),
        Binding("home", "cursor_to(0)", show=False),
        Binding("end", "cursor_to(-1)", show=False),
        Binding("space", "toggle_dir", "Collapse dir"),
        Binding("ctrl+space,ctrl+@", "collapse_all", "Collapse all"),
        Binding("right,l", "expand", show=False),
        Binding("left,h", "collapse", show=False),
        Binding("shift+right", "scroll_sideways(8)", show=False),
        Binding("shift+left", "scroll_sideways(-8)", show=False),
        Binding("enter", "open", "Contents"),
        Binding("b", "blame", "Blame"),
        Binding("e", "export", "Export"),
        Binding("ctrl+a", "toggle_status('ADDED')", "Added"),
        Binding("ctrl+r", "toggle_status('REMOVED')", "Removed"),
        Binding("ctrl+m,M", "toggle_status('MODIFIED')", "Modified", show=False),
        Binding("ctrl+u", "toggle_status('UNMODIFIED')", "Unmodified"),
        Binding("ctrl+b", "attributes", "Attributes"),
        Binding("ctrl+o", "sort", "Sort by size"),
    ]

    class Selected(Message):
        """The cursor moved to another row."""

        def __init__(self, item: Item | None) -> None:
            super().__init__()
            self.item = item

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.rows: TreeRows | None = None
        self.cursor = 0
        self.attributes: bool | None = None  # None: by the width
        self.marks = False  # status marks before names (when there is no colour)

    # -- content -------------------------------------------------------------------------

    def show(self, rows: TreeRows, keep_path: str | None = None) -> None:
        self.rows = rows
        index = rows.index_of(keep_path) if keep_path else None
        self.cursor = index if index is not None else 0
        self._resized()
        self._follow_cursor()
        self.post_message(self.Selected(self.item))

    @property
    def item(self) -> Item | None:
        if self.rows is None or not self.rows.rows:
            return None
        return self.rows.rows[min(self.cursor, len(self.rows.rows) - 1)].item

    def _resized(self) -> None:
        rows = self.rows.rows if self.rows is not None else []
        self.virtual_size = Size(max(self.size.width, self._content_width(rows)), len(rows))
        self.refresh()

    def _content_width(self, rows: list[Row]) -> int:
        """About the widest row (``shift+→`` scrolls to see it): the columns, the tree
        lines and the name, without drawing a row."""
        widest = 0
        for row in rows:
            width = 4 * row.depth + len(row.item.name)
            if row.item.stat.kind is EntryKind.SYMLINK:
                width += 3 + row.item.stat.size  # " → " and the target
            widest = max(widest, width)
        return len(self.header()) - len("Filetree") + 8 + widest

    def show_attributes(self) -> bool:
        if self.attributes is None:
            return self.app.size.width >= _WIDE
        return self.attributes

    def header(self) -> str:
        head = f"{'Size':>8} {'Layer':>5}  Filetree"
        if self.show_attributes():
            head = f"{'Permission':<10} {'UID:GID':>11} " + head
        return head

    def row_text(self, row: Row) -> Text:
        item = row.item
        st = item.stat
        size = humanize_bytes(item.size) if item.is_dir or st.kind is EntryKind.FILE else ""
        layer = str(item.layer) if item.layer > 0 else ""
        line = f"{size:>8} {layer:>5}  "
        if self.show_attributes():
            owner = f"{st.uid}:{st.gid}"
            line = f"{mode_string(st.kind, st.mode)} {owner:>11} " + line
        line += row.guides + ("└── " if row.last else "├── ")
        if self.marks:
            line += item.status.value + " "
        if item.is_dir:
            line += ("▾ " if row.expanded else "▸ ") + _name(item.name)
        else:
            line += _name(item.name)
            if st.kind is EntryKind.SYMLINK:
                line += " → " + _name(item.link)
        return Text(line, style=STATUS_STYLE[item.status])

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.size.width
        if self.rows is None or index >= len(self.rows.rows):
            return Strip.blank(width, self.rich_style)
        text = self.row_text(self.rows.rows[index])
        if index == self.cursor:
            text.stylize(Style(reverse=True) if self.has_focus else Style(underline=True))
        return _line(self, text, scroll_x, width)

    def on_resize(self) -> None:
        self._resized()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # -- cursor --------------------------------------------------------------------------

    def _follow_cursor(self) -> None:
        height = max(self.size.height, 1)
        top = self.scroll_offset.y
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False, immediate=True)

    def move_to(self, index: int) -> None:
        if self.rows is None or not self.rows.rows:
            return
        index = max(0, min(index, len(self.rows.rows) - 1))
        if index != self.cursor:
            self.cursor = index
            self._follow_cursor()
            self.refresh()
            self.post_message(self.Selected(self.item))

    def action_cursor(self, delta: int) -> None:
        self.move_to(self.cursor + delta)

    def action_scroll_sideways(self, columns: int) -> None:
        self.scroll_to(x=self.scroll_offset.x + columns, animate=False, immediate=True)

    def action_page(self, direction: int) -> None:
        self.move_to(self.cursor + direction * max(self.size.height - 1, 1))

    def action_cursor_to(self, index: int) -> None:
        self.move_to(index if index >= 0 else len(self.rows.rows) - 1 if self.rows else 0)

    # -- what the keys do ----------------------------------------------------------------

    def _changed(self) -> None:
        self._resized()
        self._follow_cursor()

    def action_toggle_dir(self) -> None:
        if self.rows is not None and self.rows.rows:
            self.rows.toggle(self.cursor)
            self._changed()

    def action_expand(self) -> None:
        if self.rows is not None and self.rows.rows:
            self.rows.expand(self.cursor)
            self._changed()

    def action_collapse(self) -> None:
        if self.rows is None or not self.rows.rows:
            return
        row = self.rows.rows[self.cursor]
        if row.expanded:
            self.rows.collapse(self.cursor)
        else:
            parent = self.rows.parent_index(self.cursor)
            if parent is not None:
                self.cursor = parent
                self.rows.collapse(parent)
        self._changed()
        self.post_message(self.Selected(self.item))

    def action_collapse_all(self) -> None:
        if self.rows is not None:
            self.rows.collapse_all()
            self.cursor = 0
            self._changed()
            self.post_message(self.Selected(self.item))

    def _reshape(self, change: Callable[[TreeRows], None]) -> None:
        """Apply a change of what is shown, keeping the cursor on its path if it stays."""
        if self.rows is None:
            return
        path = self.item.path if self.item is not None else None
        change(self.rows)
        self.rows.rebuild()
        self.show(self.rows, path)

    def action_toggle_status(self, name: str) -> None:
        status = Status[name]
        self._reshape(lambda r: r.hidden.symmetric_difference_update({status}))
        app = self.app
        if isinstance(app, BrowseApp):
            app.update_tree_title()

    def action_sort(self) -> None:
        def flip(rows: TreeRows) -> None:
            rows.sort_by_size = not rows.sort_by_size

        self._reshape(flip)
        app = self.app
        if isinstance(app, BrowseApp):
            app.update_tree_title()

    def action_attributes(self) -> None:
        self.attributes = not self.show_attributes()
        app = self.app
        if isinstance(app, BrowseApp):
            app.update_tree_header()
        self._resized()

    def action_open(self) -> None:
        app = self.app
        if isinstance(app, BrowseApp) and self.item is not None:
            app.open_item(self.item)

    def action_blame(self) -> None:
        app = self.app
        if isinstance(app, BrowseApp) and self.item is not None:
            app.show_blame(self.item)

    def action_export(self) -> None:
        app = self.app
        if isinstance(app, BrowseApp) and self.item is not None:
            app.ask_export(self.item)


# -- the layers pane ---------------------------------------------------------------------------


class LayersTable(DataTable[Text]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+l", "mode('LAYER')", "Layer changes"),
        Binding("ctrl+a", "mode('AGGREGATED')", "Aggregated changes"),
        Binding("k", "cursor_up", show=False),
        Binding("j", "cursor_down", show=False),
    ]

    def action_mode(self, name: str) -> None:
        app = self.app
        if isinstance(app, BrowseApp):
            app.set_mode(Mode[name])


# -- file contents -----------------------------------------------------------------------------


class PagerView(ScrollView, can_focus=True):
    """A file's content, drawn a line at a time from ``Pages``: text with syntax colour,
    binary as a hex dump; only the lines on screen are read."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "scroll_down", show=False),
        Binding("k", "scroll_up", show=False),
        Binding("space,d", "page_down", show=False),
        Binding("u", "page_up", show=False),
        Binding("g", "scroll_home", show=False),
        Binding("end,G", "to_end", "End", show=False),
    ]

    _CHUNK = 64  # lines coloured together

    def __init__(self, pages: Pages, path: str, colour: bool) -> None:
        super().__init__()
        self.pages = pages
        self.path = path
        self.colour = colour and not pages.binary
        self._lexer: str | None = None
        self._chunks: dict[int, list[Text]] = {}
        self._grow()

    def _grow(self, upto: int = 0) -> None:
        """Know the lines down to ``upto`` and a screen more: the scrollbar grows as the
        file is read, as ``less`` finds its length."""
        pages = self.pages
        if pages.binary:
            rows = pages.hex_rows
        else:
            pages.find_lines(upto + max(self.size.height, 24) * 2)
            rows = pages.lines_known + (0 if pages.complete else 1)
        if rows != self.virtual_size.height:
            self.virtual_size = Size(self.size.width, rows)

    def _coloured(self, index: int) -> Text:
        number = index // self._CHUNK
        chunk = self._chunks.get(number)
        if chunk is None:
            first = number * self._CHUNK
            lines = [self.pages.line(i) for i in range(first, first + self._CHUNK)]
            code = "\n".join(lines)
            if self._lexer is None:
                self._lexer = Syntax.guess_lexer(self.path, code)
            syntax = Syntax(code, self._lexer, theme="ansi_dark", word_wrap=False)
            chunk = list(syntax.highlight(code).split("\n"))
            if len(self._chunks) > 32:
                self._chunks.clear()
            self._chunks[number] = chunk
        inner = index - number * self._CHUNK
        return chunk[inner] if inner < len(chunk) else Text("")

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.size.width
        pages = self.pages
        if index >= self.virtual_size.height:
            return Strip.blank(width, self.rich_style)
        if pages.binary:
            text = Text(pages.hex_row(index))
        elif self.colour:
            text = self._coloured(index).copy()
        else:
            text = Text(_name(pages.line(index)))
        return _line(self, text, scroll_x, width)

    def action_to_end(self) -> None:
        """To the last line, as ``less``'s G: every line is found first (the file is
        read through, a block at a time, and not kept)."""
        if not self.pages.binary:  # (a hex dump knows its rows)
            self.pages.find_lines(self.pages.size)
            self._grow(self.pages.lines_known)
        self.scroll_end(animate=False, immediate=True)

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self._grow(int(new) + self.size.height)

    def on_resize(self) -> None:
        self._grow(int(self.scroll_offset.y) + self.size.height)


class ContentScreen(ModalScreen[None]):
    """``enter`` on a file: its content, paged; ``q`` or ``escape`` closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "dismiss", "Close"),
    ]

    def __init__(self, title: str, pages: Pages, path: str, colour: bool) -> None:
        super().__init__()
        self.title_text = title
        self.pages = pages
        self.view = PagerView(pages, path, colour)
        self.view.id = "pager"

    def compose(self) -> ComposeResult:
        with Vertical(id="content"):
            yield Static(self.title_text, id="content-title")
            yield self.view
        yield Footer()

    def on_mount(self) -> None:
        self.view.focus()

    def on_unmount(self) -> None:
        self.pages.close()


class BlameScreen(ModalScreen[None]):
    """``b``: every layer that changed the selected path, as ``snapshotter blame``."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,b", "dismiss", "Close")]

    def __init__(self, title: str, rows: tuple[blame_mod.BlameRow, ...]) -> None:
        super().__init__()
        self.title_text = title
        self.rows = rows

    def compose(self) -> ComposeResult:
        with Vertical(id="blame"):
            yield Static(self.title_text, id="blame-title")
            table: DataTable[str] = DataTable(id="blame-table", cursor_type="row")
            table.add_columns("LAYER", "ACTION", "SIZE", "DIGEST", "CREATED BY")
            for row in self.rows:
                table.add_row(
                    row.layer,
                    _name(row.action),
                    humanize_bytes(row.size) if row.size is not None else "-",
                    row.digest,
                    _name(row.created_by),
                )
            yield table
        yield Footer()


class ExportScreen(ModalScreen[str | None]):
    """``e``: where to write the selected path (a file's bytes, else a tar)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss", "Cancel")]

    def __init__(self, what: str, default: str) -> None:
        super().__init__()
        self.what = what
        self.default = default

    def compose(self) -> ComposeResult:
        with Vertical(id="export"):
            yield Static(f"Write {self.what} to (enter writes, escape cancels):")
            yield Input(value=self.default, id="export-path")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)


# -- the app ---------------------------------------------------------------------------------


class BrowseApp(App[None]):
    """The whole screen."""

    TITLE = "snapshotter browse"
    CSS = """
    Screen { layout: horizontal; }
    #left { width: 40%; min-width: 34; }
    #layers, #layer-details, #image-details, #tree-pane {
        border: round $secondary; border-title-color: $text;
    }
    #layers:focus-within, #tree-pane:focus-within { border: round $accent; }
    #layers { height: 1fr; min-height: 4; }
    #layer-details { height: 6; text-wrap: nowrap; text-overflow: ellipsis; }
    #image-text { text-wrap: nowrap; text-overflow: ellipsis; }
    #image-details { height: 1fr; min-height: 4; }
    #tree-pane { width: 1fr; }
    #tree-header { height: 1; text-style: bold; }
    #tree { height: 1fr; }
    #filter { dock: bottom; display: none; }
    #filter.shown { display: block; }
    #filter.bad { border: tall $error; }
    ContentScreen, BlameScreen, ExportScreen { align: center middle; }
    #content { width: 100%; height: 100%; border: round $accent; }
    #content-title, #blame-title { height: auto; text-style: bold; }
    #pager { height: 1fr; }
    #blame { width: 95%; height: 80%; border: round $accent; background: $surface; }
    #export { width: 80%; height: auto; border: round $accent; background: $surface; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("tab", "switch_pane", "Switch pane", priority=True),
        Binding("ctrl+f,ctrl+slash,ctrl+underscore", "filter", "Filter"),
        Binding("ctrl+l", "mode('LAYER')", "Layer changes", show=False),
        Binding("c", "mode('COMPARE')", "Compare", show=False),
    ]

    def __init__(
        self,
        image: StoredImage,
        *,
        layer: int | None = None,
        other: StoredImage | None = None,
        sort_by_size: bool = False,
        export_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.image = image
        self.other = other
        self.layers: tuple[LayerRow, ...] = layer_rows(image)
        self.selected = layer if layer is not None else (1 if self.layers else 0)
        self.mode = Mode.COMPARE if other is not None else Mode.LAYER
        self.sort_by_size = sort_by_size
        self.export_dir = export_dir or Path.cwd()
        self.comparisons: dict[tuple[Mode, int], Comparison] = {}
        self.pending: tuple[Mode, int] | None = None
        self.report: WasteReport | None = None
        self.file_tree = FileTree(id="tree")

    # -- layout ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Vertical(id="left"):
            table = LayersTable(id="layers", cursor_type="row", zebra_stripes=False)
            table.border_title = "Layers"
            yield table
            details = Static(id="layer-details")
            details.border_title = "Layer Details"
            yield details
            image = VerticalScroll(Static(id="image-text"), id="image-details")
            image.border_title = "Image Details"
            yield image
        with Vertical(id="tree-pane"):
            yield Static(id="tree-header")
            yield self.file_tree
            yield Input(
                placeholder="path filter (regex); enter applies, escape clears", id="filter"
            )
        yield Footer()

    def on_mount(self) -> None:
        self.file_tree.marks = self.no_color
        table = self.query_one(LayersTable)
        table.add_column("Cmp", key="cmp")
        table.add_column("Size", key="size")
        table.add_column("Command", key="command")
        for row in self.layers:
            table.add_row(
                self._bar(row.number),
                Text(humanize_bytes(row.size), justify="right"),
                Text(_name(row.command)),
                key=str(row.number),
            )
        if self.layers:
            table.move_cursor(row=self.selected - 1)
        self.query_one("#image-text", Static).update(self._image_text())
        self.analyze()
        self.update_tree_header()
        if self.layers or self.other is not None:
            self.load_tree()
        (self.file_tree if self.other is not None or not self.layers else table).focus()

    def _bar(self, number: int) -> Text:
        side = compare_bar(self.mode, self.selected, number)
        if side == "lower":
            return _LOWER_BAR
        return _UPPER_BAR if side == "upper" else Text("  ")

    def _refresh_bars(self) -> None:
        table = self.query_one(LayersTable)
        for row in self.layers:
            table.update_cell(str(row.number), "cmp", self._bar(row.number))

    # -- the layer and the mode ------------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table is not self.query_one(LayersTable) or event.row_key.value is None:
            return
        number = int(event.row_key.value)
        self._layer_details(number)
        if number != self.selected:
            self.selected = number
            if self.mode is Mode.COMPARE:
                self.mode = Mode.LAYER
            self._refresh_bars()
            self.load_tree()

    def _layer_details(self, number: int) -> None:
        row = self.layers[number - 1]
        text = Text()
        for label, value in (
            ("Digest:  ", row.digest),
            ("DiffID:  ", row.diff_id),
            ("Size:    ", f"{humanize_bytes(row.size)} (blob {humanize_bytes(row.blob_size)})"),
            ("Command: ", _name(row.command)),
        ):
            text.append(label, style="bold")
            text.append(value + "\n")
        text.rstrip()
        details = self.query_one("#layer-details", Static)
        details.border_title = f"Layer Details: layer {number} of {len(self.layers)}"
        details.update(text)

    def set_mode(self, mode: Mode) -> None:
        if mode is Mode.COMPARE and self.other is None:
            self.notify("no --compare image given", severity="warning")
            return
        if mode is not self.mode:
            self.mode = mode
            self._refresh_bars()
            self.load_tree()

    def action_mode(self, name: str) -> None:
        self.set_mode(Mode[name])

    def _key(self) -> tuple[Mode, int]:
        return (self.mode, 0 if self.mode is Mode.COMPARE else self.selected)

    def load_tree(self) -> None:
        key = self._key()
        comparison = self.comparisons.get(key)
        if comparison is not None:
            self.pending = None
            self.show_comparison(key, comparison)
            return
        self.pending = key
        self.update_tree_title()
        self.compare(key)

    @work(thread=True, exclusive=True, group="compare")
    def compare(self, key: tuple[Mode, int]) -> None:
        mode, number = key
        try:
            if mode is Mode.COMPARE:
                assert self.other is not None
                comparison = image_comparison(self.image, self.other)
            elif mode is Mode.AGGREGATED:
                comparison = aggregated_comparison(self.image, number)
            else:
                comparison = layer_comparison(self.image, number)
        except SnapshotterError as exc:
            self.call_from_thread(self.notify, f"error: {exc}", severity="error")
            return
        if not get_current_worker().is_cancelled:
            self.call_from_thread(self.show_comparison, key, comparison)

    def show_comparison(self, key: tuple[Mode, int], comparison: Comparison) -> None:
        self.comparisons[key] = comparison
        if key != self._key():
            return  # the user moved on meanwhile
        self.pending = None
        old = self.file_tree.rows
        keep = self.file_tree.item.path if self.file_tree.item is not None else None
        if old is None:
            rows = TreeRows(comparison, sort_by_size=self.sort_by_size)
        else:
            rows = TreeRows(
                comparison,
                expanded=old.expanded,
                sort_by_size=old.sort_by_size,
                hidden=old.hidden,
                pattern=old.pattern,
            )
        self.file_tree.show(rows, keep)
        self.update_tree_title()

    def update_tree_title(self) -> None:
        pane = self.query_one("#tree-pane")
        if self.mode is Mode.COMPARE:
            assert self.other is not None
            title = f"Compared: {self.image.label} → {self.other.label}"
        elif self.mode is Mode.AGGREGATED:
            title = f"Aggregated Layer Contents: layers 1-{self.selected}"
        else:
            title = f"Current Layer Contents: layer {self.selected}"
        rows = self.file_tree.rows
        notes = []
        if self.pending is not None:
            notes.append("comparing…")
        if rows is not None:
            if rows.sort_by_size:
                notes.append("by size")
            hidden = [s.name.lower() for s in Status if s in rows.hidden]
            if hidden:
                notes.append("hiding " + ", ".join(hidden))
            if rows.pattern is not None:
                notes.append(f"filter /{rows.pattern.pattern}/")
        pane.border_title = _name(title) + (f" ({'; '.join(notes)})" if notes else "")

    def update_tree_header(self) -> None:
        self.query_one("#tree-header", Static).update(self.file_tree.header())

    def on_resize(self) -> None:
        self.update_tree_header()

    # -- image details ---------------------------------------------------------------------

    @work(thread=True, group="analyze")
    def analyze(self) -> None:
        try:
            report = analyze(self.image)
        except SnapshotterError as exc:
            self.call_from_thread(self.notify, f"error: {exc}", severity="error")
            return
        self.call_from_thread(self._show_report, report)

    def _show_report(self, report: WasteReport) -> None:
        self.report = report
        self.query_one("#image-text", Static).update(self._image_text())

    def _image_text(self) -> Text:
        text = Text()
        text.append("Image name: ", style="bold")
        text.append(_name(self.image.label) + "\n")
        total = sum(row.size for row in self.layers)
        text.append("Total Image size: ", style="bold")
        text.append(humanize_bytes(total) + "\n")
        report = self.report
        if report is None:
            text.append("Potential wasted space: computing…")
            return text
        text.append("Potential wasted space: ", style="bold")
        text.append(humanize_bytes(report.wasted) + "\n")
        text.append("Image efficiency score: ", style="bold")
        text.append(f"{go_fixed(report.efficiency * 100, 0)} %\n\n")
        text.append(f"{'Count':>5}  {'Total Space':>11}  Path\n", style="bold")
        for p in report.files:
            text.append(
                f"{p.count:>5}  {humanize_bytes(p.wasted):>11}  {_name(display_path(p.path))}\n"
            )
        text.rstrip()
        return text

    # -- panes and the filter --------------------------------------------------------------

    def action_switch_pane(self) -> None:
        if isinstance(self.screen, ModalScreen):
            self.screen.focus_next()
            return
        table = self.query_one(LayersTable)
        (table if self.file_tree.has_focus else self.file_tree).focus()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "filter":
            return
        text = event.value
        try:
            pattern = re.compile(text) if text else None
        except re.error as exc:
            event.input.add_class("bad")
            self.notify(f"bad filter: {exc}", severity="error")
            return
        event.input.remove_class("bad")
        self._set_pattern(pattern)
        if pattern is None:
            event.input.remove_class("shown")
        self.file_tree.focus()

    def on_key(self, event: object) -> None:
        key = getattr(event, "key", None)
        box = self.query_one("#filter", Input)
        if key == "escape" and box.has_focus:
            box.value = ""
            box.remove_class("shown", "bad")
            self._set_pattern(None)
            self.file_tree.focus()

    def _set_pattern(self, pattern: re.Pattern[str] | None) -> None:
        rows = self.file_tree.rows
        if rows is None:
            return
        keep = self.file_tree.item.path if self.file_tree.item is not None else None
        rows.pattern = pattern
        rows.rebuild()
        self.file_tree.show(rows, keep)
        self.update_tree_title()

    def on_file_tree_selected(self, event: FileTree.Selected) -> None:
        pass

    # -- contents, blame, export -----------------------------------------------------------

    def _where(self, item: Item) -> str:
        side = item.side
        what = "OTHER" if self.other is not None and side.image is self.other else ""
        return f"{display_path(item.path)} (layer {item.layer}{', ' + what if what else ''})"

    def open_item(self, item: Item) -> None:
        st = item.stat
        if item.is_dir:
            self.file_tree.action_toggle_dir()
            return
        if st.kind is EntryKind.SYMLINK:
            resolution = files_mod.resolve(item.side.tree, item.path, follow=True)
            target = item.side.tree.resolve(resolution.path) if resolution.failure is None else None
            if target is None or target.kind is not EntryKind.FILE:
                self.notify(
                    f"{display_path(item.path)} → {_name(item.link)}: no regular file",
                    severity="warning",
                )
                return
            st = item.side.tree.stat(target.inode)
            title_path = f"{display_path(item.path)} → {display_path(resolution.path)}"
        elif st.kind is not EntryKind.FILE:
            self.notify(f"{display_path(item.path)} is no regular file", severity="warning")
            return
        else:
            title_path = display_path(item.path)
        try:
            pages = Pages(item.side.data_path(st), st.size)
        except OSError as exc:
            self.notify(f"cannot read {display_path(item.path)}: {exc.strerror}", severity="error")
            return
        kind = "binary, hex dump" if pages.binary else "text"
        size = humanize_bytes(st.size)
        title = f"{_name(title_path)}  {size}, layer {st.layer + 1}, {kind}  (q closes)"
        self.push_screen(ContentScreen(title, pages, item.path, colour=not self.no_color))

    def show_blame(self, item: Item) -> None:
        image = item.side.image
        try:
            found = blame_mod.blame(image, item.path)
            rows = blame_mod.blame_rows(image, found)
        except SnapshotterError as exc:
            self.notify(f"error: {exc}", severity="error")
            return
        self.push_screen(
            BlameScreen(f"blame {_name(display_path(item.path))} in {_name(image.label)}", rows)
        )

    def ask_export(self, item: Item) -> None:
        name = item.name if item.path else "root"
        regular = item.stat.kind is EntryKind.FILE
        default = self.export_dir / (name if regular else f"{name}.tar")
        what = display_path(item.path) + ("" if regular else " as a tar")

        def done(target: str | None) -> None:
            if target:
                self.export(item, Path(target))

        self.push_screen(ExportScreen(_name(what), str(default)), done)

    def export(self, item: Item, target: Path) -> None:
        try:
            with atomic_output(target) as fd:
                if item.stat.kind is EntryKind.FILE:
                    written = _copy_file(item, fd)
                else:
                    written = write_tar(item.side.view, fd, path=item.path).tar_bytes
        except (SnapshotterError, OSError) as exc:
            self.notify(f"export failed: {exc}", severity="error")
            return
        self.notify(f"wrote {humanize_bytes(written)} to {target}")


def _copy_file(item: Item, fd: int) -> int:
    data = item.side.data_path(item.stat)
    if data is None:
        return 0
    with open(data, "rb") as src:
        written = 0
        while chunk := src.read(1 << 20):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            written += len(chunk)
    return written
