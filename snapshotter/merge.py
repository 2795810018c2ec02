"""Layer tocs -> one merged tree: what a container started from the image sees.

Pure: no mount, no I/O beyond reading tocs and the cache file.  ``mount``, ``ls``, ``cat``
and ``export`` all read this one model.

The rules (image-spec layer.md#applying-changesets, and what overlayfs shows):

- Layers apply base first.  An upper entry replaces a lower one of the same name; a
  non-directory replaces a whole lower subtree.
- A directory over a directory merges: the upper one's owner, mode, mtime and xattrs win and
  the lower children stay, unless the upper one is opaque (``.wh..wh..opq``, or a directory
  its own layer whited out and re-created), which drops every lower child.
- A directory that is only implied by a child's path (its tar has no entry for it) keeps the
  lower directory's metadata; with no lower directory it is 0755 root:root, mtime 0.
- A whiteout removes the lower name and its subtree; it never shows.
- Hardlinks within one layer are one inode (one number, one content, nlink = the names of it
  still visible); a later layer that replaces one name does not touch its partners.

Inode numbers are given once, in path order, so the same layer chain always gives the same
numbers; the root is inode 1 (FUSE's root).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard

from .errors import StoreCorrupt
from .toc import EntryKind, Toc

ROOT_INODE = 1
MERGED_VERSION = 1


@dataclass(frozen=True, slots=True)
class Node:
    """One inode of the merged view."""

    inode: int
    kind: EntryKind
    mode: int  # permission bits only (07777)
    uid: int
    gid: int
    size: int
    mtime_ns: int
    nlink: int
    link: str = ""
    rdev_major: int = 0
    rdev_minor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    layer: int = -1  # index (base = 0) of the layer whose entry this is; -1: made up (root)
    data: int = 0  # that layer's toc inode: names data/<data:x> when size > 0


class _Build:
    """A mutable node used while layers are applied."""

    __slots__ = (
        "kind",
        "mode",
        "uid",
        "gid",
        "size",
        "mtime_ns",
        "link",
        "major",
        "minor",
        "xattrs",
        "layer",
        "data",
        "children",
    )

    def __init__(
        self,
        kind: EntryKind,
        mode: int = 0o755,
        uid: int = 0,
        gid: int = 0,
        size: int = 0,
        mtime_ns: int = 0,
        link: str = "",
        major: int = 0,
        minor: int = 0,
        xattrs: tuple[tuple[str, bytes], ...] = (),
        layer: int = -1,
        data: int = 0,
    ):
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.mtime_ns = mtime_ns
        self.link = link
        self.major = major
        self.minor = minor
        self.xattrs = xattrs
        self.layer = layer
        self.data = data
        self.children: dict[str, _Build] | None = {} if kind is EntryKind.DIR else None


class MergedTree:
    """The merged view of a layer chain: inodes, directory listings, where content lives.

    ``lookup`` is one dict access; ``children`` lists a directory in name order, so a
    readdir offset (an index into it) stays valid for the life of the tree.
    """

    def __init__(
        self,
        nodes: list[Node | None],
        dirs: dict[int, tuple[list[str], list[int]]],
        parents: dict[int, int],
    ):
        self.nodes = nodes  # index = inode; [0] unused
        self.dirs = dirs  # dir inode -> (names sorted, inodes)
        self.parents = parents  # dir inode -> parent dir inode
        self._index: dict[int, dict[str, int]] = {}

    # -- queries -------------------------------------------------------------------------

    def node(self, inode: int) -> Node:
        try:
            n = self.nodes[inode]
        except IndexError:
            n = None
        if n is None:
            raise KeyError(inode)
        return n

    def lookup(self, parent: int, name: str) -> Node | None:
        index = self._index.get(parent)
        if index is None:
            listing = self.dirs.get(parent)
            if listing is None:
                return None
            index = dict(zip(listing[0], listing[1], strict=True))
            self._index[parent] = index
        inode = index.get(name)
        return None if inode is None else self.nodes[inode]

    def children(self, inode: int) -> tuple[list[str], list[int]]:
        return self.dirs[inode]

    def resolve(self, path: str) -> Node | None:
        """The node at a relative path, without following symlinks."""
        node: Node | None = self.node(ROOT_INODE)
        for part in (p for p in path.split("/") if p and p != "."):
            if node is None or node.kind is not EntryKind.DIR:
                return None
            node = self.lookup(node.inode, part)
        return node

    def walk(self) -> Iterator[tuple[str, Node]]:
        """Every (path, node) in depth-first name order; hardlinks appear once per name."""
        stack: list[tuple[str, int]] = [("", ROOT_INODE)]
        while stack:
            path, inode = stack.pop()
            node = self.node(inode)
            yield path, node
            if node.kind is EntryKind.DIR:
                names, inodes = self.dirs[inode]
                for name, child in zip(reversed(names), reversed(inodes), strict=True):
                    stack.append((f"{path}/{name}" if path else name, child))

    def __len__(self) -> int:
        return sum(1 for n in self.nodes if n is not None)

    # -- cache file ------------------------------------------------------------------------

    def write(self, path: Path) -> None:
        rows: list[list[object] | None] = []
        for n in self.nodes[1:]:
            if n is None:
                rows.append(None)
                continue
            rows.append(
                [
                    n.kind.value,
                    n.mode,
                    n.uid,
                    n.gid,
                    n.size,
                    n.mtime_ns,
                    n.nlink,
                    n.link,
                    n.rdev_major,
                    n.rdev_minor,
                    [[k, v.hex()] for k, v in n.xattrs] or 0,
                    n.layer,
                    n.data,
                ]
            )
        dirs = {str(k): [v[0], v[1]] for k, v in self.dirs.items()}
        doc = {
            "version": MERGED_VERSION,
            "nodes": rows,
            "dirs": dirs,
            "parents": {str(k): v for k, v in self.parents.items()},
        }
        raw = json.dumps(doc, separators=(",", ":")).encode()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(zstandard.ZstdCompressor(level=1).compress(raw))
        tmp.rename(path)

    @classmethod
    def read(cls, path: Path) -> MergedTree:
        try:
            raw = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
            doc = json.loads(raw)
            if doc.get("version") != MERGED_VERSION:
                raise StoreCorrupt(f"merged tree {path}: unknown version")
            nodes: list[Node | None] = [None]
            for i, row in enumerate(doc["nodes"], start=1):
                if row is None:
                    nodes.append(None)
                    continue
                (
                    kind,
                    mode,
                    uid,
                    gid,
                    size,
                    mtime,
                    nlink,
                    link,
                    major,
                    minor,
                    xattrs,
                    layer,
                    data,
                ) = row
                nodes.append(
                    Node(
                        i,
                        EntryKind(kind),
                        mode,
                        uid,
                        gid,
                        size,
                        mtime,
                        nlink,
                        link,
                        major,
                        minor,
                        tuple((k, bytes.fromhex(v)) for k, v in xattrs) if xattrs else (),
                        layer,
                        data,
                    )
                )
            dirs = {int(k): (v[0], v[1]) for k, v in doc["dirs"].items()}
            parents = {int(k): v for k, v in doc["parents"].items()}
        except (OSError, ValueError, KeyError, TypeError, zstandard.ZstdError) as exc:
            raise StoreCorrupt(f"merged tree {path}: unreadable ({exc})") from exc
        return cls(nodes, dirs, parents)


def merge(tocs: Sequence[Toc]) -> MergedTree:
    """Apply ``tocs`` (base layer first) and number the result."""
    root = _Build(EntryKind.DIR)
    by_path: dict[str, _Build] = {"": root}

    def drop(path: str, node: _Build) -> None:
        stack = [(path, node)]
        while stack:
            p, n = stack.pop()
            by_path.pop(p, None)
            if n.children:
                stack.extend((f"{p}/{k}" if p else k, c) for k, c in n.children.items())

    for layer, toc in enumerate(tocs):
        for e in toc.entries:
            path = e.path
            if path == "":
                if not e.implied:
                    _set_meta(root, e, layer)
                if e.opaque:
                    _clear_children(root, "", drop)
                continue
            parent_path, _, name = path.rpartition("/")
            parent = by_path.get(parent_path)
            if parent is None or parent.children is None:
                raise StoreCorrupt(
                    f"toc {toc.diff_id}: {path!r} has no directory parent while merging"
                )
            existing = parent.children.get(name)
            if e.kind is EntryKind.WHITEOUT:
                if existing is not None:
                    drop(path, existing)
                    del parent.children[name]
                continue
            if e.kind is EntryKind.DIR and existing is not None and existing.kind is EntryKind.DIR:
                if not e.implied:
                    _set_meta(existing, e, layer)
                if e.opaque:
                    _clear_children(existing, path, drop)
                continue
            if existing is not None:
                drop(path, existing)
            node = _Build(e.kind)
            if e.kind is not EntryKind.DIR or not e.implied:
                _set_meta(node, e, layer)
            node.size, node.link = e.size, e.link
            node.major, node.minor, node.data = e.rdev_major, e.rdev_minor, e.inode
            node.layer = layer
            parent.children[name] = node
            by_path[path] = node
    return _number(root)


def _set_meta(node: _Build, e: object, layer: int) -> None:
    from .toc import TocEntry

    assert isinstance(e, TocEntry)
    node.mode, node.uid, node.gid = e.mode, e.uid, e.gid
    node.mtime_ns, node.xattrs, node.layer = e.mtime_ns, e.xattrs, layer


def _clear_children(node: _Build, path: str, drop: object) -> None:
    assert node.children is not None
    for name, child in list(node.children.items()):
        drop(f"{path}/{name}" if path else name, child)  # type: ignore[operator]
    node.children.clear()


def _number(root: _Build) -> MergedTree:
    """Give inode numbers in depth-first name order; hardlinks share their first number."""
    nodes: list[Node | None] = [None]
    dirs: dict[int, tuple[list[str], list[int]]] = {}
    parents: dict[int, int] = {}
    # First pass: numbers, and how many visible names each hardlinked inode has.
    numbers: dict[int, int] = {}  # id(_Build) -> inode
    group_inode: dict[tuple[int, int], int] = {}
    group_names: dict[int, int] = {}
    order: list[tuple[_Build, int]] = []  # (node, parent inode)
    stack: list[tuple[_Build, int]] = [(root, ROOT_INODE)]
    while stack:
        b, parent_inode = stack.pop()
        if b.kind is EntryKind.DIR or b.layer < 0:
            inode = len(order) + 1
            order.append((b, parent_inode))
        else:
            key = (b.layer, b.data)
            inode = group_inode.get(key, 0)
            if not inode:
                inode = len(order) + 1
                group_inode[key] = inode
                order.append((b, parent_inode))
            else:
                order.append((b, -1))  # a further name of an inode already numbered
            group_names[inode] = group_names.get(inode, 0) + 1
        numbers[id(b)] = inode
        if b.children:
            for name in sorted(b.children, reverse=True):
                stack.append((b.children[name], inode))
    # Second pass: records and listings.
    slot = 0
    for b, parent_inode in order:
        slot += 1
        inode = numbers[id(b)]
        if parent_inode == -1:
            nodes.append(None)  # this slot's number went to the first name of the group
            continue
        if b.kind is EntryKind.DIR:
            assert b.children is not None
            names = sorted(b.children)
            inodes = [numbers[id(b.children[n])] for n in names]
            dirs[inode] = (names, inodes)
            parents[inode] = parent_inode
            nlink = 2 + sum(1 for c in b.children.values() if c.kind is EntryKind.DIR)
        else:
            nlink = group_names[inode]
        if b.kind is EntryKind.FILE:
            size = b.size
        elif b.kind is EntryKind.SYMLINK:
            size = len(os.fsencode(b.link))  # as lstat reports a symlink's size
        else:
            size = 0
        nodes.append(
            Node(
                inode,
                b.kind,
                b.mode,
                b.uid,
                b.gid,
                size,
                b.mtime_ns,
                nlink,
                b.link,
                b.major,
                b.minor,
                b.xattrs,
                b.layer,
                b.data,
            )
        )
    return MergedTree(nodes, dirs, parents)
