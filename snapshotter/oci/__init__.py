"""The OCI vocabulary: digests, references, and the image spec's records.

Pure and small; imports nothing of snapshotter but ``errors``.

- ``digest``: ``Digest`` (parsed once, round-trips through ``str``) and verifying readers.
- ``reference``: docker's image names (``Reference``), familiar forms, tag grammar.
- ``model``: ``Descriptor``, ``Manifest``, ``Index``, ``ImageConfig``, ``Platform``,
  media types and ``chain_ids``, parsed from untrusted JSON.
"""

from .digest import Digest
from .model import (
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    chain_ids,
)
from .reference import Reference

__all__ = [
    "Descriptor",
    "Digest",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "Reference",
    "chain_ids",
]
