"""The content-addressed store, over ``oci``.

- ``toc``: a layer's table of contents (``Toc``, ``TocEntry``, ``EntryKind``) and its file.
- ``unpack``: one layer tar -> one snapshot (toc + content files), confined; its verified
  pass without the writing (``scan_layer``) also builds ``lazy``'s seek index.
- ``store``: blobs, snapshots by diff_id, images by manifest digest; the lock, the journal,
  garbage collection.
"""

from .store import ImageRecord, IndexRecord, LayerRecord, State, Store, default_root
from .toc import EntryKind, Toc, TocEntry

__all__ = [
    "EntryKind",
    "ImageRecord",
    "IndexRecord",
    "LayerRecord",
    "State",
    "Store",
    "Toc",
    "TocEntry",
    "default_root",
]
