"""Build OCI / Docker container images in code, for tests.

Only the standard library (plus ``zstandard`` for zstd layers) is used, and all output is
deterministic: the same builder calls always give byte-identical layers, configs, manifests
and archives.

Typical use::

    base = LayerBuilder().dir("etc").file("etc/hostname", b"box\\n")
    top = LayerBuilder().whiteout("etc/hostname").symlink("etc/link", "hostname")
    img = ImageBuilder([base, top], config_extra={"Env": ["A=1"], "Cmd": ["/bin/sh"]})
    write_oci_layout(tmp_path / "oci", {"latest": img})
    write_docker_archive(tmp_path / "img.tar", {"example.com/app:1.0": img})

Modification times: a ``float`` cannot hold nanoseconds at today's epoch values (its
resolution there is ~240 ns), so every ``mtime`` parameter also accepts a
:class:`decimal.Decimal`; the default :data:`DEFAULT_MTIME` is the exact
``Decimal("1700000000.123456789")``. In PAX format a non-integral mtime is written as the
pax ``mtime`` record with exactly 9 decimals (``"1700000000.123456789"``); the ustar header
field holds the floor. Floats are converted through their shortest ``repr`` first, so
``1.5`` is written as ``"1.500000000"``. GNU and USTAR formats can only store whole
seconds: the fraction is dropped there.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import tarfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any, Literal, TypeAlias

import zstandard

__all__ = [
    "DEFAULT_MTIME",
    "INDEX_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "CONFIG_MEDIA_TYPE",
    "LAYER_MEDIA_TYPES",
    "BuiltLayer",
    "Compression",
    "ImageBuilder",
    "LayerBuilder",
    "Mtime",
    "compress",
    "decompress",
    "mtime_ns",
    "sha256_digest",
    "tar_entries",
    "tar_files",
    "write_docker_archive",
    "write_oci_archive",
    "write_oci_layout",
    "xattrs_of",
]

Mtime: TypeAlias = int | float | Decimal
Compression: TypeAlias = Literal["none", "gzip", "zstd"]

DEFAULT_MTIME: Decimal = Decimal("1700000000.123456789")

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPES: dict[Compression, str] = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"

_BLOCK = 512
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"
_NS = Decimal("0.000000001")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# --------------------------------------------------------------------------- small helpers


def sha256_digest(data: bytes) -> str:
    """``"sha256:<hex>"`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64:
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexpart


def _to_decimal(value: Mtime) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(value)


def mtime_ns(value: Mtime) -> int:
    """The mtime in integer nanoseconds, exactly as the builders write it (9 decimals)."""
    return int(_to_decimal(value).quantize(_NS).scaleb(9))


def _mtime_fields(value: Mtime) -> tuple[int, str | None]:
    """(whole seconds for the ustar field, pax ``mtime`` string or None if integral)."""
    exact = _to_decimal(value).quantize(_NS)
    whole = int(exact.to_integral_value(rounding=ROUND_FLOOR))
    if exact == whole:
        return whole, None
    return whole, f"{exact:.9f}"


def _pad(data: bytes) -> bytes:
    rest = len(data) % _BLOCK
    return data if rest == 0 else data + b"\0" * (_BLOCK - rest)


def _header(info: tarfile.TarInfo, fmt: int) -> bytes:
    """Serialise ``info`` like ``TarInfo.tobuf`` but keep ``info.name`` verbatim.

    ``tobuf`` appends ``/`` to directory names; hostile tests need e.g. a bare ``.``.
    """
    fields = dict(info.get_info())
    fields["name"] = info.name
    for key, value in fields.items():
        if value is None:
            raise ValueError(f"TarInfo.{key} may not be None")
    if fmt == tarfile.USTAR_FORMAT:
        return info.create_ustar_header(fields, _ENCODING, _ERRORS)
    if fmt == tarfile.GNU_FORMAT:
        return info.create_gnu_header(fields, _ENCODING, _ERRORS)
    if fmt == tarfile.PAX_FORMAT:
        return info.create_pax_header(fields, _ENCODING)
    raise ValueError(f"unknown tar format {fmt!r}")


def _octal_field(value: int, digits: int) -> bytes:
    """A numeric header field: NUL-terminated octal, or GNU base-256 if too large."""
    if 0 <= value < 8 ** (digits - 1):
        return b"%0*o\0" % (digits - 1, value)
    if 0 <= value < 256 ** (digits - 1):
        return b"\x80" + value.to_bytes(digits - 1, "big")
    raise ValueError(f"{value} does not fit a {digits}-byte tar field")


def _fix_checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:155] = b"%06o\0" % sum(block)


# --------------------------------------------------------------------------- layers


class LayerBuilder:
    """Builds one layer tar in memory; entries appear in call order.

    Paths are relative POSIX strings without a leading ``/``; they are validated (no empty,
    ``.`` or ``..`` components) and directories get the conventional trailing ``/``.
    ``raw_name=True`` on any method writes the name byte-for-byte as given instead (for
    hostile tests: ``'../x'``, ``'/etc/passwd'``, ``'./a'``, ``'.'``); for ``whiteout`` and
    ``opaque`` the marker is still derived from the raw path.

    xattrs are written as PAX records ``SCHILY.xattr.<name>`` and need ``PAX_FORMAT``. Values
    are bytes: they are stored as ``value.decode("utf-8", "surrogateescape")``, so arbitrary
    binary values (NUL, ``\\xff``, newlines) are written byte-exact; if any value of an entry
    is not valid UTF-8, ``tarfile`` also writes ``hdrcharset=BINARY`` for that entry (Go
    ignores it; GNU tar warns "unknown extended header keyword" but still extracts). Read
    them back with :func:`xattrs_of`.
    """

    def __init__(self, *, format: int = tarfile.PAX_FORMAT, mtime: Mtime = DEFAULT_MTIME) -> None:
        if format not in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
            raise ValueError(f"unknown tar format {format!r}")
        self.format = format
        self.mtime: Mtime = mtime
        self._chunks: list[bytes] = []

    # -- internals ---------------------------------------------------------------------

    @staticmethod
    def _name(path: str, raw_name: bool) -> str:
        if raw_name:
            return path
        clean = path.rstrip("/")
        parts = clean.split("/")
        if not clean or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(
                f"path {path!r} must be relative and normalised (use raw_name=True to force it)"
            )
        return clean

    def _info(
        self,
        name: str,
        type_: bytes,
        *,
        mode: int,
        uid: int,
        gid: int,
        uname: str,
        gname: str,
        mtime: Mtime | None,
        xattrs: Mapping[str, bytes] | None = None,
    ) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = type_
        info.mode = mode
        info.uid = uid
        info.gid = gid
        info.uname = uname
        info.gname = gname
        whole, pax_mtime = _mtime_fields(self.mtime if mtime is None else mtime)
        info.mtime = whole
        pax: dict[str, str] = {}
        if pax_mtime is not None and self.format == tarfile.PAX_FORMAT:
            pax["mtime"] = pax_mtime
        if xattrs:
            if self.format != tarfile.PAX_FORMAT:
                raise ValueError("xattrs need PAX_FORMAT")
            for key, value in xattrs.items():
                pax["SCHILY.xattr." + key] = value.decode(_ENCODING, _ERRORS)
        info.pax_headers = pax
        return info

    def _append(self, info: tarfile.TarInfo, data: bytes = b"", fmt: int | None = None) -> None:
        self._chunks.append(_header(info, self.format if fmt is None else fmt) + _pad(data))

    # -- entry kinds -------------------------------------------------------------------

    def file(
        self,
        path: str,
        data: bytes = b"",
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        uname: str = "",
        gname: str = "",
        mtime: Mtime | None = None,
        xattrs: Mapping[str, bytes] | None = None,
        raw_name: bool = False,
    ) -> LayerBuilder:
        """A regular file with ``data`` as content."""
        info = self._info(
            self._name(path, raw_name),
            tarfile.REGTYPE,
            mode=mode,
            uid=uid,
            gid=gid,
            uname=uname,
            gname=gname,
            mtime=mtime,
            xattrs=xattrs,
        )
        info.size = len(data)
        self._append(info, data)
        return self

    def dir(
        self,
        path: str,
        *,
        mode: int = 0o755,
        uid: int = 0,
        gid: int = 0,
        uname: str = "",
        gname: str = "",
        mtime: Mtime | None = None,
        xattrs: Mapping[str, bytes] | None = None,
        raw_name: bool = False,
    ) -> LayerBuilder:
        """A directory (written as ``path/`` unless ``raw_name``)."""
        name = path if raw_name else self._name(path, False) + "/"
        info = self._info(
            name,
            tarfile.DIRTYPE,
            mode=mode,
            uid=uid,
            gid=gid,
            uname=uname,
            gname=gname,
            mtime=mtime,
            xattrs=xattrs,
        )
        self._append(info)
        return self

    def symlink(
        self,
        path: str,
        target: str,
        *,
        mode: int = 0o777,
        uid: int = 0,
        gid: int = 0,
        uname: str = "",
        gname: str = "",
        mtime: Mtime | None = None,
        xattrs: Mapping[str, bytes] | None = None,
        raw_name: bool = False,
    ) -> LayerBuilder:
        """A symlink; ``target`` is written verbatim.  ``mode`` is what the header says:
        GNU tar and Go write 0777, BSD tar (macOS) the link's own bits, e.g. 0755."""
        info = self._info(
            self._name(path, raw_name),
            tarfile.SYMTYPE,
            mode=mode,
            uid=uid,
            gid=gid,
            uname=uname,
            gname=gname,
            mtime=mtime,
            xattrs=xattrs,
        )
        info.linkname = target
        self._append(info)
        return self

    def hardlink(
        self, path: str, target: str, *, mtime: Mtime | None = None, raw_name: bool = False
    ) -> LayerBuilder:
        """A hard link to ``target`` (an archive path, written verbatim)."""
        info = self._info(
            self._name(path, raw_name),
            tarfile.LNKTYPE,
            mode=0o644,
            uid=0,
            gid=0,
            uname="",
            gname="",
            mtime=mtime,
        )
        info.linkname = target
        self._append(info)
        return self

    def _device(
        self,
        type_: bytes,
        path: str,
        major: int,
        minor: int,
        *,
        mode: int,
        uid: int,
        gid: int,
        uname: str,
        gname: str,
        mtime: Mtime | None,
        raw_name: bool,
    ) -> LayerBuilder:
        info = self._info(
            self._name(path, raw_name),
            type_,
            mode=mode,
            uid=uid,
            gid=gid,
            uname=uname,
            gname=gname,
            mtime=mtime,
        )
        info.devmajor = major
        info.devminor = minor
        self._append(info)
        return self

    def chardev(
        self,
        path: str,
        major: int,
        minor: int,
        *,
        mode: int = 0o666,
        uid: int = 0,
        gid: int = 0,
        uname: str = "",
        gname: str = "",
        mtime: Mtime | None = None,
        raw_name: bool = False,
    ) -> LayerBuilder:
        """A character device node."""
        return self._device(
            tarfile.CHRTYPE,
            path,
            major,
            minor,
            mode=mode,
            uid=uid,
            gid=gid,
            uname=uname,
            gname=gname,
            mtime=mtime,
            raw_name=raw_name,
        )

    def blockdev(
        self,
        path: str,
        major: int,
        minor: int,
        *,
        mode: int = 0o666,
        uid: int = 0,
        gid: int = 0,
        uname: str = "",
        gname: str = "",
        mtime: Mtime | None = None,
        raw_name: bool = False,
    ) -> LayerBuilder:
        """A block device node."""
        return self._device(
            tarfile.BLKTYPE,
            path,
            major,
            minor,
            mode=mode,
            uid=uid,
            gid=gid,
            uname=uname,
            gname=gname,
            mtime=mtime,
            raw_name=raw_name,
        )

    def fifo(
        self,
        path: str,
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        uname: str = "",
        gname: str = "",
        mtime: Mtime | None = None,
        raw_name: bool = False,
    ) -> LayerBuilder:
        """A named pipe."""
        info = self._info(
            self._name(path, raw_name),
            tarfile.FIFOTYPE,
            mode=mode,
            uid=uid,
            gid=gid,
            uname=uname,
            gname=gname,
            mtime=mtime,
        )
        self._append(info)
        return self

    def whiteout(
        self, path: str, *, mtime: Mtime | None = None, raw_name: bool = False
    ) -> LayerBuilder:
        """An empty regular file ``<dir>/.wh.<base>`` hiding ``path`` of lower layers."""
        name = self._name(path, raw_name)
        head, sep, base = name.rpartition("/")
        return self.file(f"{head}{sep}.wh.{base}", mtime=mtime, raw_name=True)

    def opaque(
        self, dirpath: str, *, mtime: Mtime | None = None, raw_name: bool = False
    ) -> LayerBuilder:
        """The opaque-directory marker ``<dirpath>/.wh..wh..opq`` (empty regular file).

        It hides everything of lower layers below ``dirpath``; entries of this layer stay.
        """
        name = self._name(dirpath, raw_name)
        return self.file(f"{name}/.wh..wh..opq", mtime=mtime, raw_name=True)

    def sparse_file(
        self,
        path: str,
        size: int,
        chunks: Mapping[int, bytes],
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        uname: str = "",
        gname: str = "",
        mtime: Mtime | None = None,
        raw_name: bool = False,
        align: bool = True,
    ) -> LayerBuilder:
        """A GNU sparse file of logical ``size``: ``chunks`` maps offsets to data, the rest
        is holes (reads as zeros).

        The encoding follows the builder's format (header bytes are written by hand, since
        ``tarfile`` can read but not write sparse members):

        * ``PAX_FORMAT``: GNU sparse PAX 1.0 — pax records ``GNU.sparse.major=1``,
          ``minor=0``, ``name``, ``realsize``; ustar name ``<dir>/GNUSparseFile.0/<base>``;
          the data area starts with the decimal sparse map padded to 512 bytes.
        * ``GNU_FORMAT``: old GNU type ``'S'`` header with 4 inline map entries and
          extension blocks of 21 entries each.

        With ``align`` (default) the stored data regions are widened to 512-byte boundaries
        (clamped to ``size``, filled with zeros) and merged, as GNU tar writes them: GNU tar
        reads each region from a fresh 512-byte block, while Go's archive/tar and Python's
        tarfile read the regions back to back, so only aligned maps mean the same thing to
        all readers. ``align=False`` stores the chunks exactly as given (hostile tests).
        Like GNU tar, a zero-length extent at ``size`` terminates a map whose file ends in a
        hole. ``USTAR_FORMAT`` cannot express sparse files and raises ``ValueError``.

        Reader support differs: Python's tarfile and GNU tar read both encodings; Go's
        archive/tar expands PAX 1.0 but hands old-GNU members on with typeflag ``'S'``, which
        umoci 0.4 rejects ("unknown typeflag"). Prefer the PAX encoding unless testing that.
        """
        name = self._name(path, raw_name)
        given: list[tuple[int, bytes]] = []
        end = 0
        for offset, data in sorted(chunks.items()):
            if not data:
                continue
            if offset < end:
                raise ValueError(f"sparse chunk at {offset} overlaps the previous one")
            end = offset + len(data)
            if end > size:
                raise ValueError(f"sparse chunk at {offset} extends beyond size {size}")
            given.append((offset, data))
        regions: list[tuple[int, bytearray]] = []
        for offset, data in given:
            start, stop = offset, offset + len(data)
            if align:
                start = start - start % _BLOCK
                stop = min(-(-stop // _BLOCK) * _BLOCK, size)
            prev_end = regions[-1][0] + len(regions[-1][1]) if regions else -1
            if start < prev_end or (align and start == prev_end):
                r_start, buf = regions[-1]
                buf.extend(bytes(max(0, stop - r_start - len(buf))))
            else:
                r_start, buf = start, bytearray(stop - start)
                regions.append((r_start, buf))
            buf[offset - r_start : offset - r_start + len(data)] = data
        extents = [(start, len(buf)) for start, buf in regions]
        payload = b"".join(bytes(buf) for _, buf in regions)
        if not extents or extents[-1][0] + extents[-1][1] < size:
            extents.append((size, 0))
        info = self._info(
            name,
            tarfile.REGTYPE,
            mode=mode,
            uid=uid,
            gid=gid,
            uname=uname,
            gname=gname,
            mtime=mtime,
        )
        if self.format == tarfile.PAX_FORMAT:
            self._sparse_pax10(info, size, extents, payload)
        elif self.format == tarfile.GNU_FORMAT:
            self._sparse_gnu_old(info, size, extents, payload)
        else:
            raise ValueError("sparse files need GNU_FORMAT or PAX_FORMAT")
        return self

    def _sparse_pax10(
        self, info: tarfile.TarInfo, size: int, extents: list[tuple[int, int]], payload: bytes
    ) -> None:
        real_name = info.name
        head, sep, base = real_name.rpartition("/")
        stored_name = f"{head}/GNUSparseFile.0/{base}" if sep else f"./GNUSparseFile.0/{base}"
        sparse_map = f"{len(extents)}\n" + "".join(f"{o}\n{n}\n" for o, n in extents)
        data = _pad(sparse_map.encode("ascii")) + payload
        # "path" goes first so that GNU.sparse.name, applied later, wins in every reader.
        pax = {
            "path": stored_name,
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": real_name,
            "GNU.sparse.realsize": str(size),
        }
        pax.update(info.pax_headers)
        info.pax_headers = pax
        info.name = stored_name
        info.size = len(data)
        self._append(info, data)

    def _sparse_gnu_old(
        self, info: tarfile.TarInfo, size: int, extents: list[tuple[int, int]], payload: bytes
    ) -> None:
        info.type = tarfile.GNUTYPE_SPARSE
        info.size = len(payload)

        def entries(block: bytearray, at: int, items: Sequence[tuple[int, int]]) -> None:
            for i, (offset, length) in enumerate(items):
                pos = at + 24 * i
                block[pos : pos + 12] = _octal_field(offset, 12)
                block[pos + 12 : pos + 24] = _octal_field(length, 12)

        raw = _header(info, tarfile.GNU_FORMAT)
        main = bytearray(raw[-_BLOCK:])
        entries(main, 386, extents[:4])
        rest = extents[4:]
        main[482] = 1 if rest else 0
        main[483:495] = _octal_field(size, 12)
        _fix_checksum(main)
        out = bytearray(raw[:-_BLOCK]) + main
        while rest:
            ext = bytearray(_BLOCK)
            entries(ext, 0, rest[:21])
            rest = rest[21:]
            ext[504] = 1 if rest else 0
            out += ext
        self._chunks.append(bytes(out) + _pad(payload))

    def raw(
        self,
        info: tarfile.TarInfo,
        data: bytes | None = None,
        *,
        format: int | None = None,
        fix_size: bool = True,
    ) -> LayerBuilder:
        """Escape hatch: write ``info`` as given (name verbatim) followed by ``data``.

        With ``fix_size`` (default) and ``data`` given, ``info.size`` is set to
        ``len(data)``; pass ``fix_size=False`` to write a lying size field. ``data`` is
        padded to 512 bytes. ``format`` overrides the builder's tar format for this entry.
        """
        if data is not None and fix_size:
            info.size = len(data)
        self._append(info, data or b"", format)
        return self

    def raw_bytes(self, data: bytes) -> LayerBuilder:
        """Append ``data`` to the archive stream verbatim (no header, no padding)."""
        self._chunks.append(data)
        return self

    # -- output ------------------------------------------------------------------------

    def tar_bytes(self) -> bytes:
        """The uncompressed layer tar, ending with the two zero blocks (no record padding)."""
        return b"".join(self._chunks) + b"\0" * (2 * _BLOCK)

    def diff_id(self) -> str:
        """``"sha256:<hex>"`` of :meth:`tar_bytes`."""
        return sha256_digest(self.tar_bytes())


# --------------------------------------------------------------------------- compression


def compress(data: bytes, compression: Compression, *, zstd_frames: int = 2) -> bytes:
    """Deterministically compress a layer tar.

    gzip has mtime 0 in its header. zstd output is ``zstd_frames`` (>= 2) independent
    frames, each with content size and checksum, concatenated, to exercise multi-frame
    decoding.
    """
    if compression == "none":
        return data
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        frames = max(2, zstd_frames)
        cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
        bounds = [len(data) * i // frames for i in range(frames + 1)]
        return b"".join(cctx.compress(data[a:b]) for a, b in itertools.pairwise(bounds))
    raise ValueError(f"unknown compression {compression!r}")


def decompress(blob: bytes) -> bytes:
    """Undo :func:`compress`, detecting gzip / zstd (all frames) by magic; else ``blob``."""
    if blob.startswith(_GZIP_MAGIC):
        return gzip.decompress(blob)
    if blob.startswith(_ZSTD_MAGIC):
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(blob), read_across_frames=True
        )
        with reader:
            return reader.read()
    return blob


def tar_entries(data: bytes) -> list[tarfile.TarInfo]:
    """Members of a tar (compressed gzip/zstd blobs are decompressed first)."""
    with tarfile.open(fileobj=io.BytesIO(decompress(data)), mode="r:") as tar:
        return tar.getmembers()


def tar_files(data: bytes) -> dict[str, bytes]:
    """``{name: content}`` of the regular (incl. sparse) files of a tar, last entry wins."""
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(decompress(data)), mode="r:") as tar:
        for member in tar:
            if member.isreg():
                fh = tar.extractfile(member)
                assert fh is not None
                out[member.name] = fh.read()
    return out


def xattrs_of(info: tarfile.TarInfo) -> dict[str, bytes]:
    """The ``SCHILY.xattr.*`` records of a member read by ``tarfile``, as bytes."""
    prefix = "SCHILY.xattr."
    return {
        key[len(prefix) :]: value.encode(_ENCODING, _ERRORS)
        for key, value in info.pax_headers.items()
        if key.startswith(prefix)
    }


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class BuiltLayer:
    media_type: str
    blob: bytes
    digest: str
    diff_id: str
    size: int

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class ImageBuilder:
    """One single-platform image.

    ``config_extra`` is merged into the config's ``config`` object (``Env``, ``Cmd``,
    ``Entrypoint``, ``WorkingDir``, ``User``, ``Labels`` ...). ``layer_compressions``, if
    given, overrides ``compression`` per layer (same length as ``layers``). ``history``, if
    given, is the config's ``history`` verbatim (it may not match the layers: tests of a
    short or long history want exactly that); by default each layer gets one entry
    ``tests/builders.py layer N``. ``config_top`` is merged into the config's top level
    (``author``, ``comment``, ``docker_version``, ``os.version`` ...).
    """

    layers: list[LayerBuilder] = field(default_factory=list)
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None
    compression: Compression = "gzip"
    config_extra: dict[str, Any] = field(default_factory=dict)
    created: str = "2024-01-01T00:00:00Z"
    layer_compressions: list[Compression] | None = None
    zstd_frames: int = 2
    annotations: dict[str, str] | None = None
    history: list[dict[str, Any]] | None = None
    config_top: dict[str, Any] = field(default_factory=dict)

    def _compressions(self) -> list[Compression]:
        if self.layer_compressions is None:
            return [self.compression] * len(self.layers)
        if len(self.layer_compressions) != len(self.layers):
            raise ValueError("layer_compressions must have one entry per layer")
        return list(self.layer_compressions)

    def built_layers(self) -> list[BuiltLayer]:
        out: list[BuiltLayer] = []
        for layer, comp in zip(self.layers, self._compressions(), strict=True):
            tar = layer.tar_bytes()
            blob = compress(tar, comp, zstd_frames=self.zstd_frames)
            out.append(
                BuiltLayer(
                    media_type=LAYER_MEDIA_TYPES[comp],
                    blob=blob,
                    digest=sha256_digest(blob),
                    diff_id=sha256_digest(tar),
                    size=len(blob),
                )
            )
        return out

    def platform(self) -> dict[str, str]:
        plat = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            plat["variant"] = self.variant
        return plat

    def config_bytes(self) -> bytes:
        """OCI image config: created, architecture, os[, variant], config, rootfs, history."""
        cfg: dict[str, Any] = {"created": self.created}
        cfg.update(self.platform())
        cfg.update(self.config_top)
        cfg["config"] = dict(self.config_extra)
        cfg["rootfs"] = {"type": "layers", "diff_ids": [lb.diff_id() for lb in self.layers]}
        if self.history is not None:
            cfg["history"] = list(self.history)
        else:
            cfg["history"] = [
                {"created": self.created, "created_by": f"tests/builders.py layer {i}"}
                for i in range(len(self.layers))
            ]
        return _json(cfg)

    def config_digest(self) -> str:
        return sha256_digest(self.config_bytes())

    def _manifest_bytes(self, layers: Sequence[BuiltLayer]) -> bytes:
        config = self.config_bytes()
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": sha256_digest(config),
                "size": len(config),
            },
            "layers": [layer.descriptor() for layer in layers],
        }
        if self.annotations:
            manifest["annotations"] = dict(self.annotations)
        return _json(manifest)

    def manifest_bytes(self) -> bytes:
        """OCI image manifest (``application/vnd.oci.image.manifest.v1+json``)."""
        return self._manifest_bytes(self.built_layers())

    def manifest_digest(self) -> str:
        return sha256_digest(self.manifest_bytes())

    def blobs(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        """(``{digest: bytes}`` of layers, config and manifest; the manifest descriptor)."""
        layers = self.built_layers()
        out = {layer.digest: layer.blob for layer in layers}
        config = self.config_bytes()
        out[sha256_digest(config)] = config
        manifest = self._manifest_bytes(layers)
        digest = sha256_digest(manifest)
        out[digest] = manifest
        return out, {"mediaType": MANIFEST_MEDIA_TYPE, "digest": digest, "size": len(manifest)}


# --------------------------------------------------------------------------- OCI layout


def _index_json(manifests: list[dict[str, Any]]) -> bytes:
    return _json({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests})


def _tagged(desc: Mapping[str, Any], annotations: Mapping[str, str]) -> dict[str, Any]:
    out = dict(desc)
    if annotations:
        out["annotations"] = dict(annotations)
    return out


def _oci_files(
    images: Mapping[str, ImageBuilder] | Sequence[ImageBuilder],
    index_of: Mapping[str, Sequence[ImageBuilder]] | None,
    *,
    annotate: Callable[[str], dict[str, str]] | None = None,
) -> dict[str, bytes]:
    """Relative path -> bytes of an OCI image layout. ``annotate(tag)`` gives the
    annotations of a tagged index.json entry (default: just ref.name)."""

    def ann(tag: str) -> dict[str, str]:
        return {REF_NAME_ANNOTATION: tag} if annotate is None else annotate(tag)

    blobs: dict[str, bytes] = {}
    entries: list[dict[str, Any]] = []
    pairs: Iterable[tuple[str | None, ImageBuilder]] = (
        images.items() if isinstance(images, Mapping) else ((None, img) for img in images)
    )
    for tag, img in pairs:
        img_blobs, desc = img.blobs()
        blobs.update(img_blobs)
        entries.append(_tagged(desc, ann(tag) if tag is not None else {}))
    for tag, platform_images in (index_of or {}).items():
        subs: list[dict[str, Any]] = []
        for img in platform_images:
            img_blobs, desc = img.blobs()
            blobs.update(img_blobs)
            subs.append({**desc, "platform": img.platform()})
        index = _index_json(subs)
        digest = sha256_digest(index)
        blobs[digest] = index
        desc = {"mediaType": INDEX_MEDIA_TYPE, "digest": digest, "size": len(index)}
        entries.append(_tagged(desc, ann(tag)))
    files = {
        "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
        "index.json": _index_json(entries),
    }
    for digest, data in blobs.items():
        files[f"blobs/sha256/{_hex(digest)}"] = data
    return files


def _write_dir(path: Path, files: Mapping[str, bytes]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return path


def _write_tar(path: Path, files: Mapping[str, bytes]) -> Path:
    """Deterministic uncompressed tar (uid/gid 0, mtime 0) with parent dir entries."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel, data in files.items():
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in seen:
                    seen.add(d)
                    dinfo = tarfile.TarInfo(d)
                    dinfo.type = tarfile.DIRTYPE
                    dinfo.mode = 0o755
                    tar.addfile(dinfo)
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def write_oci_layout(
    path: Path,
    images: Mapping[str, ImageBuilder] | Sequence[ImageBuilder],
    *,
    index_of: Mapping[str, Sequence[ImageBuilder]] | None = None,
) -> Path:
    """Write an OCI image layout directory (``oci-layout``, ``index.json``,
    ``blobs/sha256/<hex>``) and return ``path``.

    A dict maps tags (``org.opencontainers.image.ref.name``) to images; a list writes
    untagged manifests. ``index_of={"tag": [amd64, arm64]}`` adds a multi-platform image
    index blob (with ``platform`` on each manifest) referenced from index.json as ``tag``.
    Existing files are overwritten; index.json is replaced, not merged.
    """
    return _write_dir(path, _oci_files(images, index_of))


def write_oci_archive(
    path: Path,
    images: Mapping[str, ImageBuilder] | Sequence[ImageBuilder],
    *,
    index_of: Mapping[str, Sequence[ImageBuilder]] | None = None,
) -> Path:
    """Same as :func:`write_oci_layout`, as one uncompressed tar file at ``path``."""
    return _write_tar(path, _oci_files(images, index_of))


# --------------------------------------------------------------------------- Docker archive


def _split_ref(ref: str) -> tuple[str, str]:
    """``"repo:tag"`` -> (repo, tag); a missing tag is ``latest``. Digests are refused."""
    if "@" in ref:
        raise ValueError(f"digest references are not supported: {ref!r}")
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return repo, tag


def _docker_full_name(ref: str) -> str:
    """Normalise like Docker: ``busybox:1`` -> ``docker.io/library/busybox:1``."""
    repo, tag = _split_ref(ref)
    first, sep, _ = repo.partition("/")
    if not sep:
        repo = "docker.io/library/" + repo
    elif "." not in first and ":" not in first and first != "localhost":
        repo = "docker.io/" + repo
    return f"{repo}:{tag}"


_DOCKER_LAYER_SUFFIX: dict[str, str] = {
    LAYER_MEDIA_TYPES["none"]: ".tar",
    LAYER_MEDIA_TYPES["gzip"]: ".tar.gz",
    LAYER_MEDIA_TYPES["zstd"]: ".tar.zst",
}


def write_docker_archive(
    path: Path,
    images: Mapping[str, ImageBuilder],
    *,
    layout: Literal["classic", "oci", "crane"] = "classic",
) -> Path:
    """Write a ``docker save``-style tar at ``path``; keys of ``images`` are ``name:tag``.

    * ``classic`` (Docker <= 24): ``<id>/layer.tar`` + ``<id>/VERSION`` + ``<id>/json``
      per layer, ``<config-hex>.json``, ``manifest.json`` and ``repositories``. ``<id>`` is
      the hex of the layer blob digest and ``layer.tar`` holds the blob as the image's
      compression made it (real ``docker save`` is uncompressed: use ``compression="none"``).
    * ``oci`` (Docker >= 25): an OCI layout (index.json entries annotated with
      ``io.containerd.image.name`` = normalised full name and ``ref.name`` = tag) plus a
      ``manifest.json`` whose Config/Layers point into ``blobs/sha256/``.
    * ``crane`` (go-containerregistry ``tarball``): config named ``sha256:<hex>``, layers
      ``<hex>.tar.gz`` (``.tar`` / ``.tar.zst`` for other compressions), ``manifest.json``.

    Identical layers/configs are stored once; tags of the same image share one
    ``manifest.json`` entry (RepoTags lists them all).
    """
    files: dict[str, bytes] = {}
    entries: dict[str, dict[str, Any]] = {}  # config digest -> manifest.json item
    repositories: dict[str, dict[str, str]] = {}
    top_ids: dict[str, str] = {}  # config digest -> top layer dir (classic)

    if layout == "oci":
        files.update(
            _oci_files(
                images,
                None,
                annotate=lambda ref: {
                    CONTAINERD_NAME_ANNOTATION: _docker_full_name(ref),
                    REF_NAME_ANNOTATION: _split_ref(ref)[1],
                },
            )
        )

    for ref, img in images.items():
        config = img.config_bytes()
        config_digest = sha256_digest(config)
        if config_digest in entries:
            entries[config_digest]["RepoTags"].append(ref)
            if layout == "classic" and config_digest in top_ids:
                repo, tag = _split_ref(ref)
                repositories.setdefault(repo, {})[tag] = top_ids[config_digest]
            continue
        layer_paths: list[str] = []
        for layer in img.built_layers():
            hexd = _hex(layer.digest)
            if layout == "classic":
                top_ids[config_digest] = hexd
                layer_paths.append(f"{hexd}/layer.tar")
                files[f"{hexd}/VERSION"] = b"1.0"
                files[f"{hexd}/json"] = _json({"id": hexd, "created": img.created})
                files[f"{hexd}/layer.tar"] = layer.blob
            elif layout == "crane":
                name = hexd + _DOCKER_LAYER_SUFFIX[layer.media_type]
                layer_paths.append(name)
                files[name] = layer.blob
            else:
                layer_paths.append(f"blobs/sha256/{hexd}")
        if layout == "classic":
            config_path = f"{_hex(config_digest)}.json"
            repo, tag = _split_ref(ref)
            if config_digest in top_ids:
                repositories.setdefault(repo, {})[tag] = top_ids[config_digest]
        elif layout == "crane":
            config_path = config_digest
        else:
            config_path = f"blobs/sha256/{_hex(config_digest)}"
        files[config_path] = config
        entries[config_digest] = {"Config": config_path, "RepoTags": [ref], "Layers": layer_paths}

    files["manifest.json"] = _json(list(entries.values()))
    if layout == "classic" and repositories:
        files["repositories"] = _json(repositories)
    return _write_tar(path, files)
