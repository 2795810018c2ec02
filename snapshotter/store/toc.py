"""The per-layer table of contents (toc): what a layer says, entry by entry.

A snapshot is a directory holding the toc and a ``data/`` folder with the contents of the
layer's regular files, one file per inode.  The toc, not the host file system, is the truth
about names, types, owners, modes, device numbers, xattrs and nanosecond mtimes, so an
unprivileged store keeps everything the layer said.  Names from the layer never become host
paths: data files are named by the toc's own inode numbers.

Whiteouts (``.wh.NAME``) are entries of kind ``WHITEOUT`` at the path they hide; an opaque
marker (``.wh..wh..opq``) sets ``opaque`` on its directory (image-spec layer.md#whiteouts).
"""

from __future__ import annotations

import base64
import contextlib
import enum
import gc
import json
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

import zstandard

from ..errors import StoreCorrupt

TOC_NAME = "toc.json.zst"
DATA_DIR = "data"
# 1: 13 columns.  2: a 14th, the content digest of regular files (sha256 computed while
# unpacking).  3: a 15th, the 512-byte blocks the data file takes on disk.  Older tocs
# are still read: their entries have no digest (version 1) and the blocks a file of
# their size takes without holes (``blocks_of``).
TOC_VERSION = 3
TOC_VERSIONS = (1, 2, 3)


class EntryKind(enum.Enum):
    """What an entry is; the value is the letter ``ls -l`` (and the toc file) uses."""

    FILE = "-"
    DIR = "d"
    SYMLINK = "l"
    CHAR = "c"
    BLOCK = "b"
    FIFO = "p"
    WHITEOUT = "w"


# A symlink's permission bits on Linux, whatever its tar header says: symlink(2) takes no
# mode and there is no lchmod, so every extraction (and overlayfs) shows lrwxrwxrwx.
SYMLINK_MODE = 0o777

# Bits of TocEntry.flags
FLAG_OPAQUE = 1  # directory hides all lower children (.wh..wh..opq, or re-created in-layer)
FLAG_IMPLIED = 2  # directory not in the tar, only implied by a child's path


@dataclass(frozen=True, slots=True)
class TocEntry:
    """One name in a layer, after the layer's own replacements were applied."""

    path: str  # relative POSIX path inside the image; "" is the root directory
    kind: EntryKind
    mode: int  # permission bits, setuid/setgid/sticky included (07777); symlinks 0777
    uid: int
    gid: int
    size: int  # bytes of content (regular files), 0 otherwise
    mtime_ns: int
    inode: int  # per-layer inode number; hardlinks share it; names data/<inode:x>
    link: str = ""  # symlink target, verbatim
    rdev_major: int = 0
    rdev_minor: int = 0
    flags: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = field(default=())
    digest: str = ""  # regular files with content: "sha256:<hex>" of it ("" if not recorded)
    # Regular files: 512-byte blocks the data file takes (st_blocks, holes not counted),
    # what ``stat`` and ``du`` of the view show; 0 for anything else.
    blocks: int = 0

    @property
    def opaque(self) -> bool:
        return bool(self.flags & FLAG_OPAQUE)

    @property
    def implied(self) -> bool:
        return bool(self.flags & FLAG_IMPLIED)

    @property
    def is_whiteout(self) -> bool:
        """Whether the entry hides the lower ones at its path and shows nothing itself: a
        whiteout, or a character device 0/0.  That is how overlayfs stores a whiteout, so
        one a layer ships (containerd, like tar, makes it as it is) is one to every
        overlay-based runtime."""
        kind = self.kind
        return kind is EntryKind.WHITEOUT or (
            kind is EntryKind.CHAR and not self.rdev_major and not self.rdev_minor
        )

    @property
    def has_data(self) -> bool:
        """Whether a data file holds this entry's content (empty files have none)."""
        return self.kind is EntryKind.FILE and self.size > 0

    def data_name(self) -> str:
        return f"{self.inode:x}"

    def to_row(self) -> list[object]:
        return [
            self.path,
            self.kind.value,
            self.mode,
            self.uid,
            self.gid,
            self.size,
            self.mtime_ns,
            self.inode,
            self.link,
            self.rdev_major,
            self.rdev_minor,
            self.flags,
            [[k, base64.b64encode(v).decode()] for k, v in self.xattrs] if self.xattrs else 0,
            self.digest,
            self.blocks,
        ]

    @classmethod
    def from_row(cls, row: list[object]) -> TocEntry:
        if len(row) == 13:  # version 1
            row = [*row, ""]
        if len(row) == 14:  # version 2
            row = [*row, None]
        (
            path,
            kind,
            mode,
            uid,
            gid,
            size,
            mtime_ns,
            inode,
            link,
            major,
            minor,
            flags,
            xattrs,
            digest,
            blocks,
        ) = row
        entry_kind = EntryKind(kind)
        if blocks is None:
            blocks = blocks_of(entry_kind, int(size))  # type: ignore[call-overload]
        elif type(blocks) is not int or blocks < 0:
            raise ValueError(f"blocks {blocks!r} of {path!r}")
        return cls(
            path=str(path),
            kind=entry_kind,
            mode=int(mode),  # type: ignore[call-overload]
            uid=int(uid),  # type: ignore[call-overload]
            gid=int(gid),  # type: ignore[call-overload]
            size=int(size),  # type: ignore[call-overload]
            mtime_ns=int(mtime_ns),  # type: ignore[call-overload]
            inode=int(inode),  # type: ignore[call-overload]
            link=str(link),
            rdev_major=int(major),  # type: ignore[call-overload]
            rdev_minor=int(minor),  # type: ignore[call-overload]
            flags=int(flags),  # type: ignore[call-overload]
            xattrs=tuple((str(k), base64.b64decode(str(v))) for k, v in xattrs)  # type: ignore[attr-defined]
            if xattrs
            else (),
            digest=str(digest),
            blocks=blocks,
        )


def blocks_of(kind: EntryKind, size: int) -> int:
    """The blocks of a toc that does not record them (before version 3): what content of
    ``size`` bytes takes on disk without holes (``st_blocks`` counts 512-byte units)."""
    return (size + 511) // 512 if kind is EntryKind.FILE else 0


_path_key = attrgetter("path")


@dataclass(frozen=True, slots=True)
class Toc:
    """All entries of one layer, sorted by path; the layer's diff_id names it."""

    diff_id: str
    entries: tuple[TocEntry, ...]

    def __iter__(self) -> Iterator[TocEntry]:
        return iter(self.entries)

    def by_path(self) -> dict[str, TocEntry]:
        return {e.path: e for e in self.entries}

    def find(self, path: str) -> TocEntry | None:
        """The entry of ``path``, or None: a binary search (entries are sorted by path)."""
        entries = self.entries
        i = bisect_left(entries, path, key=_path_key)
        if i < len(entries) and entries[i].path == path:
            return entries[i]
        return None

    @property
    def size(self) -> int:
        """Bytes of content, each hardlinked inode counted once."""
        seen: dict[int, int] = {}
        for e in self.entries:
            if e.kind is EntryKind.FILE:
                seen[e.inode] = e.size
        return sum(seen.values())

    def write(self, path: Path) -> None:
        doc = {
            "version": TOC_VERSION,
            "diff_id": self.diff_id,
            "entries": [e.to_row() for e in self.entries],
        }
        raw = json.dumps(doc, separators=(",", ":")).encode()
        path.write_bytes(zstandard.ZstdCompressor(level=3).compress(raw))

    @classmethod
    def read(cls, path: Path) -> Toc:
        diff_id, rows = _read_rows(path)
        try:
            with _no_gc():
                return cls(diff_id, _entries(rows))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreCorrupt(f"toc {path}: unreadable ({exc})") from exc


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector off while a toc is read: the rows and entries it
    makes are no garbage, yet every few hundred allocations the collector would walk them
    all again, which nearly doubles the time a 100k-entry toc takes to read."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_KIND_OF = {kind.value: kind for kind in EntryKind}
# The slot setters of TocEntry, which a frozen dataclass's __init__ reaches through
# object.__setattr__, one Python-level call per field.
(
    _set_path,
    _set_kind,
    _set_mode,
    _set_uid,
    _set_gid,
    _set_size,
    _set_mtime,
    _set_inode,
    _set_link,
    _set_major,
    _set_minor,
    _set_flags,
    _set_xattrs,
    _set_digest,
    _set_blocks,
) = (getattr(TocEntry, name).__set__ for name in TocEntry.__slots__)
_FILE = EntryKind.FILE


def _entries(rows: list[list[object]]) -> tuple[TocEntry, ...]:
    """``TocEntry.from_row`` of every row, in a third of its time on a 100k-entry toc.

    A row that is exactly what ``to_row`` writes (version 3, or 2 with no blocks, every
    field of its own type, no xattrs) is set slot by slot; any other row (version 1,
    xattrs, or something a damaged file holds) goes through ``from_row``, which converts
    it or raises.
    """
    new = object.__new__
    kinds = _KIND_OF
    out: list[TocEntry] = []
    append = out.append
    for row in rows:
        if type(row) is not list:
            append(TocEntry.from_row(row))
            continue
        n = len(row)
        if n == 15:
            (
                path,
                kind,
                mode,
                uid,
                gid,
                size,
                mtime_ns,
                inode,
                link,
                major,
                minor,
                flags,
                x,
                digest,
                blocks,
            ) = row
            if type(blocks) is not int or blocks < 0:
                append(TocEntry.from_row(row))
                continue
        elif n == 14:  # version 2: no blocks recorded
            (
                path,
                kind,
                mode,
                uid,
                gid,
                size,
                mtime_ns,
                inode,
                link,
                major,
                minor,
                flags,
                x,
                digest,
            ) = row
            blocks = -1
        else:
            append(TocEntry.from_row(row))
            continue
        k = kinds.get(kind) if type(kind) is str else None
        if (
            k is None
            or type(path) is not str
            or type(mode) is not int
            or type(uid) is not int
            or type(gid) is not int
            or type(size) is not int
            or type(mtime_ns) is not int
            or type(inode) is not int
            or type(link) is not str
            or type(major) is not int
            or type(minor) is not int
            or type(flags) is not int
            or type(x) is not int
            or x != 0
            or type(digest) is not str
        ):
            append(TocEntry.from_row(row))
            continue
        e = new(TocEntry)
        _set_path(e, path)
        _set_kind(e, k)
        _set_mode(e, mode)
        _set_uid(e, uid)
        _set_gid(e, gid)
        _set_size(e, size)
        _set_mtime(e, mtime_ns)
        _set_inode(e, inode)
        _set_link(e, link)
        _set_major(e, major)
        _set_minor(e, minor)
        _set_flags(e, flags)
        _set_xattrs(e, ())
        _set_digest(e, digest)
        if blocks < 0:
            blocks = (size + 511) // 512 if k is _FILE else 0  # blocks_of, inlined
        _set_blocks(e, blocks)
        append(e)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class TocColumns:
    """A toc read as columns, without a ``TocEntry`` per entry: index ``i`` of every list
    is entry ``i`` (sorted by path, as ``Toc.entries``).  For questions over every entry of
    a large layer (``wasted``, ``du --by-layer``): a 100k-entry toc reads in about a third
    of the time ``Toc.read`` takes, most of which is making the frozen entries.  Only the
    columns those questions need are kept."""

    diff_id: str
    path: list[str]
    kind: list[EntryKind]
    mode: list[int]
    uid: list[int]
    gid: list[int]
    size: list[int]
    inode: list[int]
    link: list[str]
    flags: list[int]
    digest: list[str]  # "" where the toc records none (all of a version 1 toc)

    def __len__(self) -> int:
        return len(self.path)

    @classmethod
    def read(cls, path: Path) -> TocColumns:
        diff_id, rows = _read_rows(path)
        kinds = _KIND_OF
        try:
            lengths = set(map(len, rows))
            if not lengths <= {13, 14, 15}:
                raise ValueError("a row of the wrong length")
            strs = [[r[c] for r in rows] for c in (0, 8)]
            if 13 not in lengths:
                strs.append([r[13] for r in rows])
            else:  # version 1 rows have no digest
                strs.append([r[13] if len(r) > 13 else "" for r in rows])
            ints = [[r[c] for r in rows] for c in (2, 3, 4, 5, 7, 11)]
            # Checked in bulk: one test per column, not one call per value.
            if not all(set(map(type, col)) <= {str} for col in strs) or not all(
                set(map(type, col)) <= {int} for col in ints
            ):
                raise TypeError("a column of the wrong type")
            mode, uid, gid, size, inode, flags = ints
            return cls(
                diff_id,
                path=strs[0],  # type: ignore[arg-type]
                kind=[kinds[r[1]] for r in rows],  # type: ignore[index]
                mode=mode,  # type: ignore[arg-type]
                uid=uid,  # type: ignore[arg-type]
                gid=gid,  # type: ignore[arg-type]
                size=size,  # type: ignore[arg-type]
                inode=inode,  # type: ignore[arg-type]
                link=strs[1],  # type: ignore[arg-type]
                flags=flags,  # type: ignore[arg-type]
                digest=strs[2],  # type: ignore[arg-type]
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreCorrupt(f"toc {path}: unreadable ({exc})") from exc


def _read_rows(path: Path) -> tuple[str, list[list[object]]]:
    """A toc file's diff_id and its rows (``TocEntry.to_row``'s columns)."""
    try:
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
        with _no_gc():
            doc = json.loads(raw)
        if doc.get("version") not in TOC_VERSIONS:
            raise StoreCorrupt(f"toc {path}: unknown version {doc.get('version')!r}")
        rows = doc["entries"]
        if not isinstance(rows, list) or not set(map(type, rows)) <= {list}:
            raise StoreCorrupt(f"toc {path}: unreadable (entries are not rows)")
        return str(doc["diff_id"]), rows
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zstandard.ZstdError) as exc:
        raise StoreCorrupt(f"toc {path}: unreadable ({exc})") from exc


def sorted_entries(entries: Iterable[TocEntry]) -> tuple[TocEntry, ...]:
    return tuple(sorted(entries, key=lambda e: e.path))
