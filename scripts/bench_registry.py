#!/usr/bin/env python3
"""Time pulling one image from a local registry with snapshotter and with skopeo + umoci.

    python scripts/bench_registry.py [--layout DIR] [--tag bench] [--runs 5]
                                     [--snapshotter CMD] [--work-dir DIR] [--json]

Starts Debian's ``docker-registry`` on 127.0.0.1 (a free port, filesystem storage in a
fresh directory next to the layout, no auth, plain HTTP), pushes LAYOUT:TAG into it as
``bench:latest`` with ``skopeo copy`` (untimed), then times, in one run:

  snapshotter    CMD --root <fresh empty store> pull --quiet docker://127.0.0.1:PORT/bench:latest
  skopeo+umoci   skopeo copy docker://127.0.0.1:PORT/bench:latest oci:<fresh dir>:bench
                 && umoci unpack [--rootless] --image <that dir>:bench <fresh bundle>

Both end with the image's root file system on disk, each in its own form; both fetch
every blob over HTTP from the same registry.  Each tool runs --runs times; rounds are
interleaved and their order rotated (as in bench_pull.py); best and median are reported,
with the ratio snapshotter/peer (< 1: snapshotter is faster) and, for the peer, how its
time splits between skopeo and umoci.  The registry's blob files are read once beforehand
so the page cache is warm for both.  Output and the registry are removed at the end,
whatever happens.

Standard library only (plus bench_pull.py beside it).  See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pull import (  # noqa: E402 - a sibling script, not a package
    BenchError,
    Image,
    bench_parser,
    first_line,
    load_image,
    machine_info,
    parse_bench_args,
    print_rows,
    pull_tool_versions,
    remove_tree,
)

LOOPBACK = "127.0.0.1"
REPOSITORY = "bench"
TAG = "latest"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


# --------------------------------------------------------------------------- registry
# Mirrors tests/registry_fixtures.py:start_registry (that module needs the test extras).


@dataclass
class Registry:
    host: str
    data: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@contextmanager
def registry(directory: Path) -> Iterator[Registry]:
    """``docker-registry serve`` on a free loopback port until the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(directory / "data")},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"{LOOPBACK}:{port}", "secret": secrets.token_hex(16)},
    }
    config_path = directory / "config.yml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log = directory / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    reg = Registry(f"{LOOPBACK}:{port}", directory / "data", proc, log)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise BenchError(f"docker-registry exited: {log.read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
                conn.request("GET", "/v2/")
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"docker-registry did not answer: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield reg
    finally:
        reg.stop()


def manifest_digest(host: str, repository: str, tag: str) -> str:
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        conn.request(
            "HEAD",
            f"/v2/{repository}/manifests/{tag}",
            headers={"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"},
        )
        resp = conn.getresponse()
        resp.read()
        digest = resp.getheader("Docker-Content-Digest")
    finally:
        conn.close()
    if resp.status != 200 or not digest:
        raise BenchError(f"registry {host}: no manifest for {repository}:{tag} ({resp.status})")
    return digest


def warm_page_cache(data: Path) -> int:
    """Read every file of the registry's storage once (untimed); return the bytes read."""
    total = 0
    buf = bytearray(1 << 20)
    for dirpath, _dirnames, filenames in os.walk(data):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
    return total


# --------------------------------------------------------------------------- tools


@dataclass
class Step:
    label: str
    argv: list[str]


@dataclass
class Tool:
    name: str
    description: str
    is_subject: bool = False
    totals: list[float] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)  # label -> seconds per run
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (user, sys) per run

    def commands(self, workdir: Path, source: str) -> list[Step]:
        raise NotImplementedError

    @property
    def best(self) -> float:
        return min(self.totals)

    @property
    def median(self) -> float:
        return statistics.median(self.totals)


class Snapshotter(Tool):
    def __init__(self, cmd: list[str]) -> None:
        super().__init__(
            "snapshotter",
            f"{shlex.join(cmd)} --root STORE pull --quiet docker://HOST/{REPOSITORY}:{TAG}",
            is_subject=True,
        )
        self.cmd = cmd

    def commands(self, workdir: Path, source: str) -> list[Step]:
        store = workdir / "store"
        store.mkdir()
        return [Step("pull", [*self.cmd, "--root", str(store), "pull", "--quiet", source])]


class SkopeoUmoci(Tool):
    def __init__(self) -> None:
        self.rootless = ["--rootless"] if os.geteuid() != 0 else []
        super().__init__(
            "skopeo+umoci",
            f"skopeo copy docker://HOST/{REPOSITORY}:{TAG} oci:DIR:bench && "
            + shlex.join(["umoci", "unpack", *self.rootless, "--image", "DIR:bench", "BUNDLE"]),
        )

    def commands(self, workdir: Path, source: str) -> list[Step]:
        layout = workdir / "layout"
        return [
            Step(
                "skopeo copy",
                ["skopeo", "copy", "-q", "--src-tls-verify=false", source, f"oci:{layout}:bench"],
            ),
            Step(
                "umoci unpack",
                [
                    "umoci",
                    "unpack",
                    *self.rootless,
                    "--image",
                    f"{layout}:bench",
                    str(workdir / "bundle"),
                ],
            ),
        ]


def run_once(
    tool: Tool, workdir: Path, source: str, env: dict[str, str], expect_digest: str
) -> tuple[float, dict[str, float], float, float]:
    """One timed run in a fresh ``workdir``: total and per-step wall clock, user and sys."""
    workdir.mkdir()
    steps = tool.commands(workdir, source)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    times: dict[str, float] = {}
    for step in steps:
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                step.argv, stdin=subprocess.DEVNULL, capture_output=True, env=env, check=False
            )
        except OSError as e:
            raise BenchError(f"{tool.name}: cannot run {shlex.join(step.argv)}: {e}") from e
        times[step.label] = time.perf_counter() - start
        if proc.returncode != 0:
            raise BenchError(
                f"{tool.name} failed (exit status {proc.returncode}): {shlex.join(step.argv)}\n"
                f"--- stderr ---\n{proc.stderr.decode(errors='replace').rstrip()}"
            )
        if tool.is_subject and proc.stdout.decode().strip() != expect_digest:
            raise BenchError(
                f"{tool.name} pulled {proc.stdout.decode().strip()!r}, expected {expect_digest}"
            )
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (
        sum(times.values()),
        times,
        ru1.ru_utime - ru0.ru_utime,
        ru1.ru_stime - ru0.ru_stime,
    )


# --------------------------------------------------------------------------- reporting


def _load() -> dict[str, float]:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return {}
    return {"1min": one, "5min": five, "15min": fifteen}


def report(
    image: Image,
    tools: Sequence[Tool],
    machine: dict[str, Any],
    runs: int,
    load: list[float],
) -> dict[str, Any]:
    subject = next(t for t in tools if t.is_subject)
    return {
        "image": image.describe(),
        "machine": machine,
        "load_average_1min": load,
        "runs": runs,
        "results": [
            {
                "tool": t.name,
                "command": t.description,
                "seconds": t.totals,
                "steps": t.steps,
                "cpu_user_seconds": [u for u, _ in t.cpu],
                "cpu_sys_seconds": [s for _, s in t.cpu],
                "best_seconds": t.best,
                "median_seconds": t.median,
                "ratio_best": subject.best / t.best,
                "ratio_median": subject.median / t.median,
            }
            for t in tools
        ],
    }


def print_table(doc: dict[str, Any]) -> None:
    m, img = doc["machine"], doc["image"]
    print(
        f"machine: nproc={m['nproc']} {m['machine']} kernel {m['kernel']}"
        f" mem={(m['mem_total_bytes'] or 0) / 2**30:.1f} GiB  work dir {m['work_dir']}"
        f" ({m['work_fs']})"
    )
    loads = doc["load_average_1min"]
    if loads:
        print(
            f"load:    1-min load average during the runs {min(loads):.1f}-{max(loads):.1f}"
            f" (median {statistics.median(loads):.1f})"
        )
    print(
        f"image:   {img['layout']}:{img['tag']} pushed as {REPOSITORY}:{TAG}, "
        f"{len(img['layers'])} layers, {img['compressed_bytes'] / 1e6:.1f} MB compressed"
    )
    print(f"timing:  wall clock, {doc['runs']} runs each, warm page cache")
    print()
    rows = [("tool", "best s", "median s", "snap/tool best", "snap/tool median", "all runs (s)")]
    for r in doc["results"]:
        rows.append(
            (
                r["tool"],
                f"{r['best_seconds']:.3f}",
                f"{r['median_seconds']:.3f}",
                "-" if r["tool"] == "snapshotter" else f"{r['ratio_best']:.2f}",
                "-" if r["tool"] == "snapshotter" else f"{r['ratio_median']:.2f}",
                " ".join(f"{s:.3f}" for s in r["seconds"]),
            )
        )
        if len(r["steps"]) > 1:
            for label, seconds in r["steps"].items():
                rows.append(
                    (
                        f"  {label}",
                        f"{min(seconds):.3f}",
                        f"{statistics.median(seconds):.3f}",
                        "",
                        "",
                        " ".join(f"{s:.3f}" for s in seconds),
                    )
                )
    print_rows(rows, ragged_last=True)
    print()
    for r in doc["results"]:
        if r["tool"] != "snapshotter":
            print(
                f"snapshotter / {r['tool']}: {r['ratio_best']:.2f} (best), "
                f"{r['ratio_median']:.2f} (median); < 1 means snapshotter is faster"
            )


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = bench_parser(
        __doc__,
        layout_help="OCI image layout to push (default: $BENCH_DIR/layout, made by "
        "scripts/bench-image)",
        runs=5,
        work_dir_help="where the registry's storage and the fresh output dirs go (default: "
        "next to the layout, so everything is on the same filesystem)",
    )
    return parse_bench_args(p, argv)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: registry, dirs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    layout: Path = args.layout.resolve()
    snapshotter_cmd = shlex.split(args.snapshotter)
    if not snapshotter_cmd:
        print("bench_registry: --snapshotter is empty", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    try:
        image = load_image(layout, args.tag)
        for exe in (snapshotter_cmd[0], "docker-registry", "skopeo", "umoci"):
            if shutil.which(exe) is None:
                raise BenchError(f"{exe}: command not found")
        parent = args.work_dir.resolve() if args.work_dir else layout.parent
        parent.mkdir(parents=True, exist_ok=True)
        work_root = Path(tempfile.mkdtemp(prefix="bench-registry-", dir=parent))
        try:
            # No user's auth files: an empty one for skopeo and snapshotter alike.
            auth = work_root / "auth.json"
            auth.write_text('{"auths": {}}')
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(work_root),
                "REGISTRY_AUTH_FILE": str(auth),
            }
            with registry(work_root / "registry") as reg:
                source = f"docker://{reg.host}/{REPOSITORY}:{TAG}"
                print(f"pushing {layout}:{args.tag} to {source}", file=sys.stderr, flush=True)
                push = [
                    "skopeo",
                    "copy",
                    "-q",
                    "--dest-tls-verify=false",
                    f"oci:{layout}:{args.tag}",
                    source,
                ]
                done = subprocess.run(push, capture_output=True, text=True, env=env, check=False)
                if done.returncode != 0:
                    raise BenchError(f"{shlex.join(push)} failed: {done.stderr.strip()}")
                digest = manifest_digest(reg.host, REPOSITORY, TAG)
                warmed = warm_page_cache(reg.data)
                print(
                    f"registry holds {digest}; warmed {warmed / 1e6:.1f} MB of its storage",
                    file=sys.stderr,
                    flush=True,
                )
                tools: list[Tool] = [Snapshotter(snapshotter_cmd), SkopeoUmoci()]
                loads: list[float] = []
                runs_dir = work_root / "runs"
                runs_dir.mkdir()
                for r in range(args.runs):
                    loads.append(_load().get("1min", 0.0))
                    run_benchmark_round(tools, r, runs_dir, source, env, digest)
                loads.append(_load().get("1min", 0.0))
                machine = machine_info(
                    runs_dir,
                    snapshotter_cmd,
                    {
                        **pull_tool_versions(),
                        "skopeo": first_line(["skopeo", "--version"]),
                        "docker-registry": first_line(
                            ["dpkg-query", "-W", "-f=${Version}", "docker-registry"]
                        ),
                    },
                )
        finally:
            remove_tree(work_root)
    except BenchError as e:
        print(f"bench_registry: {e}", file=sys.stderr)
        return 1

    doc = report(image, tools, machine, args.runs, loads)
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        print_table(doc)
    return 0


def run_benchmark_round(
    tools: Sequence[Tool], r: int, work_root: Path, source: str, env: dict[str, str], digest: str
) -> None:
    """Round ``r``: every tool once, the order rotated by ``r``."""
    k = r % len(tools)
    for tool in [*tools[k:], *tools[:k]]:
        workdir = work_root / f"run{r}-{tool.name.replace('+', '_')}"
        try:
            total, steps, user, sys_ = run_once(tool, workdir, source, env, digest)
        finally:
            remove_tree(workdir)
            os.sync()  # this run's writeback must not land in the next one
        tool.totals.append(total)
        for label, seconds in steps.items():
            tool.steps.setdefault(label, []).append(seconds)
        tool.cpu.append((user, sys_))
        split = ""
        if len(steps) > 1:
            split = " (" + ", ".join(f"{k} {v:.3f}" for k, v in steps.items()) + ")"
        print(
            f"  run {r + 1}  {tool.name:<13} {total:8.3f} s{split}"
            f"  user {user:.2f} s, sys {sys_:.2f} s",
            file=sys.stderr,
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
