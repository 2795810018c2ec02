#!/usr/bin/env python3
"""Time importing one OCI image layout with snapshotter and with its peers.

    python scripts/bench_pull.py [--layout DIR] [--tag bench] [--runs 3]
                                 [--snapshotter CMD] [--json]

For the same layout, in one run, the wall-clock time of:

  snapshotter   CMD --root <fresh empty dir> pull --quiet oci:LAYOUT:TAG
  umoci         umoci unpack --image LAYOUT:TAG <fresh bundle>
  tar           for each layer blob, in manifest order, sequentially:
                tar -xf BLOB -C <fresh dir per layer> with the decompressor
                matching the layer media type (-z / pigz / --zstd)

Each tool runs --runs times; the best (minimum) time is reported along with
the ratio snapshotter/peer (< 1 means snapshotter is faster).  Runs are
interleaved (run 1 of every tool, then run 2, ...) with the tool order
rotated each round, so slow drift of the machine affects all tools alike.
Every run writes into a fresh directory on the same filesystem; removing it
and syncing dirty pages happens between runs, outside the timed region.  The
blobs are read once beforehand, untimed, so the page cache is warm for all.

Standard library only.  See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_BENCH_DIR = Path(os.environ.get("BENCH_DIR", "/var/tmp/snapshotter-bench"))
REF_NAME = "org.opencontainers.image.ref.name"
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}


class BenchError(Exception):
    """A failure that ends the benchmark with exit status 1."""


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layer:
    digest: str
    media_type: str
    size: int
    path: Path

    @property
    def compression(self) -> str:
        """ "gzip", "zstd" or "none", from the media type."""
        mt = self.media_type
        if mt.endswith(("+gzip", ".tar.gzip", ".gzip")):
            return "gzip"
        if mt.endswith(("+zstd", ".zstd")):
            return "zstd"
        if mt.endswith(("tar", ".tar")):
            return "none"
        raise BenchError(f"layer {self.digest}: unsupported media type {mt}")


@dataclass(frozen=True)
class Image:
    layout: Path
    tag: str
    manifest_digest: str
    layers: list[Layer]
    other_blobs: list[Path]  # index/manifest/config, read during warm-up

    @property
    def compressed_bytes(self) -> int:
        return sum(layer.size for layer in self.layers)

    def describe(self) -> dict[str, Any]:
        """The image as the benchmarks' --json reports show it."""
        return {
            "layout": str(self.layout),
            "tag": self.tag,
            "manifest": self.manifest_digest,
            "layers": [
                {"digest": layer.digest, "media_type": layer.media_type, "size": layer.size}
                for layer in self.layers
            ],
            "compressed_bytes": self.compressed_bytes,
        }


def _blob_path(layout: Path, digest: str) -> Path:
    algo, sep, hexpart = digest.partition(":")
    if not sep or not algo or not hexpart or "/" in digest:
        raise BenchError(f"malformed digest {digest!r}")
    return layout / "blobs" / algo / hexpart


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise BenchError(f"cannot read {path}: {e}") from e
    if not isinstance(doc, dict):
        raise BenchError(f"{path}: not a JSON object")
    return doc


def _pick_from_index(layout: Path, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """From a nested image index, the manifest for this machine's platform."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    for entry in entries:
        p = entry.get("platform", {})
        if p.get("os", "linux") == "linux" and p.get("architecture", arch) == arch:
            return entry
    raise BenchError(f"{layout}: nested index has no linux/{arch} manifest")


def load_image(layout: Path, tag: str) -> Image:
    """Parse index.json -> manifest (by ref.name == tag) -> layer descriptors."""
    index_path = layout / "index.json"
    index = _load_json(index_path)
    entries = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    matching = [m for m in entries if m.get("annotations", {}).get(REF_NAME) == tag]
    if not matching:
        tags = sorted({str(m.get("annotations", {}).get(REF_NAME)) for m in entries})
        raise BenchError(f"{layout}: no manifest tagged {tag!r} (tags: {', '.join(tags)})")
    desc = matching[0]
    other = [index_path]
    while desc.get("mediaType") in INDEX_TYPES:
        nested_path = _blob_path(layout, desc["digest"])
        other.append(nested_path)
        desc = _pick_from_index(layout, _load_json(nested_path).get("manifests", []))
    manifest_path = _blob_path(layout, desc["digest"])
    manifest = _load_json(manifest_path)
    other.append(manifest_path)
    if "config" in manifest:
        other.append(_blob_path(layout, manifest["config"]["digest"]))
    layers = []
    for d in manifest.get("layers", []):
        path = _blob_path(layout, d["digest"])
        layer = Layer(d["digest"], d["mediaType"], int(d["size"]), path)
        layer.compression  # noqa: B018 - validates the media type early
        layers.append(layer)
    if not layers:
        raise BenchError(f"{layout}:{tag} has no layers")
    for p in [*other, *(layer.path for layer in layers)]:
        if not p.is_file():
            raise BenchError(f"missing blob {p}")
    return Image(layout, tag, desc["digest"], layers, other)


def warm_page_cache(image: Image) -> None:
    """Read every blob once (untimed) so all tools start with a warm cache."""
    buf = bytearray(1 << 20)
    for p in [*image.other_blobs, *(layer.path for layer in image.layers)]:
        with p.open("rb", buffering=0) as f:
            while f.readinto(buf):
                pass


# --------------------------------------------------------------------------- tools


@dataclass
class Tool:
    """One contender.  `commands(workdir)` returns the commands of one run,
    executed sequentially inside the timed region; workdir is fresh and empty."""

    name: str
    commands: Callable[[Path], list[list[str]]]
    description: str
    is_subject: bool = False
    skip_reason: str | None = None  # set when the tool cannot handle this image
    times: list[float] = field(default_factory=list)
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (user, sys) per run

    @property
    def best_run(self) -> int:
        return min(range(len(self.times)), key=self.times.__getitem__)

    @property
    def best(self) -> float:
        return self.times[self.best_run]


def snapshotter_tool(cmd: list[str], image: Image) -> Tool:
    ref = f"oci:{image.layout}:{image.tag}"

    def commands(workdir: Path) -> list[list[str]]:
        root = workdir / "store"
        root.mkdir()
        return [[*cmd, "--root", str(root), "pull", "--quiet", ref]]

    return Tool(
        "snapshotter",
        commands,
        f"{shlex.join(cmd)} --root STORE pull --quiet {ref}",
        is_subject=True,
    )


def _umoci_version() -> tuple[int, ...] | None:
    line = first_line(["umoci", "--version"]) or ""
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", line)
    return tuple(int(x) for x in m.groups()) if m else None


def umoci_tool(image: Image) -> Tool:
    extra = ["--rootless"] if os.geteuid() != 0 else []
    ref = f"{image.layout}:{image.tag}"

    def commands(workdir: Path) -> list[list[str]]:
        return [["umoci", "unpack", *extra, "--image", ref, str(workdir / "bundle")]]

    tool = Tool(
        "umoci unpack", commands, shlex.join(["umoci", "unpack", *extra, "--image", ref, "BUNDLE"])
    )
    # umoci learnt zstd layers in 0.5.0; older ones refuse the media type.
    version = _umoci_version()
    if any(layer.compression == "zstd" for layer in image.layers) and (
        version is not None and version < (0, 5, 0)
    ):
        tool.skip_reason = f"umoci {'.'.join(map(str, version))} cannot read zstd layers"
    return tool


def tar_tools(image: Image) -> list[Tool]:
    """GNU tar variants matching the layers' compression."""
    kinds = {layer.compression for layer in image.layers}
    variants: list[tuple[str, dict[str, list[str]]]] = []
    # (label, flags per compression kind)
    base = {"gzip": ["-z"], "zstd": ["--zstd"], "none": []}
    labels = {"gzip": "tar -z", "zstd": "tar --zstd", "none": "tar"}
    variants.append(("/".join(labels[k] for k in sorted(kinds)), base))
    if "gzip" in kinds and shutil.which("pigz"):
        # GNU tar runs the program with -d when extracting: "pigz -d".
        variants.append(("tar + pigz -d", {**base, "gzip": ["--use-compress-program=pigz"]}))

    tools = []
    for label, flags in variants:

        def commands(workdir: Path, flags: dict[str, list[str]] = flags) -> list[list[str]]:
            cmds = []
            for i, layer in enumerate(image.layers):
                dest = workdir / f"layer{i}"
                dest.mkdir()
                flag = flags[layer.compression]
                cmds.append(["tar", *flag, "-xf", str(layer.path), "-C", str(dest)])
            return cmds

        sample = " ".join(flags[image.layers[0].compression])
        tools.append(
            Tool(
                label,
                commands,
                f"for each of {len(image.layers)} layers: tar {sample} -xf BLOB -C FRESH_DIR",
            )
        )
    return tools


# --------------------------------------------------------------------------- running


def _make_writable_and_retry(func: Callable[..., Any], path: str, _exc: Any) -> None:
    """rmtree error handler: read-only directories (e.g. a content-addressed
    store's) block removal when not root; chmod the parent and retry."""
    parent = os.path.dirname(path)
    for p in (parent, path):
        try:
            mode = os.lstat(p).st_mode
            if not stat.S_ISLNK(mode):
                os.chmod(p, stat.S_IMODE(mode) | stat.S_IRWXU)
        except OSError:
            pass
    func(path)


def remove_tree(path: Path) -> None:
    if path.exists() or path.is_symlink():
        shutil.rmtree(path, onerror=_make_writable_and_retry)


def run_once(tool: Tool, workdir: Path, include_sync: bool) -> tuple[float, float, float]:
    """One timed run of `tool` in a fresh `workdir`; returns wall-clock
    seconds and the user and system CPU seconds of its processes."""
    workdir.mkdir()
    cmds = tool.commands(workdir)  # may create per-layer dirs: untimed
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for cmd in cmds:
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=False,
            )
        except OSError as e:
            raise BenchError(f"{tool.name}: cannot run {shlex.join(cmd)}: {e}") from e
        if proc.returncode != 0:
            stderr = proc.stderr.decode(errors="replace")
            raise BenchError(
                f"{tool.name} failed (exit status {proc.returncode}): {shlex.join(cmd)}\n"
                f"--- stderr ---\n{stderr.rstrip()}"
            )
    if include_sync:
        os.sync()
    elapsed = time.perf_counter() - start
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime


def run_benchmark(tools: Sequence[Tool], runs: int, work_root: Path, include_sync: bool) -> None:
    active = [t for t in tools if t.skip_reason is None]
    os.sync()
    for r in range(runs):
        k = r % len(active)
        for tool in [*active[k:], *active[:k]]:
            workdir = work_root / f"run{r}-{tool.name.replace(' ', '_').replace('/', '_')}"
            try:
                wall, user, sys_ = run_once(tool, workdir, include_sync)
            finally:
                remove_tree(workdir)
                os.sync()  # don't let this run's writeback land in the next one
            tool.times.append(wall)
            tool.cpu.append((user, sys_))
            print(
                f"  run {r + 1}/{runs}  {tool.name:<16} {wall:8.3f} s"
                f"  (user {user:.2f} s, sys {sys_:.2f} s)",
                file=sys.stderr,
                flush=True,
            )


# --------------------------------------------------------------------------- reporting


def first_line(cmd: list[str]) -> str | None:
    """The first line a command prints (stdout, else stderr): its version, usually."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def _fs_type(path: Path) -> str | None:
    """Filesystem type of the mount holding `path`, from /proc/self/mounts."""
    best: tuple[int, str] | None = None
    target = str(path.resolve())
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].encode().decode("unicode_escape")
                if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and (
                    best is None or len(mnt) > best[0]
                ):
                    best = (len(mnt), parts[2])
    except OSError:
        return None
    return best[1] if best else None


def mem_total() -> int | None:
    """MemTotal from /proc/meminfo, in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info(
    work_root: Path, snapshotter_cmd: list[str], versions: dict[str, str | None]
) -> dict[str, Any]:
    """The machine line every benchmark prints; ``versions`` are the peers' own."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "mem_total_bytes": mem_total(),
        "euid": os.geteuid(),
        "work_dir": str(work_root),
        "work_fs": _fs_type(work_root),
        "python": platform.python_version(),
        "versions": {"snapshotter": first_line([*snapshotter_cmd, "--version"]), **versions},
    }


def pull_tool_versions() -> dict[str, str | None]:
    return {
        "umoci": first_line(["umoci", "--version"]),
        "tar": first_line(["tar", "--version"]),
        "pigz": first_line(["pigz", "--version"]) if shutil.which("pigz") else None,
        "zstd": first_line(["zstd", "--version"]),
    }


def report(
    image: Image, tools: Sequence[Tool], machine: dict[str, Any], runs: int, include_sync: bool
) -> dict[str, Any]:
    subject = next(t for t in tools if t.is_subject)
    return {
        "image": image.describe(),
        "machine": machine,
        "runs": runs,
        "include_sync": include_sync,
        "results": [
            {"tool": t.name, "command": t.description, "skipped": t.skip_reason}
            if t.skip_reason is not None
            else {
                "tool": t.name,
                "command": t.description,
                "seconds": t.times,
                "cpu_user_seconds": [u for u, _ in t.cpu],
                "cpu_sys_seconds": [s for _, s in t.cpu],
                "best_seconds": t.best,
                "ratio_snapshotter_over_tool": subject.best / t.best,
            }
            for t in tools
        ],
    }


def print_table(doc: dict[str, Any]) -> None:
    m, img = doc["machine"], doc["image"]
    kinds = sorted({layer["media_type"].rsplit(".", 1)[-1] for layer in img["layers"]})
    print(
        f"machine: nproc={m['nproc']} {m['machine']} kernel {m['kernel']}"
        f" mem={(m['mem_total_bytes'] or 0) / 2**30:.1f} GiB  work dir {m['work_dir']}"
        f" ({m['work_fs']})"
    )
    print(
        f"image:   {img['layout']}:{img['tag']}  {len(img['layers'])} layers"
        f" ({', '.join(kinds)}), {img['compressed_bytes'] / 1e6:.1f} MB compressed"
    )
    print(
        f"timing:  wall clock, best of {doc['runs']} runs, warm page cache"
        + (", including a final sync" if doc["include_sync"] else "")
    )
    print()
    rows = [("tool", "best s", "snapshotter/tool", "user s", "sys s", "all runs (s)")]
    for r in doc["results"]:
        if r.get("skipped"):
            rows.append((r["tool"], "n/a", "-", "", "", f"skipped: {r['skipped']}"))
            continue
        best = r["seconds"].index(r["best_seconds"])
        rows.append(
            (
                r["tool"],
                f"{r['best_seconds']:.3f}",
                f"{r['ratio_snapshotter_over_tool']:.2f}",
                f"{r['cpu_user_seconds'][best]:.2f}",
                f"{r['cpu_sys_seconds'][best]:.2f}",
                " ".join(f"{s:.3f}" for s in r["seconds"]),
            )
        )
    print_rows(rows, ragged_last=True)
    print()
    print("user/sys: CPU seconds of the best run's processes (all threads and children).")
    print("ratio < 1: snapshotter is faster than that tool.")


def print_rows(rows: Sequence[Sequence[str]], *, ragged_last: bool) -> None:
    """Rows of cells, the first row a header underlined with dashes: the first column
    left-aligned, the others right-aligned (the last one left as it is if
    ``ragged_last``, for a free-form column such as every run's time)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [f"{row[0]:<{widths[0]}}"]
        middle = slice(1, -1) if ragged_last else slice(1, None)
        cells += [f"{c:>{w}}" for c, w in zip(row[middle], widths[middle], strict=True)]
        if ragged_last:
            cells.append(row[-1])
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


# --------------------------------------------------------------------------- main


def bench_parser(
    doc: str | None, *, layout_help: str, runs: int, work_dir_help: str
) -> argparse.ArgumentParser:
    """The options every benchmark script takes: --layout, --tag, --runs, --snapshotter,
    --work-dir and --json."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    p.add_argument("--layout", type=Path, default=DEFAULT_BENCH_DIR / "layout", help=layout_help)
    p.add_argument("--tag", default="bench", help="tag (ref.name) in index.json (default: bench)")
    p.add_argument("--runs", type=int, default=runs, help=f"timed runs per tool (default: {runs})")
    p.add_argument(
        "--snapshotter",
        default="snapshotter",
        metavar="CMD",
        help="snapshotter command, split like a shell would (default: snapshotter on PATH)",
    )
    p.add_argument("--work-dir", type=Path, default=None, help=work_dir_help)
    p.add_argument("--json", action="store_true", help="print results as one JSON document")
    return p


def parse_bench_args(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be >= 1")
    return args


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = bench_parser(
        __doc__,
        layout_help="OCI image layout directory (default: $BENCH_DIR/layout, "
        "BENCH_DIR defaults to /var/tmp/snapshotter-bench)",
        runs=3,
        work_dir_help="where fresh output dirs are created (default: next to the layout, "
        "so every tool writes to the same on-disk filesystem)",
    )
    p.add_argument(
        "--include-sync",
        action="store_true",
        help="end each timed run with sync(2), so tools that fsync and tools that "
        "leave dirty pages are charged alike",
    )
    return parse_bench_args(p, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    layout: Path = args.layout.resolve()
    snapshotter_cmd = shlex.split(args.snapshotter)
    if not snapshotter_cmd:
        print("bench_pull: --snapshotter is empty", file=sys.stderr)
        return 2
    try:
        image = load_image(layout, args.tag)
        for exe in (snapshotter_cmd[0], "umoci", "tar"):
            if shutil.which(exe) is None:
                raise BenchError(f"{exe}: command not found")
        tools = [snapshotter_tool(snapshotter_cmd, image), umoci_tool(image), *tar_tools(image)]

        parent = args.work_dir.resolve() if args.work_dir else layout.parent
        parent.mkdir(parents=True, exist_ok=True)
        work_root = Path(tempfile.mkdtemp(prefix="bench-pull-", dir=parent))
        try:
            print(
                f"warming page cache: {len(image.layers)} layers, "
                f"{image.compressed_bytes / 1e6:.1f} MB",
                file=sys.stderr,
                flush=True,
            )
            warm_page_cache(image)
            run_benchmark(tools, args.runs, work_root, args.include_sync)
            machine = machine_info(work_root, snapshotter_cmd, pull_tool_versions())
        finally:
            remove_tree(work_root)
    except BenchError as e:
        print(f"bench_pull: {e}", file=sys.stderr)
        return 1

    doc = report(image, tools, machine, args.runs, args.include_sync)
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        print_table(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
