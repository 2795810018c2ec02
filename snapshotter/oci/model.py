"""The OCI data model as plain, frozen records, parsed from untrusted JSON.

Field names follow the image spec's JSON (mediaType -> media_type).  Parsing validates what
later code relies on: digests by grammar, sizes as non-negative integers, and lists as lists;
anything else is an ``InvalidReference``/``UnsupportedMedia`` with the blob named.
"""

from __future__ import annotations

import json
import platform as _platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from ..errors import InvalidReference, NotFound, UnsupportedMedia
from .digest import Digest

# image-spec media-types.md and the Docker schema2 equivalents.
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = frozenset({MT_OCI_INDEX, MT_DOCKER_LIST})
MANIFEST_TYPES = frozenset({MT_OCI_MANIFEST, MT_DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({MT_OCI_CONFIG, MT_DOCKER_CONFIG})

# Layer media types -> compression.  Docker's "rootfs.diff.tar" is uncompressed.
LAYER_COMPRESSION: dict[str, str] = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
}
# Non-distributable ("foreign") layers live outside the image; the spec deprecates them and
# we never fetch from the URLs they carry.
FOREIGN_LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"

# Manifests and configs are small; refuse absurd ones before reading them whole.
MAX_JSON_BLOB = 16 << 20

JSONObject = dict[str, object]


def _obj(value: object, what: str) -> JSONObject:
    if not isinstance(value, dict):
        raise InvalidReference(f"{what}: expected a JSON object")
    return cast(JSONObject, value)


def _str(value: object, what: str, default: str | None = None) -> str:
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise InvalidReference(f"{what}: expected a string, got {type(value).__name__}")
    return value


def _list(value: object, what: str) -> list[object]:
    if value is None:
        return []  # Docker 25.0.0 writes "manifests": null (moby#47210)
    if not isinstance(value, list):
        raise InvalidReference(f"{what}: expected a list")
    return value


def _annotations(value: object, what: str) -> Mapping[str, str]:
    if value is None:
        return {}
    obj = _obj(value, what)
    return {str(k): str(v) for k, v in obj.items()}


def load_json(data: bytes, what: str) -> JSONObject:
    if len(data) > MAX_JSON_BLOB:
        raise InvalidReference(f"{what}: {len(data)} bytes is too large for a json document")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidReference(f"{what}: not valid json ({exc})") from exc
    return _obj(value, what)


@dataclass(frozen=True, slots=True)
class Platform:
    """os/architecture[/variant] as in the image index's platform field."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidReference(f"platform {text!r}: expected OS/ARCH[/VARIANT]")
        return normalize(cls(parts[0], parts[1], parts[2] if len(parts) == 3 else ""))

    @classmethod
    def from_json(cls, value: object, what: str) -> Platform:
        obj = _obj(value, what)
        return cls(
            _str(obj.get("os"), f"{what} os", ""),
            _str(obj.get("architecture"), f"{what} architecture", ""),
            _str(obj.get("variant"), f"{what} variant", ""),
            _str(obj.get("os.version"), f"{what} os.version", ""),
        )

    @classmethod
    def host(cls) -> Platform:
        machine = _platform.machine().lower()
        arch, variant = _MACHINE_TO_ARCH.get(machine, (machine, ""))
        return cls("linux", arch, variant)

    def matches(self, want: Platform) -> bool:
        """Whether this (an image's) platform satisfies ``want`` (what the user asked for)."""
        mine, theirs = normalize(self), normalize(want)
        if (mine.os, mine.architecture) != (theirs.os, theirs.architecture):
            return False
        return not theirs.variant or mine.variant == theirs.variant

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


_MACHINE_TO_ARCH = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i686": ("386", ""),
    "i386": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


def normalize(p: Platform) -> Platform:
    """containerd's platform normalisation: arm64 means v8, arm means v7 unless stated."""
    arch, variant = p.architecture.lower(), p.variant.lower()
    if arch in ("aarch64",):
        arch = "arm64"
    if arch in ("x86_64", "x86-64"):
        arch = "amd64"
    if arch == "arm64" and variant in ("", "8"):
        variant = "v8"
    if arch == "arm" and variant == "":
        variant = "v7"
    return Platform(p.os.lower(), arch, variant, p.os_version)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content descriptor: what a blob is, its digest (as stored), and its size."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    data: bytes | None = None  # inline content (descriptor.md "data"), base64-decoded

    @classmethod
    def from_json(cls, value: object, what: str, default_media_type: str = "") -> Descriptor:
        import base64
        import binascii

        obj = _obj(value, what)
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidReference(f"{what}: size {size!r} is not a non-negative integer")
        inline: bytes | None = None
        if obj.get("data") is not None:
            try:
                inline = base64.b64decode(_str(obj["data"], f"{what} data"), validate=True)
            except binascii.Error as exc:
                raise InvalidReference(f"{what}: inline data is not base64") from exc
        plat = obj.get("platform")
        return cls(
            media_type=_str(obj.get("mediaType"), f"{what} mediaType", default_media_type),
            digest=Digest.parse(obj.get("digest"), what),
            size=size,
            annotations=_annotations(obj.get("annotations"), f"{what} annotations"),
            platform=Platform.from_json(plat, f"{what} platform") if plat is not None else None,
            urls=tuple(_str(u, f"{what} urls") for u in _list(obj.get("urls"), f"{what} urls")),
            data=inline,
        )

    def to_json(self) -> JSONObject:
        out: JSONObject = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            # the image spec's field order, as Go's v1.Platform marshals it
            plat: JSONObject = {"architecture": self.platform.architecture, "os": self.platform.os}
            if self.platform.os_version:
                plat["os.version"] = self.platform.os_version
            if self.platform.variant:
                plat["variant"] = self.platform.variant
            out["platform"] = plat
        return out

    @property
    def ref_name(self) -> str | None:
        return self.annotations.get(ANNOTATION_REF_NAME)


@dataclass(frozen=True, slots=True)
class Index:
    """An image index (OCI) or manifest list (Docker): manifests for several platforms."""

    media_type: str
    manifests: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, data: bytes, what: str) -> Index:
        obj = load_json(data, what)
        media_type = _str(obj.get("mediaType"), f"{what} mediaType", MT_OCI_INDEX)
        manifests = tuple(
            Descriptor.from_json(d, f"{what} manifests[{i}]", MT_OCI_MANIFEST)
            for i, d in enumerate(_list(obj.get("manifests"), f"{what} manifests"))
        )
        return cls(media_type, manifests)


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest: one config and the layers, base first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, data: bytes, what: str) -> Manifest:
        obj = load_json(data, what)
        if obj.get("schemaVersion") not in (2, None):
            raise UnsupportedMedia(f"{what}: schemaVersion {obj.get('schemaVersion')!r}")
        media_type = _str(obj.get("mediaType"), f"{what} mediaType", MT_OCI_MANIFEST)
        if media_type in INDEX_TYPES or "manifests" in obj:
            raise UnsupportedMedia(f"{what}: is an image index, not a manifest")
        if "config" not in obj:
            raise InvalidReference(f"{what}: manifest has no config")
        config = Descriptor.from_json(obj.get("config"), f"{what} config", MT_OCI_CONFIG)
        layers = tuple(
            Descriptor.from_json(d, f"{what} layers[{i}]", "")
            for i, d in enumerate(_list(obj.get("layers"), f"{what} layers"))
        )
        return cls(media_type, config, layers)


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The parts of an image config we use; the blob itself is kept verbatim in the store."""

    platform: Platform
    diff_ids: tuple[Digest, ...]
    created: str
    history: tuple[JSONObject, ...]

    @classmethod
    def parse(cls, data: bytes, what: str) -> ImageConfig:
        obj = load_json(data, what)
        rootfs = _obj(obj.get("rootfs", {}), f"{what} rootfs")
        diff_ids = tuple(
            Digest.parse(d, f"{what} rootfs.diff_ids[{i}]")
            for i, d in enumerate(_list(rootfs.get("diff_ids"), f"{what} rootfs.diff_ids"))
        )
        history = tuple(
            _obj(h, f"{what} history") for h in _list(obj.get("history"), f"{what} history")
        )
        created = obj.get("created")
        return cls(
            platform=Platform(
                _str(obj.get("os"), f"{what} os", ""),
                _str(obj.get("architecture"), f"{what} architecture", ""),
                _str(obj.get("variant"), f"{what} variant", ""),
            ),
            diff_ids=diff_ids,
            created=created if isinstance(created, str) else "",
            history=history,
        )


def layer_compression(desc: Descriptor, what: str) -> str:
    """'none', 'gzip' or 'zstd' for a layer descriptor; clear errors for everything else."""
    if desc.media_type in FOREIGN_LAYER_TYPES:
        raise UnsupportedMedia(
            f"{what} {desc.digest}: non-distributable (foreign) layer {desc.media_type!r} "
            "is not supported"
        )
    compression = LAYER_COMPRESSION.get(desc.media_type)
    if compression is None:
        raise UnsupportedMedia(f"{what} {desc.digest}: unsupported media type {desc.media_type!r}")
    return compression


def chain_ids(diff_ids: Sequence[Digest]) -> list[Digest]:
    """ChainID of each prefix of the layer stack (image-spec config.md#layer-chainid)."""
    out: list[Digest] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append(Digest.of_bytes(f"{out[-1]} {diff_id}".encode()))
    return out


def select_platform(index: Index, want: Platform, what: str) -> Descriptor:
    """The manifest of ``index`` for ``want``; NotFound lists what is available."""
    candidates = [
        d
        for d in index.manifests
        if d.media_type in MANIFEST_TYPES | INDEX_TYPES
        and d.platform is not None
        and d.platform.matches(want)
    ]
    if candidates:
        return candidates[0]
    available = sorted(
        {str(d.platform) for d in index.manifests if d.platform is not None and d.platform.os}
        - {"unknown/unknown"}
    )
    raise NotFound(
        f"{what}: no manifest for platform {want}; available: {', '.join(available) or 'none'}"
    )
