#!/usr/bin/env python3
"""Measure the seek index (snapshotter.lazy) on the layers of a real OCI image layout.

    python scripts/bench_seek_index.py [--layout DIR] [--tag bench] [--reads 50] [--json]

Per layer of the image (the Debian bench image by default, as scripts/bench-image writes
it): the time of ``build_index`` (one verified pass reading the blob file), the index's
serialized size as a share of the uncompressed tar (and the part that is not windows:
toc, extents, span digests), the time to load it, and reads served from the blob file
through ``read_range``: ``--reads`` 1 KiB ranges at random tar offsets and as many small
files (<= 1 KiB), with the requests and compressed bytes each cost.  No network: the
numbers are the index's own costs, before any fetching.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from snapshotter.lazy import SeekIndex, build_index, read_file, read_tar
from snapshotter.oci.digest import Digest
from snapshotter.store.toc import EntryKind


def _blob(layout: Path, digest: str) -> Path:
    algorithm, _, hexpart = digest.partition(":")
    return layout / "blobs" / algorithm / hexpart


def _manifest(layout: Path, tag: str) -> dict[str, object]:
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        if (desc.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag:
            return json.loads(_blob(layout, desc["digest"]).read_text())  # type: ignore[no-any-return]
    raise SystemExit(f"{layout}: no manifest tagged {tag!r}")


def measure(
    path: Path, media_type: str, digest: str, diff_id: str, reads: int
) -> dict[str, object]:
    with path.open("rb", buffering=0) as f:
        t = time.perf_counter()
        index = build_index(
            f.read, Digest.parse(digest), Digest.parse(diff_id), media_type, min_layer_size=0
        )
        build = time.perf_counter() - t
    if not isinstance(index, SeekIndex):
        return {
            "layer": digest,
            "blob_bytes": index.blob_size,
            "build_s": round(build, 3),
            "unindexed": index.reason,
        }
    data = index.to_bytes()
    bare = replace(index, checkpoints=tuple(replace(c, window=b"") for c in index.checkpoints))
    t = time.perf_counter()
    SeekIndex.from_bytes(data)
    load = time.perf_counter() - t
    blob = path.read_bytes()
    calls: list[int] = []

    def read_range(first: int, last: int) -> bytes:
        calls.append(last + 1 - first)
        return blob[first : last + 1]

    rnd = random.Random(0)
    times, fetched = [], []
    for _ in range(reads):
        at = rnd.randrange(max(1, index.tar_size - 1024))
        calls.clear()
        t = time.perf_counter()
        read_tar(index, read_range, at, min(index.tar_size, at + 1024))
        times.append(time.perf_counter() - t)
        fetched.append(sum(calls))
    small = [e for e in index.toc if e.kind is EntryKind.FILE and 0 < e.size <= 1024]
    small_calls, small_bytes = [], []
    for entry in rnd.sample(small, min(reads, len(small))):
        calls.clear()
        read_file(index, entry, read_range)
        small_calls.append(len(calls))
        small_bytes.append(sum(calls))
    spans = [c.end - c.start for c in index.checkpoints]
    return {
        "layer": digest,
        "blob_bytes": index.blob_size,
        "tar_bytes": index.tar_size,
        "entries": len(index.toc.entries),
        "build_s": round(build, 3),
        "build_mb_s_uncompressed": round(index.tar_size / build / 1e6, 1),
        "checkpoints": len(index.checkpoints),
        "span_bytes_max": max(spans),
        "index_bytes": len(data),
        "index_percent": round(100 * len(data) / index.tar_size, 3),
        "index_without_windows_bytes": len(bare.to_bytes()),
        "load_ms": round(load * 1000, 1),
        "read_1k_ms_median": round(statistics.median(times) * 1000, 2) if times else None,
        "read_1k_ms_max": round(max(times) * 1000, 2) if times else None,
        "read_1k_fetched_bytes_median": int(statistics.median(fetched)) if fetched else None,
        "small_file_requests_max": max(small_calls, default=0),
        "small_file_fetched_bytes_max": max(small_bytes, default=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", type=Path, default=Path("/var/tmp/snapshotter-bench/layout"))
    parser.add_argument("--tag", default="bench")
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    manifest = _manifest(args.layout, args.tag)
    config = json.loads(_blob(args.layout, manifest["config"]["digest"]).read_text())  # type: ignore[index]
    rows = [
        measure(
            _blob(args.layout, layer["digest"]),
            layer["mediaType"],
            layer["digest"],
            diff_id,
            args.reads,
        )
        for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True)  # type: ignore[call-overload]
    ]
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return
    for r in rows:
        if "unindexed" in r:
            print(
                f"{str(r['layer'])[7:19]}  blob {r['blob_bytes']} B  not indexed: {r['unindexed']}"
            )
            continue
        print(
            "  ".join(
                [
                    str(r["layer"])[7:19],
                    f"blob {r['blob_bytes'] / 1e6:.1f} MB",  # type: ignore[operator]
                    f"tar {r['tar_bytes'] / 1e6:.1f} MB",  # type: ignore[operator]
                    f"{r['entries']} entries",
                    f"build {r['build_s']} s ({r['build_mb_s_uncompressed']} MB/s)",
                    f"{r['checkpoints']} checkpoints",
                    f"index {r['index_bytes']} B = {r['index_percent']}%"
                    f" ({r['index_without_windows_bytes']} B without windows)",
                    f"load {r['load_ms']} ms",
                    f"1 KiB read {r['read_1k_ms_median']} ms median, {r['read_1k_ms_max']} max,"
                    f" {r['read_1k_fetched_bytes_median']} B fetched",
                    f"small files: <= {r['small_file_requests_max']} request,"
                    f" <= {r['small_file_fetched_bytes_max']} B",
                ]
            )
        )


if __name__ == "__main__":
    main()
