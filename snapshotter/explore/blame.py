"""Which layer made a path what it is: its story through the layers, from the tocs alone.

``trace`` walks the layers base first and follows one path's state with the rules
``view/merge.py`` applies to whole trees, narrowed to the path and its ancestors:

- an entry at the path writes it: ``added`` when nothing was there, ``modified`` when
  something was (a non-directory always replaces: a row even with equal content); a
  directory over a directory takes the new owner, mode, mtime and xattrs and keeps its
  children: a row when one of them changed (or it is opaque: its lower children go);
- a whiteout at the path removes it: ``deleted (whiteout)``;
- an ancestor's entry can remove it: a whiteout (``deleted (whiteout)``), an opaque
  directory (``deleted (opaque directory)``), or a non-directory replacing the directory
  (``replaced``).  The same layer may then write the path again: ``modified``.

A directory entry that is only implied by a child's path (``TocEntry.implied``) carries no
metadata of its own: when the path already is a directory it changes nothing and makes no
row (unless the directory had ``trusted.*`` xattrs, which the layer's copy drops).  It does
change the path when nothing, or a non-directory, was there before (merge gives it what
containerd's ``mkparent`` copies from a lower layer, see ``merge.implied_meta``, or 0755
root:root): that is a row, marked implied.

The test suite checks that the state ``trace`` ends with is the merged tree's, path by
path, on random layer stacks, so blame and the mount never disagree.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ..store.toc import SYMLINK_MODE, EntryKind, Toc, TocEntry
from ..text import kind_name, one_line
from ..view.merge import Node, copied_xattrs, implied_meta
from .image import StoredImage, display_path, normalize_path


class Action(enum.Enum):
    """What a layer did to a path; the value is what tables and ``--json`` show."""

    ADDED = "added"
    MODIFIED = "modified"
    WHITEOUT = "deleted (whiteout)"
    OPAQUE = "deleted (opaque directory)"
    REPLACED = "replaced"

    @property
    def removes(self) -> bool:
        return self in (Action.WHITEOUT, Action.OPAQUE, Action.REPLACED)


@dataclass(frozen=True, slots=True)
class Version:
    """A path as the merged view has it after some layer, fields as ``Node`` has them."""

    layer: int  # number (1 = base) of the layer whose entry gave it; 0: the made-up root
    kind: EntryKind
    mode: int  # permission bits (07777)
    uid: int
    gid: int
    size: int  # regular files: bytes of content; symlinks: bytes of the target; else 0
    mtime_ns: int
    link: str  # symlink target, verbatim
    rdev_major: int
    rdev_minor: int
    xattrs: tuple[tuple[str, bytes], ...]
    inode: int  # that layer's toc inode: names the content; hardlinks share it
    digest: str  # "sha256:..." of a regular file's content; "" for anything else


@dataclass(frozen=True, slots=True)
class Change:
    """One layer that changed the path: one row of ``blame``."""

    layer: int  # number, 1 = base
    action: Action
    version: Version | None  # the path after this layer; None when it removed the path
    cause: str  # the path whose entry did it: the path itself or an ancestor
    implied: bool  # the layer's entry is a directory implied by a child's path
    opaque: bool  # the path's own entry is an opaque directory over a lower directory
    same_content: bool  # written again as it was: a file's digest, a symlink's target
    hardlinks: tuple[str, ...]  # other paths of the same toc inode in this layer
    created_by: str  # the history entry of the layer ("" when it has none)


@dataclass(frozen=True, slots=True)
class Trace:
    """A path's changes, base layer first, and the state they leave."""

    path: str
    changes: tuple[Change, ...]
    final: Version | None


@dataclass(frozen=True, slots=True)
class Shown:
    """What the merged view shows at a path."""

    node: Node
    digest: str  # content digest of a regular file, else ""
    hardlinks: tuple[str, ...]  # the other names of the same inode in the view


@dataclass(frozen=True, slots=True)
class Blame:
    path: str
    changes: tuple[Change, ...]
    view: Shown | None  # None: the merged view has nothing at the path


DigestOf = Callable[[int, TocEntry], str]  # (layer number, regular-file entry) -> digest

_ROOT = Version(0, EntryKind.DIR, 0o755, 0, 0, 0, 0, "", 0, 0, (), 0, "")


def toc_entry(toc: Toc, path: str) -> TocEntry | None:
    """The entry of ``path`` in ``toc`` (entries are sorted by path), or None."""
    return toc.find(path)


def hardlinks_of(toc: Toc, entry: TocEntry) -> tuple[str, ...]:
    """The other paths of ``entry``'s toc inode in ``toc`` (non-directories only)."""
    if entry.kind in (EntryKind.DIR, EntryKind.WHITEOUT):
        return ()
    inode, path = entry.inode, entry.path
    return tuple(
        e.path
        for e in toc.entries
        if e.inode == inode
        and e.path != path
        and e.kind is not EntryKind.DIR
        and e.kind is not EntryKind.WHITEOUT
    )


def _new_version(entry: TocEntry, number: int, digest_of: DigestOf, tocs: Sequence[Toc]) -> Version:
    """What merge makes of an entry that starts a new node (nothing, or a non-directory,
    or a removed directory was there); ``tocs`` are the layers up to ``number``."""
    xattrs: tuple[tuple[str, bytes], ...]
    if entry.kind is EntryKind.DIR and entry.implied:
        mode, uid, gid, mtime_ns, xattrs = implied_meta(tocs, number - 1, entry.path)
    else:
        mode, uid, gid, mtime_ns, xattrs = (
            SYMLINK_MODE if entry.kind is EntryKind.SYMLINK else entry.mode,
            entry.uid,
            entry.gid,
            entry.mtime_ns,
            entry.xattrs,
        )
    if entry.kind is EntryKind.FILE:
        size, digest = entry.size, digest_of(number, entry)
    elif entry.kind is EntryKind.SYMLINK:
        size, digest = len(entry.link.encode("utf-8", "surrogateescape")), ""
    else:
        size, digest = 0, ""
    return Version(
        number,
        entry.kind,
        mode,
        uid,
        gid,
        size,
        mtime_ns,
        entry.link,
        entry.rdev_major,
        entry.rdev_minor,
        xattrs,
        entry.inode,
        digest,
    )


def _ancestors(path: str) -> list[str]:
    """The root and every directory above ``path``, root first."""
    if not path:
        return []
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts))]


def trace(
    tocs: Sequence[Toc],
    path: str,
    digest_of: DigestOf,
    created_by: Sequence[str] = (),
) -> Trace:
    """The changes the layers ``tocs`` (base first; layer n is ``tocs[n - 1]``) make to
    ``path`` (relative, normalized; "" is the root) and the state they leave."""
    state: Version | None = _ROOT if path == "" else None
    ancestors = _ancestors(path)
    changes: list[Change] = []
    for number, toc in enumerate(tocs, start=1):
        before = state
        removal: tuple[Action, str] | None = None
        if state is not None:
            for above in ancestors:
                e = toc_entry(toc, above)
                if e is None:
                    continue
                if e.is_whiteout:
                    removal = (Action.WHITEOUT, above)
                elif e.kind is not EntryKind.DIR:
                    removal = (Action.REPLACED, above)
                elif e.opaque:
                    removal = (Action.OPAQUE, above)
                if removal is not None:
                    state = None
                    break
        entry = toc_entry(toc, path)
        written = False  # the layer's own entry set the path's state
        opaque = False
        if entry is not None:
            if entry.is_whiteout:
                if state is not None:
                    state, removal = None, (Action.WHITEOUT, path)
            elif entry.kind is EntryKind.DIR and state is not None and state.kind is EntryKind.DIR:
                opaque = entry.opaque
                if not entry.implied:
                    # Merge takes the entry's metadata (and its layer) either way; a row
                    # only when that changed something, or the lower children went.
                    meta = (entry.mode, entry.uid, entry.gid, entry.mtime_ns, entry.xattrs)
                    written = opaque or meta != (
                        state.mode,
                        state.uid,
                        state.gid,
                        state.mtime_ns,
                        state.xattrs,
                    )
                    state = replace(
                        state,
                        layer=number,
                        mode=entry.mode,
                        uid=entry.uid,
                        gid=entry.gid,
                        mtime_ns=entry.mtime_ns,
                        xattrs=entry.xattrs,
                    )
                else:
                    # No metadata of its own: the layer's copy of the lower directory,
                    # which drops trusted.* xattrs (merge.copied_xattrs).
                    kept = copied_xattrs(state.xattrs)
                    if kept != state.xattrs:
                        state = replace(state, layer=number, xattrs=kept)
                        written = True
                    elif opaque:
                        written = True  # the lower children went
            else:
                state = _new_version(entry, number, digest_of, tocs)
                written = True
        action: Action | None = None
        if before is None and state is not None:
            action = Action.ADDED
        elif before is not None and state is None:
            assert removal is not None
            action = removal[0]
        elif before is not None and state is not None and (written or removal is not None):
            action = Action.MODIFIED
        if action is None:
            continue
        same = (
            state is not None
            and before is not None
            and state.kind is before.kind
            and (
                (state.kind is EntryKind.FILE and state.digest == before.digest)
                or (state.kind is EntryKind.SYMLINK and state.link == before.link)
            )
        )
        changes.append(
            Change(
                layer=number,
                action=action,
                version=state,
                cause=removal[1] if removal is not None and state is None else path,
                implied=entry is not None and entry.kind is EntryKind.DIR and entry.implied,
                opaque=opaque and before is not None and before.kind is EntryKind.DIR,
                same_content=same,
                hardlinks=hardlinks_of(toc, entry) if entry is not None and written else (),
                created_by=created_by[number - 1] if number <= len(created_by) else "",
            )
        )
    return Trace(path, tuple(changes), state)


# -- over a stored image ---------------------------------------------------------------------


def image_trace(image: StoredImage, path: str, upto: int | None = None) -> Trace:
    """``trace`` of ``path`` over the image's first ``upto`` layers (default: all)."""
    n = len(image.layers) if upto is None else image.check_upto(upto)
    return trace(
        [image.toc(i) for i in range(1, n + 1)],
        normalize_path(path),
        image.entry_digest,
        [layer.created_by for layer in image.layers[:n]],
    )


def removal(image: StoredImage, path: str, upto: int | None = None) -> Change | None:
    """The change that removed ``path`` from the view as of layer ``upto``, if some layer
    up to it had the path and a later one (up to ``upto``) removed it; else None."""
    found = image_trace(image, path, upto)
    if found.final is None and found.changes and found.changes[-1].version is None:
        return found.changes[-1]
    return None


def shown(image: StoredImage, path: str, upto: int | None = None) -> Shown | None:
    """What the merged view (as of layer ``upto``) shows at ``path`` (symlinks not
    followed), with the names it shares its inode with."""
    tree = image.view(upto).tree
    node = tree.resolve(path)
    if node is None:
        return None
    partners: tuple[str, ...] = ()
    if node.kind is not EntryKind.DIR and node.nlink > 1 and node.layer >= 0:
        entry = toc_entry(image.toc(node.layer + 1), path)
        if entry is not None:
            partners = tuple(
                p
                for p in hardlinks_of(image.toc(node.layer + 1), entry)
                if (other := tree.resolve(p)) is not None and other.inode == node.inode
            )
    return Shown(node, image.node_digest(node), partners)


def blame(image: StoredImage, path: str) -> Blame:
    """Every layer that changed ``path`` (relative, normalized; no symlink followed) and
    what the merged view shows there."""
    path = normalize_path(path)
    found = image_trace(image, path)
    return Blame(path, found.changes, shown(image, path))


# -- rows for people -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlameRow:
    """One line of ``blame``'s table, as values; the caller escapes and pads them.

    The rows of ``blame_rows`` are what the command prints and what the browser shows:
    one per change, base layer first, then one for the merged view."""

    layer: str  # the layer's number ("3"), or "view" for the last row
    action: str  # the ACTION cell with its [notes]; names verbatim, not escaped
    size: int | None  # bytes of a regular file; None for anything else (printed "-")
    digest: str  # the first 12 hex digits of a file's content digest, or "-"
    created_by: str  # the layer's history, one line; "(missing)" without history; view: ""


def _short(digest: str) -> str:
    return digest.partition(":")[2][:12] if digest else "-"


def _notes(change: Change, path: str, before: Version | None) -> list[str]:
    """What the ACTION cell says in [brackets]; ``before``: the path's previous version."""
    notes: list[str] = []
    if change.cause != path:
        cause = display_path(change.cause)
        if change.action is Action.REPLACED:
            notes.append(f"{cause} is no directory")
        elif change.action is Action.OPAQUE:
            notes.append(f"{cause} is opaque")
        elif change.action is Action.WHITEOUT:
            notes.append(f"{cause} whited out")
    version = change.version
    if version is not None and before is not None and version.kind is not before.kind:
        notes.append(f"was a {kind_name(before.kind)}")
    if change.same_content:
        notes.append(
            "same target" if version and version.kind is EntryKind.SYMLINK else "same content"
        )
    if change.opaque:
        notes.append("opaque: lower contents hidden")
    if change.implied:
        notes.append("implied by its children")
    if version is not None and version.kind is EntryKind.SYMLINK:
        notes.append(f"-> {version.link}")
    if version is not None and version.kind in (EntryKind.CHAR, EntryKind.BLOCK):
        notes.append(f"{kind_name(version.kind)} {version.rdev_major},{version.rdev_minor}")
    elif version is not None and version.kind is EntryKind.FIFO:
        notes.append("fifo")
    if change.hardlinks:
        notes.append("hardlink: " + ", ".join(display_path(p) for p in change.hardlinks))
    return notes


def blame_rows(image: StoredImage, found: Blame) -> tuple[BlameRow, ...]:
    """``found`` (``blame(image, path)``) as the rows of ``blame``'s table: one per
    change, base layer first, and a last ``view`` row: ``absent``, or ``from layer N``
    with the view's symlink target and hardlink partners in [brackets]."""
    rows: list[BlameRow] = []
    before: Version | None = None
    for change in found.changes:
        action = change.action.value
        notes = _notes(change, found.path, before)
        before = change.version
        if notes:
            action += " [" + "; ".join(notes) + "]"
        version = change.version
        layer = image.layers[change.layer - 1]
        created_by = change.created_by if layer.history is not None else "(missing)"
        rows.append(
            BlameRow(
                layer=str(change.layer),
                action=action,
                size=version.size
                if version is not None and version.kind is EntryKind.FILE
                else None,
                digest=_short(version.digest) if version is not None else "-",
                created_by=one_line(created_by),
            )
        )
    view = found.view
    if view is None:
        rows.append(BlameRow("view", "absent", None, "-", ""))
    else:
        node = view.node
        what = f"from layer {node.layer + 1}" if node.layer >= 0 else "no layer (made-up root)"
        notes = [f"-> {node.link}"] if node.kind is EntryKind.SYMLINK else []
        if view.hardlinks:
            notes.append("hardlink: " + ", ".join(display_path(p) for p in view.hardlinks))
        if notes:
            what += " [" + "; ".join(notes) + "]"
        rows.append(
            BlameRow(
                "view",
                what,
                node.size if node.kind is EntryKind.FILE else None,
                _short(view.digest),
                "",
            )
        )
    return tuple(rows)


__all__ = [
    "Action",
    "Blame",
    "BlameRow",
    "Change",
    "Shown",
    "Trace",
    "Version",
    "blame",
    "blame_rows",
    "hardlinks_of",
    "image_trace",
    "removal",
    "shown",
    "toc_entry",
    "trace",
]
