"""``snapshotter ls``, ``cat`` and ``blame``: files of an image, without mounting it.

Names in images are bytes and need not be UTF-8: they are written to stdout as the bytes
the image holds (through ``sys.stdout.buffer``), as ``ls`` writes them to a pipe; on a
terminal, control characters and undecodable bytes show as ``?``, as ``ls -q`` shows them,
so an image cannot drive the terminal.  ``--json`` escapes them instead.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii
from pathlib import Path

from ..errors import NotFound, StoreCorrupt
from ..explore import blame as blame_mod
from ..explore import files
from ..explore.image import StoredImage, display_path
from ..store.store import Store
from ..store.toc import EntryKind
from ..view.merge import MergedTree
from . import EXIT_OK
from .common import image_arguments, layer_argument, stored_image
from .format import (
    kind_name,
    mode_string,
    mtime_text,
    print_json,
    rfc3339_ns,
    shown,
    size_arguments,
    size_text,
    wants_human,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ls",
        help="list files of an image, as its mount shows them",
        description=(
            "List the image's merged view: what 'snapshotter mount' shows, in the same "
            "order (depth first, names sorted). A directory lists its children, anything "
            "else itself. Every line is an absolute path in the image, with or without -R "
            "and -l. Symlinks among PATH's parents are followed inside the image (never "
            "out of it); PATH itself is listed, not followed, unless it ends in '/'. Names "
            "are written as the bytes the image holds; on a terminal, control characters "
            "show as '?'."
        ),
    )
    image_arguments(p)
    p.add_argument("path", metavar="PATH", nargs="?", default="/", help="default: /")
    p.add_argument(
        "-l",
        "--long",
        action="store_true",
        help="columns MODE UID:GID SIZE MTIME LAYER PATH: MTIME in UTC, LAYER the layer "
        "(from 1) whose entry it is, '-' for a root no layer wrote; a device's SIZE is "
        "MAJOR,MINOR",
    )
    p.add_argument("-R", "--recursive", action="store_true", help="list everything below PATH")
    p.add_argument(
        "-d",
        "--directory",
        action="store_true",
        help="list a directory itself, not its children (wins over -R, as in ls)",
    )
    layer_argument(p, "list the image")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON document: a list of objects {path, type, mode, uid, gid, size, "
        "mtime, linkname, digest, layer}, one per line",
    )
    size_arguments(p)
    p.set_defaults(handler=cmd_ls)

    p = sub.add_parser(
        "cat",
        help="print a file of an image",
        description=(
            "Write a regular file's bytes to stdout. Symlinks are followed inside the image "
            "only, as in a chroot: '..' stops at the image root and an absolute target "
            "starts from it. A path that a layer deleted names that layer."
        ),
    )
    image_arguments(p)
    p.add_argument("path", metavar="PATH")
    layer_argument(p, "print the file")
    p.set_defaults(handler=cmd_cat)

    p = sub.add_parser(
        "blame",
        help="show which layers added, changed or deleted a path",
        description=(
            "One row per layer that changed PATH: added, modified (a non-directory "
            "written again, even with the same content; a directory whose owner, mode, "
            "mtime or xattrs changed), deleted (whiteout), deleted (opaque directory), or "
            "replaced (a parent became a non-directory); the last row is what the merged "
            "view shows. Notes in [brackets]: which parent removed it, same content, "
            "hardlink partners, symlink targets, opaque and implied directories. PATH "
            "itself is not followed if it is a symlink; symlinks among its parents are, in "
            "the merged view."
        ),
    )
    image_arguments(p)
    p.add_argument("path", metavar="PATH")
    p.add_argument(
        "--no-trunc",
        action="store_true",
        help="do not cut CREATED BY to the terminal's width (never cut when piped)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON document {path, rows: [...], view: {...} or null}",
    )
    size_arguments(p)
    p.set_defaults(handler=cmd_blame)


# -- output ------------------------------------------------------------------------------------


class Writer:
    """Text to stdout, in large writes, names as the bytes they are."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._size = 0

    def add(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)
        if self._size > 1 << 18:
            self.flush()

    def flush(self) -> None:
        text = "".join(self._parts)
        self._parts.clear()
        self._size = 0
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None:  # a StringIO (tests)
            sys.stdout.write(text)
            return
        sys.stdout.flush()
        buffer.write(text.encode("utf-8", "surrogateescape"))
        buffer.flush()  # a closed pipe raises here, inside main, not at exit


# Images repeat a few mtimes over thousands of entries.
_rfc3339 = functools.lru_cache(maxsize=4096)(rfc3339_ns)


# -- ls ----------------------------------------------------------------------------------------


def cmd_ls(store: Store, args: argparse.Namespace) -> int:
    image = stored_image(store, args)
    tree = image.view(args.layer).tree
    at = files.locate(image, args.path, args.layer, follow=False)
    entries = files.listing(tree, at, recursive=args.recursive, directory=args.directory)
    if args.json:
        _ls_json(image, tree, entries)
    elif args.long:
        _ls_long(tree, entries, wants_human(args))
    else:
        tty, out = sys.stdout.isatty(), Writer()
        for entry in entries:
            out.add(shown(display_path(entry.path), tty) + "\n")
        out.flush()
    return EXIT_OK


def _ls_long(tree: MergedTree, entries: Iterable[files.Listed], human: bool) -> None:
    """The -l table.  Entries of an image share a few (mode, owner, mtime) triples, so
    those cells are made once per triple; widths are measured and rows joined at the
    end, in C: 100k rows take ~0.25 s."""
    tty = sys.stdout.isatty()
    heads: dict[tuple[object, ...], tuple[str, str, str]] = {}
    rows: list[tuple[str, str, str]] = [("MODE", "UID:GID", "MTIME")]
    sizes, layers, names = ["SIZE"], ["LAYER"], ["PATH"]
    devices = (EntryKind.CHAR, EntryKind.BLOCK)
    for path, st in entries:
        kind = st.kind
        key = (kind, st.mode, st.uid, st.gid, st.mtime_ns)
        head = heads.get(key)
        if head is None:
            head = heads[key] = (
                mode_string(kind, st.mode),
                f"{st.uid}:{st.gid}",
                mtime_text(st.mtime_ns),
            )
        rows.append(head)
        if kind in devices:
            sizes.append(f"{st.rdev_major},{st.rdev_minor}")
        else:
            sizes.append(size_text(st.size, human))
        layers.append(str(st.layer + 1) if st.layer >= 0 else "-")
        name = shown(display_path(path), tty)
        if kind is EntryKind.SYMLINK:
            name += " -> " + shown(tree.link(st.inode), tty)
        names.append(name)
    w_mode = max(len(h[0]) for h in (*heads.values(), rows[0]))
    w_owner = max(len(h[1]) for h in (*heads.values(), rows[0]))
    w_mtime = max(len(h[2]) for h in (*heads.values(), rows[0]))
    w_size, w_layer = max(map(len, sizes)), max(map(len, layers))
    out = Writer()
    out.add(
        "".join(
            f"{mode:<{w_mode}}  {owner:<{w_owner}}  {size:>{w_size}}  {mtime:<{w_mtime}}  "
            f"{layer:>{w_layer}}  {name}\n"
            for (mode, owner, mtime), size, layer, name in zip(
                rows, sizes, layers, names, strict=True
            )
        )
    )
    out.flush()


def _ls_json(image: StoredImage, tree: MergedTree, entries: Iterable[files.Listed]) -> None:
    """One document, one object per line, keys sorted: what ``json.dumps(obj,
    sort_keys=True)`` writes for each, put together here because 100k calls of it take
    0.8 s (and an indented dump of the whole list, in the pure-Python encoder, seconds).
    Strings go through ``encode_basestring_ascii``, the escaper ``json.dumps`` itself uses."""
    out = Writer()
    out.add("[")
    sep = "\n"
    text = encode_basestring_ascii
    for path, st in entries:
        kind = st.kind
        digest = ""
        if kind is EntryKind.FILE:
            digest = image.content_digest(st.layer + 1, st.data, st.size)
        link = text(tree.link(st.inode)) if kind is EntryKind.SYMLINK else '""'
        layer = str(st.layer + 1) if st.layer >= 0 else "null"
        out.add(
            f'{sep}{{"digest": "{digest}", "gid": {st.gid}, "layer": {layer}, '
            f'"linkname": {link}, "mode": {st.mode}, "mtime": "{_rfc3339(st.mtime_ns)}", '
            f'"path": {text(display_path(path))}, "size": {st.size}, '
            f'"type": "{kind_name(kind)}", "uid": {st.uid}}}'
        )
        sep = ",\n"
    out.add("\n]\n" if sep != "\n" else "]\n")
    out.flush()


# -- cat ---------------------------------------------------------------------------------------

_CHUNK = 1 << 20


def cmd_cat(store: Store, args: argparse.Namespace) -> int:
    image = stored_image(store, args)
    content = files.regular_file(image, args.path, args.layer)
    if content.data is None:
        return EXIT_OK
    try:
        fd = os.open(content.data, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise StoreCorrupt(f"content file {content.data} is missing from the store") from exc
    try:
        size = os.fstat(fd).st_size
        if size != content.size:
            raise StoreCorrupt(
                f"content file {content.data} holds {size} bytes, the toc says {content.size}"
            )
        _copy_to_stdout(fd, content.size, content.data)
    finally:
        os.close(fd)
    return EXIT_OK


def _copy_to_stdout(fd: int, size: int, what: Path) -> None:
    """``size`` bytes of ``fd`` to stdout: sendfile to stdout's descriptor when it has one
    (a pipe, a file, a terminal), else 1 MiB reads (an in-memory stdout)."""
    sys.stdout.flush()
    try:
        out_fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        out_fd = -1
    offset = 0
    if out_fd >= 0:
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is not None:
            buffer.flush()
        try:
            while offset < size:
                sent = os.sendfile(out_fd, fd, offset, min(size - offset, 1 << 30))
                if sent == 0:
                    raise StoreCorrupt(f"content file {what} ended at {offset} of {size} bytes")
                offset += sent
            return
        except OSError as exc:
            # sendfile may refuse this kind of output (EINVAL: O_APPEND or some terminals);
            # what it sent stands, the rest goes by plain writes.
            if isinstance(exc, BrokenPipeError) or exc.errno not in _NO_SENDFILE:
                raise
    while offset < size:
        chunk = os.pread(fd, min(_CHUNK, size - offset), offset)
        if not chunk:
            raise StoreCorrupt(f"content file {what} ended at {offset} of {size} bytes")
        _write_bytes(chunk, out_fd)
        offset += len(chunk)


_NO_SENDFILE = {22, 38, 95}  # EINVAL, ENOSYS, EOPNOTSUPP


def _write_bytes(chunk: bytes, out_fd: int) -> None:
    if out_fd >= 0:
        view = memoryview(chunk)
        while view:
            view = view[os.write(out_fd, view) :]
        return
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        buffer.write(chunk)
    else:  # a StringIO (tests): text files only
        sys.stdout.write(chunk.decode("utf-8", "surrogateescape"))


# -- blame -------------------------------------------------------------------------------------


def cmd_blame(store: Store, args: argparse.Namespace) -> int:
    image = stored_image(store, args)
    # Symlinks among the parents are followed in the merged view; PATH itself is not.
    path = files.resolve(image.view().tree, args.path, follow=False).path
    found = blame_mod.blame(image, path)
    if not found.changes and found.view is None:
        raise NotFound(f"{image.what}: no layer has {display_path(path)!r}")
    if args.json:
        print_json(_blame_doc(found))
    else:
        _blame_table(image, found, wants_human(args), args.no_trunc)
    return EXIT_OK


def _blame_table(image: StoredImage, found: blame_mod.Blame, human: bool, no_trunc: bool) -> None:
    tty = sys.stdout.isatty()
    rows: list[list[str]] = [["LAYER", "ACTION", "SIZE", "DIGEST", "CREATED BY"]]
    for line in blame_mod.blame_rows(image, found):
        rows.append(
            [
                line.layer,
                shown(line.action, tty),
                "-" if line.size is None else size_text(line.size, human),
                line.digest,
                line.created_by,
            ]
        )
    if tty and not no_trunc:
        width = shutil.get_terminal_size().columns
        used = sum(max(len(r[i]) for r in rows) + 3 for i in range(4))
        room = max(width - used, 20)
        for row in rows[1:]:
            if len(row[4]) > room:
                row[4] = row[4][: room - 1] + "…"
    _table(rows)


def _table(rows: list[list[str]]) -> None:
    """``format.print_table``'s layout, written as bytes (names need not be UTF-8)."""
    out = Writer()
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.add("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    out.flush()


def _version_doc(version: blame_mod.Version | None) -> dict[str, object]:
    if version is None:
        return {
            k: None for k in ("kind", "size", "digest", "mode", "uid", "gid", "mtime", "linkname")
        }
    return {
        "kind": kind_name(version.kind),
        "size": version.size,
        "digest": version.digest,
        "mode": version.mode,
        "uid": version.uid,
        "gid": version.gid,
        "mtime": rfc3339_ns(version.mtime_ns),
        "linkname": version.link,
    }


def _blame_doc(found: blame_mod.Blame) -> dict[str, object]:
    rows = []
    for change in found.changes:
        rows.append(
            {
                "layer": change.layer,
                "action": change.action.value,
                **_version_doc(change.version),
                "created_by": change.created_by,
                "hardlinks": [display_path(p) for p in change.hardlinks],
                "cause": display_path(change.cause),
                "same_content": change.same_content,
                "opaque": change.opaque,
                "implied": change.implied,
            }
        )
    view: dict[str, object] | None = None
    if found.view is not None:
        node = found.view.node
        view = {
            "layer": node.layer + 1 if node.layer >= 0 else None,
            "kind": kind_name(node.kind),
            "size": node.size,
            "digest": found.view.digest,
            "mode": node.mode,
            "uid": node.uid,
            "gid": node.gid,
            "mtime": rfc3339_ns(node.mtime_ns),
            "linkname": node.link,
            "nlink": node.nlink,
            "hardlinks": [display_path(p) for p in found.view.hardlinks],
        }
    return {"path": display_path(found.path), "rows": rows, "view": view}
