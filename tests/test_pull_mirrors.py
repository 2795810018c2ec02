"""registries.conf against real registries: mirrors, blocked prefixes, pull-from-mirror,
short names, rewritten locations and insecure registries, end to end through the CLI.

Two Debian ``docker-registry`` instances run on 127.0.0.1: the origin and a mirror, each
behind a FaultProxy that records every request it forwards (so a test can say which
registry served what) and can answer 503.  They hold different images under the same tag
(``app:1`` is image A on the origin, image B on the mirror), so the digest a pull gets also
says who served the tag.  Each test writes its own registries.conf and passes it with
``--registries-conf`` (or ``$CONTAINERS_REGISTRIES_CONF``); HOME is a fresh directory.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import REPO, CliResult, child_env, need_tool
from registry_fixtures import (
    Fault,
    FaultProxy,
    Registry,
    TlsSetup,
    free_port,
    isolate_user_auth,
    start_htpasswd_registry,
    start_registry,
    start_tls_registry,
)

Cli = Callable[..., CliResult]
ALICE = ("alice", "alice-Mirror-pw-1")


@dataclass
class Setup:
    origin: Registry
    mirror: Registry
    origin_proxy: FaultProxy  # what pulls are pointed at: "the origin"
    mirror_proxy: FaultProxy  # "the mirror"
    a: ImageBuilder  # origin's app:1 and app:2, and mirror's app:a and only:1
    b: ImageBuilder  # mirror's app:1

    @property
    def o(self) -> str:
        return self.origin_proxy.host

    @property
    def m(self) -> str:
        return self.mirror_proxy.host


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    need_tool("docker-registry")
    need_tool("skopeo")
    a = ImageBuilder([LayerBuilder().file("etc/which", b"image A\n")], config_extra={"Cmd": ["a"]})
    b = ImageBuilder([LayerBuilder().file("etc/which", b"image B\n")], config_extra={"Cmd": ["b"]})
    amd64 = ImageBuilder([LayerBuilder().file("arch", b"amd64\n")], architecture="amd64")
    arm64 = ImageBuilder([LayerBuilder().file("arch", b"arm64\n")], architecture="arm64")
    layout = write_oci_layout(
        tmp_path_factory.mktemp("layout") / "oci",
        {"a": a, "b": b},
        index_of={"multi": [amd64, arm64]},
    )
    origin = start_registry(tmp_path_factory.mktemp("origin"))
    mirror = start_registry(tmp_path_factory.mktemp("mirror"))
    proxies: list[FaultProxy] = []
    try:
        for dest in ("app:1", "app:2", "team/app:1"):
            origin.push(f"oci:{layout}:a", dest)
        mirror.push(f"oci:{layout}:b", "app:1")
        mirror.push(f"oci:{layout}:a", "app:a")
        mirror.push(f"oci:{layout}:a", "only:1")
        mirror.push(f"oci:{layout}:multi", "multi:1", all_images=True)
        proxies = [FaultProxy(origin.host), FaultProxy(mirror.host)]
        yield Setup(origin, mirror, proxies[0], proxies[1], a, b)
    finally:
        for p in proxies:
            p.stop()
        origin.stop()
        mirror.stop()


@pytest.fixture
def s(setup: Setup) -> Setup:
    for proxy in (setup.origin_proxy, setup.mirror_proxy):
        with proxy.lock:
            proxy.seen.clear()
            proxy.faults.clear()
    return setup


@pytest.fixture(autouse=True)
def no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("CONTAINERS_REGISTRIES_CONF", raising=False)
    monkeypatch.delenv("REGISTRIES_CONFIG_PATH", raising=False)
    return isolate_user_auth(monkeypatch, tmp_path)


def write_conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registries.conf"
    path.write_text(text)
    return path


def pulled(cli: Cli, conf: Path, *args: str, root: Path | None = None) -> dict[str, Any]:
    result = cli("pull", "--json", "-q", "--registries-conf", str(conf), *args, root=root)
    assert result.rc == 0, result.err
    doc: dict[str, Any] = json.loads(result.out)
    return doc


def failed(cli: Cli, *args: str) -> str:
    """A command that must fail: exit status 1, nothing on stdout, one line on stderr."""
    result = cli(*args)
    assert result.rc == 1, (result.out, result.err)
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapshotter: error: "), result.err
    return lines[0]


def paths(proxy: FaultProxy) -> list[str]:
    with proxy.lock:
        return [seen.path for seen in proxy.seen if seen.path != "/v2/"]


def blob_paths(image: ImageBuilder, repository: str) -> set[str]:
    digests = [image.config_digest(), *(layer.digest for layer in image.built_layers())]
    return {f"/v2/{repository}/blobs/{d}" for d in digests}


# -- (a) the mirror is asked first ----------------------------------------------------------


def test_mirror_serves_before_the_origin(s: Setup, cli: Cli, tmp_path: Path) -> None:
    conf = write_conf(
        tmp_path, f'[[registry]]\nlocation = "{s.o}"\n[[registry.mirror]]\nlocation = "{s.m}"\n'
    )
    doc = pulled(cli, conf, f"{s.o}/app:1")
    # The mirror's app:1 is image B: the tag was resolved there, and only there.
    assert doc["digest"] == s.b.manifest_digest()
    assert doc["names"] == [f"{s.o}/app:1"]  # named as asked, wherever it came from
    assert paths(s.origin_proxy) == []
    seen = paths(s.mirror_proxy)
    assert seen[0] == "/v2/app/manifests/1"
    assert set(seen[1:]) == blob_paths(s.b, "app")  # config and layers from the mirror too
    # An image only the mirror has is pulled as if the origin had it.
    doc = pulled(cli, conf, f"{s.o}/only:1")
    assert doc["digest"] == s.a.manifest_digest()
    assert paths(s.origin_proxy) == []


def test_every_platform_from_the_mirror(s: Setup, cli: Cli, tmp_path: Path) -> None:
    conf = write_conf(
        tmp_path, f'[[registry]]\nlocation = "{s.o}"\n[[registry.mirror]]\nlocation = "{s.m}"\n'
    )
    doc = pulled(cli, conf, "--all-platforms", f"{s.o}/multi:1")
    assert doc["index"] and len(doc["images"]) == 2
    assert doc["names"] == [f"{s.o}/multi:1"]
    assert paths(s.origin_proxy) == []
    assert len([p for p in paths(s.mirror_proxy) if "/manifests/" in p]) == 3


def test_inspect_and_history_use_the_mirror(s: Setup, cli: Cli, tmp_path: Path) -> None:
    conf = write_conf(
        tmp_path, f'[[registry]]\nlocation = "{s.o}"\n[[registry.mirror]]\nlocation = "{s.m}"\n'
    )
    result = cli("inspect", "--registries-conf", str(conf), f"docker://{s.o}/only:1")
    assert result.rc == 0, result.err
    (doc,) = json.loads(result.out)
    assert doc["RepoTags"] == [f"{s.o}/only:1"]
    assert doc["RepoDigests"] == [f"{s.o}/only@{s.a.manifest_digest()}"]
    result = cli("history", "--registries-conf", str(conf), "-q", f"docker://{s.o}/only:1")
    assert result.rc == 0, result.err
    assert paths(s.origin_proxy) == []
    assert f"/v2/only/blobs/{s.a.config_digest()}" in paths(s.mirror_proxy)


# -- (b) blocked ------------------------------------------------------------------------------


def test_blocked_refuses_every_command(
    s: Setup, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = write_conf(tmp_path, f'[[registry]]\nlocation = "{s.o}"\nblocked = true\n')
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))  # the variable, this time
    line = failed(cli, "pull", "-q", f"{s.o}/app:1")
    assert line == (
        f"snapshotter: error: docker://{s.o}/app:1: registry prefix '{s.o}' is blocked in {conf}"
    )
    assert f"is blocked in {conf}" in failed(
        cli, "pull", "-q", f"docker://{s.o}/app@{s.a.manifest_digest()}"
    )
    assert f"is blocked in {conf}" in failed(cli, "inspect", f"docker://{s.o}/app:1")
    assert f"is blocked in {conf}" in failed(cli, "tags", f"{s.o}/app")
    assert f"is blocked in {conf}" in failed(cli, "search", s.o)
    assert f"is blocked in {conf}" in failed(cli, "login", "-u", "u", "-p", "p", s.o)
    assert paths(s.origin_proxy) == []
    # Another registry is not blocked by it.
    assert cli("tags", f"{s.m}/app").rc == 0


def test_blocked_namespace_only(s: Setup, cli: Cli, tmp_path: Path) -> None:
    conf = write_conf(
        tmp_path, f'[[registry]]\nprefix = "{s.o}/team"\nlocation = "{s.o}/team"\nblocked = true\n'
    )
    assert "is blocked in" in failed(
        cli, "pull", "-q", "--registries-conf", str(conf), f"{s.o}/team/app:1"
    )
    assert pulled(cli, conf, f"{s.o}/app:1")["digest"] == s.a.manifest_digest()


# -- (c) pull-from-mirror = "digest-only" ------------------------------------------------------


def test_digest_only_mirror(s: Setup, cli: Cli, tmp_path: Path) -> None:
    conf = write_conf(
        tmp_path,
        f'[[registry]]\nlocation = "{s.o}"\n'
        f'[[registry.mirror]]\nlocation = "{s.m}"\npull-from-mirror = "digest-only"\n',
    )
    # By tag: the origin alone (its app:1 is A; the mirror's would have been B).
    assert pulled(cli, conf, f"{s.o}/app:1")["digest"] == s.a.manifest_digest()
    assert paths(s.mirror_proxy) == []
    assert paths(s.origin_proxy)[0] == "/v2/app/manifests/1"
    s.origin_proxy.seen.clear()
    # By digest: the mirror, which has A in its app repository.
    digest = s.a.manifest_digest()
    doc = pulled(cli, conf, f"{s.o}/app@{digest}", root=tmp_path / "other-store")
    assert doc["digest"] == digest
    assert paths(s.origin_proxy) == []
    assert paths(s.mirror_proxy)[0] == f"/v2/app/manifests/{digest}"


def test_mirror_by_digest_only_key(s: Setup, cli: Cli, tmp_path: Path) -> None:
    conf = write_conf(
        tmp_path,
        f'[[registry]]\nlocation = "{s.o}"\nmirror-by-digest-only = true\n'
        f'[[registry.mirror]]\nlocation = "{s.m}"\n',
    )
    assert pulled(cli, conf, f"{s.o}/app:1")["digest"] == s.a.manifest_digest()
    assert paths(s.mirror_proxy) == []


# -- (d) short names ----------------------------------------------------------------------------


def test_alias_resolves_a_short_name(s: Setup, cli: Cli, tmp_path: Path) -> None:
    conf = write_conf(tmp_path, f'[aliases]\n"snapshotter-test-app" = "{s.o}/app"\n')
    doc = pulled(cli, conf, "snapshotter-test-app:2")
    assert doc["names"] == [f"{s.o}/app:2"]
    assert doc["digest"] == s.a.manifest_digest()
    result = cli("tags", "--registries-conf", str(conf), "snapshotter-test-app")
    assert result.rc == 0, result.err
    assert sorted(result.out.split()) == ["1", "2"]


def test_enforcing_refuses_an_ambiguous_short_name(s: Setup, cli: Cli, tmp_path: Path) -> None:
    conf = write_conf(
        tmp_path,
        f'unqualified-search-registries = ["{s.m}", "{s.o}"]\nshort-name-mode = "enforcing"\n',
    )
    line = failed(cli, "pull", "-q", "--registries-conf", str(conf), "app:2")
    assert line == (
        f"snapshotter: error: short name 'app:2' is ambiguous: unqualified-search-registries in "
        f"{conf} lists 2 registries ({s.m}, {s.o}) and short-name-mode is 'enforcing'; name "
        "the image fully or add an [aliases] entry"
    )
    assert paths(s.origin_proxy) == paths(s.mirror_proxy) == []


def on_a_terminal(args: list[str], answer: bytes) -> tuple[int, str]:
    """The real command with stdin, stdout and stderr on a pseudo-terminal; ``answer`` is
    typed once it asks "which one"."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "snapshotter.cli", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=REPO,
        env=child_env(),
    )
    os.close(slave)
    shown = b""
    answered = False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: the command has gone
                    break
                if not data:
                    break
                shown += data
            if not answered and b"which one" in shown:
                os.write(master, answer)
                answered = True
            if not ready and proc.poll() is not None:
                break
        return proc.wait(timeout=30), shown.decode("utf-8", "replace").replace("\r\n", "\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_enforcing_asks_on_a_terminal(s: Setup, tmp_path: Path) -> None:
    conf = write_conf(
        tmp_path,
        f'unqualified-search-registries = ["{s.m}", "{s.o}"]\nshort-name-mode = "enforcing"\n',
    )
    store = tmp_path / "store"
    rc, shown = on_a_terminal(
        ["--root", str(store), "pull", "-q", "--registries-conf", str(conf), "app:1"], b"2\n"
    )
    assert rc == 0, shown
    assert f"  1) {s.m}/app:1\n  2) {s.o}/app:1\n" in shown
    assert s.a.manifest_digest() in shown  # the origin's app:1, as chosen
    assert paths(s.mirror_proxy) == []


def test_permissive_tries_each_search_registry(s: Setup, cli: Cli, tmp_path: Path) -> None:
    # The mirror has no app:2; the origin does.
    conf = write_conf(tmp_path, f'unqualified-search-registries = ["{s.m}", "{s.o}"]\n')
    doc = pulled(cli, conf, "app:2")
    assert doc["names"] == [f"{s.o}/app:2"]
    assert paths(s.mirror_proxy) == ["/v2/app/manifests/2"]
    s.mirror_proxy.seen.clear()
    # docker:// keeps docker's reading of a short name (as podman does): docker.io, here
    # rewritten to the origin so that no test leaves loopback; no search registry is asked.
    conf = write_conf(
        tmp_path,
        f'unqualified-search-registries = ["{s.m}", "{s.o}"]\n'
        f'[[registry]]\nprefix = "docker.io/library/snapshotter-test"\nlocation = "{s.o}/app"\n',
    )
    doc = pulled(cli, conf, "docker://snapshotter-test:2")
    assert doc["names"] == ["docker.io/library/snapshotter-test:2"]
    assert paths(s.mirror_proxy) == []


# -- (e) a failing mirror falls through ----------------------------------------------------------


def test_failing_mirrors_fall_through_to_the_origin(s: Setup, cli: Cli, tmp_path: Path) -> None:
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    conf = write_conf(
        tmp_path,
        f'[[registry]]\nprefix = "{s.o}/team"\nlocation = "{s.o}/team"\n'
        f'[[registry.mirror]]\nlocation = "{down}/team"\n'  # connection refused
        f'[[registry.mirror]]\nlocation = "{s.m}/busy"\n'  # 503
        f'[[registry.mirror]]\nlocation = "{s.m}/team"\n',  # 404: no such repository
    )
    s.mirror_proxy.faults.append(Fault("status", pattern="/busy/", status=503))
    doc = pulled(cli, conf, f"{s.o}/team/app:1")
    assert doc["digest"] == s.a.manifest_digest()
    assert paths(s.mirror_proxy) == ["/v2/busy/app/manifests/1", "/v2/team/app/manifests/1"]
    seen = paths(s.origin_proxy)
    assert seen[0] == "/v2/team/app/manifests/1"
    assert set(seen[1:]) == blob_paths(s.a, "team/app")


def test_the_last_error_says_what_every_mirror_answered(s: Setup, cli: Cli, tmp_path: Path) -> None:
    down = f"127.0.0.1:{free_port()}"
    conf = write_conf(
        tmp_path,
        f'[[registry]]\nlocation = "{s.o}"\n'
        f'[[registry.mirror]]\nlocation = "{down}"\n[[registry.mirror]]\nlocation = "{s.m}"\n',
    )
    line = failed(cli, "pull", "-q", "--registries-conf", str(conf), f"{s.o}/nothing:1")
    assert line.startswith(f"snapshotter: error: {s.o}/nothing:1: manifest unknown")
    assert f"; mirrors also failed: {down}/nothing:1: manifest: " in line
    assert f"; {s.m}/nothing:1: manifest unknown" in line


@pytest.fixture(scope="module")
def guarded_mirror(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultProxy]:
    """A mirror that wants ALICE's password, and has image B as app:1."""
    reg = start_htpasswd_registry(tmp_path_factory.mktemp("guarded"), dict([ALICE]))
    proxy = None
    try:
        layout = write_oci_layout(tmp_path_factory.mktemp("guarded-layout") / "oci", {"b": setup.b})
        reg.push(f"oci:{layout}:b", "app:1", creds=ALICE)
        proxy = FaultProxy(reg.host)
        yield proxy
    finally:
        if proxy is not None:
            proxy.stop()
        reg.stop()


def test_creds_are_not_sent_to_a_mirror(
    s: Setup, guarded_mirror: FaultProxy, cli: Cli, tmp_path: Path
) -> None:
    """--creds are for the image's own registry (containers/image drops them for a mirror
    on another registry): the guarded mirror is refused, the origin serves."""
    conf = write_conf(
        tmp_path,
        f'[[registry]]\nlocation = "{s.o}"\n'
        f'[[registry.mirror]]\nlocation = "{guarded_mirror.host}"\n',
    )
    doc = pulled(cli, conf, "--creds", f"{ALICE[0]}:{ALICE[1]}", f"{s.o}/app:1")
    assert doc["digest"] == s.a.manifest_digest()
    asked = [seen for seen in guarded_mirror.seen if "/manifests/" in seen.path]
    assert asked and not any("authorization" in seen.headers for seen in asked)


# -- rewriting and insecure ------------------------------------------------------------------------


def test_location_rewrites_the_prefix(s: Setup, cli: Cli, tmp_path: Path) -> None:
    conf = write_conf(
        tmp_path, f'[[registry]]\nprefix = "registry.example.invalid/ns"\nlocation = "{s.o}/team"\n'
    )
    doc = pulled(cli, conf, "registry.example.invalid/ns/app:1")
    assert doc["names"] == ["registry.example.invalid/ns/app:1"]
    assert paths(s.origin_proxy)[0] == "/v2/team/app/manifests/1"


@pytest.fixture(scope="module")
def tls(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSetup]:
    t = start_tls_registry(tmp_path_factory.mktemp("tls"))
    try:
        layout = write_oci_layout(tmp_path_factory.mktemp("tls-layout") / "oci", {"a": setup.a})
        t.registry.push(f"oci:{layout}:a", "app:1")
        yield t
    finally:
        t.registry.stop()


def test_insecure_registry_skips_tls_verification(tls: TlsSetup, cli: Cli, tmp_path: Path) -> None:
    host = tls.registry.host
    plain = write_conf(tmp_path, "")
    assert "tls" in failed(cli, "pull", "-q", "--registries-conf", str(plain), f"{host}/app:1")
    conf = tmp_path / "insecure.conf"
    conf.write_text(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n')
    assert pulled(cli, conf, f"{host}/app:1")["names"] == [f"{host}/app:1"]


def test_an_invalid_file_is_one_line(cli: Cli, tmp_path: Path) -> None:
    conf = write_conf(tmp_path, '[[registry]]\nprefix = "example.com"\n')
    line = failed(cli, "pull", "-q", "--registries-conf", str(conf), "example.com/app:1")
    assert line == (
        f"snapshotter: error: registries.conf {conf}: [[registry]] #1: location is unset and "
        "prefix 'example.com' is not *.example.com"
    )
    missing = tmp_path / "none.conf"
    line = failed(cli, "tags", "--registries-conf", str(missing), "example.com/app")
    assert line == f"snapshotter: error: registries.conf {missing}: no such file"
