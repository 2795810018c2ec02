"""The merged view of an image's layers, over ``store``.

- ``merge``: tocs -> one ``MergedTree`` (pure).  Every reader of an image's files (the
  mount, ``ls``, ``cat``, ``blame``, ``du``, ``export``) reads this one model.
- ``tree``: ``open_tree``, the merged tree of a stored image (cached under ``merged/``), as
  an ``ImageView``.
- ``fusefs``: the pyfuse3 operations, thin over the merged tree (the only pyfuse3 user).
- ``mount``: a mount's life: checks, daemon, record, unmount.
"""

from .merge import MergedTree, Node, merge
from .tree import ImageView, open_tree

__all__ = ["ImageView", "MergedTree", "Node", "merge", "open_tree"]
