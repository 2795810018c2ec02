"""Layer tocs -> one merged tree, checked against a naive reference merge written here.

The reference follows image-spec layer.md ("Applying Changesets"): per layer, whiteouts and
opaque markers apply first, to the lower layers only, whatever their place in the tar; then
every entry applies in tar order over what exists ("both directories: the attributes are
replaced; in all other cases remove the path and recreate it"); a path's missing parents are
made as directories the way containerd's overlay applier makes them: ``mkparent`` copies the
metadata from the first lower layer's own directory with anything at the path (0755
root:root, mtime 0 when that is no directory, or there is none).  It works on plain
``{path: Ref}`` dicts (the view, and each layer's upper directory) and imports nothing of
snapshotter; the layers go through the real ``unpack_layer`` and ``merge``.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

import pytest
import zstandard
from builders import LayerBuilder, mtime_ns
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from snapshotter.errors import StoreCorrupt
from snapshotter.oci.digest import Digest
from snapshotter.store.toc import TOC_NAME, EntryKind, Toc, TocEntry
from snapshotter.store.unpack import unpack_layer
from snapshotter.view.merge import LOOKUP_PROBES, ROOT_INODE, MergedTree, Node, merge

# -- the real pipeline -----------------------------------------------------------------------


def unpack_all(workdir: Path, layers: list[LayerBuilder]) -> tuple[list[Toc], list[Path]]:
    tocs, snaps = [], []
    for i, layer in enumerate(layers):
        tar = layer.tar_bytes()
        dest = workdir / f"snap{i}"
        dest.mkdir()
        result = unpack_layer(
            io.BytesIO(tar),
            dest,
            compression="none",
            diff_id=Digest.of_bytes(tar),
            layer_digest=None,
            blob_size=None,
            what=f"layer {i}",
        )
        tocs.append(result.toc)
        snaps.append(dest)
    return tocs, snaps


def content(snaps: list[Path], node: Node) -> bytes:
    if node.kind is not EntryKind.FILE or node.size == 0:
        return b""
    return (snaps[node.layer] / "data" / f"{node.data:x}").read_bytes()


def merged(tmp_path: Path, *layers: LayerBuilder) -> tuple[MergedTree, list[Path]]:
    work = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
    work.mkdir()
    tocs, snaps = unpack_all(work, list(layers))
    return merge(tocs), snaps


def listing(tree: MergedTree) -> dict[str, Node]:
    out = {}
    for path, node in tree.walk():
        assert path not in out, f"{path!r} listed twice"
        out[path] = node
    return out


def check_invariants(tree: MergedTree) -> None:
    """What every merged tree must satisfy, whatever the layers."""
    nodes = listing(tree)
    assert nodes[""].inode == ROOT_INODE and nodes[""].kind is EntryKind.DIR
    by_inode: dict[int, list[str]] = {}
    for path, node in nodes.items():
        by_inode.setdefault(node.inode, []).append(path)
        assert tree.node(node.inode) == node
        assert tree.resolve(path) == node
        if node.kind is EntryKind.DIR:
            names, inodes = tree.children(node.inode)
            assert names == sorted(names) and len(set(names)) == len(names)
            subdirs = sum(1 for i in inodes if tree.node(i).kind is EntryKind.DIR)
            assert node.nlink == 2 + subdirs, path
            for name, inode in zip(names, inodes, strict=True):
                assert tree.lookup(node.inode, name) == tree.node(inode)
                if tree.node(inode).kind is EntryKind.DIR:
                    assert tree.parents[inode] == node.inode
        elif node.kind is EntryKind.SYMLINK:
            assert node.size == len(node.link.encode("utf-8", "surrogateescape"))
    for inode, paths in by_inode.items():
        kinds = {nodes[p].kind for p in paths}
        assert len(paths) == 1 or EntryKind.DIR not in kinds, f"a directory shares {inode}"
        assert all(
            nodes[p].nlink == len(paths) for p in paths if nodes[p].kind is not EntryKind.DIR
        )
    assert len(tree) == len(by_inode)
    # Numbers are handed out in walk (path) order: first names come in increasing order.
    firsts, seen = [], set()
    for node in nodes.values():
        if node.inode not in seen:
            seen.add(node.inode)
            firsts.append(node.inode)
    assert firsts == sorted(firsts)


# -- the reference -----------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    kind: str  # "-", "d", "l", "c", "p"
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    data: bytes = b""
    link: str = ""
    rdev: tuple[int, int] = (0, 0)
    xattrs: tuple[tuple[str, bytes], ...] = ()
    ident: tuple[int, int] = (-1, 0)  # (layer, serial): hardlinked names share it


METAS = [  # (mode, uid, gid, mtime)
    (0o644, 0, 0, Decimal("1700000000.123456789")),
    (0o755, 0, 0, Decimal("1.5")),
    (0o4755, 1000, 1000, Decimal("1600000000.000000001")),
    (0o1777, 0, 5, 0),
    (0o600, 1000, 0, Decimal("1700000000.999999999")),
    (0o2750, 7, 8, 1234567890),
]
DATAS = [b"", b"one", b"two\n" * 100, bytes(range(256)) * 20]
XATTRS: list[dict[str, bytes]] = [
    {},
    {"user.a": b"1"},
    {"user.a": b"2", "user.b": b"\x00\xff"},
    {"trusted.t": b"t", "user.a": b"3"},  # trusted.*: not copied into implied directories
]
TARGETS = ["a", "../b/c", "/a/b", "/etc/passwd", "c/../../x"]
RDEVS = [(1, 3), (0, 0)]  # 0/0: what overlayfs takes for a whiteout


def copied(xattrs: tuple[tuple[str, bytes], ...]) -> tuple[tuple[str, bytes], ...]:
    """What containerd's copyUpXAttrs copies: every xattr but trusted.*."""
    return tuple(kv for kv in xattrs if not kv[0].startswith("trusted."))


def resolve(upper: dict[str, Ref], path: str) -> str | None:
    """``path`` in one layer's upper directory with every symlink on the way followed in
    it (``..`` and ``/`` stop at its root); None for a component that is no directory, or
    for a loop; "" for the root."""
    parts, links, i = path.split("/"), 0, 0
    while i < len(parts):
        r = upper.get("/".join(parts[: i + 1]))
        if r is not None and r.kind == "l":
            links += 1
            if links > 255:
                return None
            out = [] if r.link.startswith("/") else parts[:i]
            for p in r.link.split("/"):
                if p == "..":
                    out = out[:-1]
                elif p not in ("", "."):
                    out.append(p)
            parts, i = out + parts[i + 1 :], 0
            continue
        if r is not None and r.kind != "d" and i + 1 < len(parts):
            return None
        i += 1
    return "/".join(parts)


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def ancestors(path: str, *, include_self: bool = False) -> list[str]:
    """Non-root ancestors, top first (and ``path`` itself when asked)."""
    parts = path.split("/") if path else []
    stop = len(parts) + 1 if include_self else len(parts)
    return ["/".join(parts[:i]) for i in range(1, stop)]


def delete(state: dict[str, Ref], path: str, *, keep_self: bool = False) -> None:
    prefix = f"{path}/" if path else ""
    for p in [p for p in state if p.startswith(prefix) and p != ""]:
        del state[p]
    if not keep_self and path:
        state.pop(path, None)


WH = Ref("w")  # a whiteout in a layer's upper directory (overlayfs: a 0/0 char device)
DEFAULT_DIR = Ref("d")  # 0755 root:root, mtime 0, no xattrs


class Reference:
    """The whole image as a dict; ``apply`` takes one layer's ops and returns the ops the
    tar really holds (ops ``unpack`` refuses by design are dropped, see below).

    Besides the view (``state``), each layer's upper directory as containerd's overlay
    applier leaves it (``uppers``: every path the layer holds, its implied directories
    with what ``mkparent`` copied into them, whiteouts as ``WH``), because ``mkparent``
    looks there, not at the view: a directory a layer implies copies owner, mode, mtime
    and xattrs (but trusted.*) from the first lower upper directory, top down, with
    anything at the path; a non-directory or whiteout there, or above it, gives defaults.
    """

    def __init__(self) -> None:
        self.state: dict[str, Ref] = {"": Ref("d")}
        self.uppers: list[dict[str, Ref]] = []
        self.serial = 0

    def _meta(self, ref: Ref, meta: int, xattrs: int = 0) -> Ref:
        mode, uid, gid, mtime = METAS[meta]
        return replace(
            ref,
            mode=mode,
            uid=uid,
            gid=gid,
            mtime_ns=mtime_ns(mtime),
            xattrs=tuple(sorted(XATTRS[xattrs].items())),
        )

    def _blocked(self, layer: int, path: str, *, include_self: bool) -> bool:
        """Whether ``path`` would lie below a non-directory of this same layer."""
        for a in ancestors(path, include_self=include_self):
            r = self.state.get(a)
            if r is not None and r.kind != "d" and r.ident[0] == layer:
                return True
        return False

    def _mkparent(self, path: str) -> Ref:
        """The directory containerd's mkparent makes at ``path``, from the lower uppers,
        each looked up as continuity's RootPath does (``resolve``)."""
        for upper in reversed(self.uppers):
            found = resolve(upper, path)
            if not found:
                return DEFAULT_DIR  # containerd fails (ENOTDIR, ELOOP), or the root
            r = upper.get(found)
            if r is not None:
                if r.kind != "d":
                    return DEFAULT_DIR
                return Ref("d", r.mode, r.uid, r.gid, r.mtime_ns, xattrs=copied(r.xattrs))
        return DEFAULT_DIR

    def _ensure_dirs(
        self, upper: dict[str, Ref], implied: set[str], path: str, *, include_self: bool
    ) -> None:
        for a in ancestors(path, include_self=include_self):
            if a in upper:
                continue  # this layer has it already (named, or implied before)
            r = self.state.get(a)
            if r is not None and r.kind == "d":
                r = replace(r, xattrs=copied(r.xattrs))  # the layer's copy of it shows
            else:
                r = self._mkparent(a)
                delete(self.state, a)
            self.state[a] = upper[a] = r
            implied.add(a)

    def apply(self, layer: int, ops: list[tuple]) -> list[tuple]:
        # 1. Whiteouts and opaque markers, on the lower layers only, wherever they stand.
        whited: list[str] = []
        for op in ops:
            if op[0] == "whiteout":
                delete(self.state, op[1])
                whited.append(op[1])
            elif op[0] == "opaque":
                delete(self.state, op[1], keep_self=True)
        # 2. Entries in tar order.
        kept: list[tuple] = []
        upper: dict[str, Ref] = {}
        implied: set[str] = set()  # directories of upper no entry of the layer names
        live: list[str] = []  # whiteouts that are not moot
        for op in ops:
            kind = op[0]
            if kind == "root":
                self.state[""] = self._meta(self.state[""], op[1])
                kept.append(op)
                continue
            if kind in ("whiteout", "opaque"):
                where = parent_of(op[1]) if kind == "whiteout" else op[1]
                # A marker below a non-directory of its own layer is moot (its lower
                # subtree is gone already); otherwise its directory exists in this layer.
                if not self._blocked(layer, where, include_self=True):
                    self._ensure_dirs(upper, implied, where, include_self=True)
                    if kind == "whiteout":
                        live.append(op[1])
                kept.append(op)
                continue
            path = op[1]
            if self._blocked(layer, path, include_self=False):
                continue  # unpack refuses a layer writing below its own file or link
            if kind == "hardlink":
                own = sorted(
                    p
                    for p, r in self.state.items()
                    if r.kind != "d" and r.ident[0] == layer and p != path
                )
                if not own:
                    continue
                target = own[op[2] % len(own)]
                op = ("hardlink", path, target)
                new = self.state[target]
            elif kind == "dir":
                new = self._meta(Ref("d"), op[2], op[3])
            else:
                self.serial += 1
                ident = (layer, self.serial)
                if kind == "file":
                    new = self._meta(Ref("-", data=DATAS[op[2]], ident=ident), op[3], op[4])
                elif kind == "symlink":
                    new = replace(self._meta(Ref("l", link=op[2], ident=ident), op[3]), mode=0o777)
                elif kind == "chardev":
                    new = self._meta(Ref("c", rdev=RDEVS[op[3]], ident=ident), op[2])
                else:
                    new = self._meta(Ref("p", ident=ident), op[2])
            self._ensure_dirs(upper, implied, path, include_self=False)
            current = self.state.get(path)
            if kind == "dir" and current is not None and current.kind == "d":
                new = replace(new, ident=current.ident)  # attributes replaced
            else:
                delete(self.state, path)
                delete(upper, path)
                implied -= {p for p in implied if p.startswith(path + "/")}
            implied.discard(path)
            self.state[path] = upper[path] = new
            kept.append(op)
        # 3. A directory whited out and made again by the layer keeps nothing of the old
        # one: implied directories in it (and it, when implied) get the defaults.
        for w in live:
            if w in upper:
                for p in implied:
                    if p == w or p.startswith(w + "/"):
                        self.state[p] = upper[p] = DEFAULT_DIR
            else:
                upper[w] = WH
        # 4. A character device 0/0 is overlayfs' whiteout: it shows nothing (in its own
        # layer it was an entry like any other, which it replaced or was replaced by).
        for p in [p for p, r in self.state.items() if r.kind == "c" and r.rdev == (0, 0)]:
            del self.state[p]
        self.uppers.append(upper)
        return kept

    def expected(self) -> dict[str, tuple]:
        names: dict[tuple[int, int], int] = {}
        for r in self.state.values():
            if r.kind != "d":
                names[r.ident] = names.get(r.ident, 0) + 1
        out = {}
        for path, r in self.state.items():
            if r.kind == "d":
                prefix = f"{path}/" if path else ""
                nlink = 2 + sum(
                    1
                    for p, c in self.state.items()
                    if c.kind == "d" and p and p.startswith(prefix) and "/" not in p[len(prefix) :]
                )
                size = 0
            else:
                nlink = names[r.ident]
                size = len(r.data) if r.kind == "-" else len(r.link.encode())
            out[path] = (
                r.kind,
                r.mode,
                r.uid,
                r.gid,
                r.mtime_ns,
                size,
                hashlib.sha256(r.data).hexdigest(),
                r.link,
                r.rdev,
                r.xattrs,
                nlink,
            )
        return out

    def groups(self) -> set[frozenset[str]]:
        by: dict[tuple[int, int], set[str]] = {}
        for path, r in self.state.items():
            if r.kind != "d":
                by.setdefault(r.ident, set()).add(path)
        return {frozenset(g) for g in by.values()}


def build(ops: list[tuple]) -> LayerBuilder:
    lb = LayerBuilder()
    for op in ops:
        kind = op[0]
        if kind == "root":
            mode, uid, gid, mtime = METAS[op[1]]
            lb.dir("./", mode=mode, uid=uid, gid=gid, mtime=mtime, raw_name=True)
        elif kind == "file":
            mode, uid, gid, mtime = METAS[op[3]]
            lb.file(
                op[1], DATAS[op[2]], mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=XATTRS[op[4]]
            )
        elif kind == "dir":
            mode, uid, gid, mtime = METAS[op[2]]
            lb.dir(op[1], mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=XATTRS[op[3]])
        elif kind == "symlink":
            # Any mode in the header (BSD tar writes the link's own bits); the view's is 0777.
            mode, uid, gid, mtime = METAS[op[3]]
            lb.symlink(op[1], op[2], mode=mode, uid=uid, gid=gid, mtime=mtime)
        elif kind == "hardlink":
            lb.hardlink(op[1], op[2])
        elif kind == "chardev":
            mode, uid, gid, mtime = METAS[op[2]]
            lb.chardev(op[1], *RDEVS[op[3]], mode=mode, uid=uid, gid=gid, mtime=mtime)
        elif kind == "fifo":
            mode, uid, gid, mtime = METAS[op[2]]
            lb.fifo(op[1], mode=mode, uid=uid, gid=gid, mtime=mtime)
        elif kind == "whiteout":
            lb.whiteout(op[1])
        elif kind == "opaque":
            if op[1]:
                lb.opaque(op[1])
            else:
                lb.file(".wh..wh..opq", raw_name=True)
    return lb


def actual(tree: MergedTree, snaps: list[Path]) -> dict[str, tuple]:
    out = {}
    for path, n in listing(tree).items():
        out[path] = (
            n.kind.value,
            n.mode,
            n.uid,
            n.gid,
            n.mtime_ns,
            n.size,
            hashlib.sha256(content(snaps, n)).hexdigest(),
            n.link,
            (n.rdev_major, n.rdev_minor),
            n.xattrs,
            n.nlink,
        )
    return out


def actual_groups(tree: MergedTree) -> set[frozenset[str]]:
    by: dict[int, set[str]] = {}
    for path, n in tree.walk():
        if n.kind is not EntryKind.DIR:
            by.setdefault(n.inode, set()).add(path)
    return {frozenset(g) for g in by.values()}


# -- the property --------------------------------------------------------------------------

PATHS = st.lists(st.sampled_from("abc"), min_size=1, max_size=3).map("/".join)
META = st.integers(0, len(METAS) - 1)
OP = st.one_of(
    st.tuples(st.just("file"), PATHS, st.integers(0, len(DATAS) - 1), META, st.integers(0, 3)),
    st.tuples(st.just("dir"), PATHS, META, st.integers(0, 3)),
    st.tuples(st.just("file"), PATHS, st.integers(0, len(DATAS) - 1), META, st.just(0)),
    st.tuples(st.just("dir"), PATHS, META, st.just(0)),
    st.tuples(st.just("file"), PATHS, st.integers(1, 2), st.just(0), st.just(0)),
    st.tuples(st.just("symlink"), PATHS, st.sampled_from(TARGETS), META),
    st.tuples(st.just("hardlink"), PATHS, st.integers(0, 7)),
    st.tuples(st.just("hardlink"), PATHS, st.integers(0, 7)),
    st.tuples(st.just("chardev"), PATHS, META, st.integers(0, len(RDEVS) - 1)),
    st.tuples(st.just("fifo"), PATHS, META),
    st.tuples(st.just("whiteout"), PATHS),
    st.tuples(st.just("whiteout"), PATHS),
    st.tuples(st.just("opaque"), st.one_of(st.just(""), PATHS)),
    st.tuples(st.just("root"), META),
)
LAYERS = st.lists(st.lists(OP, min_size=2, max_size=14), min_size=1, max_size=4)
# Hundreds of tiny snapshot directories: tmpfs makes their removal cheap.
FAST_TMP = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(LAYERS)
def test_merge_matches_the_reference(layers):
    ref = Reference()
    builders = [build(ref.apply(i, ops)) for i, ops in enumerate(layers)]
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        work = Path(tmp)
        tocs, snaps = unpack_all(work, builders)
        tree = merge(tocs)
        expected = ref.expected()
        event(f"paths in the image: {len(expected) // 4 * 4}+")
        for kind, what in (("l", "symlink"), ("c", "device"), ("p", "fifo")):
            if any(v[0] == kind for v in expected.values()):
                event(f"image has a {what}")
        if any(len(g) > 1 for g in ref.groups()):
            event("image has a hardlink group")
        assert actual(tree, snaps) == expected
        assert actual_groups(tree) == ref.groups()
        check_invariants(tree)
        # Deterministic: the same chain, read back from the tocs on disk, numbers alike.
        again = merge([Toc.read(s / TOC_NAME) for s in snaps])
        assert again.nodes == tree.nodes and again.dirs == tree.dirs
        tree.write(work / "merged")
        back = MergedTree.read(work / "merged")
        assert back.nodes == tree.nodes
        assert back.dirs == tree.dirs and back.parents == tree.parents


# -- named cases -------------------------------------------------------------------------------


def test_whited_out_files_do_not_reappear_when_the_dir_is_recreated_in_the_same_layer(tmp_path):
    base = LayerBuilder().dir("a").file("a/old", b"o").dir("a/sub").file("a/sub/deep", b"d")
    for top in (
        LayerBuilder().whiteout("a").dir("a").file("a/new", b"n"),  # whiteout first
        LayerBuilder().dir("a").file("a/new", b"n").whiteout("a"),  # whiteout last
        LayerBuilder().whiteout("a").file("a/new", b"n"),  # re-created by a child only
        LayerBuilder().dir("a").whiteout("a/sub").dir("a/sub").whiteout("a/old"),
    ):
        tree, _ = merged(tmp_path, base, top)
        paths = set(listing(tree))
        assert "a/old" not in paths and "a/sub/deep" not in paths, paths
        check_invariants(tree)


def test_a_hardlink_keeps_its_content_when_a_later_layer_replaces_its_partner(tmp_path):
    base = LayerBuilder().file("one", b"first", mode=0o640, uid=3).hardlink("two", "one")
    base.hardlink("three", "one")
    top = LayerBuilder().file("one", b"second layer")
    tree, snaps = merged(tmp_path, base, top)
    n = listing(tree)
    assert content(snaps, n["two"]) == b"first" == content(snaps, n["three"])
    assert content(snaps, n["one"]) == b"second layer"
    assert n["two"].inode == n["three"].inode != n["one"].inode
    assert (n["two"].nlink, n["one"].nlink) == (2, 1)  # visible names, not the tar's three
    assert (n["two"].mode, n["two"].uid) == (0o640, 3) and n["one"].mode == 0o644


def test_hardlink_in_an_upper_layer_to_a_file_of_that_layer(tmp_path):
    base = LayerBuilder().file("x", b"lower")
    top = LayerBuilder().file("x", b"upper").hardlink("y", "x")
    tree, snaps = merged(tmp_path, base, top)
    n = listing(tree)
    assert content(snaps, n["y"]) == b"upper" and n["x"].inode == n["y"].inode
    assert n["x"].nlink == 2


def test_symlinks_are_kept_verbatim(tmp_path):
    targets = {"abs": "/etc/passwd", "up": "../../../../x", "rel": "a/./b/", "root": "/"}
    lb = LayerBuilder()
    for name, target in targets.items():
        lb.symlink(name, target)
    tree, _ = merged(tmp_path, lb)
    n = listing(tree)
    for name, target in targets.items():
        assert n[name].kind is EntryKind.SYMLINK and n[name].link == target
        assert n[name].size == len(target)


SYMLINK_MODES = [0o755, 0o700, 0o1777, 0o4755, 0]


def test_a_symlink_is_0777_whatever_its_header_says(tmp_path):
    """BSD tar (macOS) writes a link's own bits (``lrwxr-xr-x``); Linux, so overlayfs, has
    no permission bits on a symlink: lrwxrwxrwx."""
    lb = LayerBuilder()
    for mode in SYMLINK_MODES:
        lb.symlink(f"l{mode:o}", "target", mode=mode, uid=5, gid=6)
    tocs, _ = unpack_all(tmp_path, [lb])
    assert {e.mode for e in tocs[0] if e.kind is EntryKind.SYMLINK} == {0o777}
    # A toc written before unpack recorded 0777 still keeps the header's mode: merge
    # shows 0777 all the same.
    older = Toc(
        tocs[0].diff_id,
        tuple(replace(e, mode=int(e.path[1:], 8)) if e.path else e for e in tocs[0]),
    )
    for toc in (tocs[0], older):
        n = listing(merge([toc]))
        for mode in SYMLINK_MODES:
            link = n[f"l{mode:o}"]
            assert (link.kind, link.mode, link.uid, link.gid) == (EntryKind.SYMLINK, 0o777, 5, 6)


@pytest.mark.parametrize("name", [".", "./", "/"])
def test_root_metadata_comes_from_the_dot_entry(tmp_path, name):
    base = LayerBuilder().dir(
        name,
        mode=0o700,
        uid=5,
        gid=6,
        raw_name=True,
        mtime=Decimal("1.000000002"),
        xattrs={"user.root": b"r"},
    )
    base.file("f", b"x")
    no_dot = LayerBuilder().file("g", b"y")
    tree, _ = merged(tmp_path, base, no_dot)
    root = tree.node(ROOT_INODE)
    assert (root.mode, root.uid, root.gid, root.mtime_ns) == (0o700, 5, 6, 1_000_000_002)
    assert root.xattrs == (("user.root", b"r"),)
    assert set(listing(tree)) == {"", "f", "g"}
    over = LayerBuilder().dir("./", mode=0o755, mtime=9, raw_name=True)
    tree, _ = merged(tmp_path, base, over)
    root = tree.node(ROOT_INODE)
    assert (root.mode, root.uid, root.mtime_ns, root.xattrs) == (0o755, 0, 9 * 10**9, ())
    assert "f" in listing(tree)  # a root entry is a directory over a directory: children stay


def test_without_any_dot_entry_the_root_is_0755_root_mtime_0(tmp_path):
    tree, _ = merged(tmp_path, LayerBuilder().file("f", b"x", uid=4))
    root = tree.node(ROOT_INODE)
    assert root.kind is EntryKind.DIR
    assert (root.mode, root.uid, root.gid, root.mtime_ns) == (0o755, 0, 0, 0)
    assert root.nlink == 2


def test_root_opaque_marker_hides_every_lower_entry(tmp_path):
    base = LayerBuilder().dir("etc").file("etc/a", b"a").file("top", b"t")
    top = LayerBuilder().file(".wh..wh..opq", raw_name=True).file("new", b"n")
    tree, _ = merged(tmp_path, base, top)
    assert set(listing(tree)) == {"", "new"}


def test_type_changes_across_layers(tmp_path):
    base = (
        LayerBuilder()
        .dir("f2d")
        .file("f2d_was_file", b"f")
        .dir("d2f")
        .file("d2f/child", b"c")
        .dir("d2l")
        .dir("d2l/sub")
        .file("d2l/sub/x", b"x")
        .symlink("l2d", "/etc")
        .file("f2l", b"f")
    )
    top = (
        LayerBuilder()
        .dir("f2d_was_file", mode=0o701)
        .file("f2d_was_file/in", b"i")
        .file("d2f", b"now a file")
        .symlink("d2l", "/usr")
        .dir("l2d", mode=0o711)
        .symlink("f2l", "target")
    )
    tree, snaps = merged(tmp_path, base, top)
    n = listing(tree)
    assert n["f2d_was_file"].kind is EntryKind.DIR and n["f2d_was_file"].mode == 0o701
    assert set(tree.children(n["f2d_was_file"].inode)[0]) == {"in"}
    assert n["d2f"].kind is EntryKind.FILE and content(snaps, n["d2f"]) == b"now a file"
    assert n["d2l"].kind is EntryKind.SYMLINK and n["d2l"].link == "/usr"
    assert n["l2d"].kind is EntryKind.DIR and n["l2d"].mode == 0o711
    assert n["f2l"].kind is EntryKind.SYMLINK
    assert not any(p.startswith(("d2f/", "d2l/")) for p in n)
    check_invariants(tree)


def test_dir_chmod_and_chown_in_an_upper_layer_keeps_lower_children(tmp_path):
    base = LayerBuilder().dir("d", mode=0o755, xattrs={"user.old": b"1"}).file("d/keep", b"k")
    base.dir("d/sub").file("d/sub/deep", b"d")
    top = LayerBuilder().dir("d", mode=0o1770, uid=1000, gid=100, mtime=42)
    tree, _ = merged(tmp_path, base, top)
    n = listing(tree)
    d = n["d"]
    assert (d.mode, d.uid, d.gid, d.mtime_ns, d.xattrs) == (0o1770, 1000, 100, 42 * 10**9, ())
    assert {"d/keep", "d/sub", "d/sub/deep"} <= set(n)
    assert d.nlink == 3 and d.layer == 1


def test_an_entry_listed_twice_the_last_wins(tmp_path):
    layer = (
        LayerBuilder()
        .file("f", b"first", mode=0o600)
        .file("f", b"second", mode=0o640)
        .dir("d", mode=0o700)
        .file("d/x", b"x")
        .dir("d", mode=0o751, uid=9)
        .file("s", b"file")
        .symlink("s", "/now/a/link")
    )
    tree, snaps = merged(tmp_path, LayerBuilder().file("f", b"lower"), layer)
    n = listing(tree)
    assert content(snaps, n["f"]) == b"second" and n["f"].mode == 0o640
    assert (n["d"].mode, n["d"].uid) == (0o751, 9) and "d/x" in n
    assert n["s"].kind is EntryKind.SYMLINK and n["s"].link == "/now/a/link"


def test_implied_parents_keep_lower_metadata(tmp_path):
    base = LayerBuilder().dir("usr", mode=0o750, uid=2, gid=3, mtime=77, xattrs={"user.u": b"u"})
    base.dir("usr/lib", mode=0o700, mtime=78).file("usr/lib/old", b"o")
    top = LayerBuilder().file("usr/lib/new", b"n").file("opt/x/y", b"y")
    tree, _ = merged(tmp_path, base, top)
    n = listing(tree)
    usr = n["usr"]
    assert (usr.mode, usr.uid, usr.gid, usr.mtime_ns) == (0o750, 2, 3, 77 * 10**9)
    assert usr.xattrs == (("user.u", b"u"),)
    assert (n["usr/lib"].mode, n["usr/lib"].mtime_ns) == (0o700, 78 * 10**9)
    assert {"usr/lib/old", "usr/lib/new"} <= set(n)
    for implied in ("opt", "opt/x"):  # no lower directory: 0755 root:root, mtime 0
        i = n[implied]
        assert (i.mode, i.uid, i.gid, i.mtime_ns, i.xattrs) == (0o755, 0, 0, 0, ())


def test_implied_dir_over_a_lower_file_is_a_fresh_directory(tmp_path):
    base = LayerBuilder().file("x", b"file", mode=0o600, uid=5, mtime=5)
    tree, _ = merged(tmp_path, base, LayerBuilder().file("x/y", b"y"))
    x = listing(tree)["x"]
    assert (x.kind, x.mode, x.uid, x.mtime_ns) == (EntryKind.DIR, 0o755, 0, 0)


def test_a_character_device_0_0_is_a_whiteout(tmp_path):
    """overlayfs stores a whiteout as a character device 0/0, and containerd makes what
    the tar says: a layer shipping one hides the lower path under every overlay runtime.
    In its own layer it is an entry like any other, in tar order."""
    base = LayerBuilder().dir("a").dir("a/b").file("a/b/c", b"c").file("x", b"x")
    base.file("keep", b"k").file("d", b"d")
    top = (
        LayerBuilder()
        .chardev("a", 0, 0)
        .chardev("x", 0, 0, mode=0o600, uid=3)
        .chardev("never_existed", 0, 0)
        .chardev("d", 1, 3)
        .chardev("k2", 0, 0)
        .file("k2", b"the last entry of a path wins")
        .file("gone", b"g")
        .chardev("gone", 0, 0)
    )
    tree, _ = merged(tmp_path, base, top)
    n = listing(tree)
    assert set(n) == {"", "keep", "d", "k2"}
    assert (n["d"].kind, n["d"].rdev_major, n["d"].rdev_minor) == (EntryKind.CHAR, 1, 3)
    again = listing(merged(tmp_path, base, top, LayerBuilder().file("a/new", b"n"))[0])
    assert set(again) == {"", "keep", "d", "k2", "a", "a/new"}
    assert (again["a"].mode, again["a"].mtime_ns) == (0o755, 0)  # nothing to copy from


def test_whiteout_never_shows_and_hides_a_whole_subtree(tmp_path):
    base = LayerBuilder().dir("a").dir("a/b").file("a/b/c", b"c").file("a/keep", b"k")
    top = LayerBuilder().dir("a").whiteout("a/b").whiteout("a/never_existed")
    tree, _ = merged(tmp_path, base, top)
    assert set(listing(tree)) == {"", "a", "a/keep"}


def test_inode_numbers_are_deterministic_and_hardlinks_share_one(tmp_path):
    base = LayerBuilder().dir("d").file("d/a", b"a").hardlink("d/b", "d/a").hardlink("e", "d/a")
    base.file("z", b"z")
    top = LayerBuilder().whiteout("e").file("c", b"c")
    tree1, _ = merged(tmp_path, base, top)
    tree2, _ = merged(tmp_path, base, top)
    assert tree1.nodes == tree2.nodes and tree1.dirs == tree2.dirs
    n = listing(tree1)
    assert [p for p in n] == ["", "c", "d", "d/a", "d/b", "z"]  # depth first, name order
    assert n[""].inode == ROOT_INODE
    assert n["d/a"].inode == n["d/b"].inode
    assert n["d/a"].nlink == n["d/b"].nlink == 2  # "e" is whited out: not counted
    inodes = [n[p].inode for p in ("", "c", "d", "d/a", "z")]
    assert inodes == sorted(inodes) and len(set(inodes)) == 5
    check_invariants(tree1)


def test_merged_tree_write_read_round_trip(tmp_path):
    layer = (
        LayerBuilder()
        .dir("./", mode=0o711, raw_name=True)
        .file("f", b"data", xattrs={"user.bin": b"\x00\xff\n", "user.t": b"t"})
        .hardlink("g", "f")
        .symlink("l", "/abs/\u00e9")
        .chardev("c", 4, 64)
        .blockdev("b", 8, 1)
        .fifo("p")
        .dir("empty")
    )
    tree, _ = merged(tmp_path, layer, LayerBuilder().whiteout("p"))
    tree.write(tmp_path / "tree")
    back = MergedTree.read(tmp_path / "tree")
    assert back.nodes == tree.nodes
    assert back.dirs == tree.dirs and back.parents == tree.parents
    assert listing(back) == listing(tree)
    assert back.lookup(ROOT_INODE, "c") == tree.lookup(ROOT_INODE, "c")
    assert list(tmp_path.glob(".tree.*")) == []  # no temporary left behind


def test_a_file_shows_the_blocks_its_data_file_takes(tmp_path):
    size = 8 << 20
    layer = (
        LayerBuilder()
        .sparse_file("sparse", size, {4096: b"data" * 1024})
        .file("small", b"s")
        .hardlink("partner", "small")
        .symlink("l", "x" * 300)
        .dir("d")
    )
    tree, snaps = merged(tmp_path, layer, LayerBuilder().file("small", b"replaced"))
    n = listing(tree)
    for path in ("sparse", "partner", "small"):
        data = snaps[n[path].layer] / "data" / f"{n[path].data:x}"
        assert n[path].blocks == os.stat(data).st_blocks > 0, path
        assert tree.stat(n[path].inode).blocks == n[path].blocks
    assert n["sparse"].blocks < 64 and n["sparse"].size == size  # holes take no blocks
    assert n["l"].blocks == n["d"].blocks == n[""].blocks == 0
    tree.write(tmp_path / "tree")
    assert MergedTree.read(tmp_path / "tree").nodes == tree.nodes


def test_dir_recreated_after_a_file_of_its_own_layer_hides_lower_children(tmp_path):
    base = LayerBuilder().dir("a").file("a/old", b"o")
    top = LayerBuilder().file("a", b"replaces the lower dir").dir("a").file("a/new", b"n")
    tree, _ = merged(tmp_path, base, top)
    assert set(listing(tree)) == {"", "a", "a/new"}


def test_implied_dir_recreated_after_its_whiteout_has_fresh_metadata(tmp_path):
    base = LayerBuilder().dir("a", mode=0o700, uid=5, mtime=1000, xattrs={"user.x": b"1"})
    base.file("a/old", b"o").dir("a/sub", mode=0o711, uid=6, mtime=1001).file("a/sub/o", b"o")
    for top in (
        LayerBuilder().whiteout("a").file("a/new", b"n").file("a/sub/new", b"n"),
        LayerBuilder().file("a/sub/new", b"n").whiteout("a").file("a/new", b"n"),
    ):
        n = listing(merged(tmp_path, base, top)[0])
        assert set(n) == {"", "a", "a/new", "a/sub", "a/sub/new"}
        for fresh in ("a", "a/sub"):  # nothing of the whited-out directory survives
            d = n[fresh]
            assert (d.mode, d.uid, d.gid, d.mtime_ns, d.xattrs) == (0o755, 0, 0, 0, ()), fresh


LOWER_B = dict(mode=0o700, uid=5, gid=6, mtime=1000, xattrs={"user.x": b"1", "trusted.t": b"t"})


def meta(node: Node) -> tuple[object, ...]:
    return (node.mode, node.uid, node.gid, node.mtime_ns, node.xattrs)


B_META = (0o700, 5, 6, 1000 * 10**9, (("user.x", b"1"),))  # LOWER_B's, trusted.* not copied
FRESH = (0o755, 0, 0, 0, ())


@pytest.mark.parametrize("marker_first", [True, False])
def test_implied_dir_under_an_opaque_marker_of_its_layer_takes_the_lower_metadata(
    tmp_path, marker_first
):
    """containerd's mkparent copies a/b's metadata from the lower layer before (or after)
    the marker makes ``a`` opaque; overlayfs then shows the layer's a/b, lower children
    gone (issue 11)."""
    base = LayerBuilder().dir("a").dir("a/b", **LOWER_B).file("a/b/old", b"o")
    top = LayerBuilder()
    if marker_first:
        top.opaque("a").file("a/b/new", b"n").file("a/c/d/f", b"f")
    else:
        top.file("a/b/new", b"n").file("a/c/d/f", b"f").opaque("a")
    n = listing(merged(tmp_path, base, top)[0])
    assert set(n) == {"", "a", "a/b", "a/b/new", "a/c", "a/c/d", "a/c/d/f"}
    assert meta(n["a/b"]) == B_META
    assert meta(n["a/c"]) == meta(n["a/c/d"]) == FRESH  # no lower directory there


def test_implied_dir_takes_metadata_hidden_by_an_opaque_layer_between(tmp_path):
    """containerd looks at each lower layer's own directory, not at the view: an opaque
    marker in between does not stop it."""
    base = LayerBuilder().dir("a").dir("a/b", **LOWER_B).file("a/b/old", b"o")
    implies = LayerBuilder().file("a/b/mid", b"m")  # its a/b: a copy of the base's
    middle = LayerBuilder().opaque("a").file("a/other", b"x")
    top = LayerBuilder().file("a/b/new", b"n")
    n = listing(merged(tmp_path, base, implies, middle, top)[0])
    assert set(n) == {"", "a", "a/other", "a/b", "a/b/new"}
    assert meta(n["a/b"]) == B_META


@pytest.mark.parametrize(
    "middle,a_meta",
    [
        (LayerBuilder().whiteout("a/b"), B_META),  # a whiteout at the path
        (LayerBuilder().whiteout("a"), FRESH),  # above it
        (LayerBuilder().file("a", b"a file above it"), FRESH),
        (LayerBuilder().dir("a", mode=0o711).file("a/b", b"a file at the path"), None),
    ],
    ids=["whiteout", "whiteout-above", "file-above", "file"],
)
def test_implied_dir_over_a_removed_lower_dir_gets_the_defaults(tmp_path, middle, a_meta):
    """The first layer with anything at the path (or above it) decides, and a file or a
    whiteout there means the lower directory is gone (containerd gives the defaults, or
    fails: ENOTDIR, when it is above)."""
    base = LayerBuilder().dir("a", **LOWER_B).dir("a/b", **LOWER_B).file("a/b/old", b"o")
    top = LayerBuilder().file("a/b/new", b"n")
    n = listing(merged(tmp_path, base, middle, top)[0])
    assert set(n) == {"", "a", "a/b", "a/b/new"}
    assert meta(n["a/b"]) == FRESH
    if a_meta is not None:
        assert meta(n["a"]) == a_meta
    else:
        assert n["a"].mode == 0o711


def test_implied_dir_over_a_lower_symlink_takes_what_containerd_finds_through_it(tmp_path):
    """containerd looks the path up in each lower layer with continuity's RootPath, which
    follows symlinks within that layer: the directory a link leads to lends its metadata;
    a link to nothing there sends the search further down; a loop, or a link to a file,
    gives the defaults."""
    base = LayerBuilder().dir("d", mode=0o711, uid=9, mtime=9)
    layer = (
        LayerBuilder()
        .dir("usr", mode=0o750, uid=2, mtime=2)
        .dir("usr/lib", **LOWER_B)
        .file("usr/file", b"f")
        .symlink("lib", "usr/lib")
        .symlink("abs", "/usr/lib", mode=0o700)
        .symlink("up", "../../usr")  # .. stops at the layer's root
        .dir("sub")
        .symlink("sub/rel", "../usr/lib")
        .symlink("loop", "loop")
        .symlink("f", "usr/file")
        .symlink("d", "nowhere")  # replaces the base's d
        .symlink("root", "/")
    )
    top = LayerBuilder()
    for path in ("lib", "abs", "up/lib", "sub/rel", "loop", "f", "d", "root"):
        top.file(f"{path}/x", b"x")
    n = listing(merged(tmp_path, base, layer, top)[0])
    for path in ("lib", "abs", "up/lib", "sub/rel"):
        assert meta(n[path]) == B_META, path
    assert meta(n["up"]) == (0o750, 2, 0, 2 * 10**9, ())  # the layer's usr
    for path in ("loop", "f", "root"):
        assert meta(n[path]) == FRESH, path
    assert meta(n["d"]) == (0o711, 9, 0, 9 * 10**9, ())  # further down: the base's d
    assert "usr/lib/x" not in n  # the links only lent metadata: each is a directory now
    assert {n[p].kind for p in ("lib", "abs", "up", "sub/rel", "d")} == {EntryKind.DIR}


def test_implied_dir_over_a_lower_dir_drops_its_trusted_xattrs(tmp_path):
    """The layer's copy of the directory is what overlayfs shows: containerd copies every
    xattr but trusted.* into it."""
    base = LayerBuilder().dir("a", **LOWER_B).file("a/old", b"o")
    n = listing(merged(tmp_path, base, LayerBuilder().file("a/new", b"n"))[0])
    assert meta(n["a"]) == B_META and n["a"].layer == 1
    n = listing(merged(tmp_path, base, LayerBuilder().dir("a").file("a/new", b"n"))[0])
    assert n["a"].xattrs == ()  # named: its own (no) xattrs
    plain = LayerBuilder().dir("a", mode=0o700, xattrs={"user.x": b"1"})
    n = listing(merged(tmp_path, plain, LayerBuilder().file("a/new", b"n"))[0])
    assert n["a"].xattrs == (("user.x", b"1"),) and n["a"].layer == 0  # the lower node


# -- the cache file (merged/<chain>, MERGED_VERSION) ------------------------------------------


def same_tree(back: MergedTree, tree: MergedTree) -> None:
    """``back`` answers every query as ``tree`` does."""
    assert listing(back) == listing(tree)
    assert back.nodes == tree.nodes
    assert back.dirs == tree.dirs and back.parents == tree.parents
    assert len(back) == len(tree) and back.content_size() == tree.content_size()
    for _, node in tree.walk():
        s = back.stat(node.inode)
        assert s.inode == node.inode and s.kind is node.kind
        assert (s.mode, s.nlink, s.uid, s.gid, s.size, s.mtime_ns) == (
            node.mode,
            node.nlink,
            node.uid,
            node.gid,
            node.size,
            node.mtime_ns,
        )
        assert (s.rdev_major, s.rdev_minor) == (node.rdev_major, node.rdev_minor)
        assert (s.layer, s.data) == (node.layer, node.data)
        if node.kind is EntryKind.DIR:
            names, inodes = tree.children(node.inode)
            want = [
                (i, os.fsencode(n), c) for i, (n, c) in enumerate(zip(names, inodes, strict=True))
            ]
            assert list(back.scan(node.inode)) == want
            for start in range(len(want) + 2):  # readdir resumes at any next_id
                assert list(back.scan(node.inode, start)) == want[start:]
            for name, inode in zip(names, inodes, strict=True):
                assert back.lookup_inode(node.inode, name) == inode
            assert back.lookup(node.inode, "not-there") is None
    check_invariants(back)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(LAYERS)
def test_cache_file_reads_back_what_merge_made(layers):
    ref = Reference()
    builders = [build(ref.apply(i, ops)) for i, ops in enumerate(layers)]
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        work = Path(tmp)
        tocs, _ = unpack_all(work, builders)
        tree = merge(tocs)
        tree.write(work / "merged")
        back = MergedTree.read(work / "merged")
        same_tree(back, tree)
        back.write(work / "again")  # and the file is a function of the tree
        assert (work / "again").read_bytes() == (work / "merged").read_bytes()


def example_tree(tmp_path: Path) -> MergedTree:
    layer = (
        LayerBuilder()
        .dir("d", xattrs={"user.k": b"v\x00"})
        .file("d/f", b"data", xattrs={"user.bin": b"\x00\xff\n", "user.t": b"t"})
        .hardlink("d/g", "d/f")
        .symlink("l", "/abs/\u00e9")
        .chardev("c", 4, 64)
        .fifo("p")
        .dir("empty")
    )
    tree, _ = merged(tmp_path, layer)
    return tree


def flip(at: int) -> Callable[[bytes], bytes]:
    def damage(good: bytes) -> bytes:
        i = at % len(good)
        return good[:i] + bytes([good[i] ^ 0x40]) + good[i + 1 :]

    return damage


def header_field(index: int, change: Callable[[int], int]) -> Callable[[bytes], bytes]:
    """Rewrite one field of the header (magic, version, byte order, crc, _, counts...)."""

    def damage(good: bytes) -> bytes:
        fmt = "<8sIIIIQQQQQQ"
        fields = list(struct.unpack_from(fmt, good))
        fields[index] = change(fields[index])
        return struct.pack(fmt, *fields) + good[struct.calcsize(fmt) :]

    return damage


def version_1(good: bytes) -> bytes:
    doc = {"version": 1, "nodes": [], "dirs": {}, "parents": {}}
    return zstandard.ZstdCompressor().compress(json.dumps(doc).encode())


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda good: b"",
    "half a header": lambda good: good[:20],
    "header only": lambda good: good[:64],
    "truncated by one byte": lambda good: good[:-1],
    "truncated in the columns": lambda good: good[: len(good) // 2],
    "one byte appended": lambda good: good + b"\0",
    "magic": flip(0),
    "version": header_field(1, lambda v: v + 1),
    "other byte order": header_field(2, lambda v: 1 - v),
    "checksum": header_field(3, lambda v: v ^ 1),
    "one more slot": header_field(5, lambda v: v + 1),
    "absurd slot count": header_field(5, lambda v: 2**62),
    "one more entry": header_field(6, lambda v: v + 1),
    "longer names": header_field(7, lambda v: v + 10**9),
    "a column byte": flip(80),
    "the last blob byte": flip(-1),
    "version 1 (zstd json)": version_1,
    "garbage": lambda good: os.urandom(len(good)),
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_cache_file_is_refused(tmp_path, damage):
    tree = example_tree(tmp_path)
    path = tmp_path / "tree"
    tree.write(path)
    MergedTree.read(path)  # the undamaged file reads
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(StoreCorrupt):
        MergedTree.read(path)


# A file whose checksum is right but which points outside itself: only a program could
# write one, and queries must still answer StoreCorrupt, never IndexError or garbage.
CRAFTED: dict[str, Callable[[MergedTree], None]] = {
    "child inode past the end": lambda t: t._child_inode.__setitem__(0, 10**6),
    "child inode of an empty slot": lambda t: t._child_inode.__setitem__(0, 0),
    "child range past the table": lambda t: t._child_off.__setitem__(
        ROOT_INODE + 1, len(t._child_inode) + 5
    ),
    "unknown kind": lambda t: t._kind.__setitem__(2, 200),
    "xattr record overruns": lambda t: t._xattr_off.__setitem__(3, t._xattr_off[3] + 1),
    # the root's child range also covers the entries of "d": "d" is listed under itself
    "a directory listed inside itself": lambda t: t._child_inode.__setitem__(
        t._child_off[t.lookup_inode(ROOT_INODE, "d")], t.lookup_inode(ROOT_INODE, "d")
    ),
}


@pytest.mark.parametrize("craft", CRAFTED.values(), ids=CRAFTED.keys())
def test_a_crafted_cache_file_answers_store_corrupt(tmp_path, craft):
    tree = example_tree(tmp_path)
    craft(tree)
    tree.write(tmp_path / "tree")
    back = MergedTree.read(tmp_path / "tree")
    with pytest.raises(StoreCorrupt):
        for _, node in back.walk():
            back.stat(node.inode)
            if node.kind is EntryKind.DIR:
                list(back.scan(node.inode))


def every_slot(value: Callable[[int, MergedTree], int]) -> Callable[[MergedTree], None]:
    def craft(tree: MergedTree) -> None:
        for slot in range(len(tree._table)):
            tree._table[slot] = value(slot, tree)

    return craft


LOOKUP_CRAFTED: dict[str, Callable[[MergedTree], None]] = {
    "entries past the end": every_slot(lambda slot, t: len(t._child_inode) + 1 + slot),
    "entries of other directories": every_slot(lambda slot, t: slot % len(t._child_inode) + 1),
    "no free slot": every_slot(lambda slot, t: 1),
    "empty": every_slot(lambda slot, t: 0),
}


@pytest.mark.parametrize("craft", LOOKUP_CRAFTED.values(), ids=LOOKUP_CRAFTED.keys())
def test_a_crafted_lookup_table_gives_wrong_answers_not_errors(tmp_path, craft):
    # Lookup only ever answers an entry of the right directory with the right name, and
    # gives up after LOOKUP_PROBES slots: a table full of nonsense makes names vanish.
    tree = example_tree(tmp_path)
    craft(tree)
    tree.write(tmp_path / "tree")
    back = MergedTree.read(tmp_path / "tree")
    for _, node in tree.walk():
        if node.kind is EntryKind.DIR:
            for name, inode in zip(*tree.children(node.inode), strict=True):
                assert back.lookup_inode(node.inode, name) in (inode, None)
            assert back.lookup_inode(node.inode, "not-there") is None


@pytest.mark.parametrize(
    "craft",
    [
        lambda t: t._child_off.__setitem__(len(t._child_off) - 1, 0),
        lambda t: t._name_off.__setitem__(len(t._name_off) - 1, 1),
        lambda t: t._kind.__setitem__(ROOT_INODE, 1),
        lambda t: setattr(t, "_table", t._table[:-1]),
        lambda t: setattr(t, "_table", t._table[: len(t._table) // 2]),
    ],
    ids=[
        "entry count",
        "names length",
        "root not a directory",
        "lookup table not a power of two",
        "lookup table over half full",
    ],
)
def test_columns_that_do_not_fit_together_are_refused_at_read(tmp_path, craft):
    tree = example_tree(tmp_path)
    craft(tree)
    tree.write(tmp_path / "tree")
    with pytest.raises(StoreCorrupt):
        MergedTree.read(tmp_path / "tree")


def synthetic(paths: list[tuple[str, EntryKind]]) -> Toc:
    """A toc made in code (no tar), for trees too big to build one entry at a time."""
    entries = [
        TocEntry(path, kind, 0o755 if kind is EntryKind.DIR else 0o644, 0, 0, 0, 1, inode)
        for inode, (path, kind) in enumerate(paths, start=1)
    ]
    return Toc("sha256:" + "0" * 64, tuple(entries))


def test_a_directory_of_100k_entries_reads_back_and_lists_once(tmp_path):
    n = 100_000
    names = [f"f{i:06d}" for i in range(n)]
    toc = synthetic([("many", EntryKind.DIR)] + [(f"many/{m}", EntryKind.FILE) for m in names])
    merge([toc]).write(tmp_path / "tree")
    tree = MergedTree.read(tmp_path / "tree")
    assert len(tree) == n + 2
    many = tree.lookup(ROOT_INODE, "many")
    assert many is not None and many.nlink == 2
    listed, inodes = tree.children(many.inode)
    assert listed == names and len(set(inodes)) == n
    # As readdir does: a chunk at a time, each resumed from the last entry's next_id.
    seen: list[bytes] = []
    next_id = 0
    while chunk := list(itertools.islice(tree.scan(many.inode, next_id), 997)):
        seen += [name for _, name, _ in chunk]
        next_id = chunk[-1][0] + 1
    assert seen == [os.fsencode(m) for m in names]
    for i in [*range(0, n, 4999), n - 1]:
        assert tree.lookup_inode(many.inode, names[i]) == inodes[i]
    for absent in ("", "f", "f100000", "f0499995", "g"):
        assert tree.lookup(many.inode, absent) is None


def colliding_names(count: int, directory: int, mask: int) -> list[str]:
    """``count`` names whose lookup slots (crc32 seeded with ``directory``) all start at
    slot 0 of a table of ``mask + 1`` slots."""
    names: list[str] = []
    i = 0
    while len(names) < count:
        name = f"n{i}"
        if zlib.crc32(name.encode(), directory) & mask == 0:
            names.append(name)
        i += 1
    return names


@pytest.mark.parametrize("count", [LOOKUP_PROBES // 2, LOOKUP_PROBES + 1])
def test_names_made_to_collide_turn_lookup_into_a_binary_search(tmp_path, count):
    # "d" is inode 2; its names plus "d" itself are count + 1 entries.  Half of
    # LOOKUP_PROBES names on one home slot still fit; more than LOOKUP_PROBES and there
    # is no table at all: lookups bisect, and answer the same.
    entries = count + 1
    size = 1 << (2 * entries - 1).bit_length()
    names = sorted(colliding_names(count, 2, size - 1))
    toc = synthetic([("d", EntryKind.DIR)] + [(f"d/{m}", EntryKind.FILE) for m in names])
    tree = merge([toc])
    assert len(tree._table) == (size if count <= LOOKUP_PROBES else 0)
    tree.write(tmp_path / "tree")
    for t in (tree, MergedTree.read(tmp_path / "tree")):
        d = t.lookup_inode(ROOT_INODE, "d")
        assert d == 2
        listed, inodes = t.children(d)
        assert listed == names
        for name, inode in zip(names, inodes, strict=True):
            assert t.lookup_inode(d, name) == inode
            assert t.lookup_raw(d, os.fsencode(name)) == inode
        for absent in ("n", "zz", colliding_names(count + 1, 2, size - 1)[-1]):
            assert t.lookup_inode(d, absent) is None


def test_lookup_follows_name_order_where_bytes_and_str_disagree(tmp_path):
    # "\udc80" is the undecodable byte 0x80: first in byte order, after "é" in str order.
    names = sorted(["a", "\u00e9", "\udc80", "\udcffz", "z", "\u00e9\udc80"])
    toc = synthetic([("d", EntryKind.DIR)] + [(f"d/{m}", EntryKind.FILE) for m in names])
    merge([toc]).write(tmp_path / "tree")
    tree = MergedTree.read(tmp_path / "tree")
    d = tree.lookup(ROOT_INODE, "d")
    assert d is not None
    assert tree.children(d.inode)[0] == names
    for name in names:
        found = tree.lookup(d.inode, name)
        assert found is not None and tree.resolve(f"d/{name}") == found
    assert [raw for _, raw, _ in tree.scan(d.inode)] == [os.fsencode(m) for m in names]
