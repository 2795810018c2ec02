"""What the browser shows, as plain data: no textual here, so every rule is tested without a
screen.

The file tree pane shows a **comparison** of two merged views of the explore wing, a
*lower* and an *upper* one, exactly as ``snapshotter diff`` compares them, so the screen and
the command line never disagree:

- **layer changes** (dive's default, ``ctrl+l``) at layer N: the view as of layer N-1
  against the view as of layer N, coloured by ``diff --layer N``'s answer;
- **aggregated changes** (``ctrl+a``) at layer N: the view as of layer 1 against the view
  as of layer N, as dive aggregates (every change since the first layer);
- **compare** (``--compare OTHER``): IMAGE's merged view against OTHER's, coloured by
  ``diff IMAGE OTHER``'s answer.

The tree is the upper view, plus what the lower one had and the upper one lost (shown
removed, with everything under it).  A path's status is dive's: added, removed, modified
(content, mode, owner, link target, xattrs, device numbers: ``diff``'s fields) or
unmodified; a directory that is itself unchanged is modified when anything below it
changed, as dive derives it.

The tree is flattened into the rows a screen shows (``TreeRows``): only expanded
directories are listed, so a 100k-entry image opens with a few dozen rows, and expanding a
10k-entry directory makes 10k rows and nothing more.
"""

from __future__ import annotations

import bisect
import enum
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..explore.diff import Action, Change, layer_diff, view_changes
from ..explore.du import dir_sizes
from ..explore.image import Layer, StoredImage
from ..store.toc import EntryKind
from ..view.merge import ROOT_INODE, MergedTree, Stat
from ..view.tree import ImageView


class Status(enum.Enum):
    """dive's four diff types; the value is the mark shown when there is no colour."""

    ADDED = "+"
    REMOVED = "-"
    MODIFIED = "~"
    UNMODIFIED = " "


class Mode(enum.Enum):
    """Which two views the tree compares."""

    LAYER = "layer"  # layer N-1 -> layer N
    AGGREGATED = "aggregated"  # layer 1 -> layer N
    COMPARE = "compare"  # IMAGE -> OTHER


# -- layers ----------------------------------------------------------------------------------

_SHELL_PREFIX = "/bin/sh -c "
_NOP_PREFIX = "#(nop) "


def command_text(created_by: str) -> str:
    """A history entry's command as dive's layer list shows it: without the legacy
    builder's ``/bin/sh -c `` (and ``#(nop) ``), a newline as ``↵``."""
    text = created_by.removeprefix(_SHELL_PREFIX).removeprefix(_NOP_PREFIX).strip()
    return text.replace("\r\n", "↵").replace("\n", "↵").replace("\t", " ")


@dataclass(frozen=True, slots=True)
class LayerRow:
    """One row of the Layers pane and what the Layer Details pane says of it."""

    number: int  # 1 = base
    size: int  # bytes of file content the layer ships (dive's layer size)
    command: str  # command_text of its history entry; "(missing)" when it has none
    digest: str  # the blob (compressed)
    diff_id: str  # the uncompressed tar
    blob_size: int  # bytes of the blob


def layer_rows(image: StoredImage) -> tuple[LayerRow, ...]:
    return tuple(_layer_row(image, layer) for layer in image.layers)


def _layer_row(image: StoredImage, layer: Layer) -> LayerRow:
    size = layer.unpacked_size
    if size is None:
        size = sum(image.columns(layer.number).size)
    command = command_text(layer.created_by) if layer.history is not None else "(missing)"
    return LayerRow(layer.number, size, command, layer.digest, layer.diff_id, layer.size)


def compare_bar(mode: Mode, selected: int, number: int) -> str:
    """Which side of the comparison layer ``number`` is on: "lower" (dive's green bar),
    "upper" (magenta) or "" (not compared)."""
    if mode is Mode.LAYER:
        return "lower" if number < selected else "upper" if number == selected else ""
    if mode is Mode.AGGREGATED:
        return "lower" if number == 1 else "upper" if number <= selected else ""
    return "lower"


# -- one side of a comparison ----------------------------------------------------------------


@dataclass(slots=True)
class Side:
    """One merged view being compared, with the directory sizes it shows."""

    image: StoredImage
    upto: int  # the view as of this many layers
    view: ImageView
    _sizes: dict[str, int] | None = None

    @classmethod
    def of(cls, image: StoredImage, upto: int) -> Side:
        return cls(image, upto, image.view(upto))

    @property
    def tree(self) -> MergedTree:
        return self.view.tree

    def dir_size(self, path: str) -> int:
        """Bytes of regular files below directory ``path`` (as ``du`` counts them)."""
        if self._sizes is None:
            self._sizes = dir_sizes(self.tree)
        return self._sizes.get(path, 0)

    def data_path(self, st: Stat) -> Path | None:
        """The store file holding a regular file's content (None when empty)."""
        if st.kind is not EntryKind.FILE or st.size == 0:
            return None
        return self.view.data_path(st.layer, st.data)


@dataclass(frozen=True, slots=True)
class Item:
    """One path of the compared tree."""

    path: str  # relative, "" = the root
    name: str
    side: Side  # the view the path is shown from: the upper one, or the lower if removed
    inode: int
    stat: Stat
    status: Status

    @property
    def is_dir(self) -> bool:
        return self.stat.kind is EntryKind.DIR

    @property
    def removed(self) -> bool:
        return self.status is Status.REMOVED

    @property
    def layer(self) -> int:
        """The number (1 = base) of the layer whose entry the shown version is; 0 for a
        made-up root."""
        return self.stat.layer + 1

    @property
    def link(self) -> str:
        return self.side.tree.link(self.inode) if self.stat.kind is EntryKind.SYMLINK else ""

    @property
    def size(self) -> int:
        """A file's bytes; a directory's: every file below it."""
        if self.is_dir:
            return self.side.dir_size(self.path)
        return self.stat.size if self.stat.kind is EntryKind.FILE else 0


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class Comparison:
    """Two views and the changes between them (``lower`` None: everything is added)."""

    def __init__(self, upper: Side, lower: Side | None, changes: Sequence[Change]):
        self.upper = upper
        self.lower = lower
        self.changes = {c.path: c for c in changes}
        # Parent path -> names of the children the lower view had and the upper lost.
        self.removed_below: dict[str, list[str]] = {}
        # Directories with a change somewhere below them.
        self.changed_dirs: set[str] = set()
        for c in changes:
            parent = c.path.rpartition("/")[0] if c.path else None
            if c.action is Action.DELETED and parent is not None:
                self.removed_below.setdefault(parent, []).append(c.path.rpartition("/")[2])
            while parent is not None and parent not in self.changed_dirs:
                self.changed_dirs.add(parent)
                parent = parent.rpartition("/")[0] if parent else None
        for names in self.removed_below.values():
            names.sort()

    @property
    def changed(self) -> int:
        return len(self.changes)

    def root(self) -> Item:
        tree = self.upper.tree
        return Item("", "/", self.upper, ROOT_INODE, tree.stat(ROOT_INODE), self._status("", True))

    def _status(self, path: str, is_dir: bool) -> Status:
        if self.lower is None:
            return Status.ADDED
        change = self.changes.get(path)
        if change is not None:
            if change.action is Action.ADDED:
                return Status.ADDED
            if change.action is Action.DELETED:
                return Status.REMOVED
            return Status.MODIFIED
        if is_dir and path in self.changed_dirs:
            return Status.MODIFIED
        return Status.UNMODIFIED

    def children(self, item: Item) -> list[Item]:
        """The children of directory ``item``, in name order."""
        if not item.is_dir:
            return []
        side = item.side
        tree = side.tree
        stat = tree.stat
        out: list[Item] = []
        inherited = item.status if item.status in (Status.ADDED, Status.REMOVED) else None
        for _, raw, inode in tree.scan(item.inode):
            name = raw.decode("utf-8", "surrogateescape")
            path = _join(item.path, name)
            st = stat(inode)
            status = inherited or self._status(path, st.kind is EntryKind.DIR)
            out.append(Item(path, name, side, inode, st, status))
        lost = self.removed_below.get(item.path) if inherited is None else None
        if lost and self.lower is not None:
            lower = self.lower
            node = lower.tree.resolve(item.path)
            parent = node.inode if node is not None and node.kind is EntryKind.DIR else None
            if parent is not None:
                names = [i.name for i in out]
                for name in lost:
                    child = lower.tree.lookup_inode(parent, name)
                    if child is None:
                        continue
                    removed = Item(
                        _join(item.path, name),
                        name,
                        lower,
                        child,
                        lower.tree.stat(child),
                        Status.REMOVED,
                    )
                    at = bisect.bisect_left(names, name)
                    names.insert(at, name)
                    out.insert(at, removed)
        return out

    def walk(self) -> Iterator[Item]:
        """Every item below the root, depth first in name order."""
        stack = [iter(self.children(self.root()))]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            yield item
            if item.is_dir:
                stack.append(iter(self.children(item)))


def layer_comparison(image: StoredImage, number: int) -> Comparison:
    """Layer ``number``'s own changes (``diff --layer N``): layer N-1 against layer N."""
    upper = Side.of(image, number)
    if number == 1:
        return Comparison(upper, None, ())
    changes = layer_diff(image, number).changes
    return Comparison(upper, Side.of(image, number - 1), changes)


def aggregated_comparison(image: StoredImage, number: int) -> Comparison:
    """Every change since the first layer (dive's aggregated view): layer 1 against N."""
    upper = Side.of(image, number)
    if number == 1:
        return Comparison(upper, upper, ())
    changes = view_changes(image, image, upto=1, other_upto=number, mtime=False)
    return Comparison(upper, Side.of(image, 1), changes)


def image_comparison(image: StoredImage, other: StoredImage) -> Comparison:
    """``diff IMAGE OTHER``'s file changes: IMAGE's merged view against OTHER's."""
    changes = view_changes(image, other)
    return Comparison(Side.of(other, len(other.layers)), Side.of(image, len(image.layers)), changes)


# -- the rows on screen -----------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    """One line of the tree pane."""

    item: Item
    depth: int  # 0: a child of the root
    guides: str  # the tree lines drawn before the name ("│   " per open ancestor level)
    last: bool  # the last child of its directory (drawn "└── ")
    expanded: bool = False


@dataclass(slots=True)
class TreeRows:
    """The flattened tree a screen shows, and the user's choices that shape it."""

    comparison: Comparison
    expanded: set[str] = field(default_factory=set)  # directories open, by path
    sort_by_size: bool = False
    hidden: set[Status] = field(default_factory=set)  # statuses not shown
    pattern: re.Pattern[str] | None = None  # show only paths matching (and their parents)
    rows: list[Row] = field(default_factory=list)
    _keep: set[str] | None = None  # with a pattern: the paths shown

    def __post_init__(self) -> None:
        self.rebuild()

    def rebuild(self) -> None:
        self._keep = self._matching() if self.pattern is not None else None
        self.rows = list(self._flatten(self.comparison.root(), -1, ""))

    def _children(self, item: Item) -> list[Item]:
        items = [i for i in self.comparison.children(item) if i.status not in self.hidden]
        if self._keep is not None:
            items = [i for i in items if i.path in self._keep]
        if self.sort_by_size:
            items.sort(key=lambda i: -i.size)  # stable: names stay sorted among equals
        return items

    def _open(self, item: Item) -> bool:
        return item.is_dir and (item.path in self.expanded or self._keep is not None)

    def _flatten(self, item: Item, depth: int, guides: str) -> Iterator[Row]:
        """The rows below ``item`` (at ``depth``), open directories' children included."""
        stack: list[tuple[list[Item], int, int, str]] = [
            (self._children(item), 0, depth + 1, guides)
        ]
        while stack:
            items, i, d, g = stack[-1]
            if i == len(items):
                stack.pop()
                continue
            stack[-1] = (items, i + 1, d, g)
            child = items[i]
            last = i == len(items) - 1
            is_open = self._open(child)
            yield Row(child, d, g, last, is_open)
            if is_open:
                stack.append((self._children(child), 0, d + 1, g + ("    " if last else "│   ")))

    def _matching(self) -> set[str]:
        """Every path the pattern matches, with its parents."""
        assert self.pattern is not None
        search = self.pattern.search
        keep: set[str] = set()
        for item in self.comparison.walk():
            if item.status in self.hidden or not search("/" + item.path):
                continue
            path = item.path
            while path and path not in keep:
                keep.add(path)
                path = path.rpartition("/")[0]
        return keep

    # -- what the keys do -------------------------------------------------------------------

    def toggle(self, index: int) -> None:
        """Open a closed directory, close an open one (``space``)."""
        row = self.rows[index]
        if not row.item.is_dir:
            return
        if row.expanded:
            self.collapse(index)
        else:
            self.expand(index)

    def expand(self, index: int) -> int:
        """Open the directory at ``index``; returns how many rows it added."""
        row = self.rows[index]
        if not row.item.is_dir or row.expanded:
            return 0
        self.expanded.add(row.item.path)
        row.expanded = True
        guides = row.guides + ("    " if row.last else "│   ")
        below = list(self._flatten(row.item, row.depth, guides))
        self.rows[index + 1 : index + 1] = below
        return len(below)

    def collapse(self, index: int) -> None:
        row = self.rows[index]
        if not row.expanded:
            return
        self.expanded.discard(row.item.path)
        row.expanded = False
        end = self.subtree_end(index)
        del self.rows[index + 1 : end]

    def subtree_end(self, index: int) -> int:
        """The index after the last row below row ``index``."""
        depth = self.rows[index].depth
        end = index + 1
        rows = self.rows
        while end < len(rows) and rows[end].depth > depth:
            end += 1
        return end

    def parent_index(self, index: int) -> int | None:
        depth = self.rows[index].depth
        for i in range(index - 1, -1, -1):
            if self.rows[i].depth < depth:
                return i
        return None

    def collapse_all(self) -> None:
        self.expanded.clear()
        self.rebuild()

    def index_of(self, path: str) -> int | None:
        for i, row in enumerate(self.rows):
            if row.item.path == path:
                return i
        return None


# -- file contents, a page at a time -------------------------------------------------------------

HEX_WIDTH = 16  # bytes per hex dump row
LINE_LIMIT = 4096  # characters of one text line shown (a minified file has one long line)
_BLOCK = 64 * 1024
_SNIFF = 8192


def looks_binary(head: bytes) -> bool:
    """Whether content starting with ``head`` is shown as a hex dump: a NUL byte, or bytes
    that are not UTF-8 (a sequence cut at the end of ``head`` is allowed)."""
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.end < len(head) - 3 or exc.reason != "unexpected end of data"
    return False


class Pages:
    """A file's content read a block at a time, never whole: text by lines (found as far
    as someone has looked, like ``less``), binary as hex dump rows of 16 bytes."""

    def __init__(self, path: Path | None, size: int, blocks_kept: int = 64):
        self.size = size
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC) if path is not None else -1
        self._blocks: dict[int, bytes] = {}
        self._blocks_kept = blocks_kept
        self.reads = 0  # blocks read from the file, for tests and the status line
        self.binary = size > 0 and looks_binary(self.read(0, min(size, _SNIFF)))
        self._starts = [0]  # offsets of the lines found so far
        self._scanned = 0  # bytes searched for newlines

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _block(self, number: int) -> bytes:
        block = self._blocks.get(number)
        if block is None:
            block = os.pread(self._fd, _BLOCK, number * _BLOCK)
            self.reads += 1
            if len(self._blocks) >= self._blocks_kept:
                del self._blocks[next(iter(self._blocks))]
            self._blocks[number] = block
        return block

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer at the end of the file)."""
        length = max(0, min(length, self.size - offset))
        out = bytearray()
        while length > 0:
            number, skip = divmod(offset, _BLOCK)
            piece = self._block(number)[skip : skip + length]
            if not piece:
                break
            out += piece
            offset += len(piece)
            length -= len(piece)
        return bytes(out)

    # -- binary ------------------------------------------------------------------------

    @property
    def hex_rows(self) -> int:
        return -(-self.size // HEX_WIDTH)

    def hex_row(self, row: int) -> str:
        """``xxd``'s layout: offset, 16 bytes in pairs, the printable ones."""
        offset = row * HEX_WIDTH
        data = self.read(offset, HEX_WIDTH)
        pairs = " ".join(data[i : i + 2].hex() for i in range(0, HEX_WIDTH, 2) if data[i : i + 2])
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in data)
        return f"{offset:08x}: {pairs:<39}  {text}"

    # -- text --------------------------------------------------------------------------

    @property
    def lines_known(self) -> int:
        """Lines found so far (all of them once ``complete``)."""
        starts = len(self._starts)
        if self.complete and self._starts[-1] >= self.size:
            return starts - 1
        return starts

    @property
    def complete(self) -> bool:
        return self._scanned >= self.size

    def find_lines(self, upto: int) -> None:
        """Look for newlines until line ``upto`` is known or the file ends."""
        while len(self._starts) <= upto + 1 and not self.complete:
            number, skip = divmod(self._scanned, _BLOCK)
            block = self._block(number)
            at = skip
            while True:
                nl = block.find(b"\n", at)
                if nl < 0:
                    break
                self._starts.append(number * _BLOCK + nl + 1)
                at = nl + 1
            self._scanned = min(number * _BLOCK + len(block), self.size)
            if not block:
                self._scanned = self.size

    def line(self, number: int) -> str:
        """Line ``number`` (from 0) without its newline, cut at ``LINE_LIMIT``."""
        self.find_lines(number)
        if number >= self.lines_known:
            return ""
        start = self._starts[number]
        end = self._starts[number + 1] if number + 1 < len(self._starts) else self.size
        data = self.read(start, min(end - start, LINE_LIMIT * 4))
        text = data.decode("utf-8", "replace").rstrip("\n").rstrip("\r")
        if len(text) > LINE_LIMIT or end - start > len(data):
            text = text[:LINE_LIMIT] + "…"
        return text.expandtabs(8)
