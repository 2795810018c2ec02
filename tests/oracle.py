"""Independent references to check snapshots against.

``gnu_tar_tree`` extracts a layer with GNU tar (as root: numeric owners, modes, devices,
xattrs, nanosecond mtimes) and reads the result back with ``os.lstat``; ``snapshot_tree``
reads what our toc and data files say.  Both produce the same ``Node`` records, so a test
is one ``assert_same_tree``.  Nothing here imports snapshotter's unpacking code.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

WH = ".wh."
OPQ = ".wh..wh..opq"


@dataclass(frozen=True)
class Node:
    kind: str  # '-', 'd', 'l', 'c', 'b', 'p', or 'w' for a whiteout
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    link: str = ""
    rdev: tuple[int, int] = (0, 0)
    xattrs: tuple[tuple[str, bytes], ...] = ()
    sha256: str = ""
    opaque: bool = False
    implied: bool = False
    group: tuple[str, ...] = field(default=(), compare=True)  # hardlink partners, sorted


def kind_letter(st_mode: int) -> str:
    for test, letter in (
        (stat.S_ISREG, "-"),
        (stat.S_ISDIR, "d"),
        (stat.S_ISLNK, "l"),
        (stat.S_ISCHR, "c"),
        (stat.S_ISBLK, "b"),
        (stat.S_ISFIFO, "p"),
    ):
        if test(st_mode):
            return letter
    raise AssertionError(f"unexpected file type {st_mode:o}")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def listed_names(tar_path: Path) -> set[str]:
    out = subprocess.run(
        ["tar", "--list", "-f", str(tar_path)], check=True, capture_output=True
    ).stdout
    names = set()
    for raw in out.split(b"\n"):
        if not raw:
            continue
        name = os.fsdecode(raw)
        parts = [p for p in name.split("/") if p not in ("", ".")]
        names.add("/".join(parts))
    return names


def gnu_tar_extract(tar_path: Path, dest: Path) -> None:
    """Extract an uncompressed layer tar as root would: numeric owners, modes, xattrs.
    Directory times are set at the end, as containerd does: by default GNU tar sets them
    when the archive leaves a directory, and a later member inside it changes them again."""
    result = subprocess.run(
        [
            "tar",
            "--extract",
            "--delay-directory-restore",
            "--numeric-owner",
            "--same-permissions",
            "--xattrs",
            "--xattrs-include=*",
            "-f",
            str(tar_path),
            "-C",
            str(dest),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"GNU tar failed on {tar_path}: {result.stderr}"


def gnu_tar_tree(tar_path: Path, workdir: Path) -> dict[str, Node]:
    """Extract ``tar_path`` (an uncompressed layer tar) with GNU tar and describe it."""
    root = workdir / "gnu-root"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    gnu_tar_extract(tar_path, root)
    listed = listed_names(tar_path)
    raw: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            raw[rel] = os.lstat(full)
    # Whiteouts and opaque markers become what the image spec says they mean.
    whiteouts: set[str] = set()
    opaques: set[str] = set()
    for rel in list(raw):
        parent, _, base = rel.rpartition("/")
        if base == OPQ:
            opaques.add(parent)
            del raw[rel]
        elif base.startswith(".wh..wh."):
            del raw[rel]
        elif base.startswith(WH):
            whiteouts.add(f"{parent}/{base[4:]}" if parent else base[4:])
            del raw[rel]
    by_inode: dict[int, list[str]] = {}
    for rel, st in raw.items():
        if stat.S_ISREG(st.st_mode):
            by_inode.setdefault(st.st_ino, []).append(rel)
    nodes: dict[str, Node] = {}
    for rel, st in raw.items():
        kind = kind_letter(st.st_mode)
        full = root / rel
        implied = kind == "d" and rel not in listed
        xattrs = (
            tuple(
                sorted(
                    (k, os.getxattr(full, k, follow_symlinks=False))
                    for k in os.listxattr(full, follow_symlinks=False)
                )
            )
            if kind != "l"
            else ()
        )
        nodes[rel] = Node(
            kind=kind,
            mode=0 if implied else stat.S_IMODE(st.st_mode),
            uid=0 if implied else st.st_uid,
            gid=0 if implied else st.st_gid,
            size=st.st_size if kind == "-" else 0,
            mtime_ns=0 if implied else st.st_mtime_ns,
            link=os.readlink(full) if kind == "l" else "",
            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in "cb" else (0, 0),
            xattrs=xattrs,
            sha256=sha256_of(full) if kind == "-" and st.st_size else "",
            opaque=rel in opaques,
            implied=implied,
            group=tuple(sorted(by_inode[st.st_ino]))
            if kind == "-" and len(by_inode[st.st_ino]) > 1
            else (),
        )
    for rel in whiteouts:
        if rel in nodes:
            if nodes[rel].kind == "d":
                nodes[rel] = Node(**{**nodes[rel].__dict__, "opaque": True})
        else:
            nodes[rel] = Node(kind="w")
    return nodes


def snapshot_tree(snapshot: Path) -> dict[str, Node]:
    """What the snapshot's toc and data files say, in the same form."""
    from snapshotter.store.toc import TOC_NAME, Toc

    toc = Toc.read(snapshot / TOC_NAME)
    by_inode: dict[int, list[str]] = {}
    for e in toc:
        if e.kind.value == "-":
            by_inode.setdefault(e.inode, []).append(e.path)
    nodes: dict[str, Node] = {}
    for e in toc:
        if e.path == "":
            continue
        kind = e.kind.value
        data = snapshot / "data" / f"{e.inode:x}"
        nodes[e.path] = Node(
            kind=kind,
            mode=0 if e.implied or kind == "w" else e.mode,
            uid=0 if e.implied else e.uid,
            gid=0 if e.implied else e.gid,
            size=e.size,
            mtime_ns=0 if e.implied else e.mtime_ns,
            link=e.link,
            rdev=(e.rdev_major, e.rdev_minor),
            xattrs=e.xattrs if kind != "l" else (),
            sha256=sha256_of(data) if kind == "-" and e.size else "",
            opaque=e.opaque,
            implied=e.implied,
            group=tuple(sorted(by_inode[e.inode]))
            if kind == "-" and len(by_inode[e.inode]) > 1
            else (),
        )
        if kind == "w":
            nodes[e.path] = Node(kind="w")
    return nodes


def assert_same_tree(actual: dict[str, Node], expected: dict[str, Node], what: str) -> None:
    problems = []
    for path in sorted(set(actual) | set(expected)):
        a, e = actual.get(path), expected.get(path)
        if a != e:
            problems.append(f"  {path!r}:\n    ours:     {a}\n    expected: {e}")
    assert not problems, f"{what}: {len(problems)} entries differ\n" + "\n".join(problems[:10])


def decompress_to(blob: Path, out: Path) -> Path:
    """An uncompressed copy of a layer blob, using the system's gzip/zstd."""
    with open(blob, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        cmd = ["gzip", "-dc", str(blob)]
    elif head == b"\x28\xb5\x2f\xfd":
        cmd = ["zstd", "-dcq", str(blob)]
    else:
        shutil.copyfile(blob, out)
        return out
    with open(out, "wb") as f:
        subprocess.run(cmd, check=True, stdout=f)
    return out


def oci_layers(layout: Path, tag: str) -> list[tuple[str, Path]]:
    """(diff_id, blob path) of each layer of ``layout:tag`` as skopeo/umoci wrote it."""
    import json

    index = json.loads((layout / "index.json").read_text())
    desc = next(
        d
        for d in index["manifests"]
        if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    )

    def blob(digest: str) -> Path:
        algo, hexd = digest.split(":")
        return layout / "blobs" / algo / hexd

    manifest = json.loads(blob(desc["digest"]).read_text())
    config = json.loads(blob(manifest["config"]["digest"]).read_text())
    return [
        (diff_id, blob(layer["digest"]))
        for diff_id, layer in zip(config["rootfs"]["diff_ids"], manifest["layers"], strict=True)
    ]


def is_tar(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:"):
            return True
    except tarfile.TarError:
        return False
