"""Lazy access to layer blobs, over ``store`` and ``oci``: read a layer's files without
fetching or unpacking the whole blob.

- ``zran``: raw inflate that stops at deflate block boundaries and restarts at any bit
  with a preset window (the system zlib through ``ctypes``: Python's ``zlib`` cannot).
- ``seek_index``: the seek index of a layer blob (its toc, where each file lies in the
  tar, a checkpoint every 4 MiB with a sha256 per span), built in one verified pass, and
  reads that fetch and verify only the spans a byte range lies in.
- ``seekable_zstd``: the seek table a seekable zstd blob ends with, read with one Range
  request of its tail: frame starts before any pass, single-frame layers known at once.

A range-fetching blob source (registry ``Range`` requests, a span cache) and a lazy FUSE
view go over this; nothing here touches the network or FUSE.
"""

from .seek_index import (
    Checkpoint,
    FileExtent,
    SeekIndex,
    Unindexed,
    build_index,
    not_worth_indexing,
    read_file,
    read_tar,
)

__all__ = [
    "Checkpoint",
    "FileExtent",
    "SeekIndex",
    "Unindexed",
    "build_index",
    "not_worth_indexing",
    "read_file",
    "read_tar",
]
