"""What changed: one layer against the image below it (``diff --layer N``), and one image's
merged view, config and history against another's (``diff IMAGE OTHER``).

Both answers are lists of ``Change`` records in the merged tree's order (depth first, names
sorted), with podman's three actions: ``A`` added, ``C`` changed, ``D`` deleted.

What counts as a change of a path present on both sides (``FIELDS``, in this order): its
type; the content digest of a regular file (from the tocs, never by reading the file when
the toc records it); mode (07777), uid, gid; a symlink's target; xattrs (in any order);
a device's numbers; and mtime only when asked.  dive compares neither link targets nor
xattrs, so a retargeted symlink is unchanged to it; here it is ``C``.  A directory is ``C``
only when its own metadata changed, never because of its children.  A type change is
``C`` with the single field ``type``.

Shape of the lists, as podman's (containers/storage ``changes.go``):

- Every added path is listed, the children of an added directory too.
- A deleted subtree is one ``D`` for its top path only.
- A directory replaced by a file (or link, or device) is ``C`` (type) and nothing more:
  its children went with it, unlisted, as under a ``D``.  A file replaced by a
  directory is ``C`` (type), and each child of the new directory is ``A``.

**One layer** (``layer_diff``): the merged view as of layer N-1 against the view as of
layer N (``StoredImage.view``), looked at only where layer N's toc has an entry, so a small
layer on a large image answers at once.  A whiteout of a path that existed is ``D``; of a
path that did not, nothing.  An opaque directory deletes every lower child the layer does
not re-add: a ``D`` for each top path so lost, however deep (a re-added directory keeps
only what the layer put in it).  A directory only implied by a child's path is never
``C``: the merge keeps the lower directory's metadata (it is ``C`` (type) only when it
replaced a lower non-directory, and ``C`` (xattrs) when the lower one had ``trusted.*``
xattrs, which an implied copy drops).  The root is never ``A`` or ``D``; it is ``C`` when a
layer above the first changes its own metadata.  Layer 1 is everything added.

**Two images** (``image_diff``): their final merged views (diffoci compares tar entries
layer by layer and never applies whiteouts), then the config and the history.  ``A``: only
in OTHER, ``D``: only in IMAGE.  The first k layers the two share (equal diff_ids, so equal
chain_ids) are never read: a path no later layer of either image touches is the same on
both sides, so only the paths of the later layers' tocs are compared, and a directory one
of them resets (whiteout, opaque, replaced by a non-directory) is compared child by child
with the other side.  Two nodes both taken from the same toc inode of a shared layer are
equal without looking further; other regular files compare by size, then toc digests.
With no layer shared the two trees are walked in step.

**Two views** (``view_changes``): the same comparison of any two merged views, each as of
some number of layers, of two images or of one (``image_diff`` compares the final views).
The layers they share are the first min(shared, upto, other_upto).  Of one image, the
views as of n-1 and n are ``layer_diff(image, n)``'s answer (but for the root of layer 1),
and as of 1 and N what layers 2..N did together (dive's aggregated changes).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from ..errors import StoreCorrupt
from ..store.toc import EntryKind
from ..view.merge import ROOT_INODE, MergedTree, Stat
from .image import HistoryEntry, StoredImage

# What a change of a path present on both sides can be, in the order they are listed.
FIELDS = ("type", "digest", "mode", "uid", "gid", "link", "xattrs", "device", "mtime")
# History fields compared, in this order.
HISTORY_FIELDS = ("created", "created_by", "author", "comment", "empty_layer")
# Top-level config keys that are no row of their own: "config" is compared key by key,
# the history has its rows, and rootfs.diff_ids is the layering the file rows compare.
_NOT_CONFIG_ROWS = frozenset({"config", "rootfs", "history"})


class Action(enum.Enum):
    """podman's letters."""

    ADDED = "A"
    CHANGED = "C"
    DELETED = "D"


@dataclass(frozen=True, slots=True)
class Change:
    """One path that differs."""

    path: str  # relative ("" = the root)
    action: Action
    fields: tuple[str, ...] = ()  # CHANGED: which of FIELDS differ, in that order


@dataclass(frozen=True, slots=True)
class LayerDiff:
    """What layer ``layer`` (1 = base) added, changed and deleted."""

    layer: int
    changes: tuple[Change, ...]  # merged tree order

    def paths(self, action: Action) -> list[str]:
        return [c.path for c in self.changes if c.action is action]


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """A config key whose value differs.  ``key`` is a key of the config's ``config``
    object (``Env``, ``Labels.foo`` for one key of an object) or a top-level key
    (``created``, ``architecture``).  A value of None: the key is absent (or null)."""

    key: str
    image: object
    other: object


@dataclass(frozen=True, slots=True)
class HistoryChange:
    """A history entry that differs.  ``index``: its position in the config's history,
    from 1.  ``field``: one of HISTORY_FIELDS, or "" when the entry is in one image only
    (the values are then the whole entry, or None)."""

    index: int
    field: str
    image: object
    other: object


@dataclass(frozen=True, slots=True)
class ImageDiff:
    """How OTHER differs from IMAGE."""

    files: tuple[Change, ...]  # merged tree order; A = only in OTHER, D = only in IMAGE
    config: tuple[ConfigChange, ...]
    history: tuple[HistoryChange, ...]
    shared_layers: int  # the first k layers the two images share (not read)

    @property
    def same(self) -> bool:
        return not (self.files or self.config or self.history)


def tree_order(path: str) -> list[str]:
    """Sort key putting paths in the merged tree's order (depth first, names sorted)."""
    return path.split("/")


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _under(path: str, top: str) -> bool:
    return top == "" or path.startswith(top + "/")


_UNKNOWN = -1


class _Side:
    """One merged tree being compared, with a cache of the directories looked up."""

    __slots__ = ("image", "tree", "diff_ids", "_dirs")

    def __init__(self, image: StoredImage, tree: MergedTree):
        self.image = image
        self.tree = tree
        self.diff_ids = tuple(layer.diff_id for layer in image.layers)
        self._dirs: dict[str, int | None] = {"": ROOT_INODE}

    def find(self, path: str) -> int | None:
        """The inode at ``path``, without following symlinks; None if there is none."""
        if not path:
            return ROOT_INODE
        parent, _, name = path.rpartition("/")
        dirs, tree = self._dirs, self.tree
        inode = dirs.get(parent, _UNKNOWN)
        if inode == _UNKNOWN:
            inode, prefix = ROOT_INODE, ""
            for part in parent.split("/"):  # iterative: a hostile path may be deep
                prefix = _join(prefix, part)
                known = dirs.get(prefix, _UNKNOWN)
                if known == _UNKNOWN:
                    known = None if inode is None else tree.lookup_inode(inode, part)
                    dirs[prefix] = known
                inode = known
        return None if inode is None else tree.lookup_inode(inode, name)

    def kind(self, inode: int) -> EntryKind:
        return self.tree.stat(inode).kind


def _same_content(a: _Side, sa: Stat, b: _Side, sb: Stat) -> bool:
    if sa.size != sb.size:
        return False
    if sa.size == 0:
        return True
    if sa.data == sb.data and a.diff_ids[sa.layer] == b.diff_ids[sb.layer]:
        return True  # one toc inode of one layer: one content
    return a.image.content_digest(sa.layer + 1, sa.data, sa.size) == b.image.content_digest(
        sb.layer + 1, sb.data, sb.size
    )


def _differences(
    a: _Side, sa: Stat, b: _Side, sb: Stat, mtime: bool, shared: int
) -> tuple[str, ...]:
    """Which of FIELDS differ between node ``sa`` of ``a`` and ``sb`` of ``b``.  ``shared``:
    the first layers both trees were merged from are the same (by index)."""
    kind = sa.kind
    if kind is not sb.kind:
        return ("type",)
    if sa.data == sb.data and sa.layer == sb.layer and 0 <= sa.layer < shared:
        return ()  # both from one entry of one shared layer
    if (
        kind is not EntryKind.DIR
        and sa.data == sb.data
        and sa.layer >= 0
        and sb.layer >= 0
        and a.diff_ids[sa.layer] == b.diff_ids[sb.layer]
    ):
        return ()  # a non-directory is all its toc entry: the same entry, the same node
    out: list[str] = []
    if kind is EntryKind.FILE and not _same_content(a, sa, b, sb):
        out.append("digest")
    if sa.mode != sb.mode:
        out.append("mode")
    if sa.uid != sb.uid:
        out.append("uid")
    if sa.gid != sb.gid:
        out.append("gid")
    if kind is EntryKind.SYMLINK and a.tree.link(sa.inode) != b.tree.link(sb.inode):
        out.append("link")
    xa, xb = a.tree.xattrs(sa.inode), b.tree.xattrs(sb.inode)
    if (xa or xb) and sorted(xa) != sorted(xb):
        out.append("xattrs")
    if kind in (EntryKind.CHAR, EntryKind.BLOCK) and (sa.rdev_major, sa.rdev_minor) != (
        sb.rdev_major,
        sb.rdev_minor,
    ):
        out.append("device")
    if mtime and sa.mtime_ns != sb.mtime_ns:
        out.append("mtime")
    return tuple(out)


# -- one layer -------------------------------------------------------------------------------


def layer_diff(image: StoredImage, number: int, *, mtime: bool = False) -> LayerDiff:
    """What layer ``number`` (1 = base) added, changed and deleted (see the module's
    docstring); ``mtime``: an mtime change alone is a change too."""
    image.layer(number)  # InvalidReference when out of range
    upper = _Side(image, image.view(number).tree)
    if number == 1:
        # Over the empty image everything is new, and the view of layer 1 is its toc
        # merged: its walk is the answer, in order, with no toc to read.
        added = _subtree(upper.tree, ROOT_INODE, "")
        next(added)  # the root
        return LayerDiff(1, tuple(Change(p, Action.ADDED) for p in added))
    toc = image.toc(number)
    lower = _Side(image, image.view(number - 1).tree)
    shared = number - 1
    changes: dict[str, Change] = {}
    for e in toc.entries:
        path = e.path
        if e.is_whiteout:
            if path and lower.find(path) is not None:
                changes[path] = Change(path, Action.DELETED)
            continue
        ui = upper.find(path)
        if ui is None:
            continue  # not in the view the toc made: nothing this layer shows
        li = lower.find(path)
        if li is None:
            changes[path] = Change(path, Action.ADDED)
            continue
        sl, su = lower.tree.stat(li), upper.tree.stat(ui)
        lower_dir = sl.kind is EntryKind.DIR
        # (An implied directory over a directory is the same node, from the same layer,
        # unless it dropped trusted.* xattrs: _differences says which.)
        fields = _differences(lower, sl, upper, su, mtime, shared)
        if fields:
            changes[path] = Change(path, Action.CHANGED, fields)
        if e.opaque and lower_dir and su.kind is EntryKind.DIR:
            for lost in _lost(lower, li, upper, ui, path):
                changes.setdefault(lost, Change(lost, Action.DELETED))
    ordered = sorted(changes.values(), key=lambda c: tree_order(c.path))
    return LayerDiff(number, tuple(ordered))


def _lost(lower: _Side, li: int, upper: _Side, ui: int, path: str) -> Iterator[str]:
    """The top paths of what directory ``path`` had in ``lower`` and not in ``upper``,
    where ``upper``'s directory holds only what its layer re-added (opaque)."""
    stack = [(li, ui, path)]
    while stack:
        l_dir, u_dir, p = stack.pop()
        names, inodes = lower.tree.children(l_dir)
        for name, l_child in zip(names, inodes, strict=True):
            child_path = _join(p, name)
            u_child = upper.tree.lookup_inode(u_dir, name)
            if u_child is None:
                yield child_path
            elif lower.kind(l_child) is EntryKind.DIR and upper.kind(u_child) is EntryKind.DIR:
                stack.append((l_child, u_child, child_path))


# -- two images --------------------------------------------------------------------------------


def shared_layers(image: StoredImage, other: StoredImage) -> int:
    """How many layers, from the base, the two images share (equal diff_ids)."""
    k = 0
    for a, b in zip(image.layers, other.layers, strict=False):
        if a.diff_id != b.diff_id:
            break
        k += 1
    return k


def image_diff(
    image: StoredImage,
    other: StoredImage,
    *,
    ignore_timestamps: bool = False,
    ignore_history: bool = False,
) -> ImageDiff:
    """How ``other`` differs from ``image``: files of the merged views, config, history.
    ``ignore_timestamps``: file mtimes, the config's ``created`` and the history's
    ``created`` are not compared; ``ignore_history``: the history is not compared."""
    files = file_changes(image, other, mtime=not ignore_timestamps)
    config = config_changes(image.config, other.config, ignore_timestamps=ignore_timestamps)
    history = (
        ()
        if ignore_history
        else history_changes(image.history, other.history, ignore_timestamps=ignore_timestamps)
    )
    return ImageDiff(files, config, history, shared_layers(image, other))


def file_changes(
    image: StoredImage, other: StoredImage, *, mtime: bool = True, walk: bool = False
) -> tuple[Change, ...]:
    """The paths whose merged views differ, in tree order.  ``walk``: compare the whole
    trees in step even where layers are shared (the same answer, slower; for tests)."""
    return view_changes(image, other, mtime=mtime, walk=walk)


def view_changes(
    image: StoredImage,
    other: StoredImage,
    *,
    upto: int | None = None,
    other_upto: int | None = None,
    mtime: bool = True,
    walk: bool = False,
) -> tuple[Change, ...]:
    """The paths whose merged views differ, in tree order: ``image``'s view as of layer
    ``upto`` against ``other``'s as of layer ``other_upto`` (None: all layers).  ``A``:
    only in OTHER's view, ``D``: only in IMAGE's.  ``other`` may be ``image`` itself:
    ``upto=1, other_upto=N`` is what layers 2..N did together (dive's aggregated
    changes).  Only the tocs of the layers above the ones both views share are read.
    ``walk``: compare the whole trees in step (the same answer, slower; for tests)."""
    n_a = len(image.layers) if upto is None else image.check_upto(upto)
    n_b = len(other.layers) if other_upto is None else other.check_upto(other_upto)
    shared = min(shared_layers(image, other), n_a, n_b)
    a = _Side(image, image.view(n_a).tree)
    b = _Side(other, other.view(n_b).tree)
    out: list[Change] = []
    if walk or shared == 0:
        _compare(a, ROOT_INODE, b, ROOT_INODE, "", mtime, shared, out)
        return tuple(out)
    # Only what the unshared layers touch can differ; `reset`: the path's lower subtree
    # may be gone on that side (whiteout, opaque directory, replaced by a non-directory).
    touched: dict[str, bool] = {}
    for img, n in ((image, n_a), (other, n_b)):
        for number in range(shared + 1, n + 1):
            for e in img.toc(number).entries:
                reset = e.kind is not EntryKind.DIR or e.opaque
                touched[e.path] = touched.get(e.path, False) or reset
    covered: str | None = None  # a subtree already compared or listed whole
    for path in sorted(touched, key=tree_order):
        if covered is not None and _under(path, covered):
            continue
        ia, ib = a.find(path), b.find(path)
        if ia is None and ib is None:
            continue
        if ia is not None and ib is not None and not touched[path]:
            sa, sb = a.tree.stat(ia), b.tree.stat(ib)
            if sa.kind is EntryKind.DIR and sb.kind is EntryKind.DIR:
                # A directory on both sides that kept its lower children on both.
                fields = _differences(a, sa, b, sb, mtime, shared)
                if fields:
                    out.append(Change(path, Action.CHANGED, fields))
                continue
        _compare(a, ia, b, ib, path, mtime, shared, out)
        covered = path
    out.sort(key=lambda c: tree_order(c.path))
    return tuple(out)


def _compare(
    a: _Side,
    ia: int | None,
    b: _Side,
    ib: int | None,
    path: str,
    mtime: bool,
    shared: int,
    out: list[Change],
) -> None:
    """Compare ``path`` and everything below it on both sides, in step, appending the
    changes to ``out`` in tree order."""
    # Pairs to compare (either side may be None), popped depth first.
    stack: list[tuple[int | None, int | None, str]] = [(ia, ib, path)]
    a_stat, b_stat = a.tree.stat, b.tree.stat
    while stack:
        ia, ib, p = stack.pop()
        if ia is None:
            assert ib is not None
            out.extend(Change(added, Action.ADDED) for added in _subtree(b.tree, ib, p))
            continue
        if ib is None:
            if p:
                out.append(Change(p, Action.DELETED))
            continue
        sa, sb = a_stat(ia), b_stat(ib)
        fields = _differences(a, sa, b, sb, mtime, shared)
        if fields:
            out.append(Change(p, Action.CHANGED, fields))
        a_dir = sa.kind is EntryKind.DIR
        b_dir = sb.kind is EntryKind.DIR
        if b_dir and not a_dir:
            below = _subtree(b.tree, ib, p)
            next(below)
            out.extend(Change(added, Action.ADDED) for added in below)
        elif a_dir and b_dir:
            stack.extend(reversed(_pairs(a.tree, ia, b.tree, ib, p)))


def _subtree(tree: MergedTree, inode: int, path: str) -> Iterator[str]:
    """``path`` and every path below it, in tree order."""
    stat = tree.stat
    stack = [(inode, path)]
    seen: set[int] = set()  # directories: a crafted cache file could list one twice
    while stack:
        inode, path = stack.pop()
        yield path
        if stat(inode).kind is EntryKind.DIR:
            if inode in seen:
                raise StoreCorrupt(f"merged tree: directory {inode} is listed twice")
            seen.add(inode)
            names, inodes = tree.children(inode)
            stack.extend(
                (c, _join(path, n)) for n, c in zip(reversed(names), reversed(inodes), strict=True)
            )


def _pairs(
    ta: MergedTree, ia: int, tb: MergedTree, ib: int, path: str
) -> list[tuple[int | None, int | None, str]]:
    """The children of two directories matched by name, in name order."""
    names_a, inodes_a = ta.children(ia)
    names_b, inodes_b = tb.children(ib)
    out: list[tuple[int | None, int | None, str]] = []
    i = j = 0
    while i < len(names_a) and j < len(names_b):
        na, nb = names_a[i], names_b[j]
        if na == nb:
            out.append((inodes_a[i], inodes_b[j], _join(path, na)))
            i += 1
            j += 1
        elif na < nb:
            out.append((inodes_a[i], None, _join(path, na)))
            i += 1
        else:
            out.append((None, inodes_b[j], _join(path, nb)))
            j += 1
    out.extend((inodes_a[x], None, _join(path, names_a[x])) for x in range(i, len(names_a)))
    out.extend((None, inodes_b[x], _join(path, names_b[x])) for x in range(j, len(names_b)))
    return out


# -- config and history --------------------------------------------------------------------


def _canonical(value: object) -> str:
    """A JSON value as one string, so that 1, 1.0 and true stay three values."""
    return json.dumps(value, sort_keys=True)


def _object(value: object) -> Mapping[str, object]:
    return value if isinstance(value, dict) else {}


def config_changes(
    image: Mapping[str, object], other: Mapping[str, object], *, ignore_timestamps: bool = False
) -> tuple[ConfigChange, ...]:
    """The config keys whose values differ: first those of the ``config`` object (sorted;
    an object such as ``Labels`` key by key), then the top-level ones (sorted).  A null
    value is an absent key.  ``ignore_timestamps``: ``created`` is not compared."""
    rows: list[ConfigChange] = []
    _rows(_object(image.get("config")), _object(other.get("config")), "", rows)
    top_a = {k: v for k, v in image.items() if k not in _NOT_CONFIG_ROWS}
    top_b = {k: v for k, v in other.items() if k not in _NOT_CONFIG_ROWS}
    if ignore_timestamps:
        top_a.pop("created", None)
        top_b.pop("created", None)
    _rows(top_a, top_b, "", rows, nested=False)
    return tuple(rows)


def _rows(
    a: Mapping[str, object],
    b: Mapping[str, object],
    prefix: str,
    rows: list[ConfigChange],
    *,
    nested: bool = True,
) -> None:
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        name = f"{prefix}{key}"
        if (
            nested
            and (isinstance(va, dict) or isinstance(vb, dict))
            and all(v is None or isinstance(v, dict) for v in (va, vb))
        ):
            _rows(_object(va), _object(vb), f"{name}.", rows, nested=False)
        elif _canonical(va) != _canonical(vb):
            rows.append(ConfigChange(name, va, vb))


def _history_json(entry: HistoryEntry, fields: Sequence[str]) -> dict[str, object]:
    return {f: getattr(entry, f) for f in fields}


def history_changes(
    image: Sequence[HistoryEntry],
    other: Sequence[HistoryEntry],
    *,
    ignore_timestamps: bool = False,
) -> tuple[HistoryChange, ...]:
    """The history entries that differ, position by position (oldest first).
    ``ignore_timestamps``: ``created`` is not compared."""
    fields = [f for f in HISTORY_FIELDS if not (ignore_timestamps and f == "created")]
    rows: list[HistoryChange] = []
    for i in range(max(len(image), len(other))):
        ea = image[i] if i < len(image) else None
        eb = other[i] if i < len(other) else None
        if ea is None or eb is None:
            rows.append(
                HistoryChange(
                    i + 1,
                    "",
                    None if ea is None else _history_json(ea, fields),
                    None if eb is None else _history_json(eb, fields),
                )
            )
            continue
        for f in fields:
            va, vb = getattr(ea, f), getattr(eb, f)
            if va != vb:
                rows.append(HistoryChange(i + 1, f, va, vb))
    return tuple(rows)


__all__ = [
    "FIELDS",
    "HISTORY_FIELDS",
    "Action",
    "Change",
    "ConfigChange",
    "HistoryChange",
    "ImageDiff",
    "LayerDiff",
    "config_changes",
    "file_changes",
    "history_changes",
    "image_diff",
    "layer_diff",
    "shared_layers",
    "tree_order",
    "view_changes",
]
