"""Spans of layer blobs kept on disk, and a ``RangeSource`` that reads through them.

A lazy view reads a layer blob by spans: the compressed bytes between two checkpoints of
its seek index, each with the sha256 the verified pass recorded.  Fetching a span costs a
round trip to the registry; keeping it costs disk.  :class:`SpanCache` keeps spans

- **content-addressed** by that sha256: ``<store root>/spans/sha256/<hex>``.  Two layers
  (or two images) that share a span share its file, and a name can only ever hold the
  bytes it names: every file is checked again when it is read, and a damaged one dropped;
- **bounded**: past ``max_bytes`` the least recently used spans are removed until the cache
  is at 90 % of the bound.  "Used" is the file's **mtime**, set when the span is written
  and bumped on every hit (atime is unreliable under ``relatime``/``noatime`` mounts, and
  an access log would need its own locking and compaction);
- **safe for concurrent readers** in threads and processes: a span is written to a temp
  file in the same directory and renamed into place, so a reader sees no file or a whole
  one; a file removed by another process's eviction while being opened is a miss.

:class:`CachingSource` wraps an inner ``RangeSource`` (a registry blob) for one layer:
``read_range`` serves the spans a range lies in from the cache and fetches only the
missing runs, adjacent spans merged into one request of at most ``MAX_FETCH`` (16 MB) or
one span, and verifies each fetched span against the index **before** caching it or
returning any of it (``DigestMismatch`` otherwise: it is neither cached nor served).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
from bisect import bisect_right
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from ..errors import DigestMismatch
from ..store.store import Store
from .layers import RangeSource
from .seek_index import MAX_FETCH, Checkpoint, SeekIndex

SPANS = "spans"
DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB: 512 spans of 4 MiB uncompressed, about 1 GiB of tar
_LOW_WATER = 0.9  # eviction stops at this share of the bound


class SpanCache:
    """Verified span bytes by sha256, on disk under ``root``, at most ``max_bytes``."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes {max_bytes!r}: negative")
        self.root = root
        self.dir = root / "sha256"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._total: int | None = None  # bytes on disk as last counted, plus what we added
        self.hits = 0
        self.misses = 0
        self.evicted = 0

    @classmethod
    def of_store(cls, store: Store, max_bytes: int = DEFAULT_MAX_BYTES) -> SpanCache:
        return cls(store.root / SPANS, max_bytes)

    def path(self, span_digest: str) -> Path:
        if len(span_digest) != 64 or not all(c in "0123456789abcdef" for c in span_digest):
            raise ValueError(f"span digest {span_digest[:80]!r}: not sha256 hex")
        return self.dir / span_digest

    def get(self, span_digest: str) -> bytes | None:
        """The span whose sha256 is ``span_digest``, or None; a hit counts as a use."""
        path = self.path(span_digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            with self._lock:
                self.misses += 1
            return None
        if hashlib.sha256(data).hexdigest() != span_digest:
            # damaged on disk: never served; the caller fetches it again
            path.unlink(missing_ok=True)
            with self._lock:
                self.misses += 1
            return None
        # evicted meanwhile by another process: the bytes read are still good
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
        with self._lock:
            self.hits += 1
        return data

    def put(self, span_digest: str, data: bytes) -> None:
        """Keep ``data`` (already verified to hash to ``span_digest``), then evict the least
        recently used spans if the cache is over its bound."""
        if len(data) > self.max_bytes:
            return
        path = self.path(span_digest)
        self.dir.mkdir(parents=True, exist_ok=True)
        temp = self.dir / f".tmp-{secrets.token_hex(8)}"
        try:
            with open(temp, "wb") as f:
                f.write(data)
            os.rename(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        with self._lock:
            if self._total is not None:
                self._total += len(data)
            over = self._total is None or self._total > self.max_bytes
        if over:
            self.evict()

    def evict(self) -> int:
        """Remove the least recently used spans until the cache is under 90 % of its
        bound (if it is over it); returns the bytes removed."""
        with self._lock:
            files: list[tuple[float, int, Path]] = []
            try:
                entries = list(os.scandir(self.dir))
            except FileNotFoundError:
                entries = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                files.append((st.st_mtime, st.st_size, Path(entry.path)))
            total = sum(size for _, size, _ in files)
            removed = 0
            if total > self.max_bytes:
                files.sort(key=lambda f: f[0])
                for _, size, path in files:
                    if total - removed <= self.max_bytes * _LOW_WATER:
                        break
                    path.unlink(missing_ok=True)
                    removed += size
                    self.evicted += 1
            self._total = total - removed
            return removed

    def size(self) -> int:
        """Bytes of spans on disk now."""
        try:
            return sum(e.stat().st_size for e in os.scandir(self.dir) if not e.name.startswith("."))
        except FileNotFoundError:
            return 0


_end_key = attrgetter("end")
_start_key = attrgetter("start")


@dataclass(frozen=True, slots=True)
class _Run:
    first: int  # checkpoint numbers, both included
    last: int


class CachingSource:
    """One layer blob's ``RangeSource`` that reads spans through a :class:`SpanCache`.

    ``index`` says where the spans are and what they hash to; ``inner`` fetches (closed
    ranges).  Bytes outside every span (none, for an index of this version) are passed
    through from ``inner`` uncached.  Thread-safe; ``requests`` and ``fetched`` count what
    was asked of ``inner``.
    """

    def __init__(
        self,
        index: SeekIndex,
        inner: RangeSource,
        cache: SpanCache,
        *,
        max_fetch: int = MAX_FETCH,
    ) -> None:
        self.index = index
        self.inner = inner
        self.cache = cache
        self.max_fetch = max_fetch
        self.what = f"layer {index.layer_digest}"
        self._lock = threading.Lock()
        self.requests = 0
        self.fetched = 0

    @property
    def size(self) -> int:
        return self.index.blob_size

    def read_range(self, first: int, last: int) -> bytes:
        if first < 0 or last < first:
            raise ValueError(f"range {first}-{last}: not a closed range")
        last = min(last, self.size - 1)
        if first > last:
            return b""
        points = self.index.checkpoints
        # The fewest spans [start, end) covering [first, last]: consecutive gzip spans
        # share a byte, and a read of one span must not pull in its neighbours for it.
        lo = bisect_right(points, first, key=_start_key) - 1
        hi = bisect_right(points, last, lo=max(lo, 0), key=_end_key)
        if lo < 0 or hi >= len(points):
            return self._passthrough(first, last)
        spans = self._spans(lo, hi)
        out = bytearray()
        at = first
        for k in range(lo, hi + 1):
            cp, data = points[k], spans[k]
            if at >= cp.end:
                continue
            upto = min(cp.end, last + 1)
            out += data[at - cp.start : upto - cp.start]
            at = upto
        return bytes(out)

    def _passthrough(self, first: int, last: int) -> bytes:
        data = self.inner.read_range(first, last)
        with self._lock:
            self.requests += 1
            self.fetched += len(data)
        return data

    def _spans(self, lo: int, hi: int) -> dict[int, bytes]:
        """Spans ``lo..hi``: cached ones read, missing runs fetched and verified."""
        points = self.index.checkpoints
        found: dict[int, bytes] = {}
        missing: list[int] = []
        for k in range(lo, hi + 1):
            data = self.cache.get(points[k].digest)
            if data is None:
                missing.append(k)
            else:
                found[k] = data
        for run in self._runs(missing):
            found.update(self._fetch(run))
        return found

    def _runs(self, missing: list[int]) -> list[_Run]:
        """Consecutive missing spans, merged up to ``max_fetch`` bytes (or one span)."""
        points = self.index.checkpoints
        runs: list[_Run] = []
        for k in missing:
            if runs:
                run = runs[-1]
                if run.last == k - 1 and points[k].end - points[run.first].start <= self.max_fetch:
                    runs[-1] = _Run(run.first, k)
                    continue
            runs.append(_Run(k, k))
        return runs

    def _fetch(self, run: _Run) -> dict[int, bytes]:
        points = self.index.checkpoints
        a, b = points[run.first].start, points[run.last].end
        data = self.inner.read_range(a, b - 1)
        with self._lock:
            self.requests += 1
            self.fetched += len(data)
        if len(data) != b - a:
            raise DigestMismatch(
                f"{self.what}: bytes {a}-{b - 1} came as {len(data)} bytes, not {b - a}"
            )
        view = memoryview(data)
        spans: dict[int, bytes] = {}
        for k in range(run.first, run.last + 1):
            cp = points[k]
            span = bytes(view[cp.start - a : cp.end - a])
            _verify(span, cp, self.what)
            spans[k] = span
        # only once every span of the run is good: a bad run leaves nothing behind
        for k, span in spans.items():
            self.cache.put(points[k].digest, span)
        return spans


def _verify(span: bytes, cp: Checkpoint, what: str) -> None:
    actual = hashlib.sha256(span).hexdigest()
    if actual != cp.digest:
        raise DigestMismatch(
            f"{what}: bytes {cp.start}-{cp.end - 1} hash to sha256:{actual}, "
            f"but the seek index says sha256:{cp.digest}"
        )


__all__ = ["DEFAULT_MAX_BYTES", "SPANS", "CachingSource", "SpanCache"]
