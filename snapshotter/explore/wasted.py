"""``wasted``: bytes an image ships more than once or ships hidden, by dive's definitions.

dive (wagoodman/dive, ``dive/filetree/efficiency.go``) looks at the *leaf* entries of every
layer: each non-directory, each whiteout, and each directory that has no entry below it in
that layer.  For each path it adds up the sizes of the entries all layers put there:

- a regular file counts its size; a further name of a hardlinked file counts 0 (in a tar
  it is a link entry of size 0; we take the first name in walk order as the file);
- a whiteout counts 0, unless it deletes a directory: then it counts every byte the
  image held below that directory as of the layer before (what it hid);
- directories, symlinks, devices and fifos count 0.

Over all paths, efficiency = Σ smallest / Σ total (1 when nothing counts).  A path with
more than one entry is "inefficient".  dive calls Σ total of those paths the wasted bytes,
counting the one copy the image needs too (its bug #684); we follow its PR #685: a path
wastes total - smallest, the bytes beyond one copy.  dive's own numbers stay available
(``dive_inefficient_bytes``, each path's ``total``) for its ``--json`` schema.

Where we differ from dive, and why (docs/wasted.md has the full list):

- opaque directories: dive ignores ``.wh..wh..opq`` markers (they never reach its trees),
  so what they hide counts nowhere; neither does it here, in the score.  ``hidden`` lists
  it.
- dive stops counting a layer at a whiteout of a path no lower layer has (an error ends
  its walk); we count that whiteout as 0 and go on.
- a layer that whites out a directory and re-creates it is one opaque directory in our
  toc: its whiteout is not seen.

"User" bytes are those of the layers above the base image.  dive takes layer 1 as the
base; an ``org.opencontainers.image.base.digest`` annotation names the real base, whose
layer count we take from the store (``base_boundary``).

Also here: the CI rules of ``.dive-ci`` (``make_rules``, ``evaluate``), and ``hidden``:
every entry some layer ships that the merged view does not show, and what hid it.
"""

from __future__ import annotations

import bisect
import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import compress
from typing import NamedTuple

from ..errors import InvalidConfig
from ..store.toc import FLAG_IMPLIED, FLAG_OPAQUE, EntryKind, TocColumns
from ..view.merge import ROOT_INODE, MergedTree
from .du import first_names, subtree_bytes
from .image import StoredImage

WHITEOUT_PREFIX = ".wh."  # image-spec layer.md#whiteouts: how dive names a whiteout entry


# -- the analysis ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathWaste:
    """One path with entries in more than one layer."""

    path: str  # relative
    count: int  # entries at the path, over all layers
    total: int  # Σ their sizes: dive's "cumulative size"
    smallest: int  # the smallest of them

    @property
    def wasted(self) -> int:
        """Bytes beyond one copy (dive PR #685)."""
        return self.total - self.smallest


@dataclass(frozen=True, slots=True)
class LayerSummary:
    """A layer as dive's report names it."""

    number: int  # 1 = base
    digest: str  # the blob (compressed)
    diff_id: str
    size: int  # bytes of file content (each hardlinked inode once)
    command: str  # created_by without "/bin/sh -c ", "(missing)" when history has none


@dataclass(frozen=True, slots=True)
class BaseBoundary:
    """Where the base image ends: its layers are not the user's."""

    layers: int  # layers of the base image: 1 is dive's default
    digest: str | None  # the base image's manifest, from the annotation
    warning: str | None  # why the annotation could not be used, if it could not


@dataclass(frozen=True, slots=True)
class WasteReport:
    """dive's analysis of an image, with the bytes beyond one copy beside dive's sums."""

    layers: tuple[LayerSummary, ...]  # base first
    efficiency: float  # dive's score, 0..1
    inefficient: tuple[PathWaste, ...]  # dive's fileReference order: largest total first
    base: BaseBoundary

    @property
    def size(self) -> int:
        """Bytes of file content of every layer (dive's ``sizeBytes``)."""
        return sum(layer.size for layer in self.layers)

    @property
    def user_size(self) -> int:
        """Bytes of file content of the layers above the base."""
        return sum(layer.size for layer in self.layers[self.base.layers :])

    @property
    def wasted(self) -> int:
        """Σ(total - smallest): the bytes beyond one copy of each path."""
        return sum(p.wasted for p in self.inefficient)

    @property
    def dive_inefficient_bytes(self) -> int:
        """dive's ``wastedBytes``/``inefficientBytes``: Σ total of the inefficient paths."""
        return sum(p.total for p in self.inefficient)

    @property
    def user_wasted_ratio(self) -> float:
        """wasted / user bytes (dive's ``WastedUserPercent``, a ratio despite its name);
        infinite when there are wasted bytes but no user bytes, as dive's division is."""
        if self.user_size:
            return self.wasted / self.user_size
        return math.inf if self.wasted else 0.0

    @property
    def files(self) -> tuple[PathWaste, ...]:
        """The paths that waste bytes, most first (ties in path order)."""
        rows = [p for p in self.inefficient if p.wasted > 0]
        rows.sort(key=lambda p: (-p.wasted, p.path.split("/")))
        return tuple(rows)


def analyze(image: StoredImage) -> WasteReport:
    """dive's efficiency analysis of ``image``, from its tocs (and, for whiteouts of
    directories, the merged view as of the layer before)."""
    layers: list[LayerSummary] = []
    leaves: list[_Leaves] = []
    lower_dirs: set[str] = set()  # paths some layer below made a directory
    for number in range(1, len(image.layers) + 1):
        columns = image.columns(number)
        found = _leaves(image, number, columns, lower_dirs)
        layers.append(_summary(image, number, found.content))
        leaves.append(found)
        lower_dirs.update(compress(columns.path, [k is EntryKind.DIR for k in columns.kind]))
    # A path with one leaf entry counts its size in both sums: only the paths that have
    # more (few) need one by one.  Found with set operations, not a dict of 100k paths.
    seen: set[str] = set()
    repeated: set[str] = set()
    for found in leaves:
        names = set(found.paths)
        repeated |= names & seen
        seen |= names
    stats: dict[str, list[int]] = {}  # path -> [count, total, smallest]
    # When dive sees a path's 2nd entry: (layer, the entry's place in its walk by name).
    second: dict[str, tuple[int, list[bytes]]] = {}
    for number, found in enumerate(leaves, start=1):
        here = repeated.intersection(found.paths)
        if not here:
            continue
        sizes = dict(zip(found.paths, found.sizes, strict=True))
        for path in here:
            size = sizes[path]
            entry = stats.get(path)
            if entry is None:
                stats[path] = [1, size, size]
                continue
            entry[0] += 1
            entry[1] += size
            entry[2] = min(entry[2], size)
            if entry[0] == 2:
                second[path] = (number, _dive_key(path, path in found.whiteouts))
    total = sum(sum(found.sizes) for found in leaves)
    smallest = total - sum(e[1] - e[2] for e in stats.values())
    efficiency = smallest / total if total else 1.0
    # dive appends a path when it sees its 2nd entry (layer by layer, each layer's leaves
    # depth first by name), sorts by total ascending (stable for the short lists its tests
    # have) and reads the list backwards: largest total first, ties last-seen first.
    order = sorted(second, key=lambda path: second[path], reverse=True)
    order.sort(key=lambda path: -stats[path][1])
    inefficient = tuple(PathWaste(p, *stats[p]) for p in order)
    return WasteReport(tuple(layers), efficiency, inefficient, base_boundary(image))


def _dive_key(path: str, whiteout: bool) -> list[bytes]:
    """Where dive's depth-first walk by name meets ``path``: its names as bytes (Go
    compares bytes), a whiteout under its ``.wh.`` name."""
    names = path.split("/")
    if whiteout:
        names[-1] = WHITEOUT_PREFIX + names[-1]
    return [_raw(n) for n in names]


def _summary(image: StoredImage, number: int, size: int) -> LayerSummary:
    layer = image.layer(number)
    command = "(missing)"
    if layer.history is not None:
        command = layer.history.created_by.removeprefix("/bin/sh -c ")
    return LayerSummary(number, layer.digest, layer.diff_id, size, command)


@dataclass(frozen=True, slots=True)
class _Leaves:
    """dive's leaf entries of one layer."""

    paths: list[str]
    sizes: list[int]  # as dive counts them
    whiteouts: set[str]  # which of the paths are whiteouts
    content: int  # bytes of file content of the layer (each hardlinked inode once)


def _leaves(image: StoredImage, number: int, columns: TocColumns, lower_dirs: set[str]) -> _Leaves:
    """Layer ``number``'s leaf entries: every entry but the root and directories with an
    entry below them, with its size as dive counts it."""
    kinds, paths = columns.kind, columns.path
    file, directory, whiteout = EntryKind.FILE, EntryKind.DIR, EntryKind.WHITEOUT
    first = first_names(columns)
    sizes = [
        s if k is file and f else 0 for k, s, f in zip(kinds, columns.size, first, strict=True)
    ]
    content = sum(sizes)
    leaf = [k is not directory for k in kinds]
    # A directory is a leaf when no entry is below it: the toc is sorted by path, so an
    # entry below "d" would be the first at or after "d/".
    for i in [i for i, k in enumerate(kinds) if k is directory]:
        below = paths[i] + "/"
        j = bisect.bisect_left(paths, below)
        leaf[i] = not (j < len(paths) and paths[j].startswith(below))
    if paths and not paths[0]:
        leaf[0] = False  # the root: dive never visits it
    whiteouts: set[str] = set()
    for i in [i for i, k in enumerate(kinds) if k is whiteout]:
        whiteouts.add(paths[i])
        if paths[i] in lower_dirs:
            sizes[i] = _hid(image, number, paths[i])
    return _Leaves(list(compress(paths, leaf)), list(compress(sizes, leaf)), whiteouts, content)


def _hid(image: StoredImage, number: int, path: str) -> int:
    """Bytes a whiteout in layer ``number`` hid at ``path``: all below it when it was a
    directory as of the layer before, else 0 (dive counts the whiteout of a file as 0:
    the file's own entry holds its bytes)."""
    tree = image.view(number - 1).tree
    node = tree.resolve(path)
    if node is None or node.kind is not EntryKind.DIR:
        return 0
    return subtree_bytes(tree, node.inode)


def base_boundary(image: StoredImage) -> BaseBoundary:
    """The base image's layer count: from the ``org.opencontainers.image.base.digest``
    annotation when the store has that image (or an index with one for this platform)
    and its layers are this image's first layers; else 1, as dive counts."""
    digest = image.base_digest
    if not digest:
        return BaseBoundary(1, None, None)
    state = image.store.read_state()
    record = state.images.get(digest)
    index = state.indexes.get(digest)
    if record is None and index is not None:
        entry = index.select(image.platform)
        record = state.images.get(entry.digest) if entry is not None else None
    why = ""
    if record is None:
        why = "is not in the store (pull it to count from its last layer)"
    elif image.record.diff_ids[: len(record.layers)] != record.diff_ids:
        why = "has layers that are not this image's first layers"
    if why:
        return BaseBoundary(
            1,
            digest,
            f"base image {digest!r} (org.opencontainers.image.base.digest) {why}; "
            "user bytes are counted from layer 2, as dive counts them",
        )
    assert record is not None
    return BaseBoundary(len(record.layers), digest, None)


# -- dive's --json file list -----------------------------------------------------------------


# Go's os.FileMode type bits, as archive/tar's FileInfo().Mode() sets them.
_GO_MODE_TYPE = {
    EntryKind.DIR: 1 << 31,
    EntryKind.SYMLINK: 1 << 27,
    EntryKind.BLOCK: 1 << 26,
    EntryKind.CHAR: (1 << 26) | (1 << 21),
    EntryKind.FIFO: 1 << 25,
}
# The tar type flag of each kind (a whiteout is an empty regular file in the tar).
_TYPE_FLAG = {
    EntryKind.FILE: ord("0"),
    EntryKind.SYMLINK: ord("2"),
    EntryKind.CHAR: ord("3"),
    EntryKind.BLOCK: ord("4"),
    EntryKind.DIR: ord("5"),
    EntryKind.FIFO: ord("6"),
    EntryKind.WHITEOUT: ord("0"),
}
_HARDLINK_FLAG = ord("1")


class DiveFile(NamedTuple):
    """One entry of a layer as dive's ``--json`` ``fileList`` shows it (its ``FileInfo``
    from the tar header).  A tuple, not a dataclass: a 100k-entry layer makes 100k."""

    path: str  # the tar name: relative, whiteouts as dir/.wh.name, "" for an implied dir
    type_flag: int  # the tar type byte: 48 file, 49 hardlink, 50 symlink, 53 dir ...
    link_name: str
    size: int  # the tar header's: 0 for all but regular files
    file_mode: int  # Go's os.FileMode: permission bits, setuid etc., type bits
    uid: int
    gid: int
    is_dir: bool


def go_file_mode(kind: EntryKind, mode: int) -> int:
    """Go's ``os.FileMode`` of a tar entry (``tar.Header.FileInfo().Mode()``)."""
    out = mode & 0o777
    if mode & 0o4000:
        out |= 1 << 23
    if mode & 0o2000:
        out |= 1 << 22
    if mode & 0o1000:
        out |= 1 << 20
    return out | _GO_MODE_TYPE.get(kind, 0)


def dive_file_list(image: StoredImage, number: int) -> list[DiveFile]:
    """Layer ``number``'s entries in dive's order (depth first, names sorted, a directory
    after its children), the root left out, as dive's export lists them."""
    columns = image.columns(number)
    first = first_names(columns)
    primary: dict[int, str] = {}
    for i, kind in enumerate(columns.kind):
        if kind is EntryKind.FILE and first[i]:
            primary[columns.inode[i]] = columns.path[i]
    rows: list[tuple[bytes, DiveFile]] = []
    for i, path in enumerate(columns.path):
        if not path:
            continue
        kind = columns.kind[i]
        flags = columns.flags[i]
        if kind is EntryKind.WHITEOUT:
            parent, _, name = path.rpartition("/")
            path = f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else WHITEOUT_PREFIX + name
        if kind is EntryKind.DIR and flags & FLAG_IMPLIED:
            # Not in the tar: dive makes the directory up with an empty FileInfo.
            info = DiveFile("", 0, "", 0, 0, 0, 0, False)
        elif kind is EntryKind.FILE and not first[i]:
            info = DiveFile(
                path,
                _HARDLINK_FLAG,
                primary.get(columns.inode[i], ""),
                0,
                go_file_mode(kind, columns.mode[i]),
                columns.uid[i],
                columns.gid[i],
                False,
            )
        else:
            info = DiveFile(
                path,
                _TYPE_FLAG[kind],
                columns.link[i] if kind is EntryKind.SYMLINK else "",
                columns.size[i] if kind is EntryKind.FILE else 0,
                go_file_mode(kind, columns.mode[i]) if kind is not EntryKind.WHITEOUT else 0,
                columns.uid[i],
                columns.gid[i],
                kind is EntryKind.DIR,
            )
        rows.append((_post_order_key(path), info))
    rows.sort(key=lambda r: r[0])
    return [info for _, info in rows]


def _post_order_key(path: str) -> bytes:
    """A sort key putting paths in a depth-first walk's order by name (as bytes: Go
    compares bytes), each directory after everything below it.  Names are joined with the
    bytes 0, 1 and ended with 0, 2: a name holds no NUL, so the end of a name sorts below
    any longer name, and a deeper path below its parent."""
    return _raw(path).replace(b"/", b"\0\1") + b"\0\2"


def _raw(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


# -- hidden entries ---------------------------------------------------------------------------


class HiddenHow(enum.Enum):
    """How a later layer hid an entry."""

    OVERWRITTEN = "overwritten"  # an entry of its own path replaced it
    WHITEOUT = "whiteout"  # a whiteout of its path or of a parent deleted it
    OPAQUE = "opaque"  # a parent became an opaque directory (.wh..wh..opq)
    PARENT_REPLACED = "parent replaced"  # a parent became a non-directory

    @property
    def text(self) -> str:
        return _HOW_TEXT[self]


_HOW_TEXT = {
    HiddenHow.OVERWRITTEN: "overwritten",
    HiddenHow.WHITEOUT: "deleted by whiteout",
    HiddenHow.OPAQUE: "deleted by opaque dir",
    HiddenHow.PARENT_REPLACED: "replaced by parent",
}


@dataclass(frozen=True, slots=True)
class HiddenEntry:
    """An entry a layer ships that the merged view does not show."""

    path: str  # relative
    layer: int  # the layer that ships it
    kind: EntryKind
    size: int  # bytes of content (regular files)
    digest: str  # sha256 of the content (regular files), else ""
    link: str  # symlink target, else ""
    how: HiddenHow
    by_layer: int  # the first later layer that hid it
    by_path: str  # the entry that hid it: ``path`` itself or a parent


def hidden(image: StoredImage) -> tuple[HiddenEntry, ...]:
    """Every non-directory entry of every layer that the merged view hides, by layer then
    path, with the first later layer that hid it and how.

    The merged view says what is hidden: an entry is shown iff the view's node at its path
    is that layer's inode.  The tocs above it say how: the lowest later layer with an entry
    at its path (overwritten, or a whiteout) or a hiding entry at a parent (a whiteout, an
    opaque directory, a non-directory)."""
    n = len(image.layers)
    tree = image.view().tree
    dir_inodes: dict[str, int | None] = {"": ROOT_INODE}
    # What the layers above the one being read do, the lowest layer winning: filled from
    # the top down, so that when layer L is read they hold layers L+1..n.
    at_path: dict[str, tuple[int, HiddenHow]] = {}  # any entry replaces a non-directory
    at_parent: dict[str, tuple[int, HiddenHow]] = {}  # what hides everything below it
    found: list[HiddenEntry] = []
    for number in range(n, 0, -1):
        cols = image.columns(number)
        if number < n:
            found.extend(_hidden_in(image, tree, dir_inodes, number, cols, at_path, at_parent))
        for path, kind, flags in zip(cols.path, cols.kind, cols.flags, strict=True):
            if kind is EntryKind.WHITEOUT:
                at_path[path] = at_parent[path] = (number, HiddenHow.WHITEOUT)
                continue
            at_path[path] = (number, HiddenHow.OVERWRITTEN)
            if kind is not EntryKind.DIR:
                at_parent[path] = (number, HiddenHow.PARENT_REPLACED)
            elif flags & FLAG_OPAQUE:
                at_parent[path] = (number, HiddenHow.OPAQUE)
            # (A plain directory hides nothing: a hider further up stays the lowest.)
    found.sort(key=lambda e: e.layer)  # stable: each layer's entries stay in path order
    return tuple(found)


def _hidden_in(
    image: StoredImage,
    tree: MergedTree,
    dir_inodes: dict[str, int | None],
    number: int,
    cols: TocColumns,
    at_path: dict[str, tuple[int, HiddenHow]],
    at_parent: dict[str, tuple[int, HiddenHow]],
) -> list[HiddenEntry]:
    out: list[HiddenEntry] = []
    for i, path in enumerate(cols.path):
        kind = cols.kind[i]
        if kind is EntryKind.DIR or kind is EntryKind.WHITEOUT or not path:
            continue
        # Cheap first: an entry no later layer touches (at its path or a parent) is shown.
        hider = at_path.get(path)
        hider_path = path
        parent = path
        while parent:
            parent = parent.rpartition("/")[0]
            above = at_parent.get(parent)  # "" too: the root may be opaque
            if above is not None and (hider is None or above[0] < hider[0]):
                hider, hider_path = above, parent
        if hider is None or _shown(tree, dir_inodes, path, number, cols.inode[i]):
            continue
        size = cols.size[i] if kind is EntryKind.FILE else 0
        digest = image.content_digest(number, cols.inode[i], size) if kind is EntryKind.FILE else ""
        out.append(
            HiddenEntry(
                path,
                number,
                kind,
                size,
                digest,
                cols.link[i] if kind is EntryKind.SYMLINK else "",
                hider[1],
                hider[0],
                hider_path,
            )
        )
    return out


def _shown(
    tree: MergedTree, dir_inodes: dict[str, int | None], path: str, number: int, inode: int
) -> bool:
    """Whether the merged view's node at ``path`` is layer ``number``'s inode ``inode``."""
    parent, _, name = path.rpartition("/")
    directory = _dir_inode(tree, dir_inodes, parent)
    child = tree.lookup_inode(directory, name) if directory is not None else None
    if child is None:
        return False
    st = tree.stat(child)
    return st.layer == number - 1 and st.data == inode and st.kind is not EntryKind.DIR


def _dir_inode(tree: MergedTree, cache: dict[str, int | None], path: str) -> int | None:
    """The merged view's directory at ``path`` (None if there is none), remembered."""
    if path in cache:
        return cache[path]
    parent, _, name = path.rpartition("/")
    up = _dir_inode(tree, cache, parent)
    inode = tree.lookup_inode(up, name) if up is not None else None
    if inode is not None and tree.stat(inode).kind is not EntryKind.DIR:
        inode = None
    cache[path] = inode
    return inode


# -- CI rules (.dive-ci) ----------------------------------------------------------------------

LOWEST_EFFICIENCY = "lowestEfficiency"
HIGHEST_WASTED_BYTES = "highestWastedBytes"
HIGHEST_USER_WASTED_PERCENT = "highestUserWastedPercent"
# dive's keys, in its .dive-ci spelling (camelCase), and the kebab-case of its config.
RULE_KEYS = {
    "lowest-efficiency": LOWEST_EFFICIENCY,
    "highest-wasted-bytes": HIGHEST_WASTED_BYTES,
    "highest-user-wasted-percent": HIGHEST_USER_WASTED_PERCENT,
}
DEFAULT_RULES = {
    LOWEST_EFFICIENCY: "0.9",
    HIGHEST_WASTED_BYTES: "disabled",
    HIGHEST_USER_WASTED_PERCENT: "0.1",
}
LEGACY_WARNING = "please specify ci rules in snake-case (the legacy camelCase format is deprecated)"


@dataclass(frozen=True, slots=True)
class Rule:
    """One CI rule: its dive name, the value as configured, and the threshold."""

    key: str  # dive's name, e.g. lowestEfficiency
    config: str  # as written ("0.9", "20MB", "disabled")
    threshold: float | int | None  # None: disabled; bytes are an int


class Status(enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True, slots=True)
class RuleResult:
    key: str
    status: Status
    message: str  # what dive prints in parentheses


def rule_disabled(value: str) -> bool:
    """dive's ``isRuleDisabled``."""
    return value.strip().lower() in ("", "disabled", "off", "false")


def make_rule(key: str, value: str) -> Rule:
    """A rule from its configured text, as dive's ``ci.Rules`` checks it; InvalidConfig with
    dive's message otherwise."""
    if rule_disabled(value):
        return Rule(key, "disabled", None)
    if key == HIGHEST_WASTED_BYTES:
        try:
            return Rule(key, value, parse_bytes(value))
        except ValueError as exc:
            raise InvalidConfig(
                f"invalid highestWastedBytes config value, given {value!r}: {exc}"
            ) from None
    number = parse_go_float(value)
    if number is None:
        raise InvalidConfig(f"invalid {key} config value, given {value!r}: not a number")
    if number < 0 or number > 1:
        raise InvalidConfig(
            f"{key} config value is outside allowed range (0-1), given '{number:f}'"
        )
    return Rule(key, value, number)


def make_rules(values: dict[str, str]) -> tuple[Rule, ...]:
    """The three rules, from dive-named values (missing ones take dive's defaults)."""
    merged = {**DEFAULT_RULES, **values}
    return tuple(make_rule(k, merged[k]) for k in DEFAULT_RULES)


def evaluate(rules: Sequence[Rule], report: WasteReport) -> tuple[RuleResult, ...]:
    """Each rule's result, sorted by rule name as dive prints them.  Measured against our
    numbers: efficiency is dive's, wasted bytes are the bytes beyond one copy."""
    out: list[RuleResult] = []
    for rule in rules:
        t = rule.threshold
        if t is None:
            out.append(RuleResult(rule.key, Status.SKIP, "disabled"))
            continue
        message = ""
        if rule.key == LOWEST_EFFICIENCY and t > report.efficiency:
            message = (
                "image efficiency is too low "
                f"(efficiency={go_fixed(report.efficiency, 2)} < threshold={go_float(t)})"
            )
        elif rule.key == HIGHEST_WASTED_BYTES and report.wasted > t:
            message = f"too many bytes wasted (wasted-bytes={report.wasted} > threshold={t})"
        elif rule.key == HIGHEST_USER_WASTED_PERCENT and report.user_wasted_ratio > t:
            message = (
                "too many bytes wasted, relative to the user bytes added "
                f"(%-user-wasted-bytes={go_fixed(report.user_wasted_ratio, 2)} "
                f"> threshold={go_float(t)})"
            )
        if message:
            out.append(RuleResult(rule.key, Status.FAIL, message))
        else:
            out.append(RuleResult(rule.key, Status.PASS, rule.config))
    out.sort(key=lambda r: r.key)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class CiConfig:
    """The rules a ``.dive-ci`` file sets (dive names), and what to warn about."""

    rules: dict[str, str]
    warnings: tuple[str, ...]


def parse_ci_config(text: str, source: str) -> CiConfig:
    """The ``rules:`` of a ``.dive-ci`` file (YAML).

    Keys in either spelling: kebab-case (``lowest-efficiency``, dive's config) or the
    legacy camelCase (``lowestEfficiency``, the .dive-ci of dive's README), which wins
    when both are given and draws dive's deprecation warning.  Values keep their text
    (``0.90`` stays ``0.90``); an empty or ``null`` value disables the rule, as it
    does in dive.  Only the YAML such files use is read: block mappings, comments,
    plain and quoted scalars, ``---``; anything else under ``rules:`` is an error, and
    other top-level keys are ignored."""
    kebab: dict[str, str] = {}
    legacy: dict[str, str] = {}
    warnings: list[str] = []
    in_rules = False
    rules_indent: int | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{source}: line {number}"
        stripped = _strip_comment(line).rstrip()
        if not stripped.strip() or stripped.strip() in ("---", "..."):
            continue
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise InvalidConfig(f"{where}: a tab in the indentation")
        indent = len(stripped) - len(stripped.lstrip(" "))
        body = stripped.strip()
        if indent == 0:
            key, value = _pair(body, where)
            in_rules = key == "rules"
            rules_indent = None
            if in_rules and value:
                if not (value.startswith("{") and value.endswith("}")):
                    raise InvalidConfig(f"{where}: 'rules' is not a mapping")
                for item in _flow_items(value[1:-1], where):
                    _take(*_pair(item, where), kebab, legacy, warnings, where)
            continue
        if not in_rules:
            continue
        if rules_indent is None:
            rules_indent = indent
        if indent > rules_indent:
            continue  # below a key of rules: no rule of ours is nested
        if indent < rules_indent:
            raise InvalidConfig(f"{where}: bad indentation under 'rules'")
        key, value = _pair(body, where)
        _take(key, value, kebab, legacy, warnings, where)
    if legacy:
        warnings.insert(0, LEGACY_WARNING)
    return CiConfig({**kebab, **{k: v for k, v in legacy.items() if v}}, tuple(warnings))


def _take(
    key: str,
    value: str,
    kebab: dict[str, str],
    legacy: dict[str, str],
    warnings: list[str],
    where: str,
) -> None:
    scalar = _scalar(value, where)
    if key in RULE_KEYS:
        kebab[RULE_KEYS[key]] = scalar
    elif key in DEFAULT_RULES:
        legacy[key] = scalar
    else:
        warnings.append(f"{where}: ignoring unknown rule {key!r}")


def _strip_comment(line: str) -> str:
    """``line`` without a ``#`` comment (one at the start or after a space, outside
    quotes)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"" and (i == 0 or line[i - 1] in " :{,"):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _pair(body: str, where: str) -> tuple[str, str]:
    """``key: value`` -> (key, value text)."""
    if body.startswith(("'", '"')):
        end = body.find(body[0], 1)
        if end < 0:
            raise InvalidConfig(f"{where}: unterminated quote")
        key, rest = body[1:end], body[end + 1 :].lstrip()
        if not rest.startswith(":"):
            raise InvalidConfig(f"{where}: expected 'key: value'")
        return key, rest[1:].strip()
    match = re.fullmatch(r"([^:#]+?)\s*:(?:\s+(.*))?", body)
    if match is None:
        raise InvalidConfig(f"{where}: expected 'key: value', got {body!r}")
    return match.group(1), (match.group(2) or "").strip()


def _flow_items(text: str, where: str) -> list[str]:
    items, current, quote = [], "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == ",":
            items.append(current.strip())
            current = ""
            continue
        current += ch
    if current.strip():
        items.append(current.strip())
    return [i for i in items if i]


def _scalar(value: str, where: str) -> str:
    """A YAML scalar's text: quotes removed; ``~``/``null`` is empty (a disabled rule)."""
    if not value or value in ("~", "null", "Null", "NULL"):
        return ""
    if value[0] == "'":
        if len(value) < 2 or value[-1] != "'":
            raise InvalidConfig(f"{where}: unterminated quote")
        return value[1:-1].replace("''", "'")
    if value[0] == '"':
        if len(value) < 2 or value[-1] != '"':
            raise InvalidConfig(f"{where}: unterminated quote")
        return re.sub(r'\\(["\\/])', r"\1", value[1:-1])
    if value[0] in "[{&*!|>":
        raise InvalidConfig(f"{where}: a rule value must be a plain scalar, got {value!r}")
    return value


# -- Go's number formats and go-humanize, as dive prints and parses them ------------------------

_BYTE_UNITS = {
    "b": 1,
    "kib": 1 << 10,
    "kb": 1000,
    "mib": 1 << 20,
    "mb": 1000**2,
    "gib": 1 << 30,
    "gb": 1000**3,
    "tib": 1 << 40,
    "tb": 1000**4,
    "pib": 1 << 50,
    "pb": 1000**5,
    "eib": 1 << 60,
    "eb": 1000**6,
    "": 1,
    "ki": 1 << 10,
    "k": 1000,
    "mi": 1 << 20,
    "m": 1000**2,
    "gi": 1 << 30,
    "g": 1000**3,
    "ti": 1 << 40,
    "t": 1000**4,
    "pi": 1 << 50,
    "p": 1000**5,
    "ei": 1 << 60,
    "e": 1000**6,
}


def parse_bytes(text: str) -> int:
    """go-humanize's ``ParseBytes``: ``20MB`` = 20,000,000, ``19Mb`` too, ``1 MiB`` =
    1,048,576, a bare number is bytes; ValueError otherwise."""
    digits = 0
    for ch in text:
        if ch not in "0123456789.,":
            break
        digits += 1
    number = parse_go_float(text[:digits].replace(",", ""))
    if number is None:
        raise ValueError("not a size (a number of bytes, or one like 20MB or 1.5GiB)")
    unit = text[digits:].strip().lower()
    if unit not in _BYTE_UNITS:
        raise ValueError(f"unhandled size name: {unit}")
    value = number * _BYTE_UNITS[unit]
    if value >= 2.0**64:
        raise ValueError(f"too large: {text}")
    return int(value)


_GO_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity|nan)", re.I)


def parse_go_float(text: str) -> float | None:
    """``strconv.ParseFloat``'s decimal forms (no spaces or ``_``); None if not one."""
    if not _GO_FLOAT.fullmatch(text):
        return None
    return float(text)


def go_float(x: float) -> str:
    """Go's ``%v`` of a float64 (``strconv.FormatFloat(x, 'g', -1, 64)``): the shortest
    digits that read back as ``x``, with an exponent below 1e-4 and from 1e6."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "0"
    _, digits, exponent = Decimal(repr(x)).normalize().as_tuple()
    assert isinstance(exponent, int)
    nd = len(digits)
    sci = nd + exponent - 1
    if sci < -4 or sci >= 6:
        return f"{x:.{nd - 1}e}"
    return f"{x:.{max(nd - sci - 1, 0)}f}"


def go_fixed(x: float, places: int) -> str:
    """Go's ``%.Nf``: as Python's, but ``+Inf``, ``-Inf`` and ``NaN`` spelled as Go's."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return f"{x:.{places}f}"


def humanize_bytes(n: int) -> str:
    """go-humanize's ``Bytes``: SI units, a space, one decimal below 10 (``1.2 MB``,
    ``131 B``, ``19 kB``), as dive's CI report prints sizes."""
    if n < 10:
        return f"{n} B"
    e = math.floor(math.log(float(n)) / math.log(1000))
    suffix = ("B", "kB", "MB", "GB", "TB", "PB", "EB")[e]
    value = math.floor(float(n) / math.pow(1000, e) * 10 + 0.5) / 10
    return f"{value:.1f} {suffix}" if value < 10 else f"{value:.0f} {suffix}"


__all__ = [
    "BaseBoundary",
    "CiConfig",
    "DiveFile",
    "HiddenEntry",
    "HiddenHow",
    "LayerSummary",
    "PathWaste",
    "Rule",
    "RuleResult",
    "Status",
    "WasteReport",
    "analyze",
    "base_boundary",
    "dive_file_list",
    "evaluate",
    "go_file_mode",
    "go_float",
    "go_fixed",
    "hidden",
    "humanize_bytes",
    "make_rule",
    "make_rules",
    "parse_bytes",
    "parse_ci_config",
]
