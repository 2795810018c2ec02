"""The store: dedupe, names, rmi/prune, live mounts, crash safety, concurrency, verification.

Every image is built here with tests/builders.py and imported through the real command
(in-process via the ``cli`` fixture, or as a subprocess where a kill or a race is the point).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from builders import ImageBuilder, LayerBuilder, sha256_digest, write_oci_layout
from conftest import REPO, need_tool, run_snapshotter, tree_state

from snapshotter.store.store import Staging, Store

# -- helpers -----------------------------------------------------------------------------------


def layer(name: str, data: bytes = b"") -> LayerBuilder:
    return LayerBuilder().file(name, data or name.encode() * 100)


def noise(seed: int, size: int) -> bytes:
    """Incompressible, reproducible bytes."""
    return random.Random(seed).randbytes(size)


def oci(path: Path, images: dict[str, ImageBuilder]) -> str:
    write_oci_layout(path, images)
    return f"oci:{path}"


def pull(cli, source: str, *extra: str) -> dict:
    result = cli("pull", "--json", "--quiet", *extra, source)
    assert result.rc == 0, result.err
    return json.loads(result.out)


def images(cli, *args: str) -> list[dict]:
    result = cli("images", "--json", *args)
    assert result.rc == 0, result.err
    return json.loads(result.out)


def one_line_error(result) -> str:
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapshotter: error: "), result.err
    return lines[0]


def snapshot_dirs(root: Path) -> set[str]:
    base = root / "snapshots" / "sha256"
    return {f"sha256:{p.name}" for p in base.iterdir()} if base.is_dir() else set()


def blob_files(root: Path) -> set[str]:
    base = root / "blobs" / "sha256"
    return {f"sha256:{p.name}" for p in base.iterdir()} if base.is_dir() else set()


def complete_snapshot(root: Path, diff_id: str) -> bool:
    return (root / "snapshots" / "sha256" / diff_id.split(":")[1] / "toc.json.zst").is_file()


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if not p.is_dir()]


BASE = layer("etc/os-release", b"ID=test\n")
LIB = layer("usr/lib/libc.so", noise(1, 20_000))


def app_image(own: str) -> ImageBuilder:
    """Two shared layers (BASE, LIB) and one of its own."""
    return ImageBuilder([BASE, LIB, layer(f"app/{own}")])


# -- dedupe ------------------------------------------------------------------------------------


def test_second_image_reuses_shared_base_layers(cli, store_root, tmp_path):
    a, b = app_image("a"), app_image("b")
    first = pull(cli, oci(tmp_path / "a", {"1": a}))
    second = pull(cli, oci(tmp_path / "b", {"1": b}))

    assert (first["unpacked"], first["reused"]) == (3, 0)
    assert (second["unpacked"], second["reused"]) == (1, 2)
    assert second["diff_ids"][:2] == first["diff_ids"][:2]
    assert snapshot_dirs(store_root) == set(first["diff_ids"]) | set(second["diff_ids"])
    assert len(snapshot_dirs(store_root)) == 4
    assert all(complete_snapshot(store_root, d) for d in snapshot_dirs(store_root))
    # manifests and configs are kept verbatim; layer blobs are not (their snapshots are)
    assert blob_files(store_root) == {first["digest"], first["id"], second["digest"], second["id"]}
    assert (store_root / "blobs/sha256" / a.manifest_digest().split(":")[1]).read_bytes() == (
        a.manifest_bytes()
    )


def test_pulling_the_same_image_twice_changes_nothing(cli, store_root, tmp_path):
    source = oci(tmp_path / "a", {"1": app_image("a")})
    first = pull(cli, source)
    before = tree_state(store_root)
    again = pull(cli, source)

    assert again["digest"] == first["digest"]
    assert (again["unpacked"], again["reused"]) == (0, 3)
    assert tree_state(store_root) == before  # state.json included: same record, same time
    assert [i["digest"] for i in images(cli)] == [first["digest"]]


def test_one_layer_used_twice_in_an_image_is_one_snapshot(cli, store_root, tmp_path):
    img = ImageBuilder([BASE, layer("x"), BASE])
    doc = pull(cli, oci(tmp_path / "a", {"1": img}))
    assert doc["layers"] == 3
    assert doc["diff_ids"][0] == doc["diff_ids"][2]
    assert snapshot_dirs(store_root) == set(doc["diff_ids"]) and len(snapshot_dirs(store_root)) == 2


# -- names -------------------------------------------------------------------------------------


def test_pull_moves_a_name_and_leaves_the_old_image_dangling(cli, store_root, tmp_path):
    layout = tmp_path / "app"
    old = pull(cli, oci(layout, {"1.0": app_image("old")}))
    new = pull(cli, oci(layout, {"1.0": app_image("new")}))  # index.json replaced: same tag

    assert old["names"] == new["names"] == ["localhost/app:1.0"]
    assert old["digest"] != new["digest"]
    assert old["moved"] == [] and new["moved"] == ["localhost/app:1.0"]
    dangling = images(cli, "--filter", "dangling=true")
    assert [(i["digest"], i["names"], i["dangling"]) for i in dangling] == [
        (old["digest"], [], True)
    ]
    named = images(cli, "--filter", "dangling=false")
    assert [(i["digest"], i["names"]) for i in named] == [(new["digest"], ["localhost/app:1.0"])]
    table = cli("images").out.splitlines()
    assert any(row.split()[:2] == ["<none>", "<none>"] for row in table[1:])
    assert all(complete_snapshot(store_root, d) for d in old["diff_ids"])  # it is still whole


def test_name_option_overrides_the_source_name(cli, tmp_path):
    doc = pull(cli, oci(tmp_path / "app", {"1.0": app_image("a")}), "--name", "example.com/t/x:2")
    assert doc["names"] == ["example.com/t/x:2"]
    assert [i["names"] for i in images(cli)] == [["example.com/t/x:2"]]
    short = pull(cli, oci(tmp_path / "app2", {"1.0": app_image("b")}), "--name", "busybox")
    assert short["names"] == ["docker.io/library/busybox:latest"]
    bad = cli("pull", "-q", "--name", "UPPER/Case", f"oci:{tmp_path / 'app'}:1.0")
    assert bad.rc == 1 and "UPPER/Case" in one_line_error(bad)


def test_inspect_addresses_an_image_by_name_digest_and_prefixes(cli, tmp_path):
    doc = pull(cli, oci(tmp_path / "app", {"1.0": app_image("a")}))
    other = pull(cli, oci(tmp_path / "other", {"1.0": app_image("b")}))
    digest, config = doc["digest"], doc["id"]
    hexd, config_hex = digest.split(":")[1], config.split(":")[1]
    for text in (
        "localhost/app:1.0",
        "app:1.0",  # a short name is tried under localhost/ too
        f"localhost/app@{digest}",
        f"localhost/app:1.0@{digest}",
        digest,
        hexd,
        hexd[:12],
        f"sha256:{hexd[:12]}",
        config_hex[:12],
        config,
    ):
        result = cli("inspect", "--record", text)
        assert result.rc == 0, (text, result.err)
        record = json.loads(result.out)
        assert (record["digest"], record["config"], record["names"]) == (
            digest,
            config,
            ["localhost/app:1.0"],
        ), text
    assert json.loads(cli("inspect", "--record", other["digest"]).out)["digest"] == other["digest"]
    for missing in ("localhost/app:2.0", "sha256:" + "0" * 64, "abcdef0123", "localhost/app"):
        result = cli("inspect", missing)
        assert result.rc == 1, missing
        one_line_error(result)


def _two_images_sharing_a_digest_prefix() -> tuple[ImageBuilder, ImageBuilder, str]:
    """Two images whose manifest digests share their first 3 hex digits (found by search)."""
    seen: dict[str, ImageBuilder] = {}
    for i in range(5000):
        img = ImageBuilder([BASE], config_extra={"Labels": {"n": str(i)}})
        prefix = img.manifest_digest().split(":")[1][:3]
        if prefix in seen:
            return seen[prefix], img, prefix
        seen[prefix] = img
    raise AssertionError("no shared prefix found")


def test_ambiguous_prefix_is_refused_and_a_longer_one_works(cli, tmp_path):
    a, b, prefix = _two_images_sharing_a_digest_prefix()
    da = pull(cli, oci(tmp_path / "a", {"1": a}))["digest"]
    db = pull(cli, oci(tmp_path / "b", {"1": b}))["digest"]
    result = cli("inspect", prefix)
    assert result.rc == 1
    assert "matches 2 images" in one_line_error(result)
    n = next(n for n in range(4, 65) if da[7:][:n] != db[7:][:n])  # shortest unique length
    for digest in (da, db):
        assert json.loads(cli("inspect", "--record", digest[7:][:n]).out)["digest"] == digest


# -- tag / rmi ---------------------------------------------------------------------------------


def test_rmi_by_name_drops_only_that_name(cli, store_root, tmp_path):
    doc = pull(cli, oci(tmp_path / "app", {"1.0": app_image("a")}))
    assert cli("tag", "localhost/app:1.0", "example.com/app:prod").rc == 0
    before_snapshots = snapshot_dirs(store_root)

    result = cli("rmi", "localhost/app:1.0")
    assert result.rc == 0, result.err
    assert result.out.splitlines() == ["Untagged: localhost/app:1.0"]
    assert [(i["digest"], i["names"]) for i in images(cli)] == [
        (doc["digest"], ["example.com/app:prod"])
    ]
    assert snapshot_dirs(store_root) == before_snapshots


def test_image_goes_with_its_last_name_and_only_its_own_snapshots(cli, store_root, tmp_path):
    a = pull(cli, oci(tmp_path / "a", {"1": app_image("a")}))
    b = pull(cli, oci(tmp_path / "b", {"1": app_image("b")}))

    result = cli("rmi", "localhost/a:1")
    assert result.rc == 0, result.err
    assert result.out.splitlines() == ["Untagged: localhost/a:1", f"Deleted: {a['digest']}"]
    assert [i["digest"] for i in images(cli)] == [b["digest"]]
    assert snapshot_dirs(store_root) == set(b["diff_ids"])  # shared base layers stay
    assert a["diff_ids"][2] not in snapshot_dirs(store_root)
    assert blob_files(store_root) == {b["digest"], b["id"]}
    assert "Freed" in result.err
    assert list((store_root / "tmp").iterdir()) == []


def test_rmi_by_digest_of_a_multi_named_image_needs_force(cli, store_root, tmp_path):
    doc = pull(cli, oci(tmp_path / "app", {"1.0": app_image("a")}))
    assert cli("tag", "localhost/app:1.0", "localhost/app:also").rc == 0
    before = tree_state(store_root)

    refused = cli("rmi", doc["digest"])
    assert refused.rc == 1
    line = one_line_error(refused)
    assert "2 names" in line and "--force" in line
    assert tree_state(store_root) == before

    forced = cli("rmi", "--force", doc["digest"])
    assert forced.rc == 0, forced.err
    assert sorted(forced.out.splitlines()) == sorted(
        ["Untagged: localhost/app:1.0", "Untagged: localhost/app:also", f"Deleted: {doc['digest']}"]
    )
    assert images(cli) == []
    assert snapshot_dirs(store_root) == set() and blob_files(store_root) == set()


def test_rmi_of_an_unknown_name_fails_and_the_others_still_go(cli, store_root, tmp_path):
    pull(cli, oci(tmp_path / "app", {"1.0": app_image("a")}))
    before = tree_state(store_root)
    result = cli("rmi", "localhost/nope:1")
    assert result.rc == 1
    assert "localhost/nope:1" in one_line_error(result)
    assert tree_state(store_root) == before

    both = cli("rmi", "localhost/nope:1", "localhost/app:1.0")
    assert both.rc == 1
    assert images(cli) == []  # the known one was removed all the same


def test_tag_of_unknown_image_or_to_a_bad_name_fails(cli, store_root, tmp_path):
    pull(cli, oci(tmp_path / "app", {"1.0": app_image("a")}))
    before = tree_state(store_root)
    for args in (("localhost/nope:1", "x:1"), ("localhost/app:1.0", "Bad Name")):
        result = cli("tag", *args)
        assert result.rc == 1, args
        one_line_error(result)
    assert tree_state(store_root) == before


# -- prune -------------------------------------------------------------------------------------


def _disk_usage(path: Path) -> int:
    return sum(os.lstat(p).st_blocks * 512 for p in files_under(path))


def test_prune_removes_only_dangling_images_and_reports_what_it_freed(cli, store_root, tmp_path):
    layout = tmp_path / "app"
    old = pull(cli, oci(layout, {"1.0": app_image("old")}))
    new = pull(cli, oci(layout, {"1.0": app_image("new")}))
    only_old = set(old["diff_ids"]) - set(new["diff_ids"])
    assert len(only_old) == 1
    snap = store_root / "snapshots/sha256" / next(iter(only_old)).split(":")[1]
    from snapshotter.oci.digest import Digest
    from snapshotter.oci.model import chain_ids

    old_chain = chain_ids([Digest.parse(d) for d in old["diff_ids"]])[-1]
    expected_freed = (
        _disk_usage(snap)
        + sum(
            (store_root / "blobs/sha256" / d.split(":")[1]).stat().st_size
            for d in (old["digest"], old["id"])
        )
        + (store_root / "merged" / old_chain.hex).stat().st_size  # built by pull
    )

    result = cli("prune", "--json")
    assert result.rc == 0, result.err
    report = json.loads(result.out)
    assert report["images"] == [old["digest"]]
    assert sorted(report["snapshots"]) == sorted(only_old)
    assert sorted(report["blobs"]) == sorted([old["digest"], old["id"]])
    assert report["freed"] == expected_freed > 0
    assert [i["digest"] for i in images(cli)] == [new["digest"]]
    assert snapshot_dirs(store_root) == set(new["diff_ids"])
    assert blob_files(store_root) == {new["digest"], new["id"]}

    again = json.loads(cli("prune", "--json").out)
    assert again == {
        "images": [],
        "snapshots": [],
        "blobs": [],
        "indexes": None,  # the lazy caches: left alone without --indexes or -a
        "spans": None,
        "freed": 0,
    }


def test_prune_all_removes_every_image_and_empties_the_store(cli, store_root, tmp_path):
    a = pull(cli, oci(tmp_path / "a", {"1": app_image("a")}))
    b = pull(cli, oci(tmp_path / "b", {"1": app_image("b")}))
    expected_freed = _disk_usage(store_root / "snapshots") + sum(
        f.stat().st_size
        for f in files_under(store_root / "blobs") + files_under(store_root / "merged")
    )  # snapshots by blocks on disk, blobs and merged trees (built by pull) by their size

    result = cli("prune", "-a", "--json")
    assert result.rc == 0, result.err
    report = json.loads(result.out)
    assert sorted(report["images"]) == sorted([a["digest"], b["digest"]])
    assert sorted(report["snapshots"]) == sorted(set(a["diff_ids"]) | set(b["diff_ids"]))
    assert sorted(report["blobs"]) == sorted([a["digest"], a["id"], b["digest"], b["id"]])
    assert report["freed"] == expected_freed > 0
    assert images(cli) == []
    assert files_under(store_root / "snapshots") == []
    assert files_under(store_root / "blobs") == []
    assert snapshot_dirs(store_root) == set() and blob_files(store_root) == set()
    assert list((store_root / "tmp").iterdir()) == []
    state = json.loads((store_root / "state.json").read_text())
    assert (state["images"], state["names"], state["layers"]) == ({}, {}, {})


def test_prune_text_output_summarises(cli, tmp_path):
    doc = pull(cli, oci(tmp_path / "a", {"1": app_image("a")}))
    result = cli("prune", "-a")
    assert result.rc == 0
    lines = result.out.splitlines()
    assert lines[0] == f"Deleted: {doc['digest']}"
    assert lines[1].startswith(
        "Removed 1 images, 3 snapshots, 2 blobs, 0 seek indexes, 0 cached spans; "
        "total reclaimed space: "
    )


# -- live mounts -------------------------------------------------------------------------------

_HOLDER = """
import fcntl, json, os, sys, time
path, doc = sys.argv[1], json.loads(sys.argv[2])
f = open(path + ".new", "w")
fcntl.flock(f, fcntl.LOCK_EX)
doc["pid"] = os.getpid()
f.write(json.dumps(doc))
f.flush()
os.rename(path + ".new", path)
print("locked", flush=True)
time.sleep(600)
"""


class LiveMount:
    """A mount record held by a live process, the way the daemon will record it."""

    def __init__(self, store_root: Path, image: str, diff_ids: list[str], mountpoint: str):
        (store_root / "mounts").mkdir(parents=True, exist_ok=True)
        self.record = store_root / "mounts" / f"{uuid.uuid4().hex}.json"
        doc = {"image": image, "diff_ids": diff_ids, "mountpoint": mountpoint, "pid": 0}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(self.record), json.dumps(doc)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@contextmanager
def live_mount(store_root: Path, doc: dict, mountpoint: str = "/x") -> Iterator[LiveMount]:
    mount = LiveMount(store_root, doc["digest"], doc["diff_ids"], mountpoint)
    try:
        yield mount
    finally:
        mount.kill()


def test_mounted_image_is_kept_until_its_mount_dies(cli, store_root, tmp_path):
    doc = pull(cli, oci(tmp_path / "app", {"1.0": app_image("a")}))
    with live_mount(store_root, doc) as mount:
        assert json.loads(mount.record.read_text())["pid"] == mount.proc.pid
        assert [i["mounts"] for i in images(cli)] == [["/x"]]
        for text in ("localhost/app:1.0", doc["digest"]):
            refused = cli("rmi", text)
            assert refused.rc == 1, text
            line = one_line_error(refused)
            assert "in use" in line and "/x" in line
        assert [i["digest"] for i in images(cli)] == [doc["digest"]]

        kept = json.loads(cli("prune", "-a", "--json").out)
        assert kept == {
            "images": [],
            "snapshots": [],
            "blobs": [],
            "indexes": [],  # -a empties the lazy caches too (none here)
            "spans": 0,
            "freed": 0,
        }

        forced = cli("rmi", "--force", "localhost/app:1.0")
        assert forced.rc == 0, forced.err
        assert images(cli) == []
        assert all(complete_snapshot(store_root, d) for d in doc["diff_ids"])
        assert blob_files(store_root) == set()  # manifest and config went with the record

        still = json.loads(cli("prune", "-a", "--json").out)
        assert still["snapshots"] == []
        assert snapshot_dirs(store_root) == set(doc["diff_ids"])

        mount.kill()  # the daemon dies: its record is stale now
        gone = json.loads(cli("prune", "-a", "--json").out)
        assert sorted(gone["snapshots"]) == sorted(doc["diff_ids"])
        assert gone["freed"] > 0
    assert snapshot_dirs(store_root) == set()
    assert list((store_root / "mounts").iterdir()) == []  # the stale record was swept


def test_prune_all_spares_a_mounted_image_and_the_snapshots_it_shares(cli, store_root, tmp_path):
    a = pull(cli, oci(tmp_path / "a", {"1": app_image("a")}))
    b = pull(cli, oci(tmp_path / "b", {"1": app_image("b")}))
    with live_mount(store_root, b, "/mnt/b"):
        report = json.loads(cli("prune", "-a", "--json").out)
        assert report["images"] == [a["digest"]]
        assert report["snapshots"] == [a["diff_ids"][2]]  # the shared base stays for b
        assert [(i["digest"], i["mounts"]) for i in images(cli)] == [(b["digest"], ["/mnt/b"])]
        assert snapshot_dirs(store_root) == set(b["diff_ids"])


def test_a_mount_record_without_a_live_holder_does_not_protect(cli, store_root, tmp_path):
    doc = pull(cli, oci(tmp_path / "app", {"1.0": app_image("a")}))
    record = store_root / "mounts" / "dead.json"
    record.write_text(
        json.dumps(
            {"image": doc["digest"], "diff_ids": doc["diff_ids"], "mountpoint": "/x", "pid": 999999}
        )
    )
    result = cli("rmi", "localhost/app:1.0")
    assert result.rc == 0, result.err
    assert snapshot_dirs(store_root) == set()
    assert not record.exists()


# -- crash safety --------------------------------------------------------------------------------


def _comparable(tree: dict[str, tuple], root: Path) -> dict[str, tuple]:
    """``tree_state`` with state.json's pull times left out (they are wall-clock), and
    without the merged-tree caches (pull writes them after its commit; a missing one is
    rebuilt by whatever opens the image)."""
    out = {k: v for k, v in tree.items() if not k.startswith("merged/")}
    if "state.json" in out:
        state = json.loads((root / "state.json").read_text())
        for image in state["images"].values():
            image.pop("pulled", None)
        out["state.json"] = ("state", json.dumps(state, sort_keys=True))
    return out


def _recover(root: Path) -> None:
    """Take the store lock the way every changing command does (that runs recovery)."""
    with Store(root).locked():
        pass


def _added(root: Path, pristine: Path, kind: str) -> int:
    """How many snapshots or blobs ``root`` has that the pristine store had not."""
    names = snapshot_dirs if kind == "snapshots" else blob_files
    return len(names(root) - names(pristine))


def _moment(store: Path, pristine: Path, image: ImageBuilder) -> str:
    """Where a pull stood when it died, read from what it left in ``store``."""
    state = json.loads((store / "state.json").read_text())
    committed = image.manifest_digest() in state["images"]
    journal = (store / "journal.json").exists()
    staged = [
        layer_dir
        for area in (store / "tmp").iterdir()
        if area.is_dir()
        for layer_dir in area.iterdir()
    ]
    if committed:
        return "committed, journal left" if journal else "done"
    if journal:
        snapshots = _added(store, pristine, "snapshots")
        blobs = _added(store, pristine, "blobs")
        return f"commit: {snapshots}/{len(image.layers)} snapshots, {blobs}/2 blobs moved in"
    tocs = sum((d / "toc.json.zst").is_file() for d in staged)
    if tocs == len(image.layers) == len(staged):
        return "staged"
    if tocs < len(staged) and any(any((d / "data").iterdir()) for d in staged):
        return "unpacking"
    return f"unexpected: {len(staged)} layers in staging, {tocs} with a toc"


# Where to kill a pull of BIG_PULL: (syscalls, which call of them, only on this file of the
# store, the moment its store must show, whether that is past the commit point).  strace
# delivers SIGKILL on entry to that call, so the call itself never runs.  The moments follow
# Store.commit: the journal is created, the 6 staged snapshots, then the manifest and the
# config are renamed into place, then state.json (the commit point), then the journal goes.
KILLS = [
    ("write", 60, None, "unpacking", False),  # the many-files layer writes a file per call
    ("openat", 1, "journal.json", "staged", False),
    ("rename", 1, None, "commit: 0/6 snapshots, 0/2 blobs moved in", False),
    ("rename", 4, None, "commit: 3/6 snapshots, 0/2 blobs moved in", False),
    ("rename", 8, None, "commit: 6/6 snapshots, 1/2 blobs moved in", False),
    ("rename", 9, None, "commit: 6/6 snapshots, 2/2 blobs moved in", False),  # state.json
    ("unlink", 1, "journal.json", "committed, journal left", True),
    (None, 0, None, "done", True),  # not killed
]
SYSCALLS = {
    "write": "write",
    "openat": "openat",
    "rename": "rename,renameat,renameat2",
    "unlink": "unlink,unlinkat",
}


def big_pull() -> ImageBuilder:
    many = LayerBuilder()
    for i in range(200):
        many.file(f"many/f{i:03d}", noise(1000 + i, 100))
    return ImageBuilder([layer(f"blob{i}", noise(100 + i, 256 << 10)) for i in range(5)] + [many])


def test_pull_killed_at_each_moment_leaves_the_store_as_before_or_complete(cli, tmp_path):
    strace = need_tool("strace")
    big = big_pull()
    big_src = oci(tmp_path / "big", {"1": big})
    small_src = oci(tmp_path / "small", {"1": app_image("small")})
    pristine = tmp_path / "pristine"
    assert cli("pull", "-q", small_src, root=pristine).rc == 0
    before = tree_state(pristine)

    reference = tmp_path / "reference"
    shutil.copytree(pristine, reference)
    done = run_snapshotter("--root", str(reference), "pull", "-q", big_src)
    assert done.returncode == 0, done.stderr
    after = _comparable(tree_state(reference), reference)

    for calls, nth, path, moment, past_commit in KILLS:
        store = Path(os.path.realpath(tmp_path)) / "store"  # as strace -P compares it
        shutil.copytree(pristine, store)
        pull = [sys.executable, "-m", "snapshotter.cli", "--root", str(store), "pull", "-q"]
        if calls is None:
            command = pull
        else:
            syscalls = SYSCALLS[calls]
            command = [strace, "-f", "-qq", "-o", "/dev/null"]
            command += ["-e", f"trace={syscalls}"]
            command += ["-e", f"inject={syscalls}:signal=SIGKILL:when={nth}"]
            command += ["-P", str(store / path)] if path else []
            command += pull
        proc = subprocess.run(
            [*command, big_src], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        killed = f"kill at {calls} #{nth}" + (f" of {path}" if path else "")
        if calls is None:
            assert proc.returncode == 0, proc.stderr
        else:  # strace passes the tracee's death on as its own
            assert proc.returncode == -signal.SIGKILL, (killed, proc.returncode, proc.stderr)
        assert _moment(store, pristine, big) == moment, killed

        # A reader sees the old image list or the new one (``images`` recovers first).
        listed = cli("images", "-q", "--no-trunc", root=store)
        assert listed.rc == 0, listed.err
        _recover(store)
        now = tree_state(store)
        if past_commit:
            assert _comparable(now, store) == after, f"{killed} left an incomplete image"
            assert big.config_digest() in listed.out.split()
            doc = json.loads(cli("inspect", "--record", big.manifest_digest(), root=store).out)
            assert all(complete_snapshot(store, lay["diff_id"]) for lay in doc["layers"])
        else:
            assert now == before, f"{killed} left a partial store"
            assert big.config_digest() not in listed.out.split()
        assert list((store / "tmp").iterdir()) == []
        assert not (store / "journal.json").exists()
        shutil.rmtree(store)


def _simulate_dead_pull(root: Path) -> dict[str, Path]:
    """What a pull killed mid-unpack and one killed mid-commit leave behind."""
    token = "0123456789abcdef"
    (root / "tmp" / token / "deadbeef" / "data").mkdir(parents=True)
    (root / "tmp" / token / "deadbeef" / "data" / "2").write_bytes(b"half a layer")
    (root / "tmp" / f"{token}.lock").write_bytes(b"")
    fake_hex = "f" * 64
    fake_snapshot = root / "snapshots" / "sha256" / fake_hex
    (fake_snapshot / "data").mkdir(parents=True)
    (fake_snapshot / "toc.json.zst").write_bytes(b"not really")
    fake_blob = root / "blobs" / "sha256" / ("e" * 64)
    fake_blob.write_bytes(b"{}")
    return {"snapshot": fake_snapshot, "blob": fake_blob}


def test_a_locking_command_undoes_a_dead_commit_from_its_journal(cli, store_root, tmp_path):
    doc = pull(cli, oci(tmp_path / "app", {"1.0": app_image("a")}))
    before = tree_state(store_root)
    fakes = _simulate_dead_pull(store_root)
    referenced = f"snapshots/sha256/{doc['diff_ids'][0].split(':')[1]}"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    (store_root / "journal.json").write_text(
        json.dumps(
            {
                "added": [
                    str(fakes["snapshot"].relative_to(store_root)),
                    str(fakes["blob"].relative_to(store_root)),
                    referenced,  # the commit point was reached for this one: keep it
                    "../outside",  # never outside the store, whatever a journal says
                ]
            }
        )
    )

    result = cli("tag", "localhost/app:1.0", "localhost/app:2.0")  # takes the lock
    assert result.rc == 0, result.err
    assert not (store_root / "journal.json").exists()
    assert not fakes["snapshot"].exists() and not fakes["blob"].exists()
    assert (outside / "keep").read_text() == "mine"
    assert list((store_root / "tmp").iterdir()) == []
    after = tree_state(store_root)
    assert {k: v for k, v in after.items() if k != "state.json"} == {
        k: v for k, v in before.items() if k != "state.json"
    }
    assert complete_snapshot(store_root, doc["diff_ids"][0])


def test_an_unreadable_journal_is_dropped(cli, store_root, tmp_path):
    pull(cli, oci(tmp_path / "app", {"1.0": app_image("a")}))
    before = tree_state(store_root)
    (store_root / "journal.json").write_bytes(b"{trunc")
    assert cli("tag", "localhost/app:1.0", "localhost/app:1.0").rc == 0
    assert tree_state(store_root) == before


def test_images_recovers_what_a_killed_pull_left(cli, store_root, tmp_path):
    pull(cli, oci(tmp_path / "app", {"1.0": app_image("a")}))
    before = tree_state(store_root)
    fakes = _simulate_dead_pull(store_root)
    (store_root / "journal.json").write_text(
        json.dumps({"added": [str(fakes["snapshot"].relative_to(store_root))]})
    )
    fakes["blob"].unlink()
    assert cli("images").rc == 0
    assert not fakes["snapshot"].exists()
    assert not (store_root / "journal.json").exists()
    assert list((store_root / "tmp").iterdir()) == []
    assert tree_state(store_root) == before


def test_live_staging_of_a_running_pull_is_not_swept(cli, store_root, tmp_path):
    pull(cli, oci(tmp_path / "app", {"1.0": app_image("a")}))
    store = Store(store_root)
    with store.staging() as staging:
        (staging.path / "work").write_text("in progress")
        assert cli("tag", "localhost/app:1.0", "localhost/app:x").rc == 0  # runs the sweep
        assert (staging.path / "work").read_text() == "in progress"
    assert list((store_root / "tmp").iterdir()) == []


@pytest.mark.parametrize("leftover", ["tmp/state-b7e520e1b7e5.part", "tmp/blob-0badf00d0bad.part"])
def test_recovery_removes_temp_files_of_a_killed_commit(cli, store_root, tmp_path, leftover):
    doc = pull(cli, oci(tmp_path / "app", {"1.0": app_image("a")}))
    before = tree_state(store_root)
    pending = "blobs/sha256/" + "e" * 64
    temp = store_root / leftover.format(hex="e" * 64)
    temp.write_bytes(b'{"half": "written')
    (store_root / "journal.json").write_text(json.dumps({"added": [pending]}))
    assert cli("tag", doc["digest"], "localhost/app:1.0").rc == 0  # takes the lock: recovers
    assert not temp.exists()
    assert tree_state(store_root) == before


def test_recovery_leaks_no_descriptor_for_a_running_pull(store_root):
    store = Store(store_root)
    with store.staging():
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            with store.locked():
                pass
        assert len(os.listdir("/proc/self/fd")) == fds


# -- concurrency ---------------------------------------------------------------------------------


def _pull_concurrently(store: Path, sources: list[str]) -> list[str]:
    """Start one ``pull -q`` per source at once; return each stdout (the manifest digest)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "snapshotter.cli", "--root", str(store), "pull", "-q", src],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for src in sources
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    digests = []
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
        digests.append(out.strip())
    return digests


def test_concurrent_pulls_share_snapshots_without_leftovers(tmp_path):
    base = layer("base", noise(7, 1 << 20))
    lib = layer("lib", noise(8, 1 << 20))
    sources, builders_, expected = [], [], set()
    for i in range(4):
        img = ImageBuilder([base, lib, layer(f"app{i}", noise(20 + i, 512 << 10))])
        sources.append(oci(tmp_path / f"img{i}", {"1": img}))
        builders_.append(img)
        expected |= {lb.diff_id() for lb in img.layers}
    store = tmp_path / "store"

    digests = _pull_concurrently(store, sources)

    assert digests == [img.manifest_digest() for img in builders_]
    listed = json.loads(run_snapshotter("--root", str(store), "images", "--json").stdout)
    assert sorted((i["digest"], tuple(i["names"])) for i in listed) == sorted(
        (d, (f"localhost/img{i}:1",)) for i, d in enumerate(digests)
    )
    assert snapshot_dirs(store) == expected and len(expected) == 6
    assert all(complete_snapshot(store, d) for d in expected)
    assert list((store / "tmp").iterdir()) == []
    assert not (store / "journal.json").exists()
    state = json.loads((store / "state.json").read_text())
    assert set(state["layers"].values()) == expected


def test_concurrent_pulls_of_one_image_register_it_once(tmp_path):
    img = ImageBuilder([layer("base", noise(9, 1 << 20)), layer("top", noise(10, 1 << 20))])
    source = oci(tmp_path / "img", {"1": img})
    store = tmp_path / "store"

    assert _pull_concurrently(store, [source] * 3) == [img.manifest_digest()] * 3

    listed = json.loads(run_snapshotter("--root", str(store), "images", "--json").stdout)
    assert [(i["digest"], i["names"]) for i in listed] == [
        (img.manifest_digest(), ["localhost/img:1"])
    ]
    assert snapshot_dirs(store) == {lb.diff_id() for lb in img.layers}
    assert list((store / "tmp").iterdir()) == []


def test_recovery_survives_staging_areas_coming_and_going(store_root):
    """Sweeps of tmp/ while another "pull" creates, uses and removes staging areas as fast as
    it can: entries vanish between listing and opening, and a live area must never be swept.
    Runs until enough sweeps really overlapped that churn (a sweep that raises fails)."""
    store = Store(store_root)
    store.ensure()
    stop = threading.Event()
    made = 0  # staging areas created, used and closed by the other "pull"
    swept_live: list[OSError] = []

    def other_pull() -> None:
        nonlocal made
        while not stop.is_set():
            with Staging(store) as staging:
                try:
                    (staging.path / "work").write_bytes(b"x")
                    (staging.path / "work").unlink()
                except OSError as exc:
                    swept_live.append(exc)
            made += 1

    churn = threading.Thread(target=other_pull)
    churn.start()
    overlapped = sweeps = 0
    try:
        deadline = time.monotonic() + 30
        while overlapped < 200 and not swept_live:
            assert time.monotonic() < deadline, f"{overlapped} of {sweeps} sweeps saw churn"
            seen = made
            store.sweep_tmp()
            sweeps += 1
            overlapped += made != seen
    finally:
        stop.set()
        churn.join()
    assert swept_live == []


# -- verification ----------------------------------------------------------------------------------

VICTIM = Path("/tmp") / f"snapshotter-cve-{uuid.uuid4().hex}"


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":")[1]


def _rewrite(layout: Path, edit_manifest=None, edit_config=None) -> None:
    """Edit the (only) image's manifest/config and re-link digests so that they verify."""
    index = json.loads((layout / "index.json").read_bytes())
    desc = index["manifests"][0]
    manifest = json.loads(_blob(layout, desc["digest"]).read_bytes())
    if edit_config:
        config = json.loads(_blob(layout, manifest["config"]["digest"]).read_bytes())
        edit_config(config)
        data = json.dumps(config).encode()
        _blob(layout, sha256_digest(data)).write_bytes(data)
        manifest["config"].update(digest=sha256_digest(data), size=len(data))
    if edit_manifest:
        edit_manifest(manifest)
    data = json.dumps(manifest).encode()
    _blob(layout, sha256_digest(data)).write_bytes(data)
    desc.update(digest=sha256_digest(data), size=len(data))
    (layout / "index.json").write_text(json.dumps(index))


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


GZ, RAW = 0, 1  # layer indices of the victim image: a gzip layer, an uncompressed one
VICTIM_IMAGE = ImageBuilder(
    [layer("gz/file", noise(3, 4000)), layer("raw/file", noise(4, 4000))],
    layer_compressions=["gzip", "none"],
)
LAYERS = VICTIM_IMAGE.built_layers()
WRONG_DIFF_ID = sha256_digest(b"some other layer")


def _set_layer_digest(value: str) -> Callable[[Path], None]:
    def tamper(layout: Path) -> None:
        def edit(m: dict) -> None:
            m["layers"][RAW]["digest"] = value

        _rewrite(layout, edit_manifest=edit)

    return tamper


def _set_diff_id(value: str) -> Callable[[Path], None]:
    def tamper(layout: Path) -> None:
        def edit(c: dict) -> None:
            c["rootfs"]["diff_ids"][RAW] = value

        _rewrite(layout, edit_config=edit)

    return tamper


def _same_size_manifest_edit(layout: Path) -> None:
    """The manifest now names another layer; index.json still has the old digest."""
    path = _blob(layout, VICTIM_IMAGE.manifest_digest())
    path.write_bytes(
        path.read_bytes().replace(LAYERS[GZ].digest.encode(), sha256_digest(b"x").encode())
    )
    assert len(path.read_bytes()) == len(VICTIM_IMAGE.manifest_bytes())


def _same_size_config_edit(layout: Path) -> None:
    path = _blob(layout, VICTIM_IMAGE.config_digest())
    path.write_bytes(path.read_bytes().replace(b"amd64", b"arm64"))


TRAVERSAL = "sha256:" + "../" * 24 + str(VICTIM).lstrip("/")  # aims out of tmp_path

# (id, tamper(layout), substrings the one-line error must contain)
TAMPERS: list[tuple[str, Callable[[Path], None], list[str]]] = [
    (
        "flipped-byte-gzip",
        lambda d: _flip(_blob(d, LAYERS[GZ].digest), LAYERS[GZ].size // 2),
        [LAYERS[GZ].digest, "hashes to"],
    ),
    (
        "flipped-byte-raw",
        lambda d: _flip(_blob(d, LAYERS[RAW].digest), 2000),
        [LAYERS[RAW].digest, "hashes to"],
    ),
    (
        "flipped-last-byte-gzip",
        lambda d: _flip(_blob(d, LAYERS[GZ].digest), LAYERS[GZ].size - 1),
        [LAYERS[GZ].digest],
    ),
    (
        "blob-longer",
        lambda d: _blob(d, LAYERS[GZ].digest).write_bytes(LAYERS[GZ].blob + b"\0" * 7),
        [LAYERS[GZ].digest, f"longer than descriptor size {LAYERS[GZ].size}"],
    ),
    (
        "blob-shorter-raw",
        lambda d: _blob(d, LAYERS[RAW].digest).write_bytes(LAYERS[RAW].blob[:-512]),
        [LAYERS[RAW].digest, f"differs from descriptor {LAYERS[RAW].size}"],
    ),
    (
        "blob-shorter-gzip",
        lambda d: _blob(d, LAYERS[GZ].digest).write_bytes(LAYERS[GZ].blob[:-9]),
        [LAYERS[GZ].digest, f"differs from descriptor {LAYERS[GZ].size}"],
    ),
    (
        "wrong-diff-id",
        _set_diff_id(WRONG_DIFF_ID),
        [WRONG_DIFF_ID, "rootfs.diff_ids", LAYERS[RAW].diff_id],
    ),
    (
        "manifest-tampered-same-size",
        _same_size_manifest_edit,
        ["manifest", VICTIM_IMAGE.manifest_digest(), "hashes to"],
    ),
    (
        "manifest-longer",
        lambda d: _blob(d, VICTIM_IMAGE.manifest_digest()).write_bytes(
            VICTIM_IMAGE.manifest_bytes() + b"\n"
        ),
        ["manifest", VICTIM_IMAGE.manifest_digest(), "differs from descriptor"],
    ),
    (
        "config-tampered",
        _same_size_config_edit,
        ["config", VICTIM_IMAGE.config_digest(), "hashes to"],
    ),
    (
        "layer-digest-traversal",
        _set_layer_digest("sha256:../../../outside/blob"),
        ["sha256:../../../outside/blob", "not a valid digest"],
    ),
    (
        "layer-digest-traversal-out-of-tmp",
        _set_layer_digest(TRAVERSAL),
        [TRAVERSAL[:100], "not a valid digest"],  # the message quotes 100 characters
    ),
    (
        "layer-digest-uppercase",
        _set_layer_digest(LAYERS[RAW].digest.upper().replace("SHA", "sha")),
        ["64 lowercase hex digits"],
    ),
    ("layer-digest-short", _set_layer_digest(LAYERS[RAW].digest[:-1]), ["64 lowercase hex digits"]),
    (
        "layer-digest-unknown-algorithm",
        _set_layer_digest("md5:" + "0" * 32),
        ["unsupported algorithm 'md5'"],
    ),
    (
        "diff-id-traversal",
        _set_diff_id("sha256:../../../outside/snap"),
        ["sha256:../../../outside/snap", "not a valid digest"],
    ),
    (
        "diff-id-uppercase",
        _set_diff_id(LAYERS[RAW].diff_id.upper().replace("SHA", "sha")),
        ["64 lowercase hex digits"],
    ),
]


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    o = tmp_path / "outside"
    o.mkdir()
    (o / "blob").write_bytes(LAYERS[RAW].blob)  # what a traversal would find, if it could
    (o / "snap").mkdir()
    return o


@pytest.mark.parametrize("tamper,message", [t[1:] for t in TAMPERS], ids=[t[0] for t in TAMPERS])
def test_a_bad_image_is_refused_and_changes_nothing(
    cli, store_root, tmp_path, outside, tamper, message
):
    pull(cli, oci(tmp_path / "unrelated", {"1": app_image("unrelated")}))
    layout = tmp_path / "layout"
    source = oci(layout, {"t": VICTIM_IMAGE})
    tamper(layout)
    before = tree_state(tmp_path)  # the store, the layout, and what lies beside them

    result = cli("pull", "--quiet", source)
    assert result.rc == 1
    line = one_line_error(result)
    for text in message:
        assert text in line, line
    assert result.out == ""
    assert tree_state(tmp_path) == before
    assert not VICTIM.exists()


def test_the_untampered_victim_image_pulls(cli, tmp_path):
    doc = pull(cli, oci(tmp_path / "layout", {"t": VICTIM_IMAGE}))
    assert doc["diff_ids"] == [lb.diff_id for lb in LAYERS]


@pytest.mark.parametrize(
    "tamper,where",
    [
        (_set_layer_digest("sha256:../../x"), "layers[1]"),
        (_set_diff_id("sha256:../../x"), "rootfs.diff_ids"),
    ],
    ids=["layer-digest", "diff-id"],
)
def test_an_invalid_digest_error_says_where_it_is(cli, tmp_path, tamper, where):
    layout = tmp_path / "layout"
    source = oci(layout, {"t": VICTIM_IMAGE})
    tamper(layout)
    result = cli("pull", "--quiet", source)
    assert result.rc == 1
    assert where in one_line_error(result)
