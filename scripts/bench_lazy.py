#!/usr/bin/env python3
"""Time a lazy image from a rate-limited registry against pull-then-mount.

    python scripts/bench_lazy.py [--layout DIR] [--tag bench] [--rate-mbit 200]
                                 [--latency-ms 0] [--file PATH] [--runs 1] [--json]

Starts Debian's ``docker-registry`` on 127.0.0.1, pushes LAYOUT:TAG (the Debian image of
scripts/bench-image by default) as ``bench/published:1`` and ``bench/plain:1`` with
skopeo, and puts tests/registry_fixtures.py's proxy in front of it, pacing every body
through one shared link of ``--rate-mbit`` (and ``--latency-ms`` before each answer).
Then, each from an empty store (another "host"):

  (a) lazy, published index   the seek indexes built and pushed beside bench/published
                              once, untimed ('index build' + 'index push')
  (b) lazy, no index          bench/plain: each indexable layer streamed once to build
                              its index
  (c) pull, then mount        'snapshotter pull', then 'snapshotter mount' (FUSE)

For each: the time until the first ``ls`` of the root answers, the time to read one file
(``--file``, by default usr/lib/os-release, in the 81 MB layer), and the bytes the proxy
sent (all of them: manifests, configs, indexes, blobs).

Where ``snapshotter mount --lazy`` exists (lazy-view's work), (a) and (b) run it for
real; otherwise they are measured at the library level: ``open_lazy_remote`` plus the
merge of the layers' tocs is "first ls", then one ``read_file`` through the layer's
caching source (the span cache on disk) is the read; the output says which.

Needs docker-registry, skopeo and the test dependencies (tests/registry_fixtures.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from registry_fixtures import FaultProxy, Registry, start_registry  # noqa: E402

from snapshotter.lazy import read_file  # noqa: E402
from snapshotter.lazy.remote import open_lazy_remote  # noqa: E402
from snapshotter.progress import QuietProgress  # noqa: E402
from snapshotter.sources.registry import RegistryOptions  # noqa: E402
from snapshotter.store.store import Store  # noqa: E402
from snapshotter.store.toc import TOC_NAME, Toc  # noqa: E402
from snapshotter.view.merge import merge  # noqa: E402

CLI = [sys.executable, "-m", "snapshotter.cli"]


@dataclass
class Result:
    case: str
    how: str  # "mount" or "library"
    first_ls_s: float
    read_s: float
    fetched: int  # bytes the proxy sent for this case
    read_fetched: int  # of which for the read
    layers: list[str]


def cli(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [*CLI, "--root", str(root), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        timeout=1800,
    )
    if done.returncode != 0:
        raise SystemExit(f"snapshotter {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def lazy_mount_available(root: Path) -> bool:
    done = subprocess.run(
        [*CLI, "--root", str(root), "mount", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return "--lazy" in done.stdout


def sent(proxy: FaultProxy) -> int:
    with proxy.lock:
        return sum(s.sent for s in proxy.seen)


def library_case(
    case: str, proxy: FaultProxy, root: Path, ref: str, path: str, options: RegistryOptions
) -> Result:
    store = Store(root)
    store.ensure()
    start = sent(proxy)
    t0 = time.perf_counter()
    image = open_lazy_remote(store, ref, options, QuietProgress())
    tocs = [
        layer.index.toc
        if layer.index is not None
        else Toc.read(store.snapshot_path(_digest(layer.diff_id)) / TOC_NAME)
        for layer in image.layers
    ]
    tree = merge(tocs)
    assert tree is not None
    first_ls = time.perf_counter() - t0
    before_read = sent(proxy)
    t1 = time.perf_counter()
    data = _read_top(store, image.layers, tocs, path)
    read = time.perf_counter() - t1
    assert data, path
    return Result(
        case,
        "library",
        first_ls,
        read,
        sent(proxy) - start,
        sent(proxy) - before_read,
        [layer.how for layer in image.layers],
    )


def _digest(text: str):  # type: ignore[no-untyped-def]
    from snapshotter.oci.digest import Digest

    return Digest.parse(text)


def _read_top(store: Store, layers, tocs, path: str) -> bytes:  # type: ignore[no-untyped-def]
    for layer, toc in reversed(list(zip(layers, tocs, strict=True))):
        entry = toc.find(path)
        if entry is None:
            continue
        if layer.index is not None:
            return read_file(layer.index, entry, layer.source.read_range)
        snap = store.snapshot_path(_digest(layer.diff_id))
        return (snap / "data" / entry.data_name).read_bytes()
    raise SystemExit(f"{path}: in no layer")


def mount_case(
    case: str, proxy: FaultProxy, root: Path, args: list[str], path: str, pull: str | None
) -> Result:
    start = sent(proxy)
    mnt = Path(tempfile.mkdtemp(prefix="bench-lazy-mnt-"))
    t0 = time.perf_counter()
    if pull is not None:
        cli(root, "pull", "--quiet", pull)
    cli(root, "mount", *args, str(mnt))
    try:
        names = os.listdir(mnt)
        assert names
        first_ls = time.perf_counter() - t0
        before_read = sent(proxy)
        t1 = time.perf_counter()
        with open(mnt / path, "rb") as f:
            data = f.read()
        read = time.perf_counter() - t1
        assert data
    finally:
        cli(root, "umount", str(mnt))
        mnt.rmdir()
    return Result(case, "mount", first_ls, read, sent(proxy) - start, sent(proxy) - before_read, [])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--layout", type=Path, default=Path("/var/tmp/snapshotter-bench/layout"))
    ap.add_argument("--tag", default="bench")
    ap.add_argument("--rate-mbit", type=float, default=200.0)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--file", default="usr/lib/os-release")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument(
        "--library", action="store_true", help="library level even if mount --lazy exists"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not (args.layout / "index.json").is_file():
        raise SystemExit(f"{args.layout}: no OCI layout; run scripts/bench-image")
    work = Path(tempfile.mkdtemp(prefix="bench-lazy-"))
    registry: Registry | None = None
    proxy: FaultProxy | None = None
    results: list[Result] = []
    try:
        registry = start_registry(work / "registry")
        for repo in ("bench/published:1", "bench/plain:1"):
            registry.push(f"oci:{args.layout}:{args.tag}", repo)
        proxy = FaultProxy(
            registry.host, rate=args.rate_mbit * 1e6 / 8, latency=args.latency_ms / 1000
        )
        host = proxy.host
        published, plain = f"docker://{host}/bench/published:1", f"docker://{host}/bench/plain:1"
        builder = work / "builder"
        cli(builder, "index", "build", "--quiet", published)
        cli(builder, "index", "push", published)
        options = RegistryOptions()
        mount_lazy = not args.library and lazy_mount_available(builder)
        for run in range(args.runs):
            for case, ref in (("a lazy, published index", published), ("b lazy, no index", plain)):
                root = work / f"{case[0]}-{run}"
                if mount_lazy:
                    results.append(mount_case(case, proxy, root, ["--lazy", ref], args.file, None))
                else:
                    results.append(library_case(case, proxy, root, ref, args.file, options))
            root = work / f"c-{run}"
            results.append(
                mount_case(
                    "c pull, then mount", proxy, root, [f"{host}/bench/plain:1"], args.file, plain
                )
            )
    finally:
        if proxy is not None:
            proxy.stop()
        if registry is not None:
            registry.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
        return 0
    print(
        f"{args.layout}:{args.tag} through a {args.rate_mbit:g} Mbit/s link"
        f"{f', {args.latency_ms:g} ms latency' if args.latency_ms else ''}; read {args.file}"
    )
    print(f"{'case':26} {'level':8} {'first ls':>9} {'read':>8} {'fetched':>10} {'(read)':>10}")
    for r in results:
        print(
            f"{r.case:26} {r.how:8} {r.first_ls_s:8.2f}s {r.read_s * 1000:6.0f}ms "
            f"{r.fetched / 1e6:8.1f}MB {r.read_fetched / 1e6:8.2f}MB"
        )
        if r.layers:
            print(f"{'':26} layers: {'; '.join(r.layers)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
