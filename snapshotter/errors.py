"""The one exception tree of snapshotter.

Library code raises these; only ``cli.main`` turns them into a one-line message and an exit
status.  Messages are lower case, context first, the offending value quoted:
``layer sha256:ab12…: path '../etc/passwd' escapes the layer root``.
"""

from __future__ import annotations


class SnapshotterError(Exception):
    """Base of every error snapshotter reports to users."""


class InvalidReference(SnapshotterError):
    """A transport reference, image name, digest string or platform did not parse."""


class NotFound(SnapshotterError):
    """An image, tag, blob or platform that was asked for does not exist."""


class DigestMismatch(SnapshotterError):
    """Content did not hash to (or was not the size of) what its descriptor promised."""


class UnsafeArchive(SnapshotterError):
    """A layer tar tried something no honest layer does: escaping its root, and the like."""


class UnsupportedMedia(SnapshotterError):
    """A media type (foreign layer, unknown compression, artifact) we do not import."""


class InUse(SnapshotterError):
    """The image or store is held by a live mount or another process."""


class InvalidConfig(SnapshotterError):
    """A setting did not parse: a CI rule of ``wasted``, a ``.dive-ci`` file, a
    registries.conf."""


class Blocked(SnapshotterError):
    """registries.conf forbids pulling an image (``blocked = true``); never retried."""


class StoreCorrupt(SnapshotterError):
    """The store on disk is not in a state this version understands."""


class RegistryError(SnapshotterError):
    """A registry answered with an error (status and distribution error code attached)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class RangeNotSupported(RegistryError):
    """An endpoint answered a ``Range`` request with the whole blob (200) or with other
    bytes than those asked for: it cannot serve a lazy view; fetch the blob whole."""


def reworded(exc: SnapshotterError, message: str) -> SnapshotterError:
    """An error of ``exc``'s kind saying ``message`` (a ``RegistryError`` keeps its status
    and code): to add what else was tried, such as mirrors, to the error that counts."""
    if isinstance(exc, RegistryError):
        return RegistryError(message, status=exc.status, code=exc.code)
    try:
        return type(exc)(message)
    except TypeError:  # a subclass with another signature: keep it as it is
        return exc
