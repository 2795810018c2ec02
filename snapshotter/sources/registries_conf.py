"""containers-registries.conf(5): where an image is pulled from, what is refused, and what a
short name means.

What belongs here is the policy podman, skopeo and CRI-O read from registries.conf, as
containers/image's ``pkg/sysregistriesv2`` implements it, and nothing that talks to a
registry: no network, no httpx.  :func:`parse` turns one file's TOML into a
:class:`ConfFile`; :meth:`RegistriesConf.merged` folds a main file and its drop-ins
together; :func:`load` reads the files :func:`conf_paths` names.  The answers:

- :meth:`RegistriesConf.pull_sources`: the ordered endpoints one image reference is tried
  at: its ``[[registry.mirror]]`` entries in order (those ``pull-from-mirror`` allows for
  a tag or a digest), then the primary ``location``; each with its rewritten reference and
  its ``insecure`` flag.  The registry client tries them in turn and reads every blob from
  the endpoint whose manifest it took.
- :meth:`RegistriesConf.check` refuses a ``blocked = true`` prefix; :meth:`insecure`.
- :meth:`RegistriesConf.resolve_short_name`: ``[aliases]`` (the machine-written
  short-name-aliases.conf first), then ``unqualified-search-registries`` under
  ``short-name-mode``.

The rules kept, with their sources (containers/image v5, system_registries_v2.go):

- The ``[[registry]]`` table whose ``prefix`` is the longest match of the reference's full
  text (``host/repo:tag@digest``) wins; a prefix matches when the text equals it or goes on
  with ``:``, ``/`` or ``@`` (``refMatchingPrefix``).  ``*.example.com`` matches any
  subdomain, and its primary location is the reference as given.
- ``prefix`` defaults to ``location``; a ``location`` replaces the matched prefix.
- Drop-ins (``registries.conf.d/*.conf``, lexical order, the system directory before the
  user's) replace a ``[[registry]]`` of the same prefix, replace
  ``unqualified-search-registries`` and ``short-name-mode`` when they set them, and merge
  ``[aliases]`` key by key (an empty value erases an alias).
- ``$HOME/.config/containers/registries.conf``, when it exists, replaces the system file
  and its drop-in directory; ``CONTAINERS_REGISTRIES_CONF`` (or ``--registries-conf``)
  names the main file instead, and then it must exist.
- Without any registries.conf at all a short name is docker's (``alpine`` is
  ``docker.io/library/alpine``); with one, it is containers/image's.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ..errors import Blocked, InvalidConfig, InvalidReference
from ..oci.reference import Reference

__all__ = [
    "SYSTEM_CONF",
    "SYSTEM_CONF_DIR",
    "Alias",
    "ConfFile",
    "ConfPaths",
    "Endpoint",
    "PullFromMirror",
    "PullSource",
    "RegistriesConf",
    "RegistryTable",
    "ShortNameMode",
    "ShortNameResolution",
    "conf_paths",
    "is_short_name",
    "load",
    "parse",
]

SYSTEM_CONF = Path("/etc/containers/registries.conf")
SYSTEM_CONF_DIR = Path("/etc/containers/registries.conf.d")
# Under $HOME, not $XDG_CONFIG_HOME: containers/image joins homedir.Get() and these.
USER_CONF = Path(".config/containers/registries.conf")
USER_CONF_DIR = Path(".config/containers/registries.conf.d")
# Written by podman after a prompt; read here, never written.
ALIAS_CACHE_NAME = Path("containers/short-name-aliases.conf")
ROOT_ALIAS_CACHE = Path("/var/cache") / ALIAS_CACHE_NAME
# containers/image reads the main file's path from these, in this order.
CONF_ENV = ("CONTAINERS_REGISTRIES_CONF", "REGISTRIES_CONFIG_PATH")

_MAX_CONF = 4 << 20  # bytes; a registries.conf is a few KiB
# distribution/reference's domain grammar: host names or [v6], and a port.
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$"
)


class PullFromMirror(Enum):
    """A mirror's ``pull-from-mirror``: which references it may serve."""

    ALL = "all"
    DIGEST_ONLY = "digest-only"  # only name@sha256:…: a tag on a mirror may be stale
    TAG_ONLY = "tag-only"  # only name:tag


class ShortNameMode(Enum):
    """``short-name-mode``: what to do when a short name could mean several images."""

    ENFORCING = "enforcing"  # ask on a terminal; without one, an ambiguous name is an error
    PERMISSIVE = "permissive"  # ask on a terminal; without one, try every candidate
    DISABLED = "disabled"  # try every candidate in order


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One place an image may be pulled from: a primary location or a mirror."""

    # host[:port][/namespace…]; "" only for the primary of a ``*.example.com`` prefix,
    # which means the reference as given.
    location: str
    insecure: bool = False  # plain HTTP and unverified TLS allowed
    mirror: bool = False
    pull_from_mirror: PullFromMirror = PullFromMirror.ALL  # mirrors only


@dataclass(frozen=True, slots=True)
class RegistryTable:
    """One ``[[registry]]`` table, normalised (prefix and location set and trimmed)."""

    prefix: str  # host[:port][/ns…][:tag|@digest], or *.example.com
    endpoint: Endpoint  # the primary location
    mirrors: tuple[Endpoint, ...] = ()  # in the file's order
    blocked: bool = False
    mirror_by_digest_only: bool = False  # the older key: every mirror is digest-only
    origin: str = ""  # the file that defined it, for messages

    def mirrors_for(self, digested: bool) -> tuple[Endpoint, ...]:
        """The mirrors a reference by digest (or by tag) may use, in order."""
        if self.mirror_by_digest_only:
            return self.mirrors if digested else ()
        out = []
        for mirror in self.mirrors:
            if mirror.pull_from_mirror is PullFromMirror.DIGEST_ONLY and not digested:
                continue
            if mirror.pull_from_mirror is PullFromMirror.TAG_ONLY and digested:
                continue
            out.append(mirror)
        return tuple(out)


@dataclass(frozen=True, slots=True)
class PullSource:
    """An endpoint and the reference to ask it for (rewritten by its location)."""

    endpoint: Endpoint
    reference: Reference


@dataclass(frozen=True, slots=True)
class Alias:
    """An ``[aliases]`` entry: a short name's fully qualified repository."""

    repository: str | None  # normalised (docker.io/library/…); None: erased by ""
    origin: str  # the file that set it


@dataclass(frozen=True, slots=True)
class ConfFile:
    """One file as parsed; ``None`` where the file leaves a setting alone."""

    path: str
    registries: tuple[RegistryTable, ...] = ()  # sorted by prefix, one per prefix
    unqualified_search_registries: tuple[str, ...] | None = None
    short_name_mode: ShortNameMode | None = None
    aliases: Mapping[str, Alias] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ShortNameResolution:
    """What a name the user typed may mean, in the order to try."""

    candidates: tuple[Reference, ...]
    # "qualified" (it names its registry), "docker" (no registries.conf: docker's rule),
    # "alias", or "search" (unqualified-search-registries)
    rationale: str
    origin: str | None = None  # the file of the alias or of the search registries
    # The caller, on a terminal, must let the user pick one of ``candidates`` (podman's
    # prompt in enforcing and permissive modes); only when ``terminal=True`` was given.
    ask: bool = False

    def describe(self) -> str:
        if self.rationale == "alias":
            return f"alias in {self.origin}"
        if self.rationale == "search":
            return f"unqualified-search-registries in {self.origin}"
        return self.rationale


# -- matching and rewriting -----------------------------------------------------------------


def _match(text: str, prefix: str) -> int:
    """The length of ``text`` that ``prefix`` matches, or -1 (``refMatchingPrefix``)."""
    if prefix.startswith("*."):
        # *.example.com: any subdomain, before the first "/" (no port, no path).
        suffix = prefix[1:]
        index = text.find(suffix)
        if index == -1 or "/" in text[:index]:
            return -1
        end = index + len(suffix)
        return end if end == len(text) or text[end] in ":/@" else -1
    if text == prefix:
        return len(prefix)
    if text.startswith(prefix) and len(text) > len(prefix) and text[len(prefix)] in ":/@":
        # containers/image notes that this lets "example.com" match "example.com:5000";
        # it keeps that, and so do we.
        return len(prefix)
    return -1


def _rewrite(ref: Reference, table: RegistryTable, endpoint: Endpoint) -> Reference:
    text = str(ref)
    if not endpoint.location:  # a wildcard prefix's primary: the reference as given
        return ref
    matched = _match(text, table.prefix)
    assert matched >= 0, (text, table.prefix)
    rewritten = endpoint.location + text[matched:]
    what = f"registries.conf {table.origin}: location {endpoint.location!r} rewrites {text!r}"
    try:
        new = Reference.parse(rewritten)
    except InvalidReference as exc:
        raise InvalidConfig(f"{what} to {rewritten!r}, not an image name ({exc})") from None
    if str(new) != rewritten:
        # docker's normalisation would move it elsewhere (a host without a dot, or
        # docker.io without library/): containers/image refuses such names too.
        raise InvalidConfig(f"{what} to {rewritten!r}, which is not a fully qualified name")
    return new


# -- the merged configuration -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegistriesConf:
    """Every registries.conf file read, merged; :meth:`empty` when there was none."""

    files: tuple[str, ...] = ()  # read, in order; () means "no registries.conf at all"
    registries: tuple[RegistryTable, ...] = ()  # sorted by prefix, one per prefix
    unqualified_search_registries: tuple[str, ...] = ()
    search_origin: str | None = None  # the file that set unqualified-search-registries
    short_name_mode: ShortNameMode = ShortNameMode.PERMISSIVE  # containers/image's default
    aliases: Mapping[str, Alias] = field(default_factory=dict)
    # short-name-aliases.conf: podman records choices there; it wins over the files.
    alias_cache: Mapping[str, Alias] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> RegistriesConf:
        return cls()

    @classmethod
    def merged(
        cls, files: Sequence[ConfFile], alias_cache: ConfFile | None = None
    ) -> RegistriesConf:
        """The main file then its drop-ins, each overriding the ones before
        (``updateWithConfigurationFrom``)."""
        tables: dict[str, RegistryTable] = {}
        search: tuple[str, ...] = ()
        search_origin: str | None = None
        mode = ShortNameMode.PERMISSIVE
        aliases: dict[str, Alias] = {}
        for conf in files:
            for table in conf.registries:
                tables[table.prefix] = table
            if conf.unqualified_search_registries is not None:
                search, search_origin = conf.unqualified_search_registries, conf.path
            if conf.short_name_mode is not None:
                mode = conf.short_name_mode
            aliases.update(conf.aliases)
        return cls(
            files=tuple(conf.path for conf in files),
            registries=tuple(tables[p] for p in sorted(tables)),
            unqualified_search_registries=search,
            search_origin=search_origin,
            short_name_mode=mode,
            aliases=aliases,
            alias_cache=dict(alias_cache.aliases) if alias_cache is not None else {},
        )

    def describe(self) -> str:
        """The files read, for messages."""
        return ", ".join(self.files) if self.files else "no registries.conf"

    def find(self, name: str) -> RegistryTable | None:
        """The table with the longest prefix matching ``name`` (a host, a repository or a
        full reference text), or None."""
        best: RegistryTable | None = None
        for table in self.registries:
            if _match(name, table.prefix) != -1 and (
                best is None or len(table.prefix) > len(best.prefix)
            ):
                best = table
        return best

    def check(self, name: str, what: str | None = None) -> RegistryTable | None:
        """:meth:`find`, refusing a blocked table with a one-line :class:`Blocked`."""
        table = self.find(name)
        if table is not None and table.blocked:
            raise Blocked(
                f"{what or name}: registry prefix {table.prefix!r} is blocked in {table.origin}"
            )
        return table

    def insecure(self, name: str) -> bool:
        """Whether the table matching ``name`` allows plain HTTP and unverified TLS."""
        table = self.find(name)
        return table is not None and table.endpoint.insecure

    def pull_sources(self, ref: Reference) -> tuple[PullSource, ...]:
        """Where to look for ``ref``, in order: its allowed mirrors, then the primary
        location (``PullSourcesFromReference``).  Refuses a blocked prefix."""
        table = self.check(str(ref), f"docker://{ref}")
        if table is None:
            return (PullSource(Endpoint(ref.domain), ref),)
        endpoints = (*table.mirrors_for(ref.digest is not None), table.endpoint)
        return tuple(PullSource(ep, _rewrite(ref, table, ep)) for ep in endpoints)

    def resolve_short_name(self, text: str, *, terminal: bool = False) -> ShortNameResolution:
        """The references a name typed without ``docker://`` may mean, in order.

        A qualified name is itself.  With no registries.conf at all a short name is
        docker's.  Otherwise (containers/image's ``shortnames.Resolve``) an alias wins;
        else each ``unqualified-search-registries`` entry gives a candidate.  Several
        candidates: ``disabled`` tries each in order; on a ``terminal`` (stdin and
        stdout), ``enforcing`` and ``permissive`` return them with ``ask`` set for the
        caller to prompt; without one ``enforcing`` refuses the name and ``permissive``
        tries each.
        """
        if not is_short_name(text):
            return ShortNameResolution((Reference.parse(text),), "qualified")
        if not self.files:
            return ShortNameResolution((Reference.parse(text),), "docker")
        name, suffix = _split_short_name(text)
        _validate_short_name(name, f"short name {text!r}")
        alias = self.alias_cache.get(name) or self.aliases.get(name)
        if alias is not None and alias.repository is not None:
            return ShortNameResolution(
                (Reference.parse(alias.repository + suffix),), "alias", alias.origin
            )
        registries = self.unqualified_search_registries
        if not registries:
            raise InvalidReference(
                f"short name {text!r}: no alias and no unqualified-search-registries in "
                f"{self.describe()}; give the registry (e.g. docker.io/{text}), or use "
                f"docker://{text} for docker's reading"
            )
        candidates = []
        for registry in registries:
            try:
                candidates.append(Reference.parse(f"{registry}/{text}"))
            except InvalidReference as exc:
                raise InvalidReference(
                    f"short name {text!r} with unqualified-search registry {registry!r} "
                    f"from {self.search_origin}: {exc}"
                ) from None
        if len(candidates) > 1 and self.short_name_mode is not ShortNameMode.DISABLED and terminal:
            return ShortNameResolution(tuple(candidates), "search", self.search_origin, ask=True)
        if len(candidates) > 1 and self.short_name_mode is ShortNameMode.ENFORCING:
            raise InvalidReference(
                f"short name {text!r} is ambiguous: unqualified-search-registries in "
                f"{self.search_origin} lists {len(candidates)} registries "
                f"({', '.join(registries)}) and short-name-mode is 'enforcing'; name the "
                "image fully or add an [aliases] entry"
            )
        return ShortNameResolution(tuple(candidates), "search", self.search_origin)


# -- short names ------------------------------------------------------------------------------


def is_short_name(text: str) -> bool:
    """Whether ``text`` names no registry: its first ``/`` component has no ``.`` or ``:``
    and is not ``localhost`` (containers/image's test; ``library/alpine`` is short)."""
    first, sep, _ = text.split("@", 1)[0].partition("/")
    return not sep or not ("." in first or ":" in first or first == "localhost")


def _split_short_name(text: str) -> tuple[str, str]:
    """``name:tag@digest`` -> (``name``, ``:tag@digest``): aliases are looked up by name."""
    name, at, digest = text.partition("@")
    suffix = at + digest
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:
        name, suffix = name[:colon], name[colon:] + suffix
    return name, suffix


def _validate_short_name(name: str, what: str) -> None:
    if not is_short_name(name):
        raise InvalidConfig(f"{what}: must not name a registry")
    if "@" in name or ":" in name.rpartition("/")[2]:
        raise InvalidConfig(f"{what}: must not have a tag or digest")
    try:
        Reference.parse(f"example.invalid/{name}")
    except InvalidReference:
        raise InvalidConfig(f"{what}: not a repository name") from None


def _alias_value(value: str, what: str) -> str:
    """An alias's right-hand side, normalised: a registry and a repository, nothing more."""
    if is_short_name(value):
        raise InvalidConfig(f"{what}: value {value!r} must contain a registry and repository")
    name, suffix = _split_short_name(value)
    if suffix:
        raise InvalidConfig(f"{what}: value {value!r} must not have a tag or digest")
    try:
        return Reference.parse(value).repository
    except InvalidReference as exc:
        raise InvalidConfig(f"{what}: value {value!r}: {exc}") from None


# -- parsing one file -------------------------------------------------------------------------


def _location(value: object, what: str) -> str:
    """``parseLocation``: a string, trailing slashes dropped, no URL scheme."""
    if not isinstance(value, str):
        raise InvalidConfig(f"{what}: expected a string, got {type(value).__name__}")
    trimmed = value.rstrip("/")
    if trimmed.startswith(("http://", "https://")):
        raise InvalidConfig(f"{what}: {value!r}: URI schemes are not supported")
    return trimmed


def _bool(table: Mapping[str, object], key: str, what: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise InvalidConfig(f"{what}: {key!r} must be true or false, got {value!r}")
    return value


def _strings(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidConfig(f"{what}: expected an array of strings")
    return tuple(value)


def _table(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise InvalidConfig(f"{what}: expected a table")
    return value


def _registry_table(raw: Mapping[str, object], path: str, n: int) -> RegistryTable:
    what = f"registries.conf {path}: [[registry]] #{n}"
    location = _location(raw.get("location", ""), f"{what} location")
    prefix_value = raw.get("prefix", "")
    if prefix_value == "":
        if not location:
            raise InvalidConfig(f"{what}: both location and prefix are unset")
        prefix = location
    else:
        prefix = _location(prefix_value, f"{what} prefix")
        if not prefix.startswith("*.") and not location:
            raise InvalidConfig(
                f"{what}: location is unset and prefix {prefix!r} is not *.example.com"
            )
    what = f"registries.conf {path}: registry {prefix!r}"
    if prefix.startswith("*.") and any(c in prefix for c in "/@:"):
        raise InvalidConfig(f"{what}: a wildcard prefix must be *.example.com alone")
    if "pull-from-mirror" in raw:
        raise InvalidConfig(f"{what}: pull-from-mirror belongs in a [[registry.mirror]]")
    by_digest = _bool(raw, "mirror-by-digest-only", what)
    mirrors = []
    raw_mirrors = raw.get("mirror", [])
    if not isinstance(raw_mirrors, list):
        raise InvalidConfig(f"{what}: 'mirror' must be an array of tables ([[registry.mirror]])")
    for m, raw_mirror in enumerate(raw_mirrors, 1):
        mirror = _table(raw_mirror, f"{what}: mirror #{m}")
        mirror_location = _location(mirror.get("location", ""), f"{what}: mirror #{m} location")
        if not mirror_location:
            raise InvalidConfig(f"{what}: mirror #{m} has no location")
        mode = mirror.get("pull-from-mirror", "")
        if mode != "" and by_digest:
            raise InvalidConfig(
                f"{what}: mirror-by-digest-only and the pull-from-mirror of mirror "
                f"{mirror_location!r} cannot both be set"
            )
        try:
            pull_from = PullFromMirror(mode) if mode != "" else PullFromMirror.ALL
        except ValueError:
            raise InvalidConfig(
                f"{what}: mirror {mirror_location!r}: pull-from-mirror {mode!r} is not "
                "all, digest-only or tag-only"
            ) from None
        mirrors.append(
            Endpoint(
                mirror_location,
                _bool(mirror, "insecure", f"{what}: mirror {mirror_location!r}"),
                mirror=True,
                pull_from_mirror=pull_from,
            )
        )
    return RegistryTable(
        prefix=prefix,
        endpoint=Endpoint(location, _bool(raw, "insecure", what)),
        mirrors=tuple(mirrors),
        blocked=_bool(raw, "blocked", what),
        mirror_by_digest_only=by_digest,
        origin=path,
    )


def _from_v1(doc: Mapping[str, object], path: str) -> ConfFile:
    """The deprecated version 1 format: [registries.search|insecure|block] registries."""
    v1 = _table(doc["registries"], f"registries.conf {path}: [registries]")
    lists: dict[str, tuple[str, ...] | None] = {}
    for key in ("search", "insecure", "block"):
        section = v1.get(key)
        if section is None:
            lists[key] = None
            continue
        entries = _table(section, f"registries.conf {path}: [registries.{key}]")
        lists[key] = _strings(entries.get("registries", []), f"registries.conf {path}: {key}")
    order: list[str] = []
    flags: dict[str, dict[str, bool]] = {}
    for key, flag in (("block", "blocked"), ("insecure", "insecure")):
        for location in lists[key] or ():
            loc = _location(location, f"registries.conf {path}: registries.{key}")
            if loc not in flags:
                order.append(loc)
                flags[loc] = {"blocked": False, "insecure": False}
            flags[loc][flag] = True
    tables = {
        loc: RegistryTable(
            loc,
            Endpoint(loc, flags[loc]["insecure"]),
            blocked=flags[loc]["blocked"],
            origin=path,
        )
        for loc in order
    }
    search = lists["search"]
    return ConfFile(
        path,
        tuple(tables[p] for p in sorted(tables)),
        _search_registries(search, path) if search is not None else None,
    )


def _search_registries(values: Iterable[str], path: str) -> tuple[str, ...]:
    """``unqualified-search-registries``: each a host[:port], never a namespace."""
    out = []
    for value in values:
        registry = _location(value, f"registries.conf {path}: unqualified-search-registries")
        if not _DOMAIN.match(registry):
            raise InvalidConfig(
                f"registries.conf {path}: unqualified-search-registries entry {value!r} is "
                "not a host[:port]"
            )
        out.append(registry)
    return tuple(out)


def parse(text: str, path: str, *, drop_in: bool = False, aliases_only: bool = False) -> ConfFile:
    """One registries.conf (or drop-in, which must use version 2; or, ``aliases_only``,
    a short-name-aliases.conf) from its TOML text; ``path`` names it in messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfig(f"registries.conf {path}: not valid TOML ({exc})") from None
    aliases = _aliases(doc.get("aliases", {}), path)
    if aliases_only:
        return ConfFile(path, aliases=aliases)
    v2_keys = {"registry", "unqualified-search-registries", "short-name-mode", "aliases"}
    if "registries" in doc:
        if drop_in:
            raise InvalidConfig(f"registries.conf {path}: a drop-in must use the version 2 format")
        if v2_keys & doc.keys():
            raise InvalidConfig(f"registries.conf {path}: mixes the version 1 and 2 formats")
        return _from_v1(doc, path)
    raw_tables = doc.get("registry", [])
    if not isinstance(raw_tables, list):
        raise InvalidConfig(f"registries.conf {path}: 'registry' must be [[registry]] tables")
    tables = [
        _registry_table(_table(raw, f"registries.conf {path}: [[registry]] #{n}"), path, n)
        for n, raw in enumerate(raw_tables, 1)
    ]
    # One location mentioned under several prefixes must agree on insecure and blocked.
    by_location: dict[str, RegistryTable] = {}
    for table in tables:
        key = table.endpoint.location or table.prefix
        other = by_location.setdefault(key, table)
        for flag in ("insecure", "blocked"):
            mine = table.endpoint.insecure if flag == "insecure" else table.blocked
            theirs = other.endpoint.insecure if flag == "insecure" else other.blocked
            if mine != theirs:
                raise InvalidConfig(
                    f"registries.conf {path}: registry {key!r} is defined several times "
                    f"with conflicting {flag!r}"
                )
    # The first of several tables with one prefix wins; the rest never could.
    unique: dict[str, RegistryTable] = {}
    for table in tables:
        unique.setdefault(table.prefix, table)
    search = doc.get("unqualified-search-registries")
    mode_text = doc.get("short-name-mode", "")
    try:
        mode = ShortNameMode(mode_text) if mode_text != "" else None
    except ValueError:
        raise InvalidConfig(
            f"registries.conf {path}: short-name-mode {mode_text!r} is not enforcing, "
            "permissive or disabled"
        ) from None
    return ConfFile(
        path,
        tuple(unique[p] for p in sorted(unique)),
        _search_registries(
            _strings(search, f"registries.conf {path}: unqualified-search-registries"), path
        )
        if search is not None
        else None,
        mode,
        aliases,
    )


def _aliases(value: object, path: str) -> dict[str, Alias]:
    table = _table(value, f"registries.conf {path}: [aliases]")
    out: dict[str, Alias] = {}
    for name, target in table.items():
        what = f"registries.conf {path}: alias {name!r}"
        _validate_short_name(name, what)
        if not isinstance(target, str):
            raise InvalidConfig(f"{what}: the value must be a string")
        out[name] = Alias(_alias_value(target, what) if target else None, path)
    return out


# -- which files --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfPaths:
    """The files :func:`load` reads, decided by :func:`conf_paths`."""

    conf: Path  # the main registries.conf
    required: bool  # named explicitly: it must exist
    dirs: tuple[Path, ...]  # drop-in directories, in order
    alias_cache: Path | None  # short-name-aliases.conf

    def describe(self) -> str:
        return ", ".join(str(p) for p in (self.conf, *self.dirs))


def conf_paths(
    explicit: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
    euid: int | None = None,
) -> ConfPaths:
    """Which files hold the configuration (containers/image's ``newConfigWrapper``).

    ``explicit`` (``--registries-conf``), else ``$CONTAINERS_REGISTRIES_CONF``, else
    ``$REGISTRIES_CONFIG_PATH`` names the main file, read with both drop-in directories.
    Else ``~/.config/containers/registries.conf``, when it exists, is read with
    ``~/.config/containers/registries.conf.d`` alone; else
    ``/etc/containers/registries.conf`` with ``/etc/containers/registries.conf.d``, then
    the user's.
    """
    env = os.environ if environ is None else environ
    if home is None:
        try:
            home = Path(env["HOME"]) if env.get("HOME") else Path.home()
        except RuntimeError:
            home = None
    uid = os.geteuid() if euid is None else euid
    if uid == 0:
        alias_cache: Path | None = ROOT_ALIAS_CACHE
    elif env.get("XDG_CACHE_HOME"):
        alias_cache = Path(env["XDG_CACHE_HOME"]) / ALIAS_CACHE_NAME
    else:
        alias_cache = home / ".cache" / ALIAS_CACHE_NAME if home is not None else None
    user_dirs = (home / USER_CONF_DIR,) if home is not None else ()
    if explicit is None:
        named = next((env[k] for k in CONF_ENV if env.get(k)), None)
        explicit = Path(named) if named else None
    if explicit is not None:
        return ConfPaths(explicit, True, (SYSTEM_CONF_DIR, *user_dirs), alias_cache)
    if home is not None and (home / USER_CONF).exists():
        return ConfPaths(home / USER_CONF, False, user_dirs, alias_cache)
    return ConfPaths(SYSTEM_CONF, False, (SYSTEM_CONF_DIR, *user_dirs), alias_cache)


def _read(path: Path, *, required: bool) -> str | None:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_CONF + 1)
    except FileNotFoundError:
        if required:
            raise InvalidConfig(f"registries.conf {path}: no such file") from None
        return None
    except IsADirectoryError:
        raise InvalidConfig(f"registries.conf {path}: is a directory") from None
    except OSError as exc:
        raise InvalidConfig(f"registries.conf {path}: cannot read it ({exc.strerror})") from exc
    if len(data) > _MAX_CONF:
        raise InvalidConfig(f"registries.conf {path}: larger than {_MAX_CONF} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidConfig(f"registries.conf {path}: not UTF-8") from None


def _drop_ins(directory: Path) -> list[Path]:
    """``*.conf`` files directly in ``directory``, in lexical order; none if it is absent."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise InvalidConfig(
            f"registries.conf.d {directory}: cannot list it ({exc.strerror})"
        ) from exc
    return [Path(e.path) for e in entries if e.name.endswith(".conf") and not e.is_dir()]


def load(paths: ConfPaths) -> RegistriesConf:
    """Read and merge the files ``paths`` names (a missing drop-in directory, main file
    or alias cache is no error, unless the main file was named explicitly)."""
    files: list[ConfFile] = []
    text = _read(paths.conf, required=paths.required)
    if text is not None:
        files.append(parse(text, str(paths.conf)))
    for directory in paths.dirs:
        for path in _drop_ins(directory):
            text = _read(path, required=False)
            if text is not None:  # removed since the listing: ignored, as c/image does
                files.append(parse(text, str(path), drop_in=True))
    cache = None
    if paths.alias_cache is not None and files:
        text = _read(paths.alias_cache, required=False)
        if text is not None:
            cache = parse(text, str(paths.alias_cache), aliases_only=True)
    return RegistriesConf.merged(files, cache)
