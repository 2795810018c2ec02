"""snapshotter: container images as plain directories.

Layering, in wings from the bottom up (a wing imports only the wings below it):

- ``errors``, ``progress``: the exception tree; progress on stderr.
- ``oci/``: the vocabulary: digests, references, manifests, configs; pure and small.
- ``store/``: tocs, unpacking one layer into a snapshot, the content-addressed store.
- ``sources/``: image sources on disk, the registry client, pull.
- ``view/``: tocs -> one merged tree (pure), the tree of a stored image, FUSE, mount.
- ``explore/``: questions over the merged tree and the tocs (history, blame, diff, du,
  waste, export); pure, no printing.
- ``cli/``: argparse, one module per command family; tables and ``--json`` live there.
  ``cli`` and the mount daemon are the only callers of ``trio.run``.
"""

from .errors import (
    Blocked,
    DigestMismatch,
    InUse,
    InvalidConfig,
    InvalidReference,
    NotFound,
    RegistryError,
    SnapshotterError,
    StoreCorrupt,
    UnsafeArchive,
    UnsupportedMedia,
)
from .oci.digest import Digest

__version__ = "0.1.0"

__all__ = [
    "Blocked",
    "Digest",
    "DigestMismatch",
    "InUse",
    "InvalidConfig",
    "InvalidReference",
    "NotFound",
    "RegistryError",
    "SnapshotterError",
    "StoreCorrupt",
    "UnsafeArchive",
    "UnsupportedMedia",
    "__version__",
]
