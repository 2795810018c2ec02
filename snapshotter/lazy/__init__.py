"""Lazy access to layer blobs, over ``store`` and ``oci``: read a layer's files without
fetching or unpacking the whole blob.

- ``zran``: raw inflate that stops at deflate block boundaries and restarts at any bit
  with a preset window (the system zlib through ``ctypes``: Python's ``zlib`` cannot).
- ``seek_index``: the seek index of a layer blob (its toc, where each file lies in the
  tar, a checkpoint every 4 MiB with a sha256 per span), built in one verified pass, and
  reads that fetch and verify only the spans a byte range lies in.
- ``layer_toc``, ``estargz``, ``zstd_chunked``: layers that carry their own TOC, read
  through it with no pass.
- ``cache``, ``reader``, ``spans``: seek indexes cached in the store, inflated spans kept
  in memory, compressed spans kept on disk.
- ``layers``: what a lazy view is made of; ``plan``: the one planner that readies each
  layer; ``local`` and ``remote``: the sources it plans over (a layout or archive on this
  machine, a registry), and ``index build|push``.
- ``seekable_zstd``: the seek table a seekable zstd blob ends with, read with one Range
  request of its tail: frame starts before any pass, single-frame layers known at once.

Nothing here touches FUSE; only ``remote`` (through ``sources.registry``) the network.
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
