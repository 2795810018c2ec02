"""Files of the merged view: finding a path as a process chrooted into the image would,
listing directories, and where a regular file's content lives.

Paths are resolved inside the image only.  ``..`` stops at the image root, an absolute
symlink target starts again from the image root, symlinked directories on the way are
followed, and more than ``MAX_SYMLINKS`` links in one resolution fail as ELOOP, as Linux
(``MAXSYMLINKS``) fails them.  Nothing here turns a name from an image into a host path:
content is found from the merged tree's node (its layer and toc inode) through
``StoredImage.data_path``.

Listings come in the merged tree's order, which is the mount's: depth first, each
directory's children in name order.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import NotFound, StoreCorrupt
from ..store.toc import EntryKind
from ..text import one_line
from ..view.merge import ROOT_INODE, MergedTree, Stat
from .blame import Action, Change, removal
from .image import StoredImage, display_path, normalize_path, split_path

MAX_SYMLINKS = 40  # Linux's MAXSYMLINKS: links followed in one path resolution


class Failure(enum.Enum):
    """Why a path did not resolve (the value reads as the errno text)."""

    MISSING = "no such file or directory"
    NOT_DIR = "not a directory"
    LOOP = "too many levels of symbolic links (ELOOP)"


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where a path led.  Found: ``inode`` > 0 and ``path`` is where the entry sits in the
    merged tree, with no symlink in it.  Not found: ``failure`` says why; ``path`` is the
    path that was looked for (the directories reached, then the names not reached) and
    ``at`` the name that was missing, was no directory, or was the link too many."""

    path: str
    inode: int = 0
    failure: Failure | None = None
    at: str = ""


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def resolve(tree: MergedTree, path: str, *, follow: bool = True) -> Resolution:
    """Resolve ``path`` in ``tree`` as a chroot into the image would.  Symlinks among the
    parents are always followed; the last name only when ``follow``, or when the path
    ends in ``/`` (or ``/.``), which also requires a directory, as POSIX has it."""
    todo = split_path(path)[::-1]  # names still to walk, the next one last
    must_be_dir = path.endswith(("/", "/.")) or path == "."
    follow = follow or must_be_dir
    reached: list[tuple[str, int]] = []  # the directories walked into, below the root
    here = ROOT_INODE
    links = 0

    def failed(failure: Failure, name: str) -> Resolution:
        parent = "/".join(n for n, _ in reached)
        wanted = _join(parent, name, *reversed(todo))
        return Resolution(normalize_path(wanted), failure=failure, at=_join(parent, name))

    while todo:
        name = todo.pop()
        if name == "..":
            if reached:
                reached.pop()
            here = reached[-1][1] if reached else ROOT_INODE
            continue
        child = tree.lookup_inode(here, name)
        if child is None:
            return failed(Failure.MISSING, name)
        kind = tree.stat(child).kind
        last = not todo
        if kind is EntryKind.SYMLINK and (follow or not last):
            links += 1
            if links > MAX_SYMLINKS:
                return failed(Failure.LOOP, name)
            target = tree.link(child)
            if not target:  # Linux: an empty target names nothing
                return failed(Failure.MISSING, name)
            if target.startswith("/"):
                reached.clear()
                here = ROOT_INODE
            todo.extend(reversed(split_path(target)))
            if last and target.endswith(("/", "/.")):
                must_be_dir = True
            continue
        if (not last or must_be_dir) and kind is not EntryKind.DIR:
            return failed(Failure.NOT_DIR, name)
        reached.append((name, child))
        here = child
    return Resolution("/".join(n for n, _ in reached), here)


@dataclass(frozen=True, slots=True)
class Found:
    """A path found in a merged view: where it sits, and what is there."""

    path: str  # relative, no symlink in it ("" is the root)
    stat: Stat


def locate(image: StoredImage, path: str, upto: int | None = None, *, follow: bool) -> Found:
    """``path`` in the merged view as of layer ``upto`` (default: all layers).  NotFound,
    one line, when it is not there: saying which layer deleted it, when one did."""
    tree = image.view(upto).tree
    found = resolve(tree, path, follow=follow)
    if found.failure is None:
        return Found(found.path, tree.stat(found.inode))
    where = image.what
    if found.failure is Failure.LOOP:
        raise NotFound(f"{where}: {display_path(found.at)!r}: {found.failure.value}")
    gone = removal(image, found.path, upto)
    if gone is not None:
        created_by = one_line(gone.created_by, CREATED_BY_IN_ERRORS) or "(missing)"
        raise NotFound(
            f"{where}: {display_path(found.path)!r} was deleted in layer {gone.layer} "
            f"{_how(gone, found.path)} (created by: {created_by})"
        )
    if found.failure is Failure.NOT_DIR:
        raise NotFound(
            f"{where}: no such path {display_path(found.path)!r} "
            f"({display_path(found.at)!r} is not a directory)"
        )
    raise NotFound(f"{where}: no such path {display_path(found.path)!r}")


CREATED_BY_IN_ERRORS = 100  # characters of created_by an error message shows ('blame': all)


def _how(gone: Change, path: str) -> str:
    cause = display_path(gone.cause)
    if gone.action is Action.OPAQUE:
        return f"by the opaque directory {cause!r}"
    if gone.action is Action.REPLACED:
        return f"when {cause!r} became a non-directory"
    return "by a whiteout" if gone.cause == path else f"by a whiteout of {cause!r}"


# -- listing ---------------------------------------------------------------------------------


class Listed(NamedTuple):
    """One entry of a listing.  A tuple, not a dataclass, for the same reason as ``Stat``:
    ``ls -R`` makes one per entry of the image."""

    path: str  # relative ("" is the root)
    stat: Stat


def listing(
    tree: MergedTree, at: Found, *, recursive: bool = False, directory: bool = False
) -> Iterator[Listed]:
    """What ``ls`` lists for ``at``: a directory's children (with ``recursive`` all its
    descendants, each directory before its children), or with ``directory`` or for a
    non-directory the entry itself.  In the merged tree's (the mount's) order."""
    if directory or at.stat.kind is not EntryKind.DIR:
        yield Listed(at.path, at.stat)
        return
    yield from walk_below(tree, at.path, at.stat.inode, recursive=recursive)


def walk_below(
    tree: MergedTree, path: str, inode: int, *, recursive: bool = True
) -> Iterator[Listed]:
    """The entries below directory ``inode`` at ``path``, depth first in name order.
    Raw ``scan`` and ``stat``, no ``Node``: a 100k-entry image walks in about 0.2 s."""
    stat, scan = tree.stat, tree.scan
    dir_kind = EntryKind.DIR
    seen = {inode}  # a crafted cache file could list a directory inside itself
    stack = [(f"{path}/" if path else "", scan(inode))]
    while stack:
        prefix, children = stack[-1]
        for _, raw, child in children:
            st = stat(child)
            p = prefix + raw.decode("utf-8", "surrogateescape")
            yield Listed(p, st)
            if recursive and st.kind is dir_kind:
                if child in seen:
                    raise StoreCorrupt(f"merged tree: directory {child} is listed twice")
                seen.add(child)
                stack.append((p + "/", scan(child)))
                break
        else:
            stack.pop()


# -- content ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Content:
    """A regular file of the view: its size and the store file holding its bytes."""

    path: str  # where the file sits in the view (symlinks resolved)
    size: int
    data: Path | None  # None for an empty file (no data file is kept)


def regular_file(image: StoredImage, path: str, upto: int | None = None) -> Content:
    """The regular file ``path`` names in the view as of layer ``upto``, every symlink
    followed inside the image.  NotFound when it is missing, deleted, a directory or no
    regular file."""
    found = locate(image, path, upto, follow=True)
    st = found.stat
    if st.kind is EntryKind.DIR:
        raise NotFound(f"{image.what}: {display_path(found.path)!r} is a directory")
    if st.kind is not EntryKind.FILE:
        raise NotFound(
            f"{image.what}: {display_path(found.path)!r} is not a regular file "
            f"(a {_KIND_WORD[st.kind]})"
        )
    if st.size == 0:
        return Content(found.path, 0, None)
    return Content(found.path, st.size, image.data_path(st.layer + 1, st.data))


_KIND_WORD = {
    EntryKind.SYMLINK: "symlink",
    EntryKind.CHAR: "character device",
    EntryKind.BLOCK: "block device",
    EntryKind.FIFO: "fifo",
    EntryKind.WHITEOUT: "whiteout",
}


__all__ = [
    "MAX_SYMLINKS",
    "Content",
    "Failure",
    "Found",
    "Listed",
    "Resolution",
    "listing",
    "locate",
    "one_line",
    "regular_file",
    "resolve",
    "walk_below",
]
