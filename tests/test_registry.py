"""snapshotter.sources.registry against real registries (Debian's docker-registry) on 127.0.0.1.

Images are built in code (tests/builders.py) and pushed with skopeo.  Faults come from a
proxy in front of a real registry (tests/registry_fixtures.py); protocol corner cases the
real one never shows (absolute or foreign Link pages) come from small HTTP servers there.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import need_tool
from registry_fixtures import (
    Fault,
    FaultProxy,
    PagedTags,
    Registry,
    StorageServer,
    TlsSetup,
    TokenServer,
    TokenSetup,
    isolate_user_auth,
    start_htpasswd_registry,
    start_registry,
    start_tls_registry,
    start_token_registry,
)

from snapshotter.errors import DigestMismatch, NotFound, RegistryError
from snapshotter.oci.digest import Digest, VerifyingReader
from snapshotter.oci.model import (
    MT_DOCKER_MANIFEST,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    Index,
    Manifest,
)
from snapshotter.oci.reference import Reference
from snapshotter.sources.registry import (
    RegistryClient,
    RegistryOptions,
    is_loopback,
    login,
    logout,
    parse_challenges,
    registry_host,
)

ALICE = ("alice", "alice-Secret-pw-1")  # htpasswd registry
BOB = ("bob", "bob-Token-pw-2")  # token registry
WRONG = "wrong-Passw0rd-zz"
FAST = RegistryOptions(backoff=0.01, timeout=10.0)  # keep retry tests quick


# -- images ---------------------------------------------------------------------------


@dataclass
class Images:
    layout: Path
    small: ImageBuilder
    big: ImageBuilder  # one ~300 KiB incompressible gzip layer
    zstd: ImageBuilder
    amd64: ImageBuilder
    arm64: ImageBuilder
    extra_tags: tuple[str, ...]

    def oci(self, tag: str) -> str:
        return f"oci:{self.layout}:{tag}"

    def index_bytes(self, tag: str) -> bytes:
        index = json.loads((self.layout / "index.json").read_bytes())
        for m in index["manifests"]:
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                return (self.layout / "blobs/sha256" / str(m["digest"])[7:]).read_bytes()
        raise KeyError(tag)


@pytest.fixture(scope="module")
def tools() -> None:
    need_tool("docker-registry")
    need_tool("skopeo")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    noise = random.Random(7).randbytes(300_000)
    small = ImageBuilder([LayerBuilder().dir("etc").file("etc/hello", b"hi\n")])
    big = ImageBuilder([LayerBuilder().file("noise.bin", noise)], config_extra={"Cmd": ["big"]})
    zstd = ImageBuilder(
        [LayerBuilder().file("a", b"zstd layer\n" * 100), LayerBuilder().file("b", b"two\n")],
        compression="zstd",
    )
    amd64 = ImageBuilder([LayerBuilder().file("arch", b"amd64\n")], architecture="amd64")
    arm64 = ImageBuilder(
        [LayerBuilder().file("arch", b"arm64\n")], architecture="arm64", variant="v8"
    )
    layout = tmp_path_factory.mktemp("layout") / "oci"
    write_oci_layout(
        layout, {"v1": small, "big": big, "zstd": zstd}, index_of={"multi": [amd64, arm64]}
    )
    return Images(layout, small, big, zstd, amd64, arm64, ("t1", "t2", "t3", "t4"))


@pytest.fixture(scope="module")
def anon(
    tools: None, images: Images, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("anon"))
    try:
        for tag in ("v1", *images.extra_tags):
            reg.push(images.oci("v1"), f"app:{tag}")
        reg.push(images.oci("big"), "app:big")
        reg.push(images.oci("zstd"), "app:zstd")
        reg.push(images.oci("multi"), "app:multi", all_images=True)
        reg.push(images.oci("v1"), "app:docker", fmt="v2s2")
        for repo in ("other/one", "other/two", "zz"):
            reg.push(images.oci("v1"), f"{repo}:x")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def basic(
    tools: None, images: Images, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    reg = start_htpasswd_registry(tmp_path_factory.mktemp("htpasswd"), dict([ALICE]))
    try:
        reg.push(images.oci("v1"), "private/app:v1", creds=ALICE)
        reg.push(images.oci("big"), "private/app:big", creds=ALICE)
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def token(
    tools: None, images: Images, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TokenSetup]:
    setup = start_token_registry(tmp_path_factory.mktemp("token"), dict([BOB]))
    try:
        setup.registry.push(images.oci("v1"), "secure/app:v1", creds=BOB)
        setup.registry.push(images.oci("big"), "secure/app:big", creds=BOB)
        yield setup
    finally:
        setup.stop()


@pytest.fixture(scope="module")
def tls(
    tools: None, images: Images, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsSetup]:
    setup = start_tls_registry(tmp_path_factory.mktemp("tls"))
    try:
        setup.registry.push(images.oci("v1"), "app:v1")
        yield setup
    finally:
        setup.registry.stop()


@pytest.fixture(autouse=True)
def no_user_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate_user_auth(monkeypatch, tmp_path)


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(FAST) as c:
        yield c


def ref(host: str, name: str) -> Reference:
    return Reference.parse(f"{host}/{name}")


def read_all(stream: object, n: int = 7_777) -> bytes:
    out = bytearray()
    while chunk := stream.read(n):  # type: ignore[attr-defined]
        out += chunk
    return bytes(out)


def docker_config(path: Path, host: str, user: str, password: str) -> Path:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(
        json.dumps(
            {"auths": {f"https://{host}/v1/": {"auth": "Zm9vOmJhcg=="}, host: {"auth": auth}}}
        )
    )
    return path


# -- manifests ----------------------------------------------------------------------------


def test_manifest_by_tag_and_by_digest(
    anon: Registry, images: Images, client: RegistryClient
) -> None:
    body, media_type, digest = client.manifest(ref(anon.host, "app:v1"))
    assert body == images.small.manifest_bytes()
    assert media_type == MT_OCI_MANIFEST
    assert str(digest) == images.small.manifest_digest()
    again = client.manifest(ref(anon.host, f"app@{digest}"))
    assert again == (body, media_type, digest)


def test_manifest_index_and_child(anon: Registry, images: Images, client: RegistryClient) -> None:
    body, media_type, digest = client.manifest(ref(anon.host, "app:multi"))
    assert media_type == MT_OCI_INDEX
    assert body == images.index_bytes("multi")
    assert digest == Digest.of_bytes(body)
    index = Index.parse(body, "index")
    arm = next(d for d in index.manifests if d.platform and d.platform.architecture == "arm64")
    child, child_type, child_digest = client.manifest(ref(anon.host, f"app@{arm.digest}"))
    assert child == images.arm64.manifest_bytes() and child_type == MT_OCI_MANIFEST
    assert child_digest == arm.digest


def test_docker_schema2_manifest_and_config(
    anon: Registry, images: Images, client: RegistryClient
) -> None:
    body, media_type, _ = client.manifest(ref(anon.host, "app:docker"))
    assert media_type == MT_DOCKER_MANIFEST
    manifest = Manifest.parse(body, "manifest")
    config = client.blob(ref(anon.host, "app"), manifest.config.digest, size=manifest.config.size)
    assert json.loads(config)["rootfs"] == json.loads(images.small.config_bytes())["rootfs"]


def test_manifest_size_cap(anon: Registry) -> None:
    with RegistryClient(RegistryOptions(max_manifest=64)) as c, pytest.raises(RegistryError) as e:
        c.manifest(ref(anon.host, "app:v1"))
    assert "64-byte limit" in str(e.value) and "app:v1" in str(e.value)


def test_unknown_tag_repository_and_blob(anon: Registry, client: RegistryClient) -> None:
    with pytest.raises(NotFound, match=r"/app:nope: manifest unknown"):
        client.manifest(ref(anon.host, "app:nope"))
    with pytest.raises(NotFound, match=r"/nothing/here:v1: manifest unknown"):
        client.manifest(ref(anon.host, "nothing/here:v1"))
    missing = Digest.of_bytes(b"not pushed")
    with pytest.raises(NotFound, match=f"blob {missing} unknown"):
        client.open_blob(ref(anon.host, "app"), missing, 10)


# -- blobs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["v1", "big", "zstd"])
def test_blobs_stream_exact_bytes(
    anon: Registry, images: Images, client: RegistryClient, tag: str
) -> None:
    image = {"v1": images.small, "big": images.big, "zstd": images.zstd}[tag]
    repo = ref(anon.host, "app")
    manifest = Manifest.parse(client.manifest(ref(anon.host, f"app:{tag}"))[0], tag)
    assert client.blob(repo, manifest.config.digest) == image.config_bytes()
    for layer, built in zip(manifest.layers, image.built_layers(), strict=True):
        seen: list[int] = []
        with client.open_blob(repo, layer.digest, layer.size, seen.append) as stream:
            reader = VerifyingReader(stream, layer.digest, layer.size, "layer")
            data = read_all(reader)
            reader.verify()
        assert data == built.blob
        assert sum(seen) == layer.size


# -- tags and catalog -----------------------------------------------------------------------


def test_tags(anon: Registry, images: Images, client: RegistryClient) -> None:
    # docker-registry 2.8 ignores ?n= for tags; Link pages are covered below.
    tags = client.tags(ref(anon.host, "app"), page_size=2)
    assert set(tags) == {"v1", *images.extra_tags, "big", "zstd", "multi", "docker"}


def test_catalog_pages_and_term(anon: Registry, client: RegistryClient) -> None:
    everything = client.catalog(anon.host)
    assert everything == ["app", "other/one", "other/two", "zz"]
    assert client.catalog(anon.host, page_size=1) == everything  # four Link pages
    assert client.catalog(anon.host, term="other") == ["other/one", "other/two"]


def test_tags_follow_absolute_and_relative_link_pages() -> None:
    pages: dict[str, tuple[list[str], str | None]] = {
        "/v2/ns/app/tags/list?n=2": (["a", "b"], '</v2/ns/app/tags/list?last=b&n=2>; rel="next"'),
        "/v2/ns/app/tags/list?last=b&n=2": (
            ["c", "d"],
            '<http://{host}/v2/ns/app/tags/list?last=d&n=2>; rel="next"',
        ),
        "/v2/ns/app/tags/list?last=d&n=2": (["e"], None),
    }
    server = PagedTags(pages)
    try:
        with RegistryClient(FAST) as c:
            assert c.tags(ref(server.host, "ns/app"), page_size=2) == ["a", "b", "c", "d", "e"]
        assert [p for p in server.asked if p != "/v2/"] == list(pages)
    finally:
        server.stop()

    elsewhere = PagedTags(
        {
            "/v2/ns/app/tags/list": (
                ["a"],
                '<http://evil.example/v2/ns/app/tags/list?last=a>; rel="next"',
            )
        }
    )
    try:
        with RegistryClient(FAST) as c, pytest.raises(RegistryError, match="another host"):
            c.tags(ref(elsewhere.host, "ns/app"))
    finally:
        elsewhere.stop()


# -- auth -----------------------------------------------------------------------------------


def test_htpasswd_anonymous_right_and_wrong(
    basic: Registry, images: Images, tmp_path: Path
) -> None:
    private = ref(basic.host, "private/app:v1")
    with RegistryClient() as c, pytest.raises(RegistryError) as e:
        c.manifest(private)
    assert e.value.status == 401 and "authentication required" in str(e.value)

    with RegistryClient(RegistryOptions(creds=ALICE)) as c:
        assert c.manifest(private)[0] == images.small.manifest_bytes()

    auth_file = docker_config(tmp_path / "config.json", basic.host, ALICE[0], WRONG)
    with (
        RegistryClient(RegistryOptions(auth_file=auth_file)) as c,
        pytest.raises(RegistryError) as e,
    ):
        c.manifest(private)
    assert e.value.status == 401
    assert str(auth_file) in str(e.value) and "authentication failed" in str(e.value)
    assert WRONG not in str(e.value) and WRONG not in repr(e.value)


def test_docker_config_auth_file(basic: Registry, images: Images, tmp_path: Path) -> None:
    auth_file = docker_config(tmp_path / "config.json", basic.host, *ALICE)
    with RegistryClient(RegistryOptions(auth_file=auth_file)) as c:
        manifest = Manifest.parse(c.manifest(ref(basic.host, "private/app:big"))[0], "big")
        layer = manifest.layers[0]
        with c.open_blob(ref(basic.host, "private/app"), layer.digest, layer.size) as s:
            assert read_all(s) == images.big.built_layers()[0].blob


def test_docker_config_found_by_search(
    basic: Registry, images: Images, no_user_auth: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docker_dir = no_user_auth / ".docker"
    docker_dir.mkdir()
    docker_config(docker_dir / "config.json", basic.host, *ALICE)
    with RegistryClient() as c:
        assert c.manifest(ref(basic.host, "private/app:v1"))[0] == images.small.manifest_bytes()


def test_token_auth(token: TokenSetup, images: Images, tmp_path: Path) -> None:
    secure = ref(token.registry.host, "secure/app:v1")
    with RegistryClient() as c, pytest.raises(RegistryError) as e:
        c.manifest(secure)
    assert e.value.status == 401

    token.tokens.requests.clear()
    with RegistryClient(RegistryOptions(creds=BOB)) as c:
        body, _, _ = c.manifest(secure)
        assert body == images.small.manifest_bytes()
        manifest = Manifest.parse(body, "manifest")
        assert c.blob(ref(token.registry.host, "secure/app"), manifest.config.digest)
        with c.open_blob(secure, manifest.layers[0].digest, manifest.layers[0].size) as s:
            assert read_all(s) == images.small.built_layers()[0].blob
        assert c.catalog(token.registry.host) == ["secure/app"]
    pulls = [r for r in token.tokens.requests if r.scopes == ["repository:secure/app:pull"]]
    assert len(pulls) == 1, "one token per (registry, scope), then cached"
    assert pulls[0].user == BOB[0] and pulls[0].service == TokenServer.service
    assert any(r.scopes == ["registry:catalog:*"] for r in token.tokens.requests)

    auth_file = tmp_path / "auth.json"
    auth = base64.b64encode(f"{BOB[0]}:{WRONG}".encode()).decode()
    auth_file.write_text(json.dumps({"auths": {token.registry.host: {"auth": auth}}}))
    with (
        RegistryClient(RegistryOptions(auth_file=auth_file)) as c,
        pytest.raises(RegistryError) as e,
    ):
        c.manifest(secure)
    assert e.value.status == 401 and str(auth_file) in str(e.value)
    assert "token server" in str(e.value) and WRONG not in str(e.value)


def test_one_client_many_threads(token: TokenSetup, images: Images) -> None:
    host = token.registry.host
    repo = ref(host, "secure/app")
    wanted = {
        Digest.parse(layer.digest): layer.blob
        for image in (images.small, images.big)
        for layer in image.built_layers()
    }

    def fetch(digest: Digest) -> bytes:
        with c.open_blob(repo, digest, len(wanted[digest])) as stream:
            return read_all(stream)

    with RegistryClient(RegistryOptions(creds=BOB)) as c, ThreadPoolExecutor(8) as pool:
        work = [d for d in wanted for _ in range(4)]
        assert list(pool.map(fetch, work)) == [wanted[d] for d in work]


def test_login_logout(
    basic: Registry,
    token: TokenSetup,
    images: Images,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="snapshotter")
    run = tmp_path / "run"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    expected = run / "containers" / "auth.json"
    expected.parent.mkdir(parents=True)
    expected.write_text(json.dumps({"auths": {"keep.example": {"auth": "a2VlcDptZQ=="}}}))

    with pytest.raises(RegistryError) as e:
        login(basic.host, ALICE[0], WRONG)
    assert e.value.status == 401 and WRONG not in str(e.value)
    assert basic.host not in json.loads(expected.read_text())["auths"]

    assert login(basic.host, *ALICE) == expected
    assert login(token.registry.host, *BOB) == expected  # the bearer flow, no scope
    assert stat.S_IMODE(expected.stat().st_mode) == 0o600
    auths = json.loads(expected.read_text())["auths"]
    assert auths[basic.host] == {"auth": base64.b64encode(":".join(ALICE).encode()).decode()}
    assert "keep.example" in auths and token.registry.host in auths
    with RegistryClient() as c:
        assert c.manifest(ref(basic.host, "private/app:v1"))[0] == images.small.manifest_bytes()

    assert logout(basic.host) == expected
    auths = json.loads(expected.read_text())["auths"]
    assert basic.host not in auths and "keep.example" in auths
    with pytest.raises(NotFound, match="not logged in"):
        logout(basic.host)
    assert not list(expected.parent.glob(".*.tmp"))

    for secret in (ALICE[1], BOB[1], WRONG):
        assert all(secret not in r.getMessage() for r in caplog.records)


def test_login_file_without_xdg_runtime_dir(basic: Registry, no_user_auth: Path) -> None:
    path = login(basic.host, *ALICE)
    assert path == no_user_auth / ".config" / "containers" / "auth.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_secrets_stay_out_of_reprs() -> None:
    options = RegistryOptions(creds=("u", "hunter2-secret"))
    assert "hunter2" not in repr(options)
    with pytest.raises(ValueError, match="user name") as e:
        RegistryOptions(creds=("a:b", "hunter2-secret"))
    assert "hunter2" not in str(e.value)


# -- faults -----------------------------------------------------------------------------------


@pytest.fixture
def proxy(anon: Registry) -> Iterator[FaultProxy]:
    p = FaultProxy(anon.host)
    try:
        yield p
    finally:
        p.stop()


def _big_layer(client: RegistryClient, host: str) -> tuple[Reference, Digest, int]:
    manifest = Manifest.parse(client.manifest(ref(host, "app:big"))[0], "big")
    return ref(host, "app"), manifest.layers[0].digest, manifest.layers[0].size


def test_cut_connection_resumes_with_range(
    proxy: FaultProxy, images: Images, client: RegistryClient
) -> None:
    repo, digest, size = _big_layer(client, proxy.host)
    proxy.faults.append(Fault("cut", at=100_000))
    with client.open_blob(repo, digest, size) as stream:
        assert read_all(stream, 65_536) == images.big.built_layers()[0].blob
    gets = proxy.requests_to(r"/blobs/")
    assert len(gets) == 2 and "range" not in gets[0].headers
    assert gets[1].headers["range"] == "bytes=100000-"


def test_resumes_are_bounded_without_progress(proxy: FaultProxy, client: RegistryClient) -> None:
    repo, digest, size = _big_layer(client, proxy.host)
    proxy.faults += [Fault("cut", at=100_000)] + [Fault("cut", at=0) for _ in range(6)]
    with client.open_blob(repo, digest, size) as stream, pytest.raises(RegistryError) as e:
        read_all(stream)
    assert "at byte 100000 (gave up after 5 attempts)" in str(e.value)
    assert str(digest) in str(e.value)
    assert len(proxy.requests_to(r"/blobs/")) == 5  # 5 attempts at byte 100000


def test_resume_when_range_is_ignored(
    proxy: FaultProxy, images: Images, client: RegistryClient
) -> None:
    repo, digest, size = _big_layer(client, proxy.host)
    proxy.faults += [Fault("cut", at=150_000), Fault("ignore_range")]
    with client.open_blob(repo, digest, size) as stream:
        assert read_all(stream) == images.big.built_layers()[0].blob
    assert "range" in proxy.requests_to(r"/blobs/")[1].headers


def test_503_twice_then_success(proxy: FaultProxy, images: Images, client: RegistryClient) -> None:
    repo, digest, size = _big_layer(client, proxy.host)
    proxy.faults += [Fault("status", status=503), Fault("status", status=503)]
    with client.open_blob(repo, digest, size) as stream:
        assert read_all(stream) == images.big.built_layers()[0].blob
    assert len(proxy.requests_to(r"/blobs/")) == 3


def test_429_retry_after_and_reset(
    proxy: FaultProxy, images: Images, client: RegistryClient
) -> None:
    proxy.faults += [
        Fault("status", pattern="/manifests/", status=429, headers={"Retry-After": "0"}),
        Fault("reset", pattern="/manifests/"),
    ]
    body, _, _ = client.manifest(ref(proxy.host, "app:v1"))
    assert body == images.small.manifest_bytes()
    assert len(proxy.requests_to("/manifests/")) == 3


def test_retries_are_bounded(proxy: FaultProxy, client: RegistryClient) -> None:
    proxy.faults += [Fault("status", pattern="/manifests/", status=503) for _ in range(10)]
    with pytest.raises(RegistryError, match="gave up after 5 attempts") as e:
        client.manifest(ref(proxy.host, "app:v1"))
    assert e.value.status == 503
    assert len(proxy.requests_to("/manifests/")) == 5


def test_flipped_manifest_byte_is_a_digest_mismatch(
    proxy: FaultProxy, images: Images, client: RegistryClient
) -> None:
    digest = images.small.manifest_digest()
    proxy.faults += [Fault("flip", pattern="/manifests/", at=10)] * 2
    with pytest.raises(DigestMismatch, match=digest):
        client.manifest(ref(proxy.host, f"app@{digest}"))
    with pytest.raises(DigestMismatch, match="the registry says"):
        client.manifest(ref(proxy.host, "app:v1"))
    assert len(proxy.requests_to("/manifests/")) == 2, "a mismatch is never retried"


def test_tampered_blob_in_storage(
    tools: None, images: Images, tmp_path: Path, client: RegistryClient
) -> None:
    reg = start_registry(tmp_path / "tampered")
    proxy = FaultProxy(reg.host)
    try:
        reg.push(images.oci("zstd"), "app:zstd")
        layer = images.zstd.built_layers()[0]
        data = reg.blob_path(layer.digest)
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        data.write_bytes(bytes(raw))
        digest = Digest.parse(layer.digest)
        repo = ref(proxy.host, "app")
        with client.open_blob(repo, digest, layer.size) as stream:
            reader = VerifyingReader(stream, digest, layer.size, "layer")
            assert read_all(reader) == bytes(raw)
            with pytest.raises(DigestMismatch, match=str(digest)):
                reader.verify()
        with pytest.raises(DigestMismatch):
            client.blob(repo, digest)
        assert len(proxy.requests_to(r"/blobs/")) == 2, "one GET each, no retries"
    finally:
        proxy.stop()
        reg.stop()


def test_redirect_to_storage_drops_authorization(
    basic: Registry, images: Images, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="snapshotter")
    storage = StorageServer()
    proxy = FaultProxy(basic.host)
    try:
        layer = images.big.built_layers()[0]
        storage.objects["/signed/blob"] = layer.blob
        # Another origin (localhost, not 127.0.0.1): the registry's credentials stay home.
        location = f"http://localhost:{storage.port}/signed/blob?sig=s3cr3t"
        proxy.faults.append(Fault("redirect", location=location))
        with RegistryClient(RegistryOptions(creds=ALICE)) as c:
            c.manifest(ref(proxy.host, "private/app:big"))  # learns: Basic auth here
            repo = ref(proxy.host, "private/app")
            with c.open_blob(repo, Digest.parse(layer.digest), layer.size) as stream:
                assert read_all(stream) == layer.blob
        assert [s.path for s in storage.seen] == ["/signed/blob?sig=s3cr3t"]
        assert "authorization" not in storage.seen[0].headers
        logged = " ".join(r.getMessage() for r in caplog.records)
        assert "localhost" in logged and "s3cr3t" not in logged and ALICE[1] not in logged
        assert proxy.requests_to(r"/blobs/")[-1].headers["authorization"].startswith("Basic ")
    finally:
        proxy.stop()
        storage.stop()


# -- tls --------------------------------------------------------------------------------------


def test_tls_with_cert_dir(tls: TlsSetup, images: Images) -> None:
    app = ref(tls.registry.host, "app:v1")
    with RegistryClient(RegistryOptions(cert_dir=tls.ca_dir)) as c:
        assert c.manifest(app)[0] == images.small.manifest_bytes()
        assert c._schemes[tls.registry.host] == "https"
    with RegistryClient() as c, pytest.raises(RegistryError, match="certificate verify failed"):
        c.manifest(app)
    with RegistryClient(RegistryOptions(insecure=True)) as c:
        assert c.manifest(app)[0] == images.small.manifest_bytes()


# -- small pure pieces -------------------------------------------------------------------------


def test_parse_challenges() -> None:
    got = parse_challenges(
        [
            'Bearer realm="https://auth.example/token",service="reg",'
            'scope="repository:a/b:pull,push", Basic realm="x\\"y"',
            "basic realm=plain",
        ]
    )
    assert [(c.scheme, c.params) for c in got] == [
        (
            "bearer",
            {
                "realm": "https://auth.example/token",
                "service": "reg",
                "scope": "repository:a/b:pull,push",
            },
        ),
        ("basic", {"realm": 'x"y'}),
        ("basic", {"realm": "plain"}),
    ]


def test_hosts() -> None:
    assert registry_host("docker.io") == "registry-1.docker.io"
    assert registry_host("127.0.0.1:5000") == "127.0.0.1:5000"
    assert all(is_loopback(h) for h in ("localhost:5000", "127.0.0.2", "[::1]:80"))
    assert not any(is_loopback(h) for h in ("example.com", "10.0.0.1:5000", "quay.io"))
