"""Real registries and small servers on 127.0.0.1 for tests/test_registry.py.

- :func:`start_registry` runs Debian's ``docker-registry`` with a generated config
  (filesystem storage, optional htpasswd, token auth or TLS) and waits until ``/v2/``
  answers; :meth:`Registry.stop` ends it.
- :class:`TokenServer` is the token endpoint of docker/distribution's token auth spec: it
  checks Basic credentials and issues RS256 JWTs carrying their certificate in ``x5c``,
  which the registry trusts through ``rootcertbundle``.
- :class:`FaultProxy` forwards to a registry and, for requests matching a pattern, cuts
  the body short, answers 503/429, drops the connection, ignores ``Range``, flips a byte
  or redirects; it records every request it saw.
- :class:`StorageServer` stands in for blob storage behind a redirect.

Test-only dependencies: ``bcrypt`` (htpasswd), ``cryptography`` and ``pyjwt`` (keys,
certificates, tokens).  Nothing listens beyond loopback.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import json
import re
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# -- keys and certificates ----------------------------------------------------------------


@dataclass
class CertPair:
    cert: Path
    key: Path
    der: bytes
    private_key: rsa.RSAPrivateKey


def make_cert(
    directory: Path,
    name: str,
    *,
    ca: CertPair | None = None,
    is_ca: bool = False,
    ip: str | None = None,
) -> CertPair:
    """A 2048-bit RSA key and certificate (self-signed, or signed by ``ca``)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name(ca, name))]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=not is_ca,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    if not is_ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
    signer = ca.private_key if ca is not None else key
    cert = builder.sign(signer, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return CertPair(cert_path, key_path, cert.public_bytes(serialization.Encoding.DER), key)


def ca_name(ca: CertPair | None, own: str) -> str:
    if ca is None:
        return own
    loaded = x509.load_der_x509_certificate(ca.der)
    return str(loaded.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    lines = [
        f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}"
        for user, pw in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- docker-registry ----------------------------------------------------------------------


@dataclass
class Registry:
    """A running ``docker-registry``; ``host`` is ``127.0.0.1:PORT``."""

    host: str
    root: Path  # filesystem storage
    proc: subprocess.Popen[bytes]
    log: Path
    scheme: str = "http"

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexpart = digest.partition(":")
        return self.root / "docker/registry/v2/blobs" / algorithm / hexpart[:2] / hexpart / "data"

    def push(
        self,
        source: str,
        dest: str,
        *,
        creds: tuple[str, str] | None = None,
        all_images: bool = False,
        fmt: str | None = None,
    ) -> None:
        """``skopeo copy SOURCE docker://HOST/DEST`` (``source`` like ``oci:DIR:TAG``), with
        digests kept unless ``fmt`` converts, and an empty auth file of its own (never the
        user's)."""
        cmd = ["skopeo", "copy", "-q", "--dest-tls-verify=false"]
        cmd += ["--format", fmt] if fmt else ["--preserve-digests"]
        if creds is not None:
            cmd += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
        if all_images:
            cmd.append("--all")
        cmd += [source, f"docker://{self.host}/{dest}"]
        auth_file = self.root.parent / "skopeo-auth.json"
        if not auth_file.exists():
            auth_file.write_text('{"auths": {}}')
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "REGISTRY_AUTH_FILE": str(auth_file)}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"skopeo push to {dest} failed: {done.stderr.strip()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_registry(
    directory: Path,
    *,
    auth: dict[str, Any] | None = None,
    tls: CertPair | None = None,
) -> Registry:
    """Start ``docker-registry serve`` on a free loopback port; wait until /v2/ answers."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    http_conf: dict[str, Any] = {"addr": f"{LOOPBACK}:{port}", "secret": secrets.token_hex(16)}
    if tls is not None:
        http_conf["tls"] = {"certificate": str(tls.cert), "key": str(tls.key)}
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(directory / "data")},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http_conf,
    }
    if auth is not None:
        config["auth"] = auth
    # JSON is YAML: no yaml writer needed.
    config_path = directory / "config.yml"
    config_path.write_text(json.dumps(config, indent=2))
    log = directory / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(config_path)], stdout=out, stderr=subprocess.STDOUT
        )
    registry = Registry(
        f"{LOOPBACK}:{port}", directory / "data", proc, log, "https" if tls else "http"
    )
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            if tls is not None:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    LOOPBACK, port, timeout=2, context=ctx
                )
            else:
                conn = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
            conn.request("GET", "/v2/")
            status = conn.getresponse().status
            conn.close()
            if status in (200, 401):
                return registry
        except OSError:
            pass
        if time.monotonic() > deadline:
            registry.stop()
            raise RuntimeError(f"docker-registry did not answer: {log.read_text()[-2000:]}")
        time.sleep(0.05)


def start_htpasswd_registry(directory: Path, users: dict[str, str]) -> Registry:
    """A registry that takes Basic auth for ``users`` (bcrypt htpasswd)."""
    htpasswd = write_htpasswd(directory / "htpasswd", users)
    return start_registry(
        directory, auth={"htpasswd": {"realm": "basic-realm", "path": str(htpasswd)}}
    )


@dataclass
class TlsSetup:
    registry: Registry
    ca_dir: Path  # a --cert-dir holding the CA that signed the registry's certificate


def start_tls_registry(directory: Path) -> TlsSetup:
    """A registry serving HTTPS with a certificate from a CA made here."""
    ca = make_cert(directory / "ca", "snapshotter-test-ca", is_ca=True)
    server = make_cert(directory / "server", "registry", ca=ca, ip=LOOPBACK)
    ca_dir = directory / "certs.d"
    ca_dir.mkdir()
    (ca_dir / "ca.crt").write_bytes(ca.cert.read_bytes())
    return TlsSetup(start_registry(directory, tls=server), ca_dir)


def isolate_user_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point HOME at an empty directory and drop the auth-file variables, so no test reads or
    writes the real user's auth files; returns the new HOME."""
    home = tmp_path / "home"
    home.mkdir()
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    return home


# -- small threaded HTTP servers ------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: Any

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer (the tests cut, pace and refuse on purpose)
        is no server error; anything else is printed as socketserver prints it."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class _Background:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self) -> None:
        self.server = _Server((LOOPBACK, 0), self.handler)
        self.server.owner = self
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def owner(self) -> Any:
        return self.server.owner  # type: ignore[attr-defined]

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# -- a registry's tags pages, with the Link headers a real one does not send -----------


class _PagesHandler(_Quiet):
    def do_GET(self) -> None:
        owner: PagedTags = self.owner
        owner.asked.append(self.path)
        if self.path == "/v2/":
            self.reply(200, b"{}", {"Content-Type": "application/json"})
            return
        page = owner.pages.get(self.path)
        if page is None:
            self.reply(404, b'{"errors": [{"code": "NAME_UNKNOWN", "message": "no"}]}')
            return
        tags, link = page
        headers = {"Content-Type": "application/json"}
        if link:
            headers["Link"] = link.replace("{host}", owner.host)
        self.reply(200, json.dumps({"name": "ns/app", "tags": tags}).encode(), headers)


class PagedTags(_Background):
    """A plain-HTTP server on 127.0.0.1 serving ``pages``: path -> (tags, Link or None);
    ``{host}`` in a Link becomes this server's host.  Docker's registry only ever sends
    relative Links on its own host; other registries send absolute ones, or worse."""

    handler = _PagesHandler

    def __init__(self, pages: dict[str, tuple[list[str], str | None]]) -> None:
        self.pages = pages
        self.asked: list[str] = []
        super().__init__()


# -- token server ---------------------------------------------------------------------------


@dataclass
class TokenRequest:
    user: str | None  # None: anonymous
    scopes: list[str]
    service: str


class _TokenHandler(_Quiet):
    def do_GET(self) -> None:
        owner: TokenServer = self.owner
        query = parse_qs(urlsplit(self.path).query)
        scopes = [s for value in query.get("scope", []) for s in value.split()]
        service = query.get("service", [""])[0]
        user: str | None = None
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                name, password = "", ""
            if owner.users.get(name) != password or not name:
                owner.requests.append(TokenRequest(f"!{name}", scopes, service))
                self.reply(401, b'{"details":"incorrect username or password"}')
                return
            user = name
        owner.requests.append(TokenRequest(user, scopes, service))
        token = owner.issue(user, scopes, service)
        body = {"token": token, "access_token": token, "expires_in": 300}
        self.reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def do_POST(self) -> None:
        owner: TokenServer = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        scopes = [s for value in form.get("scope", []) for s in value.split()]
        service = form.get("service", [""])[0]
        grant = form.get("grant_type", [""])[0]
        user = owner.refresh_tokens.get(form.get("refresh_token", [""])[0])
        if grant != "refresh_token" or user is None or not form.get("client_id"):
            owner.requests.append(TokenRequest(f"!{grant}", scopes, service))
            self.reply(401, b'{"error":"invalid_grant"}', {"Content-Type": "application/json"})
            return
        owner.requests.append(TokenRequest(user, scopes, service))
        token = owner.issue(user, scopes, service)
        body = {"access_token": token, "expires_in": 300, "scope": " ".join(scopes)}
        self.reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})


class TokenServer(_Background):
    """docker/distribution token auth: Basic in (GET), or an OAuth2 refresh token in (POST,
    distribution's oauth.md), a JWT signed by ``self.cert`` out.

    Known users get every action they ask for; anonymous callers get none.
    ``refresh_tokens`` maps identity tokens to the user they stand for.
    """

    handler = _TokenHandler
    issuer = "snapshotter-test-issuer"
    service = "snapshotter-test-registry"

    def __init__(
        self, directory: Path, users: dict[str, str], refresh_tokens: dict[str, str] | None = None
    ) -> None:
        self.users = users
        self.refresh_tokens = refresh_tokens or {}
        self.requests: list[TokenRequest] = []
        self.cert = make_cert(directory, "token-signer", is_ca=True)
        super().__init__()

    @property
    def realm(self) -> str:
        return f"http://{self.host}/token"

    def registry_auth(self) -> dict[str, Any]:
        """The registry config's ``auth`` section that trusts this server."""
        return {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": str(self.cert.cert),
            }
        }

    def issue(self, user: str | None, scopes: list[str], service: str) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = actions.split(",") if user is not None else []
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        x5c = [base64.b64encode(self.cert.der).decode()]
        return jwt.encode(claims, self.cert.private_key, algorithm="RS256", headers={"x5c": x5c})


# -- fault proxy ----------------------------------------------------------------------------

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
}


@dataclass
class Fault:
    """What to do to the next request whose path matches ``pattern`` (used once).

    ``kind``: ``status`` (answer ``status`` with ``headers``), ``cut`` (send ``at`` bytes of
    the body, then close), ``reset`` (close without answering), ``ignore_range`` (forward
    without ``Range``, so the registry answers 200), ``shift_range`` (ask the registry for
    the range ``at`` bytes later: a 206 whose Content-Range is not what was asked),
    ``flip`` (flip the byte at ``at`` of the body), ``redirect`` (answer 307 to
    ``location``).
    """

    kind: str
    pattern: str = r"/blobs/"
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    at: int = 0
    location: str = ""


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0  # what the client was answered (0: nothing, a reset)
    sent: int = 0  # body bytes sent to the client


class _ProxyHandler(_Quiet):
    protocol_version = "HTTP/1.0"  # one request per connection: cutting one is simple

    def do_GET(self) -> None:
        self.owner.handle(self)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET


class FaultProxy(_Background):
    """A forwarding proxy in front of ``upstream`` (``127.0.0.1:PORT``) that misbehaves
    on cue: ``proxy.faults.append(Fault("cut", at=100_000))``.

    It counts what it sends (``Seen.sent``, :meth:`bytes_to`), and can misbehave for good:
    ``refuse_range`` answers every blob GET whole (200) whatever its ``Range``, as a
    pull-through cache does before it has the blob; ``rate`` (bytes per second) paces all
    bodies through one shared link, ``latency`` (seconds) delays every answer."""

    handler = _ProxyHandler

    def __init__(self, upstream: str, *, rate: float | None = None, latency: float = 0.0) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.refuse_range = False
        self.rate = rate
        self.latency = latency
        self._link_free = 0.0  # monotonic time the shared link is next idle
        super().__init__()

    def requests_to(self, pattern: str) -> list[Seen]:
        return [s for s in self.seen if re.search(pattern, s.path)]

    def bytes_to(self, pattern: str) -> int:
        """Body bytes sent for requests whose path matches ``pattern``."""
        return sum(s.sent for s in self.requests_to(pattern))

    def _pace(self, n: int) -> None:
        if not self.rate:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self._link_free)
            self._link_free = start + n / self.rate
            wait = self._link_free - now
        time.sleep(wait)

    def _write(self, h: _Quiet, seen: Seen, data: bytes) -> None:
        step = 64 << 10
        for i in range(0, len(data), step):
            chunk = data[i : i + step]
            self._pace(len(chunk))
            try:
                h.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):  # the client had enough
                h.close_connection = True
                return
            seen.sent += len(chunk)

    def _take(self, path: str) -> Fault | None:
        with self.lock:
            for i, fault in enumerate(self.faults):
                if re.search(fault.pattern, path):
                    return self.faults.pop(i)
        return None

    def handle(self, h: _Quiet) -> None:
        seen = Seen(h.command, h.path, {k.lower(): v for k, v in h.headers.items()})
        with self.lock:
            self.seen.append(seen)
        length = int(h.headers.get("Content-Length") or 0)
        request_body = h.rfile.read(length) if length else None
        if self.latency:
            time.sleep(self.latency)
        fault = self._take(h.path)
        kind = fault.kind if fault else ""
        if fault is not None and kind == "status":
            error = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "try later"}]})
            seen.status = fault.status
            h.reply(fault.status, error.encode(), fault.headers)
            return
        if kind == "reset":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and kind == "redirect":
            seen.status = 307
            h.reply(307, b"", {"Location": fault.location})
            return
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_BY_HOP}
        if request_body is not None:
            headers["Content-Length"] = str(len(request_body))
        if kind == "ignore_range" or (self.refuse_range and "/blobs/sha256:" in h.path):
            headers = {k: v for k, v in headers.items() if k.lower() != "range"}
        if fault is not None and kind == "shift_range":
            m = re.fullmatch(r"bytes=(\d+)-(\d+)", h.headers.get("Range", ""))
            if m is not None:
                a, b = int(m.group(1)) + fault.at, int(m.group(2)) + fault.at
                headers = {k: v for k, v in headers.items() if k.lower() != "range"}
                headers["Range"] = f"bytes={a}-{b}"
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            conn.request(h.command, h.path, body=request_body, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            status, upstream_headers = resp.status, resp.getheaders()
        finally:
            conn.close()
        if fault is not None and kind == "flip" and len(body) > fault.at:
            body = body[: fault.at] + bytes([body[fault.at] ^ 0xFF]) + body[fault.at + 1 :]
        seen.status = status
        h.send_response(status)
        for k, v in upstream_headers:
            if k.lower() not in _HOP_BY_HOP and k.lower() not in ("date", "server"):
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command == "HEAD":
            return
        if fault is not None and kind == "cut":
            self._write(h, seen, body[: fault.at])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        self._write(h, seen, body)


# -- storage behind a redirect --------------------------------------------------------------


class _StorageHandler(_Quiet):
    def do_GET(self) -> None:
        owner: StorageServer = self.owner
        owner.seen.append(Seen("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
        path = urlsplit(self.path).path
        data = owner.objects.get(path)
        if path in owner.expired:
            self.reply(403, b"<Error><Code>AccessDenied</Code></Error>")
            return
        if data is None:
            self.reply(404)
            return
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if owner.ranges and m is not None:
            a, b = int(m.group(1)), min(int(m.group(2)), len(data) - 1)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"bytes {a}-{b}/{len(data)}",
            }
            self.reply(206, data[a : b + 1], headers)
            return
        self.reply(200, data, {"Content-Type": "application/octet-stream"})


class StorageServer(_Background):
    """Serves ``objects`` (path -> bytes) like a blob store behind a registry redirect;
    with ``ranges``, closed ``Range`` requests get 206 as from a CDN; paths in ``expired``
    answer 403, as a signed URL past its time does."""

    handler = _StorageHandler

    def __init__(self, *, ranges: bool = False) -> None:
        self.objects: dict[str, bytes] = {}
        self.seen: list[Seen] = []
        self.ranges = ranges
        self.expired: set[str] = set()
        super().__init__()


@dataclass
class TokenSetup:
    registry: Registry
    tokens: TokenServer

    def stop(self) -> None:
        try:
            self.registry.stop()
        finally:
            self.tokens.stop()


def start_token_registry(
    directory: Path, users: dict[str, str], refresh_tokens: dict[str, str] | None = None
) -> TokenSetup:
    """A registry behind a TokenServer made here (docker's bearer token flow)."""
    tokens = TokenServer(directory / "keys", users, refresh_tokens)
    try:
        return TokenSetup(start_registry(directory, auth=tokens.registry_auth()), tokens)
    except BaseException:
        tokens.stop()
        raise
