"""``snapshotter pull`` from real registries, end to end through the CLI.

Images are built in code (tests/builders.py), written to an OCI layout and pushed with
``skopeo copy --preserve-digests`` to Debian's docker-registry on 127.0.0.1 (plain,
htpasswd and token-server variants from tests/registry_fixtures.py).  A registry pull must
give what a pull of the same layout gives: manifest and config digests, diff_ids and every
snapshot.  Faults (a connection cut mid-blob) come from the fault proxy, which also counts
the requests a pull makes; corruption is made by editing the registry's blob storage.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import CliResult, need_tool, tree_state, unavailable
from oracle import snapshot_tree
from registry_fixtures import (
    Fault,
    FaultProxy,
    Registry,
    TlsSetup,
    TokenSetup,
    isolate_user_auth,
    start_htpasswd_registry,
    start_registry,
    start_tls_registry,
    start_token_registry,
)

from snapshotter.oci.digest import Digest
from snapshotter.oci.model import Platform
from snapshotter.store.store import Store

ALICE = ("alice", "alice-Secret-pw-1")  # htpasswd registry
BOB = ("bob", "bob-Token-pw-2")  # token registry
BOB_IDENTITY = "bob-refresh-Token-3"  # an OAuth2 refresh token the token server knows
WRONG = "wrong-Passw0rd-zz"
Cli = Callable[..., CliResult]


# -- images -----------------------------------------------------------------------------


def _base_layers() -> list[LayerBuilder]:
    return [
        LayerBuilder()
        .dir("etc")
        .file("etc/os-release", b"ID=registry-test\n")
        .dir("usr/bin", mode=0o755)
        .file("usr/bin/tool", b"#!/bin/sh\necho tool\n", mode=0o755)
        .symlink("bin", "usr/bin"),
        LayerBuilder()
        .dir("srv", uid=1000, gid=1000)
        .file("srv/data", random.Random(1).randbytes(70_000), uid=1000, gid=1000, mode=0o600)
        .hardlink("srv/data-link", "srv/data"),
    ]


@dataclass
class Images:
    layout: Path
    base: ImageBuilder  # 3 gzip layers
    derived: ImageBuilder  # base's first two layers + one of its own
    zstd: ImageBuilder
    mixed: ImageBuilder  # gzip, zstd and uncompressed layers
    big: ImageBuilder  # one ~400 KB incompressible layer
    amd64: ImageBuilder
    arm64: ImageBuilder
    victim: ImageBuilder  # layers nothing else has: its blobs get tampered with
    victim_config: ImageBuilder

    def oci(self, tag: str) -> str:
        return f"oci:{self.layout}:{tag}"

    def index_digest(self, tag: str) -> str:
        index = json.loads((self.layout / "index.json").read_bytes())
        for m in index["manifests"]:
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                return str(m["digest"])
        raise KeyError(tag)


@pytest.fixture(scope="module")
def tools() -> None:
    need_tool("docker-registry")
    need_tool("skopeo")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    base = ImageBuilder(
        [*_base_layers(), LayerBuilder().file("etc/base-only", b"base\n").whiteout("etc/gone")],
        config_extra={"Cmd": ["/bin/tool"]},
    )
    derived = ImageBuilder(
        [*_base_layers(), LayerBuilder().opaque("srv").file("srv/derived", b"derived\n")],
        config_extra={"Cmd": ["derived"]},
    )
    zstd = ImageBuilder(
        [LayerBuilder().file("z/a", b"zstd layer\n" * 500), LayerBuilder().file("z/b", b"two\n")],
        compression="zstd",
    )
    mixed = ImageBuilder(
        [
            LayerBuilder().file("m/gzip", b"gzip\n" * 100),
            LayerBuilder().file("m/zstd", b"zstd\n" * 100),
            LayerBuilder().file("m/none", b"none\n" * 100),
        ],
        layer_compressions=["gzip", "zstd", "none"],
    )
    big = ImageBuilder(
        [LayerBuilder().file("noise.bin", random.Random(2).randbytes(400_000))],
        config_extra={"Cmd": ["big"]},
    )
    amd64 = ImageBuilder([LayerBuilder().file("arch", b"amd64\n")], architecture="amd64")
    arm64 = ImageBuilder(
        [LayerBuilder().file("arch", b"arm64\n")], architecture="arm64", variant="v8"
    )
    # Uncompressed layers: a flipped byte keeps the tar readable, so only digests catch it.
    victim = ImageBuilder(
        [
            LayerBuilder().file("v/one", b"victim one\n" * 50),
            LayerBuilder().file("v/two", b"victim two\n" * 5000),
        ],
        compression="none",
    )
    victim_config = ImageBuilder(
        [LayerBuilder().file("v/three", b"victim three\n")], config_extra={"Cmd": ["victim"]}
    )
    layout = tmp_path_factory.mktemp("layout") / "oci"
    write_oci_layout(
        layout,
        {
            "base": base,
            "derived": derived,
            "zstd": zstd,
            "mixed": mixed,
            "big": big,
            "victim": victim,
            "victim-config": victim_config,
        },
        index_of={"multi": [amd64, arm64]},
    )
    return Images(layout, base, derived, zstd, mixed, big, amd64, arm64, victim, victim_config)


@pytest.fixture(scope="module")
def anon(
    tools: None, images: Images, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("anon"))
    try:
        for tag in ("base", "derived", "zstd", "mixed", "big", "victim", "victim-config"):
            reg.push(images.oci(tag), f"app:{tag}")
        reg.push(images.oci("base"), "app:v1.0")
        reg.push(images.oci("multi"), "app:multi", all_images=True)
        reg.push(images.oci("base"), "app:docker", fmt="v2s2")
        reg.push(images.oci("base"), "team/tools:1")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def proxy(anon: Registry) -> Iterator[FaultProxy]:
    p = FaultProxy(anon.host)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def fresh_proxy(proxy: FaultProxy) -> FaultProxy:
    with proxy.lock:
        proxy.faults.clear()
        proxy.seen.clear()
    return proxy


@pytest.fixture(scope="module")
def basic(
    tools: None, images: Images, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    reg = start_htpasswd_registry(tmp_path_factory.mktemp("htpasswd"), dict([ALICE]))
    try:
        reg.push(images.oci("base"), "private/app:v1", creds=ALICE)
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def token(
    tools: None, images: Images, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TokenSetup]:
    setup = start_token_registry(
        tmp_path_factory.mktemp("token"), dict([BOB]), {BOB_IDENTITY: BOB[0]}
    )
    try:
        setup.registry.push(images.oci("base"), "secure/app:v1", creds=BOB)
        yield setup
    finally:
        setup.stop()


@pytest.fixture(scope="module")
def tls(
    tools: None, images: Images, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsSetup]:
    setup = start_tls_registry(tmp_path_factory.mktemp("tls"))
    try:
        setup.registry.push(images.oci("zstd"), "app:v1")
        yield setup
    finally:
        setup.registry.stop()


@pytest.fixture(autouse=True)
def no_user_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate_user_auth(monkeypatch, tmp_path)


# -- helpers ----------------------------------------------------------------------------


def pulled(cli: Cli, *args: str, root: Path | None = None) -> dict[str, Any]:
    result = cli("pull", "--json", "-q", *args, root=root)
    assert result.rc == 0, result.err
    assert result.err == ""
    doc: dict[str, Any] = json.loads(result.out)
    return doc


def failed(cli: Cli, *args: str, root: Path | None = None) -> str:
    """Run a pull that must fail; its stderr is one line and stdout is empty."""
    result = cli("pull", "--json", "-q", *args, root=root)
    assert result.rc == 1, (result.out, result.err)
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapshotter: error: "), result.err
    return lines[0]


def trees(root: Path, diff_ids: list[str]) -> list[dict[str, Any]]:
    store = Store(root)
    return [snapshot_tree(store.snapshot_path(Digest.parse(d))) for d in diff_ids]


def gets_of(proxy: FaultProxy, digest: str) -> list[dict[str, str]]:
    return [s.headers for s in proxy.requests_to(f"/blobs/{digest}$") if s.method == "GET"]


def diff_ids(img: ImageBuilder) -> list[str]:
    return [layer.diff_id() for layer in img.layers]


def flip_byte(path: Path, at: int) -> bytes:
    """Flip one byte of ``path`` in place (same size); returns the original content."""
    original = path.read_bytes()
    data = bytearray(original)
    data[at] ^= 0xFF
    path.chmod(path.stat().st_mode | stat.S_IWUSR)
    path.write_bytes(bytes(data))
    return original


# -- registry pull == layout pull ---------------------------------------------------------


@pytest.mark.parametrize("tag", ["base", "zstd", "mixed"])
def test_registry_pull_equals_layout_pull(
    anon: Registry, images: Images, cli: Cli, tmp_path: Path, tag: str
) -> None:
    img: ImageBuilder = getattr(images, tag)
    from_registry = pulled(cli, f"docker://{anon.host}/app:{tag}", root=tmp_path / "reg")
    from_layout = pulled(cli, images.oci(tag), root=tmp_path / "lay")
    for doc in (from_registry, from_layout):
        assert doc["digest"] == img.manifest_digest()  # --preserve-digests kept it
        assert doc["id"] == img.config_digest()
        assert doc["diff_ids"] == diff_ids(img)
        assert doc["layers"] == doc["unpacked"] == len(img.layers) and doc["reused"] == 0
        assert doc["platform"] == "linux/amd64"
    assert from_registry["size"] == from_layout["size"]
    assert from_registry["names"] == [f"{anon.host}/app:{tag}"]
    reg_trees = trees(tmp_path / "reg", from_registry["diff_ids"])
    assert reg_trees == trees(tmp_path / "lay", from_layout["diff_ids"])
    assert all(reg_trees)
    # The layout pulled into the registry's store shares every snapshot.
    again = pulled(cli, images.oci(tag), root=tmp_path / "reg")
    assert again["reused"] == again["layers"] == len(img.layers) and again["unpacked"] == 0
    assert again["digest"] == from_registry["digest"]
    record = json.loads(
        cli("inspect", "--record", f"{anon.host}/app:{tag}", root=tmp_path / "reg").out
    )
    media = {layer["media_type"] for layer in record["layers"]}
    expected = {"base": {"gzip"}, "zstd": {"zstd"}, "mixed": {"gzip", "zstd", "tar"}}[tag]
    assert {m.rsplit(".", 1)[-1].split("+")[-1] for m in media} == expected


def test_docker_schema2_manifest_pulls_same_content(
    anon: Registry, images: Images, cli: Cli
) -> None:
    doc = pulled(cli, f"{anon.host}/app:docker")
    assert doc["id"] == images.base.config_digest()
    assert doc["diff_ids"] == diff_ids(images.base)
    assert doc["digest"] != images.base.manifest_digest()  # converted by skopeo
    record = json.loads(cli("inspect", "--record", f"{anon.host}/app:docker").out)
    assert record["media_type"] == "application/vnd.docker.distribution.manifest.v2+json"


# -- reference forms ----------------------------------------------------------------------


@pytest.mark.parametrize("form", ["bare", "docker"])
def test_reference_forms_store_the_full_name(
    anon: Registry, images: Images, cli: Cli, form: str
) -> None:
    ref = f"{anon.host}/app:v1.0"
    doc = pulled(cli, ref if form == "bare" else f"docker://{ref}")
    assert doc["names"] == [ref]
    assert doc["digest"] == images.base.manifest_digest()
    listed = json.loads(cli("images", "--json").out)
    assert [i["names"] for i in listed] == [[ref]]
    assert json.loads(cli("inspect", "--record", ref).out)["digest"] == doc["digest"]


def test_pull_by_digest(anon: Registry, images: Images, cli: Cli) -> None:
    digest = images.base.manifest_digest()
    by_digest = pulled(cli, f"docker://{anon.host}/app@{digest}")
    assert by_digest["digest"] == digest and by_digest["id"] == images.base.config_digest()
    assert by_digest["names"] == []  # no tag, no name: as docker pull REPO@DIGEST
    both = pulled(cli, f"{anon.host}/app:v1.0@{digest}")
    assert both["digest"] == digest and both["names"] == [f"{anon.host}/app:v1.0"]
    assert both["reused"] == both["layers"]
    wrong = Digest.of_bytes(b"no such manifest")
    line = failed(cli, f"{anon.host}/app@{wrong}")
    assert str(wrong) in line and "manifest unknown" in line


# -- multi-platform -----------------------------------------------------------------------


def test_index_default_platform_is_the_host(anon: Registry, images: Images, cli: Cli) -> None:
    host = Platform.host()
    by_arch = {"amd64": images.amd64, "arm64": images.arm64}
    if host.os != "linux" or host.architecture not in by_arch:
        unavailable(f"host platform {host} is in neither test image (amd64, arm64)")
    doc = pulled(cli, f"docker://{anon.host}/app:multi")
    img = by_arch[host.architecture]
    assert doc["id"] == img.config_digest() and doc["digest"] == img.manifest_digest()
    assert doc["platform"] == str(Platform(img.os, img.architecture, img.variant or ""))
    assert doc["names"] == [f"{anon.host}/app:multi"]


def test_index_platform_option(anon: Registry, images: Images, cli: Cli) -> None:
    arm = pulled(cli, "--platform", "linux/arm64", f"{anon.host}/app:multi")
    assert arm["id"] == images.arm64.config_digest()
    assert arm["digest"] == images.arm64.manifest_digest()
    assert arm["platform"] == "linux/arm64/v8"
    amd = pulled(cli, "--platform", "linux/amd64", f"{anon.host}/app:multi")
    assert amd["id"] == images.amd64.config_digest() and amd["platform"] == "linux/amd64"
    assert amd["moved"] == [f"{anon.host}/app:multi"]  # the name now points at amd64
    # The index pulled by its own digest picks the same way.
    index = images.index_digest("multi")
    again = pulled(cli, "--platform", "linux/arm64/v8", f"{anon.host}/app@{index}")
    assert again["digest"] == arm["digest"] and again["reused"] == 1


def test_index_unknown_platform_lists_what_is_available(
    anon: Registry, cli: Cli, store_root: Path
) -> None:
    line = failed(cli, "--platform", "linux/s390x", f"docker://{anon.host}/app:multi")
    assert "linux/s390x" in line and "available:" in line
    available = line.split("available:", 1)[1]
    assert "linux/amd64" in available and "linux/arm64/v8" in available
    assert tree_state(store_root) == {}


# -- layer reuse --------------------------------------------------------------------------


def test_shared_layers_are_not_fetched_again(
    fresh_proxy: FaultProxy, images: Images, cli: Cli
) -> None:
    proxy = fresh_proxy
    first = pulled(cli, f"{proxy.host}/app:base")
    assert first["unpacked"] == 3 and first["reused"] == 0
    base_layers = [layer.digest for layer in images.base.built_layers()]
    assert all(len(gets_of(proxy, d)) == 1 for d in base_layers)
    with proxy.lock:
        proxy.seen.clear()
    second = pulled(cli, f"{proxy.host}/app:derived")
    assert second["reused"] == 2 and second["unpacked"] == 1
    assert second["diff_ids"][:2] == first["diff_ids"][:2]
    derived_layers = [layer.digest for layer in images.derived.built_layers()]
    assert derived_layers[:2] == base_layers[:2]
    for shared in derived_layers[:2]:
        assert gets_of(proxy, shared) == [], f"shared layer {shared} was fetched again"
    assert len(gets_of(proxy, derived_layers[2])) == 1
    assert len(gets_of(proxy, images.derived.config_digest())) == 1


# -- resume -------------------------------------------------------------------------------


def test_cut_blob_download_resumes(
    fresh_proxy: FaultProxy, anon: Registry, images: Images, cli: Cli, tmp_path: Path
) -> None:
    proxy = fresh_proxy
    (layer,) = images.big.built_layers()
    config = images.big.config_digest()
    proxy.faults += [
        Fault("cut", pattern=f"/blobs/{layer.digest}$", at=100_000),
        Fault("cut", pattern=f"/blobs/{layer.digest}$", at=50_000),  # the resumed one too
        Fault("cut", pattern=f"/blobs/{config}$", at=20),
    ]
    cut = pulled(cli, f"{proxy.host}/app:big", root=tmp_path / "cut")
    assert not proxy.faults, "a fault never fired"
    ranges = [g.get("range") for g in gets_of(proxy, layer.digest)]
    assert ranges == [None, "bytes=100000-", "bytes=150000-"]
    assert len(gets_of(proxy, config)) == 2
    clean = pulled(cli, f"{anon.host}/app:big", root=tmp_path / "clean")
    for key in ("digest", "id", "diff_ids", "size", "layers", "unpacked"):
        assert cut[key] == clean[key], key
    for sub in ("snapshots", "blobs"):
        assert tree_state(tmp_path / "cut" / sub) == tree_state(tmp_path / "clean" / sub)
    assert trees(tmp_path / "cut", cut["diff_ids"]) == trees(tmp_path / "clean", cut["diff_ids"])


def test_transient_failures_are_retried(
    fresh_proxy: FaultProxy, images: Images, cli: Cli, store_root: Path, tmp_path: Path
) -> None:
    proxy = fresh_proxy
    layers = images.zstd.built_layers()
    proxy.faults += [
        Fault("status", pattern=r"/manifests/zstd$", status=503),
        Fault(
            "status",
            pattern=f"/blobs/{images.zstd.config_digest()}$",
            status=429,
            headers={"Retry-After": "0"},
        ),
        Fault("reset", pattern=f"/blobs/{layers[0].digest}$"),
        Fault("status", pattern=f"/blobs/{layers[1].digest}$", status=502),
    ]
    doc = pulled(cli, f"{proxy.host}/app:zstd")
    assert not proxy.faults, "a fault never fired"
    assert doc["id"] == images.zstd.config_digest() and doc["unpacked"] == 2
    assert len(proxy.requests_to(r"/manifests/zstd$")) == 2
    assert all(len(gets_of(proxy, layer.digest)) == 2 for layer in layers)
    clean = pulled(cli, images.oci("zstd"), root=tmp_path / "clean")
    assert trees(store_root, doc["diff_ids"]) == trees(tmp_path / "clean", clean["diff_ids"])


def test_corrupted_in_transit_fails_and_leaves_the_store_alone(
    fresh_proxy: FaultProxy, images: Images, cli: Cli, store_root: Path
) -> None:
    proxy = fresh_proxy
    pulled(cli, images.oci("base"))
    before = tree_state(store_root)
    (layer,) = images.big.built_layers()
    proxy.faults.append(Fault("flip", pattern=f"/blobs/{layer.digest}$", at=200_000))
    line = failed(cli, f"{proxy.host}/app:big")
    assert not proxy.faults
    assert layer.digest in line and "hashes to" in line, line
    assert len(gets_of(proxy, layer.digest)) == 1  # a digest mismatch is never retried
    assert tree_state(store_root) == before


# -- tls ----------------------------------------------------------------------------------


def test_tls_registry_options(tls: TlsSetup, images: Images, cli: Cli, store_root: Path) -> None:
    ref = f"{tls.registry.host}/app:v1"
    line = failed(cli, ref)
    assert "tls" in line.lower() and tls.registry.host in line
    assert tree_state(store_root) == {}
    doc = pulled(cli, "--cert-dir", str(tls.ca_dir), f"docker://{ref}")
    assert doc["id"] == images.zstd.config_digest()
    for option in ("--tls-verify=false", "--insecure"):
        again = pulled(cli, option, ref)
        assert again["digest"] == doc["digest"] and again["reused"] == again["layers"]
    tags = cli("tags", "--json", "--cert-dir", str(tls.ca_dir), f"{tls.registry.host}/app")
    assert tags.rc == 0 and json.loads(tags.out) == ["v1"]


# -- auth ---------------------------------------------------------------------------------


def test_htpasswd_registry_with_creds(
    basic: Registry, images: Images, cli: Cli, store_root: Path
) -> None:
    ref = f"{basic.host}/private/app:v1"
    line = failed(cli, ref)
    assert "authentication required" in line and "private/app" in line
    line = failed(cli, "--creds", f"{ALICE[0]}:{WRONG}", ref)
    assert "authentication failed" in line and WRONG not in line
    assert tree_state(store_root) == {}
    doc = pulled(cli, "--creds", ":".join(ALICE), f"docker://{ref}")
    assert doc["id"] == images.base.config_digest() and doc["names"] == [ref]


def test_wrong_password_never_reaches_stderr(basic: Registry, cli: Cli) -> None:
    result = cli("pull", "--creds", f"{ALICE[0]}:{WRONG}", f"{basic.host}/private/app:v1")
    assert result.rc == 1 and len(result.err.splitlines()) == 1
    encoded = base64.b64encode(f"{ALICE[0]}:{WRONG}".encode()).decode()
    for secret in (WRONG, encoded, ALICE[1]):
        assert secret not in result.err and secret not in result.out


def test_htpasswd_registry_with_docker_config_authfile(
    basic: Registry, images: Images, cli: Cli, tmp_path: Path
) -> None:
    config = tmp_path / "docker" / "config.json"
    config.parent.mkdir()
    auth = base64.b64encode(":".join(ALICE).encode()).decode()
    config.write_text(json.dumps({"auths": {basic.host: {"auth": auth}}}))
    doc = pulled(cli, "--authfile", str(config), f"{basic.host}/private/app:v1")
    assert doc["id"] == images.base.config_digest()
    wrong = tmp_path / "wrong.json"
    bad = base64.b64encode(f"{ALICE[0]}:{WRONG}".encode()).decode()
    wrong.write_text(json.dumps({"auths": {f"http://{basic.host}/": {"auth": bad}}}))
    line = failed(cli, "--authfile", str(wrong), f"{basic.host}/private/app:v1")
    assert str(wrong) in line and WRONG not in line and bad not in line


def _credential_helper(tmp_path: Path, name: str, known: dict[str, tuple[str, str]]) -> Path:
    """A real docker-credential-NAME program (docker's protocol) on a directory for PATH.

    It answers ``get`` from ``known`` (server -> user, secret) and logs each server asked."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    db = tmp_path / f"{name}.json"
    db.write_text(json.dumps(known))
    program = bindir / f"docker-credential-{name}"
    program.write_text(
        f"""#!{sys.executable}
import json, sys
assert sys.argv[1:] == ["get"], sys.argv
server = sys.stdin.read().strip()
with open({str(tmp_path / (name + ".log"))!r}, "a") as log:
    log.write(server + "\\n")
known = json.load(open({str(db)!r}))
if server not in known:
    print("credentials not found in native keychain")
    sys.exit(1)
user, secret = known[server]
print(json.dumps({{"ServerURL": server, "Username": user, "Secret": secret}}))
"""
    )
    program.chmod(0o755)
    return bindir


def test_docker_credential_helpers(
    basic: Registry, images: Images, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = f"{basic.host}/private/app:v1"
    bindir = _credential_helper(tmp_path, "snaptest", {basic.host: ALICE})
    _credential_helper(tmp_path, "wrongpw", {basic.host: (ALICE[0], WRONG)})
    _credential_helper(tmp_path, "empty", {})
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    config = tmp_path / "config.json"

    def pull_with(doc: dict[str, Any]) -> tuple[int, str]:
        config.write_text(json.dumps(doc))
        result = cli("pull", "--json", "-q", "--authfile", str(config), ref)
        return result.rc, result.err.strip()

    # credHelpers names a helper for this registry: it is asked, with the registry's name
    assert pull_with({"auths": {}, "credHelpers": {basic.host: "snaptest"}}) == (0, "")
    assert (tmp_path / "snaptest.log").read_text().split() == [basic.host]
    # credsStore is the default helper: when it knows nothing, the file's auths still count
    auth = base64.b64encode(":".join(ALICE).encode()).decode()
    rc, err = pull_with({"auths": {basic.host: {"auth": auth}}, "credsStore": "empty"})
    assert (rc, err) == (0, "")
    assert (tmp_path / "empty.log").read_text().split() == [basic.host]
    # a helper's wrong password fails like any other, naming the helper and never the secret
    rc, err = pull_with({"auths": {}, "credHelpers": {basic.host: "wrongpw"}})
    assert rc == 1 and "authentication failed" in err and "docker-credential-wrongpw" in err
    assert WRONG not in err and len(err.splitlines()) == 1
    # a helper that is not installed is a clear error, not an anonymous attempt
    rc, err = pull_with({"auths": {}, "credHelpers": {basic.host: "absent"}})
    assert rc == 1 and err.endswith("credential helper docker-credential-absent is not on PATH")


def test_token_registry_with_creds(
    token: TokenSetup, images: Images, cli: Cli, store_root: Path
) -> None:
    ref = f"{token.registry.host}/secure/app:v1"
    line = failed(cli, "--creds", f"{BOB[0]}:{WRONG}", ref)
    assert WRONG not in line and "secure/app" in line
    assert tree_state(store_root) == {}
    before = len(token.tokens.requests)
    doc = pulled(cli, "--creds", ":".join(BOB), ref)
    assert doc["id"] == images.base.config_digest() and doc["names"] == [ref]
    assert doc["diff_ids"] == diff_ids(images.base)
    issued = token.tokens.requests[before:]
    assert issued and all(r.user == BOB[0] for r in issued)
    assert any("repository:secure/app:pull" in s for r in issued for s in r.scopes)


def test_identity_tokens_are_traded_at_the_token_server(
    token: TokenSetup,
    basic: Registry,
    images: Images,
    cli: Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docker config's identitytoken (as `az acr login` writes it) and a helper's <token> user:
    an OAuth2 refresh token POSTed to the realm, never sent as a password."""
    ref = f"{token.registry.host}/secure/app:v1"
    config = tmp_path / "config.json"
    placeholder = base64.b64encode(b"00000000-0000-0000-0000-000000000000:").decode()

    def with_identity(identity: str) -> dict[str, Any]:
        entry = {"auth": placeholder, "identitytoken": identity}
        return {"auths": {token.registry.host: entry}}

    config.write_text(json.dumps(with_identity(BOB_IDENTITY)))
    before = len(token.tokens.requests)
    doc = pulled(cli, "--authfile", str(config), ref)
    assert doc["id"] == images.base.config_digest()
    issued = token.tokens.requests[before:]
    assert issued and all(r.user == BOB[0] for r in issued)  # granted through the refresh token

    config.write_text(json.dumps(with_identity("not-a-known-token")))
    line = failed(cli, "--authfile", str(config), ref)
    assert str(config) in line and "not-a-known-token" not in line
    assert token.tokens.requests[-1].user == "!refresh_token"

    # a credential helper answering docker's "<token>" user hands over an identity token
    bindir = _credential_helper(
        tmp_path, "tokenhelper", {token.registry.host: ("<token>", BOB_IDENTITY)}
    )
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    config.write_text(json.dumps({"credHelpers": {token.registry.host: "tokenhelper"}}))
    assert pulled(cli, "--authfile", str(config), ref, root=tmp_path / "s2")["id"] == (
        images.base.config_digest()
    )

    # a registry that only takes basic auth cannot use one: a clear error, no secret shown
    config.write_text(json.dumps({"auths": {basic.host: {"identitytoken": BOB_IDENTITY}}}))
    line = failed(cli, "--authfile", str(config), f"{basic.host}/private/app:v1")
    assert "identity token" in line and "basic auth" in line and BOB_IDENTITY not in line


@pytest.mark.parametrize("kind", ["htpasswd", "token"])
def test_login_pull_logout(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    images: Images,
    cli: Cli,
    kind: str,
) -> None:
    if kind == "htpasswd":
        host, (user, password), repo = request.getfixturevalue("basic").host, ALICE, "private/app"
    else:
        host, (user, password), repo = (
            request.getfixturevalue("token").registry.host,
            BOB,
            "secure/app",
        )
    auth_file = tmp_path / "auth" / "auth.json"
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    ref = f"{host}/{repo}:v1"

    refused = cli("login", host, "-u", user, "-p", WRONG)
    assert refused.rc == 1 and WRONG not in refused.err and not auth_file.exists()
    assert len(refused.err.splitlines()) == 1

    if kind == "token":  # and the password from stdin, as scripts should give it
        monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
        logged_in = cli("login", host, "-u", user, "--password-stdin")
    else:
        logged_in = cli("login", host, "-u", user, "-p", password)
    assert logged_in.rc == 0, logged_in.err
    assert str(auth_file) in logged_in.err and password not in logged_in.err
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
    assert host in json.loads(auth_file.read_text())["auths"]

    doc = pulled(cli, ref)
    assert doc["id"] == images.base.config_digest()

    logged_out = cli("logout", host)
    assert logged_out.rc == 0, logged_out.err
    assert host not in json.loads(auth_file.read_text())["auths"]
    line = failed(cli, f"{ref}", root=tmp_path / "other-store")
    assert "authentication required" in line or "access denied" in line
    assert str(auth_file) in line
    again = cli("logout", host)
    assert again.rc == 1 and "not logged in" in again.err


# -- not found ----------------------------------------------------------------------------


def test_unreachable_registries_are_one_clear_line(cli: Cli, store_root: Path) -> None:
    # nothing listens: connection errors are retried (a registry may be restarting), then
    # reported with how many attempts were made
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    line = failed(cli, f"127.0.0.1:{port}/app:1")
    assert "cannot connect" in line and "connection refused" in line and "gave up after" in line
    # a name that does not exist is final at once (RFC 2606 reserves .invalid)
    line = failed(cli, "registry.snapshotter-test.invalid/app:1")
    assert "unknown host" in line and "gave up" not in line
    assert tree_state(store_root) == {}


def test_unknown_tag_and_repository(anon: Registry, cli: Cli, store_root: Path) -> None:
    line = failed(cli, f"docker://{anon.host}/app:nope")
    assert "app:nope" in line and "manifest unknown" in line
    line = failed(cli, f"{anon.host}/nothing/here:v1")
    assert "nothing/here:v1" in line and "unknown" in line
    assert tree_state(store_root) == {}


# -- corruption ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "what",
    [
        "layer",
        "layer-tar-header",
        "config",
        "manifest",
    ],
)
def test_tampered_blob_fails_and_leaves_the_store_alone(
    anon: Registry, images: Images, cli: Cli, store_root: Path, what: str
) -> None:
    """Storage edited behind the registry's back: the registry serves it, we refuse it."""
    pulled(cli, f"{anon.host}/app:base")  # something in the store already
    before = tree_state(store_root)
    tag, digest = {
        "layer": ("victim", images.victim.built_layers()[1].digest),
        "layer-tar-header": ("victim", images.victim.built_layers()[1].digest),
        "config": ("victim-config", images.victim_config.config_digest()),
        "manifest": ("victim", images.victim.manifest_digest()),
    }[what]
    blob = anon.blob_path(digest)
    original = blob.read_bytes()
    if what == "manifest":  # still valid JSON, so the registry serves it
        blob.write_bytes(original + b"\n")
    elif what == "layer-tar-header":
        flip_byte(blob, 100)  # the first member's mode field: its header checksum breaks
    else:
        flip_byte(blob, len(original) // 2)  # file content: only digests can tell
    try:
        line = failed(cli, f"docker://{anon.host}/app:{tag}")
    finally:
        blob.write_bytes(original)
    assert tree_state(store_root) == before
    assert digest in line and ("hashes to" in line or "differs" in line), line
    # Restored, the same pull goes through: nothing stale was left behind.
    assert pulled(cli, f"{anon.host}/app:{tag}")["unpacked"] >= 1


def test_layer_digest_error_names_the_layer_once(anon: Registry, images: Images, cli: Cli) -> None:
    digest = images.victim.built_layers()[1].digest
    blob = anon.blob_path(digest)
    original = flip_byte(blob, blob.stat().st_size // 2)
    try:
        line = failed(cli, f"{anon.host}/app:victim")
    finally:
        blob.write_bytes(original)
    assert line.count(digest) == 1, line


# -- tags and search ----------------------------------------------------------------------


def test_tags_command(anon: Registry, cli: Cli) -> None:
    expected = sorted(
        [
            "base",
            "derived",
            "zstd",
            "mixed",
            "big",
            "victim",
            "victim-config",
            "v1.0",
            "multi",
            "docker",
        ]
    )
    plain = cli("tags", f"{anon.host}/app")
    assert plain.rc == 0, plain.err
    assert sorted(plain.out.splitlines()) == expected
    as_json = cli("tags", "--json", f"{anon.host}/app")
    assert as_json.rc == 0 and sorted(json.loads(as_json.out)) == expected
    assert json.loads(cli("tags", "--json", f"{anon.host}/team/tools").out) == ["1"]
    missing = cli("tags", f"{anon.host}/nothing/here")
    assert missing.rc == 1 and len(missing.err.splitlines()) == 1
    assert "nothing/here" in missing.err


def test_search_command(anon: Registry, cli: Cli) -> None:
    everything = cli("search", anon.host)
    assert everything.rc == 0, everything.err
    assert everything.out.splitlines() == [f"{anon.host}/app", f"{anon.host}/team/tools"]
    as_json = cli("search", "--json", anon.host, "tool")
    assert as_json.rc == 0 and json.loads(as_json.out) == ["team/tools"]
    assert json.loads(cli("search", "--json", anon.host, "zzz").out) == []


def test_search_with_a_url_prints_pullable_names(anon: Registry, cli: Cli) -> None:
    found = cli("search", f"http://{anon.host}/", "app")
    assert found.rc == 0, found.err
    assert found.out.splitlines() == [f"{anon.host}/app"]


def test_tags_and_search_need_credentials_on_private_registries(basic: Registry, cli: Cli) -> None:
    refused = cli("tags", f"{basic.host}/private/app")
    assert refused.rc == 1 and "authentication required" in refused.err
    tags = cli("tags", "--json", "--creds", ":".join(ALICE), f"{basic.host}/private/app")
    assert tags.rc == 0 and json.loads(tags.out) == ["v1"]
    found = cli("search", "--json", "--creds", ":".join(ALICE), basic.host)
    assert found.rc == 0 and json.loads(found.out) == ["private/app"]
