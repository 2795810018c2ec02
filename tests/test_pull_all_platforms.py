"""``snapshotter pull --all-platforms``: every image of an index, and the index, in one commit.

Images are built in code (tests/builders.py) into an OCI layout with a two-platform index
(amd64 and arm64/v8 sharing their base layer), pulled from that layout, from an
oci-archive of it, and from Debian's docker-registry on 127.0.0.1 after ``skopeo copy
--all``.  Interruptions are real: a tampered blob in the layout or the registry's storage,
and a ``kill -9`` of a pull held mid-download by a proxy in front of the registry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from builders import ImageBuilder, LayerBuilder, write_oci_archive, write_oci_layout
from conftest import REPO, CliResult, need_tool, tree_state
from registry_fixtures import FaultProxy, Registry, start_registry

from snapshotter.oci.model import MT_DOCKER_LIST, MT_OCI_INDEX, Platform
from snapshotter.store.store import Store

Cli = Callable[..., CliResult]
HOST = Platform.host()


# -- images ---------------------------------------------------------------------------------


def _images() -> tuple[ImageBuilder, ImageBuilder, ImageBuilder]:
    base = LayerBuilder().dir("etc").file("etc/os-release", b"ID=all-platforms\n")
    amd64 = ImageBuilder(
        [base, LayerBuilder().file("arch", b"amd64\n")],
        architecture="amd64",
        config_extra={"Cmd": ["amd64"]},
    )
    arm64 = ImageBuilder(
        [base, LayerBuilder().file("arch", b"arm64\n" * 50_000)],
        architecture="arm64",
        variant="v8",
        config_extra={"Cmd": ["arm64"]},
    )
    single = ImageBuilder([base, LayerBuilder().file("single", b"one\n")])
    return amd64, arm64, single


AMD64, ARM64, SINGLE = _images()
BY_ARCH = {"amd64": AMD64, "arm64": ARM64}


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("layout") / "app"
    write_oci_layout(path, {"single": SINGLE}, index_of={"multi": [AMD64, ARM64]})
    return path


def _copy_layout(layout: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-a", str(layout), str(dest)], check=True)
    return dest


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _retag_index(layout: Path, tag: str, index: dict[str, Any]) -> str:
    """Write ``index`` as a blob and point ``tag`` in index.json at it; return its digest."""
    data = json.dumps(index).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _blob(layout, digest).write_bytes(data)
    top = json.loads((layout / "index.json").read_text())
    for desc in top["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            desc.update(digest=digest, size=len(data))
    (layout / "index.json").write_text(json.dumps(top))
    return digest


def _index_digest(layout: Path, tag: str) -> str:
    top = json.loads((layout / "index.json").read_text())
    for desc in top["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return str(desc["digest"])
    raise KeyError(tag)


def _flip_layer(layout: Path, image: ImageBuilder, index: int = -1) -> None:
    path = _blob(layout, image.built_layers()[index].digest)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def _stored(root: Path, digest: str) -> bytes:
    return (root / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def _store_files(root: Path) -> dict[str, tuple[object, ...]]:
    """The store as ``tree_state`` sees it, without the lock file (``open`` touches it)."""
    return {k: v for k, v in tree_state(root).items() if k != "lock"}


def _pull_json(cli: Cli, *args: str) -> dict[str, Any]:
    result = cli("pull", "--quiet", "--json", *args)
    assert result.rc == 0, result.err
    doc: dict[str, Any] = json.loads(result.out)
    return doc


def _images_json(cli: Cli) -> list[dict[str, Any]]:
    result = cli("images", "--json")
    assert result.rc == 0, result.err
    docs: list[dict[str, Any]] = json.loads(result.out)
    return docs


# -- from a layout -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["oci", "oci-archive"])
def test_every_platform_lands_and_the_name_points_at_the_index(
    cli: Cli, store_root: Path, layout: Path, tmp_path: Path, kind: str
) -> None:
    if kind == "oci":
        source = f"oci:{layout}:multi"
    else:
        archive = tmp_path / "app.tar"
        write_oci_archive(archive, {"single": SINGLE}, index_of={"multi": [AMD64, ARM64]})
        source = f"oci-archive:{archive}:multi"
    doc = _pull_json(cli, "--all-platforms", source)
    index_digest = _index_digest(layout, "multi")
    assert doc["digest"] == index_digest
    assert doc["index"] is True and doc["media_type"] == MT_OCI_INDEX
    assert doc["names"] == ["localhost/app:multi"] and doc["moved"] == []
    assert doc["skipped"] == []
    assert [i["digest"] for i in doc["images"]] == [
        AMD64.manifest_digest(),
        ARM64.manifest_digest(),
    ]
    assert [i["platform"] for i in doc["images"]] == ["linux/amd64", "linux/arm64/v8"]
    assert [i["id"] for i in doc["images"]] == [AMD64.config_digest(), ARM64.config_digest()]
    assert all(i["names"] == [] and i["layers"] == 2 for i in doc["images"])
    # Three distinct layers: the base is shared and unpacked once.
    assert (doc["unpacked"], doc["reused"]) == (3, 0)
    assert doc["images"][0]["diff_ids"][0] == doc["images"][1]["diff_ids"][0]

    store = Store(store_root)
    state = store.read_state()
    assert set(state.images) == {AMD64.manifest_digest(), ARM64.manifest_digest()}
    assert state.names == {"localhost/app:multi": index_digest}
    assert [(e.digest, e.platform) for e in state.indexes[index_digest].manifests] == [
        (AMD64.manifest_digest(), "linux/amd64"),
        (ARM64.manifest_digest(), "linux/arm64/v8"),
    ]
    assert len(list((store_root / "snapshots" / "sha256").iterdir())) == 3
    # The index and every manifest and config are kept byte for byte.
    assert _stored(store_root, index_digest) == _blob(layout, index_digest).read_bytes()
    for image in (AMD64, ARM64):
        assert _stored(store_root, image.manifest_digest()) == image.manifest_bytes()
        assert _stored(store_root, image.config_digest()) == image.config_bytes()
    assert json.loads((store_root / "state.json").read_text())["version"] == 2

    listed = _images_json(cli)
    assert sorted(i["platform"] for i in listed) == ["linux/amd64", "linux/arm64/v8"]
    assert all(i["names"] == ["localhost/app:multi"] for i in listed)
    assert all(i["indexes"] == [index_digest] and not i["dangling"] for i in listed)
    table = cli("images").out.splitlines()
    assert len(table) == 3 and all("localhost/app" in row and "multi" in row for row in table[1:])


def test_all_platforms_equals_pulling_each_platform(
    cli: Cli, store_root: Path, layout: Path, tmp_path: Path
) -> None:
    _pull_json(cli, "--all-platforms", f"oci:{layout}:multi")
    one_by_one = tmp_path / "one-by-one"
    for platform in ("linux/amd64", "linux/arm64"):
        result = cli("pull", "-q", "--platform", platform, f"oci:{layout}:multi", root=one_by_one)
        assert result.rc == 0, result.err
    ours, theirs = Store(store_root).read_state(), Store(one_by_one).read_state()
    for digest, record in theirs.images.items():
        mine = ours.images[digest]
        assert (mine.config, mine.platform, mine.layers) == (
            record.config,
            record.platform,
            record.layers,
        )
    assert tree_state(store_root / "snapshots") == tree_state(one_by_one / "snapshots")


def test_inspect_and_platform_selection(cli: Cli, layout: Path) -> None:
    _pull_json(cli, "--all-platforms", f"oci:{layout}:multi")
    index_digest = _index_digest(layout, "multi")
    for args, image in (
        (("--platform", "linux/arm64"), ARM64),
        (("--platform", "linux/arm64/v8"), ARM64),
        (("--platform", "linux/amd64"), AMD64),
    ):
        result = cli("inspect", "--record", *args, "app:multi")
        assert result.rc == 0, result.err
        doc = json.loads(result.out)
        assert doc["digest"] == image.manifest_digest()
        assert doc["names"] == ["localhost/app:multi"]
        assert doc["index"]["digest"] == index_digest
        assert doc["index"]["platforms"] == ["linux/amd64", "linux/arm64/v8"]
    if HOST.architecture in BY_ARCH:
        doc = json.loads(cli("inspect", "--record", "app:multi").out)
        assert doc["digest"] == BY_ARCH[HOST.architecture].manifest_digest()
    # The index's digest, and a prefix of it, address it too.
    hexpart = index_digest.removeprefix("sha256:")
    for text in (f"localhost/app@{index_digest}", hexpart[:12]):
        result = cli("inspect", "--record", "--platform", "linux/arm64", text)
        assert json.loads(result.out)["digest"] == ARM64.manifest_digest(), result.err
    # A child is an image of its own, by digest.
    doc = json.loads(cli("inspect", "--record", ARM64.manifest_digest()).out)
    assert "index" not in doc and doc["names"] == ["localhost/app:multi"]

    result = cli("inspect", "--platform", "linux/s390x", "app:multi")
    assert result.rc == 1
    assert "no image for platform linux/s390x" in result.err
    assert "available: linux/amd64, linux/arm64/v8" in result.err
    result = cli("inspect", "--platform", "linux/arm64", ARM64.manifest_digest())
    assert result.rc == 0, result.err
    result = cli("inspect", "--platform", "linux/amd64", ARM64.manifest_digest())
    assert result.rc == 1 and "is for linux/arm64/v8, not linux/amd64" in result.err


def test_single_manifest_source_is_just_pulled(cli: Cli, store_root: Path, layout: Path) -> None:
    doc = _pull_json(cli, "--all-platforms", f"oci:{layout}:single")
    assert doc["digest"] == SINGLE.manifest_digest() and doc["index"] is False
    assert doc["names"] == ["localhost/app:single"]
    assert [i["digest"] for i in doc["images"]] == [SINGLE.manifest_digest()]
    assert doc["images"][0]["names"] == ["localhost/app:single"]
    state_doc = json.loads((store_root / "state.json").read_text())
    assert state_doc["version"] == 1 and "indexes" not in state_doc
    assert cli("pull", "-q", "--all-platforms", f"oci:{layout}:single").out.strip() == (
        SINGLE.manifest_digest()
    )


def test_platform_and_all_platforms_exclude_each_other(cli: Cli, layout: Path) -> None:
    result = cli("pull", "--all-platforms", "--platform", "linux/amd64", f"oci:{layout}:multi")
    assert result.rc == 2 and "not allowed with argument" in result.err


def test_help_explains_all_platforms(cli: Cli) -> None:
    result = cli("pull", "--help")
    assert result.rc == 0 and "--all-platforms" in result.out and "index" in result.out


def test_attestations_are_skipped(cli: Cli, layout: Path, tmp_path: Path) -> None:
    copy = _copy_layout(layout, tmp_path / "attested")
    index = json.loads(_blob(copy, _index_digest(copy, "multi")).read_bytes())
    attestation = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": AMD64.manifest_digest(),  # never read: skipped by its annotation
        "size": len(AMD64.manifest_bytes()),
        "platform": {"os": "unknown", "architecture": "unknown"},
        "annotations": {
            "vnd.docker.reference.type": "attestation-manifest",
            "vnd.docker.reference.digest": AMD64.manifest_digest(),
        },
    }
    index["manifests"].append(attestation)
    digest = _retag_index(copy, "multi", index)
    doc = _pull_json(cli, "--all-platforms", f"oci:{copy}:multi")
    assert doc["digest"] == digest and len(doc["images"]) == 2
    assert doc["skipped"] == [f"{AMD64.manifest_digest()} (attestation-manifest)"]


def test_platforms_with_foreign_layers_are_skipped_not_fatal(
    cli: Cli, layout: Path, tmp_path: Path
) -> None:
    """Windows images list non-distributable base layers; the other platforms still land."""
    copy = _copy_layout(layout, tmp_path / "windows")

    def put(doc: dict[str, Any]) -> tuple[str, int]:
        data = json.dumps(doc).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        _blob(copy, digest).write_bytes(data)
        return digest, len(data)

    config_digest, config_size = put(
        {
            "architecture": "amd64",
            "os": "windows",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "d" * 64]},
        }
    )
    manifest_digest, manifest_size = put(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                    "digest": "sha256:" + "f" * 64,  # not in the layout, as such layers never are
                    "size": 1000,
                    "urls": ["https://mcr.microsoft.example/windows/servercore"],
                }
            ],
        }
    )
    index = json.loads(_blob(copy, _index_digest(copy, "multi")).read_bytes())
    index["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"os": "windows", "architecture": "amd64"},
        }
    )
    _retag_index(copy, "multi", index)
    doc = _pull_json(cli, "--all-platforms", f"oci:{copy}:multi")
    assert len(doc["images"]) == 2 and "windows" not in {i["platform"] for i in doc["images"]}
    assert doc["skipped"] == [f"{manifest_digest} (windows/amd64: non-distributable layers)"]
    # asked for by itself, the same image is still the clear error it always was
    alone = cli("pull", "-q", "--platform", "windows/amd64", f"oci:{copy}:multi")
    assert alone.rc == 1 and "non-distributable (foreign) layer" in alone.err


def test_second_pull_reuses_everything_and_keeps_pulled_time(
    cli: Cli, store_root: Path, layout: Path
) -> None:
    _pull_json(cli, "--all-platforms", f"oci:{layout}:multi")
    before = Store(store_root).read_state()
    doc = _pull_json(cli, "--all-platforms", f"oci:{layout}:multi")
    assert (doc["unpacked"], doc["reused"]) == (0, 3)
    assert Store(store_root).read_state() == before


# -- failures leave the store as it was ----------------------------------------------------------


def test_a_bad_layer_of_one_platform_adds_nothing(
    cli: Cli, store_root: Path, layout: Path, tmp_path: Path
) -> None:
    _pull_json(cli, f"oci:{layout}:single")  # something to keep
    before = _store_files(store_root)
    copy = _copy_layout(layout, tmp_path / "bad")
    _flip_layer(copy, ARM64)  # amd64's layers are fine and unpack first or alongside
    result = cli("pull", "-q", "--all-platforms", f"oci:{copy}:multi")
    assert result.rc == 1 and ARM64.built_layers()[-1].digest in result.err
    assert _store_files(store_root) == before
    # The good platform alone still pulls.
    assert cli("pull", "-q", "--platform", "linux/amd64", f"oci:{copy}:multi").rc == 0


def test_a_missing_platform_manifest_adds_nothing(
    cli: Cli, store_root: Path, layout: Path, tmp_path: Path
) -> None:
    _pull_json(cli, f"oci:{layout}:single")
    before = _store_files(store_root)
    copy = _copy_layout(layout, tmp_path / "sparse")
    _blob(copy, ARM64.manifest_digest()).unlink()
    result = cli("pull", "-q", "--all-platforms", f"oci:{copy}:multi")
    assert result.rc == 1 and "for linux/arm64/v8 is not in the layout" in result.err
    assert _store_files(store_root) == before


# -- names, rmi, prune -------------------------------------------------------------------------


def test_rmi_of_the_index_name_removes_every_platform(
    cli: Cli, store_root: Path, layout: Path
) -> None:
    _pull_json(cli, "--all-platforms", f"oci:{layout}:multi")
    _pull_json(cli, f"oci:{layout}:single")  # shares the base layer
    index_digest = _index_digest(layout, "multi")
    assert cli("tag", "app:multi", "localhost/app:stable").rc == 0
    result = cli("rmi", "app:multi")
    assert result.rc == 0 and result.out == "Untagged: localhost/app:multi\n"
    result = cli("rmi", "app:stable")
    assert result.rc == 0, result.err
    assert result.out.splitlines() == [
        "Untagged: localhost/app:stable",
        f"Deleted: {index_digest}",
        *(f"Deleted: {d}" for d in sorted([AMD64.manifest_digest(), ARM64.manifest_digest()])),
    ]
    state = Store(store_root).read_state()
    assert set(state.images) == {SINGLE.manifest_digest()} and not state.indexes
    snapshots = {p.name for p in (store_root / "snapshots" / "sha256").iterdir()}
    assert snapshots == {layer.diff_id.removeprefix("sha256:") for layer in SINGLE.built_layers()}
    blobs = {p.name for p in (store_root / "blobs" / "sha256").iterdir()}
    assert blobs == {
        SINGLE.manifest_digest().removeprefix("sha256:"),
        SINGLE.config_digest().removeprefix("sha256:"),
    }
    assert json.loads((store_root / "state.json").read_text())["version"] == 1


def test_rmi_of_one_platform_needs_force(cli: Cli, store_root: Path, layout: Path) -> None:
    _pull_json(cli, "--all-platforms", f"oci:{layout}:multi")
    result = cli("rmi", ARM64.manifest_digest())
    assert result.rc == 1 and "one platform of the image index" in result.err
    result = cli("rmi", "--force", ARM64.manifest_digest())
    assert result.rc == 0 and result.out == f"Deleted: {ARM64.manifest_digest()}\n"
    state = Store(store_root).read_state()
    (index,) = state.indexes.values()
    assert [e.platform for e in index.manifests] == ["linux/amd64"]
    result = cli("inspect", "--platform", "linux/arm64", "app:multi")
    assert result.rc == 1 and "available: linux/amd64" in result.err


def test_a_name_moving_off_the_index_leaves_it_for_prune(
    cli: Cli, store_root: Path, layout: Path
) -> None:
    _pull_json(cli, "--all-platforms", f"oci:{layout}:multi")
    doc = _pull_json(cli, "--platform", "linux/arm64", f"oci:{layout}:multi")
    assert doc["moved"] == ["localhost/app:multi"]
    listed = {i["platform"]: i for i in _images_json(cli)}
    assert listed["linux/amd64"]["dangling"] and listed["linux/amd64"]["names"] == []
    assert listed["linux/arm64/v8"]["names"] == ["localhost/app:multi"]
    result = cli("prune", "--json")
    assert result.rc == 0, result.err
    removed = json.loads(result.out)["images"]
    assert sorted(removed) == sorted([AMD64.manifest_digest(), _index_digest(layout, "multi")])
    state = Store(store_root).read_state()
    assert set(state.images) == {ARM64.manifest_digest()} and not state.indexes


def test_prune_all_removes_indexes(cli: Cli, store_root: Path, layout: Path) -> None:
    _pull_json(cli, "--all-platforms", f"oci:{layout}:multi")
    assert cli("prune", "-a").rc == 0
    state = Store(store_root).read_state()
    assert not state.images and not state.indexes and not state.names


def test_reference_and_dangling_filters_see_index_names(cli: Cli, layout: Path) -> None:
    _pull_json(cli, "--all-platforms", f"oci:{layout}:multi")
    result = cli("images", "-q", "--no-trunc", "--filter", "reference=localhost/app:multi")
    assert sorted(result.out.split()) == sorted([AMD64.config_digest(), ARM64.config_digest()])
    assert cli("images", "-q", "--filter", "dangling=true").out == ""


# -- from a registry -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    need_tool("docker-registry")
    need_tool("skopeo")
    directory = tmp_path_factory.mktemp("registry")
    reg = start_registry(directory)
    try:
        reg.push(f"oci:{layout}:multi", "app:multi", all_images=True)
        reg.push(f"oci:{layout}:multi", "app:list", all_images=True, fmt="v2s2")
        reg.push(f"oci:{layout}:single", "app:single")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(autouse=True)
def no_user_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the real user's auth files."""
    home = tmp_path / "home"
    home.mkdir()
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))


def test_registry_index_equals_layout_index(
    cli: Cli, store_root: Path, registry: Registry, layout: Path, tmp_path: Path
) -> None:
    doc = _pull_json(cli, "--all-platforms", f"docker://{registry.host}/app:multi")
    assert doc["digest"] == _index_digest(layout, "multi")
    assert doc["names"] == [f"{registry.host}/app:multi"]
    from_layout = tmp_path / "from-layout"
    cli("pull", "-q", "--all-platforms", f"oci:{layout}:multi", root=from_layout)
    ours, theirs = Store(store_root).read_state(), Store(from_layout).read_state()
    assert ours.images.keys() == theirs.images.keys()
    assert ours.indexes[doc["digest"]].manifests == theirs.indexes[doc["digest"]].manifests
    assert tree_state(store_root / "snapshots") == tree_state(from_layout / "snapshots")
    assert tree_state(store_root / "blobs") == tree_state(from_layout / "blobs")


def test_registry_docker_manifest_list(cli: Cli, store_root: Path, registry: Registry) -> None:
    doc = _pull_json(cli, "--all-platforms", f"{registry.host}/app:list")
    assert doc["media_type"] == MT_DOCKER_LIST and doc["index"] is True
    assert [i["platform"] for i in doc["images"]] == ["linux/amd64", "linux/arm64/v8"]
    result = cli("inspect", "--record", "--platform", "linux/arm64", f"{registry.host}/app:list")
    config = _stored(store_root, json.loads(result.out)["config"])
    assert json.loads(config)["config"]["Cmd"] == ["arm64"]


def test_registry_single_manifest(cli: Cli, registry: Registry) -> None:
    doc = _pull_json(cli, "--all-platforms", f"docker://{registry.host}/app:single")
    assert doc["index"] is False and doc["digest"] == SINGLE.manifest_digest()


def test_registry_tampered_blob_adds_nothing(
    cli: Cli, store_root: Path, layout: Path, tmp_path: Path
) -> None:
    need_tool("docker-registry")
    need_tool("skopeo")
    reg = start_registry(tmp_path / "tampered")
    try:
        reg.push(f"oci:{layout}:multi", "app:multi", all_images=True)
        reg.push(f"oci:{layout}:single", "app:single")
        _pull_json(cli, f"docker://{reg.host}/app:single")
        before = _store_files(store_root)
        data = reg.blob_path(ARM64.built_layers()[-1].digest)
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        data.write_bytes(bytes(raw))
        result = cli("pull", "-q", "--all-platforms", f"docker://{reg.host}/app:multi")
        assert result.rc == 1 and ARM64.built_layers()[-1].digest in result.err
        assert _store_files(store_root) == before
    finally:
        reg.stop()


class _GateProxy(FaultProxy):
    """Holds requests whose path contains ``gated`` until ``release`` is set."""

    def __init__(self, upstream: str, gated: str) -> None:
        self.gated = gated
        self.reached = threading.Event()
        self.release = threading.Event()
        super().__init__(upstream)

    def handle(self, h: Any) -> None:
        if self.gated in h.path:
            self.reached.set()
            self.release.wait(30)
        with contextlib.suppress(OSError):  # the client was killed
            super().handle(h)


def test_kill_9_mid_pull_leaves_the_store_as_it_was(
    store_root: Path, registry: Registry, layout: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "snapshotter.cli", "--root", str(store_root), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    assert run("pull", "-q", f"docker://{registry.host}/app:single").returncode == 0
    before = _store_files(store_root)
    gated = ARM64.built_layers()[-1].digest
    proxy = _GateProxy(registry.host, gated)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snapshotter.cli",
            "--root",
            str(store_root),
            "pull",
            "-q",
            "--all-platforms",
            f"docker://{proxy.host}/app:multi",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proxy.reached.wait(30), "the pull never asked for the gated layer"
        # Wait until another layer is staged: the pull has half-built things to lose.
        deadline = time.monotonic() + 20
        while not list((store_root / "tmp").glob("*/*/toc.json.zst")):
            assert time.monotonic() < deadline, "no layer was staged"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proxy.release.set()
        proxy.stop()
    after = _store_files(store_root)
    leftovers = {k for k in after if k.startswith("tmp/")}
    assert leftovers, "the dead pull's staging area is still there until the next command"
    assert {k: v for k, v in after.items() if k not in leftovers} == before
    # The next command that takes the lock sweeps the dead pull's staging.
    assert run("tag", f"{registry.host}/app:single", "localhost/again").returncode == 0
    assert not [k for k in _store_files(store_root) if k.startswith("tmp/")]
    done = run("pull", "-q", "--all-platforms", f"docker://{registry.host}/app:multi")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == _index_digest(layout, "multi")


# -- mount -----------------------------------------------------------------------------------------


def test_mount_picks_the_platform(cli: Cli, store_root: Path, layout: Path, tmp_path: Path) -> None:
    from test_fusefs import mounted, need_fuse, run_in

    need_fuse()
    _pull_json(cli, "--all-platforms", f"oci:{layout}:multi")
    mp = tmp_path / "mp"
    mp.mkdir()
    run = run_in(store_root)
    with mounted(run, store_root, "app:multi", mp, "--platform", "linux/arm64"):
        assert (mp / "arch").read_bytes() == b"arm64\n" * 50_000
        assert (mp / "etc/os-release").read_bytes() == b"ID=all-platforms\n"
        fsname = next(
            line.split()[0]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1] == str(mp)
        )
        assert fsname == "snapshotter:localhost/app:multi"
    with mounted(run, store_root, "app:multi", mp, "--platform", "linux/amd64"):
        assert (mp / "arch").read_bytes() == b"amd64\n"


def test_pull_json_keys_are_stable(cli: Cli, layout: Path) -> None:
    doc = _pull_json(cli, "--all-platforms", f"oci:{layout}:multi")
    assert sorted(doc) == [
        "digest",
        "images",
        "index",
        "media_type",
        "moved",
        "names",
        "reused",
        "skipped",
        "unpacked",
    ]
    single = _pull_json(cli, f"oci:{layout}:single")
    assert sorted(doc["images"][0]) == sorted(single)
