"""Content digests: parsing by the OCI grammar, hashing, and verifying readers.

A digest string from an image is untrusted input: it is parsed here, once, against the
grammar of the image spec (descriptor.md#digests) and only the registered algorithms are
accepted, with their exact encoded lengths.  Code elsewhere uses ``Digest.hex`` to build
paths; because the hex part is checked to be lowercase hex of the right length, a digest can
never name a path outside the directory it is joined to (containers/image CVE-2024-3727).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from ..errors import DigestMismatch, InvalidReference

# algorithm -> (length of the lowercase hex encoding, hashlib name)
_ALGORITHMS: dict[str, tuple[int, str]] = {
    "sha256": (64, "sha256"),
    "sha512": (128, "sha512"),
}

# descriptor.md: digest ::= algorithm ":" encoded
_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A parsed, validated content digest such as ``sha256:e3b0…``."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: object, what: str = "") -> Digest:
        """Parse by the OCI grammar; ``what`` says where the text came from, for errors."""
        at = f"{what}: " if what else ""
        if not isinstance(text, str):
            raise InvalidReference(f"{at}digest {text!r}: not a string")
        if len(text) > 256 or not _GRAMMAR.match(text):
            raise InvalidReference(f"{at}digest {text[:100]!r}: not a valid digest")
        algorithm, _, encoded = text.partition(":")
        known = _ALGORITHMS.get(algorithm)
        if known is None:
            raise InvalidReference(
                f"{at}digest {text[:100]!r}: unsupported algorithm {algorithm!r}"
            )
        length, _ = known
        if len(encoded) != length or not all(c in "0123456789abcdef" for c in encoded):
            raise InvalidReference(
                f"{at}digest {text[:100]!r}: {algorithm} needs {length} lowercase hex digits"
            )
        return cls(algorithm, encoded)

    @classmethod
    def of_bytes(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(_ALGORITHMS[algorithm][1], data).hexdigest())

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(_ALGORITHMS[self.algorithm][1])

    def short(self) -> str:
        """The first 12 hex digits, as docker shows image ids."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def sha256_hasher() -> hashlib._Hash:
    return hashlib.sha256()


def verify_bytes(data: bytes, expected: Digest, size: int | None, what: str) -> None:
    """Raise DigestMismatch unless ``data`` has the expected digest (and size, if given)."""
    if size is not None and len(data) != size:
        raise DigestMismatch(f"{what} {expected}: size {len(data)} differs from descriptor {size}")
    h = expected.hasher()
    h.update(data)
    actual = Digest(expected.algorithm, h.hexdigest())
    if actual != expected:
        raise DigestMismatch(f"{what} {expected}: content hashes to {actual}")


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class ReaderBase:
    """What a ``read(n)`` stream needs to also serve ``io.BufferedReader`` and tarfile."""

    def read(self, n: int = -1, /) -> bytes:
        raise NotImplementedError

    def readinto(self, buffer: bytearray | memoryview) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def readable(self) -> bool:
        return True


class VerifyingReader(ReaderBase):
    """Wraps a stream; hashes and counts every byte read; ``verify()`` checks at the end.

    ``read`` also refuses to run past ``size`` bytes, so a blob that is longer than its
    descriptor fails early instead of filling the disk.  Callers must read to EOF (or call
    ``drain``) before ``verify``.
    """

    def __init__(self, raw: Readable | BinaryIO, expected: Digest, size: int | None, what: str):
        self._raw = raw
        self.expected = expected
        self.size = size
        # Callers often name the blob by its digest already ("layer 2 sha256:..."): say it once.
        self.what = what if str(expected) in what else f"{what} {expected}"
        self._hash = expected.hasher()
        self.count = 0

    def read(self, n: int = -1, /) -> bytes:
        if n is None or n < 0:
            n = 1 << 20
        chunk = self._raw.read(n)
        if chunk:
            self.count += len(chunk)
            if self.size is not None and self.count > self.size:
                raise DigestMismatch(f"{self.what}: longer than descriptor size {self.size}")
            self._hash.update(chunk)
        return chunk

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def verify(self) -> None:
        if self.size is not None and self.count != self.size:
            raise DigestMismatch(
                f"{self.what}: size {self.count} differs from descriptor {self.size}"
            )
        actual = Digest(self.expected.algorithm, self._hash.hexdigest())
        if actual != self.expected:
            raise DigestMismatch(f"{self.what}: content hashes to {actual}")
