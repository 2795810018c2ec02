"""Image names: ``[domain/]path[:tag][@digest]``, normalised the way docker does.

``alpine`` is ``docker.io/library/alpine:latest``; ``localhost/x`` and ``registry:5000/x``
keep their domain.  The store keeps full names; ``familiar`` gives docker's short display.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidReference
from .digest import Digest

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAINS = ("index.docker.io", "registry-1.docker.io")
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Reference:
    domain: str
    path: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        if not text or len(text) > 512:
            raise InvalidReference(f"image name {text[:80]!r}: empty or too long")
        rest, digest = text, None
        if "@" in rest:
            rest, _, digest_text = rest.partition("@")
            digest = Digest.parse(digest_text)
        tag = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG.match(tag):
                raise InvalidReference(f"image name {text!r}: invalid tag {tag!r}")
        first, sep, remainder = rest.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
            domain, path = first, remainder
        else:
            domain, path = DEFAULT_DOMAIN, rest
        if domain in LEGACY_DOMAINS:
            domain = DEFAULT_DOMAIN
        if not _DOMAIN.match(domain):
            raise InvalidReference(f"image name {text!r}: invalid registry {domain!r}")
        if domain == DEFAULT_DOMAIN and "/" not in path:
            path = f"library/{path}"
        if not _PATH.match(path):
            raise InvalidReference(
                f"image name {text!r}: repository {path!r} must be lowercase "
                "letters, digits and separators"
            )
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(domain, path, tag, digest)

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}"

    def name(self) -> str:
        """``repository:tag``, the key names are stored under (no digest part)."""
        return f"{self.repository}:{self.tag or DEFAULT_TAG}"

    def __str__(self) -> str:
        out = self.repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def familiar_repository(repository: str) -> str:
    """docker's short form: ``docker.io/library/alpine`` -> ``alpine``."""
    if repository.startswith(f"{DEFAULT_DOMAIN}/library/"):
        return repository[len(f"{DEFAULT_DOMAIN}/library/") :]
    if repository.startswith(f"{DEFAULT_DOMAIN}/"):
        return repository[len(f"{DEFAULT_DOMAIN}/") :]
    return repository


def split_name(name: str) -> tuple[str, str]:
    """``repository:tag`` of a stored name -> (repository, tag)."""
    repository, _, tag = name.rpartition(":")
    return repository, tag


def is_tag(text: str) -> bool:
    return bool(_TAG.match(text))


def reference_pattern(pattern: str) -> re.Pattern[str]:
    """A compiled ``images --filter reference=PATTERN``: docker matches it with Go's
    path.Match, so '*' and '?' do not cross '/'."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")
