"""An image's history as docker shows it: one row per history entry, newest first, each
with the layer it made.

The rows come from the config's ``history`` matched to the layers as
:func:`~snapshotter.explore.image.align_history` matches them (in order, skipping
``empty_layer`` entries).  A history that does not fit the layers still gives a row for
everything there is:

- a layer no entry made (the history is short) gets a row of its own with no entry
  (shown as ``(missing)``); such layers are the last ones, so their rows come after every
  entry, at the top of the table: a tool that appended a layer without writing history
  (the usual cause) appended it last;
- a non-empty entry past the last layer (the history is long; docker refuses the image
  with "too many non-empty layers in History section") is a row without a layer, whose
  size is unknown.

Sizes: ``size`` is the layer's uncompressed content as the store unpacked it (docker's
SIZE, ``Layer.unpacked_size``), ``None`` when not known (an image read from a registry
without its layers); ``compressed_size`` is the blob as the manifest lists it.  An empty
entry is 0 bytes in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .image import HistoryEntry, Layer


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One row of ``history``: an entry, the layer it made, or both."""

    entry: HistoryEntry | None  # None: a layer the history has no entry for
    layer: Layer | None  # None: an empty entry, or a non-empty one past the last layer

    @property
    def missing(self) -> bool:
        """A layer without a history entry."""
        return self.entry is None

    @property
    def empty_layer(self) -> bool:
        return self.entry is not None and self.entry.empty_layer

    @property
    def created(self) -> str:
        return self.entry.created if self.entry is not None else ""

    @property
    def created_by(self) -> str:
        return self.entry.created_by if self.entry is not None else ""

    @property
    def author(self) -> str:
        return self.entry.author if self.entry is not None else ""

    @property
    def comment(self) -> str:
        return self.entry.comment if self.entry is not None else ""

    @property
    def size(self) -> int | None:
        """Uncompressed bytes the row added (0 for an empty entry); None if unknown."""
        if self.layer is not None:
            return self.layer.unpacked_size
        return 0 if self.empty_layer else None

    @property
    def compressed_size(self) -> int | None:
        """Bytes of the layer's blob (0 for an empty entry); None if there is no layer."""
        if self.layer is not None:
            return self.layer.size
        return 0 if self.empty_layer else None


def history_rows(
    layers: Sequence[Layer], history: Sequence[HistoryEntry]
) -> tuple[HistoryRow, ...]:
    """The rows of ``history``, newest first (docker's order).

    ``layers`` are base first, each with the entry :func:`align_history` matched to it;
    ``history`` is every entry in the config's order (oldest first).
    """
    rows = [
        HistoryRow(entry, layers[entry.layer - 1] if entry.layer is not None else None)
        for entry in history
    ]
    rows += [HistoryRow(None, layer) for layer in layers if layer.history is None]
    rows.reverse()
    return tuple(rows)


__all__ = ["HistoryRow", "history_rows"]
