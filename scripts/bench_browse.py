#!/usr/bin/env python3
"""Time ``snapshotter browse`` on big images: the first screen, and the largest directory.

    python scripts/bench_browse.py [--image realtree|debian|both] [--runs 3] [--json]
                                   [--realtree-layout DIR] [--layout DIR] [--tag bench]

Images (as scripts/bench_mount.py has them): ``realtree``, ~120k paths of this machine's
own trees in 3 layers (built by scripts/realtree_image.py when missing), and ``debian``,
the debootstrap image of scripts/bench-image (~11.5k paths; skipped when absent).  Each is
pulled into a fresh store once, untimed (pull also builds the merged tree).

Timed (best of --runs):

  first screen        `snapshotter browse IMAGE` started in a real terminal (tmux,
                      120x40) until the pane shows the file tree's rows; then q, and
                      the app must exit 0.  Warm, and with caches dropped (root).
  largest directory   in the app (textual's pilot, headless, 120x40): space on the
                      directory with the most entries, until the screen has caught up;
                      then `end` to its last row
  layer change        from layer 1 to the busiest other layer (most toc entries), until
                      its tree, coloured by layer_diff's answer, is on screen

What a peer does first, on the same image (dive is no Debian package and needs a docker
engine; this is the work it cannot skip: it reads every layer's tar before its first
screen, from a `docker save` it asks the engine for):

  tar -t every layer  zcat/zstdcat each layer blob | tar -t, one after the other
  ls -R               snapshotter ls -R IMAGE > /dev/null (the same tree, as text)

Ratios < 1 mean browse is faster.  Needs tmux; root for the cold line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from realtree_image import DEFAULT_LAYOUT as REALTREE_LAYOUT  # noqa: E402
from realtree_image import DEFAULT_TAG as REALTREE_TAG  # noqa: E402
from realtree_image import build_realtree_layout  # noqa: E402

DEBIAN_LAYOUT = Path("/var/tmp/snapshotter-bench/layout")
NAME = "bench:browse"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def snapshotter(root: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snapshotter.cli", "--root", str(root), *args],
        check=True,
        text=True,
        cwd=REPO,
        **kw,
    )


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# -- the first screen, in a real terminal ---------------------------------------------------------


def first_screen(root: Path, socket: Path, cold: bool) -> float:
    tmux = ["tmux", "-S", str(socket)]
    cmd = shlex.join([sys.executable, "-m", "snapshotter.cli", "--root", str(root), "browse", NAME])
    env = f"PYTHONPATH={shlex.quote(str(REPO))}"
    if cold:
        drop_caches()
    start = time.perf_counter()
    subprocess.run(
        [
            *tmux,
            "new-session",
            "-d",
            "-s",
            "b",
            "-x",
            "120",
            "-y",
            "40",
            "-e",
            "TERM=xterm-256color",
            f"cd {shlex.quote(str(REPO))}; env {env} {cmd}; echo EXIT=$?; sleep 60",
        ],
        check=True,
    )
    try:
        while True:
            screen = capture(tmux)
            if "├── " in screen or "└── " in screen:
                elapsed = time.perf_counter() - start
                break
            if time.perf_counter() - start > 60:
                raise RuntimeError(f"browse showed no tree in 60 s:\n{screen}")
            time.sleep(0.01)
        subprocess.run([*tmux, "send-keys", "-t", "b", "q"], check=True)
        deadline = time.perf_counter() + 30
        while "EXIT=" not in (screen := capture(tmux)):
            if time.perf_counter() > deadline:
                raise RuntimeError("browse did not exit on q")
            time.sleep(0.05)
        if "EXIT=0" not in screen:
            raise RuntimeError(f"browse failed:\n{screen}")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    return elapsed


def capture(tmux: list[str]) -> str:
    return subprocess.run(
        [*tmux, "capture-pane", "-p", "-t", "b"], capture_output=True, text=True
    ).stdout


# -- in the app -----------------------------------------------------------------------------------


def in_app(root: Path) -> dict[str, Any]:
    """Seconds to open the largest directory, to go to its end, and to change layer."""
    from snapshotter.browse.app import BrowseApp
    from snapshotter.explore.image import open_image
    from snapshotter.store.store import Store
    from snapshotter.store.toc import EntryKind

    image = open_image(Store(root), NAME)
    tree = image.view().tree
    largest, count = "", -1
    for path, node in tree.walk():
        if node.kind is EntryKind.DIR:
            n = len(tree.children(node.inode)[0])
            if n > count:
                largest, count = path, n
    # Layer 1 is all added (nothing to compare): the busiest of the others.
    biggest_layer = max(
        (layer.number for layer in image.layers[1:]), key=lambda n: len(image.columns(n))
    )
    out: dict[str, Any] = {"largest_dir": "/" + largest, "entries": count}

    async def main() -> None:
        app = BrowseApp(image, layer=len(image.layers))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(app, pilot)
            rows = app.file_tree.rows
            assert rows is not None
            parts = largest.split("/")
            rows.expanded.update("/".join(parts[:i]) for i in range(1, len(parts)))
            rows.rebuild()
            app.file_tree.show(rows, largest)
            app.file_tree.focus()
            await settle(app, pilot)
            start = time.perf_counter()
            await pilot.press("space")
            await settle(app, pilot)
            out["expand"] = time.perf_counter() - start
            assert len(rows.rows) >= count
            start = time.perf_counter()
            await pilot.press("end")
            await settle(app, pilot)
            out["end"] = time.perf_counter() - start
            app.query_one("#layers").focus()
            app.query_one("#layers").move_cursor(row=0)  # type: ignore[attr-defined]
            await settle(app, pilot)
            app.comparisons.clear()  # not shown yet: computed on the way
            start = time.perf_counter()
            app.query_one("#layers").move_cursor(row=biggest_layer - 1)  # type: ignore[attr-defined]
            await settle(app, pilot)
            out["layer_change"] = time.perf_counter() - start
            out["layer_change_to"] = biggest_layer

    asyncio.run(main())
    return out


async def settle(app: Any, pilot: Any) -> None:
    from textual.worker import WorkerCancelled

    for _ in range(3):
        for worker in list(app.workers):
            with contextlib.suppress(WorkerCancelled):  # replaced by a newer one
                await worker.wait()
        await pilot.pause()


# -- what a peer does first -----------------------------------------------------------------------


def tar_every_layer(layout: Path, tag: str) -> float:
    index = json.loads((layout / "index.json").read_text())
    manifest_desc = next(
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    )
    manifest = json.loads(blob(layout, manifest_desc["digest"]).read_text())
    start = time.perf_counter()
    for layer in manifest["layers"]:
        path = blob(layout, layer["digest"])
        media = layer["mediaType"]
        unpack = "zstdcat" if "zstd" in media else "zcat" if "gzip" in media else "cat"
        subprocess.run(
            f"{unpack} {shlex.quote(str(path))} | tar -t > /dev/null", shell=True, check=True
        )
    return time.perf_counter() - start


def blob(layout: Path, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":", 1)
    return layout / "blobs" / algorithm / hexdigest


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- one image ------------------------------------------------------------------------------------


def bench(label: str, layout: Path, tag: str, runs: int, work: Path) -> dict[str, Any]:
    root = work / f"store-{label}"
    log(f"{label}: pulling {layout}:{tag} (untimed)")
    snapshotter(
        root, "pull", "-q", f"oci:{layout}:{tag}", "--name", NAME, stdout=subprocess.DEVNULL
    )
    paths = snapshotter(root, "ls", "-R", "--bytes", NAME, capture_output=True).stdout.count("\n")
    socket = work / "tmux.sock"
    best: dict[str, float] = {}

    def keep(key: str, value: float) -> None:
        best[key] = min(best.get(key, value), value)

    for run in range(runs):
        log(f"{label}: run {run + 1}/{runs}")
        keep("first screen, warm", first_screen(root, socket, cold=False))
        if os.geteuid() == 0:
            keep("first screen, caches dropped", first_screen(root, socket, cold=True))
        app = in_app(root)
        keep("expand the largest directory", app["expand"])
        keep("end of it", app["end"])
        keep("change to the busiest layer", app["layer_change"])
        keep("tar -t every layer", tar_every_layer(layout, tag))
        keep(
            "ls -R",
            timed(lambda: snapshotter(root, "ls", "-R", NAME, stdout=subprocess.DEVNULL)),
        )
    return {
        "image": label,
        "paths": paths,
        "seconds": best,
        "largest_dir": app["largest_dir"],
        "entries": app["entries"],
        "layer": app["layer_change_to"],
    }


def report(doc: dict[str, Any]) -> None:
    s = doc["seconds"]
    print(
        f"\n{doc['image']}: {doc['paths']} paths; largest directory {doc['largest_dir']} "
        f"({doc['entries']} entries); the layer with most entries: {doc['layer']}"
    )
    peer, listing = s["tar -t every layer"], s["ls -R"]
    for key, value in s.items():
        ratio = ""
        if key.startswith("first screen"):
            ratio = f"{value / peer:6.3f}x tar -t every layer, {value / listing:5.2f}x ls -R"
        print(f"  {key:<32} {value:8.3f} s  {ratio}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", choices=("realtree", "debian", "both"), default="both")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    p.add_argument("--realtree-layout", type=Path, default=REALTREE_LAYOUT)
    p.add_argument("--layout", type=Path, default=DEBIAN_LAYOUT)
    p.add_argument("--tag", default="bench")
    args = p.parse_args()
    if shutil.which("tmux") is None:
        log("bench_browse: tmux is needed (apt-get install tmux)")
        return 1
    images: list[tuple[str, Path, str]] = []
    if args.image in ("realtree", "both"):
        if not (args.realtree_layout / "index.json").is_file():
            build_realtree_layout(args.realtree_layout, REALTREE_TAG, log)
        images.append(("realtree", args.realtree_layout, REALTREE_TAG))
    if args.image in ("debian", "both"):
        if (args.layout / "index.json").is_file():
            images.append(("debian", args.layout, args.tag))
        else:
            log(f"bench_browse: no debian layout at {args.layout} (scripts/bench-image): skipped")
    docs = []
    with tempfile.TemporaryDirectory(prefix="bench-browse-", dir="/var/tmp") as tmp:
        for label, layout, tag in images:
            docs.append(bench(label, layout, tag, args.runs, Path(tmp)))
    for doc in docs:
        report(doc)
    if args.json:
        print(json.dumps(docs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
