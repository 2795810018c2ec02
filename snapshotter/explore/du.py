"""``du``: apparent bytes per directory of an image, in its merged view and per layer.

What counts: the sizes of regular files (``du --apparent-size -b`` also adds each
directory's own size and each symlink's length; we count file content only, which is what
makes an image big).  A hardlinked inode counts once, at the first of its names in walk
order (depth first, names sorted: the order ``ls -R`` and the mount's readdir use), as GNU
``du`` counts it at the first name it meets: every directory total holds it at most once,
and no byte is counted twice in a parent.

Apparent sizes, not disk usage: the question is what an image holds wherever it is
unpacked, so a sparse file counts its holes.  What the store's copy takes on disk is what
the mounted view reports as ``st_blocks`` (the toc's ``blocks``): plain ``du`` over a
mount adds that up, as it does over the kernel's overlayfs of the same layers.

Per layer (``by_layer``): the bytes each layer's toc ships under a directory, hidden ones
included: what a later layer overwrote or deleted still counts in the layer that shipped
it.  The visible column is the merged view's; the difference is what the layers carry for
nothing.  Within one layer a hardlinked inode counts once, at its first name in the same
order as above.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import compress

from ..errors import NotFound
from ..store.toc import EntryKind, TocColumns
from ..view.merge import ROOT_INODE, MergedTree, Node
from .image import StoredImage, display_path, normalize_path, require_found


@dataclass(frozen=True, slots=True)
class DirUsage:
    """One directory (or the start path when it is no directory)."""

    path: str  # relative ("" is the root)
    depth: int  # levels below the start path (0: the start path itself)
    size: int  # bytes of regular files the merged view shows under ``path``
    by_layer: tuple[int, ...] = ()  # bytes layer 1, 2 ... ships under ``path`` (if asked)


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """The answer to ``du``: rows in post-order (a directory after everything below it,
    siblings in name order), as ``du`` prints them."""

    path: str  # the start path, relative
    kind: EntryKind  # the start path's kind in the merged view
    layers: int  # layers of the image (the length of each ``by_layer``)
    rows: tuple[DirUsage, ...]


def disk_usage(
    image: StoredImage, path: str = "", depth: int | None = None, by_layer: bool = False
) -> DiskUsage:
    """Apparent bytes under ``path`` of ``image``'s merged view, one row per directory at
    most ``depth`` levels below ``path`` (every level when None).  Symlinks are not
    followed, as ``du`` does not follow them (``path`` itself included)."""
    if depth is not None and depth < 0:
        raise ValueError("depth must be 0 or more")
    start = normalize_path(path)
    tree = image.view().tree
    node = _resolve(image, tree, start)
    if node.kind is EntryKind.DIR:
        rows = _walk(tree, node.inode, start, depth)
    else:
        rows = [DirUsage(start, 0, node.size if node.kind is EntryKind.FILE else 0)]
    if by_layer:
        dirs = {r.path for r in rows}
        is_dir = node.kind is EntryKind.DIR
        shipped = [_shipped(image, n, start, is_dir, dirs) for n in _numbers(image)]
        rows = [
            DirUsage(r.path, r.depth, r.size, tuple(s.get(r.path, 0) for s in shipped))
            for r in rows
        ]
    return DiskUsage(start, node.kind, len(image.layers), tuple(rows))


def _numbers(image: StoredImage) -> range:
    return range(1, len(image.layers) + 1)


def _resolve(image: StoredImage, tree: MergedTree, path: str) -> Node:
    """The node at ``path``, symlinks not followed; NotFound saying which component is
    missing or is no directory (the usual surprise: ``/lib -> usr/lib``)."""
    node = tree.node(ROOT_INODE)
    walked = ""
    for part in path.split("/") if path else ():
        if node.kind is not EntryKind.DIR:
            raise NotFound(
                f"{image.what}: no such path {display_path(path)!r}: "
                f"{display_path(walked)!r} is a {kind_word(node.kind)} (du follows no symlinks)"
            )
        found = tree.lookup(node.inode, part)
        walked = f"{walked}/{part}" if walked else part
        node = require_found(found, image, walked)
    return node


def kind_word(kind: EntryKind) -> str:
    return "symlink" if kind is EntryKind.SYMLINK else kind.name.lower()


class _Frame:
    """A directory being summed."""

    __slots__ = ("children", "depth", "path", "total")

    def __init__(self, path: str, depth: int, children: Iterator[tuple[int, bytes, int]]):
        self.path = path
        self.depth = depth
        self.children = children
        self.total = 0


def _walk(tree: MergedTree, inode: int, path: str, depth: int | None) -> list[DirUsage]:
    """Post-order totals of the directories under ``inode``, down to ``depth`` levels."""
    rows: list[DirUsage] = []
    seen: set[int] = set()  # hardlinked inodes already counted
    stack = [_Frame(path, 0, tree.scan(inode))]
    stat = tree.stat
    while stack:
        frame = stack[-1]
        for _, raw, child in frame.children:
            st = stat(child)
            if st.kind is EntryKind.DIR:
                name = raw.decode("utf-8", "surrogateescape")
                sub = f"{frame.path}/{name}" if frame.path else name
                stack.append(_Frame(sub, frame.depth + 1, tree.scan(child)))
                break
            if st.kind is EntryKind.FILE:
                if st.nlink > 1:
                    if child in seen:
                        continue
                    seen.add(child)
                frame.total += st.size
        else:
            stack.pop()
            if depth is None or frame.depth <= depth:
                rows.append(DirUsage(frame.path, frame.depth, frame.total))
            if stack:
                stack[-1].total += frame.total
    return rows


def dir_sizes(tree: MergedTree) -> dict[str, int]:
    """Every directory's bytes of regular files (each hardlinked inode once, as ``du``
    counts it), by relative path ("" = the root)."""
    return {r.path: r.size for r in _walk(tree, ROOT_INODE, "", None)}


def subtree_bytes(tree: MergedTree, inode: int) -> int:
    """Bytes of regular files under directory ``inode`` (each inode once)."""
    return sum(r.size for r in _walk(tree, inode, "", 0))


def first_names(columns: TocColumns) -> list[bool]:
    """For each entry of a toc: whether it is the name its content counts under.  False
    only for the further names of a hardlinked file: a hardlinked inode counts once, at its
    first name in walk order (depth first, names sorted)."""
    first = [True] * len(columns)
    is_file = [kind is EntryKind.FILE for kind in columns.kind]
    inodes = list(compress(columns.inode, is_file))
    if len(set(inodes)) == len(inodes):
        return first  # no hardlinks: the usual case, found without a dict of lists
    by_inode: dict[int, list[int]] = {}
    for i in compress(range(len(is_file)), is_file):
        by_inode.setdefault(columns.inode[i], []).append(i)
    for names in by_inode.values():
        if len(names) > 1:
            names.sort(key=lambda i: columns.path[i].split("/"))
            for i in names[1:]:
                first[i] = False
    return first


def _shipped(
    image: StoredImage, number: int, start: str, is_dir: bool, dirs: set[str]
) -> dict[str, int]:
    """Bytes of regular files layer ``number`` ships below each of ``dirs`` (at ``start``
    itself when the view has no directory there)."""
    columns = image.columns(number)
    counted = [
        kind is EntryKind.FILE and first
        for kind, first in zip(columns.kind, first_names(columns), strict=True)
    ]
    files = zip(compress(columns.path, counted), compress(columns.size, counted), strict=True)
    if not is_dir:
        return {start: sum(size for path, size in files if path == start)}
    prefix = f"{start}/" if start else ""
    by_parent: dict[str, int] = {}
    for path, size in files:
        if size and path.startswith(prefix):
            parent = path.rpartition("/")[0]
            by_parent[parent] = by_parent.get(parent, 0) + size
    out: dict[str, int] = {}
    for parent, size in by_parent.items():
        p = parent
        while True:
            if p in dirs:
                out[p] = out.get(p, 0) + size
            if p == start or not p:
                break
            p = p.rpartition("/")[0]
    return out


__all__ = [
    "DirUsage",
    "DiskUsage",
    "disk_usage",
    "dir_sizes",
    "first_names",
    "subtree_bytes",
]
