#!/usr/bin/env python3
"""Write an OCI layout of a wide image for mount benchmarks: 100 directories of 1,000 small
files each (100,104 entries over 2 layers), built with tests/builders.py, no network.

    python scripts/wide_image.py [DIR]        # default /var/tmp/l100k, tag 1
    snapshotter pull oci:/var/tmp/l100k:1 && snapshotter mount localhost/l100k:1 MNT
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from builders import ImageBuilder, LayerBuilder, write_oci_layout  # noqa: E402


def main() -> None:
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/l100k")
    if dest.exists():
        sys.exit(f"wide_image: {dest} exists; remove it first")
    wide = LayerBuilder()
    for d in range(100):
        wide.dir(f"usr/share/d{d:03}")
        for i in range(1000):
            wide.file(f"usr/share/d{d:03}/some-file-name-{i:05}.txt", b"x" * (i % 7))
    write_oci_layout(dest, {"1": ImageBuilder([wide, LayerBuilder().file("etc/x", b"y")])})
    print(f"oci:{dest}:1")


if __name__ == "__main__":
    main()
