"""``python -m snapshotter.cli``: the ``snapshotter`` command."""

from . import entry_point

entry_point()
