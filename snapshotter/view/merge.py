"""Layer tocs -> one merged tree: what a container started from the image sees.

Pure: no mount, no I/O beyond reading tocs and the cache file.  ``mount``, ``ls``, ``cat``
and ``export`` all read this one model.

The rules (image-spec layer.md#applying-changesets, and what overlayfs shows):

- Layers apply base first.  An upper entry replaces a lower one of the same name; a
  non-directory replaces a whole lower subtree.
- A directory over a directory merges: the upper one's owner, mode, mtime and xattrs win and
  the lower children stay, unless the upper one is opaque (``.wh..wh..opq``, or a directory
  its own layer whited out and re-created), which drops every lower child.
- A directory that is only implied by a child's path (its tar has no entry for it, or only
  whiteouts or an opaque marker below it) takes the metadata containerd's ``mkparent``
  (pkg/archive/tar.go) gives it when it applies the layer for overlayfs: it creates the
  directory in the layer's own upper directory and copies owner, mode, times and xattrs
  (all but ``trusted.*``) from the first lower layer, top down, that has anything at the
  path.  So (``implied_meta``):

  - a directory there: its metadata (if that layer implied it too, what it got in turn);
  - a non-directory or a whiteout there, or under a non-directory or whiteout of that
    layer: 0755 root:root, mtime 0 (containerd gives defaults, or fails on the second
    case; the lower directory is gone either way);
  - nothing in any layer: 0755 root:root, mtime 0.

  containerd looks the path up in each lower layer with ``fs.RootPath``, which follows
  symlinks within that layer: a lower ``lib -> usr/lib`` gives an implied ``lib`` the
  metadata of that layer's ``usr/lib`` (``layer_path``).

  An opaque marker does not stop the search, neither in a lower layer nor in the layer
  itself: ``a/.wh..wh..opq`` and ``a/b/f`` in one tar give ``a/b`` the lower ``a/b``'s
  metadata, though none of the lower ``a/b``'s children show.  Where the view below has
  a directory at the path, that is the one the search finds: the view keeps it (without
  its ``trusted.*`` xattrs).  Inside a directory its own layer whited out and made again
  nothing of the old one survives: implied directories there get the defaults too
  (containerd's overlay applier refuses such a layer; its plain applier agrees).  The
  mtime is the one copied: containerd then writes the children into the directory, so a
  runtime shows the moment of unpacking, which no two machines share.
- A symlink's permission bits are 0777 whatever its tar header says, as on every Linux
  file system (symlink(2) takes no mode and lchmod does not exist): a layer made by BSD
  tar with ``lrwxr-xr-x`` shows ``lrwxrwxrwx`` under overlayfs, and so here.
- A whiteout removes the lower name and its subtree; it never shows.  So does a character
  device 0/0 a layer ships: that is overlayfs' own form of a whiteout, which containerd
  (or docker) makes of it, so no overlay-based runtime shows one.
- Hardlinks within one layer are one inode (one number, one content, nlink = the names of it
  still visible); a later layer that replaces one name does not touch its partners.
- A regular file's blocks (``st_blocks``) are what its data file takes in the store, as
  overlayfs passes on the lower file's: a sparse file's holes take none, so ``du`` of the
  view and of the kernel's agree.  Other kinds have none (the tree holds a symlink's
  target, as a fast symlink's inode does).

Inode numbers are given once, in path order, so the same layer chain always gives the same
numbers; the root is inode 1 (FUSE's root).

A ``MergedTree`` holds no object per entry: each field is one ``array`` indexed by inode,
names and link targets are one ``bytes`` blob each, and a directory's children are a range
of a shared entry table, sorted by name.  ``Node`` records are made on demand, per query.
Lookup goes through one open-addressing hash table over all entries (crc32 of the name,
seeded with the parent's inode; at most half full), so it takes constant time whatever the
size of the directory.
That is what lets an image of 100k entries stay a few MiB in a daemon, and lets a cached
tree open with a handful of ``array.fromfile`` calls (see ``MergedTree.read``).
"""

from __future__ import annotations

import functools
import os
import struct
import sys
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import StoreCorrupt, UnsafeArchive
from ..store.toc import SYMLINK_MODE, EntryKind, Toc

ROOT_INODE = 1
# 1: zstd JSON, one row per node.  2: the binary column file described at MergedTree.read.
# 3: 2 plus the lookup table.  4: the same; symlinks 0777 whatever their (older) toc says.
# 5: implied directories as containerd's mkparent makes them (under opaque markers too).
# 6: a column more, the blocks of regular files (st_blocks).  7: character devices 0/0
# are whiteouts.  8: implied directories follow lower symlinks, as containerd's do.
MERGED_VERSION = 8
# Lookup is a hash table probe: every entry sits at most this many slots past its home
# slot, or the tree has no table (names crafted to collide) and lookup is a binary search.
LOOKUP_PROBES = 64


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
    blocks: int = 0  # 512-byte blocks its data file takes (st_blocks); 0 but for files


class Stat(NamedTuple):
    """What ``stat`` shows of one inode, and where its content lives: the part of a
    ``Node`` that FUSE's hot paths (lookup, getattr, readdir, read) need.  A tuple,
    because ``MergedTree.stat`` makes one in about a quarter of the time
    ``MergedTree.node`` takes to make a frozen ``Node`` (1.6 against 6.7 µs): 0.3 s less
    over the first walk of a 100k-entry image."""

    inode: int
    kind: EntryKind
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    rdev_major: int
    rdev_minor: int
    layer: int
    data: int
    blocks: int


_new_stat = functools.partial(tuple.__new__, Stat)  # Stat(*fields), minus a Python call


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
        "blocks",
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
        blocks: int = 0,
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
        self.blocks = blocks
        self.children: dict[str, _Build] | None = {} if kind is EntryKind.DIR else None


# Kind codes of the ``kind`` column; 0 marks an empty slot (inode 0, and the numbers that
# further names of a hardlinked inode used up: see _number).
_KINDS: tuple[EntryKind | None, ...] = (None, *EntryKind)
_KIND_CODE = {kind: code for code, kind in enumerate(_KINDS) if kind is not None}
_DIR = _KIND_CODE[EntryKind.DIR]
_FILE = _KIND_CODE[EntryKind.FILE]
_SYMLINK = _KIND_CODE[EntryKind.SYMLINK]

# One value per inode slot.  uid, gid and device numbers are 32-bit, as the kernel's are.
_SLOT_COLUMNS = (
    ("kind", "B"),
    ("mode", "H"),
    ("nlink", "I"),
    ("uid", "I"),
    ("gid", "I"),
    ("rdev_major", "I"),
    ("rdev_minor", "I"),
    ("layer", "i"),
    ("parent", "I"),  # directories: the parent directory's inode (the root's is itself)
    ("size", "q"),
    ("mtime_ns", "q"),
    ("data", "q"),
    ("blocks", "q"),
)
# Running offsets, one per slot and one more: slot i owns [off[i], off[i + 1]).
_OFFSET_COLUMNS = (
    ("child_off", "I"),  # into the entry table
    ("link_off", "I"),  # into the link blob
    ("xattr_off", "I"),  # into the xattr blob
)
_MAGIC = b"SNAPTREE"
# magic, version, byte order (0 little, 1 big), crc32 of everything after the header,
# reserved, then counts: slots, entries, bytes of names, links and xattrs, lookup slots.
_HEADER = struct.Struct("<8sIIIIQQQQQQ")
_BYTEORDER = 0 if sys.byteorder == "little" else 1
_XATTR = struct.Struct("<II")  # key length, value length; then key, value
_U32 = 1 << 32


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _dec(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class MergedTree:
    """The merged view of a layer chain: inodes, directory listings, where content lives.

    Columns, not objects: ``node`` makes a new ``Node`` (equal, not identical) on each
    call, and ``stat`` the smaller ``Stat`` FUSE needs.  ``children`` lists a directory in
    name order, which never changes for the life of the tree, so an index into it is a
    stable readdir offset (``scan`` resumes from one); ``lookup`` probes the hash table
    ``lookup_table`` builds (a binary search in name order where there is none).

    A tree built by ``merge`` and one read back from its cache file are the same columns.
    A cache file that passed ``read``'s size and checksum tests is taken to be what
    ``write`` wrote; should one still point outside itself, queries raise
    ``StoreCorrupt``, never read out of bounds.
    """

    def __init__(
        self,
        slots: dict[str, array[int]],
        child_inode: array[int],
        name_off: array[int],
        names: bytes,
        links: bytes,
        xattrs: bytes,
        table: array[int] | None = None,
    ):
        """Take over columns laid out as ``_number`` writes them (checked, cheaply).
        ``table``: the lookup table, as ``lookup_table`` builds it from these columns
        (built here when not given)."""
        self._kind = slots["kind"]
        self._mode = slots["mode"]
        self._nlink = slots["nlink"]
        self._uid = slots["uid"]
        self._gid = slots["gid"]
        self._major = slots["rdev_major"]
        self._minor = slots["rdev_minor"]
        self._layer = slots["layer"]
        self._parent = slots["parent"]
        self._size = slots["size"]
        self._mtime = slots["mtime_ns"]
        self._data = slots["data"]
        self._blocks = slots["blocks"]
        self._child_off = slots["child_off"]
        self._link_off = slots["link_off"]
        self._xattr_off = slots["xattr_off"]
        self._child_inode = child_inode
        self._name_off = name_off
        self._names = names
        self._links = links
        self._xattrs = xattrs
        n = len(self._kind)
        m = len(child_inode)
        if (
            n < 2
            or any(len(slots[c]) != n for c, _ in _SLOT_COLUMNS)
            or any(len(slots[c]) != n + 1 for c, _ in _OFFSET_COLUMNS)
            or len(name_off) != m + 1
            or self._kind[0] != 0
            or self._kind[ROOT_INODE] != _DIR
            or (self._child_off[0], self._child_off[n]) != (0, m)
            or (name_off[0], name_off[m]) != (0, len(names))
            or (self._link_off[0], self._link_off[n]) != (0, len(links))
            or (self._xattr_off[0], self._xattr_off[n]) != (0, len(xattrs))
        ):
            raise StoreCorrupt("merged tree: columns do not fit together")
        self._count = n - self._kind.count(0)
        if table is None:
            table = lookup_table(self._kind, self._child_off, name_off, names)
        elif len(table) & (len(table) - 1) or 0 < len(table) < 2 * m:
            raise StoreCorrupt("merged tree: the lookup table has a bad size")
        self._table = table

    # -- queries -------------------------------------------------------------------------

    def _code(self, inode: int) -> int:
        """The kind code of a live inode; KeyError for any other number."""
        if not 0 < inode < len(self._kind):
            raise KeyError(inode)
        code = self._kind[inode]
        if code == 0:
            raise KeyError(inode)
        if code >= len(_KINDS):
            raise StoreCorrupt(f"merged tree: inode {inode} has unknown kind {code}")
        return code

    def node(self, inode: int) -> Node:
        """A new ``Node`` for ``inode``; KeyError if the tree has no such inode."""
        code = self._code(inode)
        kind = _KINDS[code]
        assert kind is not None
        return Node(
            inode,
            kind,
            self._mode[inode],
            self._uid[inode],
            self._gid[inode],
            self._size[inode],
            self._mtime[inode],
            self._nlink[inode],
            _dec(self._links[self._link_off[inode] : self._link_off[inode + 1]])
            if code == _SYMLINK
            else "",
            self._major[inode],
            self._minor[inode],
            self._read_xattrs(inode),
            self._layer[inode],
            self._data[inode],
            self._blocks[inode],
        )

    def stat(self, inode: int) -> Stat:
        """``inode``'s ``Stat``; KeyError if the tree has no such inode.  (FUSE asks this
        once per entry of a walk: hence no helper calls.)"""
        kinds = self._kind
        if not 0 < inode < len(kinds) or not 0 < kinds[inode] < len(_KINDS):
            self._code(inode)  # raises the right error
        return _new_stat(
            (
                inode,
                _KINDS[kinds[inode]],
                self._mode[inode],
                self._nlink[inode],
                self._uid[inode],
                self._gid[inode],
                self._size[inode],
                self._mtime[inode],
                self._major[inode],
                self._minor[inode],
                self._layer[inode],
                self._data[inode],
                self._blocks[inode],
            )
        )

    def link(self, inode: int) -> str:
        """``inode``'s symlink target ("" for anything else), without making a ``Node``."""
        if self._code(inode) != _SYMLINK:
            return ""
        return _dec(self._links[self._link_off[inode] : self._link_off[inode + 1]])

    def xattrs(self, inode: int) -> tuple[tuple[str, bytes], ...]:
        """``inode``'s xattrs, in the layer's order, without making a ``Node``."""
        self._code(inode)
        return self._read_xattrs(inode)

    def _read_xattrs(self, inode: int) -> tuple[tuple[str, bytes], ...]:
        pos, end = self._xattr_off[inode], self._xattr_off[inode + 1]
        if pos == end:
            return ()
        blob = self._xattrs
        out: list[tuple[str, bytes]] = []
        while pos < end:
            if pos + _XATTR.size > end:
                raise StoreCorrupt(f"merged tree: inode {inode}: xattrs overrun their record")
            klen, vlen = _XATTR.unpack_from(blob, pos)
            pos += _XATTR.size
            if pos + klen + vlen > end:
                raise StoreCorrupt(f"merged tree: inode {inode}: xattrs overrun their record")
            out.append((_dec(blob[pos : pos + klen]), blob[pos + klen : pos + klen + vlen]))
            pos += klen + vlen
        return tuple(out)

    def _range(self, inode: int) -> tuple[int, int]:
        """The entry-table range of directory ``inode``; KeyError if it is not one."""
        if self._code(inode) != _DIR:
            raise KeyError(inode)
        lo, hi = self._child_off[inode], self._child_off[inode + 1]
        if not lo <= hi <= len(self._child_inode):
            raise StoreCorrupt(f"merged tree: directory {inode} has a bad child range")
        return lo, hi

    def _raw_name(self, entry: int) -> bytes:
        return self._names[self._name_off[entry] : self._name_off[entry + 1]]

    def _entry_inode(self, entry: int) -> int:
        inode = self._child_inode[entry]
        if not 0 < inode < len(self._kind) or self._kind[inode] == 0:
            raise StoreCorrupt(f"merged tree: entry {entry} names no inode ({inode})")
        return inode

    def lookup(self, parent: int, name: str) -> Node | None:
        """The child ``name`` of directory ``parent``; None if there is none (or ``parent``
        is no directory)."""
        inode = self.lookup_inode(parent, name)
        return None if inode is None else self.node(inode)

    def lookup_inode(self, parent: int, name: str) -> int | None:
        """``lookup``, giving the inode only, with no ``Node`` made."""
        return self.lookup_raw(parent, _enc(name))

    def lookup_raw(self, parent: int, raw: bytes) -> int | None:
        """The inode of the child of ``parent`` whose name is ``raw`` (``os.fsencode`` of
        it, as FUSE hands names over); None if there is none or ``parent`` is no directory.
        Constant time: a hash table probe."""
        try:
            lo, hi = self._range(parent)
        except KeyError:
            return None
        table = self._table
        if not table:
            return self._bisect(lo, hi, _dec(raw))
        names, name_off = self._names, self._name_off
        mask = len(table) - 1
        slot = zlib.crc32(raw, parent & 0xFFFFFFFF) & mask
        for _ in range(LOOKUP_PROBES):
            entry = table[slot] - 1
            if entry < 0:
                return None
            if lo <= entry < hi and names[name_off[entry] : name_off[entry + 1]] == raw:
                return self._entry_inode(entry)
            slot = (slot + 1) & mask
        return None  # every entry is within LOOKUP_PROBES of its home slot

    def _bisect(self, lo: int, hi: int, name: str) -> int | None:
        while lo < hi:
            mid = (lo + hi) // 2
            probe = _dec(self._raw_name(mid))
            if probe < name:
                lo = mid + 1
            elif probe > name:
                hi = mid
            else:
                return self._entry_inode(mid)
        return None

    def children(self, inode: int) -> tuple[list[str], list[int]]:
        """Names (sorted) and inodes of directory ``inode``; KeyError if it is none.  Built
        on each call: for one entry at a time use ``scan``."""
        lo, hi = self._range(inode)
        names = [_dec(self._raw_name(i)) for i in range(lo, hi)]
        return names, [self._entry_inode(i) for i in range(lo, hi)]

    def scan(self, inode: int, start: int = 0) -> Iterator[tuple[int, bytes, int]]:
        """(index, name as stored, child inode) of directory ``inode``'s children from
        index ``start`` on, in ``children`` order.  Names are ``os.fsencode`` of the
        ``str`` names (UTF-8, surrogateescape): what FUSE wants without a round trip."""
        lo, hi = self._range(inode)
        names, name_off, child_inode, kinds = (
            self._names,
            self._name_off,
            self._child_inode,
            self._kind,
        )
        for entry in range(lo + max(start, 0), hi):
            child = child_inode[entry]
            if not 0 < child < len(kinds) or kinds[child] == 0:
                self._entry_inode(entry)  # raises StoreCorrupt
            yield entry - lo, names[name_off[entry] : name_off[entry + 1]], child

    def parent(self, inode: int) -> int:
        """The parent of directory ``inode`` (the root is its own)."""
        self._range(inode)
        return self._parent[inode]

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
        seen: set[int] = set()  # directories: a crafted cache file could list one twice
        while stack:
            path, inode = stack.pop()
            node = self.node(inode)
            yield path, node
            if node.kind is EntryKind.DIR:
                if inode in seen:
                    raise StoreCorrupt(f"merged tree: directory {inode} is listed twice")
                seen.add(inode)
                lo, hi = self._range(inode)
                for entry in range(hi - 1, lo - 1, -1):
                    name = _dec(self._raw_name(entry))
                    stack.append((f"{path}/{name}" if path else name, self._entry_inode(entry)))

    def content_size(self) -> int:
        """Bytes of regular-file content, each hardlinked inode counted once."""
        return sum(s for k, s in zip(self._kind, self._size, strict=True) if k == _FILE)

    def __len__(self) -> int:
        """The number of inodes (a hardlinked one counts once)."""
        return self._count

    @property
    def max_inode(self) -> int:
        """The highest inode number (numbers below it may be unused)."""
        return len(self._kind) - 1

    # -- whole-tree views, for tests and debugging: each builds every record -----------------

    @property
    def nodes(self) -> list[Node | None]:
        """Index = inode: its ``Node``, or None for a number no inode has."""
        return [None if k == 0 else self.node(i) for i, k in enumerate(self._kind)]

    @property
    def dirs(self) -> dict[int, tuple[list[str], list[int]]]:
        """Directory inode -> ``children``."""
        return {i: self.children(i) for i, k in enumerate(self._kind) if k == _DIR}

    @property
    def parents(self) -> dict[int, int]:
        """Directory inode -> its parent's inode."""
        return {i: self._parent[i] for i, k in enumerate(self._kind) if k == _DIR}

    # -- cache file ------------------------------------------------------------------------

    def _sections(self) -> list[array[int] | bytes]:
        """Everything after the header, in file order."""
        slots: dict[str, array[int]] = {
            "kind": self._kind,
            "mode": self._mode,
            "nlink": self._nlink,
            "uid": self._uid,
            "gid": self._gid,
            "rdev_major": self._major,
            "rdev_minor": self._minor,
            "layer": self._layer,
            "parent": self._parent,
            "size": self._size,
            "mtime_ns": self._mtime,
            "data": self._data,
            "blocks": self._blocks,
            "child_off": self._child_off,
            "link_off": self._link_off,
            "xattr_off": self._xattr_off,
        }
        return [
            *(slots[c] for c, _ in _SLOT_COLUMNS),
            *(slots[c] for c, _ in _OFFSET_COLUMNS),
            self._child_inode,
            self._name_off,
            self._names,
            self._links,
            self._xattrs,
            self._table,
        ]

    def write(self, path: Path) -> None:
        """Write the cache file: to a temporary name, renamed over ``path`` when complete."""
        sections = self._sections()
        crc = 0
        for section in sections:
            crc = zlib.crc32(section, crc)
        header = _HEADER.pack(
            _MAGIC,
            MERGED_VERSION,
            _BYTEORDER,
            crc,
            0,
            len(self._kind),
            len(self._child_inode),
            len(self._names),
            len(self._links),
            len(self._xattrs),
            len(self._table),
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(header)
                for section in sections:
                    f.write(section)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def read(cls, path: Path) -> MergedTree:
        """Read a cache file; StoreCorrupt unless it is exactly what ``write`` wrote.

        The file: a header (``_HEADER``: magic, version, byte order, crc32, counts), then
        each column of ``_SLOT_COLUMNS`` and ``_OFFSET_COLUMNS`` as raw native-order
        arrays, the entry table (child inodes, name offsets), the name, link and xattr
        blobs, and the lookup table.  Its size must be what the counts say and its
        checksum must match, so a truncated, torn or scribbled-on file is refused (and
        rebuilt by ``open_tree``); a file of another byte order or version is refused the
        same way.
        """
        try:
            with open(path, "rb") as f:
                head = f.read(_HEADER.size)
                if len(head) != _HEADER.size:
                    raise StoreCorrupt(f"merged tree {path}: truncated header")
                magic, version, order, crc, _, n, m, n_names, n_links, n_xattrs, n_table = (
                    _HEADER.unpack(head)
                )
                if magic != _MAGIC or version != MERGED_VERSION:
                    raise StoreCorrupt(f"merged tree {path}: unknown version")
                if order != _BYTEORDER:
                    raise StoreCorrupt(f"merged tree {path}: written on another byte order")
                if not 2 <= n < _U32 or m >= _U32 or n_table > 4 * m + 2:
                    raise StoreCorrupt(f"merged tree {path}: bad counts")
                plan = [(c, t, n) for c, t in _SLOT_COLUMNS]
                plan += [(c, t, n + 1) for c, t in _OFFSET_COLUMNS]
                plan += [("child_inode", "I", m), ("name_off", "I", m + 1)]
                expected = _HEADER.size + n_names + n_links + n_xattrs
                expected += sum(array(t).itemsize * count for _, t, count in plan)
                expected += array("I").itemsize * n_table
                size = os.fstat(f.fileno()).st_size
                if size != expected:
                    raise StoreCorrupt(
                        f"merged tree {path}: {size} bytes where its header says {expected}"
                    )
                columns: dict[str, array[int]] = {}
                check = 0
                for name, typecode, count in plan:
                    column = array(typecode)
                    column.fromfile(f, count)
                    check = zlib.crc32(column, check)
                    columns[name] = column
                blobs = []
                for length in (n_names, n_links, n_xattrs):
                    blob = f.read(length)
                    if len(blob) != length:
                        raise StoreCorrupt(f"merged tree {path}: truncated")
                    check = zlib.crc32(blob, check)
                    blobs.append(blob)
                table = array("I")
                table.fromfile(f, n_table)
                check = zlib.crc32(table, check)
            if check != crc:
                raise StoreCorrupt(f"merged tree {path}: checksum mismatch")
            child_inode = columns.pop("child_inode")
            name_off = columns.pop("name_off")
            return cls(columns, child_inode, name_off, blobs[0], blobs[1], blobs[2], table)
        except StoreCorrupt:
            raise
        except (OSError, EOFError, ValueError, struct.error) as exc:
            raise StoreCorrupt(f"merged tree {path}: unreadable ({exc})") from exc


def lookup_table(
    kinds: array[int], child_off: array[int], name_off: array[int], names: bytes
) -> array[int]:
    """The lookup table over every directory's entries: open addressing, linear probing.

    Slot ``crc32(name, parent) & mask`` (or the next free one) holds entry + 1; 0 is free.
    The table has a power-of-two size at least twice the entries, so it is at most half
    full.  Should any entry land more than LOOKUP_PROBES slots past its home (names made
    to collide: crc32 is no defence against a chosen name), there is no table: an empty
    one, and lookups bisect.
    """
    entries = len(name_off) - 1
    size = 1
    while size < 2 * entries:
        size *= 2
    table = array("I", bytes(4 * size)) if entries else array("I")
    mask = size - 1
    crc32 = zlib.crc32
    for directory, kind in enumerate(kinds):
        if kind != _DIR:
            continue
        seed = directory & 0xFFFFFFFF
        for entry in range(child_off[directory], child_off[directory + 1]):
            slot = crc32(names[name_off[entry] : name_off[entry + 1]], seed) & mask
            for _ in range(LOOKUP_PROBES):
                if not table[slot]:
                    table[slot] = entry + 1
                    break
                slot = (slot + 1) & mask
            else:
                return array("I")
    return table


# An implied directory with no lower one to take after: mode, uid, gid, mtime_ns, xattrs.
IMPLIED_DEFAULTS: tuple[int, int, int, int, tuple[tuple[str, bytes], ...]] = (
    0o755,
    0,
    0,
    0,
    (),
)


def copied_xattrs(xattrs: tuple[tuple[str, bytes], ...]) -> tuple[tuple[str, bytes], ...]:
    """The xattrs containerd copies from a lower directory to an implied one: all but
    ``trusted.*`` (``copyUpXAttrs``)."""
    return tuple(kv for kv in xattrs if not kv[0].startswith("trusted."))


def implied_meta(
    tocs: Sequence[Toc], layer: int, path: str
) -> tuple[int, int, int, int, tuple[tuple[str, bytes], ...]]:
    """Mode, uid, gid, mtime_ns and xattrs of directory ``path`` that layer ``layer``
    (index into ``tocs``, base = 0) implies: what containerd's ``mkparent`` copies from
    the layers below (the module docstring has the rule).  A few binary searches per
    lower layer; only asked where the view below has no directory at ``path``."""
    for lower in range(layer - 1, -1, -1):
        toc = tocs[lower]
        found = layer_path(toc, path)
        if not found:
            return IMPLIED_DEFAULTS  # containerd fails, or a link to the layer's root
        e = toc.find(found)
        if e is None:
            continue
        if e.kind is not EntryKind.DIR:
            return IMPLIED_DEFAULTS  # replaced or whited out there
        if e.implied:
            path = found  # that layer copied it from further down: look there
            continue
        return e.mode, e.uid, e.gid, e.mtime_ns, copied_xattrs(e.xattrs)
    return IMPLIED_DEFAULTS


# continuity's RootPath gives up after this many symlinks (and containerd with it).
MAX_LINKS = 255


def layer_path(toc: Toc, path: str) -> str | None:
    """``path`` as containerd's ``mkparent`` finds it in one lower layer, with continuity's
    ``fs.RootPath``: every symlink on the way, the last component's too, followed within
    the layer (``..`` and absolute targets bounded by its root), a missing component
    taken as it is.  "" for the layer's root; None where containerd fails: a component
    that is no directory (ENOTDIR), or more than MAX_LINKS links."""
    parts = path.split("/")
    links = i = 0
    while i < len(parts):
        e = toc.find("/".join(parts[: i + 1]))
        if e is None:
            break  # nor is anything below it: the toc lists every entry's parents
        if e.kind is EntryKind.SYMLINK:
            links += 1
            if links > MAX_LINKS:
                return None
            joined = [] if e.link.startswith("/") else parts[:i]
            for part in e.link.split("/"):  # filepath.Join: lexical, never above the root
                if part == "..":
                    if joined:
                        joined.pop()
                elif part and part != ".":
                    joined.append(part)
            parts = joined + parts[i + 1 :]
            i = 0
            continue
        if e.kind is not EntryKind.DIR and i + 1 < len(parts):
            return None
        i += 1
    return "/".join(parts)


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
            if e.kind is EntryKind.WHITEOUT or (
                e.kind is EntryKind.CHAR and not e.rdev_major and not e.rdev_minor
            ):  # TocEntry.is_whiteout, inlined
                if existing is not None:
                    drop(path, existing)
                    del parent.children[name]
                continue
            if e.kind is EntryKind.DIR and existing is not None and existing.kind is EntryKind.DIR:
                if not e.implied:
                    _set_meta(existing, e, layer)
                elif existing.xattrs:
                    kept = copied_xattrs(existing.xattrs)
                    if kept != existing.xattrs:  # this layer's copy of the directory shows
                        existing.xattrs, existing.layer, existing.data = kept, layer, e.inode
                if e.opaque:
                    _clear_children(existing, path, drop)
                continue
            if existing is not None:
                drop(path, existing)
            node = _Build(e.kind)
            if e.kind is not EntryKind.DIR or not e.implied:
                _set_meta(node, e, layer)
            elif layer:
                meta = implied_meta(tocs, layer, path)
                node.mode, node.uid, node.gid, node.mtime_ns, node.xattrs = meta
            node.size, node.link, node.blocks = e.size, e.link, e.blocks
            node.major, node.minor, node.data = e.rdev_major, e.rdev_minor, e.inode
            node.layer = layer
            parent.children[name] = node
            by_path[path] = node
    return _number(root)


def _set_meta(node: _Build, e: object, layer: int) -> None:
    from ..store.toc import TocEntry

    assert isinstance(e, TocEntry)
    node.mode = SYMLINK_MODE if e.kind is EntryKind.SYMLINK else e.mode
    node.uid, node.gid = e.uid, e.gid
    node.mtime_ns, node.xattrs, node.layer = e.mtime_ns, e.xattrs, layer


def _clear_children(node: _Build, path: str, drop: object) -> None:
    assert node.children is not None
    for name, child in list(node.children.items()):
        drop(f"{path}/{name}" if path else name, child)  # type: ignore[operator]
    node.children.clear()


def _number(root: _Build) -> MergedTree:
    """Give inode numbers in depth-first name order; hardlinks share their first number."""
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
    # Second pass: the columns, slot 0 (no inode) first.  A slot whose number went to
    # the first name of its hardlink group stays empty (kind 0).
    slots = {c: array(t, [0]) for c, t in _SLOT_COLUMNS}
    offsets = {c: array(t, [0, 0]) for c, t in _OFFSET_COLUMNS}
    child_inode = array("I")
    name_off = array("I", [0])
    names, links, xattrs = bytearray(), bytearray(), bytearray()
    try:
        for slot, (b, parent_inode) in enumerate(order, start=1):
            if parent_inode == -1:
                row = (0,) * len(_SLOT_COLUMNS)
            else:
                if b.kind is EntryKind.DIR:
                    assert b.children is not None
                    for name in sorted(b.children):
                        names += _enc(name)
                        name_off.append(len(names))
                        child_inode.append(numbers[id(b.children[name])])
                    nlink = 2 + sum(1 for c in b.children.values() if c.kind is EntryKind.DIR)
                else:
                    nlink = group_names[slot]
                    parent_inode = 0
                blocks = 0
                if b.kind is EntryKind.FILE:
                    size, blocks = b.size, b.blocks
                elif b.kind is EntryKind.SYMLINK:
                    target = _enc(b.link)
                    links += target
                    size = len(target)  # as lstat reports a symlink's size
                else:
                    size = 0
                for xattr_name, xattr_value in b.xattrs:
                    raw_key = _enc(xattr_name)
                    xattrs += _XATTR.pack(len(raw_key), len(xattr_value)) + raw_key + xattr_value
                row = (
                    _KIND_CODE[b.kind],
                    b.mode,
                    nlink,
                    b.uid,
                    b.gid,
                    b.major,
                    b.minor,
                    b.layer,
                    parent_inode,
                    size,
                    b.mtime_ns,
                    b.data,
                    blocks,
                )
            for (column, _), field in zip(_SLOT_COLUMNS, row, strict=True):
                slots[column].append(field)
            offsets["child_off"].append(len(child_inode))
            offsets["link_off"].append(len(links))
            offsets["xattr_off"].append(len(xattrs))
        for blob in (names, links, xattrs):
            if len(blob) >= _U32:
                raise OverflowError(f"{len(blob)} bytes of names, links or xattrs")
    except OverflowError as exc:
        # Only a hostile layer gets here: 64-bit sizes or times, 32-bit owners and device
        # numbers, as the kernel has them, are what a merged tree can show.
        raise UnsafeArchive(f"merged tree: a value too large to show ({exc})") from exc
    return MergedTree(
        {**slots, **offsets}, child_inode, name_off, bytes(names), bytes(links), bytes(xattrs)
    )
