"""zstd:chunked layers, read through the TOC they carry: no indexing pass, one request.

A zstd:chunked blob (containers/storage, ``pkg/chunked``; what ``skopeo copy
--dest-compress-format zstd:chunked`` and ``podman push --compression-format
zstd:chunked`` write) is an ordinary ``tar+zstd`` layer whose every regular file's content
(or each chunk of a large file) is a zstd frame of its own, followed by zstd *skippable*
frames a plain decompressor passes over: the TOC ("manifest", CRFS's JSON, zstd-compressed),
in newer writers the tar-split stream, and a footer.  The footer is a skippable frame of
64 bytes (eight little-endian u64: TOC offset, compressed and uncompressed length, TOC
type 1, tar-split offset, compressed and uncompressed length, and the magic ``GNUlInUx``);
older writers, without the tar-split (Debian 12's skopeo 1.9, for one), write 40 bytes:
the first four numbers and the magic, which they spell ``GnUlInUx``.

The layer descriptor carries the same position as an annotation (``...manifest-position``
= ``offset:length:uncompressed length:type``) and the TOC's digest
(``...manifest-checksum``, the sha256 of the compressed TOC bytes), under the prefix
``io.github.containers.zstd-chunked.`` (``io.containers.zstd-chunked.`` in older
writers).  With the position annotation the TOC costs one closed Range request of exactly
its bytes; without it, one request of the blob's tail finds the footer (and, usually, the
TOC with it).

Trust: as for eStargz (``lazy.layer_toc``): the checksum annotation ties the TOC to the
manifest, and each file's (or chunk's) sha256 in the TOC is checked before a byte is used.
A layer without the checksum annotation is not read through its TOC.  A chunk of type
``zeros`` (a hole) is compressed zeros in the blob like any other chunk, and read as one.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING

import zstandard

from ..errors import DigestMismatch, UnsafeArchive
from .layer_toc import ZSTD_CHUNKED, TocIndex, decompress_at_most, parse_toc
from .layer_toc import toc_digest as sha256_of

if TYPE_CHECKING:
    from .layers import RangeSource

MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"
_PREFIXES = ("io.github.containers.zstd-chunked.", "io.containers.zstd-chunked.")
CHECKSUM_ANNOTATION = _PREFIXES[0] + "manifest-checksum"
POSITION_ANNOTATION = _PREFIXES[0] + "manifest-position"
MAGICS = (b"GNUlInUx", b"GnUlInUx")  # containers/storage now, and before the tar-split
SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"  # 0x184D2A50, the skippable frame containers/storage uses
FOOTER_SIZES = (64, 40)  # footer contents: with the tar-split, and before it
TOC_TYPE = 1  # "CRFS": the TOC is CRFS's JSON
TAIL_READ = 512 * 1024
MAX_TOC = 64 << 20  # uncompressed bytes of TOC JSON accepted


def annotation(annotations: Mapping[str, str], name: str) -> str | None:
    """The ``name`` annotation (``manifest-checksum``...) under either prefix."""
    for prefix in _PREFIXES:
        value = annotations.get(prefix + name)
        if value is not None:
            return value
    return None


def is_annotated(annotations: Mapping[str, str]) -> bool:
    return annotation(annotations, "manifest-checksum") is not None


def footer_position(tail: bytes) -> tuple[int, int, int, int] | None:
    """(offset, compressed length, uncompressed length, type) of the TOC that the footer
    ending ``tail`` names, or None when ``tail`` does not end with a zstd:chunked footer."""
    for size in FOOTER_SIZES:
        frame = tail[-(size + 8) :]
        if len(frame) != size + 8 or frame[:4] != SKIPPABLE_MAGIC or frame[-8:] not in MAGICS:
            continue
        if struct.unpack_from("<I", frame, 4)[0] != size:
            continue
        offset, length, uncompressed, kind = struct.unpack_from("<4Q", frame, 8)
        return offset, length, uncompressed, kind
    return None


def _annotated_position(text: str, what: str) -> tuple[int, int, int, int]:
    parts = text.split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise UnsafeArchive(f"{what}: zstd:chunked manifest-position {text!r} is not a:b:c:d")
    offset, length, uncompressed, kind = (int(p) for p in parts)
    return offset, length, uncompressed, kind


def read_index(
    source: RangeSource, annotations: Mapping[str, str], diff_id: str, what: str
) -> TocIndex | str:
    """The layer's index from its TOC, or why it cannot be read that way (no checksum
    annotation, no footer).  One closed Range request (two when a footer names a TOC
    beyond the tail first read).  A TOC that does not match its checksum, or that a layer
    could not hold, raises (DigestMismatch, UnsafeArchive)."""
    checksum = annotation(annotations, "manifest-checksum")
    if checksum is None:
        return "no zstd:chunked manifest-checksum annotation to check its TOC against"
    size = source.size
    fetched = 0
    named = annotation(annotations, "manifest-position")
    tail = b""
    first = size
    if named is not None:
        position = _annotated_position(named, what)
    else:
        first = max(0, size - TAIL_READ)
        tail = source.read_range(first, size - 1) if size else b""
        fetched += len(tail)
        found = footer_position(tail)
        if found is None:
            return "no zstd:chunked footer"
        position = found
    offset, length, uncompressed, kind = position
    if kind != TOC_TYPE:
        return f"zstd:chunked TOC of type {kind}, not {TOC_TYPE}"
    if not (offset >= 8 and length > 0 and offset + length <= size):
        raise UnsafeArchive(f"{what}: zstd:chunked TOC lies outside the blob ({offset}+{length})")
    if uncompressed > MAX_TOC:
        raise UnsafeArchive(f"{what}: zstd:chunked TOC larger than {MAX_TOC} bytes")
    if first <= offset:
        packed = tail[offset - first : offset - first + length]
    else:
        packed = source.read_range(offset, offset + length - 1)
        fetched += len(packed)
    actual = sha256_of(packed)
    if actual != checksum:
        raise DigestMismatch(
            f"{what}: zstd:chunked TOC has digest {actual}, the manifest says {checksum}"
        )
    toc_json = _inflate(packed, uncompressed, what)
    toc, chunks = parse_toc(toc_json, offset, diff_id, what, ZSTD_CHUNKED)
    return TocIndex(ZSTD_CHUNKED, toc, offset, chunks, fetched)


def layer_index(
    annotations: Mapping[str, str],
    media_type: str,
    source: RangeSource,
    diff_id: str,
    what: str,
) -> TocIndex | None:
    """The index of a ``tar+zstd`` layer whose descriptor names a zstd:chunked TOC
    checksum, read from its TOC; None for any other layer."""
    if media_type != MEDIA_TYPE or not is_annotated(annotations):
        return None
    found = read_index(source, annotations, diff_id, what)
    return found if isinstance(found, TocIndex) else None


def _inflate(packed: bytes, uncompressed: int, what: str) -> bytes:
    """The TOC JSON: exactly ``uncompressed`` bytes from the zstd frame (never more)."""
    try:
        out = decompress_at_most("zstd", packed, uncompressed + 1)
    except zstandard.ZstdError as exc:
        raise UnsafeArchive(f"{what}: zstd:chunked TOC is not zstd ({exc})") from exc
    if len(out) != uncompressed:
        raise UnsafeArchive(
            f"{what}: zstd:chunked TOC is {len(out)} bytes, its position says {uncompressed}"
        )
    return out


__all__ = [
    "CHECKSUM_ANNOTATION",
    "POSITION_ANNOTATION",
    "annotation",
    "footer_position",
    "is_annotated",
    "layer_index",
    "read_index",
]
