"""eStargz layers, read through the TOC they carry: no indexing pass, one request for the TOC.

An eStargz blob (containerd/stargz-snapshotter, docs/estargz.md) is a gzip tar in which
every file's content starts a gzip member of its own (a large file is cut into chunks,
each its own member), followed, after the tar's end, by the TOC (``stargz.index.json``,
a tar entry in its own member) and a 51-byte footer: an empty gzip member whose extra
field holds ``%016xSTARGZ``, the TOC's offset in the blob.

Trust: the layer descriptor's annotation ``containerd.io/snapshot/stargz/toc.digest`` is
the sha256 of the TOC's JSON, so the manifest vouches for the TOC; each chunk's
``chunkDigest`` (the sha256 of its uncompressed bytes) in the TOC vouches for the chunk,
and every chunk is checked before a byte of it is used.  A layer without the annotation
is not read through its TOC (nothing would tie the TOC to the image).  What a lazy read
cannot check is the layer's digest and diff_id: those cover the whole blob.

The TOC's entries become the layer's toc and chunks as ``lazy.layer_toc`` makes them
for any layer that carries a TOC, and ``layer_toc.Reader`` reads its files.  One thing
the TOC cannot say: the tar's own PAX records beyond xattrs and mtime are not kept.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import DigestMismatch, UnsafeArchive
from .layer_toc import ESTARGZ, TocIndex, parse_toc
from .layer_toc import toc_digest as sha256_of

if TYPE_CHECKING:
    from .layers import RangeSource

FOOTER_SIZE = 51
TOC_JSON = "stargz.index.json"
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
TAIL_READ = 512 * 1024  # the tail asked for first: the footer and, usually, the whole TOC
MAX_TOC = 64 << 20  # bytes of TOC JSON (or of its member) accepted
_MAGIC = b"STARGZ"


def footer_toc_offset(footer: bytes) -> int | None:
    """The TOC offset an eStargz footer names, or None when ``footer`` is none: a gzip
    header with FEXTRA, the extra subfield ``SG`` of 22 bytes ``%016xSTARGZ``, and an
    empty deflate stream."""
    if len(footer) != FOOTER_SIZE or footer[:4] != b"\x1f\x8b\x08\x04":
        return None
    if footer[10:16] != b"\x1a\x00SG\x16\x00" or footer[32:38] != _MAGIC:
        return None
    try:
        return int(footer[16:32], 16)
    except ValueError:
        return None


def read_index(
    source: RangeSource, diff_id: str, toc_digest: str | None, what: str
) -> TocIndex | str:
    """The layer's index from its TOC, or why it cannot be read that way (not eStargz, no
    TOC digest annotation).  One closed Range request of the tail (two for a TOC larger
    than ``TAIL_READ``).  A TOC that does not match its digest, or that a layer could not
    hold, raises (DigestMismatch, UnsafeArchive)."""
    size = source.size
    if size < FOOTER_SIZE:
        return "too small for an eStargz footer"
    first = max(0, size - TAIL_READ)
    tail = source.read_range(first, size - 1)
    fetched = len(tail)
    toc_offset = footer_toc_offset(tail[-FOOTER_SIZE:])
    if toc_offset is None:
        return "no eStargz footer"
    if toc_digest is None:
        return f"no {TOC_DIGEST_ANNOTATION} annotation to check its TOC against"
    if not 0 <= toc_offset <= size - FOOTER_SIZE or size - FOOTER_SIZE - toc_offset > MAX_TOC:
        raise UnsafeArchive(f"{what}: eStargz footer points outside the blob ({toc_offset})")
    if toc_offset < first:
        head = source.read_range(toc_offset, first - 1)
        fetched += len(head)
        tail = head + tail
        first = toc_offset
    member = tail[toc_offset - first : len(tail) - FOOTER_SIZE]
    toc_json = _toc_json(member, what)
    actual = sha256_of(toc_json)
    if actual != toc_digest:
        raise DigestMismatch(
            f"{what}: eStargz TOC has digest {actual}, the manifest says {toc_digest}"
        )
    toc, chunks = parse_toc(toc_json, toc_offset, diff_id, what, ESTARGZ)
    return TocIndex(ESTARGZ, toc, toc_offset, chunks, fetched)


def layer_index(
    annotations: Mapping[str, str], source: RangeSource, diff_id: str, what: str
) -> TocIndex | None:
    """The index of a layer whose descriptor names an eStargz TOC digest, read from its
    TOC; None for any other layer (or one whose blob has no eStargz footer after all: it
    is then indexed or fetched like any gzip layer)."""
    toc_digest = annotations.get(TOC_DIGEST_ANNOTATION)
    if toc_digest is None:
        return None
    found = read_index(source, diff_id, toc_digest, what)
    return found if isinstance(found, TocIndex) else None


def _toc_json(member: bytes, what: str) -> bytes:
    """The JSON of the TOC member: one tar entry named stargz.index.json, gzipped."""
    try:
        inflater = zlib.decompressobj(31)
        tar = inflater.decompress(member, MAX_TOC + 4096)
        if inflater.unconsumed_tail:
            raise UnsafeArchive(f"{what}: eStargz TOC larger than {MAX_TOC} bytes")
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
            info = tf.next()
            if info is None or info.name != TOC_JSON or not info.isfile():
                raise UnsafeArchive(f"{what}: eStargz TOC member holds no {TOC_JSON}")
            data = tf.extractfile(info)
            assert data is not None
            return data.read()
    except (zlib.error, tarfile.TarError, EOFError) as exc:
        raise UnsafeArchive(f"{what}: eStargz TOC is not a gzip tar ({exc})") from exc


__all__ = [
    "FOOTER_SIZE",
    "TOC_DIGEST_ANNOTATION",
    "footer_toc_offset",
    "layer_index",
    "read_index",
]
