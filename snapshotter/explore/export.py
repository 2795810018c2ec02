"""The merged view as one tar: what ``snapshotter export`` writes.

``write_tar`` streams a PAX (POSIX.1-2001) tar of an ``ImageView``: the whole file system a
container started from the image sees, with every layer applied, so it holds no whiteout
(no ``.wh.`` name ever: the merged tree has none) and no entry a later layer hid.

The name form, stable: member names are relative, with no leading ``/`` and no ``./``
(``etc/passwd``); a directory ends in ``/`` (``etc/``).  The first member is the root
directory itself, ``./``, so its owner, mode, mtime and xattrs travel too (GNU tar and
Python's tarfile apply them to the directory they extract into; a root no layer described
is 0755 root:root, mtime 0, as the mount shows it).  Then every other entry in depth-first
name order (the merged tree's order: a directory before its children).  A subtree
(``path``) has no ``./``: its names start at the exported entry's own name (``lib/``,
``lib/x`` for ``usr/lib``), as ``tar -C usr -c lib`` names them.

What each member keeps:

- type: regular file, directory, symlink, character and block device (major, minor), fifo;
- hardlinks as hardlinks: the merged tree gives each hardlink group one inode, and its
  ``nlink`` counts the group's names still visible.  The first name in tree order carries the
  content; each later name is a type ``1`` member whose ``linkname`` is that first name.
  A partner a later layer replaced is simply another inode (crane #977/#2002 gave it the
  new content);
- symlink targets verbatim, absolute and ``../`` ones included (crane #2238/#2268);
- uid and gid as numbers; uname and gname are empty (the image's /etc/passwd is the only
  truth about names, and it is in the tar);
- the mode's permission bits, setuid, setgid and sticky included;
- xattrs as PAX ``SCHILY.xattr.NAME`` records, values byte-exact (GNU tar, Go, containerd);
- mtime to the nanosecond: a PAX ``mtime`` record (``1700000000.123456789``, trailing zeros
  dropped, as Go writes it) whenever the time is not a whole non-negative second count.

Names, link targets and xattr values are the layers' bytes: a name that is not UTF-8 is
written as it came (a PAX ``path`` record holding those bytes, as Go's archive/tar writes
it; GNU tar, and Python's tarfile with ``errors="surrogateescape"``, read them back
unchanged).  A name or link target that is not ASCII or longer than the ustar field
goes in a PAX record, as do uids, gids and sizes too large for their octal fields.
Device numbers too large for octal use GNU's base-256 form, which every reader accepts.
A sparse file is written whole, its holes as zeros (no GNU sparse member: every reader
takes a plain file).

Memory stays flat whatever the image: entries come one at a time from ``MergedTree.scan``
(the stack holds one directory iterator per level), content is copied by the kernel
(``os.sendfile``) straight from the store's data files, and only the headers pass
through one small buffer.  The only state that grows is the first name of each hardlink
group not yet fully written.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import secrets
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from ..errors import NotFound, StoreCorrupt, UnsafeArchive
from ..store.toc import EntryKind
from ..view.merge import ROOT_INODE, Node
from ..view.tree import ImageView, data_name

BLOCK = 512
RECORD = 20 * BLOCK  # GNU tar's and tarfile's default record: the tar is padded to it
ROOT_NAME = b"./"
# Files up to this size are read into the header buffer; bigger ones go through sendfile.
SMALL_FILE = 64 * 1024
_FLUSH_AT = 1 << 20
_CHUNK = 1 << 20

_TYPEFLAG = {
    EntryKind.FILE: b"0",
    EntryKind.SYMLINK: b"2",
    EntryKind.CHAR: b"3",
    EntryKind.BLOCK: b"4",
    EntryKind.DIR: b"5",
    EntryKind.FIFO: b"6",
}
_HARDLINK = b"1"
_PAX = b"x"
_PAX_NAME = b"././@PaxHeader"  # tarfile's name for an extended header; readers ignore it
# ustar (POSIX.1-1988) header fields up to the prefix; the block is padded to 512 bytes.
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s")
_ZERO_OCTAL_8 = b"0000000\0"
_ZERO_OCTAL_12 = b"00000000000\0"
_MAX_OCTAL_8 = 8**7
_MAX_OCTAL_12 = 8**11
_NS = 1_000_000_000

ProgressFn = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What ``write_tar`` wrote."""

    members: int  # tar members, the root and every hardlink name included
    hardlinks: int  # of them, type '1' members (further names of a file already written)
    content_bytes: int  # bytes of file content, each hardlinked inode counted once
    tar_bytes: int  # bytes of the tar, padding and end-of-archive blocks included


def write_tar(
    view: ImageView,
    out: int | BinaryIO,
    progress: ProgressFn | None = None,
    *,
    path: str = "",
) -> ExportSummary:
    """Write the tar of ``view`` to ``out`` (a file descriptor, or a binary file object)
    and return what was written.  ``progress`` is called with each file's content bytes
    once they are written.

    ``path`` (relative, normalized, no symlink in it: the caller resolves them) exports
    only the entry there and, for a directory, everything below it, named relative to
    its parent: ``lib/``, ``lib/x`` for ``usr/lib``; no ``./`` member.  A hardlink group
    with names outside that subtree carries its content at its first name inside it.
    NotFound when the view has nothing at ``path``; "" is the whole view.

    ``out`` is written sequentially and never seeked, so a pipe or a socket works.  A file
    object with a ``fileno`` is flushed and then written through its descriptor (content
    by ``sendfile``); one without (``io.BytesIO``) gets ``write`` calls.  The caller owns
    ``out``; nothing is closed here.  A data file missing from the store, or of another
    size than the merged tree says, raises ``StoreCorrupt`` before any of its content is
    written.
    """
    start = _start(view, path)
    sink = _Sink.of(out)
    writer = _Writer(view, sink, progress)
    writer.run(*start)
    return ExportSummary(
        members=writer.members,
        hardlinks=writer.hardlinks,
        content_bytes=writer.content_bytes,
        tar_bytes=sink.written,
    )


def _start(view: ImageView, path: str) -> tuple[int, bytes]:
    """The inode to export from and its member name (the root: ``./``)."""
    if not path:
        return ROOT_INODE, ROOT_NAME
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"export: path {path!r} is not a normalized relative path")
    node = view.tree.resolve(path)
    if node is None:
        raise NotFound(f"export: no such path {'/' + path!r} in the view")
    name = parts[-1].encode("utf-8", "surrogateescape")
    return node.inode, name + b"/" if node.kind is EntryKind.DIR else name


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[int]:
    """A descriptor to write ``path``'s new content to, installed only on success.

    The content goes to an unnamed file in ``path``'s directory (``O_TMPFILE``) that gets
    a name, and is renamed over ``path``, only when the ``with`` block ends without an
    exception; so an error, Ctrl-C or even ``kill -9`` leaves neither a partial ``path``
    nor a temporary file, and an existing ``path`` untouched.  Where an unnamed file
    cannot be given a name later (no ``O_TMPFILE`` in the file system, no way to link it:
    checked first, on an empty file), a named temporary file (``.NAME.XXXXXXXX.tmp``) is
    removed on any exception instead, which ``kill -9`` cannot do.  A ``path`` that is a
    symlink is written through (its target is replaced).  NotFound when the directory
    does not exist; IsADirectoryError when ``path`` is one.
    """
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    directory = target.parent
    if not directory.is_dir():
        raise NotFound(f"cannot write {str(path)!r}: no such directory {str(directory)!r}")
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    fd, link = _unnamed_file(directory)
    if link is None:
        with _named_temporary(target) as fd:
            yield fd
        return
    try:
        yield fd
        temp = _temp_name(target)
        link(fd, temp)
        try:
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    finally:
        os.close(fd)


_Link = Callable[[int, Path], None]


def _unnamed_file(directory: Path) -> tuple[int, _Link | None]:
    """An ``O_TMPFILE`` in ``directory`` and a way to give it a name; (-1, None) when
    there is none.  The ways are tried on a throwaway unnamed file first (an unnamed
    file can be linked once only)."""
    flags = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
    try:
        probe_fd = os.open(directory, flags, 0o600)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return -1, None
        raise
    try:
        for link in (_link_proc, _link_empty_path):
            probe = directory / f".export-probe.{secrets.token_hex(8)}"
            try:
                link(probe_fd, probe)
            except OSError:
                continue
            probe.unlink()
            return os.open(directory, flags, 0o666), link
    finally:
        os.close(probe_fd)
    return -1, None


def _link_proc(fd: int, name: Path) -> None:
    """linkat(2)'s unprivileged way: follow the descriptor's magic link in /proc."""
    os.link(f"/proc/self/fd/{fd}", name, follow_symlinks=True)


def _link_empty_path(fd: int, name: Path) -> None:
    """linkat(fd, "", ..., AT_EMPTY_PATH): what works where /proc links do not (it needs
    CAP_DAC_READ_SEARCH on older kernels)."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, at_empty_path = -100, 0x1000
    if libc.linkat(fd, b"", at_fdcwd, os.fsencode(name), at_empty_path) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(name))


@contextlib.contextmanager
def _named_temporary(target: Path) -> Iterator[int]:
    temp = _temp_name(target)
    umask = os.umask(0)
    os.umask(umask)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666 & ~umask)
    except OSError as exc:  # name what the user asked for, not our temporary name
        raise OSError(exc.errno, exc.strerror, str(target)) from exc
    try:
        try:
            yield fd
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")


# -- headers ---------------------------------------------------------------------------------


def _octal(value: int, width: int) -> bytes | None:
    """An octal numeric field (NUL-terminated); None when ``value`` does not fit."""
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, value)
    return None


def _base256(value: int, width: int) -> bytes:
    """GNU's base-256 numeric field, for values octal cannot hold (GNU tar, Go, tarfile
    and libarchive all read it)."""
    if not 0 <= value < 256 ** (width - 1):
        raise UnsafeArchive(f"export: the value {value} does not fit a tar header")
    return b"\x80" + value.to_bytes(width - 1, "big")


def pax_time(ns: int) -> bytes:
    """Nanoseconds since the epoch as a PAX time: ``1700000000.123456789``, trailing
    zeros of the fraction dropped (``-1.5`` is 1.5 s before the epoch)."""
    sign = b"-" if ns < 0 else b""
    secs, frac = divmod(abs(ns), _NS)
    if not frac:
        return b"%s%d" % (sign, secs)
    return (b"%s%d.%09d" % (sign, secs, frac)).rstrip(b"0")


def _pax_record(key: bytes, value: bytes) -> bytes:
    """One ``"LEN KEY=VALUE\\n"`` record; LEN counts the whole record, itself included."""
    body = b" %s=%s\n" % (key, value)
    n = len(body) + 1
    while len(b"%d" % n) + len(body) != n:
        n = len(b"%d" % n) + len(body)
    return b"%d%s" % (n, body)


def _ustar(
    name: bytes,
    mode: int,
    uid: bytes,
    gid: bytes,
    size: bytes,
    mtime: bytes,
    typeflag: bytes,
    linkname: bytes,
    major: bytes,
    minor: bytes,
) -> bytes:
    block = bytearray(BLOCK)
    _USTAR.pack_into(
        block,
        0,
        name,
        b"%07o\0" % mode,
        uid,
        gid,
        size,
        mtime,
        b"        ",
        typeflag,
        linkname,
        b"ustar\0",
        b"00",
        b"",
        b"",
        major,
        minor,
        b"",
    )
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def header(
    name: bytes,
    node: Node,
    *,
    typeflag: bytes,
    size: int,
    linkname: bytes = b"",
) -> bytes:
    """The header block(s) of one member: a PAX extended header first when a field needs
    one (see the module docstring), then the ustar block.  (Run once per member: hence
    the inlined octal fields.)"""
    records: list[bytes] = []
    if len(name) > 100 or not name.isascii():
        records.append(_pax_record(b"path", name))
    if linkname and (len(linkname) > 100 or not linkname.isascii()):
        records.append(_pax_record(b"linkpath", linkname))
    uid, gid = node.uid, node.gid
    if uid < _MAX_OCTAL_8:
        uid_field = b"%07o\0" % uid
    else:
        records.append(_pax_record(b"uid", b"%d" % uid))
        uid_field = _ZERO_OCTAL_8
    if gid < _MAX_OCTAL_8:
        gid_field = b"%07o\0" % gid
    else:
        records.append(_pax_record(b"gid", b"%d" % gid))
        gid_field = _ZERO_OCTAL_8
    if size < _MAX_OCTAL_12:
        size_field = b"%011o\0" % size
    else:
        records.append(_pax_record(b"size", b"%d" % size))
        size_field = _ZERO_OCTAL_12
    secs, frac = divmod(node.mtime_ns, _NS)
    if 0 <= secs < _MAX_OCTAL_12:
        mtime_field = b"%011o\0" % secs
    else:
        mtime_field, frac = _ZERO_OCTAL_12, 1
    if frac:
        records.append(_mtime_record(node.mtime_ns))
    for xattr_name, xattr_value in node.xattrs:
        raw_key = xattr_name.encode("utf-8", "surrogateescape")
        if b"=" in raw_key or b"\0" in raw_key or not raw_key:
            raise UnsafeArchive(f"export: xattr name {xattr_name!r} cannot be written to a tar")
        records.append(_pax_record(b"SCHILY.xattr." + raw_key, xattr_value))
    if node.kind is EntryKind.CHAR or node.kind is EntryKind.BLOCK:
        major = _octal(node.rdev_major, 8) or _base256(node.rdev_major, 8)
        minor = _octal(node.rdev_minor, 8) or _base256(node.rdev_minor, 8)
    else:
        major = minor = _ZERO_OCTAL_8
    block = _ustar(
        name[:100],
        node.mode & 0o7777,
        uid_field,
        gid_field,
        size_field,
        mtime_field,
        typeflag,
        linkname[:100],
        major,
        minor,
    )
    if not records:
        return block
    data = b"".join(records)
    return _pax_header(len(data)) + data + _padding(len(data)) + block


@functools.lru_cache(maxsize=1024)
def _mtime_record(ns: int) -> bytes:
    """The PAX ``mtime`` record (cached: a layer's entries mostly share a few times)."""
    return _pax_record(b"mtime", pax_time(ns))


@functools.lru_cache(maxsize=4096)
def _pax_header(length: int) -> bytes:
    """The ustar block of an extended header of ``length`` bytes of records (owner and
    mtime 0, as tarfile writes them)."""
    return _ustar(
        _PAX_NAME,
        0o644,
        _ZERO_OCTAL_8,
        _ZERO_OCTAL_8,
        _octal(length, 12) or _base256(length, 12),
        _ZERO_OCTAL_12,
        _PAX,
        b"",
        _ZERO_OCTAL_8,
        _ZERO_OCTAL_8,
    )


def _padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


# -- output ----------------------------------------------------------------------------------


class _Sink:
    """Sequential output: a descriptor (content by sendfile) or a file object without one."""

    def __init__(self, fd: int | None, obj: BinaryIO | None):
        self.fd = fd
        self.obj = obj
        self.written = 0
        self.sendfile = fd is not None

    @classmethod
    def of(cls, out: int | BinaryIO) -> _Sink:
        if isinstance(out, int):
            return cls(out, None)
        try:
            fd = out.fileno()
        except (AttributeError, OSError, ValueError):
            return cls(None, out)
        out.flush()
        return cls(fd, None)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if self.fd is None:
            assert self.obj is not None
            self.obj.write(view)
            self.written += len(view)
            return
        while view:
            n = os.write(self.fd, view)
            self.written += n
            view = view[n:]

    def copy(self, src: int, size: int) -> int:
        """Up to ``size`` bytes of ``src`` from offset 0; the number copied (fewer only if
        ``src`` ends early)."""
        offset = 0
        if self.sendfile:
            assert self.fd is not None
            try:
                while offset < size:
                    n = os.sendfile(self.fd, src, offset, min(size - offset, 1 << 30))
                    if n == 0:
                        break
                    offset += n
                    self.written += n
            except OSError as exc:
                # Not every descriptor takes sendfile (a terminal, some special files);
                # nothing was written by the failing call, so go on with read and write.
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                self.sendfile = False
        while offset < size:
            chunk = os.pread(src, min(_CHUNK, size - offset), offset)
            if not chunk:
                break
            self.write(chunk)
            offset += len(chunk)
        return offset


class _Writer:
    def __init__(self, view: ImageView, sink: _Sink, progress: ProgressFn | None):
        self.view = view
        self.tree = view.tree
        self.sink = sink
        self.progress = progress
        self.buffer = bytearray()
        # inode -> (first name, names still to come) of hardlink groups being written
        self.links: dict[int, tuple[bytes, int]] = {}
        self.members = 0
        self.hardlinks = 0
        self.content_bytes = 0
        # Each layer's data directory as bytes ending in "/": view.data_path without
        # making a Path per file.
        self.data_dirs = [
            os.fsencode(view.data_dir(layer)) + b"/" for layer in range(len(view.snapshots))
        ]

    def flush(self) -> None:
        if self.buffer:
            self.sink.write(self.buffer)
            self.buffer.clear()

    def run(self, top: int, name: bytes) -> None:
        """Members for ``top``, named ``name``, and everything below it."""
        tree = self.tree
        node = tree.node(top)
        self.member(name, node)
        stack: list[tuple[bytes, Iterator[tuple[int, bytes, int]]]] = []
        if node.kind is EntryKind.DIR:
            stack.append((b"" if top == ROOT_INODE else name, tree.scan(top)))
        seen = {top}  # a cache file crafted to list a directory twice must not loop
        while stack:
            prefix, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                continue
            _, name, inode = child
            node = tree.node(inode)
            path = prefix + name
            if node.kind is EntryKind.DIR:
                if inode in seen:
                    raise StoreCorrupt(f"merged tree: directory {inode} is listed twice")
                seen.add(inode)
                path += b"/"
                self.member(path, node)
                stack.append((path, tree.scan(inode)))
            else:
                self.member(path, node)
        self.buffer += bytes(2 * BLOCK)
        self.buffer += _padding_to_record(self.sink.written + len(self.buffer))
        self.flush()

    def member(self, name: bytes, node: Node) -> None:
        self.members += 1
        kind = node.kind
        if kind is EntryKind.DIR:
            self.buffer += header(name, node, typeflag=b"5", size=0)
        elif kind is EntryKind.WHITEOUT:  # the merged tree never holds one
            raise StoreCorrupt(f"merged tree: a whiteout at {name!r}")
        elif node.nlink > 1 and self.hardlink(name, node):
            pass
        elif kind is EntryKind.FILE:
            self.file(name, node)
        else:
            link = node.link.encode("utf-8", "surrogateescape")
            self.buffer += header(name, node, typeflag=_TYPEFLAG[kind], size=0, linkname=link)
        self.maybe_flush()

    def hardlink(self, name: bytes, node: Node) -> bool:
        """A type '1' member if ``node``'s inode was written under another name (True);
        else remember ``name`` as the one later names link to (False).  Any non-directory
        can be hardlinked within a layer: symlinks, devices and fifos too."""
        known = self.links.get(node.inode)
        if known is None:
            self.links[node.inode] = (name, node.nlink - 1)
            return False
        first, left = known
        if left > 1:
            self.links[node.inode] = (first, left - 1)
        else:
            del self.links[node.inode]
        self.hardlinks += 1
        self.buffer += header(name, node, typeflag=_HARDLINK, size=0, linkname=first)
        return True

    def maybe_flush(self) -> None:
        if len(self.buffer) >= _FLUSH_AT:
            self.flush()

    def file(self, name: bytes, node: Node) -> None:
        size = node.size
        if size == 0:
            self.buffer += header(name, node, typeflag=b"0", size=0)
            return
        path = self.data_dirs[node.layer] + data_name(node.data).encode()
        try:
            src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise StoreCorrupt(
                f"content file {os.fsdecode(path)} is missing from the store"
            ) from exc
        try:
            if size <= SMALL_FILE:
                # One read past the end tells a file of the wrong size, without an fstat.
                data = os.pread(src, size + 1, 0)
                if len(data) != size:
                    self.wrong_size(path, src, size)
                self.buffer += header(name, node, typeflag=b"0", size=size)
                self.buffer += data
            else:
                if os.fstat(src).st_size != size:
                    self.wrong_size(path, src, size)
                self.buffer += header(name, node, typeflag=b"0", size=size)
                self.flush()
                copied = self.sink.copy(src, size)
                if copied != size:
                    raise StoreCorrupt(f"content file {os.fsdecode(path)} shrank while it was read")
        finally:
            os.close(src)
        self.buffer += _padding(size)
        self.content_bytes += size
        if self.progress is not None:
            self.progress(size)

    @staticmethod
    def wrong_size(path: bytes, src: int, size: int) -> NoReturn:
        actual = os.fstat(src).st_size
        raise StoreCorrupt(
            f"content file {os.fsdecode(path)} has {actual} bytes where the merged tree says {size}"
        )


def _padding_to_record(offset: int) -> bytes:
    return bytes(-offset % RECORD)


__all__ = ["ExportSummary", "atomic_output", "header", "pax_time", "write_tar"]
