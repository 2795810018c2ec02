#!/usr/bin/env python3
"""Build the built-in sample image: a small, three-layer OCI layout made with tarfile.

    python scripts/sample_image.py DIR        -> oci:DIR:latest

Layer 1 lays down a tiny root file system; layer 2 (zstd) changes it the way a Dockerfile
RUN would: it deletes a file (whiteout), replaces a directory (opaque), adds a hardlink, a
symlink and a setuid binary; layer 3 adds an app.  Its config's history is what BuildKit
would record for the Dockerfile those layers stand for (ENV, WORKDIR and CMD as empty
layers).  No network, no root needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from builders import ImageBuilder, LayerBuilder, write_oci_layout  # noqa: E402

OS_RELEASE = b'PRETTY_NAME="snapshotter sample"\nID=sample\nVERSION_ID="1"\n'


def _step(created: str, created_by: str, *, empty: bool = False) -> dict[str, object]:
    step: dict[str, object] = {
        "created": created,
        "created_by": created_by,
        "comment": "buildkit.dockerfile.v0",
    }
    if empty:
        step["empty_layer"] = True
    return step


def build(path: Path) -> Path:
    base = (
        LayerBuilder()
        .dir("etc")
        .file("etc/os-release", OS_RELEASE)
        .file("etc/hostname", b"sample\n")
        .file("etc/motd", b"welcome to the sample image\n")
        .dir("etc/cache")
        .file("etc/cache/stale-1", b"old\n")
        .file("etc/cache/stale-2", b"old\n")
        .dir("bin")
        .file("bin/hello", b"#!/bin/sh\necho hello from the sample image\n", mode=0o755)
        .dir("tmp", mode=0o1777)
        .chardev("dev/null", 1, 3, mode=0o666)
        .dir("home/user", uid=1000, gid=1000, mode=0o750)
        .file("home/user/notes.txt", b"uid 1000 owns this\n", uid=1000, gid=1000, mode=0o640)
    )
    change = (
        LayerBuilder()
        .whiteout("etc/motd")
        .dir("etc/cache")
        .opaque("etc/cache")
        .file("etc/cache/fresh", b"new\n")
        .file("bin/su", b"#!/bin/sh\necho pretend\n", mode=0o4755)
        .hardlink("bin/hello-again", "bin/su")
        .symlink("bin/sh-link", "/bin/hello")
    )
    app = (
        LayerBuilder()
        .dir("app")
        .file("app/main.py", b"print('hello from /app')\n", mode=0o644)
        .file("app/config.json", b'{"debug": false}\n', xattrs={"user.origin": b"sample"})
    )
    image = ImageBuilder(
        layers=[base, change, app],
        layer_compressions=["gzip", "zstd", "none"],
        config_extra={"Cmd": ["/bin/hello"], "Env": ["PATH=/bin"], "WorkingDir": "/app"},
        # what BuildKit would record for the Dockerfile these layers stand for
        history=[
            _step("2024-01-01T00:00:00Z", "COPY rootfs/ / # buildkit"),
            _step("2024-01-01T00:00:01Z", "ENV PATH=/bin", empty=True),
            _step(
                "2024-01-01T00:00:02Z",
                "RUN /bin/sh -c rm /etc/motd && rm -rf /etc/cache && mkdir /etc/cache "
                "&& echo new > /etc/cache/fresh && install -m 4755 su /bin/su "
                "&& ln /bin/su /bin/hello-again && ln -s /bin/hello /bin/sh-link # buildkit",
            ),
            _step("2024-01-01T00:00:03Z", "WORKDIR /app", empty=True),
            _step("2024-01-01T00:00:04Z", "COPY app/ /app/ # buildkit"),
            _step("2024-01-01T00:00:05Z", 'CMD ["/bin/hello"]', empty=True),
        ],
    )
    return write_oci_layout(path, {"latest": image})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    print(build(Path(sys.argv[1])))
