"""One stored image as the explore questions see it: its config, its layers with the
history entries that made them, its tocs and its merged views.

Layers are **numbered from 1**, the base layer being layer 1, so that a number means the
same thing everywhere: ``--layer N`` shows the image *as of layer N*, the view after its
first N layers (what ``mount --layer N`` mounts; ``--layer 0`` is the empty image), and
"layer N" in ``blame``, ``diff --layer N``, ``ls -l`` and every message is that layer.
(A ``Node.layer`` of the merged tree is the 0-based index: number - 1.)

History entries are matched to layers as docker and dive match them: in order, skipping
entries marked ``empty_layer`` (ENV, CMD, LABEL ...).  A history that does not fit the
layers is no error: the mismatch is reported in ``warnings`` and the unmatched layers have
no entry (shown as ``(missing)``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidReference, NotFound, StoreCorrupt
from ..oci.digest import Digest
from ..oci.model import JSONObject, Manifest, Platform, load_json
from ..store.store import ImageRecord, IndexRecord, Store
from ..store.toc import DATA_DIR, TOC_NAME, EntryKind, Toc, TocColumns, TocEntry
from ..view.merge import Node
from ..view.tree import ImageView, open_tree

# sha256 of no bytes: the content digest of every empty regular file.
EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# The OCI annotation naming the base image's manifest (image-spec annotations.md).
ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One entry of the config's ``history``, as the image spec defines it."""

    created: str  # RFC 3339, as written ("" when absent)
    created_by: str
    author: str
    comment: str
    empty_layer: bool
    layer: int | None  # number of the layer this entry made; None for empty or unmatched

    @classmethod
    def from_json(cls, obj: Mapping[str, object], layer: int | None) -> HistoryEntry:
        def text(key: str) -> str:
            value = obj.get(key)
            return value if isinstance(value, str) else ""

        return cls(
            created=text("created"),
            created_by=text("created_by"),
            author=text("author"),
            comment=text("comment"),
            empty_layer=obj.get("empty_layer") is True,
            layer=layer,
        )


@dataclass(frozen=True, slots=True)
class Layer:
    """One layer of an image, with what its manifest, the store and its history say."""

    number: int  # 1 = the base layer
    digest: str  # the blob as the manifest names it (compressed)
    diff_id: str  # the uncompressed tar; names the snapshot
    media_type: str
    size: int  # bytes of the blob (compressed)
    unpacked_size: int | None  # bytes of file content; None when not known (remote image)
    history: HistoryEntry | None  # the entry that made it; None when the history is short

    @property
    def created_by(self) -> str:
        return self.history.created_by if self.history is not None else ""


def align_history(
    history: Sequence[Mapping[str, object]], layer_count: int
) -> tuple[tuple[HistoryEntry, ...], tuple[HistoryEntry | None, ...], tuple[str, ...]]:
    """Match history entries to layers: (every entry, the entry of each layer, warnings).

    Non-empty entries take layers in order; an entry past the last layer makes no layer,
    and layers past the last non-empty entry have none.  Either mismatch is a warning (docker
    refuses the first with "too many non-empty layers in History section"; we show what
    there is).
    """
    entries: list[HistoryEntry] = []
    of_layer: list[HistoryEntry | None] = [None] * layer_count
    next_layer = 0
    extra = 0
    for obj in history:
        if obj.get("empty_layer") is True:
            entries.append(HistoryEntry.from_json(obj, None))
            continue
        if next_layer < layer_count:
            entry = HistoryEntry.from_json(obj, next_layer + 1)
            of_layer[next_layer] = entry
            next_layer += 1
        else:
            entry = HistoryEntry.from_json(obj, None)
            extra += 1
        entries.append(entry)
    warnings: list[str] = []
    if extra:
        warnings.append(
            f"history has {next_layer + extra} non-empty entries for {layer_count} layers; "
            f"the last {extra} match no layer"
        )
    if next_layer < layer_count:
        missing = layer_count - next_layer
        which = "layer shows" if missing == 1 else f"{missing} layers show"
        warnings.append(
            f"history has {next_layer} non-empty entries for {layer_count} layers; "
            f"the last {which} (missing)"
        )
    return tuple(entries), tuple(of_layer), tuple(warnings)


@dataclass(slots=True)
class StoredImage:
    """An image in the store, opened for exploring.  Tocs and merged views are read on
    first use and kept for the life of this object (a command's run)."""

    store: Store
    record: ImageRecord
    index: IndexRecord | None  # the index it was picked from, if any
    config: JSONObject  # the config blob, parsed (the store keeps it verbatim)
    manifest: Manifest
    manifest_annotations: Mapping[str, str]
    layers: tuple[Layer, ...]  # base first; layers[n - 1] is layer n
    history: tuple[HistoryEntry, ...]  # as the config lists it (oldest first)
    warnings: tuple[str, ...]
    label: str = ""  # how the user named it (for messages); the manifest digest if not given
    _tocs: dict[int, Toc] = field(default_factory=dict)
    _columns: dict[int, TocColumns] = field(default_factory=dict)
    _digests: dict[int, dict[int, str]] = field(default_factory=dict)
    _views: dict[int, ImageView] = field(default_factory=dict)

    @property
    def what(self) -> str:
        """The image as messages name it: ``image 'app:1'`` (or its manifest digest)."""
        return f"image {self.label!r}" if self.label else f"image {self.record.digest}"

    # -- layers ----------------------------------------------------------------------------

    def layer(self, number: int) -> Layer:
        """Layer ``number`` (1 = base); InvalidReference when out of range."""
        if not 1 <= number <= len(self.layers):
            raise InvalidReference(
                f"{self.what}: layer {number} is out of range 1..{len(self.layers)}"
            )
        return self.layers[number - 1]

    def check_upto(self, upto: int) -> int:
        """``upto`` as a ``--layer`` value (0..layers); InvalidReference otherwise."""
        if not 0 <= upto <= len(self.layers):
            raise InvalidReference(
                f"{self.what}: --layer {upto} is out of range 0..{len(self.layers)}"
            )
        return upto

    def snapshot(self, number: int) -> Path:
        return self.store.snapshot_path(Digest.parse(self.layer(number).diff_id))

    def toc(self, number: int) -> Toc:
        """Layer ``number``'s toc (read once)."""
        toc = self._tocs.get(number)
        if toc is None:
            toc = Toc.read(self.snapshot(number) / TOC_NAME)
            self._tocs[number] = toc
        return toc

    def columns(self, number: int) -> TocColumns:
        """Layer ``number``'s toc as columns (read once): for questions over every entry
        of a layer, at a third of the cost of ``toc``."""
        columns = self._columns.get(number)
        if columns is None:
            columns = TocColumns.read(self.snapshot(number) / TOC_NAME)
            self._columns[number] = columns
        return columns

    def data_path(self, number: int, toc_inode: int) -> Path:
        """Where layer ``number`` keeps the content of its toc inode ``toc_inode``."""
        return self.snapshot(number) / DATA_DIR / f"{toc_inode:x}"

    # -- merged views ----------------------------------------------------------------------

    def view(self, upto: int | None = None) -> ImageView:
        """The merged view as of layer ``upto`` (default: all layers), as the mount shows it."""
        n = len(self.layers) if upto is None else self.check_upto(upto)
        view = self._views.get(n)
        if view is None:
            view = open_tree(self.store, self.record, n)
            self._views[n] = view
        return view

    # -- content ---------------------------------------------------------------------------

    def content_digest(self, number: int, entry_inode: int, size: int) -> str:
        """``sha256:...`` of the content of toc inode ``entry_inode`` of layer ``number``:
        from the toc when it records digests, else hashed from the data file."""
        if size == 0:
            return EMPTY_DIGEST
        digests = self._digests.get(number)
        if digests is None:
            columns = self.columns(number)
            digests = {i: d for i, d in zip(columns.inode, columns.digest, strict=True) if d}
            self._digests[number] = digests
        known = digests.get(entry_inode)
        if known:
            return known
        digest = hash_file(self.data_path(number, entry_inode))
        digests[entry_inode] = digest
        return digest

    def node_digest(self, node: Node) -> str:
        """The content digest of a regular file of a merged view ("" for anything else)."""
        if node.kind is not EntryKind.FILE:
            return ""
        return self.content_digest(node.layer + 1, node.data, node.size)

    def entry_digest(self, number: int, entry: TocEntry) -> str:
        """The content digest of a regular-file entry of layer ``number``'s toc."""
        if entry.kind is not EntryKind.FILE:
            return ""
        return self.content_digest(number, entry.inode, entry.size)

    @property
    def base_digest(self) -> str | None:
        """The base image's manifest digest, when the manifest names it
        (``org.opencontainers.image.base.digest``)."""
        return self.manifest_annotations.get(ANNOTATION_BASE_DIGEST)

    @property
    def platform(self) -> Platform:
        return Platform.parse(self.record.platform)


def hash_file(path: Path) -> str:
    """``sha256:<hex>`` of a file's content, holes read as zeros."""
    h = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except FileNotFoundError as exc:
        raise StoreCorrupt(f"content file {path} is missing from the store") from exc
    return f"sha256:{h.hexdigest()}"


def open_image(store: Store, text: str, platform: Platform | None = None) -> StoredImage:
    """The stored image ``text`` names (anything ``mount`` takes: a name, NAME@DIGEST, a
    digest or a unique id prefix; an index gives the image for ``platform``, default the
    host's)."""
    state = store.read_state()
    record, index = store.resolve_image(state, text, platform)
    return open_record(store, record, index, label=text)


def open_record(
    store: Store, record: ImageRecord, index: IndexRecord | None = None, *, label: str = ""
) -> StoredImage:
    config_digest = Digest.parse(record.config)
    manifest_digest = Digest.parse(record.digest)
    try:
        config_raw = store.read_blob(config_digest)
        manifest_raw = store.read_blob(manifest_digest)
    except FileNotFoundError as exc:
        raise StoreCorrupt(
            f"image {record.digest}: a blob is missing from the store ({exc})"
        ) from exc
    config = load_json(config_raw, f"config {config_digest}")
    manifest = Manifest.parse(manifest_raw, f"manifest {manifest_digest}")
    annotations = _annotations(load_json(manifest_raw, f"manifest {manifest_digest}"))
    history_raw = config.get("history")
    history_objs = (
        [h for h in history_raw if isinstance(h, dict)] if isinstance(history_raw, list) else []
    )
    history, of_layer, warnings = align_history(history_objs, len(record.layers))
    layers = tuple(
        Layer(
            number=i + 1,
            digest=rec.digest,
            diff_id=rec.diff_id,
            media_type=rec.media_type,
            size=rec.size,
            unpacked_size=rec.unpacked_size,
            history=of_layer[i],
        )
        for i, rec in enumerate(record.layers)
    )
    return StoredImage(
        store=store,
        record=record,
        index=index,
        config=config,
        manifest=manifest,
        manifest_annotations=annotations,
        layers=layers,
        history=history,
        warnings=warnings,
        label=label,
    )


def _annotations(manifest: JSONObject) -> dict[str, str]:
    value = manifest.get("annotations")
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def split_path(path: str) -> list[str]:
    """An in-image path as its names: leading ``/``, empty names and ``.`` dropped.  ``..``
    is kept (callers resolving symlinks clamp it at the root, as a chroot does)."""
    return [p for p in path.split("/") if p and p != "."]


def normalize_path(path: str) -> str:
    """An in-image path as the tocs and the merged tree spell it: relative, no ``.``;
    ``..`` clamped at the root ("" is the root)."""
    out: list[str] = []
    for part in split_path(path):
        if part == "..":
            if out:
                out.pop()
        else:
            out.append(part)
    return "/".join(out)


def display_path(path: str) -> str:
    """An in-image path as users see it: absolute (``/`` for the root)."""
    return "/" + path


def require_found(node: Node | None, image: StoredImage, path: str) -> Node:
    """``node``, or NotFound naming ``path`` when there is none."""
    if node is None:
        raise NotFound(f"{image.what}: no such path {display_path(path)!r}")
    return node


__all__ = [
    "EMPTY_DIGEST",
    "HistoryEntry",
    "Layer",
    "StoredImage",
    "align_history",
    "display_path",
    "hash_file",
    "normalize_path",
    "open_image",
    "open_record",
    "require_found",
    "split_path",
]
