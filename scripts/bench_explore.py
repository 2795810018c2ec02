#!/usr/bin/env python3
"""Time the explore commands (export, diff, ls -R, du, wasted, blame, diff --layer) against
what users run today to get the same answers, on the Debian bench image and a wide one.

    python scripts/bench_explore.py [--layout DIR] [--tag bench] [--wide-layout DIR]
                                    [--wide-tag 1] [--runs 3] [--snapshotter CMD] [--json]

Per image, prepared once (untimed): the image is pulled into a fresh store; a second
image is derived from it that shares every layer but the last and replaces that one with
a small layer (a few files changed, one added, one deleted: "what the last build
changed"), written into a copy of the layout's index and pulled too; both images are
mounted with ``snapshotter mount``; every command runs once so merged trees are cached
(the issue's "once the tree is cached").

Timed (wall clock, best of --runs, warm page cache; a ratio < 1 means snapshotter wins):

  export             snapshotter export IMG -o OUT.tar
    vs umoci+tar     umoci unpack --image LAYOUT:TAG B && tar -C B/rootfs -cf OUT.tar .
                     (what users run today to flatten an image: crane needs a registry)
    vs tar of mount  tar -C MNT -cf OUT.tar .   (the same view, read through FUSE)
  diff A B           snapshotter diff IMG DERIVED        (merged views; exit 1 = differ)
    vs diff -r       diff -r --no-dereference MNT_A MNT_B   (the mounted views)
  ls -R              snapshotter ls -R -l --bytes IMG
    vs find          find MNT -printf '%M %U:%G %s %T@ %p -> %l\\n' on the mount, warm
    vs mount+find    snapshotter mount IMG M && find M -printf ... && snapshotter umount M
                     (what it takes without a mount already up)
  du                 snapshotter du --bytes IMG
    vs du            du --apparent-size -b MNT, warm
    vs mount+du      snapshotter mount, du --apparent-size -b, snapshotter umount
  wasted             snapshotter wasted IMG     (no peer runs here: dive needs docker)
  diff --layer       snapshotter diff IMG --layer N   (N = the last layer)
  blame              snapshotter blame IMG PATH       (a path the last layer touched)

Every tar is written as root with --numeric-owner --xattrs, and every output goes to a
file on the work dir's file system (GNU tar skips reading content when writing to
/dev/null).  Needs root (mount, umoci as root), umoci, GNU tar, find, du and diff.
Reuses bench_pull.py's layout parsing, options and machine line.  See docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_mount import run
from bench_pull import (
    BenchError,
    Image,
    bench_parser,
    first_line,
    load_image,
    machine_info,
    parse_bench_args,
    print_rows,
    remove_tree,
    warm_page_cache,
)

DERIVED_TAG = "derived"
TAR_FLAGS = ["--numeric-owner", "--xattrs", "--xattrs-include=*"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the derived image


def _blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    if not path.exists():
        path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _json_blob(layout: Path, doc: dict[str, Any]) -> dict[str, Any]:
    return _blob(layout, json.dumps(doc, separators=(",", ":")).encode())


def _member_names(layer_path: Path, compression: str, limit: int) -> list[str]:
    """The first ``limit`` regular files of a layer blob, in tar order."""
    raw: Any
    if compression == "gzip":
        raw = gzip.open(layer_path)  # noqa: SIM115 - closed by the with below
    elif compression == "zstd":
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(layer_path.open("rb"))
    else:
        raw = layer_path.open("rb")
    out: list[str] = []
    with raw, tarfile.open(fileobj=raw, mode="r|") as tf:
        for member in tf:
            if member.isfile() and member.size > 0 and ".wh." not in member.name:
                out.append(member.name.removeprefix("./"))
                if len(out) >= limit:
                    break
    return out


def derive_image(image: Image, dest: Path) -> tuple[Path, str, list[str]]:
    """A layout with ``image`` and DERIVED_TAG: every layer of ``image`` but the last,
    then one small layer changing files the last layer wrote.  Returns the layout, the
    derived tag and the paths the new layer touches."""
    if dest.exists():
        remove_tree(dest)
    shutil.copytree(image.layout, dest, copy_function=os.link)
    names: list[str] = []
    for layer in reversed(image.layers):  # files the last layers wrote first
        names += [n for n in _member_names(layer.path, layer.compression, 3) if n not in names]
        if len(names) >= 3:
            break
    names = names[:3]
    if len(names) < 2:
        raise BenchError(f"{image.layout}: too few files to derive an image from")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in names[:-1]:
            data = f"changed by bench_explore: {name}\n".encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
        added = tarfile.TarInfo("bench-explore-added.txt")
        added.size, added.mtime = 6, 1_700_000_000
        tf.addfile(added, io.BytesIO(b"added\n"))
        parent, _, base = names[-1].rpartition("/")
        gone = tarfile.TarInfo(f"{parent}/.wh.{base}" if parent else f".wh.{base}")
        tf.addfile(gone)
    tar = buf.getvalue()
    layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}
    layer_desc.update(_blob(dest, gzip.compress(tar, 1)))
    manifest = json.loads(image.other_blobs[-2].read_bytes())
    config = json.loads(image.other_blobs[-1].read_bytes())
    config["rootfs"]["diff_ids"][-1] = f"sha256:{hashlib.sha256(tar).hexdigest()}"
    history = [h for h in config.get("history", []) if not h.get("empty_layer")]
    if history:
        history[-1]["created_by"] = "bench_explore: change 2 files, add 1, delete 1"
    config_desc = {"mediaType": manifest["config"]["mediaType"], **_json_blob(dest, config)}
    manifest["config"] = config_desc
    manifest["layers"][-1] = layer_desc
    manifest_desc = {
        "mediaType": manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json")
    }
    manifest_desc.update(_json_blob(dest, manifest))
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": DERIVED_TAG}
    index = json.loads((dest / "index.json").read_text())
    index["manifests"] = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != DERIVED_TAG
    ]
    index["manifests"].append(manifest_desc)
    (dest / "index.json").unlink()  # a hard link to the original: write a new file
    (dest / "index.json").write_text(json.dumps(index))
    touched = [*names[:-1], names[-1]]
    return dest, DERIVED_TAG, touched


# --------------------------------------------------------------------------- lines


@dataclass
class Line:
    """One timed command and the peers it is compared with."""

    name: str
    command: list[str]
    peers: dict[str, list[list[str]]] = field(default_factory=dict)
    ok: tuple[int, ...] = (0,)
    times: dict[str, list[float]] = field(default_factory=dict)

    def timed(self, who: str, cmds: Sequence[Sequence[str]], before: Callable[[], None]) -> None:
        before()
        start = time.perf_counter()
        for cmd in cmds:
            ok = self.ok if cmd is self.command else (0, 1) if cmd[0] == "diff" else (0,)
            run(cmd, f"{self.name}: {who}", ok=ok)
        self.times.setdefault(who, []).append(time.perf_counter() - start)


@contextlib.contextmanager
def mounted(snap: list[str], image: str, mnt: Path) -> Iterator[Path]:
    mnt.mkdir(parents=True, exist_ok=True)
    run([*snap, "mount", image, str(mnt)], f"mount {image}")
    try:
        yield mnt
    finally:
        subprocess.run([*snap, "umount", str(mnt)], capture_output=True, check=False)


def bench_image(
    snap_cmd: list[str], image: Image, work: Path, runs: int
) -> tuple[dict[str, Any], list[Line]]:
    store = work / "store"
    snap = [*snap_cmd, "--root", str(store)]
    log(f"preparing {image.layout}:{image.tag} in {work} (untimed)")
    warm_page_cache(image)
    run([*snap, "pull", "-q", f"oci:{image.layout}:{image.tag}", "--name", "a:1"], "pull")
    derived, tag, touched = derive_image(image, work / "derived-layout")
    run([*snap, "pull", "-q", f"oci:{derived}:{tag}", "--name", "b:1"], "pull derived")
    layers = len(image.layers)
    blame_path = "/" + touched[0]
    out = work / "out.tar"
    bundle = work / "bundle"

    def clean_out() -> None:
        out.unlink(missing_ok=True)
        if bundle.exists():
            remove_tree(bundle)
        os.sync()

    with (
        mounted(snap, "a:1", work / "mnt-a") as mnt_a,
        mounted(snap, "b:1", work / "mnt-b") as mnt_b,
    ):
        find_fmt = r"%M %U:%G %s %T@ %p -> %l\n"
        mnt_c = work / "mnt-c"  # mounted and unmounted inside the timed commands
        mnt_c.mkdir()
        lines = [
            Line(
                "export",
                [*snap, "export", "a:1", "-o", str(out)],
                {
                    "umoci unpack + tar -c": [
                        ["umoci", "unpack", "--image", f"{image.layout}:{image.tag}", str(bundle)],
                        ["tar", "-C", str(bundle / "rootfs"), *TAR_FLAGS, "-cf", str(out), "."],
                    ],
                    "tar -c of the mount": [
                        ["tar", "-C", str(mnt_a), *TAR_FLAGS, "-cf", str(out), "."]
                    ],
                },
            ),
            Line(
                "diff A B (shared base)",
                [*snap, "diff", "a:1", "b:1"],
                {
                    "diff -r of the mounts": [
                        ["diff", "-r", "--no-dereference", str(mnt_a), str(mnt_b)]
                    ]
                },
                ok=(1,),
            ),
            Line(
                "ls -R -l",
                [*snap, "ls", "-R", "-l", "--bytes", "a:1"],
                {
                    "find -printf on the mount": [["find", str(mnt_a), "-printf", find_fmt]],
                    "mount + find -printf + umount": [
                        [*snap, "mount", "a:1", str(mnt_c)],
                        ["find", str(mnt_c), "-printf", find_fmt],
                        [*snap, "umount", str(mnt_c)],
                    ],
                },
            ),
            Line(
                "du",
                [*snap, "du", "--bytes", "a:1"],
                {
                    "du --apparent-size on the mount": [
                        ["du", "--apparent-size", "-b", str(mnt_a)]
                    ],
                    "mount + du + umount": [
                        [*snap, "mount", "a:1", str(mnt_c)],
                        ["du", "--apparent-size", "-b", str(mnt_c)],
                        [*snap, "umount", str(mnt_c)],
                    ],
                },
            ),
            Line("wasted", [*snap, "wasted", "a:1"]),
            Line(f"diff --layer {layers}", [*snap, "diff", "a:1", "--layer", str(layers)]),
            Line("blame", [*snap, "blame", "a:1", blame_path]),
        ]
        for line in lines:  # warm-up: merged trees cached, outputs checked to work
            line.timed("warm-up", [line.command], clean_out)
            for peer, cmds in line.peers.items():
                line.timed(f"warm-up {peer}", cmds, clean_out)
        for r in range(runs):
            for line in lines:
                order = [("snapshotter", [line.command]), *line.peers.items()]
                if r % 2:
                    order.reverse()
                for who, cmds in order:
                    line.timed(who, cmds, clean_out)
                    log(
                        f"  run {r + 1}/{runs}  {line.name:<24} {who:<32} "
                        f"{line.times[who][-1]:8.3f} s"
                    )
        entries = len(run([*snap, "ls", "-R", "a:1"], "ls -R", stdout=subprocess.PIPE).splitlines())
        size = len(run([*snap, "export", "a:1"], "export to a pipe", stdout=subprocess.PIPE))
    clean_out()
    info = {
        "ref": f"{image.layout}:{image.tag}",
        "layers": layers,
        "entries": entries,
        "tar_bytes": size,
        "compressed_bytes": image.compressed_bytes,
        "derived": f"{derived}:{tag}",
        "blame_path": blame_path,
    }
    return info, lines


def report_lines(lines: Sequence[Line]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        ours = min(line.times["snapshotter"])
        out.append(
            {
                "line": line.name,
                "command": shlex.join(line.command),
                "snapshotter_seconds": line.times["snapshotter"],
                "snapshotter_best": ours,
                "peers": [
                    {
                        "peer": peer,
                        "commands": [shlex.join(c) for c in cmds],
                        "seconds": line.times[peer],
                        "best": min(line.times[peer]),
                        "ratio_snapshotter_over_peer": ours / min(line.times[peer]),
                    }
                    for peer, cmds in line.peers.items()
                ],
            }
        )
    return out


def print_report(doc: dict[str, Any]) -> None:
    m = doc["machine"]
    print(
        f"machine: nproc={m['nproc']} {m['machine']} kernel {m['kernel']}"
        f" mem={(m['mem_total_bytes'] or 0) / 2**30:.1f} GiB  work dir {m['work_dir']}"
        f" ({m['work_fs']})"
    )
    print(f"timing:  wall clock, best of {doc['runs']} runs, warm page cache, trees cached")
    for img in doc["images"]:
        info = img["image"]
        print()
        print(
            f"image: {info['ref']}  {info['layers']} layers, {info['entries']} entries, "
            f"{info['tar_bytes'] / 1e6:.1f} MB as a tar, "
            f"{info['compressed_bytes'] / 1e6:.1f} MB compressed"
        )
        rows = [("line", "snapshotter s", "peer", "peer s", "snapshotter/peer")]
        for line in img["lines"]:
            first = True
            for peer in line["peers"] or [None]:
                rows.append(
                    (
                        line["line"] if first else "",
                        f"{line['snapshotter_best']:.3f}" if first else "",
                        peer["peer"] if peer else "-",
                        f"{peer['best']:.3f}" if peer else "",
                        f"{peer['ratio_snapshotter_over_peer']:.2f}" if peer else "",
                    )
                )
                first = False
        print_rows(rows, ragged_last=False)
    print()
    print("ratio < 1: snapshotter is faster than that way of getting the same answer.")


def parse_args(argv: Sequence[str] | None) -> Any:
    p = bench_parser(
        __doc__,
        layout_help="OCI image layout of the Debian bench image (default: $BENCH_DIR/layout; "
        "scripts/bench-image builds it)",
        runs=3,
        work_dir_help="where stores, mounts and outputs are made (default: /var/tmp)",
    )
    p.add_argument(
        "--wide-layout",
        type=Path,
        default=Path("/var/tmp/l100k"),
        help="OCI layout of the 100k-entry image (default: /var/tmp/l100k, written by "
        "scripts/wide_image.py when missing)",
    )
    p.add_argument("--wide-tag", default="1", help="its tag (default: 1)")
    p.add_argument("--only", choices=["bench", "wide"], help="run one of the two images")
    return parse_bench_args(p, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    snap_cmd = shlex.split(args.snapshotter)
    if os.geteuid() != 0:
        log("bench_explore: must run as root (mount, umoci unpack with owners)")
        return 1
    for exe in (snap_cmd[0], "umoci", "tar", "find", "du", "diff"):
        if shutil.which(exe) is None:
            log(f"bench_explore: {exe}: command not found")
            return 1
    wide: Path = args.wide_layout.resolve()
    if args.only != "bench" and not (wide / "index.json").is_file():
        log(f"writing the 100k-entry image to {wide}")
        here = Path(__file__).resolve().parent
        run([sys.executable, str(here / "wide_image.py"), str(wide)], "wide_image.py")
    targets = []
    if args.only != "wide":
        targets.append((args.layout.resolve(), args.tag))
    if args.only != "bench":
        targets.append((wide, args.wide_tag))
    parent = args.work_dir.resolve() if args.work_dir else Path("/var/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    work_root = Path(tempfile.mkdtemp(prefix="bench-explore-", dir=parent))
    images = []
    try:
        for n, (layout, tag) in enumerate(targets):
            image = load_image(layout, tag)
            info, lines = bench_image(snap_cmd, image, work_root / f"image{n}", args.runs)
            images.append({"image": info, "lines": report_lines(lines)})
        versions = {
            "umoci": first_line(["umoci", "--version"]),
            "tar": first_line(["tar", "--version"]),
        }
        machine = machine_info(work_root, snap_cmd, versions)
    except BenchError as e:
        log(f"bench_explore: {e}")
        return 1
    finally:
        remove_tree(work_root)
    doc = {"machine": machine, "runs": args.runs, "images": images}
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        print_report(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
