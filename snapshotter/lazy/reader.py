"""Reading a lazy layer's files for a view: whole inflated spans, kept in memory.

``seek_index.read_tar`` is stateless: every call fetches and inflates from the checkpoint
before the bytes asked for.  The kernel reads a file in 128 KiB-1 MiB requests, so a view
calling it per request would inflate up to 4 MiB (a span) for each, dozens of times per
span.  A ``LayerReader`` instead inflates whole spans (checkpoint to checkpoint, one
``read_tar`` per run of adjacent spans it lacks, so one fetch) and keeps them in
``InflatedSpans``, an LRU in memory shared by every layer of the view and bounded in
bytes (``lazy.spans.SpanCache`` is another cache: compressed spans, on disk); a request
is then cut out of the spans it meets.

Only inflated bytes of spans whose digests were checked are ever cached, and a failure
caches nothing: the next read of the same span fetches again.  Both classes are
thread-safe (one lock around the LRU; two threads missing the same span may both fetch
it).  A mount daemon's worker processes each have their own cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..errors import StoreCorrupt
from .layers import RangeSource
from .seek_index import SeekIndex, read_tar, span_end, tar_spans

# Inflated spans kept per process: 16 spans of 4 MiB.
CACHE_BYTES = 64 << 20


class InflatedSpans:
    """An LRU of inflated spans, ``(layer digest, checkpoint number) -> bytes``, holding
    at most ``limit`` bytes (a single span larger than that is not kept)."""

    def __init__(self, limit: int = CACHE_BYTES):
        self.limit = limit
        self._spans: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> bytes | None:
        with self._lock:
            data = self._spans.get(key)
            if data is not None:
                self._spans.move_to_end(key)
            return data

    def put(self, key: tuple[str, int], data: bytes) -> None:
        if len(data) > self.limit:
            return
        with self._lock:
            old = self._spans.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._spans[key] = data
            self._size += len(data)
            while self._size > self.limit:
                _, dropped = self._spans.popitem(last=False)
                self._size -= len(dropped)

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._spans)


class LayerReader:
    """The files of one indexed layer, read through its seek index and ``source``."""

    def __init__(self, index: SeekIndex, source: RangeSource, cache: InflatedSpans):
        self.index = index
        self.source = source
        self.cache = cache
        self._key = str(index.layer_digest)

    def read(self, inode: int, size: int, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` of the layer's file ``inode`` (its toc inode,
        ``size`` bytes long), as ``pread`` gives them.  Raises what the source raises,
        ``DigestMismatch`` for a span that is not the one indexed, ``StoreCorrupt``."""
        stop = min(size, offset + length)
        if offset >= stop:
            return b""
        extent = self.index.extents.get(inode)
        if extent is None:
            raise StoreCorrupt(
                f"seek index of layer {self._key}: no content for inode {inode} ({size} bytes)"
            )
        if not extent.sparse:
            return self.tar(extent.offset + offset, extent.offset + stop)
        # A sparse file: the stored regions meeting [offset, stop), back to back in the tar.
        out = bytearray(stop - offset)
        tar_at = extent.offset
        for region_at, region_length in extent.sparse:
            lo, hi = max(offset, region_at), min(stop, region_at + region_length)
            if lo < hi:
                start = tar_at + lo - region_at
                out[lo - offset : hi - offset] = self.tar(start, start + hi - lo)
            tar_at += region_length
        return bytes(out)

    def tar(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the layer's tar, from cached spans or fetched ones."""
        index = self.index
        wanted = tar_spans(index, start, end)
        if not wanted:
            return b""
        points = index.checkpoints
        spans: dict[int, bytes] = {}
        missing: list[int] = []
        for k in wanted:
            data = self.cache.get((self._key, k))
            if data is None:
                missing.append(k)
            else:
                spans[k] = data
        # Each run of adjacent missing spans: one read_tar, so one fetch (up to MAX_FETCH).
        while missing:
            run = 1
            while run < len(missing) and missing[run] == missing[0] + run:
                run += 1
            a, b = missing[0], missing[run - 1]
            base = points[a].out
            data = read_tar(index, self.source.read_range, base, span_end(index, b))
            for k in range(a, b + 1):
                piece = data[points[k].out - base : span_end(index, k) - base]
                spans[k] = piece
                self.cache.put((self._key, k), piece)
            missing = missing[run:]
        parts = []
        for k in wanted:
            at = points[k].out
            parts.append(spans[k][max(start, at) - at : min(end, span_end(index, k)) - at])
        return b"".join(parts)
