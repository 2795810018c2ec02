"""snapshotter: container images as plain directories.

Layering, from the bottom up (a module imports only those above it):

- ``errors``, ``digest``, ``reference``, ``oci``: the vocabulary; pure and small.
- ``toc``: a layer's table of contents and its on-disk form.
- ``unpack``: one layer tar -> one snapshot (toc + content files), confined.
- ``transports``: image sources on disk (oci, oci-archive, docker-archive).
- ``store``: the content-addressed store, its lock, journal and garbage collection.
- ``pull``: resolve, unpack concurrently (trio), commit.
- ``merge``: tocs -> one merged tree (pure); ``explore``: merged trees of stored images.
- ``fusefs``: the pyfuse3 operations, thin over the merged tree (the only pyfuse3 user).
- ``mount``: a mount's life: checks, daemon, record, unmount.
- ``cli``: argparse; ``main(argv) -> int``.  ``cli`` and the mount daemon are the only
  callers of ``trio.run``.
"""

from .digest import Digest
from .errors import (
    DigestMismatch,
    InUse,
    InvalidReference,
    NotFound,
    RegistryError,
    SnapshotterError,
    StoreCorrupt,
    UnsafeArchive,
    UnsupportedMedia,
)

__version__ = "0.1.0"

__all__ = [
    "Digest",
    "DigestMismatch",
    "InUse",
    "InvalidReference",
    "NotFound",
    "RegistryError",
    "SnapshotterError",
    "StoreCorrupt",
    "UnsafeArchive",
    "UnsupportedMedia",
    "__version__",
]
