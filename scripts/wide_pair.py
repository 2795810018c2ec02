#!/usr/bin/env python3
"""Write an OCI layout of wide images for ``diff`` timings: the 100k-entry image of
wide_image.py (tag ``1``), the same plus a small top layer (tag ``2``: 10 files changed,
one of the 100 directories whited out, 10 files added), and the same files with another
mtime, so that no layer is shared with tag 1 (tag ``3``).

    python scripts/wide_pair.py DIR
    snapshotter pull oci:DIR:1 --name wide:1   (and :2, :3)
    snapshotter diff wide:1 wide:2             # shares 2 layers: only the top one is read
    snapshotter diff wide:1 wide:3             # shares none: both trees walked in step
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from builders import ImageBuilder, LayerBuilder, write_oci_layout  # noqa: E402


def wide(mtime: int | None = None) -> LayerBuilder:
    """wide_image.py's layer (byte for byte when ``mtime`` is None)."""
    layer = LayerBuilder() if mtime is None else LayerBuilder(mtime=mtime)
    for d in range(100):
        layer.dir(f"usr/share/d{d:03}")
        for i in range(1000):
            layer.file(f"usr/share/d{d:03}/some-file-name-{i:05}.txt", b"x" * (i % 7))
    return layer


def main() -> None:
    dest = Path(sys.argv[1])
    if dest.exists():
        sys.exit(f"wide_pair: {dest} exists; remove it first")
    small = LayerBuilder().file("etc/x", b"y")
    top = LayerBuilder().whiteout("usr/share/d050")
    for i in range(10):
        top.file(f"usr/share/d001/some-file-name-{i:05}.txt", b"changed")
        top.file(f"opt/new-{i}", b"new")
    images = {
        "1": ImageBuilder([wide(), small]),
        "2": ImageBuilder([wide(), small, top]),
        "3": ImageBuilder([wide(1_600_000_000), small]),
    }
    write_oci_layout(dest, images)
    for tag in images:
        print(f"oci:{dest}:{tag}")


if __name__ == "__main__":
    main()
