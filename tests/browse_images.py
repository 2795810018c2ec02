"""Images for the browser's tests, whose every answer is known by construction."""

from __future__ import annotations

from pathlib import Path

from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import run_in

from snapshotter.explore.image import StoredImage, open_image
from snapshotter.store.store import Store

# A text file long enough to need paging, and a binary one.
PY_SOURCE = "".join(f"def f{i}(x):\n    return x + {i}  # line {i}\n" for i in range(5000)).encode()
BINARY = bytes(range(256)) * 64 + b"\0tail"
MANY = 300  # files in many/ (layer 1); layer 3 makes the directory opaque


def layers() -> list[LayerBuilder]:
    base = LayerBuilder().dir("etc").file("etc/hosts", b"127.0.0.1 localhost\n")
    base.file("etc/conf", b"v1\n").file("etc/same", b"same\n")
    base.dir("bin").file("bin/tool", BINARY, mode=0o755)
    base.dir("many")
    for i in range(MANY):
        base.file(f"many/f{i:03d}", b"x" * (i + 1))
    base.dir("usr").dir("usr/share").file("usr/share/big", b"B" * 50_000)
    app = LayerBuilder().file("etc/conf", b"v2, longer\n").whiteout("etc/hosts")
    app.file("etc/same", b"same\n")  # written again, identical: unmodified
    app.symlink("etc/link", "conf").dir("app").file("app/main.py", PY_SOURCE)
    top = LayerBuilder().opaque("many").file("many/only", b"the one file left")
    top.file("etc/conf", b"v3\n", mode=0o600)
    return [base, app, top]


HISTORY = [
    {"created_by": "/bin/sh -c #(nop) ADD file:abc in / "},
    {"created_by": "/bin/sh -c #(nop)  ENV A=1", "empty_layer": True},
    {"created_by": "/bin/sh -c apt-get install app\n&& clean"},
    {"created_by": "COPY many /many # buildkit"},
]


def other_layers() -> list[LayerBuilder]:
    """Shares the base; then changes other things."""
    base = layers()[0]
    top = LayerBuilder().file("etc/conf", b"other\n").whiteout("usr").file("new", b"n")
    return [base, top]


def build(root: Path, tmp: Path) -> tuple[StoredImage, StoredImage]:
    """Pull both images into the store at ``root``: (browse:1, browse:other)."""
    cli = run_in(root)
    image = ImageBuilder(layers(), config_extra={"Cmd": ["/bin/sh"]}, history=HISTORY)
    other = ImageBuilder(other_layers())
    for name, built in (("browse:1", image), ("browse:other", other)):
        layout = tmp / name.replace(":", "-")
        write_oci_layout(layout, {"t": built})
        result = cli("pull", "-q", f"oci:{layout}:t", "--name", name)
        assert result.rc == 0, result.err
    store = Store(root)
    return open_image(store, "browse:1"), open_image(store, "browse:other")
