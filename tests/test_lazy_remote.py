"""Lazy images from a registry (issue 13): range reads, the span cache, published indexes.

One image is built here (a 13 MB gzip layer and a 12 MB zstd layer of partly
incompressible files, and a small layer), pushed with skopeo to Debian's docker-registry on
127.0.0.1 under two names, and read through the fault proxy of registry_fixtures, which
logs every request with the bytes it sent and can cut, tamper, shift or refuse ranges.
Each test starts from empty stores: a store is a "host".
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from builders import BuiltLayer, ImageBuilder, LayerBuilder, decompress, write_oci_layout
from conftest import need_tool, run_in
from registry_fixtures import (
    Fault,
    FaultProxy,
    Registry,
    isolate_user_auth,
    start_registry,
    start_token_registry,
)
from test_fusefs import need_fuse
from test_lazy_mount import assert_same_view, cli_mounted

from snapshotter.errors import DigestMismatch, RangeNotSupported, RegistryError
from snapshotter.lazy import read_file, zstd_chunked
from snapshotter.lazy.cache import load_index
from snapshotter.lazy.layers import LazyImage, LazyLayer
from snapshotter.lazy.remote import open_lazy_remote
from snapshotter.lazy.seekable_zstd import TAIL_READ as SEEK_TABLE_TAIL
from snapshotter.lazy.spans import CachingSource, SpanCache
from snapshotter.oci.digest import Digest
from snapshotter.oci.model import Platform
from snapshotter.oci.reference import Reference
from snapshotter.progress import QuietProgress
from snapshotter.sources.registries_conf import RegistriesConf, parse
from snapshotter.sources.registry import RegistryBlob, RegistryClient, RegistryOptions
from snapshotter.store.store import Store
from snapshotter.text import human_size

OPTIONS = RegistryOptions(retries=3, backoff=0.01)
CLOSED_RANGE = re.compile(r"^bytes=\d+-\d+$")


def _text(rnd: random.Random, n: int) -> bytes:
    """A quarter noise, the rest zeros, by 2 KiB: gzip and zstd make a quarter of it,
    quickly."""
    return b"".join(rnd.randbytes(512) + bytes(1536) for _ in range(n // 2048))


def _image() -> ImageBuilder:
    """Layer 1 (gzip, ~28 MB, 100 MiB of tar: 25 spans): small files in etc/ first, as in
    real images, then 4 MiB files with small files between them, and 2 MiB of noise;
    layer 2: small; layer 3 (zstd in 8 frames, ~13 MB): noise and text."""
    rnd = random.Random(7)
    big = LayerBuilder().dir("etc").file("etc/os-release", b"ID=lazy\n")
    for i in range(12):
        big.file(f"etc/conf{i:02}.txt", f"setting {i}\n".encode() * 20)
    for i in range(24):
        big.file(f"data/text{i:02}.txt", _text(rnd, 4 << 20))
        big.file(f"data/small{i:02}", f"small {i}\n".encode())
    big.file("data/noise.bin", rnd.randbytes(2 << 20))
    small = LayerBuilder().file("small/hello", b"hello\n").whiteout("etc/conf00.txt")
    zstd = LayerBuilder()
    for i in range(10):
        zstd.file(f"z/blob{i:02}.bin", rnd.randbytes(1 << 20))
        zstd.file(f"z/note{i:02}", f"zstd note {i}\n".encode())
    zstd.file("z/text.txt", _text(rnd, 8 << 20))
    return ImageBuilder(
        [big, small, zstd], layer_compressions=["gzip", "gzip", "zstd"], zstd_frames=8
    )


@dataclass
class Setup:
    registry: Registry
    proxy: FaultProxy
    manifest_digest: str
    layers: list[BuiltLayer]
    layout: Path

    def ref(self, repo: str = "lazy/app:1") -> str:
        return f"docker://{self.proxy.host}/{repo}"

    def blob_requests(self, layer: BuiltLayer) -> list[str]:
        return [
            s.headers.get("range", "") for s in self.proxy.requests_to(f"/blobs/{layer.digest}$")
        ]

    def blob_requests_of(self, digest: str) -> list[str]:
        return [s.headers.get("range", "") for s in self.proxy.requests_to(f"/blobs/{digest}$")]

    def clear(self) -> None:
        with self.proxy.lock:
            self.proxy.faults.clear()
            self.proxy.seen.clear()
        self.proxy.refuse_range = False


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    need_tool("docker-registry")
    need_tool("skopeo")
    layout = write_oci_layout(tmp_path_factory.mktemp("layout") / "oci", {"lazy": _image()})

    def blob(digest: str) -> bytes:
        return (layout / "blobs/sha256" / digest.removeprefix("sha256:")).read_bytes()

    manifest_digest = json.loads((layout / "index.json").read_bytes())["manifests"][0]["digest"]
    manifest = json.loads(blob(manifest_digest))
    diff_ids = json.loads(blob(manifest["config"]["digest"]))["rootfs"]["diff_ids"]
    layers = [
        BuiltLayer(d["mediaType"], blob(d["digest"]), d["digest"], diff_id, d["size"])
        for d, diff_id in zip(manifest["layers"], diff_ids, strict=True)
    ]
    registry = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        registry.push(f"oci:{layout}:lazy", "lazy/app:1")
        registry.push(f"oci:{layout}:lazy", "lazy/plain:1")
        registry.push(f"oci:{layout}:lazy", "lazy/forged:1")
        proxy = FaultProxy(registry.host)
        try:
            yield Setup(registry, proxy, manifest_digest, layers, layout)
        finally:
            proxy.stop()
    finally:
        registry.stop()


@pytest.fixture
def env(setup: Setup) -> Setup:
    setup.clear()
    return setup


def _store(tmp_path: Path, name: str) -> Store:
    store = Store(tmp_path / name)
    store.ensure()
    return store


def _files(layer: BuiltLayer) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(decompress(layer.blob))) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isreg()
        }


def _read(layer: LazyLayer, path: str) -> bytes:
    assert layer.index is not None and layer.source is not None
    entry = layer.index.toc.find(path)
    assert entry is not None, path
    return read_file(layer.index, entry, layer.source.read_range)


def _open(env: Setup, store: Store, repo: str = "lazy/app:1") -> LazyImage:
    return open_lazy_remote(store, env.ref(repo), OPTIONS, QuietProgress())


def _blob(env: Setup, number: int = 0) -> tuple[RegistryClient, RegistryBlob]:
    client = RegistryClient(OPTIONS)
    layer = env.layers[number]
    ref = Reference.parse(f"{env.proxy.host}/lazy/app")
    return client, RegistryBlob(client, ref, Digest.parse(layer.digest), layer.size)


# -- range reads ----------------------------------------------------------------------------


def test_read_range_sends_one_closed_range(env: Setup) -> None:
    client, blob = _blob(env)
    with client:
        assert blob.read_range(100, 199) == env.layers[0].blob[100:200]
        # past the end: the blob's last bytes, no more
        size = env.layers[0].size
        assert blob.read_range(size - 10, size + 10) == env.layers[0].blob[-10:]
    assert env.blob_requests(env.layers[0]) == ["bytes=100-199", f"bytes={size - 10}-{size + 10}"]


def test_read_range_retries_a_cut_connection(env: Setup) -> None:
    layer = env.layers[0]
    env.proxy.faults.append(Fault("cut", pattern=f"/blobs/{layer.digest}$", at=1000))
    client, blob = _blob(env)
    with client:
        assert blob.read_range(0, 99_999) == layer.blob[:100_000]
    assert env.blob_requests(layer) == ["bytes=0-99999"] * 2


def test_read_range_gives_up_in_bounded_time(env: Setup) -> None:
    layer = env.layers[0]
    for _ in range(5):
        env.proxy.faults.append(Fault("cut", pattern=f"/blobs/{layer.digest}$", at=10))
    client, blob = _blob(env)
    started = time.monotonic()
    with client, pytest.raises(RegistryError, match="gave up after 3 attempts"):
        blob.read_range(0, 99_999)
    assert time.monotonic() - started < 5
    assert len(env.blob_requests(layer)) == 3


def test_read_range_detects_a_registry_ignoring_range(env: Setup) -> None:
    env.proxy.refuse_range = True
    client, blob = _blob(env)
    with client, pytest.raises(RangeNotSupported, match="ignores Range"):
        blob.read_range(0, 1)


def test_read_range_detects_a_wrong_content_range(env: Setup) -> None:
    layer = env.layers[0]
    env.proxy.faults.append(Fault("shift_range", pattern=f"/blobs/{layer.digest}$", at=1))
    client, blob = _blob(env)
    with client, pytest.raises(RangeNotSupported, match="bytes 101-200, not 100-199"):
        blob.read_range(100, 199)


def test_read_range_follows_and_caches_the_blob_location(env: Setup) -> None:
    """A registry that redirects blobs to a CDN: the first range read is redirected and
    its target remembered; later reads go straight there, without Authorization; when
    the signed URL expires (403) the registry is asked again, at once."""
    from registry_fixtures import StorageServer

    layer = env.layers[0]
    storage = StorageServer(ranges=True)
    try:
        storage.objects["/cdn/1"] = storage.objects["/cdn/2"] = layer.blob
        pattern = f"/blobs/{layer.digest}$"
        for n in (1, 2):
            location = f"http://{storage.host}/cdn/{n}"
            env.proxy.faults.append(Fault("redirect", pattern=pattern, location=location))
        client, blob = _blob(env)
        with client:
            assert blob.read_range(0, 9) == layer.blob[:10]
            assert blob.read_range(10, 19) == layer.blob[10:20]
            assert len(env.blob_requests(layer)) == 1  # the second went to the CDN only
            storage.expired.add("/cdn/1")
            assert blob.read_range(20, 29) == layer.blob[20:30]
        assert len(env.blob_requests(layer)) == 2
        assert [(s.path, s.headers.get("range")) for s in storage.seen] == [
            ("/cdn/1", "bytes=0-9"),
            ("/cdn/1", "bytes=10-19"),
            ("/cdn/1", "bytes=20-29"),
            ("/cdn/2", "bytes=20-29"),
        ]
        assert all("authorization" not in s.headers for s in storage.seen)
        # a CDN that answers whole is caught as a registry is
        storage.ranges = False
        with RegistryClient(OPTIONS) as client2:
            env.proxy.faults.append(
                Fault("redirect", pattern=pattern, location=f"http://{storage.host}/cdn/2")
            )
            other = RegistryBlob(client2, blob.repository_ref, blob.digest, blob.size)
            with pytest.raises(RangeNotSupported, match="answered 200"):
                other.read_range(0, 9)
    finally:
        storage.stop()


# -- the span cache -------------------------------------------------------------------------


def test_span_cache_bound_and_lru_eviction(tmp_path: Path) -> None:
    import hashlib

    cache = SpanCache(tmp_path / "spans", max_bytes=350)
    spans = [bytes([i]) * 100 for i in range(5)]
    names = [hashlib.sha256(s).hexdigest() for s in spans]
    for i in range(3):
        cache.put(names[i], spans[i])
        os.utime(cache.path(names[i]), (1000 + i, 1000 + i))  # written in this order
    assert cache.get(names[0]) == spans[0]  # a hit: 0 is now the most recently used
    cache.put(names[3], spans[3])
    # 400 bytes > 350: the least recently used (1) went, down to 90 % of the bound
    assert cache.size() == 300
    assert cache.get(names[1]) is None
    assert [cache.get(names[k]) for k in (0, 2, 3)] == [spans[0], spans[2], spans[3]]
    for k, when in ((0, 3000), (2, 4000), (3, 2000)):
        os.utime(cache.path(names[k]), (when, when))
    cache.put(names[4], spans[4])
    assert cache.get(names[3]) is None
    assert [cache.get(names[k]) for k in (0, 2, 4)] == [spans[0], spans[2], spans[4]]
    assert cache.evicted == 2
    # a damaged file is never served, and is dropped
    cache.path(names[2]).write_bytes(b"x" * 100)
    assert cache.get(names[2]) is None
    assert not cache.path(names[2]).exists()
    assert cache.get(names[0]) == spans[0]


def test_tampered_span_is_refused_and_never_cached(env: Setup, tmp_path: Path) -> None:
    store = _store(tmp_path, "host")
    lazy = _open(env, store)
    first = lazy.layers[0]
    assert isinstance(first.source, CachingSource)
    env.clear()
    env.proxy.faults.append(Fault("flip", pattern=f"/blobs/{first.digest}$", at=5000))
    with pytest.raises(DigestMismatch, match="hash to sha256:"):
        _read(first, "etc/conf05.txt")
    assert first.source.cache.size() == 0
    assert _read(first, "etc/conf05.txt") == b"setting 5\n" * 20  # a later read tries again
    assert first.source.cache.size() > 0


def test_second_read_of_a_file_makes_no_request(env: Setup, tmp_path: Path) -> None:
    store = _store(tmp_path, "host")
    lazy = _open(env, store)
    env.clear()
    zstd = lazy.layers[2]
    assert _read(zstd, "z/note07") == b"zstd note 7\n"
    assert 1 <= len(env.blob_requests(env.layers[2])) <= 2
    env.clear()
    assert _read(zstd, "z/note07") == b"zstd note 7\n"
    assert env.proxy.seen == []


# -- where indexes come from ------------------------------------------------------------------


def test_without_a_published_index_it_is_built_once_then_cached(env: Setup, tmp_path: Path) -> None:
    store = _store(tmp_path, "host")
    lazy = _open(env, store, "lazy/plain:1")
    hows = [layer.how for layer in lazy.layers]
    assert hows[0].startswith(f"indexed (built: 1 pass, {human_size(env.layers[0].size)} in ")
    assert hows[1].startswith("fetched whole: smaller than 10 MiB")
    assert hows[2].startswith(f"indexed (built: 1 pass, {human_size(env.layers[2].size)} in ")
    assert lazy.layers[1].index is None and store.has_snapshot(Digest.parse(env.layers[1].diff_id))
    assert all(CLOSED_RANGE.match(r) for r in env.blob_requests(env.layers[0]) if r)
    env.clear()
    again = _open(env, store, "lazy/plain:1")
    assert [layer.how for layer in again.layers] == [
        "indexed (cache)",
        "in the store already (unpacked)",
        "indexed (cache)",
    ]
    # manifest and config only: no lookup of published indexes, no layer blob
    assert env.blob_requests(env.layers[0]) == env.blob_requests(env.layers[2]) == []
    assert not any("/referrers/" in s.path for s in env.proxy.seen)


def _assert_all_fetched_whole(env: Setup, store: Store, lazy: LazyImage) -> None:
    """Every layer of the lazy image fetched whole into the store, the big ones because
    no endpoint served ranges."""
    assert [layer.how for layer in lazy.layers] == [
        "fetched whole: the registry ignores Range",
        lazy.layers[1].how,
        "fetched whole: the registry ignores Range",
    ]
    assert all(layer.index is None and layer.source is None for layer in lazy.layers)
    for built in env.layers:
        assert store.has_snapshot(Digest.parse(built.diff_id))


def test_a_registry_ignoring_range_gets_layers_fetched_whole(env: Setup, tmp_path: Path) -> None:
    env.proxy.refuse_range = True
    store = _store(tmp_path, "host")
    _assert_all_fetched_whole(env, store, _open(env, store, "lazy/plain:1"))
    assert load_index(store, env.layers[0].digest) is None


def test_published_index_serves_another_host(env: Setup, tmp_path: Path) -> None:
    builder = tmp_path / "builder"
    cli = run_in(builder)
    built = cli("index", "build", env.ref())
    assert built.rc == 0, built.err
    lines = built.out.splitlines()
    assert len(lines) == 3
    short = env.layers[0].digest[7:19]
    assert re.fullmatch(
        rf"layer 1/3 {short}  built   index \S+ = 0\.\d\d% of \S+ uncompressed", lines[0]
    ), lines[0]
    assert lines[1].startswith(
        f"layer 2/3 {env.layers[1].digest[7:19]}  not indexed: smaller than 10 MiB"
    )
    assert " built " in lines[2]
    again = cli("index", "build", env.ref())
    assert [line.split()[3] for line in again.out.splitlines()] == ["cached", "not", "cached"]
    pushed = cli("index", "push", env.ref(), "--json")
    assert pushed.rc == 0, pushed.err
    report = json.loads(pushed.out)
    assert report["subject"] == env.manifest_digest
    assert report["referrers_api"] is False  # distribution 2.8
    assert report["tag"] == "sha256-" + env.manifest_digest[7:]
    assert report["layers"] == [env.layers[0].digest, env.layers[2].digest]
    assert "published 2 seek indexes" in pushed.err

    # another host: a fresh store
    env.clear()
    store = _store(tmp_path, "another-host")
    lazy = _open(env, store)
    assert [layer.how for layer in lazy.layers] == [
        "indexed (referrer)",
        lazy.layers[1].how,
        "indexed (referrer)",
    ]
    # the whole toc with 0 bytes of the indexed blobs: manifest, config, lookup, indexes
    assert env.blob_requests(env.layers[0]) == env.blob_requests(env.layers[2]) == []
    paths = [s.path for s in env.proxy.seen]
    assert any("/referrers/" in p for p in paths)
    assert any(p.endswith("/manifests/" + report["tag"]) for p in paths)
    expected = _files(env.layers[0])
    index = lazy.layers[0].index
    assert index is not None
    assert {e.path for e in index.toc if e.kind.name == "FILE"} == set(expected)

    # one small file: at most 2 range requests
    env.clear()
    assert _read(lazy.layers[0], "etc/conf06.txt") == expected["etc/conf06.txt"]
    assert 1 <= len(env.blob_requests(env.layers[0])) <= 2
    # and a handful more: a small part of the blobs
    zfiles = _files(env.layers[2])
    for path in ("etc/os-release", "etc/conf11.txt", "data/small03", "data/small17"):
        assert _read(lazy.layers[0], path) == expected[path]
    for path in ("z/note00", "z/note01"):
        assert _read(lazy.layers[2], path) == zfiles[path]
    fetched = sum(env.proxy.bytes_to(f"/blobs/{env.layers[k].digest}$") for k in (0, 2))
    total = env.layers[0].size + env.layers[2].size
    share = 100 * fetched / total
    print(f"\nread 7 files: {fetched} of {total} blob bytes fetched ({share:.1f} %)")
    assert share < 25  # 19.6 %: one span of each layer, and two more of the gzip one
    ranges = [s.headers["range"] for s in env.proxy.seen if "range" in s.headers]
    assert ranges and all(CLOSED_RANGE.match(r) for r in ranges)


class _Notes(QuietProgress):
    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)


def test_a_published_index_of_another_layer_is_passed_over(env: Setup, tmp_path: Path) -> None:
    """An artifact that says layer 1's index is layer 3's (a mistake, or a forgery): the
    index names its own layer, so it is not used for layer 1, which is indexed anew."""
    from snapshotter.lazy import remote

    builder = _store(tmp_path, "builder")
    remote.build_indexes(builder, env.ref("lazy/forged:1"), OPTIONS, QuietProgress())
    first, third = env.layers[0], env.layers[2]
    third_index = (builder.root / "indexes/sha256" / third.digest[7:]).read_bytes()
    repo = Reference.parse(f"{env.proxy.host}/lazy/forged")
    with RegistryClient(OPTIONS) as client:
        config = client.push_blob(repo, b"{}")
        forged = client.push_blob(repo, third_index)
        layers = [
            {
                "mediaType": remote.INDEX_MEDIA_TYPE,
                "digest": str(forged),
                "size": len(third_index),
                "annotations": {remote.LAYER_ANNOTATION: digest},
            }
            for digest in (first.digest, third.digest)
        ]
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": remote.ARTIFACT_TYPE,
            "config": {"mediaType": remote.MT_EMPTY, "digest": str(config), "size": 2},
            "layers": layers,
            "subject": {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": env.manifest_digest,
                "size": 1,
            },
        }
        body = json.dumps(manifest).encode()
        artifact, _ = client.push_manifest(
            repo, f"sha256:{Digest.of_bytes(body).hex}", body, manifest["mediaType"]
        )
        tag = "sha256-" + env.manifest_digest[7:]
        remote._update_referrers_tag(client, repo, tag, artifact, len(body))
    env.clear()
    notes = _Notes()
    lazy = open_lazy_remote(_store(tmp_path, "host"), env.ref("lazy/forged:1"), OPTIONS, notes)
    assert lazy.layers[0].how.startswith("indexed (built: 1 pass")
    assert lazy.layers[2].how == "indexed (referrer)", "\n".join(notes.notes)
    assert any("passed over" in n and "another layer's" in n for n in notes.notes), notes.notes


def test_index_build_of_a_stored_image_reads_its_source_by_digest(
    env: Setup, tmp_path: Path
) -> None:
    cli = run_in(tmp_path / "store")
    pulled = cli("pull", "--quiet", "--json", env.ref("lazy/plain:1"))
    assert pulled.rc == 0, pulled.err
    image_id = json.loads(pulled.out)["id"][7:19]
    env.clear()
    built = cli("index", "build", image_id)
    assert built.rc == 0, built.err
    assert [line.split()[3] for line in built.out.splitlines()] == ["built", "not", "built"]
    pinned = f"/v2/lazy/plain/manifests/{env.manifest_digest}"
    assert [s.path for s in env.proxy.requests_to("/manifests/")] == [pinned]


def test_index_cli_errors(env: Setup, multi: Multi, tmp_path: Path) -> None:
    cli = run_in(tmp_path / "store")
    none = cli("index", "push", "--all-platforms", env.ref(multi.repo))
    assert none.rc == 1 and none.err.count("\n") == 1
    assert "no seek index cached for any layer of its 2 images" in none.err
    nothing = cli("index", "push", env.ref("lazy/plain:1"))
    assert nothing.rc == 1
    assert nothing.err.count("\n") == 1
    assert (
        "no seek index cached for any of its 3 layers; run 'snapshotter index build" in nothing.err
    )
    not_registry = cli("index", "push", "oci:/nowhere:x")
    assert not_registry.rc == 1
    assert "expected docker://REF" in not_registry.err
    missing = cli("index", "build", env.ref("lazy/none:1"))
    assert missing.rc == 1
    assert missing.err.startswith("snapshotter: error: ") and missing.err.count("\n") == 1
    assert cli("index").rc == 2


def test_token_auth_registry_build_push_and_read(
    env: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind docker's token auth: push asks for a pull,push token, range reads reuse the
    pull token, and without credentials the push is refused in one line."""
    isolate_user_auth(monkeypatch, tmp_path)
    bob = ("bob", "bob-Token-pw-2")
    setup = start_token_registry(tmp_path / "token", dict([bob]))
    try:
        setup.registry.push(f"oci:{env.layout}:lazy", "secure/lazy:1", creds=bob)
        ref = f"docker://{setup.registry.host}/secure/lazy:1"
        creds = ("--creds", ":".join(bob))
        cli = run_in(tmp_path / "builder")
        refused = cli("index", "build", ref)
        assert refused.rc == 1 and "authentication required" in refused.err
        assert cli("index", "build", ref, *creds).rc == 0
        anonymous = cli("index", "push", ref)
        assert anonymous.rc == 1 and anonymous.err.count("\n") == 1
        assert "authentication required" in anonymous.err
        before = len(setup.tokens.requests)
        pushed = cli("index", "push", ref, *creds)
        assert pushed.rc == 0, pushed.err
        scopes = {s for r in setup.tokens.requests[before:] for s in r.scopes}
        # (the registry names the actions of its challenge in either order)
        assert scopes & {"repository:secure/lazy:pull,push", "repository:secure/lazy:push,pull"}
        options = RegistryOptions(creds=bob, retries=3, backoff=0.01)
        lazy = open_lazy_remote(_store(tmp_path, "host"), ref, options, QuietProgress())
        assert lazy.layers[0].how == "indexed (referrer)"
        assert _read(lazy.layers[0], "data/small05") == b"small 5\n"
    finally:
        setup.stop()


# -- multi-platform images: index build|push --all-platforms ---------------------------------


@dataclass
class Multi:
    """A two-platform index (amd64, arm64/v8) in the registry: the platforms share their
    big base layer and each has a big layer of its own (all gzip, each over 10 MiB)."""

    repo: str
    index_digest: str
    manifests: dict[str, str]  # platform -> manifest digest
    layers: dict[str, list[BuiltLayer]]  # platform -> its layers, base first


MULTI_PLATFORMS = ("linux/amd64", "linux/arm64/v8")


@pytest.fixture(scope="module")
def multi(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Multi:
    rnd = random.Random(11)
    base = (
        LayerBuilder()
        .file("etc/os-release", b"ID=multi\n")
        .file("base/noise.bin", rnd.randbytes(11 << 20))
    )
    images = []
    for arch, variant in (("amd64", None), ("arm64", "v8")):
        top = LayerBuilder().file(f"{arch}/hello", f"hello {arch}\n".encode())
        top.file(f"{arch}/noise.bin", rnd.randbytes(11 << 20))
        images.append(ImageBuilder([base, top], architecture=arch, variant=variant))
    layout = write_oci_layout(
        tmp_path_factory.mktemp("multi") / "oci", {}, index_of={"multi": images}
    )
    setup.registry.push(f"oci:{layout}:multi", "lazy/multi:1", all_images=True)
    top = json.loads((layout / "index.json").read_bytes())["manifests"][0]
    index = json.loads((layout / "blobs/sha256" / top["digest"][7:]).read_bytes())
    manifests = {
        "/".join(
            filter(
                None,
                (d["platform"]["os"], d["platform"]["architecture"], d["platform"].get("variant")),
            )
        ): d["digest"]
        for d in index["manifests"]
    }
    assert tuple(manifests) == MULTI_PLATFORMS
    layers = {p: img.built_layers() for p, img in zip(MULTI_PLATFORMS, images, strict=True)}
    assert layers["linux/amd64"][0] == layers["linux/arm64/v8"][0]  # the shared base
    return Multi("lazy/multi:1", top["digest"], manifests, layers)


def test_index_build_and_push_all_platforms_serve_each_platform(
    env: Setup, multi: Multi, tmp_path: Path
) -> None:
    """``index build --all-platforms`` indexes the shared base once and each platform's own
    layer; ``index push --all-platforms`` publishes one artifact per platform manifest, and
    a lazy open of either platform on another host finds its own with 0 blob bytes read."""
    cli = run_in(tmp_path / "builder")
    ref = env.ref(multi.repo)
    built = cli("index", "build", "--all-platforms", "--json", ref)
    assert built.rc == 0, built.err
    doc = json.loads(built.out)
    assert doc["index"] == multi.index_digest
    assert [p["platform"] for p in doc["platforms"]] == list(MULTI_PLATFORMS)
    for p in doc["platforms"]:
        assert p["manifest"] == multi.manifests[p["platform"]]
        assert [layer["digest"] for layer in p["layers"]] == [
            layer.digest for layer in multi.layers[p["platform"]]
        ]
    # the shared base: one pass, by the first platform; each own layer built
    assert [layer["status"] for layer in doc["platforms"][0]["layers"]] == ["built", "built"]
    assert [layer["status"] for layer in doc["platforms"][1]["layers"]] == ["cached", "built"]
    base = multi.layers["linux/amd64"][0]
    assert len(env.blob_requests(base)) == 1
    assert "(2 platforms): 3 built, 1 already cached, 0 layers not indexed" in built.err
    text = cli("index", "build", "--all-platforms", ref)
    lines = text.out.splitlines()
    assert len(lines) == 4 and all(" cached " in line for line in lines), lines
    assert [line.split()[0] for line in lines] == [
        *[MULTI_PLATFORMS[0]] * 2,
        *[MULTI_PLATFORMS[1]] * 2,
    ]
    refused = cli("index", "build", "--all-platforms", "--platform", "linux/amd64", ref)
    assert refused.rc == 2 and "not allowed with argument" in refused.err

    pushed = cli("index", "push", "--all-platforms", "--json", ref)
    assert pushed.rc == 0, pushed.err
    report = json.loads(pushed.out)
    assert report["index"] == multi.index_digest
    artifacts = {}
    for p in report["platforms"]:
        subject = multi.manifests[p["platform"]]
        assert p["subject"] == subject
        assert p["tag"] == "sha256-" + subject[7:]  # distribution 2.8: the referrers tag
        assert p["layers"] == [layer.digest for layer in multi.layers[p["platform"]]]
        assert p["missing"] == []
        artifacts[p["platform"]] = p["artifact"]
    assert list(artifacts) == list(MULTI_PLATFORMS) and len(set(artifacts.values())) == 2
    assert pushed.err.count("published 2 seek indexes") == 2
    with RegistryClient(OPTIONS) as client:
        for platform, artifact in artifacts.items():
            subject = multi.manifests[platform]
            repo = Reference.parse(f"{env.proxy.host}/lazy/multi")
            body, _, _ = client.manifest(replace(repo, tag="sha256-" + subject[7:]))
            listed = [m["digest"] for m in json.loads(body)["manifests"]]
            assert listed == [artifact], platform
    again = cli("index", "push", "--all-platforms", ref)
    assert again.rc == 0, again.err
    assert again.out.splitlines() == [f"{p} {a}" for p, a in artifacts.items()]

    # other hosts: fresh stores, one platform each
    for platform in MULTI_PLATFORMS:
        env.clear()
        store = _store(tmp_path, f"host-{platform.replace('/', '-')}")
        lazy = open_lazy_remote(
            store, ref, OPTIONS, QuietProgress(), platform=Platform.parse(platform)
        )
        assert lazy.manifest_digest == multi.manifests[platform]
        assert [layer.how for layer in lazy.layers] == ["indexed (referrer)"] * 2, platform
        own = multi.layers[platform]
        # the whole tree with 0 bytes of either blob
        assert env.blob_requests(own[0]) == env.blob_requests(own[1]) == [], platform
        arch = platform.split("/")[1]
        index = lazy.layers[1].index
        assert index is not None and index.toc.find(f"{arch}/hello") is not None
        assert _read(lazy.layers[1], f"{arch}/hello") == f"hello {arch}\n".encode()

    # and the command: mount --lazy --platform on yet another host lists the whole tree
    # with 0 blob bytes
    need_fuse()
    mp = tmp_path / "mp"
    mp.mkdir()
    root = tmp_path / "mount-host"
    env.clear()
    args = ("--lazy", "--platform", "linux/arm64/v8", ref)
    with cli_mounted(run_in(root), root, mp, *args) as err:
        assert [line.partition(": ")[2] for line in err.strip().splitlines()] == [
            "indexed (referrer)"
        ] * 2
        names = {str(p.relative_to(mp)) for p in mp.rglob("*")}
        assert {"arm64/hello", "base/noise.bin", "etc/os-release"} <= names
        assert not any(n.startswith("amd64") for n in names)
        own = multi.layers["linux/arm64/v8"]
        assert env.blob_requests(own[0]) == env.blob_requests(own[1]) == []
        assert (mp / "arm64/hello").read_bytes() == b"hello arm64\n"


def test_index_build_all_platforms_of_a_stored_index_reads_it_by_digest(
    env: Setup, multi: Multi, tmp_path: Path
) -> None:
    cli = run_in(tmp_path / "store")
    pulled = cli("pull", "-q", "--all-platforms", env.ref(multi.repo), "--name", "multi:1")
    assert pulled.rc == 0, pulled.err
    env.clear()
    built = cli("index", "build", "--all-platforms", "--json", "multi:1")
    assert built.rc == 0, built.err
    doc = json.loads(built.out)
    assert doc["index"] == multi.index_digest
    assert doc["source"] == f"docker://{env.proxy.host}/lazy/multi@{multi.index_digest}"
    statuses = [[layer["status"] for layer in p["layers"]] for p in doc["platforms"]]
    assert statuses == [["built", "built"], ["cached", "built"]]
    manifests = {s.path.rpartition("/")[2] for s in env.proxy.requests_to("/manifests/")}
    assert manifests == {multi.index_digest, *multi.manifests.values()}  # never the tag


# -- the whole road: mount --lazy docker:// ---------------------------------------------------


def test_mount_lazy_from_the_registry_equals_the_eager_mount(env: Setup, tmp_path: Path) -> None:
    """`snapshotter mount --lazy docker://...` on a host that has nothing: the daemon and
    its worker processes (forks of the process that opened the registry) read through
    their own connections; 8 threads reading every file at once get the eager bytes."""
    need_fuse()
    # Straight to the registry, not through the proxy: it keeps connections alive, so an
    # inherited connection would be shared.
    direct = f"docker://{env.registry.host}/lazy/app:1"
    eager_root, lazy_root = tmp_path / "eager", tmp_path / "lazy"
    eager_mp, lazy_mp = tmp_path / "mp-eager", tmp_path / "mp-lazy"
    eager_mp.mkdir()
    lazy_mp.mkdir()
    eager_run, lazy_run = run_in(eager_root), run_in(lazy_root)
    assert eager_run("pull", "-q", env.ref(), "--name", "app:1").rc == 0
    env.clear()
    with (
        cli_mounted(eager_run, eager_root, eager_mp, "app:1"),
        cli_mounted(lazy_run, lazy_root, lazy_mp, "--lazy", direct) as err,
    ):
        hows = [line.partition(": ")[2] for line in err.strip().splitlines()]
        # (built, or published by an earlier test of this module)
        assert all(hows[k].startswith(("indexed (built", "indexed (referrer)")) for k in (0, 2))
        assert hows[1].startswith("fetched whole: smaller than 10 MiB")
        env.clear()
        _read_all_alike(lazy_mp, eager_mp, threads=8)


def _cache_files(root: Path) -> dict[str, int]:
    """The files of the store's seek index and span caches, with their sizes."""
    return {
        str(p.relative_to(root)): p.stat().st_size
        for cache in ("indexes", "spans")
        for p in (root / cache).rglob("*")
        if p.is_file()
    }


def test_prune_indexes_clears_the_caches_under_live_lazy_mounts(env: Setup, tmp_path: Path) -> None:
    """``prune`` leaves the seek index and span caches alone; ``prune --indexes`` and
    ``prune -a`` empty both, reporting what they freed, and lazy mounts that were using
    them keep reading: their indexes are in memory, and a span gone is fetched again."""
    need_fuse()
    root = tmp_path / "host"
    cli = run_in(root)
    assert cli("index", "build", env.ref()).rc == 0
    mps = [tmp_path / "mp-a", tmp_path / "mp-b"]
    for mp in mps:
        mp.mkdir()
    expected = _files(env.layers[0])
    with (
        cli_mounted(cli, root, mps[0], "--lazy", env.ref()) as err,
        cli_mounted(cli, root, mps[1], "--lazy", env.ref()),
    ):
        assert "indexed (cache)" in err
        assert (mps[0] / "etc/conf06.txt").read_bytes() == expected["etc/conf06.txt"]
        cached = _cache_files(root)
        indexes = {k for k in cached if k.startswith("indexes/")}
        spans = {k for k in cached if k.startswith("spans/")}
        assert indexes == {f"indexes/sha256/{env.layers[k].digest[7:]}" for k in (0, 2)}
        assert spans

        kept = cli("prune", "--json")
        assert kept.rc == 0, kept.err
        report = json.loads(kept.out)
        assert (report["indexes"], report["spans"]) == (None, None)
        assert _cache_files(root) == cached

        pruned = cli("prune", "--indexes", "--json")
        assert pruned.rc == 0, pruned.err
        report = json.loads(pruned.out)
        assert report["indexes"] == sorted(env.layers[k].digest for k in (0, 2))
        assert report["spans"] == len(spans)
        assert report["snapshots"] == []  # the fetched-whole layer: a live mount's
        assert report["freed"] == sum(cached.values())
        assert _cache_files(root) == {}

        # b never read it; its span is gone from disk: fetched again, not an error
        env.clear()
        assert (mps[1] / "etc/conf06.txt").read_bytes() == expected["etc/conf06.txt"]
        assert env.blob_requests(env.layers[0])
        for mp in mps:
            for path in ("etc/conf06.txt", "data/small17", "etc/os-release"):
                assert (mp / path).read_bytes() == expected[path]
        again = _cache_files(root)
        assert again and all(k.startswith("spans/") for k in again)

        text = cli("prune", "-a")
        assert text.rc == 0, text.err
        assert re.fullmatch(
            rf"Removed 0 images, 0 snapshots, 0 blobs, 0 seek indexes, {len(again)} cached "
            r"spans; total reclaimed space: \S+",
            text.out.strip(),
        ), text.out
        assert _cache_files(root) == {}
        assert (mps[0] / "data/small03").read_bytes() == expected["data/small03"]


def test_a_forked_process_opens_its_own_connections(env: Setup) -> None:
    """A lazy view's daemon and workers are forks of the process that opened the image:
    each must talk to the registry over connections of its own, never the parent's."""
    client, blob = _blob(env)
    with client:
        assert blob.read_range(0, 9) == env.layers[0].blob[:10]
        parent_http = client._client(env.proxy.host)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report whether it got its own client, and that it works
            try:
                own = client._client(env.proxy.host) is not parent_http
                works = blob.read_range(10, 19) == env.layers[0].blob[10:20]
                os.write(write_end, b"%d%d" % (own, works))
            finally:
                os._exit(0)
        os.close(write_end)
        answer = os.read(read_end, 2)
        os.close(read_end)
        os.waitpid(pid, 0)
        assert answer == b"11"
        assert client._client(env.proxy.host) is parent_http  # the parent keeps its own
        assert blob.read_range(20, 29) == env.layers[0].blob[20:30]


# -- registries.conf: a mirror that ignores Range ----------------------------------------------


@pytest.fixture(scope="module")
def mirror_setup(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultProxy]:
    """A second docker-registry holding the same image as lazy/plain:1, behind a proxy of
    its own: the mirror, in front of ``setup``'s registry as the origin."""
    registry = start_registry(tmp_path_factory.mktemp("mirror"))
    try:
        registry.push(f"oci:{setup.layout}:lazy", "lazy/plain:1")
        proxy = FaultProxy(registry.host)
        try:
            yield proxy
        finally:
            proxy.stop()
    finally:
        registry.stop()


@pytest.fixture
def mirror(mirror_setup: FaultProxy) -> FaultProxy:
    with mirror_setup.lock:
        mirror_setup.faults.clear()
        mirror_setup.seen.clear()
    mirror_setup.refuse_range = False
    return mirror_setup


def _mirror_conf(env: Setup, mirror: FaultProxy, extra: str = "") -> str:
    """registries.conf: the origin (``env``'s proxy) with ``mirror`` as its first mirror."""
    return (
        f'[[registry]]\nlocation = "{env.proxy.host}"\n'
        f'[[registry.mirror]]\nlocation = "{mirror.host}"\n{extra}'
    )


def _mirror_options(env: Setup, mirror: FaultProxy, extra: str = "") -> RegistryOptions:
    conf = RegistriesConf.merged([parse(_mirror_conf(env, mirror, extra), "registries.conf")])
    return replace(OPTIONS, registries=conf)


def _ranges(proxy: FaultProxy, digest: str) -> list[tuple[str, int]]:
    """(Range, status answered) of each range request for the blob ``digest``."""
    return [
        (s.headers["range"], s.status)
        for s in proxy.requests_to(f"/blobs/{digest}$")
        if "range" in s.headers
    ]


def test_a_mirror_ignoring_range_passes_range_reads_to_the_origin(
    env: Setup, mirror: FaultProxy
) -> None:
    """RegistryBlob against two registries: the mirror that served the manifest answers a
    range with 200 (left unread), the origin serves it; later reads of that blob, through
    any RegistryBlob of the client, go straight to the origin.  Another blob asks the
    mirror again (a pull-through cache may have that one); a digest-only mirror between
    the two is never asked for a reference by tag; when both ignore Range, one line says
    so."""
    between = f'[[registry.mirror]]\nlocation = "{mirror.host}/digests"\n'
    between += 'pull-from-mirror = "digest-only"\n'
    mirror.refuse_range = True
    first, third = env.layers[0], env.layers[2]
    ref = Reference.parse(f"{env.proxy.host}/lazy/plain:1")
    with RegistryClient(_mirror_options(env, mirror, between)) as client:
        assert client.manifest(ref)[2] == Digest.parse(env.manifest_digest)
        assert env.proxy.requests_to("/manifests/") == []  # the mirror served it
        blob = RegistryBlob(client, ref, Digest.parse(first.digest), first.size)
        assert blob.read_range(100, 199) == first.blob[100:200]
        assert _ranges(mirror, first.digest) == [("bytes=100-199", 200)]
        (refused,) = mirror.requests_to(f"/blobs/{first.digest}$")
        assert refused.sent < first.size  # the whole blob was not read
        assert _ranges(env.proxy, first.digest) == [("bytes=100-199", 206)]
        assert blob.read_range(200, 299) == first.blob[200:300]
        again = RegistryBlob(client, ref, blob.digest, blob.size)
        assert again.read_range(300, 399) == first.blob[300:400]
        assert _ranges(mirror, first.digest) == [("bytes=100-199", 200)]
        assert [r for r, _ in _ranges(env.proxy, first.digest)] == [
            "bytes=100-199",
            "bytes=200-299",
            "bytes=300-399",
        ]
        # another blob: the mirror first again
        other = RegistryBlob(client, ref, Digest.parse(third.digest), third.size)
        assert other.read_range(0, 9) == third.blob[:10]
        assert _ranges(mirror, third.digest) == [("bytes=0-9", 200)]
        assert _ranges(env.proxy, third.digest) == [("bytes=0-9", 206)]
        assert not any(s.path.startswith("/v2/digests/") for s in mirror.seen)
    # both ignore Range: RangeNotSupported, naming the mirror passed over
    env.proxy.refuse_range = True
    with RegistryClient(_mirror_options(env, mirror)) as client:
        client.manifest(ref)
        blob = RegistryBlob(client, ref, Digest.parse(first.digest), first.size)
        with pytest.raises(RangeNotSupported) as caught:
            blob.read_range(0, 1)
    assert str(caught.value) == (
        f"{env.proxy.host}/lazy/plain: blob {first.digest} bytes 0-1: the registry ignores "
        f"Range (it answered 200, the whole blob); so did the endpoints asked before it: "
        f"{mirror.host}/lazy/plain"
    )


def _read_all_alike(lazy_mp: Path, eager_mp: Path, threads: int) -> None:
    """Every file of the lazy view, read from ``threads`` threads at once, equals the eager
    view's; and so does every entry's metadata."""
    files = sorted(
        p.relative_to(lazy_mp) for p in lazy_mp.rglob("*") if p.is_file() and not p.is_symlink()
    )
    assert len(files) > 50
    with ThreadPoolExecutor(threads) as pool:
        lazy_bytes = list(pool.map(lambda p: (lazy_mp / p).read_bytes(), files))
    for path, data in zip(files, lazy_bytes, strict=True):
        assert data == (eager_mp / path).read_bytes(), path
    assert assert_same_view(lazy_mp, eager_mp) > 50


def _first_range(layer: BuiltLayer) -> str:
    """The planner's first range read of a layer big enough to index: two bytes, or for
    zstd the tail, where a seek table would be."""
    if layer.media_type.endswith("zstd"):
        return f"bytes={max(0, layer.size - SEEK_TABLE_TAIL)}-{layer.size - 1}"
    return "bytes=0-1"


def test_both_ignoring_range_gets_layers_fetched_whole(
    env: Setup, mirror: FaultProxy, tmp_path: Path
) -> None:
    """Mirror and origin both answer ranges whole: each is probed once per layer, and the
    layers are fetched whole, from the mirror that served the manifest, as without
    mirrors."""
    mirror.refuse_range = env.proxy.refuse_range = True
    store = _store(tmp_path, "host")
    ref = env.ref("lazy/plain:1")
    lazy = open_lazy_remote(store, ref, _mirror_options(env, mirror), QuietProgress())
    _assert_all_fetched_whole(env, store, lazy)
    for k in (0, 2):
        digest, first = env.layers[k].digest, _first_range(env.layers[k])
        assert _ranges(mirror, digest) == [(first, 200)]
        assert _ranges(env.proxy, digest) == [(first, 200)]
    for built in env.layers:  # the blobs themselves came from the mirror, once each
        whole = [
            s for s in mirror.requests_to(f"/blobs/{built.digest}$") if "range" not in s.headers
        ]
        assert len(whole) == 1
    assert [s for s in env.proxy.seen if "/blobs/" in s.path and "range" not in s.headers] == []


def test_mount_lazy_reads_ranges_from_the_origin_when_the_mirror_ignores_them(
    env: Setup, mirror: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mount --lazy` through registries.conf whose mirror ignores Range: the big layers
    are indexed (not fetched whole), the mirror is asked for one range per layer and no
    more, the origin serves every range, and the view is the eager one."""
    need_fuse()
    isolate_user_auth(monkeypatch, tmp_path)
    conf = tmp_path / "registries.conf"
    conf.write_text(_mirror_conf(env, mirror))
    mirror.refuse_range = True
    eager_root, lazy_root = tmp_path / "eager", tmp_path / "lazy"
    eager_mp, lazy_mp = tmp_path / "mp-eager", tmp_path / "mp-lazy"
    eager_mp.mkdir()
    lazy_mp.mkdir()
    eager_run, lazy_run = run_in(eager_root), run_in(lazy_root)
    assert eager_run("pull", "-q", env.ref("lazy/plain:1"), "--name", "plain:1").rc == 0
    env.clear()
    big = [env.layers[0], env.layers[2]]
    lazy_args = ("--lazy", "--registries-conf", str(conf), env.ref("lazy/plain:1"))
    with (
        cli_mounted(eager_run, eager_root, eager_mp, "plain:1"),
        cli_mounted(lazy_run, lazy_root, lazy_mp, *lazy_args) as err,
    ):
        hows = [line.partition(": ")[2] for line in err.strip().splitlines()]
        assert [hows[k].startswith("indexed (built: 1 pass") for k in (0, 2)] == [True] * 2, hows
        assert hows[1].startswith("fetched whole: smaller than 10 MiB")
        assert env.proxy.requests_to("/manifests/") == []  # the mirror served the image
        for layer in big:
            assert _ranges(mirror, layer.digest) == [(_first_range(layer), 200)]
            assert _ranges(env.proxy, layer.digest) == [(_first_range(layer), 206)]
        _read_all_alike(lazy_mp, eager_mp, threads=4)
        for layer in big:
            # nothing more asked of the mirror; every read served by the origin
            assert _ranges(mirror, layer.digest) == [(_first_range(layer), 200)]
            served = _ranges(env.proxy, layer.digest)
            assert len(served) > 1 and all(status == 206 for _, status in served), served
            assert all(CLOSED_RANGE.match(r) for r, _ in served)


# -- eStargz: the layer's own TOC ---------------------------------------------------------


def _estargz_fixture(fixtures_dir: Path, dest: Path) -> Path:
    with tarfile.open(fixtures_dir / "oci-archive" / "dive--test-oci-estargz-image.tar") as tf:
        tf.extractall(dest, filter="data")
    return dest


def test_the_estargz_fixture_mounts_lazily_from_its_own_toc(
    env: Setup, fixtures_dir: Path, tmp_path: Path
) -> None:
    """BuildKit's eStargz image (4.5 kB: far below the size worth a seek index) is read
    through its TOC, from a layout and from the registry, and shows what a pull shows."""
    need_fuse()
    layout = _estargz_fixture(fixtures_dir, tmp_path / "layout")
    eager_root, lazy_root = tmp_path / "eager", tmp_path / "lazy"
    mps = [tmp_path / f"mp{i}" for i in range(3)]
    for mp in mps:
        mp.mkdir()
    eager_run, lazy_run = run_in(eager_root), run_in(lazy_root)
    assert eager_run("pull", "-q", f"oci:{layout}", "--name", "estargz:1").rc == 0
    env.registry.push(f"oci:{layout}", "estargz/app:1")
    env.clear()
    remote = f"docker://{env.proxy.host}/estargz/app:1"
    with (
        cli_mounted(eager_run, eager_root, mps[0], "estargz:1"),
        cli_mounted(lazy_run, lazy_root, mps[1], "--lazy", f"oci:{layout}") as local_err,
        cli_mounted(lazy_run, lazy_root, mps[2], "--lazy", remote) as remote_err,
    ):
        for err in (local_err, remote_err):
            (line,) = err.strip().splitlines()
            assert line.endswith("indexed (eStargz TOC: 4.5kB read)"), line
        layer = json.loads(
            (
                layout
                / "blobs/sha256/2e75eb783d1a845ce3846d1a7da4453f825886aab5b3ad03afcec7730a208c4d"
            ).read_bytes()
        )["layers"][0]
        # One closed request for the TOC, at mount: nothing else of the blob yet.
        assert env.blob_requests_of(layer["digest"]) == [f"bytes=0-{layer['size'] - 1}"]
        readme = (mps[2] / "README.md").read_bytes()
        assert readme == (mps[0] / "README.md").read_bytes()
        assert readme.startswith(b"# dive\n") and len(readme) == 11189
        assert len(env.blob_requests_of(layer["digest"])) == 2  # and one for its chunk
        for mp in mps[1:]:
            assert assert_same_view(mp, mps[0]) == 2  # the root and README.md
    assert not (lazy_root / "snapshots").exists() or not any((lazy_root / "snapshots").iterdir())


# -- zstd:chunked: the layer's own TOC, from the registry ----------------------------------


def test_a_zstd_chunked_image_mounts_lazily_from_the_registry(env: Setup, tmp_path: Path) -> None:
    """skopeo's zstd:chunked image, pushed: each layer's TOC costs one closed request of
    exactly its bytes; listing the tree reads nothing more; a small file costs one more
    request; and the view equals the eager mount."""
    need_fuse()
    from test_zstd_chunked import layers_of, skopeo_chunked_layout

    layout = skopeo_chunked_layout(tmp_path / "image")
    env.registry.push(f"oci:{layout}:t", "chunked/app:1")
    env.clear()
    eager_root, lazy_root = tmp_path / "eager", tmp_path / "lazy"
    eager, lazy = tmp_path / "mp-eager", tmp_path / "mp-lazy"
    eager.mkdir()
    lazy.mkdir()
    eager_run, lazy_run = run_in(eager_root), run_in(lazy_root)
    assert eager_run("pull", "-q", f"oci:{layout}:t", "--name", "chunked:1").rc == 0
    descs = [desc for desc, _, _ in layers_of(layout)]
    with (
        cli_mounted(eager_run, eager_root, eager, "chunked:1"),
        cli_mounted(lazy_run, lazy_root, lazy, "--lazy", env.ref("chunked/app:1")) as err,
    ):
        lines = err.strip().splitlines()
        assert len(lines) == 2 and all("indexed (zstd:chunked TOC: " in x for x in lines), err
        for desc in descs:
            position = zstd_chunked.annotation(desc["annotations"], "manifest-position")
            assert position is not None  # (either prefix: skopeo 1.9 and newer writers)
            offset, length = map(int, position.split(":")[:2])
            assert env.blob_requests_of(desc["digest"]) == [f"bytes={offset}-{offset + length - 1}"]
        os.listdir(lazy / "etc")
        assert (lazy / "new").read_bytes() == b"new\n"
        assert len(env.blob_requests_of(descs[1]["digest"])) == 2
        assert len(env.blob_requests_of(descs[0]["digest"])) == 1
        assert assert_same_view(lazy, eager) >= 10
    snapshots = lazy_root / "snapshots"
    assert not snapshots.exists() or not any(snapshots.iterdir())


# -- --no-published-index ------------------------------------------------------------------


def test_no_published_index_builds_the_index_here(env: Setup, tmp_path: Path) -> None:
    """With indexes published for the image, ``mount --lazy --no-published-index`` does
    not look them up: it builds its own, in one pass over each blob."""
    need_fuse()
    env.registry.push(f"oci:{env.layout}:lazy", "lazy/own:1")
    builder = run_in(tmp_path / "builder")
    assert builder("index", "build", env.ref("lazy/own:1")).rc == 0
    assert builder("index", "push", env.ref("lazy/own:1")).rc == 0
    env.clear()
    mp = tmp_path / "mp"
    mp.mkdir()
    lazy_run = run_in(tmp_path / "host")
    with cli_mounted(
        lazy_run, tmp_path / "host", mp, "--lazy", "--no-published-index", env.ref("lazy/own:1")
    ) as err:
        hows = [line.partition(": ")[2] for line in err.strip().splitlines()]
        assert hows[0].startswith("indexed (built: 1 pass") and hows[2].startswith(
            "indexed (built: 1 pass"
        ), err
    assert not any(
        "/referrers/" in s.path or "/manifests/sha256-" in s.path for s in env.proxy.seen
    )
    # and without the switch, another host takes the published ones
    env.clear()
    lazy = open_lazy_remote(
        _store(tmp_path, "other"), env.ref("lazy/own:1"), OPTIONS, QuietProgress()
    )
    assert [lazy.layers[k].how for k in (0, 2)] == ["indexed (referrer)"] * 2
