"""What a lazy view is made of: each layer's seek index and where its bytes come from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .layer_toc import TocIndex
from .seek_index import SeekIndex


class RangeSource(Protocol):
    """A layer blob's bytes, read by closed ranges (HTTP's Range: bytes=first-last)."""

    @property
    def size(self) -> int: ...
    def read_range(self, first: int, last: int) -> bytes:
        """Bytes first..last inclusive. Raises a SnapshotterError (RegistryError after
        bounded retries, DigestMismatch...) on failure; never returns fewer bytes unless
        the blob ends."""
        ...


class ContentReader(Protocol):
    """Reads a lazy layer's files for a view (``reader.LayerReader`` through a seek
    index, ``layer_toc.Reader`` through a TOC the layer carries)."""

    def read(self, inode: int, size: int, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` of the file with toc inode ``inode`` (``size``
        bytes long); raises a SnapshotterError when the bytes cannot be had or checked."""
        ...


@dataclass(frozen=True, slots=True)
class LazyLayer:
    number: int  # 1 = base
    digest: str  # the blob (compressed), "sha256:..."
    diff_id: str
    media_type: str
    size: int  # blob bytes
    # None: the layer was fetched whole into the store (its snapshot exists)
    # (an eStargz or zstd:chunked layer's index may be its own TOC, read in one request)
    index: SeekIndex | TocIndex | None
    source: RangeSource | None  # where indexed bytes come from (None when index is None)
    # One line for `mount --lazy` to print per layer, e.g.
    # "indexed (cache)", "indexed (referrer)", "indexed (built: 1 pass, 120 MB)",
    # "fetched whole: smaller than 10 MiB", "fetched whole: single-frame zstd",
    # "fetched whole: the registry ignores Range"
    how: str


@dataclass(frozen=True, slots=True)
class LazyImage:
    label: str  # how the user named it
    manifest_digest: str
    config: bytes  # the config blob, verified
    layers: tuple[LazyLayer, ...]  # base first
