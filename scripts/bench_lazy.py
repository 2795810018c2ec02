#!/usr/bin/env python3
"""Time a lazy image from a rate-limited registry against pull-then-mount.

    python scripts/bench_lazy.py [--layout DIR] [--tag bench] [--rate-mbit 200]
                                 [--latency-ms 0] [--file PATH] [--runs 1] [--json]

Starts Debian's ``docker-registry`` on 127.0.0.1, pushes LAYOUT:TAG (the Debian image of
scripts/bench-image by default) as ``bench/published:1`` and ``bench/plain:1`` with
skopeo, and puts tests/registry_fixtures.py's proxy in front of it, pacing every body
through one shared link of ``--rate-mbit`` (and ``--latency-ms`` before each answer).
Then, each from an empty store (another "host"), with ``snapshotter mount`` for real:

  (a) lazy, published index   the seek indexes built and pushed beside bench/published
                              once, untimed ('index build' + 'index push')
  (b) lazy, no index          bench/plain: each indexable layer streamed once to build
                              its index
  (c) pull, then mount        'snapshotter pull', then 'snapshotter mount' (FUSE)
  (d) lazy, zstd:chunked      the image converted by skopeo to zstd:chunked (what podman
                              and containers/storage read lazily), pushed as
                              bench/chunked:1: each layer read through its own TOC

For each: the time until the first ``ls`` of the root answers, the time to read one file
(``--file``, by default usr/lib/os-release, in the 81 MB layer), and the bytes the proxy
sent (all of them: manifests, configs, indexes, blobs), with ratios to (c).  ``--verify``
then reads every file of each lazy view and checks it against the eager view of (c):
names, kinds, modes, owners, sizes, mtimes, link targets, xattrs, link counts and the
sha256 of every file's bytes (and says how long reading the whole view took).

Needs docker-registry, skopeo and the test dependencies (tests/registry_fixtures.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import stat
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

CLI = [sys.executable, "-m", "snapshotter.cli"]


@dataclass
class Result:
    case: str
    first_ls_s: float
    read_s: float
    fetched: int  # bytes the proxy sent for this case
    read_fetched: int  # of which for the read
    layers: list[str]
    verified: str = ""  # "" (not asked), "same: N entries, read in Ts", or what differs


def cli(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """The command's stdout (its stderr, for ``mount``: one line per layer)."""
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
    return done.stderr if args[0] == "mount" else done.stdout


def sent(proxy: FaultProxy) -> int:
    with proxy.lock:
        return sum(s.sent for s in proxy.seen)


def view_of(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path of a mounted view: what lstat, readlink and the xattr calls say, and
    the sha256 of each regular file's bytes (read through the view)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            digest = ""
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                digest = h.hexdigest()
            keys = sorted(os.listxattr(path, follow_symlinks=False))
            out[os.path.relpath(path, root)] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_mtime_ns,
                st.st_nlink,
                st.st_rdev,
                os.readlink(path) if stat.S_ISLNK(st.st_mode) else "",
                tuple((k, os.getxattr(path, k, follow_symlinks=False)) for k in keys),
                digest,
            )
    return out


def compare(ours: dict[str, tuple[object, ...]], eager: dict[str, tuple[object, ...]]) -> str:
    differ = [p for p in sorted(set(ours) | set(eager)) if ours.get(p) != eager.get(p)]
    if not differ:
        return f"same: {len(ours)} entries"
    first = differ[0]
    return (
        f"DIFFERENT: {len(differ)} entries, first {first!r}: {ours.get(first)} / {eager.get(first)}"
    )


def mount_case(
    case: str,
    proxy: FaultProxy,
    root: Path,
    args: list[str],
    path: str,
    pull: str | None,
    eager: dict[str, tuple[object, ...]] | None = None,
) -> tuple[Result, dict[str, tuple[object, ...]] | None]:
    """The case's result; and, given the eager view to check against (or ``{}`` to read
    this one as the eager view), this view as ``view_of`` sees it."""
    start = sent(proxy)
    mnt = Path(tempfile.mkdtemp(prefix="bench-lazy-mnt-"))
    t0 = time.perf_counter()
    if pull is not None:
        cli(root, "pull", "--quiet", pull)
    said = cli(root, "mount", *args, str(mnt))
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
        hows = [line.partition(": ")[2] for line in said.splitlines() if line.startswith("layer")]
        result = Result(case, first_ls, read, sent(proxy) - start, sent(proxy) - before_read, hows)
        view = None
        if eager is not None:
            t2 = time.perf_counter()
            view = view_of(mnt)
            took = time.perf_counter() - t2
            result.verified = (compare(view, eager) if eager else f"{len(view)} entries") + (
                f", every file read in {took:.1f}s"
            )
    finally:
        cli(root, "umount", str(mnt))
        mnt.rmdir()
    return result, view


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--layout", type=Path, default=Path("/var/tmp/snapshotter-bench/layout"))
    ap.add_argument("--tag", default="bench")
    ap.add_argument("--rate-mbit", type=float, default=200.0)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--file", default="usr/lib/os-release")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument(
        "--verify",
        action="store_true",
        help="read every file of each view and check the lazy views against the eager one",
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
        chunked = work / "chunked"
        subprocess.run(
            ["skopeo", "copy", "-q", "--dest-compress-format", "zstd:chunked"]
            + [f"oci:{args.layout}:{args.tag}", f"oci:{chunked}:{args.tag}"],
            check=True,
        )
        registry.push(f"oci:{chunked}:{args.tag}", "bench/chunked:1")
        proxy = FaultProxy(
            registry.host, rate=args.rate_mbit * 1e6 / 8, latency=args.latency_ms / 1000
        )
        host = proxy.host
        published, plain = f"docker://{host}/bench/published:1", f"docker://{host}/bench/plain:1"
        builder = work / "builder"
        cli(builder, "index", "build", "--quiet", published)
        cli(builder, "index", "push", published)
        for run in range(args.runs):
            root = work / f"c-{run}"
            eager: dict[str, tuple[object, ...]] | None = {} if args.verify else None
            result, eager = mount_case(
                "c pull, then mount",
                proxy,
                root,
                [f"{host}/bench/plain:1"],
                args.file,
                plain,
                eager,
            )
            results.append(result)
            for case, ref in (
                ("a lazy, published index", published),
                ("b lazy, no index", plain),
                ("d lazy, zstd:chunked", f"docker://{host}/bench/chunked:1"),
            ):
                root = work / f"{case[0]}-{run}"
                result, _ = mount_case(case, proxy, root, ["--lazy", ref], args.file, None, eager)
                results.append(result)
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
    print(f"{'case':26} {'first ls':>9} {'read':>8} {'fetched':>10} {'(read)':>10}   ratio to (c)")
    base = {r.case[0] + str(k // 4): r for k, r in enumerate(results) if r.case.startswith("c")}
    for k, r in enumerate(results):
        c = base[f"c{k // 4}"]
        ratio = ""
        if r is not c:
            ratio = f"   first ls {r.first_ls_s / c.first_ls_s:.2f}x"
            ratio += f", bytes {r.fetched / c.fetched:.3f}x"
        print(
            f"{r.case:26} {r.first_ls_s:8.2f}s {r.read_s * 1000:6.0f}ms "
            f"{r.fetched / 1e6:8.1f}MB {r.read_fetched / 1e6:8.2f}MB{ratio}"
        )
        if r.layers:
            print(f"{'':26} layers: {'; '.join(r.layers)}")
        if r.verified:
            print(f"{'':26} {r.verified}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
