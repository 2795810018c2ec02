#!/usr/bin/env python3
"""Time mounting and reading images with snapshotter, fuse-overlayfs and kernel overlayfs.

    python scripts/bench_mount.py [--image both|debian|realtree] [--runs 3]
                                  [--snapshotter CMD] [--readers 1,4,8] [--json]
                                  [--layout DIR] [--tag bench] [--big-layout DIR]
                                  [--realtree-layout DIR] [--realtree-tag realtree]

Two images, each mounted three ways in one run:

  debian     the debootstrap image of scripts/bench-image (--layout, tag bench:
             ~11.5k paths, 4 layers), plus a one-layer image holding one 1 GiB
             file for the sequential read (--big-layout, built here)
  realtree   ~120k paths of this machine's own trees in 3 layers, the last one
             deleting /usr/share/doc and adding a 1 GiB file (--realtree-layout,
             built by scripts/realtree_image.py when missing)

  snapshotter      CMD --root STORE mount DIGEST MNT   (FUSE daemon, merged tree)
  fuse-overlayfs   fuse-overlayfs -o lowerdir=L3:L2:L1 MNT
  kernel overlay   mount -t overlay overlay -o ro,lowerdir=L3:L2:L1 MNT

The lower directories of both peers are prepared once, untimed: every layer blob
is extracted by GNU tar (as root: numeric owners, xattrs) into its own
directory, then the OCI whiteouts are turned into overlayfs ones (".wh.X" ->
a 0/0 character device X; ".wh..wh..opq" -> removed, and the directory gets
trusted.overlay.opaque=y).  Directories then get the mtime of their own tar
entry (GNU tar's late symlink placeholders bump some), and directories a layer
only implies get the metadata of the same directory below, as an overlay
snapshotter's applier does.  Each image is pulled into a fresh snapshotter store
once, untimed.  After the first round, `find -printf` listings of the three
views (path, type, mode, owner, mtime, link target, size) are compared, so a
difference in what the tools show is reported, not timed.

Timed, per image and tool (best of --runs; rounds interleaved, tool order rotated):

  first mount     command start until MNT lists the root, caches dropped just
                  before: snapshotter reads the merged tree that pull built
  mount again     the same again, warm
  first walk      find MNT -printf '%s %m %u %g %T@\\n' >/dev/null, right after
                  the mount, page/dentry/inode caches dropped just before
  repeated walk   the same command again, warm
  first read      tar -cf - --numeric-owner -C MNT . read to the end through a
                  pipe by this script (GNU tar skips reading files when the
                  archive is /dev/null), caches dropped
  repeated read   the same again, warm
  1 GiB read      dd if=MNT/big.bin of=/dev/null bs=1M, caches dropped, then
                  repeated (debian: on the one-file image; realtree: its own)
  N readers       the view split into N disjoint sets of subtrees of about equal
                  weight, N such tar pipes at once, caches dropped (--readers)

plus the daemon's VmRSS after the walks and after the reads, and its CPU time
for the walks and reads.  Caches are dropped with
"sync; echo 3 > /proc/sys/vm/drop_caches", so this needs root.

The 1 GiB image is built once (os.urandom(16 MiB) repeated, tar by tarfile,
gzip level 1) into --big-layout and reused while its stamp file matches.  Its
peers get an empty directory as a second lower layer: kernel overlayfs refuses
a single lowerdir without an upperdir.

Standard library only; reuses the layout parsing of bench_pull.py.  See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import platform
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_pull import (
    DEFAULT_BENCH_DIR,
    BenchError,
    Image,
    Layer,
    bench_parser,
    first_line,
    load_image,
    machine_info,
    parse_bench_args,
    print_rows,
    remove_tree,
    warm_page_cache,
)
from realtree_image import DEFAULT_LAYOUT as REALTREE_LAYOUT
from realtree_image import DEFAULT_TAG as REALTREE_TAG
from realtree_image import build_realtree_layout

BIG_TAG = "bigfile"
BIG_NAME = "big.bin"
BIG_SIZE = 1 << 30
BIG_CHUNK = 16 << 20
BIG_RECIPE = f"{BIG_NAME} {BIG_SIZE} bytes: urandom({BIG_CHUNK}) repeated; tarfile pax; gzip -1; v1"
MOUNT_TIMEOUT = 120.0
WALK_FORMAT = r"%s %m %u %g %T@\n"  # find -printf does the escapes itself
# For the (untimed) check that all three views show the same tree and for splitting it
# between parallel readers: three NUL-terminated fields per entry, so that any name
# (newlines and tabs included) parses.
SCAN_FORMAT = r"%y %m %U %G %T@ %s\0%l\0%P\0"
TAR_READ = ["tar", "-cf", "-", "--numeric-owner"]
# Splitting the view between readers: what a file costs besides its bytes (about a
# cold lookup and open), and how many subtrees per reader at least.
ENTRY_WEIGHT = 64 << 10
UNITS_PER_READER = 4


# --------------------------------------------------------------------------- helpers


def run(
    cmd: Sequence[str],
    what: str,
    *,
    stdout: int | None = subprocess.DEVNULL,
    ok: Sequence[int] = (0,),
) -> bytes:
    """Run `cmd`; BenchError with its stderr if it exits with a status not in `ok`.
    Returns stdout if piped."""
    try:
        proc = subprocess.run(
            list(cmd), stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE, check=False
        )
    except OSError as e:
        raise BenchError(f"{what}: cannot run {shlex.join(cmd)}: {e}") from e
    if proc.returncode not in ok:
        raise BenchError(
            f"{what} failed (exit status {proc.returncode}): {shlex.join(cmd)}\n"
            f"--- stderr ---\n{proc.stderr.decode(errors='replace').rstrip()}"
        )
    return proc.stdout or b""


def timed(cmd: Sequence[str], what: str) -> float:
    start = time.perf_counter()
    run(cmd, what)
    return time.perf_counter() - start


def drop_caches() -> None:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        raise BenchError(f"cannot drop caches (needs root): {e}") from e


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) > 4:
                mp = _unescape(fields[4])
                if mp == str(root) or mp.startswith(prefix):
                    found.append(mp)
    return sorted(found, key=len, reverse=True)


def is_mounted(path: Path) -> bool:
    return str(path) in mounts_under(path)


def proc_status(pid: int, key: str) -> int | None:
    """A "kB" field of /proc/PID/status, in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return False


def wait_gone(pid: int | None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while pid is not None and alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


# --------------------------------------------------------------------------- the 1 GiB image


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to `dest`."""

    def __init__(self, dest: Any):
        super().__init__()
        self.dest = dest
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b)
        self.sha.update(view)
        self.dest.write(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size


class _RepeatingReader(io.RawIOBase):
    """`size` bytes: `chunk` over and over."""

    def __init__(self, chunk: bytes, size: int):
        super().__init__()
        self.chunk = memoryview(chunk)
        self.size = size
        self.pos = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.pos
        if n < 0 or n > left:
            n = left
        off = self.pos % len(self.chunk)
        n = min(n, len(self.chunk) - off)
        self.pos += n
        return bytes(self.chunk[off : off + n])


def _write_blob(blobs: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def build_big_layout(layout: Path, tag: str) -> None:
    """An OCI layout with one gzip layer holding one 1 GiB file, written by hand."""
    stamp = layout.with_name(layout.name + ".done")
    if layout.is_dir() and stamp.is_file() and stamp.read_text().strip() == BIG_RECIPE:
        return
    print(f"building {layout}:{tag} ({BIG_RECIPE})", file=sys.stderr, flush=True)
    remove_tree(layout)
    stamp.unlink(missing_ok=True)
    tmp = layout.with_name(f".{layout.name}.tmp")
    remove_tree(tmp)
    blobs = tmp / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layer_tmp = blobs / "layer.tmp"
    with layer_tmp.open("wb") as raw:
        compressed = _HashingWriter(raw)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=1, mtime=0) as gz:
            plain = _HashingWriter(gz)
            with tarfile.TarFile(
                fileobj=plain, mode="w", format=tarfile.PAX_FORMAT, copybufsize=1 << 20
            ) as tar:
                info = tarfile.TarInfo(BIG_NAME)
                info.size = BIG_SIZE
                info.mode = 0o644
                info.mtime = 1_700_000_000
                tar.addfile(info, _RepeatingReader(os.urandom(BIG_CHUNK), BIG_SIZE))
    layer_digest = compressed.sha.hexdigest()
    layer_tmp.rename(blobs / layer_digest)
    config = {
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(
            platform.machine(), platform.machine()
        ),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{plain.sha.hexdigest()}"]},
        "history": [{"created_by": "bench_mount.py: one 1 GiB file"}],
    }
    config_desc = _write_blob(blobs, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": f"sha256:{layer_digest}",
                "size": compressed.size,
            }
        ],
    }
    manifest_desc = _write_blob(blobs, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_desc,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (tmp / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (tmp / "index.json").write_text(json.dumps(index))
    os.sync()
    tmp.rename(layout)
    stamp.write_text(BIG_RECIPE + "\n")


# --------------------------------------------------------------------------- lower dirs


TAR_FLAGS = {"gzip": ["-z"], "zstd": ["--zstd"], "none": []}


def whiteouts_to_overlayfs(root: Path) -> tuple[int, int]:
    """Turn OCI whiteouts under `root` into overlayfs ones; returns (whiteouts, opaque)."""
    n_wh = n_opq = 0
    for dirpath, _dirs, files in os.walk(root):
        marks = [f for f in files if f.startswith(".wh.")]
        if not marks:
            continue
        d = Path(dirpath)
        st = os.lstat(d)
        for name in marks:
            os.unlink(d / name)
            if name == ".wh..wh..opq":
                os.setxattr(d, "trusted.overlay.opaque", b"y")
                n_opq += 1
            else:
                target = d / name[len(".wh.") :]
                if os.path.lexists(target):
                    raise BenchError(f"{target}: both a whiteout and an entry in one layer")
                os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
                n_wh += 1
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
    return n_wh, n_opq


def extract_lowers(image: Image, dest: Path, log: Callable[[str], None]) -> list[Path]:
    """One directory per layer, base first, in overlayfs form."""
    lowers: list[Path] = []
    for i, layer in enumerate(image.layers):
        d = dest / f"layer{i}"
        d.mkdir(parents=True)
        run(
            [
                "tar",
                *TAR_FLAGS[layer.compression],
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "-xpf",
                str(layer.path),
                "-C",
                str(d),
            ],
            f"extracting layer {i}",
        )
        n_wh, n_opq = whiteouts_to_overlayfs(d)
        members = tar_members(layer)
        restore_dir_mtimes(d, members)
        n_implied = fix_implied_dirs(d, members, lowers[::-1])
        log(
            f"  layer {i}: extracted to {d} ({n_wh} whiteouts, {n_opq} opaque dirs, "
            f"{n_implied} implied dirs)"
        )
        lowers.append(d)
    return lowers


def _mtime_ns(member: tarfile.TarInfo) -> int:
    """A member's mtime in ns, exact for pax "mtime" records (a float is not)."""
    text = member.pax_headers.get("mtime")
    if text:
        sec, _, frac = text.partition(".")
        sign = -1 if sec.startswith("-") else 1
        return int(sec) * 10**9 + sign * int((frac + "000000000")[:9])
    return int(member.mtime) * 10**9


def tar_members(layer: Layer) -> dict[str, int | None]:
    """The normalized paths a layer tar has entries for -> mtime (ns) of directories,
    None for everything else."""
    names: dict[str, int | None] = {}

    def add(tar: tarfile.TarFile) -> None:
        for m in tar:
            names[os.path.normpath("/" + m.name).lstrip("/")] = _mtime_ns(m) if m.isdir() else None

    if layer.compression == "zstd":
        zstd = ["zstd", "-dc", str(layer.path)]
        with (
            subprocess.Popen(zstd, stdout=subprocess.PIPE) as proc,
            tarfile.open(fileobj=proc.stdout, mode="r|") as tar,
        ):
            add(tar)
        if proc.returncode != 0:
            raise BenchError(f"zstd -dc {layer.path} failed (exit status {proc.returncode})")
    else:
        with tarfile.open(layer.path, mode="r|*") as tar:
            add(tar)
    return names


def restore_dir_mtimes(root: Path, members: dict[str, int | None]) -> None:
    """Set every directory that has a tar entry to that entry's mtime.  GNU tar sets
    them itself, but replacing its placeholders for symlinks with ".." or absolute
    targets (done last) bumps their parents' mtimes again."""
    for rel, mtime_ns in members.items():
        path = root / rel if rel not in ("", ".") else root
        if mtime_ns is None:
            continue
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode) and st.st_mtime_ns != mtime_ns:
                os.utime(path, ns=(st.st_atime_ns, mtime_ns), follow_symlinks=False)


def fix_implied_dirs(
    root: Path, members: dict[str, int | None], lowers_top_first: Sequence[Path]
) -> int:
    """Directories tar made up for a child's path (no entry of their own) get the
    metadata of the same directory in the nearest lower layer, as an overlay
    snapshotter's applier does (containerd's mkparent); with none below: 0755
    root:root, mtime 0 (what snapshotter's merge shows).  Returns how many."""
    fixed = 0
    for dirpath, _dirs, _files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == "." or rel in members:
            continue
        src = None
        for lower in lowers_top_first:
            with contextlib.suppress(OSError):
                st = os.lstat(lower / rel)
                if stat.S_ISDIR(st.st_mode):
                    src = st
                    break
        if src is None:
            os.chown(dirpath, 0, 0)
            os.chmod(dirpath, 0o755)
            os.utime(dirpath, ns=(0, 0))
        else:
            os.chown(dirpath, src.st_uid, src.st_gid)
            os.chmod(dirpath, stat.S_IMODE(src.st_mode))
            os.utime(dirpath, ns=(src.st_atime_ns, src.st_mtime_ns))
        fixed += 1
    return fixed


# --------------------------------------------------------------------------- tools


@dataclass(frozen=True)
class Target:
    """One image, as each tool mounts it."""

    name: str
    digest: str  # in the snapshotter store
    lowers: list[Path]  # base first

    @property
    def lowerdir(self) -> str:
        return ":".join(str(p) for p in reversed(self.lowers))


class Tool:
    name = ""
    short = ""

    def mount_cmd(self, target: Target, mnt: Path) -> list[str]:
        raise NotImplementedError

    def umount(self, mnt: Path) -> None:
        raise NotImplementedError

    def daemon_pid(self, mnt: Path) -> int | None:
        return None

    def before_first_mount(self) -> None:
        pass

    def command(self) -> str:
        raise NotImplementedError


class Snapshotter(Tool):
    name = "snapshotter"
    short = "snap"

    def __init__(self, cmd: list[str], root: Path):
        self.cmd = cmd
        self.root = root

    def mount_cmd(self, target: Target, mnt: Path) -> list[str]:
        return [*self.cmd, "--root", str(self.root), "mount", target.digest, str(mnt)]

    def umount(self, mnt: Path) -> None:
        run([*self.cmd, "--root", str(self.root), "umount", str(mnt)], "snapshotter umount")

    def daemon_pid(self, mnt: Path) -> int | None:
        for rec in (self.root / "mounts").glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(rec.read_text())
                if doc.get("mountpoint") == str(mnt):
                    return int(doc["pid"])
        return None

    def before_first_mount(self) -> None:
        # The merged tree is what pull built; the first mount reads it cold (below).
        pass

    def command(self) -> str:
        return f"{shlex.join(self.cmd)} --root STORE mount DIGEST MNT"


class FuseOverlayfs(Tool):
    name = "fuse-overlayfs"
    short = "fuse-ovl"

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}

    def mount_cmd(self, target: Target, mnt: Path) -> list[str]:
        return ["fuse-overlayfs", "-o", f"lowerdir={target.lowerdir}", str(mnt)]

    def daemon_pid(self, mnt: Path) -> int | None:
        if str(mnt) in self.pids and alive(self.pids[str(mnt)]):
            return self.pids[str(mnt)]
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if (
                argv
                and os.path.basename(argv[0]) == b"fuse-overlayfs"
                and os.fsencode(str(mnt)) in argv
            ):
                self.pids[str(mnt)] = int(entry.name)
                return int(entry.name)
        return None

    def umount(self, mnt: Path) -> None:
        pid = self.daemon_pid(mnt)
        run(["fusermount3", "-u", str(mnt)], "fusermount3 -u")
        wait_gone(pid)
        self.pids.pop(str(mnt), None)

    def command(self) -> str:
        return "fuse-overlayfs -o lowerdir=LN:...:L1 MNT"


class KernelOverlay(Tool):
    name = "kernel overlay"
    short = "kernel"

    def mount_cmd(self, target: Target, mnt: Path) -> list[str]:
        return [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"ro,lowerdir={target.lowerdir}",
            str(mnt),
        ]

    def umount(self, mnt: Path) -> None:
        run(["umount", str(mnt)], "umount")

    def command(self) -> str:
        return "mount -t overlay overlay -o ro,lowerdir=LN:...:L1 MNT"


# --------------------------------------------------------------------------- measurements

# (key, label, unit), in the order of issue 11's table; "s" lines are best (min) of
# the runs, "MiB" lines the max.  par<N> lines are added per --readers value.
METRICS: list[tuple[str, str, str]] = [
    ("walk_cold", "first metadata walk (find -printf, caches dropped)", "s"),
    ("walk_warm", "repeated walk", "s"),
    ("read_cold", "first read of every file (tar -c, caches dropped)", "s"),
    ("read_warm", "repeated read of every file", "s"),
    ("dd_cold", "1 GiB sequential read (dd bs=1M), cold", "s"),
    ("dd_warm", "1 GiB sequential read, repeated", "s"),
    ("mount", "first mount (caches dropped)", "s"),
    ("remount", "mount again", "s"),
    ("rss_walk", "daemon RSS after the walks", "MiB"),
    ("rss_read", "daemon RSS after reading everything", "MiB"),
]
CPU_METRIC = ("cpu_daemon", "daemon CPU time, walks + reads", "s")


def metrics(readers: Sequence[int]) -> list[tuple[str, str, str]]:
    par = [
        (f"par{n}", f"first read of every file, {n} parallel reader{'s' if n > 1 else ''}", "s")
        for n in readers
    ]
    return [*METRICS, *par, CPU_METRIC]


@dataclass
class Results:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float | None) -> None:
        if value is not None:
            self.values.setdefault(key, []).append(value)

    def last(self, key: str) -> float | None:
        vals = self.values.get(key)
        return vals[-1] if vals else None

    def best(self, key: str, unit: str) -> float | None:
        vals = self.values.get(key)
        if not vals:
            return None
        return max(vals) if unit == "MiB" else min(vals)


def mount_and_wait(tool: Tool, target: Target, mnt: Path) -> float:
    """Time from the mount command's start until `mnt` lists the mounted root."""
    parent_dev = os.stat(mnt.parent).st_dev
    cmd = tool.mount_cmd(target, mnt)
    start = time.perf_counter()
    run(cmd, f"{tool.name} mount")
    while True:
        with contextlib.suppress(OSError):
            if os.stat(mnt).st_dev != parent_dev and os.listdir(mnt):
                return time.perf_counter() - start
        if time.perf_counter() - start > MOUNT_TIMEOUT:
            raise BenchError(f"{tool.name}: {mnt} not ready {MOUNT_TIMEOUT:.0f} s after mounting")
        time.sleep(0.0005)


def walk(mnt: Path) -> float:
    return timed(["find", str(mnt), "-printf", WALK_FORMAT], "find")


@dataclass(frozen=True)
class Entry:
    """One path of a mounted view, as `find -printf SCAN_FORMAT` shows it."""

    path: str  # relative, surrogate-escaped
    kind: str  # find's %y: f, d, l, c, ...
    size: int
    row: str  # path, type, mode, owner, mtime, link target, size (not for directories)


def scan(mnt: Path) -> list[Entry]:
    """Every entry below `mnt`, in find's order (a directory before its contents)."""
    out = run(
        ["find", str(mnt), "-mindepth", "1", "-printf", SCAN_FORMAT],
        "find (listing)",
        stdout=subprocess.PIPE,
    )
    fields = out.decode(errors="surrogateescape").split("\0")
    entries = []
    for i in range(0, len(fields) - 2, 3):
        stat_cols, link, path = fields[i].split(" "), fields[i + 1], fields[i + 2]
        kind, size = stat_cols[0], int(stat_cols[5])
        if kind == "d":
            stat_cols[5] = "-"  # directory sizes are the file system's business
        row = "\t".join([path, *stat_cols[:5], link, stat_cols[5]])
        entries.append(Entry(path, kind, size, row))
    return entries


def compare_listings(listings: dict[str, list[str]], reference: str) -> dict[str, Any]:
    """Each view's sorted rows against the reference's: counts and a few examples."""
    ref = set(listings.get(reference, []))
    out: dict[str, Any] = {"reference": reference, "entries": len(ref), "tools": {}}
    for name, rows in listings.items():
        if name == reference:
            continue
        mine = set(rows)
        only_ref, only_mine = sorted(ref - mine), sorted(mine - ref)
        out["tools"][name] = {
            "entries": len(mine),
            "missing_or_different": len(only_ref),
            "extra_or_different": len(only_mine),
            "examples": {reference: only_ref[:5], name: only_mine[:5]},
        }
    return out


def split_for_readers(entries: Sequence[Entry], readers: int) -> list[list[str]]:
    """Disjoint sets of subtrees (paths relative to the root) covering every non-directory
    entry, for `readers` readers: directories heavier than 1/(UNITS_PER_READER * readers)
    of the whole are split into their children, and the pieces dealt heaviest first to
    the lightest set.  Weight: bytes of regular files plus ENTRY_WEIGHT per entry.  Each
    set keeps find's order; empty sets are dropped."""
    order = {e.path: i for i, e in enumerate(entries)}
    kind = {e.path: e.kind for e in entries}
    children: dict[str, list[str]] = {"": []}
    weight: dict[str, int] = {}
    for e in entries:
        children.setdefault(os.path.dirname(e.path), []).append(e.path)
    for e in reversed(entries):  # children before their directory
        own = ENTRY_WEIGHT + (e.size if e.kind == "f" else 0)
        weight[e.path] = own + sum(weight[c] for c in children.get(e.path, []))
    total = sum(weight[c] for c in children[""])
    limit = total / (UNITS_PER_READER * readers)
    units: list[str] = []
    stack = list(children[""])
    while stack:
        p = stack.pop()
        if kind[p] == "d" and weight[p] > limit and children.get(p):
            stack.extend(children[p])
        else:
            units.append(p)
    sets: list[list[str]] = [[] for _ in range(readers)]
    loads = [0] * readers
    for u in sorted(units, key=lambda p: (-weight[p], order[p])):
        i = loads.index(min(loads))
        sets[i].append(u)
        loads[i] += weight[u]
    return [sorted(s, key=order.__getitem__) for s in sets if s]


@dataclass
class TarRead:
    seconds: float
    nbytes: int
    problems: list[str]  # tar's complaints, if any


def tar_read(mnt: Path, lists: Sequence[Path] | None) -> TarRead:
    """`tar -c` of the whole view (lists None) or one tar per NUL-separated list of
    paths, all at once, each read to the end through a pipe by a thread here."""
    cmds = (
        [[*TAR_READ, "-C", str(mnt), "."]]
        if lists is None
        else [
            [*TAR_READ, "-C", str(mnt), "--null", "--verbatim-files-from", "-T", str(p)]
            for p in lists
        ]
    )
    counts = [0] * len(cmds)

    def drain(i: int, fd: int) -> None:
        buf = bytearray(1 << 20)
        while n := os.readv(fd, [buf]):
            counts[i] += n

    with contextlib.ExitStack() as stack:
        errs = [stack.enter_context(tempfile.TemporaryFile()) for _ in cmds]
        start = time.perf_counter()
        procs = [
            stack.enter_context(
                subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
            )
            for cmd, err in zip(cmds, errs, strict=True)
        ]
        threads = []
        for i, proc in enumerate(procs):
            assert proc.stdout is not None
            t = threading.Thread(target=drain, args=(i, proc.stdout.fileno()))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        statuses = [proc.wait() for proc in procs]
        seconds = time.perf_counter() - start
        problems = []
        for status, err in zip(statuses, errs, strict=True):
            err.seek(0)
            lines = err.read().decode(errors="replace").splitlines()
            if status != 0 or lines:
                problems.append(f"tar exit status {status}: " + " | ".join(lines[:3]))
    return TarRead(seconds, sum(counts), problems)


@dataclass
class Mountpoints:
    work: Path

    def get(self, tool: Tool, target: Target) -> Path:
        p = self.work / "mnt" / f"{tool.short}-{target.name}"
        p.mkdir(parents=True, exist_ok=True)
        return p


@contextlib.contextmanager
def mounted(tool: Tool, target: Target, mnt: Path) -> Iterator[float]:
    seconds = mount_and_wait(tool, target, mnt)
    try:
        yield seconds
    finally:
        if is_mounted(mnt):
            tool.umount(mnt)


@dataclass
class Bench:
    """One image of the benchmark and everything measured on it."""

    name: str  # "debian" or "realtree"
    ref: str
    image: Image
    main: Target
    big: Target  # where the 1 GiB file is: main itself, or an image of its own
    big_path: str  # of the 1 GiB file, in big
    reader_lists: dict[int, list[Path]] = field(default_factory=dict)
    summary: str = ""
    results: dict[str, Results] = field(default_factory=dict)
    listings: dict[str, list[str]] = field(default_factory=dict)
    read_bytes: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)


def prepare_readers(
    bench: Bench, entries: Sequence[Entry], readers: Sequence[int], dest: Path
) -> None:
    """Write each reader's list of paths (NUL-separated) for every --readers value."""
    dest.mkdir(parents=True, exist_ok=True)
    for n in readers:
        files = []
        for i, paths in enumerate(split_for_readers(entries, n)):
            p = dest / f"{bench.name}-{n}-{i}.list"
            p.write_bytes(b"".join(os.fsencode(x) + b"\0" for x in paths))
            files.append(p)
        bench.reader_lists[n] = files


def one_round(
    tool: Tool,
    bench: Bench,
    mps: Mountpoints,
    first_round: bool,
    log: Callable[[str], None],
) -> None:
    res = bench.results.setdefault(tool.name, Results())
    problems = bench.problems.setdefault(tool.name, [])
    nbytes = bench.read_bytes.setdefault(tool.name, {})

    def tar(mnt: Path, key: str, lists: Sequence[Path] | None) -> None:
        r = tar_read(mnt, lists)
        res.add(key, r.seconds)
        nbytes[key] = r.nbytes
        problems.extend(f"{key}: {p}" for p in r.problems if f"{key}: {p}" not in problems)

    def dd(mnt: Path) -> None:
        drop_caches()
        cmd = ["dd", f"if={mnt / bench.big_path}", "of=/dev/null", "bs=1M"]
        res.add("dd_cold", timed(cmd, "dd"))
        res.add("dd_warm", timed(cmd, "dd"))

    mnt = mps.get(tool, bench.main)
    tool.before_first_mount()
    drop_caches()  # a first mount: nothing of the image in memory
    with mounted(tool, bench.main, mnt) as t_mount:
        res.add("mount", t_mount)
        pid = tool.daemon_pid(mnt)
        cpu0 = proc_cpu_seconds(pid) if pid else None
        drop_caches()
        res.add("walk_cold", walk(mnt))
        res.add("walk_warm", walk(mnt))
        if pid:
            rss = proc_status(pid, "VmRSS")
            res.add("rss_walk", rss / 2**20 if rss is not None else None)
        if first_round:
            bench.listings[tool.name] = sorted(e.row for e in scan(mnt))  # untimed, warm
        drop_caches()
        tar(mnt, "read_cold", None)
        tar(mnt, "read_warm", None)
        if pid:
            rss = proc_status(pid, "VmRSS")
            res.add("rss_read", rss / 2**20 if rss is not None else None)
            cpu1 = proc_cpu_seconds(pid)
            if cpu0 is not None and cpu1 is not None:
                res.add("cpu_daemon", cpu1 - cpu0)
        for n, lists in bench.reader_lists.items():
            drop_caches()
            tar(mnt, f"par{n}", lists)
    with mounted(tool, bench.main, mnt) as t_remount:
        res.add("remount", t_remount)
        if bench.big is bench.main:
            dd(mnt)
    if bench.big is not bench.main:
        bmnt = mps.get(tool, bench.big)
        with mounted(tool, bench.big, bmnt):
            dd(bmnt)

    def s(key: str) -> str:
        v = res.last(key)
        return "n/a" if v is None else f"{v:.2f}"

    par = " ".join(s(f"par{n}") for n in bench.reader_lists)
    log(
        f"{tool.name:<15} mount {s('mount')}/{s('remount')}  "
        f"walk {s('walk_cold')}/{s('walk_warm')}  read {s('read_cold')}/{s('read_warm')}  "
        f"dd {s('dd_cold')}/{s('dd_warm')}  readers {par} s"
    )


# --------------------------------------------------------------------------- reporting


def mount_tool_versions() -> dict[str, str | None]:
    return {
        "fuse-overlayfs": _version_line(["fuse-overlayfs", "--version"], "fuse-overlayfs"),
        "libfuse": _version_line(["fuse-overlayfs", "--version"], "FUSE library"),
        "find": first_line(["find", "--version"]),
        "tar": first_line(["tar", "--version"]),
    }


def _version_line(cmd: list[str], word: str) -> str | None:
    """The first line of `cmd`'s output (stdout and stderr) that mentions `word`."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (out.stdout + out.stderr).splitlines()
    return next((line.strip() for line in lines if word in line), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def report_image(bench: Bench, tools: Sequence[Tool], readers: Sequence[int]) -> dict[str, Any]:
    subject, fuse, kernel = (t.name for t in tools)
    rows = []
    for key, label, unit in metrics(readers):
        best = {t.name: bench.results[t.name].best(key, unit) for t in tools}
        rows.append(
            {
                "metric": key,
                "label": label,
                "unit": unit,
                "tools": {
                    t.name: {
                        "runs": bench.results[t.name].values.get(key, []),
                        "best": best[t.name],
                        "ratio_to_kernel": _ratio(best[t.name], best[kernel]),
                    }
                    for t in tools
                },
                "ratio_snapshotter_over_fuse_overlayfs": _ratio(best[subject], best[fuse]),
            }
        )
    return {
        "ref": bench.ref,
        "layers": len(bench.image.layers),
        "summary": bench.summary,
        "big_file": f"{bench.big.name}:/{bench.big_path}",
        "readers": {n: len(lists) for n, lists in bench.reader_lists.items()},
        "listing_check": compare_listings(bench.listings, kernel),
        "read_bytes": bench.read_bytes,
        "problems": {t: p for t, p in bench.problems.items() if p},
        "metrics": rows,
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if unit == "MiB" else f"{value:.3f}"


def _fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}"


def print_table(doc: dict[str, Any]) -> None:
    m = doc["machine"]
    print(
        f"machine: nproc={m['nproc']} {m['machine']} kernel {m['kernel']}"
        f" mem={(m['mem_total_bytes'] or 0) / 2**30:.1f} GiB  work dir {m['work_dir']}"
        f" ({m['work_fs']})"
    )
    print(
        f"timing:  wall clock, best of {doc['runs']} runs (RSS: max of the runs); "
        f"this run took {doc['seconds_total'] / 60:.1f} min"
    )
    tools = list(doc["commands"])
    subject, fuse, kernel = tools
    short = {subject: "snap", fuse: "fuse-ovl", kernel: "kernel"}
    for name, img in doc["images"].items():
        print()
        print(f"image {name}: {img['ref']}  {img['layers']} layers, {img['summary']}")
        header = [
            "line",
            "unit",
            *tools,
            f"{short[subject]}/{short[kernel]}",
            f"{short[fuse]}/{short[kernel]}",
            f"{short[subject]}/{short[fuse]}",
        ]
        rows = [header]
        for row in img["metrics"]:
            cells = [row["label"], row["unit"]]
            cells += [_fmt(row["tools"][t]["best"], row["unit"]) for t in tools]
            cells += [_fmt_ratio(row["tools"][t]["ratio_to_kernel"]) for t in (subject, fuse)]
            cells.append(_fmt_ratio(row["ratio_snapshotter_over_fuse_overlayfs"]))
            rows.append(cells)
        print_rows(rows, ragged_last=False)
        chk = img["listing_check"]
        print(
            f"listing check ({chk['entries']} entries in {chk['reference']}): "
            + ", ".join(
                f"{t}: {v['missing_or_different'] + v['extra_or_different']} differing lines"
                for t, v in chk["tools"].items()
            )
        )
        for t, v in chk["tools"].items():
            for who, examples in v["examples"].items():
                for ex in examples:
                    print(f"  {t} differs, {who} has: {ex!r}")
        tar_bytes = {t: b.get("read_cold") for t, b in img["read_bytes"].items()}
        same = len(set(tar_bytes.values())) == 1
        print(
            "tar -c of the view: "
            + ", ".join(
                f"{t}: {b / 1e6:.1f} MB" if b else f"{t}: n/a" for t, b in tar_bytes.items()
            )
            + ("" if same else "  (DIFFERENT)")
        )
        print(
            "readers: "
            + ", ".join(f"{n}: {k} set{'s' if k > 1 else ''}" for n, k in img["readers"].items())
            + f"; 1 GiB file: {img['big_file']}"
        )
        for t, problems in img["problems"].items():
            for p in problems[:5]:
                print(f"  {t}: {p}")
    print()
    print(
        f"ratios: {short[subject]} = {subject}, {short[fuse]} = {fuse}, "
        f"{short[kernel]} = {kernel}; below 1 the first is faster (or smaller)."
    )


# --------------------------------------------------------------------------- main


def parse_readers(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if any(n < 1 for n in values):
        raise argparse.ArgumentTypeError("reader counts must be >= 1")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = bench_parser(
        __doc__,
        layout_help="the Debian image's OCI layout (default: $BENCH_DIR/layout, "
        "from scripts/bench-image)",
        runs=3,
        work_dir_help="where the stores, lower dirs and mount points are made "
        "(default: $BENCH_DIR, next to the layouts)",
    )
    p.add_argument(
        "--image",
        choices=("both", "debian", "realtree"),
        default="both",
        help="which image(s) to run (default: both)",
    )
    p.add_argument(
        "--big-layout",
        type=Path,
        default=DEFAULT_BENCH_DIR / "layout-bigfile",
        help="where the 1 GiB-file image of the debian run is built once and reused "
        "(default: $BENCH_DIR/layout-bigfile)",
    )
    p.add_argument(
        "--realtree-layout",
        type=Path,
        default=REALTREE_LAYOUT,
        help="the real-tree image's OCI layout, built by scripts/realtree_image.py when "
        "missing (default: $BENCH_DIR/realtree)",
    )
    p.add_argument("--realtree-tag", default=REALTREE_TAG, help="its tag (default: realtree)")
    p.add_argument(
        "--readers",
        type=parse_readers,
        default=[1, 4, 8],
        help="parallel reader counts, comma-separated (default: 1,4,8)",
    )
    return parse_bench_args(p, argv)


def pull(snap: Snapshotter, layout: Path, tag: str) -> str:
    out = run(
        [*snap.cmd, "--root", str(snap.root), "pull", "--quiet", f"oci:{layout}:{tag}"],
        "snapshotter pull",
        stdout=subprocess.PIPE,
    )
    digest = out.decode().strip().splitlines()[-1].strip()
    if not digest.startswith("sha256:"):
        raise BenchError(f"snapshotter pull printed {out.decode()!r}, not a digest")
    return digest


def prepare(
    name: str,
    layout: Path,
    tag: str,
    big_layout: Path | None,
    snap: Snapshotter,
    work_root: Path,
    readers: Sequence[int],
    log: Callable[[str], None],
) -> Bench:
    """Pull, extract the lowers, list the view (through kernel overlayfs) and split it
    between readers: all untimed."""
    image = load_image(layout, tag)
    log(f"preparing {name} (untimed): {layout}:{tag}")
    warm_page_cache(image)
    digest = pull(snap, layout, tag)
    log(f"  snapshotter pulled {digest}")
    main = Target(name, digest, extract_lowers(image, work_root / "lower" / name, log))
    if big_layout is None:
        big, big_path = main, BIG_NAME
    else:
        build_big_layout(big_layout, BIG_TAG)
        big_digest = pull(snap, big_layout, BIG_TAG)
        big_lowers = extract_lowers(
            load_image(big_layout, BIG_TAG), work_root / "lower" / f"{name}-big", log
        )
        # Kernel overlayfs wants two lower dirs when there is no upper: add an empty
        # base under the one layer, for both peers alike.
        empty = work_root / "lower" / f"{name}-big" / "empty"
        empty.mkdir()
        big, big_path = Target(f"{name}-big", big_digest, [empty, *big_lowers]), BIG_NAME
    bench = Bench(name, f"{layout}:{tag}", image, main, big, big_path)
    kernel = KernelOverlay()
    mnt = Mountpoints(work_root).get(kernel, main)
    with mounted(kernel, main, mnt):
        entries = scan(mnt)
    prepare_readers(bench, entries, readers, work_root / "readers")
    n_dirs = sum(1 for e in entries if e.kind == "d")
    files = [e for e in entries if e.kind == "f"]
    bench.summary = (
        f"{len(entries)} entries ({n_dirs} dirs, {len(files)} regular files, "
        f"{sum(e.size for e in files) / 1e6:.1f} MB in them), "
        f"{image.compressed_bytes / 1e6:.1f} MB compressed"
    )
    log(f"  {bench.summary}")
    return bench


def cleanup(work_root: Path, tools: Sequence[Tool], log: Callable[[str], None]) -> bool:
    """Unmount whatever is still mounted under work_root; True if nothing is left."""
    for mp in mounts_under(work_root):
        log(f"cleanup: unmounting {mp}")
        pid = next((p for t in tools if (p := t.daemon_pid(Path(mp))) is not None), None)
        for cmd in (["umount", mp], ["umount", "-l", mp]):
            if subprocess.run(cmd, capture_output=True, check=False).returncode == 0:
                break
        wait_gone(pid)
    left = mounts_under(work_root)
    if left:
        log(f"cleanup: still mounted, leaving {work_root} in place: {', '.join(left)}")
    return not left


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:5.0f} s] {msg}", file=sys.stderr, flush=True)

    snapshotter_cmd = shlex.split(args.snapshotter)
    if not snapshotter_cmd:
        log("bench_mount: --snapshotter is empty")
        return 2
    if os.geteuid() != 0:
        log("bench_mount: must run as root (drop_caches, mount -t overlay, tar as root)")
        return 1
    for exe in (snapshotter_cmd[0], "fuse-overlayfs", "fusermount3", "tar", "find", "dd", "umoci"):
        if shutil.which(exe) is None:
            log(f"bench_mount: {exe}: command not found")
            return 1

    layout: Path = args.layout.resolve()
    realtree_layout: Path = args.realtree_layout.resolve()
    parent = args.work_dir.resolve() if args.work_dir else DEFAULT_BENCH_DIR
    parent.mkdir(parents=True, exist_ok=True)
    work_root = Path(tempfile.mkdtemp(prefix="bench-mount-", dir=parent))
    snap = Snapshotter(snapshotter_cmd, work_root / "store")
    tools: list[Tool] = [snap, FuseOverlayfs(), KernelOverlay()]
    benches: list[Bench] = []
    clean = False
    try:
        snap.root.mkdir()
        if args.image in ("both", "debian"):
            big_layout = args.big_layout.resolve()
            benches.append(
                prepare("debian", layout, args.tag, big_layout, snap, work_root, args.readers, log)
            )
        if args.image in ("both", "realtree"):
            build_realtree_layout(realtree_layout, args.realtree_tag, log=log)
            benches.append(
                prepare(
                    "realtree",
                    realtree_layout,
                    args.realtree_tag,
                    None,
                    snap,
                    work_root,
                    args.readers,
                    log,
                )
            )
        os.sync()
        mps = Mountpoints(work_root)
        for bench in benches:
            for r in range(args.runs):
                k = r % len(tools)
                for tool in [*tools[k:], *tools[:k]]:
                    prefix = f"  {bench.name} run {r + 1}/{args.runs}  "
                    log(f"{prefix}{tool.name} ...")

                    def round_log(msg: str, prefix: str = prefix) -> None:
                        log(prefix + msg)

                    one_round(tool, bench, mps, r == 0, round_log)
        machine = machine_info(work_root, snapshotter_cmd, mount_tool_versions())
    except BenchError as e:
        log(f"bench_mount: {e}")
        return 1
    finally:
        clean = cleanup(work_root, tools, log)
        if clean:
            remove_tree(work_root)

    doc = {
        "machine": machine,
        "runs": args.runs,
        "seconds_total": time.monotonic() - started,
        "commands": {t.name: t.command() for t in tools},
        "images": {b.name: report_image(b, tools, args.readers) for b in benches},
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        print_table(doc)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
