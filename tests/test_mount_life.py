"""The life of real mounts beyond test_fusefs.py: several views from one store, and what a
live view meets (missing data, signals, busy and foreign mounts, odd mountpoint names).

Every view here is made by the real ``snapshotter mount`` in its own process, so its daemon
is a real daemon (not a fork of pytest), and always unmounted and reaped.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import run_in, run_snapshotter
from test_fusefs import daemons, force_unmount, gone, need_fuse

from snapshotter.view.mount import mounted_at

# -- plumbing ------------------------------------------------------------------------------


def snapshotter(root: Path, *args: str) -> tuple[int, str, str]:
    done = run_snapshotter("--root", str(root), *args)
    return done.returncode, done.stdout, done.stderr


def pull(root: Path, tmp: Path, name: str, image: ImageBuilder) -> str:
    """Pull in-process (quick); only mounts need a process of their own."""
    layout = tmp / f"layout-{len(list(tmp.glob('layout-*')))}"
    write_oci_layout(layout, {"1": image})
    result = run_in(root)("pull", "-q", f"oci:{layout}:1", "--name", name)
    assert result.rc == 0, result.err
    return name


@contextlib.contextmanager
def mounted(root: Path, image: str, mp: Path, *extra: str) -> Iterator[int]:
    """``snapshotter mount`` in its own process; yield the daemon's pid; always unmount."""
    pids: list[int] = []
    try:
        rc, out, err = snapshotter(root, "mount", image, str(mp), *extra)
        assert rc == 0 and out == "", err
        pids = daemons(root, mp)
        assert len(pids) == 1, pids
        yield pids[0]
    finally:
        if mounted_at(mp):
            snapshotter(root, "umount", str(mp))
        force_unmount(mp)
        for pid in pids:
            if not gone(pid, 5):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                gone(pid, 5)


# -- several views of one store ------------------------------------------------------------


def test_images_sharing_their_top_layer_over_different_bases_each_show_their_own(tmp_path):
    """The merged-tree cache is keyed by the chain id of the whole stack, not by the top
    layer: two stacks ending in the same layer must not share a tree."""
    need_fuse()
    root = tmp_path / "store"
    top = LayerBuilder().file("top", b"shared").whiteout("gone").file("base", b"top wins here")
    base_a = LayerBuilder().file("base", b"a").file("only-a", b"a").dir("gone")
    base_b = LayerBuilder().file("kept", b"b").file("gone", b"b").dir("only-b")
    a = pull(root, tmp_path, "example.com/a:1", ImageBuilder([base_a, top]))
    b = pull(root, tmp_path, "example.com/b:1", ImageBuilder([base_b, top]))
    assert top.diff_id() == ImageBuilder([base_a, top]).layers[-1].diff_id()
    snapshots = root / "snapshots" / "sha256"
    assert len(list(snapshots.iterdir())) == 3  # the top layer is one snapshot for both
    mp_a, mp_b = tmp_path / "mp-a", tmp_path / "mp-b"
    mp_a.mkdir()
    mp_b.mkdir()
    with mounted(root, a, mp_a), mounted(root, b, mp_b):
        assert sorted(os.listdir(mp_a)) == ["base", "only-a", "top"]
        assert sorted(os.listdir(mp_b)) == ["base", "kept", "only-b", "top"]
        assert (mp_a / "only-a").read_bytes() == b"a" and (mp_b / "kept").read_bytes() == b"b"
        assert (mp_a / "top").read_bytes() == (mp_b / "top").read_bytes() == b"shared"
        assert (mp_a / "base").read_bytes() == (mp_b / "base").read_bytes() == b"top wins here"
    assert len(list((root / "merged").iterdir())) == 2
