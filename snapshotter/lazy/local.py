"""Lazy images from an image layout or archive on this machine (``oci:DIR[:TAG]``,
``oci-archive:FILE[:TAG]``, ``docker-archive:FILE[:NAME]``).

``open_lazy_layout`` resolves the source as ``pull`` does (``sources.transports``: the
manifest and config verified against their digests, the platform picked from an index),
then readies each layer with the one lazy planner (``lazy.plan``): a snapshot already in
the store, a cached seek index, a TOC the layer carries, fetched whole when small, else one
verified pass that builds the seek index.  An indexed layer's bytes come from its blob where
it lies, in the layout's file or inside the archive, through ``LocalBlob``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

from ..errors import InvalidReference, NotFound, SnapshotterError
from ..oci.digest import Digest
from ..oci.model import Platform
from ..progress import Progress, QuietProgress
from ..sources.transports import LayerSource, SourceRef, open_source, synthesize_manifest
from ..store.store import Store
from .layer_toc import TocIndex
from .layers import LazyImage, RangeSource
from .plan import plan_layers
from .seek_index import MIN_LAYER_SIZE, SeekIndex


class LocalBlob:
    """A ``RangeSource`` over a blob file: ``pread`` of the closed range asked for.

    The descriptor is opened once and shared by every thread and by the processes a mount
    daemon forks (``pread`` keeps no file offset), so it is safe wherever the view runs."""

    def __init__(self, path: Path | str, *, fd: int | None = None, start: int = 0, size: int = -1):
        """The file at ``path``; or, given ``fd`` (duplicated), ``size`` bytes of it from
        ``start``: a layer inside an archive (``path`` then only names it)."""
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC) if fd is None else os.dup(fd)
        self._start = start
        self._size = os.fstat(self._fd).st_size - start if size < 0 else size

    @property
    def size(self) -> int:
        return self._size

    @property
    def start(self) -> int:
        """Where the blob starts in its file (0 but for a blob inside an archive)."""
        return self._start

    def fileno(self) -> int:
        return self._fd

    def read_range(self, first: int, last: int) -> bytes:
        if not 0 <= first <= last:
            raise ValueError(f"range {first}-{last}: not a closed range of a blob")
        want = min(last + 1, self._size) - first
        pieces: list[bytes] = []
        at = self._start + first
        try:
            while want > 0:
                chunk = os.pread(self._fd, want, at)
                if not chunk:
                    break  # the blob ends
                pieces.append(chunk)
                at += len(chunk)
                want -= len(chunk)
        except OSError as exc:
            raise SnapshotterError(
                f"{self.path}: bytes {first}-{last}: {exc.strerror or exc}"
            ) from exc
        return b"".join(pieces)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


LAZY_TRANSPORTS = ("oci", "oci-archive", "docker-archive")


def open_lazy_layout(
    store: Store,
    text: str,
    progress: Progress | None = None,
    *,
    platform: Platform | None = None,
    min_layer_size: int = MIN_LAYER_SIZE,
) -> LazyImage:
    """The lazy image of ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]`` or
    ``docker-archive:FILE[:NAME]``, every layer readied (``lazy.plan``): a layer blob is
    read where it lies, in the layout's file or in the archive (in its decompressed copy,
    for a ``docker save | gzip`` archive).  ``min_layer_size`` is the smallest blob worth a
    seek index (tests index tiny ones)."""
    src = SourceRef.parse(text)
    if src.transport not in LAZY_TRANSPORTS:
        raise InvalidReference(
            f"source {text!r}: a lazy mount reads oci:DIR[:TAG], oci-archive:FILE[:TAG], "
            f"docker-archive:FILE[:NAME] or docker://REF, not {src}"
        )
    image = open_source(text, platform)
    layers = plan_layers(
        store,
        image.layers,
        _LayoutAccess(text),
        progress or QuietProgress(),
        min_layer_size=min_layer_size,
    )
    manifest = image.manifest_bytes or synthesize_manifest(
        image, [(Digest.parse(layer.digest), layer.size) for layer in layers]
    )
    return LazyImage(text, str(Digest.of_bytes(manifest)), image.config_bytes, layers)


class _LayoutAccess:
    """``plan.LayerAccess`` over blobs on this machine: read in place, nothing published,
    ranges always served."""

    def __init__(self, text: str):
        self.text = text

    def open(self, layer: LayerSource) -> tuple[LayerSource, RangeSource]:
        blob = _blob(layer, self.text, layer.index + 1)
        # A docker save names no blob digests: an uncompressed blob is its tar (its digest
        # is the diff_id); a compressed one is hashed here, where it lies.
        digest = layer.digest or (layer.diff_id if layer.compression == "none" else _hash(blob))
        return replace(layer, digest=digest, size=blob.size), blob

    def published(self, layer: LayerSource) -> tuple[SeekIndex, bytes] | None:
        return None

    def view_source(
        self, layer: LayerSource, index: SeekIndex | TocIndex, blob: RangeSource
    ) -> RangeSource:
        return blob


def _hash(blob: LocalBlob) -> Digest:
    """The digest of a blob no manifest names (one read of it)."""
    h = hashlib.sha256()
    step = 1 << 20
    for first in range(0, blob.size, step):
        h.update(blob.read_range(first, min(first + step, blob.size) - 1))
    return Digest.parse(f"sha256:{h.hexdigest()}")


def _blob(layer: LayerSource, text: str, number: int) -> LocalBlob:
    """The layer's blob where the source keeps it, read by ranges."""
    try:
        section = layer.open()
    except OSError as exc:
        raise NotFound(f"{text}: layer {number} blob: {exc.strerror or exc}") from exc
    try:
        fileno = getattr(section, "fileno", None)
        start, size = getattr(section, "start", None), getattr(section, "size", None)
        if fileno is None or not isinstance(start, int) or not isinstance(size, int):
            raise InvalidReference(f"{text}: layer {number} cannot be read by ranges")
        return LocalBlob(f"{text} layer {number}", fd=fileno(), start=start, size=size)
    finally:
        close = getattr(section, "close", None)
        if close is not None:
            close()
