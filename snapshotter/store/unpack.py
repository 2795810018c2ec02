"""One layer tar -> one snapshot directory (a toc plus content files).

Layer tars come from strangers.  Python's ``tarfile`` extraction has had repeated bypasses
(CVE-2025-4517 and later), so ``tarfile`` only *parses* headers here; nothing it names is
ever created on the host.  Each entry is cleaned into a relative path (``..`` refused,
leading ``/`` dropped, as containerd and GNU tar do) and recorded in an in-memory tree; the
only host files created are content files ``data/<inode>`` made with ``O_EXCL|O_NOFOLLOW``
relative to a directory descriptor of the snapshot being built.  So a symlink in the layer,
a hardlink to ``/etc/shadow``, a whiteout named ``.wh...``: none of them can reach outside the
snapshot, because no host path is ever derived from a layer's names.

The layer's own replacements are applied while reading, in tar order (the last entry wins):
a file replaces a directory and its subtree, a directory replaces a symlink, a hardlink takes
its target's inode as it stands at that point.  Whiteouts follow the image spec
(layer.md#whiteouts): they hide lower-layer entries only, never an entry of their own layer,
whatever the tar order, so they are resolved after the whole layer has been read.

Reading is a two-thread pipeline: a feeder thread reads the blob, hashes it (digest),
decompresses it (ISA-L for gzip, zstandard for zstd; both release the GIL) and hashes the
tar stream (diff_id); the calling thread parses headers and writes content.  Memory stays
bounded by the queue between them, whatever the layer's size.
"""

from __future__ import annotations

import hashlib
import os
import queue
import tarfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Protocol

from ..errors import DigestMismatch, SnapshotterError, UnsafeArchive, UnsupportedMedia
from ..oci.digest import Digest, Readable, VerifyingReader
from .toc import (
    DATA_DIR,
    FLAG_IMPLIED,
    FLAG_OPAQUE,
    SYMLINK_MODE,
    TOC_NAME,
    EntryKind,
    Toc,
    TocEntry,
    sorted_entries,
)

# image-spec layer.md#whiteouts
WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"

NAME_MAX = 255  # the longest name a Linux file system (and FUSE) can present
CHUNK = 1 << 20
QUEUE_DEPTH = 8  # chunks in flight between the feeder and the parser: bounds memory
# Bounds on what a stranger's tar may make us hold in memory.  tarfile reads a PAX or GNU
# long-name header whole, so its size is capped as Go's archive/tar caps it; every entry
# costs ~0.7 KiB until the layer's index is written, so a layer's entries are capped too
# (real layers have tens of thousands; a million is ~700 MiB).
MAX_SPECIAL_HEADER = 1 << 20
MAX_LAYER_ENTRIES = 1_000_000

ROOT_INODE = 1


class ProgressFn(Protocol):
    def __call__(self, nbytes: int, /) -> None: ...


class Decompress(Protocol):
    """Makes the uncompressed stream of a layer from its (verifying) compressed stream; the
    default is ISA-L for gzip and zstandard for zstd.  ``lazy.seek_index`` passes one that
    also records checkpoints while it inflates."""

    def __call__(self, compressed: Readable, /) -> Readable: ...


class ContentSink(Protocol):
    """Takes the content of one regular file (``size > 0``) from ``src``, all
    ``info.size`` bytes of it, and returns its ``sha256:<hex>`` and the 512-byte blocks
    it takes: ``unpack_layer`` writes it into the snapshot; the seek index only hashes it
    and notes where it lies in the tar."""

    def __call__(self, inode: int, info: tarfile.TarInfo, src: Readable, /) -> tuple[str, int]: ...


@dataclass(frozen=True, slots=True)
class LayerScan:
    """What one verified pass over a layer blob found (``scan_layer``)."""

    layer_digest: Digest  # of the blob as read (compressed)
    blob_size: int
    tar_size: int  # bytes of the uncompressed tar stream
    toc: Toc
    dropped: frozenset[int]  # inodes given to the sink whose entries a later one replaced


@dataclass(frozen=True, slots=True)
class UnpackResult:
    layer_digest: Digest  # of the blob as read (compressed)
    diff_id: Digest  # of the uncompressed tar, verified against the config
    blob_size: int
    toc: Toc


def clean_path(name: str, what: str) -> str:
    """The confined relative form of a tar member name; raises on ``..`` and long names.

    Leading ``/`` and ``.`` components are dropped, so ``/etc/passwd`` and ``./etc/passwd``
    both become ``etc/passwd`` (containerd cleans names the same way).  ``..`` is refused
    outright rather than clamped: no honest layer has it.
    """
    parts: list[str] = []
    for component in name.split("/"):
        if component in ("", "."):
            continue
        if component == "..":
            raise UnsafeArchive(f"{what}: path {name!r} escapes the layer root")
        if len(os.fsencode(component)) > NAME_MAX:
            raise UnsafeArchive(
                f"{what}: name {component[:40]!r}... in {name[:80]!r} is longer than "
                f"{NAME_MAX} bytes, which no linux file system can hold"
            )
        parts.append(component)
    return "/".join(parts)


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def mtime_ns(info: tarfile.TarInfo) -> int:
    """Exact nanoseconds: the PAX ``mtime`` record is decimal text; never go through float."""
    text = info.pax_headers.get("mtime")
    if text:
        negative = text.startswith("-")
        whole, _, frac = text.lstrip("+-").partition(".")
        try:
            ns = int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9] or "0")
        except ValueError:
            ns = int(info.mtime) * 1_000_000_000
        else:
            return -ns if negative else ns
    return int(info.mtime) * 1_000_000_000


def xattrs_of(info: tarfile.TarInfo) -> tuple[tuple[str, bytes], ...]:
    """``SCHILY.xattr.NAME`` PAX records (GNU tar, Docker, containerd all write these).

    tarfile decodes PAX values as UTF-8 with surrogateescape, so binary values (file
    capabilities, ACLs) come back byte-exact through ``encode(..., 'surrogateescape')``.
    """
    out = []
    for key, value in info.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            out.append((key[len("SCHILY.xattr.") :], value.encode("utf-8", "surrogateescape")))
    return tuple(sorted(out))


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses oversized PAX / GNU long-name headers before reading them."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _SPECIAL_HEADER_TYPES and self.size > MAX_SPECIAL_HEADER:
            raise UnsafeArchive(
                f"tar header of {self.size} bytes before {self.name!r} "
                f"(more than {MAX_SPECIAL_HEADER})"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]


_SPECIAL_HEADER_TYPES = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)


class _LayerTree:
    """The layer's entries as they stand after applying its own tar in order."""

    def __init__(self, what: str):
        self.what = what
        self.entries: dict[str, TocEntry] = {}
        self.children: dict[str, set[str]] = {"": set()}
        self.whiteouts: set[str] = set()
        self.opaques: set[str] = set()
        self.next_inode = ROOT_INODE + 1
        self.entries[""] = TocEntry(
            "", EntryKind.DIR, 0o755, 0, 0, 0, 0, ROOT_INODE, flags=FLAG_IMPLIED
        )

    def new_inode(self) -> int:
        inode = self.next_inode
        self.next_inode += 1
        return inode

    def _remove(self, path: str) -> None:
        """Drop ``path`` and, for a directory, everything under it."""
        stack = [path]
        while stack:
            p = stack.pop()
            del self.entries[p]
            kids = self.children.pop(p, None)
            if kids:
                stack.extend(kids)
        self.children[_parent(path)].discard(path)

    def below_non_dir(self, path: str) -> bool:
        """Whether ``path`` or an ancestor is, in this layer so far, not a directory."""
        p = path
        while True:
            existing = self.entries.get(p)
            if existing is not None:
                return existing.kind is not EntryKind.DIR
            if not p:
                return False
            p = _parent(p)

    def ensure_dir(self, path: str) -> None:
        """Make ``path`` and its parents exist as directories (implied if not in the tar)."""
        missing: list[str] = []
        p = path
        while True:
            existing = self.entries.get(p)
            if existing is not None:
                if existing.kind is not EntryKind.DIR:
                    what = "symlink" if existing.kind is EntryKind.SYMLINK else "non-directory"
                    raise UnsafeArchive(
                        f"{self.what}: entry below {what} {p!r} of the same layer "
                        "(a layer may not write through or under its own links)"
                    )
                break
            missing.append(p)
            p = _parent(p)
        for p in reversed(missing):
            self.entries[p] = TocEntry(
                p, EntryKind.DIR, 0o755, 0, 0, 0, 0, self.new_inode(), flags=FLAG_IMPLIED
            )
            self.children[p] = set()
            self.children[_parent(p)].add(p)

    def put(self, entry: TocEntry) -> None:
        path = entry.path
        if path == "":
            if entry.kind is not EntryKind.DIR:
                raise UnsafeArchive(
                    f"{self.what}: entry '.' is a {entry.kind.name.lower()}; "
                    "it would replace the layer root"
                )
            root = self.entries[""]
            self.entries[""] = replace(entry, inode=root.inode, flags=0)
            return
        self.ensure_dir(_parent(path))
        old = self.entries.get(path)
        if old is not None:
            if old.kind is EntryKind.DIR and entry.kind is EntryKind.DIR:
                # A directory listed again changes its metadata and keeps its children.
                self.entries[path] = replace(entry, inode=old.inode, flags=0)
                return
            self._remove(path)
            if entry.kind is EntryKind.DIR:
                # The non-directory this layer wrote here already hid the lower directory:
                # the one made now starts empty, whatever lies below.
                self.opaques.add(path)
        self.entries[path] = entry
        self.children[_parent(path)].add(path)
        if entry.kind is EntryKind.DIR:
            self.children[path] = set()

    def finish(self) -> tuple[TocEntry, ...]:
        """Apply whiteouts and opaque markers, which never hide entries of this layer."""
        for path in self.opaques:
            e = self.entries.get(path)
            if e is not None and e.kind is EntryKind.DIR:
                self.entries[path] = replace(e, flags=e.flags | FLAG_OPAQUE)
        for path in sorted(self.whiteouts):
            parent = self.entries.get(_parent(path))
            if parent is None or parent.kind is not EntryKind.DIR:
                continue  # its directory was replaced later in the tar
            e = self.entries.get(path)
            if e is None:
                self.entries[path] = TocEntry(path, EntryKind.WHITEOUT, 0, 0, 0, 0, 0, 0)
            elif e.kind is EntryKind.DIR:
                # Lower `path` is deleted and this layer makes it anew: only this layer's
                # children show, exactly as if it were marked opaque, and nothing of the
                # deleted directory survives: an implied one gets the defaults, not the
                # lower metadata an implied directory otherwise takes (view/merge.py), and
                # so do the implied directories below it.
                self.entries[path] = replace(e, flags=(e.flags | FLAG_OPAQUE) & ~FLAG_IMPLIED)
                below = list(self.children.get(path, ()))
                while below:
                    p = below.pop()
                    d = self.entries[p]
                    if d.kind is EntryKind.DIR:
                        if d.implied:
                            self.entries[p] = replace(d, flags=d.flags & ~FLAG_IMPLIED)
                        below.extend(self.children.get(p, ()))
        return sorted_entries(self.entries.values())


class _Feeder:
    """Background thread: blob -> digest hash -> decompress -> diff_id hash -> queue."""

    def __init__(
        self,
        blob: Readable | BinaryIO,
        compression: str,
        layer_digest: Digest | None,
        blob_size: int | None,
        diff_id: Digest,
        what: str,
        progress: ProgressFn | None,
        decompress: Decompress | None = None,
    ):
        self.decompress = decompress
        self.compressed = VerifyingReader(
            _Counting(blob, progress) if progress else blob,
            layer_digest or Digest("sha256", "0" * 64),
            blob_size,
            what,
        )
        self.compression = compression
        self.check_digest = layer_digest is not None
        self.diff_hash = diff_id.hasher()
        self.diff_id = diff_id
        self.tar_size = 0
        self.what = what
        self.queue: queue.Queue[bytes | BaseException] = queue.Queue(QUEUE_DEPTH)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"feed {what}", daemon=True)
        self.thread.start()
        self._buffer = b""
        self._pos = 0
        self._eof = False
        self.position = 0  # bytes of the tar stream handed out so far
        self.real_end: int | None = None  # length of the real tar stream, once known

    def _decompressed(self) -> Readable:
        if self.decompress is not None:
            return self.decompress(self.compressed)
        if self.compression == "none":
            return self.compressed
        if self.compression == "gzip":
            from isal import igzip

            return igzip.GzipFile(fileobj=self.compressed, mode="rb")  # type: ignore[no-untyped-call]
        if self.compression == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().stream_reader(
                self.compressed,  # type: ignore[arg-type]
                read_size=CHUNK,
                read_across_frames=True,
            )
        raise UnsupportedMedia(f"{self.what}: unsupported compression {self.compression!r}")

    def _put(self, item: bytes | BaseException) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            source = self._decompressed()
            while True:
                chunk = source.read(CHUNK)
                if not chunk:
                    break
                self.diff_hash.update(chunk)
                self.tar_size += len(chunk)
                if not self._put(chunk):
                    return
            # Whatever follows the compressed stream's end still belongs to the blob.
            self.compressed.drain()
            self._put(b"")
        except SnapshotterError as exc:
            self._put(exc)
        except Exception as exc:  # corrupt compressed data, I/O errors
            # A blob that does not hash right explains the corruption better than the
            # decompressor's complaint: report that when it is the case.
            try:
                if self.check_digest:
                    self.compressed.drain()
                    self.compressed.verify()
            except SnapshotterError as mismatch:
                self._put(mismatch)
                return
            except Exception:
                pass
            self._put(DigestMismatch(f"{self.what}: cannot decompress ({self.compression}): {exc}"))

    # The file-like side, read by tarfile in the calling thread.
    def read(self, n: int = -1, /) -> bytes:
        """Exactly ``n`` bytes unless the stream ends: tarfile's "r:" mode relies on it."""
        if n is None or n < 0:
            n = CHUNK
        end = self._pos + n
        if end <= len(self._buffer):  # the common case: within the current chunk
            self._pos = end
            self.position += n
            return self._buffer[end - n : end]
        parts = []
        while n > 0:
            piece = self._read_some(n)
            if not piece:
                break
            parts.append(piece)
            n -= len(piece)
        out = b"".join(parts)
        self.position += len(out)
        return out

    # tarfile's "r:" mode wants tell() and seek(); it only ever seeks forward here (to the
    # next header, past padding), which we serve by reading.  This avoids "r|" mode, whose
    # buffer copies the rest of its megabyte on every 512-byte header read.
    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self.position
        if whence not in (0, 1) or offset < self.position:
            raise OSError(f"{self.what}: the layer stream cannot seek backwards")
        while self.position < offset:
            if not self.read(min(CHUNK, offset - self.position)):
                break
        return self.position

    def seekable(self) -> bool:
        return True

    def _read_some(self, n: int) -> bytes:
        while self._pos >= len(self._buffer):
            if self._eof:
                return b""
            item = self.queue.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                self.real_end = self.tar_size
                if self.tar_size == 0:
                    return b""
                # Go's archive/tar (and so umoci and containerd) reads a tar whose last
                # member lacks its padding and end-of-archive blocks; so do we, by handing
                # tarfile the missing zeros.  They are not hashed, and content that would
                # reach into them is refused (see ``check_within``).
                item = bytes((-self.tar_size) % 512 + 1024)
            self._buffer, self._pos = item, 0
        out = self._buffer[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def check_within(self, info: tarfile.TarInfo) -> None:
        """Refuse content that ran past the real end of the stream into our padding."""
        if self.real_end is not None and info.offset_data + info.size > self.real_end:
            raise UnsafeArchive(
                f"{self.what}: content of {info.name!r} is cut short by the end of the layer"
            )

    def close(self) -> None:
        self.stop.set()
        self.thread.join()

    def verify_after(self, failure: Exception, check_layer_digest: bool) -> None:
        """Raise a digest mismatch, if the blob has one, in place of ``failure``."""
        try:
            self.drain()
            self.verify(check_layer_digest)
        except DigestMismatch as mismatch:
            raise mismatch from failure
        except SnapshotterError:
            pass

    def verify(self, check_layer_digest: bool) -> Digest:
        self.thread.join()
        if check_layer_digest:
            self.compressed.verify()
        actual = Digest(self.diff_id.algorithm, self.diff_hash.hexdigest())
        if actual != self.diff_id:
            raise DigestMismatch(
                f"{self.what}: uncompressed content hashes to {actual}, "
                f"but the config's rootfs.diff_ids says {self.diff_id}"
            )
        return Digest("sha256", self.compressed._hash.hexdigest())


class _Counting:
    def __init__(self, raw: Readable | BinaryIO, progress: ProgressFn):
        self.raw = raw
        self.progress = progress

    def read(self, n: int = -1, /) -> bytes:
        chunk = self.raw.read(n)
        if chunk:
            self.progress(len(chunk))
        return chunk


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _copy_content(
    src: Readable,
    data_fd: int,
    name: str,
    size: int,
    sparse: list[tuple[int, int]] | None,
    what: str,
) -> tuple[str, int]:
    """Copy ``size`` bytes of content into a new data file ``name``; return the content's
    ``sha256:<hex>`` (holes hashed as the zeros they read as) and the 512-byte blocks the
    data file takes (``st_blocks``: holes take none), which ``stat`` of the view shows."""
    h = hashlib.sha256()
    fd = os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o644,
        dir_fd=data_fd,
    )
    try:
        if sparse is None:
            copied = _copy_range(src, fd, size, h, hole=False)
        else:
            # Data regions from the sparse map are written; the holes between them are
            # skipped with lseek, so they stay holes in the data file.
            copied = pos = 0
            for offset, length in sorted(sparse):
                if offset < pos:
                    raise UnsafeArchive(f"{what}: sparse map regions overlap")
                copied += _copy_range(src, fd, offset - pos, h, hole=True)
                copied += _copy_range(src, fd, length, h, hole=False)
                pos = offset + length
            copied += _copy_range(src, fd, size - pos, h, hole=True)
            os.ftruncate(fd, size)
        if copied != size:
            raise UnsafeArchive(f"{what}: content is {copied} bytes, header says {size}")
    finally:
        os.close(fd)
    # Asked after close: blocks a file system reserves past the end while a file grows
    # (XFS's speculative preallocation) are trimmed when it is closed.
    blocks = os.stat(name, dir_fd=data_fd, follow_symlinks=False).st_blocks
    return f"sha256:{h.hexdigest()}", blocks


_ZEROS = bytes(CHUNK)


def _copy_range(src: Readable, fd: int, length: int, h: hashlib._Hash, *, hole: bool) -> int:
    done = 0
    while done < length:
        chunk = src.read(min(CHUNK, length - done))
        if not chunk:
            break
        done += len(chunk)
        if hole:
            os.lseek(fd, len(chunk), os.SEEK_CUR)
            h.update(_ZEROS[: len(chunk)])
        else:
            _write_all(fd, chunk)
            h.update(chunk)
    return done


def unpack_layer(
    blob: Readable | BinaryIO,
    dest: Path,
    *,
    compression: str,
    diff_id: Digest,
    layer_digest: Digest | None,
    blob_size: int | None,
    what: str,
    progress: ProgressFn | None = None,
    cancelled: Callable[[], bool] | None = None,
    max_entries: int = MAX_LAYER_ENTRIES,
) -> UnpackResult:
    """Unpack one layer blob into the empty directory ``dest`` and verify it.

    ``layer_digest``/``blob_size`` describe the blob as stored (compressed); pass None when
    the source does not say (docker-archive), and the result reports the computed digest.
    ``diff_id`` is the uncompressed digest from the image config and is always checked.
    On any error ``dest`` is left for the caller to remove; nothing outside it is touched.
    """
    data_dir = dest / DATA_DIR
    data_dir.mkdir(mode=0o755)
    data_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def write(inode: int, info: tarfile.TarInfo, src: Readable) -> tuple[str, int]:
        sparse: list[tuple[int, int]] | None = info.sparse  # type: ignore[assignment]
        return _copy_content(src, data_fd, f"{inode:x}", info.size, sparse, what)

    try:
        scan = scan_layer(
            blob,
            compression=compression,
            diff_id=diff_id,
            layer_digest=layer_digest,
            blob_size=blob_size,
            what=what,
            content=write,
            progress=progress,
            cancelled=cancelled,
            max_entries=max_entries,
        )
    finally:
        os.close(data_fd)
    for inode in scan.dropped:  # content of entries replaced later in the tar
        os.unlink(dest / DATA_DIR / f"{inode:x}")
    scan.toc.write(dest / TOC_NAME)
    return UnpackResult(scan.layer_digest, diff_id, scan.blob_size, scan.toc)


def scan_layer(
    blob: Readable | BinaryIO,
    *,
    compression: str,
    diff_id: Digest,
    layer_digest: Digest | None,
    blob_size: int | None,
    what: str,
    content: ContentSink,
    progress: ProgressFn | None = None,
    cancelled: Callable[[], bool] | None = None,
    max_entries: int = MAX_LAYER_ENTRIES,
    decompress: Decompress | None = None,
) -> LayerScan:
    """One verified pass over a layer blob: every header parsed into the layer's toc (its
    own replacements, hardlinks and whiteouts applied), every regular file's content
    handed to ``content``, the blob's digest and the tar's diff_id checked at the end.
    Nothing is written to the host here; ``unpack_layer``'s sink writes the files."""
    feeder = _Feeder(
        blob, compression, layer_digest, blob_size, diff_id, what, progress, decompress
    )
    tree = _LayerTree(what)
    # toc inode -> content digest and blocks, for each file given to the sink
    written: dict[int, tuple[str, int]] = {}
    try:
        try:
            try:
                tf = tarfile.open(fileobj=feeder, mode="r:", tarinfo=_BoundedTarInfo)  # type: ignore[call-overload]  # noqa: SIM115
            except tarfile.ReadError as exc:
                if feeder.real_end == 0:
                    tf = None  # an empty blob: a layer with no entries
                else:
                    raise UnsafeArchive(f"{what}: not a tar archive ({exc})") from exc
            if tf is not None:
                _read_entries(tf, tree, content, written, what, cancelled, feeder, max_entries)
        except UnsafeArchive as exc:
            # A blob that is not what its descriptor says explains a bad tar better than
            # the tar's own complaint: verify the digests first, and report a mismatch.
            feeder.verify_after(exc, check_layer_digest=layer_digest is not None)
            if str(exc).startswith(what):
                raise
            raise UnsafeArchive(f"{what}: {exc}") from exc
        feeder.drain()
        computed = feeder.verify(check_layer_digest=layer_digest is not None)
    finally:
        feeder.close()
    entries = tuple(
        replace(e, digest=written[e.inode][0], blocks=written[e.inode][1]) if e.has_data else e
        for e in tree.finish()
    )
    live = {e.inode for e in entries if e.has_data}
    return LayerScan(
        computed,
        feeder.compressed.count,
        feeder.tar_size,
        Toc(str(diff_id), entries),
        frozenset(written.keys() - live),
    )


def _read_entries(
    tf: tarfile.TarFile,
    tree: _LayerTree,
    content: ContentSink,
    written: dict[int, tuple[str, int]],
    what: str,
    cancelled: Callable[[], bool] | None,
    feeder: _Feeder,
    max_entries: int,
) -> None:
    try:
        count = 0
        while (info := tf.next()) is not None:
            tf.members.clear()  # type: ignore[attr-defined]  # else every header stays in memory
            count += 1
            if count > max_entries:
                raise UnsafeArchive(f"{what}: more than {max_entries} entries")
            if cancelled is not None and count % 256 == 0 and cancelled():
                raise SnapshotterError(f"{what}: cancelled")
            _read_entry(tf, info, tree, content, written, what, feeder)
    except tarfile.TarError as exc:
        raise UnsafeArchive(f"{what}: broken tar archive ({exc})") from exc
    except EOFError as exc:
        raise UnsafeArchive(f"{what}: tar archive ends early ({exc})") from exc


def _read_entry(
    tf: tarfile.TarFile,
    info: tarfile.TarInfo,
    tree: _LayerTree,
    content: ContentSink,
    written: dict[int, tuple[str, int]],
    what: str,
    feeder: _Feeder,
) -> None:
    entry = _apply_header(info, tree, what)
    if entry is None or entry.kind is not EntryKind.FILE or info.islnk() or entry.size == 0:
        return
    inode = entry.inode
    sparse: list[tuple[int, int]] | None = info.sparse  # type: ignore[assignment]
    if sparse is None:
        # Content follows its header directly: copy it straight from the stream.
        feeder.seek(info.offset_data)
        src: Readable = feeder
    else:
        extracted = tf.extractfile(info)
        assert extracted is not None
        src = extracted
    written[inode] = content(inode, info, src)
    feeder.check_within(info)


def toc_from_headers(
    headers: Iterable[tarfile.TarInfo],
    diff_id: str,
    what: str,
    file_meta: Callable[[tarfile.TarInfo], tuple[str, int]],
    max_entries: int = MAX_LAYER_ENTRIES,
) -> tuple[Toc, dict[int, tarfile.TarInfo]]:
    """A layer's toc from its tar headers alone (a TOC the layer carries, eStargz's), by
    the rules ``scan_layer`` applies to a tar: the same confinement, whiteouts, opaque
    markers, hardlinks and in-layer replacements.  ``file_meta(header)`` gives a regular
    file's content digest and blocks.  Also returns, for each regular file with content
    in the toc, the header it came from (by toc inode)."""
    tree = _LayerTree(what)
    files: dict[int, tarfile.TarInfo] = {}
    for count, info in enumerate(headers, start=1):
        if count > max_entries:
            raise UnsafeArchive(f"{what}: more than {max_entries} entries")
        entry = _apply_header(info, tree, what)
        if entry is not None and entry.has_data and not info.islnk():
            files[entry.inode] = info
    entries: list[TocEntry] = []
    for e in tree.finish():
        if e.has_data:
            digest, blocks = file_meta(files[e.inode])
            e = replace(e, digest=digest, blocks=blocks)
        entries.append(e)
    live = {e.inode for e in entries if e.has_data}
    return Toc(diff_id, tuple(entries)), {inode: files[inode] for inode in live}


def _apply_header(info: tarfile.TarInfo, tree: _LayerTree, what: str) -> TocEntry | None:
    """Apply one tar header to the layer's tree, by the layer rules (whiteouts, opaque
    markers, hardlinks, replacements, confinement); the entry it made, if any (a
    hardlink's is its source's copy: its content is the source's)."""
    path = clean_path(info.name, what)
    base = path.rpartition("/")[2]
    if base.startswith(WHITEOUT_PREFIX):
        parent = _parent(path)
        hidden = base[len(WHITEOUT_PREFIX) :]
        if not base.startswith(WHITEOUT_META_PREFIX) and hidden in ("", ".", ".."):
            raise UnsafeArchive(f"{what}: whiteout {info.name!r} names no entry")
        if tree.below_non_dir(parent):
            # This layer already replaced the directory by a file or link, which hides
            # the whole lower subtree: the marker has nothing left to do.  (umoci repack
            # writes `d` and then `d/.wh.child` when a directory becomes a file.)
            return None
        tree.ensure_dir(parent)
        if base == WHITEOUT_OPAQUE:
            tree.opaques.add(parent)
        elif base.startswith(WHITEOUT_META_PREFIX):
            pass  # other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): not content
        else:
            tree.whiteouts.add(_join(parent, hidden))
        return None

    common = dict(
        mode=info.mode & 0o7777,
        uid=info.uid,
        gid=info.gid,
        mtime_ns=mtime_ns(info),
        xattrs=xattrs_of(info),
    )
    if info.islnk():
        target = clean_path(info.linkname, what)
        source = tree.entries.get(target)
        if source is None or source.kind in (EntryKind.DIR, EntryKind.WHITEOUT):
            raise UnsafeArchive(
                f"{what}: hardlink {info.name!r} points to {info.linkname!r}, "
                "which is not a file earlier in this layer"
            )
        entry = replace(source, path=path)
        tree.put(entry)
        return entry
    if info.isdir():
        entry = TocEntry(path, EntryKind.DIR, size=0, inode=tree.new_inode(), **common)  # type: ignore[arg-type]
        tree.put(entry)
        return entry
    if info.issym():
        # Whatever mode the header says (BSD tar writes the link's own bits), a symlink
        # extracted on Linux has 0777: the toc records what extraction makes.
        entry = TocEntry(
            path,
            EntryKind.SYMLINK,
            size=0,
            inode=tree.new_inode(),
            link=info.linkname,
            **{**common, "mode": SYMLINK_MODE},  # type: ignore[arg-type]
        )
        tree.put(entry)
        return entry
    if info.ischr() or info.isblk() or info.isfifo():
        kind = (
            EntryKind.CHAR if info.ischr() else EntryKind.BLOCK if info.isblk() else EntryKind.FIFO
        )
        entry = TocEntry(
            path,
            kind,
            size=0,
            inode=tree.new_inode(),
            rdev_major=info.devmajor if kind is not EntryKind.FIFO else 0,
            rdev_minor=info.devminor if kind is not EntryKind.FIFO else 0,
            **common,  # type: ignore[arg-type]
        )
        tree.put(entry)
        return entry
    if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) or info.type == b"V":
        return None  # a volume label, or a header tarfile already folded into the next member
    if info.type == b"M":
        raise UnsafeArchive(f"{what}: multi-volume member {info.name!r} is not supported")
    # Regular files; POSIX says unknown types are read as regular files too.
    entry = TocEntry(path, EntryKind.FILE, size=info.size, inode=tree.new_inode(), **common)  # type: ignore[arg-type]
    tree.put(entry)  # before any content, so a path under a symlink fails first
    return entry
