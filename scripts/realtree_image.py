#!/usr/bin/env python3
"""Build an OCI image layout of more than 100k paths from this machine's own trees, with umoci.

    python scripts/realtree_image.py [--layout DIR] [--tag realtree] [--python-lib DIR]

The image is cut into layers the way a Dockerfile would make them, with
`umoci init`, `umoci new`, `umoci unpack` and one `umoci repack --refresh-bundle`
per layer (gzip layers, umoci's default):

  1. /usr/share and /usr/include, copied in
  2. a Python installation's library directory, standard library and
     site-packages (default: that of the Python running this script), as
     /usr/local/lib/pythonX.Y (where the official python images keep it), and
     Debian's /usr/lib/python3
  3. `rm -rf /usr/share/doc` (one whiteout hiding a large subtree of layer 1)
     and /big.bin, 1 GiB of os.urandom(16 MiB) repeated (gzip cannot shrink it)

On this machine that is about 120k paths and 2.9 GB of tar.  Trees are copied
with a GNU tar pipe keeping owners (numeric), modes, hard links, xattrs and
times.  As root umoci keeps owners; otherwise every umoci command gets
--rootless and unreadable host files are skipped (tar --ignore-failed-read).

The layout is built next to its destination and renamed into place, and
DIR.done records the recipe (the source trees included): while it matches,
the layout is reused; delete DIR.done to rebuild.  scripts/bench_mount.py calls
build_realtree_layout() itself.  Standard library only; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench_pull import DEFAULT_BENCH_DIR, BenchError, remove_tree

DEFAULT_LAYOUT = DEFAULT_BENCH_DIR / "realtree"
DEFAULT_TAG = "realtree"
BIG_NAME = "big.bin"
BIG_SIZE = 1 << 30
BIG_CHUNK = 16 << 20
BIG_MTIME = 1_700_000_000
DELETED = "usr/share/doc"
MIN_PATHS = 100_000
RECIPE_VERSION = "v1"


@dataclass(frozen=True)
class Copy:
    """A tree of this machine copied into the image."""

    source: Path  # absolute, on this machine
    dest: str  # relative path in the image


def default_python_lib() -> Path:
    """The library directory (stdlib and site-packages) of the Python running this script,
    even from inside a venv."""
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def layer_copies(python_lib: Path) -> tuple[list[Copy], list[Copy]]:
    """The trees of layers 1 and 2."""
    layer1 = [Copy(Path("/usr/share"), "usr/share"), Copy(Path("/usr/include"), "usr/include")]
    layer2 = [
        Copy(python_lib, f"usr/local/lib/{python_lib.name}"),
        Copy(Path("/usr/lib/python3"), "usr/lib/python3"),
    ]
    return layer1, layer2


def recipe(python_lib: Path) -> str:
    """What the stamp file records: a changed recipe rebuilds the layout."""
    layer1, layer2 = layer_copies(python_lib)

    def names(copies: list[Copy]) -> str:
        return " ".join(f"{c.source}->/{c.dest}" for c in copies)

    return (
        f"1: {names(layer1)}; 2: {names(layer2)}; 3: rm -rf /{DELETED}, /{BIG_NAME} "
        f"{BIG_SIZE} bytes of urandom({BIG_CHUNK}) repeated; umoci gzip; {RECIPE_VERSION}"
    )


def _run(cmd: Sequence[str], what: str) -> None:
    proc = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if proc.returncode != 0:
        raise BenchError(
            f"{what} failed (exit status {proc.returncode}): {shlex.join(cmd)}\n"
            f"--- stderr ---\n{proc.stderr.decode(errors='replace').rstrip()}"
        )


def copy_tree(copy: Copy, rootfs: Path, rootless: bool, log: Callable[[str], None]) -> None:
    """copy.source's contents (and its own metadata) into rootfs/copy.dest; parents
    the image does not have yet are made 0755."""
    dest = rootfs / copy.dest
    missing = [p for p in [dest, *dest.parents] if p != rootfs and rootfs in p.parents]
    for p in reversed(missing):
        if not p.exists():
            p.mkdir(mode=0o755)
            os.chmod(p, 0o755)
    flags = ["--numeric-owner", "--xattrs", "--xattrs-include=*"]
    create = ["tar", *flags, "-C", str(copy.source), "-cf", "-", "."]
    if rootless:
        create.insert(1, "--ignore-failed-read")
    extract = ["tar", *flags, "-C", str(dest), "-xpf", "-"]
    with subprocess.Popen(create, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as reader:
        assert reader.stdout is not None
        writer = subprocess.run(extract, stdin=reader.stdout, capture_output=True, check=False)
        reader.stdout.close()
        reader_err = reader.stderr.read().decode(errors="replace") if reader.stderr else ""
    # GNU tar exits 1 when a file changed while it was read (a live system tree).
    if reader.returncode not in (0, 1) or writer.returncode != 0:
        raise BenchError(
            f"copying {copy.source} to /{copy.dest} failed (tar exit statuses "
            f"{reader.returncode}, {writer.returncode}):\n{reader_err.rstrip()}\n"
            f"{writer.stderr.decode(errors='replace').rstrip()}"
        )
    if reader.returncode == 1 or reader_err.strip():
        log(f"  warning while copying {copy.source}: {reader_err.strip().splitlines()[:3]}")


def write_big_file(path: Path) -> None:
    chunk = os.urandom(BIG_CHUNK)
    with path.open("wb") as f:
        for _ in range(BIG_SIZE // BIG_CHUNK):
            f.write(chunk)
    os.chmod(path, 0o644)
    os.utime(path, (BIG_MTIME, BIG_MTIME))


def count_paths(rootfs: Path) -> tuple[int, int]:
    """(entries, directories) under rootfs, rootfs itself not counted."""
    entries = dirs = 0
    for _dirpath, dirnames, filenames in os.walk(rootfs):
        entries += len(dirnames) + len(filenames)
        dirs += len(dirnames)
    return entries, dirs


def build_realtree_layout(
    layout: Path,
    tag: str = DEFAULT_TAG,
    python_lib: Path | None = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
) -> bool:
    """Build the layout unless its stamp matches the recipe; True if it was (re)built."""
    python_lib = (python_lib or default_python_lib()).resolve()
    text = recipe(python_lib)
    stamp = layout.with_name(layout.name + ".done")
    if layout.is_dir() and stamp.is_file() and stamp.read_text().strip() == text:
        return False
    layer1, layer2 = layer_copies(python_lib)
    for c in [*layer1, *layer2]:
        if not c.source.is_dir():
            raise BenchError(f"realtree image: {c.source} is not a directory")
    rootless = os.geteuid() != 0
    rootless_flag = ["--rootless"] if rootless else []
    log(f"building {layout}:{tag} ({text}); takes a few minutes")
    remove_tree(layout)
    stamp.unlink(missing_ok=True)
    tmp = layout.with_name(f".{layout.name}.tmp")
    bundle = layout.with_name(f".{layout.name}.bundle")
    remove_tree(tmp)
    remove_tree(bundle)
    layout.parent.mkdir(parents=True, exist_ok=True)
    ref = f"{tmp}:{tag}"
    try:
        _run(["umoci", "init", "--layout", str(tmp)], "umoci init")
        _run(["umoci", "new", "--image", ref], "umoci new")
        _run(["umoci", "unpack", *rootless_flag, "--image", ref, str(bundle)], "umoci unpack")
        rootfs = bundle / "rootfs"

        def repack(comment: str) -> None:
            log(f"  umoci repack: {comment}")
            _run(
                [
                    "umoci",
                    "repack",
                    "--refresh-bundle",
                    "--image",
                    ref,
                    "--history.created_by",
                    f"realtree_image.py: {comment}",
                    str(bundle),
                ],
                "umoci repack",
            )

        for n, copies in ((1, layer1), (2, layer2)):
            for c in copies:
                log(f"  layer {n}: copying {c.source} to /{c.dest}")
                copy_tree(c, rootfs, rootless, log)
            repack(f"layer {n}: " + " ".join(f"/{c.dest}" for c in copies))

        remove_tree(rootfs / DELETED)
        write_big_file(rootfs / BIG_NAME)
        entries, dirs = count_paths(rootfs)
        repack(f"layer 3: rm -rf /{DELETED}; add /{BIG_NAME} (1 GiB)")
        _run(["umoci", "gc", "--layout", str(tmp)], "umoci gc")
        os.sync()
        tmp.rename(layout)
    finally:
        remove_tree(bundle)
        remove_tree(tmp)
    stamp.write_text(text + "\n")
    log(f"  {layout}:{tag}: {entries} paths ({dirs} directories) in the merged tree")
    if entries < MIN_PATHS:
        log(f"  warning: fewer than {MIN_PATHS} paths; this machine's trees are smaller")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layout", type=Path, default=DEFAULT_LAYOUT, help=f"default: {DEFAULT_LAYOUT}")
    p.add_argument("--tag", default=DEFAULT_TAG, help=f"default: {DEFAULT_TAG}")
    p.add_argument(
        "--python-lib",
        type=Path,
        default=None,
        help=f"Python library directory for layer 2 (default: {default_python_lib()})",
    )
    args = p.parse_args(argv)
    layout = args.layout.resolve()
    try:
        built = build_realtree_layout(layout, args.tag, args.python_lib)
    except BenchError as e:
        print(f"realtree_image: {e}", file=sys.stderr)
        return 1
    if not built:
        print(f"reusing {layout} ({layout.name}.done matches)", file=sys.stderr)
    print(f"oci:{layout}:{args.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
