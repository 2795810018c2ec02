"""The pure registries.conf module: parsing, merging drop-ins, which file wins, and the
answers (pull sources, blocked, short names), against containers-registries.conf(5)'s
examples and containers/image's sysregistriesv2 rules.  No network; files only in tmp."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapshotter.errors import Blocked, InvalidConfig, InvalidReference
from snapshotter.oci.reference import Reference
from snapshotter.sources.registries_conf import (
    ROOT_ALIAS_CACHE,
    SYSTEM_CONF,
    SYSTEM_CONF_DIR,
    ConfPaths,
    PullFromMirror,
    RegistriesConf,
    ShortNameMode,
    conf_paths,
    is_short_name,
    load,
    parse,
)

DIGEST = "sha256:" + "ab" * 32

# The man page's EXAMPLE, verbatim.
MAN_EXAMPLE = """
unqualified-search-registries = ["example.com"]

[[registry]]
prefix = "example.com/foo"
insecure = false
blocked = false
location = "internal-registry-for-example.com/bar"

[[registry.mirror]]
location = "example-mirror-0.local/mirror-for-foo"

[[registry.mirror]]
location = "example-mirror-1.local/mirrors/foo"
insecure = true

[[registry]]
location = "registry.com"

[[registry.mirror]]
location = "mirror.registry.com"
"""


def conf(*texts: str) -> RegistriesConf:
    """The main file, then drop-ins, merged."""
    files = [parse(t, f"/f{i}.conf", drop_in=i > 0) for i, t in enumerate(texts)]
    return RegistriesConf.merged(files)


def sources(c: RegistriesConf, ref: str) -> list[tuple[str, bool, bool]]:
    """(reference, insecure, mirror) of each pull source, in order."""
    return [
        (str(s.reference), s.endpoint.insecure, s.endpoint.mirror)
        for s in c.pull_sources(Reference.parse(ref))
    ]


# -- pull sources ---------------------------------------------------------------------------

PULL_SOURCES = {
    "man-page-example-foo": (
        MAN_EXAMPLE,
        "example.com/foo/image:latest",
        [
            ("example-mirror-0.local/mirror-for-foo/image:latest", False, True),
            ("example-mirror-1.local/mirrors/foo/image:latest", True, True),
            ("internal-registry-for-example.com/bar/image:latest", False, False),
        ],
    ),
    "man-page-example-other-table": (
        MAN_EXAMPLE,
        "registry.com/image:latest",
        [
            ("mirror.registry.com/image:latest", False, True),
            ("registry.com/image:latest", False, False),
        ],
    ),
    "no-table-matches": (MAN_EXAMPLE, "quay.io/a/b:1", [("quay.io/a/b:1", False, False)]),
    "prefix-needs-a-separator": (
        '[[registry]]\nprefix = "example.com/foo"\nlocation = "x.example/y"',
        "example.com/foobar:1",
        [("example.com/foobar:1", False, False)],
    ),
    "longest-prefix-wins": (
        '[[registry]]\nlocation = "example.com"\ninsecure = true\n'
        '[[registry]]\nprefix = "example.com/team"\nlocation = "team.example/t"\n',
        "example.com/team/app:2",
        [("team.example/t/app:2", False, False)],
    ),
    "prefix-with-a-tag": (
        '[[registry]]\nprefix = "example.com/app:old"\nlocation = "archive.example/app:kept"',
        "example.com/app:old",
        [("archive.example/app:kept", False, False)],
    ),
    "wildcard-subdomain-as-is": (
        '[[registry]]\nprefix = "*.example.com"\ninsecure = true\n'
        '[[registry.mirror]]\nlocation = "cache.local:5000"\n',
        "a.b.example.com/ns/app@" + DIGEST,
        [
            ("cache.local:5000/ns/app@" + DIGEST, False, True),
            ("a.b.example.com/ns/app@" + DIGEST, True, False),
        ],
    ),
    "wildcard-not-past-a-slash": (
        '[[registry]]\nprefix = "*.example.com"\nblocked = true',
        "quay.io/x.example.com/app:1",
        [("quay.io/x.example.com/app:1", False, False)],
    ),
    "docker-hub-library": (
        '[[registry]]\nprefix = "docker.io/library"\nlocation = "hub-cache.local/library"',
        "docker.io/library/alpine:3.20",
        [("hub-cache.local/library/alpine:3.20", False, False)],
    ),
    "digest-only-mirror-with-a-tag": (
        '[[registry]]\nlocation = "origin.example"\n'
        '[[registry.mirror]]\nlocation = "m1.local"\npull-from-mirror = "digest-only"\n'
        '[[registry.mirror]]\nlocation = "m2.local"\npull-from-mirror = "tag-only"\n',
        "origin.example/app:1",
        [("m2.local/app:1", False, True), ("origin.example/app:1", False, False)],
    ),
    "digest-only-mirror-with-a-digest": (
        '[[registry]]\nlocation = "origin.example"\n'
        '[[registry.mirror]]\nlocation = "m1.local"\npull-from-mirror = "digest-only"\n'
        '[[registry.mirror]]\nlocation = "m2.local"\npull-from-mirror = "tag-only"\n',
        "origin.example/app@" + DIGEST,
        [("m1.local/app@" + DIGEST, False, True), ("origin.example/app@" + DIGEST, False, False)],
    ),
    "mirror-by-digest-only-with-a-tag": (
        '[[registry]]\nlocation = "origin.example"\nmirror-by-digest-only = true\n'
        '[[registry.mirror]]\nlocation = "m1.local"\n',
        "origin.example/app:1",
        [("origin.example/app:1", False, False)],
    ),
    "mirror-by-digest-only-with-a-digest": (
        '[[registry]]\nlocation = "origin.example"\nmirror-by-digest-only = true\n'
        '[[registry.mirror]]\nlocation = "m1.local"\n',
        "origin.example/app:1@" + DIGEST,
        [
            ("m1.local/app:1@" + DIGEST, False, True),
            ("origin.example/app:1@" + DIGEST, False, False),
        ],
    ),
    "trailing-slash-trimmed": (
        '[[registry]]\nprefix = "example.com/"\nlocation = "other.example/"',
        "example.com/app:1",
        [("other.example/app:1", False, False)],
    ),
}


@pytest.mark.parametrize("case", PULL_SOURCES, ids=list(PULL_SOURCES))
def test_pull_sources(case: str) -> None:
    text, ref, want = PULL_SOURCES[case]
    assert sources(conf(text), ref) == want


def test_blocked_names_the_file() -> None:
    c = conf('[[registry]]\nlocation = "evil.example"\nblocked = true')
    with pytest.raises(Blocked) as caught:
        c.pull_sources(Reference.parse("evil.example/app:1"))
    message = str(caught.value)
    assert message == (
        "docker://evil.example/app:1: registry prefix 'evil.example' is blocked in /f0.conf"
    )
    assert "\n" not in message
    assert c.check("other.example/app") is None
    with pytest.raises(Blocked):
        c.check("evil.example")  # a catalog or login names the host alone


def test_blocked_by_a_longer_prefix_only() -> None:
    c = conf(
        '[[registry]]\nprefix = "example.com/bad"\nlocation = "example.com/bad"\nblocked = true'
    )
    assert sources(c, "example.com/good:1") == [("example.com/good:1", False, False)]
    with pytest.raises(Blocked):
        c.pull_sources(Reference.parse("example.com/bad/app:1"))


# -- invalid files ---------------------------------------------------------------------------

INVALID = {
    "not-toml": ("[[registry]\n", "not valid TOML"),
    "no-prefix-no-location": (
        "[[registry]]\ninsecure = true",
        "both location and prefix are unset",
    ),
    "prefix-without-location": (
        '[[registry]]\nprefix = "example.com"',
        "location is unset and prefix 'example.com' is not *.example.com",
    ),
    "url-scheme": (
        '[[registry]]\nlocation = "https://example.com"',
        "URI schemes are not supported",
    ),
    "wildcard-with-path": ('[[registry]]\nprefix = "*.example.com/foo"', "*.example.com alone"),
    "pull-from-mirror-on-primary": (
        '[[registry]]\nlocation = "a.example"\npull-from-mirror = "all"',
        "belongs in a [[registry.mirror]]",
    ),
    "bad-pull-from-mirror": (
        '[[registry]]\nlocation = "a.example"\n[[registry.mirror]]\nlocation = "m.local"\n'
        'pull-from-mirror = "sometimes"',
        "pull-from-mirror 'sometimes' is not all, digest-only or tag-only",
    ),
    "both-digest-settings": (
        '[[registry]]\nlocation = "a.example"\nmirror-by-digest-only = true\n'
        '[[registry.mirror]]\nlocation = "m.local"\npull-from-mirror = "all"',
        "cannot both be set",
    ),
    "mirror-without-location": (
        '[[registry]]\nlocation = "a.example"\n[[registry.mirror]]\ninsecure = true',
        "mirror #1 has no location",
    ),
    "conflicting-insecure": (
        '[[registry]]\nprefix = "a.example/x"\nlocation = "a.example"\ninsecure = true\n'
        '[[registry]]\nprefix = "a.example/y"\nlocation = "a.example"\n',
        "conflicting 'insecure'",
    ),
    "insecure-not-bool": (
        '[[registry]]\nlocation = "a.example"\ninsecure = "yes"',
        "true or false",
    ),
    "bad-mode": ('short-name-mode = "prompt"', "short-name-mode 'prompt'"),
    "search-with-namespace": (
        'unqualified-search-registries = ["quay.io/ns"]',
        "entry 'quay.io/ns' is not a host[:port]",
    ),
    "alias-with-tag": ('[aliases]\n"app" = "quay.io/ns/app:1"', "must not have a tag or digest"),
    "alias-without-registry": ('[aliases]\n"app" = "ns/app"', "must contain a registry"),
    "alias-name-with-registry": (
        '[aliases]\n"quay.io/app" = "quay.io/ns/app"',
        "must not name a registry",
    ),
    "v1-and-v2": (
        '[registries.search]\nregistries = ["a.example"]\n[[registry]]\nlocation = "b.example"',
        "mixes the version 1 and 2 formats",
    ),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_invalid(case: str) -> None:
    text, want = INVALID[case]
    with pytest.raises(InvalidConfig) as caught:
        parse(text, "/etc/containers/registries.conf")
    message = str(caught.value)
    assert want in message, message
    assert message.startswith("registries.conf /etc/containers/registries.conf: ")
    assert "\n" not in message


def test_a_drop_in_must_be_version_2() -> None:
    with pytest.raises(InvalidConfig, match="drop-in must use the version 2 format"):
        parse('[registries.block]\nregistries = ["a.example"]', "/d/1.conf", drop_in=True)


def test_version_1() -> None:
    c = conf(
        '[registries.search]\nregistries = ["a.example", "b.example"]\n'
        '[registries.insecure]\nregistries = ["b.example"]\n'
        '[registries.block]\nregistries = ["evil.example"]\n'
    )
    assert c.unqualified_search_registries == ("a.example", "b.example")
    assert c.insecure("b.example/x:1") and not c.insecure("a.example/x:1")
    with pytest.raises(Blocked):
        c.check("evil.example/x:1")


def test_location_that_is_no_registry() -> None:
    c = conf('[[registry]]\nprefix = "example.com"\nlocation = "nodots"')
    with pytest.raises(InvalidConfig, match="not a fully qualified name"):
        c.pull_sources(Reference.parse("example.com/app:1"))


def test_duplicate_prefix_first_wins() -> None:
    c = conf(
        '[[registry]]\nprefix = "a.example"\nlocation = "one.example"\n'
        '[[registry]]\nprefix = "a.example"\nlocation = "two.example"\n'
    )
    assert sources(c, "a.example/x:1") == [("one.example/x:1", False, False)]


# -- drop-ins ---------------------------------------------------------------------------------


def test_drop_ins_override_and_merge() -> None:
    c = conf(
        'unqualified-search-registries = ["a.example"]\nshort-name-mode = "enforcing"\n'
        '[[registry]]\nlocation = "a.example"\n[[registry.mirror]]\nlocation = "old.local"\n'
        '[[registry]]\nlocation = "keep.example"\ninsecure = true\n'
        '[aliases]\n"one" = "a.example/one"\n"two" = "a.example/two"\n',
        # a drop-in replaces the a.example table whole, keeps the rest
        '[[registry]]\nlocation = "a.example"\n[[registry.mirror]]\nlocation = "new.local"\n'
        '[aliases]\n"two" = "b.example/two"\n"three" = "docker.io/three"\n',
        # a later one erases an alias and empties the search list; the mode stays
        'unqualified-search-registries = []\n[aliases]\n"one" = ""\n',
    )
    assert sources(c, "a.example/x:1") == [
        ("new.local/x:1", False, True),
        ("a.example/x:1", False, False),
    ]
    assert c.insecure("keep.example/x:1")
    assert c.unqualified_search_registries == ()
    assert c.search_origin == "/f2.conf"
    assert c.short_name_mode is ShortNameMode.ENFORCING
    assert c.aliases["one"].repository is None
    assert c.aliases["two"].repository == "b.example/two"
    assert c.aliases["two"].origin == "/f1.conf"
    assert c.aliases["three"].repository == "docker.io/library/three"


def test_search_registries_kept_when_a_drop_in_says_nothing() -> None:
    c = conf('unqualified-search-registries = ["a.example"]', '[aliases]\n"x" = "a.example/x"')
    assert c.unqualified_search_registries == ("a.example",)
    assert c.search_origin == "/f0.conf"
    assert c.short_name_mode is ShortNameMode.PERMISSIVE  # containers/image's default


# -- short names ------------------------------------------------------------------------------

SHORT = {
    # name: (typed, is short)
    "bare": ("alpine", True),
    "namespace": ("library/alpine", True),
    "tag": ("alpine:3", True),
    "dotted-host": ("quay.io/a/b", False),
    "port": ("host:5000/a", False),
    "localhost": ("localhost/a", False),
    "docker-io": ("docker.io/alpine", False),
}


@pytest.mark.parametrize("case", SHORT, ids=list(SHORT))
def test_is_short_name(case: str) -> None:
    text, want = SHORT[case]
    assert is_short_name(text) is want


def names(c: RegistriesConf, text: str) -> tuple[list[str], str]:
    found = c.resolve_short_name(text)
    return [str(r) for r in found.candidates], found.rationale


def test_no_file_is_docker() -> None:
    assert names(RegistriesConf.empty(), "alpine") == (
        ["docker.io/library/alpine:latest"],
        "docker",
    )
    assert names(RegistriesConf.empty(), "team/app:1") == (["docker.io/team/app:1"], "docker")


def test_qualified_names_are_themselves() -> None:
    c = conf(
        'unqualified-search-registries = ["a.example", "b.example"]\nshort-name-mode = "enforcing"'
    )
    assert names(c, "quay.io/ns/app:1") == (["quay.io/ns/app:1"], "qualified")


ALIASES = (
    'unqualified-search-registries = ["a.example", "b.example"]\n'
    'short-name-mode = "enforcing"\n'
    '[aliases]\n"app" = "quay.io/ns/app"\n"ns/tool" = "docker.io/ns/tool"\n'
)


def test_alias_keeps_tag_and_digest() -> None:
    c = conf(ALIASES)
    assert names(c, "app") == (["quay.io/ns/app:latest"], "alias")
    assert names(c, "app:2") == (["quay.io/ns/app:2"], "alias")
    assert names(c, "app@" + DIGEST) == ([f"quay.io/ns/app@{DIGEST}"], "alias")
    assert names(c, "ns/tool:1") == (["docker.io/ns/tool:1"], "alias")
    assert c.resolve_short_name("app").describe() == "alias in /f0.conf"


def test_alias_cache_wins() -> None:
    cache = parse('[aliases]\n"app" = "cache.example/app"', "/cache.conf", aliases_only=True)
    c = RegistriesConf.merged([parse(ALIASES, "/f0.conf")], cache)
    assert names(c, "app:1") == (["cache.example/app:1"], "alias")


def test_enforcing_refuses_an_ambiguous_name() -> None:
    with pytest.raises(InvalidReference) as caught:
        conf(ALIASES).resolve_short_name("other:1")
    assert str(caught.value) == (
        "short name 'other:1' is ambiguous: unqualified-search-registries in /f0.conf lists "
        "2 registries (a.example, b.example) and short-name-mode is 'enforcing'; name the "
        "image fully or add an [aliases] entry"
    )


@pytest.mark.parametrize("mode", ["permissive", "disabled"])
def test_other_modes_try_every_registry(mode: str) -> None:
    c = conf(ALIASES, f'short-name-mode = "{mode}"')
    assert names(c, "other:1") == (["a.example/other:1", "b.example/other:1"], "search")


@pytest.mark.parametrize("mode", ["enforcing", "permissive"])
def test_on_a_terminal_the_caller_asks(mode: str) -> None:
    c = conf(ALIASES, f'short-name-mode = "{mode}"')
    found = c.resolve_short_name("other:1", terminal=True)
    assert found.ask and [str(r) for r in found.candidates] == [
        "a.example/other:1",
        "b.example/other:1",
    ]
    assert not c.resolve_short_name("app", terminal=True).ask  # an alias is no question


def test_disabled_never_asks() -> None:
    c = conf(ALIASES, 'short-name-mode = "disabled"')
    assert not c.resolve_short_name("other:1", terminal=True).ask


def test_enforcing_with_one_registry_is_not_ambiguous() -> None:
    c = conf('unqualified-search-registries = ["a.example"]\nshort-name-mode = "enforcing"')
    assert names(c, "other") == (["a.example/other:latest"], "search")


def test_search_on_docker_hub_normalises() -> None:
    c = conf('unqualified-search-registries = ["docker.io"]')
    assert names(c, "alpine") == (["docker.io/library/alpine:latest"], "search")


def test_a_file_without_search_registries_refuses_short_names() -> None:
    c = conf('[[registry]]\nlocation = "a.example"')
    with pytest.raises(
        InvalidReference, match="no alias and no unqualified-search-registries in /f0.conf"
    ):
        c.resolve_short_name("alpine")


def test_an_erased_alias_falls_back_to_search() -> None:
    c = conf(ALIASES, '[aliases]\n"app" = ""\n', 'short-name-mode = "disabled"')
    assert names(c, "app") == (["a.example/app:latest", "b.example/app:latest"], "search")


# -- which files, read from disk --------------------------------------------------------------


def test_conf_paths_system_then_user_drop_ins(tmp_path: Path) -> None:
    paths = conf_paths(environ={}, home=tmp_path, euid=1000)
    assert paths == ConfPaths(
        SYSTEM_CONF,
        False,
        (SYSTEM_CONF_DIR, tmp_path / ".config/containers/registries.conf.d"),
        tmp_path / ".cache/containers/short-name-aliases.conf",
    )


def test_conf_paths_user_file_replaces_the_system(tmp_path: Path) -> None:
    user = tmp_path / ".config/containers/registries.conf"
    user.parent.mkdir(parents=True)
    user.write_text("")
    paths = conf_paths(environ={"XDG_CACHE_HOME": "/c"}, home=tmp_path, euid=1000)
    assert paths == ConfPaths(
        user,
        False,
        (tmp_path / ".config/containers/registries.conf.d",),
        Path("/c/containers/short-name-aliases.conf"),
    )


def test_conf_paths_explicit(tmp_path: Path) -> None:
    env = {"CONTAINERS_REGISTRIES_CONF": "/env.conf", "REGISTRIES_CONFIG_PATH": "/old.conf"}
    assert conf_paths(environ=env, home=tmp_path, euid=0).conf == Path("/env.conf")
    assert conf_paths(environ={"REGISTRIES_CONFIG_PATH": "/old.conf"}, home=tmp_path).conf == Path(
        "/old.conf"
    )
    paths = conf_paths(Path("/opt.conf"), environ=env, home=tmp_path, euid=0)
    assert paths.conf == Path("/opt.conf") and paths.required
    assert paths.alias_cache == ROOT_ALIAS_CACHE


def test_load_main_and_drop_ins_in_lexical_order(tmp_path: Path) -> None:
    main = tmp_path / "registries.conf"
    main.write_text(
        '[[registry]]\nlocation = "a.example"\n[[registry.mirror]]\nlocation = "m0.local"\n'
    )
    system, user = tmp_path / "system.d", tmp_path / "user.d"
    system.mkdir()
    user.mkdir()
    (system / "10-b.conf").write_text(
        '[[registry]]\nlocation = "a.example"\n[[registry.mirror]]\nlocation = "m10.local"\n'
    )
    (system / "02-a.conf").write_text(
        '[[registry]]\nlocation = "a.example"\n[[registry.mirror]]\nlocation = "m02.local"\n'
    )
    (system / "99-ignored.txt").write_text("not toml [[")
    (system / "sub.conf").mkdir()
    (user / "00-user.conf").write_text('[aliases]\n"app" = "a.example/app"\n')
    c = load(ConfPaths(main, True, (system, user), tmp_path / "no-cache.conf"))
    assert c.files == (
        str(main),
        str(system / "02-a.conf"),
        str(system / "10-b.conf"),
        str(user / "00-user.conf"),
    )
    assert sources(c, "a.example/app:1")[0] == ("m10.local/app:1", False, True)
    assert c.aliases["app"].origin == str(user / "00-user.conf")


def test_load_reads_the_alias_cache_only_with_a_conf(tmp_path: Path) -> None:
    main, cache = tmp_path / "registries.conf", tmp_path / "short-name-aliases.conf"
    cache.write_text('[aliases]\n"app" = "cache.example/app"\n')
    paths = ConfPaths(main, False, (), cache)
    assert load(paths) == RegistriesConf.empty()  # no registries.conf: docker's rule
    main.write_text('[aliases]\n"app" = "conf.example/app"\n')
    assert names(load(paths), "app") == (["cache.example/app:latest"], "alias")


def test_load_nothing_is_empty(tmp_path: Path) -> None:
    c = load(ConfPaths(tmp_path / "none.conf", False, (tmp_path / "none.d",), None))
    assert c == RegistriesConf.empty()
    assert names(c, "alpine") == (["docker.io/library/alpine:latest"], "docker")


def test_load_explicit_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match=r"none.conf: no such file"):
        load(ConfPaths(tmp_path / "none.conf", True, (), None))


def test_load_a_drop_in_alone_applies(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "x.conf").write_text('unqualified-search-registries = ["a.example"]')
    c = load(ConfPaths(tmp_path / "none.conf", False, (d,), None))
    assert names(c, "app") == (["a.example/app:latest"], "search")


def test_pull_from_mirror_values() -> None:
    assert {m.value for m in PullFromMirror} == {"all", "digest-only", "tag-only"}
