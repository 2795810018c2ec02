"""The pull side of the OCI distribution spec: manifests, blobs, tags and catalog, with auth.

What belongs here is talking to registries over HTTP/1.1 (distribution-spec spec.md,
"Pulling manifests", "Pulling blobs", "Listing tags"), their auth (docker/distribution
docs/spec/auth/token.md: an anonymous request, a ``401`` with ``WWW-Authenticate``, a token
from the realm, the request again) and the auth files podman and docker keep.  Nothing here
parses a manifest beyond its media type, and nothing unpacks.

Rules this module keeps:

- It is synchronous: pulls call it from worker threads.  One :class:`RegistryClient` may be
  shared by several threads; its caches (schemes, tokens, credentials) are locked.
- Secrets (passwords, ``auth`` fields, tokens, signed redirect URLs) never appear in
  messages, logs or reprs.  Error messages name the registry, repository, digest and the
  auth file that was consulted, by path only.
- Errors are ``NotFound`` (404), ``DigestMismatch`` (content that does not hash to what was
  asked for; never retried) and ``RegistryError`` with ``status``/``code`` for the rest.
- Transient failures (connection errors, 429 honouring ``Retry-After``, 5xx) are retried with
  exponential backoff, a bounded number of times; a blob download that breaks mid-body
  resumes with a ``Range`` request from the last byte delivered.
- ``docker.io`` is served by ``registry-1.docker.io``: :func:`registry_host` is the one
  place that knows.
- registries.conf (``options.registries``): the first manifest asked of a repository is
  sought at its mirrors, then at its (rewritten) primary location (:meth:`locate`); the
  endpoint that served it then serves every later manifest and blob of that repository
  asked of this client, so callers keep using the name they were given.  Range reads
  alone go on past an endpoint that ignores ``Range`` to the next ones in that order.
  Every request refuses a ``blocked`` prefix and honours ``insecure`` for the hosts it
  names.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import os
import re
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager, suppress
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import urljoin

import httpx

from ..errors import (
    DigestMismatch,
    InvalidReference,
    NotFound,
    RangeNotSupported,
    RegistryError,
    SnapshotterError,
    reworded,
)
from ..oci.digest import Digest, ReaderBase, verify_bytes
from ..oci.model import (
    MAX_JSON_BLOB,
    MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    Descriptor,
)
from ..oci.reference import DEFAULT_DOMAIN, DEFAULT_TAG, LEGACY_DOMAINS, Reference
from .registries_conf import Endpoint, PullSource, RegistriesConf

__all__ = [
    "DEFAULT_OPTIONS",
    "DOCKER_HUB_HOST",
    "MANIFEST_MEDIA_TYPES",
    "BlobStream",
    "Located",
    "RegistryBlob",
    "RegistryClient",
    "RegistryOptions",
    "auth_file_candidates",
    "is_loopback",
    "login",
    "login_auth_file",
    "logout",
    "registry_host",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DOCKER_HUB_HOST = "registry-1.docker.io"
# docker's own config.json names Docker Hub by its v1 index URL.
_DOCKER_HUB_AUTH_KEYS = ("https://index.docker.io/v1/", *LEGACY_DOMAINS)

# What manifest() accepts, most specific first (image-spec media-types.md; Docker schema2).
MANIFEST_MEDIA_TYPES = (MT_OCI_INDEX, MT_OCI_MANIFEST, MT_DOCKER_LIST, MT_DOCKER_MANIFEST)
_MANIFEST_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10
_MAX_BACKOFF = 8.0  # seconds, one wait between attempts
_MAX_RETRY_AFTER = 60.0  # a Retry-After longer than this is cut to it
_MAX_PAGES = 10_000
_MAX_ERROR_BODY = 64 << 10
_MAX_TOKEN_BODY = 1 << 20
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
# How long a blob's redirect target is asked directly for ranges: signed CDN URLs live
# minutes to hours; a refused one is re-resolved at once anyway.
LOCATION_TTL = 300.0
_CODE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$"
)


def _user_agent() -> str:
    try:
        from importlib.metadata import version

        return f"snapshotter/{version('snapshotter')}"
    except Exception:  # not installed as a distribution: a source checkout
        return "snapshotter"


_USER_AGENT = _user_agent()


# -- options and small helpers ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    """How to reach registries and whom to be.  Immutable; share one per pull.

    ``creds`` is left out of ``repr`` so that logging an options object leaks nothing.
    """

    # Plain HTTP and unverified TLS for every registry (skopeo's --tls-verify=false).
    # Loopback registries may always fall back to plain HTTP, as containers/image does.
    insecure: bool = False
    # A directory of CA certificates (*.crt) and client certificates (*.cert + *.key),
    # laid out like /etc/containers/certs.d/HOST/.
    cert_dir: Path | None = None
    # (user, password); wins over every auth file.
    creds: tuple[str, str] | None = field(default=None, repr=False)
    # An auth file (podman auth.json or docker config.json); else auth_file_candidates().
    auth_file: Path | None = None
    timeout: float = 30.0  # seconds, for connecting and for each read
    max_manifest: int = 4 << 20  # bytes; bigger manifests are refused unread
    retries: int = 5  # attempts per request, and per byte offset of a blob download
    backoff: float = 0.5  # seconds before the second attempt, doubling after
    # containers-registries.conf(5), loaded by the caller (the CLI reads the files);
    # None: there is none, and every reference is asked of its own registry.
    registries: RegistriesConf | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout!r}")
        if self.max_manifest <= 0:
            raise ValueError(f"max_manifest must be positive, got {self.max_manifest!r}")
        if self.retries < 1:
            raise ValueError(f"retries must be at least 1, got {self.retries!r}")
        if self.backoff < 0:
            raise ValueError(f"backoff must not be negative, got {self.backoff!r}")
        if self.creds is not None:
            # Never echo the value: it holds a password.
            if (
                not isinstance(self.creds, tuple)
                or len(self.creds) != 2
                or not all(isinstance(c, str) for c in self.creds)
            ):
                raise TypeError("creds must be a (user, password) tuple of strings")
            if not self.creds[0] or ":" in self.creds[0]:
                raise ValueError("creds: the user name must be non-empty and contain no ':'")


DEFAULT_OPTIONS = RegistryOptions()


def registry_host(domain: str) -> str:
    """The host serving a reference's domain: ``docker.io`` is ``registry-1.docker.io``."""
    return DOCKER_HUB_HOST if domain == DEFAULT_DOMAIN else domain


def _hostname(host: str) -> str:
    """``host[:port]`` or ``[v6]:port`` -> the name or address alone."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() and ":" not in name else host


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` is this machine: localhost, 127.0.0.0/8 or ::1."""
    name = _hostname(host).lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def normalize_registry(registry: str) -> str:
    """A registry as users type it (``https://index.docker.io/v1/``, ``host:5000``)."""
    text = registry.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0]
    if text in LEGACY_DOMAINS:
        text = DEFAULT_DOMAIN
    if not text or not _DOMAIN.match(text):
        raise InvalidReference(f"registry {registry[:100]!r}: not a registry host[:port]")
    return text


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _describe(exc: BaseException) -> str:
    """A short, lower-case, one-line account of a transport error (no URL, no headers)."""
    text = str(exc) or type(exc).__name__
    return _one_line(text.lower())


def _tls_problem(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _unknown_host(exc: BaseException) -> bool:
    """True when the name does not resolve at all (not a temporary resolver failure)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, socket.gaierror):
            return seen.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None))
        seen = seen.__cause__ or seen.__context__
    # httpcore re-raises resolver errors with only their text
    text = str(exc).lower()
    return "name or service not known" in text or "no address associated" in text


class _Transient(Exception):
    """A failure worth another attempt; never escapes this module."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), capped; None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), _MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - time.time(), 0.0), _MAX_RETRY_AFTER)


# -- credentials and auth files -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Creds:
    user: str
    password: str = field(repr=False)
    source: str  # an auth file's path, or a phrase for explicit credentials
    # An OAuth2 refresh token ("identitytoken", or a helper's "<token>" user): traded at the
    # token realm with grant_type=refresh_token (distribution's oauth.md), never sent as Basic.
    identity_token: str | None = field(default=None, repr=False)

    def basic(self) -> str:
        if self.identity_token is not None:
            raise RegistryError(
                f"credentials from {self.source} are an identity token, which only a token "
                "server takes, but this registry asks for basic auth"
            )
        raw = f"{self.user}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class _CredLookup:
    creds: _Creds | None
    searched: tuple[Path, ...]

    def describe(self, domain: str) -> str:
        """Where credentials came from, or where none were found; paths only."""
        if self.creds is not None:
            return f"credentials from {self.creds.source}"
        if not self.searched:
            return f"no credentials for {domain}"
        return f"no credentials for {domain} in {', '.join(str(p) for p in self.searched)}"


def _config_home() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return Path(xdg) if xdg else Path.home() / ".config"


def auth_file_candidates() -> list[Path]:
    """Auth files read when no ``auth_file`` is given, first match wins.

    ``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
    ``$XDG_CONFIG_HOME/containers/auth.json`` (``~/.config``), then docker's
    ``$DOCKER_CONFIG/config.json`` (``~/.docker/config.json``).
    """
    out: list[Path] = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        out.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        out.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    try:
        out.append(_config_home() / "containers" / "auth.json")
        docker_config = os.environ.get("DOCKER_CONFIG")
        docker_dir = Path(docker_config) if docker_config else Path.home() / ".docker"
        out.append(docker_dir / "config.json")
    except RuntimeError:  # no home directory
        pass
    unique: list[Path] = []
    for p in out:
        if p not in unique:
            unique.append(p)
    return unique


def login_auth_file(options: RegistryOptions = DEFAULT_OPTIONS) -> Path:
    """The auth file ``login`` writes: ``auth_file``, ``$REGISTRY_AUTH_FILE``,
    ``$XDG_RUNTIME_DIR/containers/auth.json``, else ``~/.config/containers/auth.json``."""
    if options.auth_file is not None:
        return options.auth_file
    if os.environ.get("REGISTRY_AUTH_FILE"):
        return Path(os.environ["REGISTRY_AUTH_FILE"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    try:
        return _config_home() / "containers" / "auth.json"
    except RuntimeError as exc:
        raise RegistryError("auth file: no home directory; set REGISTRY_AUTH_FILE") from exc


def _read_auth_file(path: Path) -> dict[str, object] | None:
    """The parsed file, or None if it does not exist.  Never quotes its content."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryError(f"auth file {path}: cannot read it ({exc.strerror})") from exc
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(f"auth file {path}: not valid json") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"auth file {path}: expected a json object")
    auths = doc.get("auths", {})
    if not isinstance(auths, dict):
        raise RegistryError(f"auth file {path}: 'auths' is not an object")
    return doc


def _auth_key(key: str) -> str:
    """Normalise an ``auths`` key: docker's URL keys name a host, podman's may add a path."""
    if "://" in key:
        key = key.split("://", 1)[1].split("/", 1)[0]
    key = key.rstrip("/")
    if key in LEGACY_DOMAINS:
        return DEFAULT_DOMAIN
    first, sep, rest = key.partition("/")
    if first in LEGACY_DOMAINS:
        return f"{DEFAULT_DOMAIN}{sep}{rest}"
    return key


def _entry_creds(entry: object, path: Path, key: str) -> _Creds | None:
    if not isinstance(entry, dict):
        return None
    identity = entry.get("identitytoken")
    if isinstance(identity, str) and identity:
        return _Creds("<token>", "", str(path), identity_token=identity)
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise RegistryError(
                f"auth file {path}: entry {key!r} is not base64 of user:password"
            ) from None
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            raise RegistryError(f"auth file {path}: entry {key!r} is not base64 of user:password")
        return _Creds(user, password, str(path))
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and name and isinstance(secret, str):
        return _Creds(name, secret, str(path))
    return None


HELPER_TIMEOUT = 30.0


def _helper_creds(helper: str, server: str, path: Path) -> _Creds | None:
    """Ask ``docker-credential-HELPER get`` for ``server`` (docker's credential-helper protocol).

    None when the helper has no credentials for it; an error when it cannot be run or
    answers nonsense.  Neither its output nor its stderr is ever quoted (they may hold
    secrets).
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", helper):
        raise RegistryError(f"auth file {path}: credential helper {helper[:60]!r} is not a name")
    program = f"docker-credential-{helper}"
    try:
        done = subprocess.run(
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise RegistryError(
            f"auth file {path}: credential helper {program} is not on PATH"
        ) from None
    except subprocess.TimeoutExpired:
        raise RegistryError(
            f"credential helper {program}: no answer within {HELPER_TIMEOUT:.0f}s"
        ) from None
    except OSError as exc:
        raise RegistryError(
            f"credential helper {program}: cannot run it ({exc.strerror})"
        ) from None
    if done.returncode != 0:
        if b"credentials not found" in done.stdout.lower() + done.stderr.lower():
            return None
        raise RegistryError(
            f"credential helper {program} failed for {server} (exit status {done.returncode})"
        )
    try:
        answer = json.loads(done.stdout)
        user, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError):
        raise RegistryError(
            f"credential helper {program}: unreadable answer for {server}"
        ) from None
    if not isinstance(user, str) or not isinstance(secret, str) or not user:
        raise RegistryError(f"credential helper {program}: unreadable answer for {server}")
    if user == "<token>":  # docker's convention for an identity token
        return _Creds(user, "", f"credential helper {program}", identity_token=secret)
    return _Creds(user, secret, f"credential helper {program}")


def _helper_server(domain: str) -> str:
    """The server name docker's helpers file credentials under."""
    return "https://index.docker.io/v1/" if domain == DEFAULT_DOMAIN else domain


def _creds_in(doc: dict[str, object], path: Path, domain: str, repo_path: str) -> _Creds | None:
    # docker's order: a per-registry helper, else the default store, else the file itself.
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if _auth_key(str(key)) == domain and isinstance(helper, str) and helper:
                creds = _helper_creds(helper, str(key), path)
                if creds is not None:
                    return creds
    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        creds = _helper_creds(store, _helper_server(domain), path)
        if creds is not None:
            return creds
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return None
    entries = {_auth_key(str(k)): (str(k), v) for k, v in auths.items()}
    # podman allows namespace keys (registry/ns/repo); the longest match wins.
    wanted: list[str] = []
    parts = repo_path.split("/") if repo_path else []
    for n in range(len(parts), 0, -1):
        wanted.append(f"{domain}/{'/'.join(parts[:n])}")
    wanted.append(domain)
    for key in wanted:
        if key in entries:
            raw_key, entry = entries[key]
            creds = _entry_creds(entry, path, raw_key)
            if creds is not None:
                return creds
    return None


def _lookup_creds(options: RegistryOptions, domain: str, repo_path: str) -> _CredLookup:
    if options.creds is not None:
        user, password = options.creds
        return _CredLookup(_Creds(user, password, "the given user and password"), ())
    files = [options.auth_file] if options.auth_file is not None else auth_file_candidates()
    searched: list[Path] = []
    for path in files:
        searched.append(path)
        doc = _read_auth_file(path)
        if doc is None:
            continue
        creds = _creds_in(doc, path, domain, repo_path)
        if creds is not None:
            return _CredLookup(creds, tuple(searched))
    return _CredLookup(None, tuple(searched))


def _write_auth_file(path: Path, doc: dict[str, object]) -> None:
    """Replace ``path`` atomically with ``doc``, mode 0600 (its directory 0700 if new)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(doc, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# -- WWW-Authenticate --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Challenge:
    scheme: str  # lower case: "bearer", "basic", ...
    params: dict[str, str]


_AUTH_ITEM = re.compile(
    r"""\s*,?\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?"""
)


def parse_challenges(values: list[str]) -> list[_Challenge]:
    """RFC 7235 challenges: ``Bearer realm="…",service="…",scope="…"``, ``Basic realm="…"``.

    One header may carry several challenges, and a response several headers.
    """
    out: list[_Challenge] = []
    for value in values:
        pos = 0
        current: _Challenge | None = None
        while pos < len(value):
            m = _AUTH_ITEM.match(value, pos)
            if m is None or m.end() == pos:
                break
            pos = m.end()
            name, raw = m.group(1), m.group(2)
            if raw is None:
                current = _Challenge(name.lower(), {})
                out.append(current)
            elif current is not None:
                if raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                current.params[name.lower()] = raw
    return out


# -- the client -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """Whom a request is for: the auth scope and the words for messages."""

    domain: str  # as in the reference (docker.io), keys credentials
    host: str  # where to connect (registry-1.docker.io)
    path: str  # repository path, "" for registry-wide requests
    scope: str  # token scope, "" for none

    @property
    def what(self) -> str:
        return f"{self.domain}/{self.path}" if self.path else f"registry {self.domain}"


@dataclass(frozen=True, slots=True)
class Located:
    """A manifest (or index) found through registries.conf: where, and what was served."""

    reference: Reference  # the one that answered: the reference asked for, or a rewrite
    endpoint: Endpoint  # a mirror or the primary location
    raw: bytes
    media_type: str
    digest: Digest  # of ``raw``, verified


class RegistryClient:
    """A distribution-spec client for pulling (and for pushing the artifacts that go beside
    an image: seek indexes); thread-safe, close it when done.

    Each registry is probed once for its scheme (https; plain http only for loopback
    registries or with ``insecure``).  Tokens are cached per (registry, scope) until they
    expire; credentials come from ``options.creds``, else the first auth file that has an
    entry for the registry (see :func:`auth_file_candidates`).
    """

    def __init__(self, options: RegistryOptions = DEFAULT_OPTIONS) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._http: httpx.Client | None = None
        self._http_unverified: httpx.Client | None = None  # for insecure hosts only
        # Hosts registries.conf marks insecure (of a table or mirror this client used).
        self._insecure_hosts: set[str] = set()
        # Domains reached as a mirror or rewrite of another: --creds is not for them.
        self._foreign_domains: set[str] = set()
        # repository -> (domain, path) of the endpoint that served its first manifest
        self._served_from: dict[str, tuple[str, str]] = {}
        self._schemes: dict[str, str] = {}  # host -> "https" | "http"
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}  # -> (token, expiry)
        self._basic_hosts: set[str] = set()  # hosts that asked for Basic auth
        self._creds: dict[tuple[str, str], _CredLookup] = {}
        # (host, repository path, blob digest) -> (where its GET was redirected, when):
        # range reads go straight there until it refuses them or ages out.
        self._locations: dict[tuple[str, str, str], tuple[httpx.URL, float]] = {}
        # (repository as asked, blob digest) -> (domain, path) of the endpoint that served
        # its ranges after the one before it in pull order ignored Range: asked first.
        self._range_from: dict[tuple[str, str], tuple[str, str]] = {}
        self._closed = False
        # The process whose connections the clients hold: a lazy view's daemon and its
        # worker processes are forks of the process that opened the image, and two
        # processes writing requests into one inherited connection would mix them.
        self._pid = os.getpid()

    # -- lifetime --

    def close(self) -> None:
        with self._lock:
            self._closed = True
            clients = [c for c in (self._http, self._http_unverified) if c is not None]
            self._http = self._http_unverified = None
            self._tokens.clear()
        for http in clients:
            http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API --

    def locate(self, ref: Reference) -> Located:
        """The manifest or index ``ref`` names, from the first endpoint registries.conf
        gives for it that serves it: its mirrors in order, then its primary location
        (containers/image's pull sources).

        A mirror is tried once; any failure (refused connection, 404, 5xx, bad
        credentials, a wrong digest) moves on to the next.  The primary location gets
        the usual retries; if it fails too, its error says what every mirror answered.
        The endpoint that answers is remembered: this client asks it for every later
        manifest and blob of ``ref``'s repository, as containers/image reads one image
        from one endpoint.  Without registries.conf this asks ``ref``'s own registry.
        """
        conf = self.options.registries or RegistriesConf.empty()
        sources = conf.pull_sources(ref)
        failures: list[SnapshotterError] = []
        for source in sources:
            physical = source.reference
            self._admit(source, ref)
            primary = not source.endpoint.mirror
            try:
                raw, media_type, digest = self._manifest_at(
                    physical, attempts=None if primary else 1
                )
            except SnapshotterError as exc:
                if not primary:
                    log.debug("%s: mirror failed: %s", physical, exc)
                    failures.append(exc)
                    continue
                if not failures:
                    raise
                also = "; ".join(str(f) for f in failures)
                raise reworded(exc, f"{exc}; mirrors also failed: {also}") from exc
            if source.endpoint.mirror:
                log.debug("%s: served by mirror %s", ref, source.endpoint.location)
            where = (physical.domain, physical.path)
            with self._lock:
                self._served_from.setdefault(ref.repository, where)
                self._served_from.setdefault(physical.repository, where)
            return Located(physical, source.endpoint, raw, media_type, digest)
        raise AssertionError("pull sources always end with the primary location")

    def _admit(self, source: PullSource, ref: Reference) -> None:
        """Before ``source`` (one of ``ref``'s pull sources) is asked anything: its
        ``insecure`` flag applies to its host, and ``--creds`` are not for it when it is
        another registry than ``ref``'s."""
        physical = source.reference
        with self._lock:
            if source.endpoint.insecure:
                self._insecure_hosts.add(registry_host(physical.domain))
            if physical.domain != ref.domain:
                self._foreign_domains.add(physical.domain)

    def manifest(self, ref: Reference) -> tuple[bytes, str, Digest]:
        """GET the manifest or index ``ref`` names: (body, media type, digest of the body).

        A reference with a digest is fetched by digest and verified (``DigestMismatch``);
        by tag, the body is checked against the registry's ``Docker-Content-Digest``.  The
        media type is one of :data:`MANIFEST_MEDIA_TYPES` when the registry is honest;
        the caller decides what to do with others (schema1, artifacts).  The first
        manifest of a repository is sought through registries.conf (:meth:`locate`);
        later ones come from the endpoint that served it.
        """
        served = self._served(ref)
        if served is None:
            found = self.locate(ref)
            return found.raw, found.media_type, found.digest
        return self._manifest_at(served)

    def _served(self, ref: Reference) -> Reference | None:
        """``ref`` at the endpoint that served its repository's first manifest, if any."""
        with self._lock:
            where = self._served_from.get(ref.repository)
        if where is None:
            return None
        return replace(ref, domain=where[0], path=where[1])

    def _manifest_at(
        self, ref: Reference, *, attempts: int | None = None
    ) -> tuple[bytes, str, Digest]:
        """:meth:`manifest` from exactly ``ref``'s registry; ``attempts`` overrides
        ``options.retries``."""
        target = self._target(ref)
        reference = str(ref.digest) if ref.digest is not None else (ref.tag or DEFAULT_TAG)
        what = f"{ref}: manifest"
        url = f"/v2/{ref.path}/manifests/{reference}"

        def attempt() -> tuple[bytes, httpx.Headers]:
            with (
                self._net(what),
                self._open(target, url, {"Accept": _MANIFEST_ACCEPT}, what) as resp,
            ):
                self._check(resp, target, what)
                return self._read_capped(resp, self.options.max_manifest, what), resp.headers

        body, headers = self._retrying(what, attempt, attempts)
        media_type = _media_type(headers.get("content-type", ""), body)
        if ref.digest is not None:
            verify_bytes(body, ref.digest, None, f"{ref.repository}: manifest")
            return body, media_type, ref.digest
        digest = Digest.of_bytes(body)
        claimed = headers.get("docker-content-digest")
        if claimed:
            try:
                claimed_digest = Digest.parse(claimed.strip())
            except InvalidReference:
                claimed_digest = None
            if claimed_digest is not None:
                try:
                    verify_bytes(body, claimed_digest, None, f"{ref}: manifest")
                except DigestMismatch:
                    raise DigestMismatch(
                        f"{ref}: manifest hashes to {digest}, the registry says {claimed_digest}"
                    ) from None
        return body, media_type, digest

    def blob(
        self,
        repository_ref: Reference,
        digest: Digest,
        *,
        size: int | None = None,
        max_size: int = MAX_JSON_BLOB,
    ) -> bytes:
        """A small blob (a config) read whole and verified against ``digest`` (and ``size``),
        from the endpoint that served the repository's manifest."""
        repository_ref = self._served(repository_ref) or repository_ref
        target = self._target(repository_ref)
        what = f"{repository_ref.repository}: blob {digest}"
        if size is not None and size > max_size:
            raise RegistryError(f"{what}: {size} bytes is more than the {max_size}-byte limit")
        cap = max_size if size is None else size
        url = f"/v2/{repository_ref.path}/blobs/{digest}"

        def attempt() -> bytes:
            with self._net(what), self._open(target, url, {}, what) as resp:
                self._check(resp, target, what)
                return self._read_capped(resp, cap, what)

        data = self._retrying(what, attempt)
        verify_bytes(data, digest, size, f"{repository_ref.repository}: blob")
        return data

    def open_blob(
        self,
        repository_ref: Reference,
        digest: Digest,
        size: int | None,
        progress: Callable[[int], None] | None = None,
    ) -> BlobStream:
        """Start streaming a blob (a layer); the caller reads it to EOF and closes it.

        The stream does not verify: wrap it in ``digest.VerifyingReader`` (or hand it to
        ``unpack_layer``, which does).  ``size`` (from the descriptor) lets a download that
        ends early resume instead of looking complete.  ``progress`` gets byte counts as
        they are read.  The first request is made here, so a missing blob or refused
        credentials raise now rather than on the first read.
        """
        repository_ref = self._served(repository_ref) or repository_ref
        stream = BlobStream(self, self._target(repository_ref), digest, size, progress)
        try:
            stream._connect()
        except BaseException:
            stream.close()
            raise
        return stream

    def read_range(self, repository_ref: Reference, digest: Digest, first: int, last: int) -> bytes:
        """Bytes ``first..last`` (both included) of a blob, with one closed
        ``Range: bytes=first-last`` request (never open-ended, whatever ``Accept-Ranges``
        says: most registries omit it), fewer only where the blob ends.

        The blob's redirect target (a CDN or storage URL) is remembered and asked directly
        until it answers 401/403/404/410 or a redirect, or ``LOCATION_TTL`` passes; then
        the registry is asked again.  ``Authorization`` goes to the registry's origin only.
        Cut connections, 429 and 5xx are retried with backoff, ``options.retries`` times
        and within ``options.timeout * 2`` seconds in all, then ``RegistryError``.  A 200
        (the whole blob, left unread) or a 206 with other bytes than asked for raises
        ``RangeNotSupported``: that endpoint cannot serve a lazy view.  The bytes are not
        verified here: the caller checks them against a seek index's span digests.

        With registries.conf, an endpoint that answers 200 is passed over: the endpoints
        after it in pull order (:meth:`_range_endpoints`: the next mirrors this reference
        may use, then the primary location) are asked in turn, and the one that serves
        the range is remembered for this blob and asked first from then on.  Only when
        the last of them answers 200 too is ``RangeNotSupported`` raised.
        """
        if first < 0 or last < first:
            raise ValueError(f"range {first}-{last}: not a closed range")
        deadline = time.monotonic() + 2 * self.options.timeout
        endpoints = self._range_endpoints(repository_ref, digest)
        refused: list[Reference] = []
        for n, endpoint in enumerate(endpoints):
            try:
                data = self._range_at(endpoint, digest, first, last, deadline)
            except RangeNotSupported as exc:
                last_one = n + 1 == len(endpoints)
                if exc.status == 200 and not last_one:
                    log.debug("%s; asking the next endpoint for ranges", exc)
                    refused.append(endpoint)
                    continue
                if not refused:
                    raise
                before = ", ".join(r.repository for r in refused)
                raise RangeNotSupported(
                    f"{exc}; so did the endpoints asked before it: {before}", status=exc.status
                ) from exc
            if refused:
                key = (repository_ref.repository, str(digest))
                with self._lock:
                    self._range_from[key] = (endpoint.domain, endpoint.path)
            return data
        raise AssertionError("there is always at least one endpoint")

    def _range_endpoints(self, repository_ref: Reference, digest: Digest) -> list[Reference]:
        """Where to ask for ranges of ``digest``, in order: the endpoint remembered for
        the blob, else the one that served the repository's manifest, then those after it
        in ``repository_ref``'s pull sources (mirrors its tag or digest may use, then the
        primary location).  Without registries.conf, or when that endpoint is not one of
        the pull sources, it alone (as :meth:`blob` and :meth:`open_blob` ask it)."""
        served = self._served(repository_ref) or repository_ref
        conf = self.options.registries
        if conf is None:
            return [served]
        with self._lock:
            remembered = self._range_from.get((repository_ref.repository, str(digest)))
        sources = conf.pull_sources(repository_ref)
        places = [(s.reference.domain, s.reference.path) for s in sources]
        for start in (remembered, (served.domain, served.path)):
            if start is not None and start in places:
                chosen = sources[places.index(start) :]
                for source in chosen:
                    self._admit(source, repository_ref)
                return [
                    replace(repository_ref, domain=s.reference.domain, path=s.reference.path)
                    for s in chosen
                ]
        return [served]

    def _range_at(
        self, endpoint: Reference, digest: Digest, first: int, last: int, deadline: float
    ) -> bytes:
        """:meth:`read_range` from exactly ``endpoint``'s registry (or its blob's remembered
        redirect target), retrying transient failures until ``deadline``."""
        target = self._target(endpoint)
        what = f"{endpoint.repository}: blob {digest} bytes {first}-{last}"
        url = f"/v2/{endpoint.path}/blobs/{digest}"
        key = (target.host, target.path, str(digest))
        headers = {"Range": f"bytes={first}-{last}", "Accept-Encoding": "identity"}

        def attempt() -> bytes:
            location = self._location(key)
            with self._net(what):
                if location is not None:
                    client = self._client(location.host)
                    request = client.build_request("GET", location, headers=headers)
                    resp = client.send(request, stream=True)
                    with closing(resp):
                        status = resp.status_code
                        if status in (401, 403, 404, 410) or status in _REDIRECT_STATUSES:
                            log.debug("%s: location answered %d; asking again", what, status)
                            with self._lock:
                                self._locations.pop(key, None)
                        elif status in _RETRY_STATUSES:
                            raise _Transient(f"the blob location answered {status}", status)
                        else:
                            return self._range_body(resp, target, what, first, last)
                with self._open(target, url, headers, what) as resp:
                    if _origin(resp.url) != _origin(httpx.URL(self._base(target.host))):
                        with self._lock:
                            self._locations[key] = (resp.url, time.monotonic())
                    return self._range_body(resp, target, what, first, last)

        return self._retrying(what, attempt, deadline=deadline)

    def _location(self, key: tuple[str, str, str]) -> httpx.URL | None:
        with self._lock:
            found = self._locations.get(key)
            if found is None:
                return None
            if time.monotonic() - found[1] > LOCATION_TTL:
                del self._locations[key]
                return None
            return found[0]

    def _range_body(
        self, resp: httpx.Response, target: _Target, what: str, first: int, last: int
    ) -> bytes:
        """The body of an answer to ``Range: bytes=first-last``, checked to be those bytes."""
        status = resp.status_code
        if status == 200:
            raise RangeNotSupported(
                f"{what}: the registry ignores Range (it answered 200, the whole blob)",
                status=200,
            )
        if status == 416:
            raise RegistryError(f"{what}: past the end of the blob (416)", status=416)
        if status != 206:
            self._check(resp, target, what)
            raise RegistryError(f"{what}: unexpected status {status}", status=status)
        m = _CONTENT_RANGE.match(resp.headers.get("content-range", ""))
        if m is None:
            raise RangeNotSupported(f"{what}: a 206 answer without a byte Content-Range")
        a, b = int(m.group(1)), int(m.group(2))
        total = int(m.group(3)) if m.group(3) != "*" else None
        end = last if total is None else min(last, total - 1)
        if a != first or b != end:
            raise RangeNotSupported(
                f"{what}: the registry answered with bytes {a}-{b}, not {first}-{end}",
                status=206,
            )
        want = b - a + 1
        buf = bytearray()
        for chunk in resp.iter_raw():
            buf += chunk
            if len(buf) > want:
                raise RangeNotSupported(f"{what}: more than the {want} bytes of its Content-Range")
        if len(buf) < want:
            raise _Transient(f"the body ended after {len(buf)} of {want} bytes")
        return bytes(buf)

    def referrers(
        self, repository_ref: Reference, subject: Digest, artifact_type: str
    ) -> list[Descriptor]:
        """The manifests that name ``subject`` as their subject and have ``artifact_type``
        (distribution-spec 1.1, "Listing Referrers"): ``GET /v2/NAME/referrers/DIGEST``,
        else, where the registry has no such API (404), the image index its referrers tag
        ``sha256-<hex>`` names (the spec's tag schema).  A tag that names a manifest
        rather than an index counts as one referrer.  [] when there are none."""
        repository_ref = self._served(repository_ref) or repository_ref
        target = self._target(repository_ref)
        what = f"{repository_ref.repository}: referrers of {subject}"
        url = f"/v2/{repository_ref.path}/referrers/{subject}?artifactType={artifact_type}"

        def attempt() -> tuple[int, bytes, str]:
            with self._net(what), self._open(target, url, {"Accept": MT_OCI_INDEX}, what) as resp:
                if resp.status_code == 404:
                    return 404, b"", ""
                self._check(resp, target, what)
                return (
                    resp.status_code,
                    self._read_capped(resp, MAX_JSON_BLOB, what),
                    resp.headers.get("content-type", ""),
                )

        status, body, _ = self._retrying(what, attempt)
        if status == 404:
            tag = f"{subject.algorithm}-{subject.hex}"
            try:
                body, media_type, digest = self._manifest_at(
                    replace(repository_ref, tag=tag, digest=None)
                )
            except NotFound:
                return []
            if media_type != MT_OCI_INDEX:
                # one referrer tagged directly (not the spec's index, but unambiguous)
                if _artifact_type(body) != artifact_type:
                    return []
                return [Descriptor(media_type, digest, len(body))]
        return _referrer_descriptors(body, artifact_type, what)

    # -- pushing (artifacts beside an image: seek indexes) --

    def _push_target(self, ref: Reference) -> _Target:
        host = self._policy(str(ref), ref.domain, f"docker://{ref}")
        return _Target(ref.domain, host, ref.path, f"repository:{ref.path}:pull,push")

    def push_blob(self, repository_ref: Reference, data: bytes) -> Digest:
        """Upload ``data`` as a blob of ``repository_ref``'s repository unless it is there
        (``HEAD``), monolithically: ``POST`` an upload, ``PUT`` it with ``?digest=``
        (distribution-spec "Pushing a blob monolithically").  Returns its digest."""
        digest = Digest.of_bytes(data)
        target = self._push_target(repository_ref)
        what = f"{repository_ref.repository}: push blob {digest}"
        blob_url = f"/v2/{repository_ref.path}/blobs/{digest}"

        def exists() -> bool:
            with self._net(what), self._open(target, blob_url, {}, what, method="HEAD") as resp:
                if resp.status_code == 404:
                    return False
                self._check(resp, target, what)
                return True

        if self._retrying(what, exists):
            return digest

        def upload() -> None:
            start = f"/v2/{repository_ref.path}/blobs/uploads/"
            with (
                self._net(what),
                self._open(target, start, {"Content-Length": "0"}, what, method="POST") as resp,
            ):
                self._check(resp, target, what)
                location = resp.headers.get("location")
                if resp.status_code != 202 or not location:
                    raise RegistryError(
                        f"{what}: the upload was not started ({resp.status_code}, no Location)",
                        status=resp.status_code,
                    )
                where = resp.url.join(location)
            if _origin(where) != _origin(httpx.URL(self._base(target.host))):
                raise RegistryError(f"{what}: the upload location is on another host")
            sep = "&" if where.query else "?"
            put_url = f"{where}{sep}digest={digest}"
            headers = {"Content-Type": "application/octet-stream"}
            with (
                self._net(what),
                self._open(target, put_url, headers, what, method="PUT", content=data) as resp,
            ):
                self._check(resp, target, what)

        self._retrying(what, upload)
        return digest

    def push_manifest(
        self, repository_ref: Reference, reference: str, body: bytes, media_type: str
    ) -> tuple[Digest, bool]:
        """``PUT`` a manifest (or index) under ``reference`` (a tag or its digest).
        Returns its digest and whether the registry says it recorded the manifest's
        ``subject`` (the ``OCI-Subject`` header of a registry with the referrers API)."""
        digest = Digest.of_bytes(body)
        target = self._push_target(repository_ref)
        what = f"{repository_ref.repository}: push manifest {reference}"
        url = f"/v2/{repository_ref.path}/manifests/{reference}"
        headers = {"Content-Type": media_type}

        def attempt() -> bool:
            with (
                self._net(what),
                self._open(target, url, headers, what, method="PUT", content=body) as resp,
            ):
                self._check(resp, target, what)
                return bool(resp.headers.get("oci-subject"))

        return digest, self._retrying(what, attempt)

    def tags(self, ref: Reference, page_size: int | None = None) -> list[str]:
        """All tags of ``ref``'s repository, following ``Link: <…>; rel="next"`` pages.

        ``page_size`` is sent as ``?n=``; registries that ignore it answer in one page.
        """
        target = self._target(ref)
        return self._paginate(target, f"/v2/{ref.path}/tags/list", "tags", page_size)

    def catalog(self, registry: str, term: str = "", page_size: int | None = None) -> list[str]:
        """Repository paths a registry lists (``/v2/_catalog``), those containing ``term``."""
        domain = normalize_registry(registry)
        target = self._registry_target(domain, "registry:catalog:*")
        names = self._paginate(target, "/v2/_catalog", "repositories", page_size)
        return [n for n in names if term in n]

    # -- requests --

    def _target(self, ref: Reference) -> _Target:
        """Whom a request about ``ref`` is for (registries.conf applied: see _policy)."""
        host = self._policy(str(ref), ref.domain, f"docker://{ref}")
        return _Target(ref.domain, host, ref.path, f"repository:{ref.path}:pull")

    def _registry_target(self, domain: str, scope: str) -> _Target:
        """Whom a registry-wide request (catalog, login) is for."""
        return _Target(domain, self._policy(domain, domain, f"registry {domain}"), "", scope)

    def _policy(self, name: str, domain: str, what: str) -> str:
        """The host serving ``domain``, once registries.conf's table for ``name`` (a
        reference's full text, or a host) has been applied as containers/image's
        FindRegistry does: ``blocked`` refuses, ``insecure`` allows the host plain HTTP
        and unverified TLS from now on."""
        host = registry_host(domain)
        conf = self.options.registries
        if conf is not None:
            table = conf.check(name, what)
            if table is not None and table.endpoint.insecure:
                with self._lock:
                    self._insecure_hosts.add(host)
        return host

    def _insecure(self, host: str) -> bool:
        """Plain HTTP and unverified TLS allowed: --tls-verify=false, or registries.conf."""
        if self.options.insecure:
            return True
        with self._lock:
            return host in self._insecure_hosts

    def _client(self, host: str | None = None) -> httpx.Client:
        """The HTTP client for ``host``: one that skips TLS verification for insecure
        hosts, the verifying one for every other (and for token realms)."""
        unverified = host is not None and self._insecure(host)
        with self._lock:
            if self._closed:
                raise RegistryError("registry client: used after close")
            if self._pid != os.getpid():
                # A fork: the connections are the parent's (or a sibling's).  Leave them
                # unclosed (closing would end a TLS session another process uses) and
                # open this process's own.
                self._http = self._http_unverified = None
                self._pid = os.getpid()
            current = self._http_unverified if unverified else self._http
            if current is None:
                current = httpx.Client(
                    http1=True,
                    http2=False,
                    verify=self._ssl_context(unverified),
                    timeout=httpx.Timeout(self.options.timeout),
                    follow_redirects=False,
                    headers={"User-Agent": _USER_AGENT},
                )
                if unverified:
                    self._http_unverified = current
                else:
                    self._http = current
            return current

    def _ssl_context(self, unverified: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self.options.insecure or unverified:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        cert_dir = self.options.cert_dir
        if cert_dir is None:
            return ctx
        if not cert_dir.is_dir():
            raise RegistryError(f"cert dir {cert_dir}: not a directory")
        for path in sorted(cert_dir.iterdir()):
            try:
                if path.suffix == ".crt":
                    ctx.load_verify_locations(cafile=str(path))
                elif path.suffix == ".cert":
                    key = path.with_suffix(".key")
                    if not key.is_file():
                        raise RegistryError(f"cert dir {cert_dir}: {path.name} has no {key.name}")
                    ctx.load_cert_chain(str(path), str(key))
            except (ssl.SSLError, OSError) as exc:
                raise RegistryError(
                    f"cert dir {cert_dir}: {path.name} is not a usable certificate "
                    f"({_describe(exc)})"
                ) from exc
        return ctx

    @contextmanager
    def _net(self, what: str) -> Iterator[None]:
        """Turn httpx's transport errors into ours: transient ones are worth a retry."""
        try:
            yield
        except httpx.TransportError as exc:
            # A failed handshake (certificate, protocol) is final; a TLS connection that
            # breaks later (SSLEOFError and the like) is as transient as a TCP one.
            tls = _tls_problem(exc)
            if tls is not None and isinstance(exc, httpx.ConnectError):
                raise RegistryError(f"{what}: tls: {_describe(tls)}") from exc
            if isinstance(exc, httpx.ConnectError) and _unknown_host(exc):
                # retrying cannot make a name exist (a temporary DNS failure is retried)
                raise RegistryError(f"{what}: unknown host ({_describe(exc)})") from exc
            if isinstance(exc, httpx.TimeoutException | httpx.NetworkError):
                raise _Transient(_describe(exc)) from exc
            if isinstance(exc, httpx.RemoteProtocolError):
                raise _Transient(_describe(exc)) from exc
            raise RegistryError(f"{what}: {_describe(exc)}") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # bad encodings, bad urls
            raise RegistryError(f"{what}: {_describe(exc)}") from exc

    def _retrying(
        self,
        what: str,
        attempt: Callable[[], T],
        attempts: int | None = None,
        *,
        deadline: float | None = None,
    ) -> T:
        """``attempt()`` until it succeeds or fails for good: transient failures are tried
        again after a backoff, at most ``attempts`` (``options.retries``) times in all and,
        with a ``deadline`` (``time.monotonic()``), never starting a wait that ends past it."""
        delay = self.options.backoff
        retries = self.options.retries if attempts is None else attempts
        for n in range(1, retries + 1):
            try:
                return attempt()
            except _Transient as exc:
                wait = exc.retry_after if exc.retry_after is not None else delay
                if deadline is not None and time.monotonic() + wait > deadline:
                    raise RegistryError(
                        f"{what}: {exc.reason} (gave up after {n} attempts, out of time)",
                        status=exc.status,
                    ) from exc
                if n >= retries:
                    raise RegistryError(
                        f"{what}: {exc.reason} (gave up after {n} attempts)", status=exc.status
                    ) from exc
                log.debug("%s: %s; attempt %d in %.2fs", what, exc.reason, n + 1, wait)
                time.sleep(wait)
                delay = min(delay * 2, _MAX_BACKOFF)
        raise AssertionError("unreachable")

    def _base(self, host: str) -> str:
        """``scheme://host`` for a registry, probing loopback/insecure ones once."""
        with self._lock:
            scheme = self._schemes.get(host)
        if scheme is None:
            scheme = self._probe(host)
            with self._lock:
                self._schemes[host] = scheme
        return f"{scheme}://{host}"

    def _probe(self, host: str) -> str:
        if not (self._insecure(host) or is_loopback(host)):
            return "https"
        # containers/image for insecure (and docker for loopback) registries: https first,
        # then plain http.  A TLS registry answers plain http with 400.
        client = self._client(host)
        try:
            client.get(f"https://{host}/v2/")
            return "https"
        except httpx.TransportError as exc:
            https_error = exc
        try:
            resp = client.get(f"http://{host}/v2/")
        except httpx.TransportError as exc:
            tls = _tls_problem(https_error)
            if tls is None:  # nothing listening, or it broke: maybe later
                raise _Transient(f"cannot connect ({_describe(exc)})") from exc
            raise RegistryError(
                f"registry {host}: https failed ({_describe(tls)}) and so did http "
                f"({_describe(exc)})"
            ) from exc
        if resp.status_code == 400:
            tls = _tls_problem(https_error)
            raise RegistryError(
                f"registry {host}: it speaks https but the tls handshake failed "
                f"({_describe(tls or https_error)}); give its ca with cert_dir or use insecure",
                status=400,
            )
        log.debug("registry %s: using plain http", host)
        return "http"

    def _plain_http_allowed(self, host: str) -> bool:
        return self._insecure(host) or is_loopback(host)

    def _cred_lookup(self, target: _Target) -> _CredLookup:
        key = (target.domain, target.path)
        with self._lock:
            found = self._creds.get(key)
            foreign = target.domain in self._foreign_domains
        if found is None:
            # containers/image: credentials given for the image are not sent to a mirror
            # (or rewritten location) on another registry; its auth files still are read.
            options = replace(self.options, creds=None) if foreign else self.options
            found = _lookup_creds(options, target.domain, target.path)
            with self._lock:
                self._creds[key] = found
        return found

    def _cached_auth(self, target: _Target) -> str | None:
        now = time.monotonic()
        with self._lock:
            cached = self._tokens.get((target.host, target.scope))
            if cached is not None:
                token, expiry = cached
                if now < expiry:
                    return f"Bearer {token}"
                del self._tokens[(target.host, target.scope)]
            basic = target.host in self._basic_hosts
        if basic:
            creds = self._cred_lookup(target).creds
            return creds.basic() if creds is not None else None
        return None

    @contextmanager
    def _open(
        self,
        target: _Target,
        url: str,
        headers: dict[str, str],
        what: str,
        *,
        method: str = "GET",
        content: bytes | None = None,
    ) -> Iterator[httpx.Response]:
        """GET (or ``method``) ``url`` (a path on the registry, or a URL) with auth; the
        response streams.

        The first request goes anonymous unless a token or Basic credentials are known; a
        ``401`` is answered once with what ``WWW-Authenticate`` asks for.  Retryable
        statuses raise ``_Transient``; other statuses are the caller's to check.
        """
        base = self._base(target.host)
        full = urljoin(base + "/", url)
        auth = self._cached_auth(target)
        resp = self._send(target, full, headers, auth, method, content)
        if resp.status_code == 401:
            challenges = parse_challenges(resp.headers.get_list("www-authenticate"))
            resp.close()
            auth = self._authenticate(target, challenges, what)
            if auth is None:
                raise self._auth_error(target, 401, None, what)
            resp = self._send(target, full, headers, auth, method, content)
            if resp.status_code == 401:
                resp.close()
                raise self._auth_error(target, 401, None, what)
        try:
            if resp.status_code in _RETRY_STATUSES:
                raise _Transient(
                    f"the registry answered {resp.status_code}",
                    resp.status_code,
                    _retry_after(resp.headers.get("retry-after")),
                )
            yield resp
        finally:
            resp.close()

    def _send(
        self,
        target: _Target,
        url: str,
        headers: dict[str, str],
        auth: str | None,
        method: str = "GET",
        content: bytes | None = None,
    ) -> httpx.Response:
        """One request, following redirects (of GET and HEAD only); the registry's
        Authorization stays on its origin."""
        client = self._client(target.host)
        registry_origin = _origin(httpx.URL(self._base(target.host)))
        current = httpx.URL(url)
        for _ in range(_MAX_REDIRECTS + 1):
            send_headers = dict(headers)
            if auth is not None and _origin(current) == registry_origin:
                send_headers["Authorization"] = auth
            request = client.build_request(method, current, headers=send_headers, content=content)
            resp = client.send(request, stream=True)
            location = resp.headers.get("location")
            if (
                resp.status_code not in _REDIRECT_STATUSES
                or not location
                or method not in ("GET", "HEAD")
            ):
                return resp
            resp.close()
            nxt = current.join(location)
            if nxt.scheme not in ("http", "https"):
                raise RegistryError(f"{target.what}: redirect to an unsupported url scheme")
            if (
                nxt.scheme == "http"
                and current.scheme == "https"
                and not self._plain_http_allowed(nxt.netloc.decode("ascii", "replace"))
            ):
                raise RegistryError(
                    f"{target.what}: refusing a redirect from https to plain http ({nxt.host})"
                )
            # Storage redirects carry signed URLs: log the host only.
            log.debug("%s: redirected to %s", target.what, nxt.host)
            current = nxt
        raise RegistryError(f"{target.what}: more than {_MAX_REDIRECTS} redirects")

    def _authenticate(self, target: _Target, challenges: list[_Challenge], what: str) -> str | None:
        """The Authorization value a 401's challenges ask for, or None if we have none."""
        for ch in challenges:
            if ch.scheme == "bearer" and ch.params.get("realm"):
                scope = ch.params.get("scope") or target.scope
                token, expires_in = self._fetch_token(
                    target, ch.params["realm"], ch.params.get("service", ""), scope, what
                )
                with self._lock:
                    # A little early, so a token never expires in flight.
                    expiry = time.monotonic() + max(expires_in - 10.0, 0.0)
                    self._tokens[(target.host, target.scope)] = (token, expiry)
                return f"Bearer {token}"
        for ch in challenges:
            if ch.scheme == "basic":
                creds = self._cred_lookup(target).creds
                if creds is None:
                    return None
                with self._lock:
                    self._basic_hosts.add(target.host)
                return creds.basic()
        return None

    def _fetch_token(
        self, target: _Target, realm: str, service: str, scope: str, what: str
    ) -> tuple[str, float]:
        """A bearer token from the realm (docker token spec), with Basic creds if we have any."""
        realm_url = httpx.URL(realm)
        if realm_url.scheme not in ("http", "https") or not realm_url.host:
            raise RegistryError(f"{target.what}: the token realm is not an http(s) url")
        creds = self._cred_lookup(target).creds
        if (
            creds is not None
            and realm_url.scheme == "http"
            and not (self._plain_http_allowed(realm_url.host) or is_loopback(target.host))
        ):
            raise RegistryError(
                f"{target.what}: token realm {realm_url.host} is plain http; "
                "not sending credentials"
            )
        params = {k: v for k, v in (("service", service), ("scope", scope)) if v}
        log.debug("%s: token for %r from %s", target.what, scope, realm_url.host)
        # As containers/image: the registry's TLS setting is its token server's too.
        client = self._client(target.host)
        if creds is not None and creds.identity_token is not None:
            # distribution's oauth.md: trade the refresh token for an access token
            request = client.build_request(
                "POST",
                realm_url,
                data={
                    **params,
                    "grant_type": "refresh_token",
                    "refresh_token": creds.identity_token,
                    "client_id": "snapshotter",
                },
            )
        else:
            headers = {"Authorization": creds.basic()} if creds is not None else {}
            request = client.build_request("GET", realm_url, params=params, headers=headers)
        # Redirects are followed by httpx, which drops Authorization across origins.
        resp = client.send(request, stream=True, follow_redirects=True)
        with closing(resp):
            if resp.status_code in _RETRY_STATUSES:
                raise _Transient(
                    f"token server {realm_url.host} answered {resp.status_code}",
                    resp.status_code,
                    _retry_after(resp.headers.get("retry-after")),
                )
            if resp.status_code in (401, 403):
                raise self._auth_error(target, resp.status_code, "the token server", what)
            if resp.status_code != 200:
                raise RegistryError(
                    f"{target.what}: token server {realm_url.host} answered {resp.status_code}",
                    status=resp.status_code,
                )
            body = self._read_capped(resp, _MAX_TOKEN_BODY, f"token server {realm_url.host}")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            doc = None
        token = None
        if isinstance(doc, dict):
            token = doc.get("token") or doc.get("access_token")
        if not isinstance(doc, dict) or not isinstance(token, str) or not token:
            raise RegistryError(
                f"{target.what}: token server {realm_url.host} answered without a token"
            )
        expires_in = doc.get("expires_in")
        # token.md: "If not specified, this should be assumed to be 60 seconds."
        if not isinstance(expires_in, int | float) or isinstance(expires_in, bool):
            expires_in = 60
        return token, float(max(expires_in, 0))

    def _auth_error(
        self, target: _Target, status: int, who: str | None, what: str
    ) -> RegistryError:
        lookup = self._cred_lookup(target)
        by = f" by {who}" if who else ""
        if lookup.creds is not None:
            verdict = "authentication failed" if status == 401 else "access denied"
        else:
            verdict = "authentication required" if status == 401 else "access denied"
        return RegistryError(
            f"{what}: {verdict}{by} ({status}); {lookup.describe(target.domain)}",
            status=status,
            code="UNAUTHORIZED" if status == 401 else "DENIED",
        )

    def _check(self, resp: httpx.Response, target: _Target, what: str) -> None:
        """Raise for anything but 200 (2xx is read by the caller)."""
        status = resp.status_code
        if 200 <= status < 300:
            return
        code, message = _error_info(resp)
        if status == 404:
            if code == "NAME_UNKNOWN":
                raise NotFound(f"{what} unknown: the registry does not know the repository")
            raise NotFound(f"{what} unknown")
        if status in (401, 403):
            error = self._auth_error(target, status, None, what)
            error.code = code or error.code
            raise error
        detail = f": {_one_line(message)}" if message else ""
        raise RegistryError(
            f"{what}: the registry answered {status}{' ' + code.lower() if code else ''}{detail}",
            status=status,
            code=code,
        )

    @staticmethod
    def _read_capped(resp: httpx.Response, cap: int, what: str) -> bytes:
        length = resp.headers.get("content-length", "")
        if length.isdigit() and int(length) > cap:
            raise RegistryError(
                f"{what}: {length} bytes is more than the {cap}-byte limit",
                status=resp.status_code,
            )
        buf = bytearray()
        for chunk in resp.iter_bytes():
            buf += chunk
            if len(buf) > cap:
                raise RegistryError(
                    f"{what}: more than the {cap}-byte limit", status=resp.status_code
                )
        return bytes(buf)

    def _paginate(self, target: _Target, first: str, key: str, page_size: int | None) -> list[str]:
        if page_size is not None and page_size <= 0:
            raise ValueError(f"page_size must be positive, got {page_size!r}")
        url = first + (f"?n={page_size}" if page_size else "")
        what = f"{target.what}: {'tag list' if key == 'tags' else 'catalog'}"
        out: list[str] = []
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            seen.add(url)

            def attempt(url: str = url) -> tuple[bytes, str | None, httpx.URL]:
                with self._net(what), self._open(target, url, {}, what) as resp:
                    self._check(resp, target, what)
                    body = self._read_capped(resp, MAX_JSON_BLOB, what)
                    return body, resp.links.get("next", {}).get("url"), resp.url

            body, next_link, page_url = self._retrying(what, attempt)
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise RegistryError(f"{what}: the registry answered with invalid json") from None
            items = doc.get(key) if isinstance(doc, dict) else None
            if items is None:
                items = []  # distribution answers "tags": null for an emptied repository
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise RegistryError(f"{what}: {key!r} is not a list of strings")
            out.extend(items)
            if not next_link:
                return out
            nxt = page_url.join(next_link)
            if _origin(nxt) != _origin(httpx.URL(self._base(target.host))):
                raise RegistryError(f"{what}: the next page is on another host ({nxt.host})")
            url = str(nxt)
            if url in seen:
                raise RegistryError(f"{what}: the pages link back in a loop")
        raise RegistryError(f"{what}: more than {_MAX_PAGES} pages")

    def _ping(self, domain: str) -> None:
        """GET /v2/ with auth: 200 means the credentials (if needed) were accepted."""
        target = self._registry_target(domain, "")
        what = f"registry {domain}"

        def attempt() -> None:
            with self._net(what), self._open(target, "/v2/", {}, what) as resp:
                self._check(resp, target, what)

        self._retrying(what, attempt)


def _media_type(header: str, body: bytes) -> str:
    """The manifest's media type: Content-Type, else the body's mediaType, else its shape."""
    media_type = header.split(";", 1)[0].strip().lower()
    if media_type in MANIFEST_MEDIA_TYPES:
        return media_type
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return media_type
    if not isinstance(doc, dict):
        return media_type
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if media_type in ("", "application/json", "text/plain", "application/octet-stream"):
        # image-spec: mediaType is optional in older OCI documents.
        if isinstance(doc.get("manifests"), list):
            return MT_OCI_INDEX
        if "config" in doc and doc.get("schemaVersion") == 2:
            return MT_OCI_MANIFEST
    return media_type


def _error_info(resp: httpx.Response) -> tuple[str | None, str]:
    """(code, message) of a distribution error body; both safe to show."""
    try:
        raw = bytearray()
        for chunk in resp.iter_bytes():
            raw += chunk
            if len(raw) > _MAX_ERROR_BODY:
                return None, ""
        doc = json.loads(raw)
    except (httpx.HTTPError, ValueError, UnicodeDecodeError):
        return None, ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None, ""
    code, message = errors[0].get("code"), errors[0].get("message")
    code = code if isinstance(code, str) and _CODE.match(code) else None
    return code, message if isinstance(message, str) else ""


def _artifact_type(manifest: bytes) -> str:
    """An OCI 1.1 manifest's artifact type: its ``artifactType``, else its config's media
    type (image-spec manifest.md); "" for what is not a JSON object."""
    try:
        doc = json.loads(manifest)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(doc, dict):
        return ""
    declared = doc.get("artifactType")
    if isinstance(declared, str) and declared:
        return declared
    config = doc.get("config")
    media_type = config.get("mediaType") if isinstance(config, dict) else None
    return media_type if isinstance(media_type, str) else ""


def _referrer_descriptors(body: bytes, artifact_type: str, what: str) -> list[Descriptor]:
    """The descriptors of a referrers index (API answer or tag) with ``artifact_type``."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(f"{what}: the registry answered with invalid json") from None
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(manifests, list):
        raise RegistryError(f"{what}: not an image index")
    out: list[Descriptor] = []
    for i, item in enumerate(manifests):
        if not isinstance(item, dict) or item.get("artifactType") != artifact_type:
            continue
        try:
            out.append(Descriptor.from_json(item, f"{what}: manifests[{i}]", MT_OCI_MANIFEST))
        except InvalidReference as exc:
            raise RegistryError(str(exc)) from exc
    return out


# -- streaming blobs --------------------------------------------------------------------


class BlobStream(ReaderBase):
    """A blob's body as a file-like: ``read(n)`` may return fewer bytes, ``b""`` at the end.

    A connection that drops mid-body is resumed with ``Range: bytes=OFFSET-`` (a ``206``
    continues; a ``200`` restarts and the bytes already delivered are skipped).  Failures
    at one offset are retried ``options.retries`` times; progress resets the count.  The
    stream checks neither digest nor size: its reader does, and a mismatch is final.
    """

    def __init__(
        self,
        client: RegistryClient,
        target: _Target,
        digest: Digest,
        size: int | None,
        progress: Callable[[int], None] | None,
    ) -> None:
        self._client = client
        self._target = target
        self.digest = digest
        self.size = size
        self._progress = progress
        self._what = f"{target.what}: blob {digest}"
        self._url = f"/v2/{target.path}/blobs/{digest}"
        self._cm: AbstractContextManager[httpx.Response] | None = None  # open _open()
        self._chunks: Iterator[bytes] | None = None
        self._buf = b""
        self._pos = 0
        self._received = 0  # bytes of the blob taken from the network (delivered + buffered)
        self._skip = 0  # bytes to drop from a 200 answer to a Range request
        self._failures = 0
        self._failed_at = -1
        self._eof = False
        self._closed = False

    # -- file-like --

    def read(self, n: int = -1, /) -> bytes:
        if self._closed:
            raise ValueError("read from a closed blob stream")
        if n is None or n < 0:
            parts = []
            while chunk := self.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        if n == 0:
            return b""
        while self._pos >= len(self._buf):
            if self._eof:
                return b""
            self._fill()
        out = self._buf[self._pos : self._pos + n]
        self._pos += len(out)
        if self._progress is not None:
            self._progress(len(out))
        return out

    def close(self) -> None:
        self._closed = True
        self._drop()

    def __enter__(self) -> BlobStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- network --

    def _connect(self) -> None:
        """(Re)open the body at ``self._received``, retrying transient failures."""
        client = self._client

        def attempt() -> None:
            offset = self._received
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            with client._net(self._what):
                cm = client._open(self._target, self._url, headers, self._what)
                resp = cm.__enter__()
                try:
                    self._accept(resp, offset)
                except BaseException:
                    cm.__exit__(None, None, None)
                    raise
            self._cm = cm
            self._chunks = resp.iter_raw()

        client._retrying(self._what, attempt)

    def _accept(self, resp: httpx.Response, offset: int) -> None:
        status = resp.status_code
        if status == 200:
            self._skip = offset
            return
        if status == 206 and offset:
            m = re.match(r"bytes\s+(\d+)-", resp.headers.get("content-range", ""))
            if m is None or int(m.group(1)) != offset:
                raise RegistryError(
                    f"{self._what}: asked to resume at byte {offset}, the answer starts elsewhere",
                    status=206,
                )
            self._skip = 0
            return
        if status == 416 and offset:
            m = re.match(r"bytes\s+\*/(\d+)", resp.headers.get("content-range", ""))
            if m is not None and int(m.group(1)) == offset:
                self._skip = 0
                self._eof = True
                return
        self._client._check(resp, self._target, self._what)
        raise RegistryError(f"{self._what}: unexpected status {status}", status=status)

    def _drop(self) -> None:
        cm, self._cm, self._chunks = self._cm, None, None
        if cm is not None:
            with suppress(httpx.HTTPError):
                cm.__exit__(None, None, None)

    def _fill(self) -> None:
        """Buffer the next chunk of the body, resuming after failures; set _eof at the end."""
        while True:
            if self._eof:
                return
            if self._chunks is None:
                self._connect()
                if self._eof:  # 416: everything had arrived
                    self._drop()
                    return
            assert self._chunks is not None
            try:
                with self._client._net(self._what):
                    chunk = next(self._chunks, None)
            except _Transient as exc:
                self._drop()
                self._fail(exc.reason)
                continue
            if chunk is None:
                self._drop()
                if self.size is not None and self._received < self.size:
                    self._fail(f"the body ended at byte {self._received} of {self.size}")
                    continue
                self._eof = True
                return
            if self._skip:
                dropped = min(self._skip, len(chunk))
                chunk = chunk[dropped:]
                self._skip -= dropped
                if not chunk:
                    continue
            self._received += len(chunk)
            self._buf, self._pos = chunk, 0
            return

    def _fail(self, reason: str) -> None:
        """Count a failure at the current offset; give up after ``retries`` of them."""
        if self.size is not None and self._received >= self.size:
            # Everything promised arrived before the break; let the reader judge it.
            self._eof = True
            return
        if self._received != self._failed_at:
            self._failed_at, self._failures = self._received, 0
        self._failures += 1
        retries = self._client.options.retries
        if self._failures >= retries:
            raise RegistryError(
                f"{self._what}: {reason} at byte {self._received} "
                f"(gave up after {self._failures} attempts)"
            )
        wait = min(self._client.options.backoff * 2 ** (self._failures - 1), _MAX_BACKOFF)
        log.debug("%s: %s at byte %d; resuming in %.2fs", self._what, reason, self._received, wait)
        time.sleep(wait)


@dataclass(slots=True)
class RegistryBlob:
    """A layer blob in a registry as a ``lazy.layers.RangeSource``: ``read_range`` is
    :meth:`RegistryClient.read_range`; the client outlives it (its owner closes it).
    ``requests`` and ``fetched`` count what was asked of the network."""

    client: RegistryClient
    repository_ref: Reference
    digest: Digest
    size: int
    requests: int = 0
    fetched: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def read_range(self, first: int, last: int) -> bytes:
        data = self.client.read_range(self.repository_ref, self.digest, first, last)
        with self._lock:
            self.requests += 1
            self.fetched += len(data)
        return data


# -- login / logout ---------------------------------------------------------------------


def login(
    registry: str, user: str, password: str, options: RegistryOptions = DEFAULT_OPTIONS
) -> Path:
    """Check ``user``/``password`` against ``registry`` (GET /v2/), then store them.

    The auth file is podman's format, ``{"auths": {REGISTRY: {"auth": base64(user:pass)}}}``,
    at :func:`login_auth_file`; other entries are kept.  It is replaced atomically, mode
    0600.  Returns its path.
    """
    domain = normalize_registry(registry)
    checked = replace(options, creds=(user, password), auth_file=None)
    with RegistryClient(checked) as client:
        client._ping(domain)
    path = login_auth_file(options)
    doc = _read_auth_file(path) or {}
    auths = doc.get("auths")
    auths = dict(auths) if isinstance(auths, dict) else {}
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    auths[domain] = {"auth": encoded}
    doc["auths"] = auths
    _write_auth_file(path, doc)
    log.debug("registry %s: credentials stored in %s", domain, path)
    return path


def logout(registry: str, options: RegistryOptions = DEFAULT_OPTIONS) -> Path:
    """Remove ``registry``'s entry from the auth file ``login`` writes; returns its path."""
    domain = normalize_registry(registry)
    path = login_auth_file(options)
    doc = _read_auth_file(path)
    auths = doc.get("auths") if doc is not None else None
    if doc is None or not isinstance(auths, dict):
        raise NotFound(f"auth file {path}: not logged in to {domain}")
    keys = [k for k in auths if _auth_key(str(k)) == domain]
    if not keys:
        raise NotFound(f"auth file {path}: not logged in to {domain}")
    doc["auths"] = {k: v for k, v in auths.items() if k not in keys}
    _write_auth_file(path, doc)
    return path
