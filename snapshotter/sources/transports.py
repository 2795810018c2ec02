"""Image sources on disk, named with skopeo's transports.

- ``oci:DIR[:TAG]``: an OCI image layout directory (image-layout.md).
- ``oci-archive:FILE[:TAG]``: the same layout as a tar file.
- ``docker-archive:FILE[:NAME:TAG|:@N]``: ``docker save`` output, both the classic layout
  (``manifest.json`` + ``<id>/layer.tar``) and Docker 25+'s OCI-shaped one.
- ``docker://REF``, or a bare ``REF`` resolved the way docker does (``alpine`` is
  ``docker.io/library/alpine:latest``): a registry, through ``registry.RegistryClient``
  (imported only then, so on-disk pulls never load httpx).  With a registries.conf a bare
  short name is resolved by its aliases and unqualified-search-registries instead
  (``registries_conf``); the client takes each image through its mirrors and rewrites.

A transport resolves a reference to one image (picking the manifest for a platform from an
index) and hands out blob readers; it never unpacks anything.  Archives are read in place:
each blob is a byte range of the archive file, opened afresh per reader so layers can be
read by several threads at once.  A gzip- or zstd-compressed archive (``docker save | gzip``)
is first decompressed whole into an unlinked temporary file, as skopeo does.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Protocol

from ..errors import (
    InvalidReference,
    NotFound,
    SnapshotterError,
    UnsupportedMedia,
    reworded,
)
from ..oci.digest import Digest, Readable, verify_bytes
from ..oci.model import (
    ANNOTATION_CONTAINERD_NAME,
    CONFIG_TYPES,
    FOREIGN_LAYER_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_JSON_BLOB,
    MT_DOCKER_CONFIG,
    MT_DOCKER_MANIFEST,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    layer_compression,
    select_platform,
)
from ..oci.reference import Reference, is_tag

TRANSPORTS = ("oci", "oci-archive", "docker-archive", "docker")

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

if TYPE_CHECKING:
    from .registry import RegistryClient, RegistryOptions


class BlobReader(Protocol):
    """What an opener hands out: a stream of one blob's bytes, closed by its reader."""

    def read(self, n: int = -1, /) -> bytes: ...

    def close(self) -> None: ...

    def __enter__(self) -> BlobReader: ...

    def __exit__(self, *exc: object) -> None: ...


Opener = Callable[[], BlobReader]


@dataclass(frozen=True, slots=True)
class SourceRef:
    transport: str
    path: str
    ref: str  # tag, NAME:TAG, @N, or "" for none

    @classmethod
    def parse(cls, text: str) -> SourceRef:
        transport, sep, rest = text.partition(":")
        if not sep or transport not in TRANSPORTS:
            # A bare image reference, as docker pull takes it.
            try:
                Reference.parse(text)
            except InvalidReference:
                raise InvalidReference(
                    f"source {text!r}: neither an image reference nor TRANSPORT:PATH with "
                    f"transport one of {', '.join(TRANSPORTS)}"
                ) from None
            return cls("docker", "", text)
        if transport == "docker":
            if not rest.startswith("//"):
                raise InvalidReference(f"source {text!r}: expected docker://NAME")
            return cls(transport, "", rest[2:])
        path, _, ref = rest.partition(":")
        if not path:
            raise InvalidReference(f"source {text!r}: no path")
        return cls(transport, path, ref)

    def __str__(self) -> str:
        return f"{self.transport}:{self.path}" + (f":{self.ref}" if self.ref else "")


@dataclass(frozen=True, slots=True)
class LayerSource:
    """One layer to read: where its blob is and what it should hash to."""

    index: int  # position in the manifest, base layer first
    media_type: str
    compression: str  # none | gzip | zstd
    digest: Digest | None  # of the blob as stored; None when the source does not say
    size: int | None
    diff_id: Digest
    open: Opener = field(repr=False, compare=False)
    # The manifest's annotations of the layer (an eStargz TOC's digest, for one)
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """One image, resolved and verified up to (not including) its layers."""

    source: str
    manifest_bytes: bytes | None  # None: docker-archive, synthesized once layers are hashed
    manifest_media_type: str
    config_bytes: bytes
    config_digest: Digest
    config: ImageConfig
    layers: tuple[LayerSource, ...]
    names: tuple[str, ...]  # full names the source gives the image (may be empty)
    platform: Platform
    # Called once the layers have been read (a registry client's connections); may be None.
    close: Callable[[], None] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class IndexImage:
    """One image of an index: the platform its descriptor gives (else its config's)."""

    platform: Platform
    image: ResolvedImage


@dataclass(frozen=True, slots=True)
class ResolvedIndex:
    """An image index with every image it lists, each resolved up to its layers
    (``pull --all-platforms``).  Nested indexes are flattened into ``images``."""

    source: str
    index_bytes: bytes  # verbatim, as the source had it
    index_digest: Digest
    media_type: str
    images: tuple[IndexImage, ...]  # in index order; one per manifest digest
    skipped: tuple[str, ...]  # what the index lists that is not an image, e.g. attestations
    names: tuple[str, ...]
    close: Callable[[], None] | None = field(default=None, compare=False, repr=False)


# -- byte ranges of a file -------------------------------------------------------------


class _Section:
    """A read-only view of ``size`` bytes at ``offset`` of a file; owns its descriptor.

    ``source`` is a path, or a descriptor to share (duplicated; reads use pread, so views
    of one descriptor read concurrently without racing on its offset).
    """

    def __init__(self, source: Path | int, offset: int, size: int):
        if isinstance(source, int):
            self._fd = os.dup(source)
        else:
            self._fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        self._pos = offset
        self._left = size
        self.start = offset  # where the view starts in the file, and its length:
        self.size = size  # (a lazy view reads it by ranges through ``fileno``)

    def fileno(self) -> int:
        return self._fd

    def read(self, n: int = -1, /) -> bytes:
        if self._left <= 0:
            return b""
        if n is None or n < 0 or n > self._left:
            n = self._left
        chunk = os.pread(self._fd, n, self._pos)
        self._pos += len(chunk)
        self._left -= len(chunk)
        return chunk

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> _Section:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Files:
    """Read access to a layout's or archive's files by relative path."""

    def opener(self, relpath: str, what: str) -> tuple[Opener, int]:
        raise NotImplementedError

    def exists(self, relpath: str) -> bool:
        raise NotImplementedError

    def read_small(self, relpath: str, what: str) -> bytes:
        opener, size = self.opener(relpath, what)
        if size > MAX_JSON_BLOB:
            raise InvalidReference(f"{what}: {size} bytes is too large for a json document")
        with opener() as f:
            return f.read(size)


class _DirFiles(_Files):
    def __init__(self, root: Path):
        self.root = root

    def opener(self, relpath: str, what: str) -> tuple[Opener, int]:
        path = self.root / relpath
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"{what}: {relpath} is missing from {self.root}") from exc
        return (lambda: _Section(path, 0, size)), size

    def exists(self, relpath: str) -> bool:
        return (self.root / relpath).is_file()


class _TarFiles(_Files):
    """Members of an uncompressed tar archive, by cleaned name, read in place.

    Member names are only keys here: nothing is extracted.  Symlink and hardlink members
    (docker save writes ``<id>/layer.tar -> ../<other>/layer.tar``) resolve to other members
    of the same archive, never to the host.
    """

    def __init__(self, path: Path):
        self.path = path
        self.members: dict[str, tarfile.TarInfo] = {}
        # ``docker save | gzip`` (or zstd): like skopeo, read a decompressed copy, kept in
        # an unlinked temporary file that disappears with us however we end.
        self._copy: IO[bytes] | None = None
        compression = _sniff(lambda: _Section(path, 0, 4))
        if compression != "none":
            self._copy = _decompressed_copy(path, compression)
        try:
            if self._copy is not None:
                self._copy.seek(0)
                tf = tarfile.open(fileobj=self._copy, mode="r:")  # noqa: SIM115
            else:
                tf = tarfile.open(path, mode="r:")  # noqa: SIM115
            with tf:
                for info in tf:
                    self.members[_clean(info.name)] = info
        except tarfile.TarError as exc:
            raise InvalidReference(f"archive {path}: not a readable tar file ({exc})") from exc

    def _resolve(self, relpath: str, what: str) -> tarfile.TarInfo:
        name = _clean(relpath)
        for _ in range(16):
            info = self.members.get(name)
            if info is None:
                raise NotFound(f"{what}: {relpath} is missing from archive {self.path}")
            if info.issym():
                base = PurePosixPath(name).parent
                name = (
                    _clean(str(base / info.linkname))
                    if not info.linkname.startswith("/")
                    else _clean(info.linkname)
                )
            elif info.islnk():
                name = _clean(info.linkname)
            elif info.isreg():
                return info
            else:
                raise NotFound(f"{what}: {relpath} in archive {self.path} is not a file")
        raise NotFound(f"{what}: {relpath} in archive {self.path}: too many levels of links")

    def opener(self, relpath: str, what: str) -> tuple[Opener, int]:
        info = self._resolve(relpath, what)
        offset, size = info.offset_data, info.size
        copy = self._copy  # the opener keeps the decompressed copy open as long as it lives
        if copy is None:
            return (lambda: _Section(self.path, offset, size)), size
        return (lambda: _Section(copy.fileno(), offset, size)), size

    def exists(self, relpath: str) -> bool:
        try:
            self._resolve(relpath, "")
        except NotFound:
            return False
        return True


def _decompressed_copy(path: Path, compression: str) -> IO[bytes]:
    """The whole archive decompressed into an anonymous file under $TMPDIR or /var/tmp."""
    copy = tempfile.TemporaryFile(dir=os.environ.get("TMPDIR") or "/var/tmp")  # noqa: SIM115
    try:
        with open(path, "rb") as raw:
            reader: Readable
            if compression == "gzip":
                from isal import igzip

                reader = igzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[no-untyped-call]
            else:
                import zstandard

                reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            while chunk := reader.read(1 << 20):
                copy.write(chunk)
    except Exception as exc:  # I/O errors and the decompressors' own
        copy.close()
        raise InvalidReference(f"archive {path}: cannot decompress ({compression}): {exc}") from exc
    return copy


def _clean(name: str) -> str:
    parts: list[str] = []
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return "/".join(parts)


def _blob_path(digest: Digest) -> str:
    # Digest.parse guarantees hex is [0-9a-f]{64|128}: this cannot name anything else.
    return f"blobs/{digest.algorithm}/{digest.hex}"


def _read_blob(files: _Files, desc: Descriptor, what: str) -> bytes:
    if desc.data is not None:
        verify_bytes(desc.data, desc.digest, desc.size, what)
        return desc.data
    if desc.size > MAX_JSON_BLOB:
        raise InvalidReference(f"{what} {desc.digest}: {desc.size} bytes is too large")
    try:
        data = files.read_small(_blob_path(desc.digest), f"{what} {desc.digest}")
    except NotFound:
        platform = f" for {desc.platform}" if desc.platform else ""
        raise NotFound(
            f"{what} {desc.digest}{platform} is not in the layout (a sparse index or archive "
            "leaves out platforms)"
        ) from None
    verify_bytes(data, desc.digest, desc.size, what)
    return data


def _sniff(opener: Opener) -> str:
    with opener() as f:
        head = f.read(4)
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


# -- OCI image layouts -------------------------------------------------------------------


def _names_for(desc: Descriptor, default_repository: str) -> tuple[str, ...]:
    """The names an index.json descriptor gives its image, fully qualified."""
    full = desc.annotations.get(ANNOTATION_CONTAINERD_NAME)
    if full:
        try:
            return (Reference.parse(full).name(),)
        except InvalidReference:
            pass
    ref_name = desc.ref_name
    if not ref_name:
        return ()
    try:
        if "/" in ref_name or (":" in ref_name and not is_tag(ref_name)):
            return (Reference.parse(ref_name).name(),)
        if is_tag(ref_name):
            return (Reference.parse(f"{default_repository}:{ref_name}").name(),)
    except InvalidReference:
        pass
    return ()


def _default_repository(path: str) -> str:
    stem = Path(path.rstrip("/")).name
    for suffix in (".tar", ".oci"):
        stem = stem.removesuffix(suffix)
    stem = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("._-") or "image"
    return f"localhost/{stem}"


def _resolve_layout(
    files: _Files,
    tag: str,
    platform: Platform | None,
    source: str,
    repository: str,
    all_platforms: bool = False,
) -> ResolvedImage | ResolvedIndex:
    what = f"{source}: index.json"
    index = Index.parse(files.read_small("index.json", what), what)
    images = [d for d in index.manifests if d.media_type in MANIFEST_TYPES | INDEX_TYPES]
    if tag:
        candidates = [d for d in images if d.ref_name == tag]
        if not candidates:
            tags = sorted({d.ref_name for d in images if d.ref_name})
            raise NotFound(f"{source}: no image tagged {tag!r}; tags: {', '.join(tags) or 'none'}")
    else:
        candidates = images
    if not candidates:
        raise NotFound(f"{source}: the layout lists no images")
    want = platform or Platform.host()
    if len(candidates) == 1:
        desc = candidates[0]
    elif all(d.platform is not None and d.media_type in MANIFEST_TYPES for d in candidates):
        if all_platforms:
            raise NotFound(
                f"{source}: index.json itself lists {len(candidates)} platforms; "
                "--all-platforms needs a tag naming an image index"
            )
        desc = select_platform(Index(index.media_type, tuple(candidates)), want, source)
    else:
        tags = sorted({d.ref_name for d in candidates if d.ref_name})
        raise NotFound(
            f"{source}: the layout holds {len(candidates)} images; name one with :TAG "
            f"(tags: {', '.join(tags) or 'none'})"
        )
    names = _names_for(desc, repository)
    if all_platforms and desc.media_type in INDEX_TYPES:
        index_bytes = _read_blob(files, desc, "image index")

        def image(child: Descriptor, data: bytes) -> ResolvedImage:
            return _from_manifest(files, data, child, (), None, source)

        return _collect_index(
            source,
            index_bytes,
            desc.digest,
            names,
            lambda child: _read_blob(files, child, "image index or manifest"),
            image,
        )
    seen: set[Digest] = set()
    while desc.media_type in INDEX_TYPES:
        if desc.digest in seen or len(seen) > 8:
            raise InvalidReference(f"{source}: image index {desc.digest} nests in a loop")
        seen.add(desc.digest)
        child = Index.parse(_read_blob(files, desc, "image index"), f"{source}: {desc.digest}")
        desc = select_platform(child, want, f"{source}: index {desc.digest}")
    manifest_bytes = _read_blob(files, desc, "manifest")
    return _from_manifest(files, manifest_bytes, desc, names, platform, source)


def _from_manifest(
    files: _Files,
    manifest_bytes: bytes,
    desc: Descriptor,
    names: tuple[str, ...],
    platform: Platform | None,
    source: str,
) -> ResolvedImage:
    def layer_opener(layer: Descriptor) -> Opener:
        return files.opener(_blob_path(layer.digest), f"{source}: layer {layer.digest}")[0]

    return _image(
        source,
        manifest_bytes,
        desc.digest,
        names,
        platform,
        read_config=lambda config: _read_blob(files, config, "config"),
        layer_opener=layer_opener,
    )


def _image(
    source: str,
    manifest_bytes: bytes,
    digest: Digest,
    names: tuple[str, ...],
    platform: Platform | None,
    *,
    read_config: Callable[[Descriptor], bytes],
    layer_opener: Callable[[Descriptor], Opener],
) -> ResolvedImage:
    """One image from its (verified) manifest, whatever the transport: the config read and
    checked against the manifest and ``platform``, each layer given an opener."""
    what = f"{source}: manifest {digest}"
    manifest = Manifest.parse(manifest_bytes, what)
    if manifest.config.media_type not in CONFIG_TYPES:
        raise UnsupportedMedia(
            f"{what}: an artifact (config type {manifest.config.media_type!r}), "
            "not a container image"
        )
    config_bytes = read_config(manifest.config)
    config = ImageConfig.parse(config_bytes, f"{source}: config {manifest.config.digest}")
    _check_platform(config, platform, source)
    if len(config.diff_ids) != len(manifest.layers):
        raise InvalidReference(
            f"{what}: {len(manifest.layers)} layers but the config lists "
            f"{len(config.diff_ids)} diff_ids"
        )
    layers = []
    for i, (layer, diff_id) in enumerate(zip(manifest.layers, config.diff_ids, strict=True)):
        compression = layer_compression(layer, f"{source}: layer {i + 1}")
        opener = layer_opener(layer)
        layers.append(
            LayerSource(
                i,
                layer.media_type,
                compression,
                layer.digest,
                layer.size,
                diff_id,
                opener,
                layer.annotations,
            )
        )
    return ResolvedImage(
        source=source,
        manifest_bytes=manifest_bytes,
        manifest_media_type=manifest.media_type,
        config_bytes=config_bytes,
        config_digest=manifest.config.digest,
        config=config,
        layers=tuple(layers),
        names=names,
        platform=config.platform,
    )


def _check_platform(config: ImageConfig, platform: Platform | None, source: str) -> None:
    if platform is not None and config.platform.os and not config.platform.matches(platform):
        raise NotFound(f"{source}: the image is for {config.platform}, not {platform}")


# -- docker save archives ----------------------------------------------------------------

_HEX_NAME = re.compile(r"(?:^|/)(?:sha256:)?([0-9a-f]{64})(?:\.json|\.tar(?:\.gz|\.zst)?)?$")


def _resolve_docker_archive(
    files: _TarFiles, ref: str, platform: Platform | None, source: str
) -> ResolvedImage:
    what = f"{source}: manifest.json"
    try:
        entries = json.loads(files.read_small("manifest.json", what))
    except NotFound:
        raise NotFound(
            f"{source}: no manifest.json; not a docker-archive (try oci-archive:)"
        ) from None
    except ValueError as exc:
        raise InvalidReference(f"{what}: not valid json ({exc})") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidReference(f"{what}: expected a list of objects")
    if not entries:
        raise NotFound(f"{source}: the archive holds no images")

    def repo_tags(entry: dict[str, object]) -> list[str]:
        tags = entry.get("RepoTags") or []
        return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []

    if ref.startswith("@"):
        try:
            entry = entries[int(ref[1:])]
        except (ValueError, IndexError):
            raise NotFound(f"{source}: no image {ref} (the archive holds {len(entries)})") from None
    elif ref:
        want = Reference.parse(ref).name()
        found = [e for e in entries if want in {_safe_name(t) for t in repo_tags(e)}]
        if not found:
            listed = sorted({t for e in entries for t in repo_tags(e)})
            raise NotFound(
                f"{source}: no image named {ref!r}; names: {', '.join(listed) or 'none'}"
            )
        entry = found[0]
    elif len(entries) == 1:
        entry = entries[0]
    else:
        listed = sorted({t for e in entries for t in repo_tags(e)})
        raise NotFound(
            f"{source}: the archive holds {len(entries)} images; name one with :NAME:TAG "
            f"or :@N (names: {', '.join(listed) or 'none'})"
        )

    config_path = entry.get("Config")
    layer_paths = entry.get("Layers")
    if not isinstance(config_path, str) or not isinstance(layer_paths, list):
        raise InvalidReference(f"{what}: an entry lacks Config or Layers")
    config_bytes = files.read_small(config_path, f"{source}: config")
    config_digest = Digest.of_bytes(config_bytes)
    claimed = _HEX_NAME.search(config_path)
    if claimed and claimed.group(1) != config_digest.hex:
        raise_mismatch = f"{source}: config {config_path!r} hashes to {config_digest}"
        from ..errors import DigestMismatch

        raise DigestMismatch(raise_mismatch)
    config = ImageConfig.parse(config_bytes, f"{source}: config {config_digest}")
    _check_platform(config, platform, source)
    names = tuple(n for n in (_safe_name(t) for t in repo_tags(entry)) if n)

    # Docker 25+ archives also carry the real OCI manifest: prefer it, so the image keeps
    # the manifest digest a registry would show.
    if files.exists("index.json"):
        real = _docker25_manifest(files, config_digest, platform, source)
        if real is not None:
            return real if real.names or not names else _with_names(real, names)

    if len(config.diff_ids) != len(layer_paths):
        raise InvalidReference(
            f"{what}: {len(layer_paths)} layers but the config lists "
            f"{len(config.diff_ids)} diff_ids"
        )
    foreign = _foreign_layers(entry)
    layers = []
    for i, (layer_path, diff_id) in enumerate(zip(layer_paths, config.diff_ids, strict=True)):
        if not isinstance(layer_path, str):
            raise InvalidReference(f"{what}: layer path {layer_path!r} is not a string")
        if str(diff_id) in foreign:
            raise UnsupportedMedia(
                f"{source}: layer {i + 1} ({diff_id}) is a non-distributable (foreign) layer "
                f"{foreign[str(diff_id)]!r}; it is not supported"
            )
        opener, size = files.opener(layer_path, f"{source}: layer {i + 1} ({diff_id})")
        compression = _sniff(opener)
        digest: Digest | None = None
        if layer_path.startswith("blobs/"):
            parts = layer_path.split("/")
            if len(parts) == 3:
                digest = Digest.parse(f"{parts[1]}:{parts[2]}")
        if digest is None and compression == "none":
            digest = diff_id  # the blob is the tar itself
        media_type = {
            "none": "application/vnd.docker.image.rootfs.diff.tar",
            "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
        }[compression]
        layers.append(LayerSource(i, media_type, compression, digest, size, diff_id, opener))
    return ResolvedImage(
        source=source,
        manifest_bytes=None,
        manifest_media_type=MT_DOCKER_MANIFEST,
        config_bytes=config_bytes,
        config_digest=config_digest,
        config=config,
        layers=tuple(layers),
        names=names,
        platform=config.platform,
    )


def _with_names(image: ResolvedImage, names: tuple[str, ...]) -> ResolvedImage:
    from dataclasses import replace

    return replace(image, names=names)


def _safe_name(text: str) -> str:
    try:
        return Reference.parse(text).name()
    except InvalidReference:
        return ""


def _foreign_layers(entry: dict[str, object]) -> dict[str, str]:
    sources = entry.get("LayerSources")
    out: dict[str, str] = {}
    if isinstance(sources, dict):
        for diff_id, desc in sources.items():
            if isinstance(desc, dict) and desc.get("mediaType") in FOREIGN_LAYER_TYPES:
                out[str(diff_id)] = str(desc.get("mediaType"))
    return out


def _docker25_manifest(
    files: _TarFiles, config_digest: Digest, platform: Platform | None, source: str
) -> ResolvedImage | None:
    try:
        index = Index.parse(files.read_small("index.json", source), f"{source}: index.json")
    except (InvalidReference, NotFound):
        return None
    for desc in index.manifests:
        if desc.media_type not in MANIFEST_TYPES or not files.exists(_blob_path(desc.digest)):
            continue
        data = _read_blob(files, desc, "manifest")
        manifest = Manifest.parse(data, f"{source}: manifest {desc.digest}")
        if manifest.config.digest == config_digest:
            names = _names_for(desc, _default_repository(str(files.path)))
            return _from_manifest(files, data, desc, names, platform, source)
    return None


def synthesize_manifest(image: ResolvedImage, layer_digests: list[tuple[Digest, int]]) -> bytes:
    """A Docker schema2 manifest for a docker-archive image, once its layers are hashed."""
    doc = {
        "schemaVersion": 2,
        "mediaType": MT_DOCKER_MANIFEST,
        "config": {
            "mediaType": MT_DOCKER_CONFIG,
            "size": len(image.config_bytes),
            "digest": str(image.config_digest),
        },
        "layers": [
            {"mediaType": layer.media_type, "size": size, "digest": str(digest)}
            for layer, (digest, size) in zip(image.layers, layer_digests, strict=True)
        ],
    }
    return json.dumps(doc, indent=3).encode()


# -- entry point -------------------------------------------------------------------------


def open_source(
    text: str, platform: Platform | None, registry: RegistryOptions | None = None
) -> ResolvedImage:
    """Resolve SOURCE (skopeo syntax) to one image, verified up to its layers."""
    image = _open(text, platform, registry, all_platforms=False)
    assert isinstance(image, ResolvedImage)
    return image


def open_registry_image(
    text: str, platform: Platform | None, client: RegistryClient
) -> tuple[Reference, ResolvedImage]:
    """Resolve ``docker://REF`` or a bare name (as :func:`open_source` does, through
    registries.conf) to one image, asking ``client``, which the caller keeps and closes.
    Returns the reference that was resolved (a short name's candidate that answered)."""
    src = SourceRef.parse(text)
    if src.transport != "docker":
        raise InvalidReference(f"source {text!r}: not a registry image (docker://REF)")
    image = _resolve_name(text, src.ref, platform, client.options, False, client)
    assert isinstance(image, ResolvedImage)
    return Reference.parse(image.source.removeprefix("docker://")), image


def open_registry_all(
    text: str, client: RegistryClient
) -> tuple[Reference, ResolvedImage | ResolvedIndex]:
    """:func:`open_registry_image` for every image ``text`` holds: an index with all its
    images if it names an image index or manifest list, else its one image (``index push
    --all-platforms``).  ``client`` is the caller's, as there."""
    src = SourceRef.parse(text)
    if src.transport != "docker":
        raise InvalidReference(f"source {text!r}: not a registry image (docker://REF)")
    found = _resolve_name(text, src.ref, None, client.options, True, client)
    return Reference.parse(found.source.removeprefix("docker://")), found


def open_source_all(
    text: str, registry: RegistryOptions | None = None
) -> ResolvedImage | ResolvedIndex:
    """Resolve SOURCE to every image it holds: an index with all its images if SOURCE names
    an image index or manifest list, else its one image (``pull --all-platforms``)."""
    return _open(text, None, registry, all_platforms=True)


def _open(
    text: str, platform: Platform | None, registry: RegistryOptions | None, *, all_platforms: bool
) -> ResolvedImage | ResolvedIndex:
    src = SourceRef.parse(text)
    if src.transport == "docker":
        return _resolve_name(text, src.ref, platform, registry, all_platforms)
    path = Path(src.path)
    if src.transport == "oci":
        if not path.is_dir():
            raise NotFound(f"source {text!r}: {path} is not a directory")
        if not (path / "index.json").is_file():
            raise NotFound(f"source {text!r}: {path} has no index.json; not an OCI image layout")
        return _resolve_layout(
            _DirFiles(path),
            src.ref,
            platform,
            str(src),
            _default_repository(src.path),
            all_platforms,
        )
    if not path.is_file():
        raise NotFound(f"source {text!r}: {path} is not a file")
    files = _TarFiles(path)
    if src.transport == "oci-archive":
        if not files.exists("index.json"):
            raise NotFound(f"source {text!r}: no index.json in the archive; not an oci-archive")
        return _resolve_layout(
            files, src.ref, platform, str(src), _default_repository(src.path), all_platforms
        )
    return _resolve_docker_archive(files, src.ref, platform, str(src))


# -- registries ---------------------------------------------------------------------------


def _resolve_name(
    text: str,
    name: str,
    platform: Platform | None,
    options: RegistryOptions | None,
    all_platforms: bool,
    client: RegistryClient | None = None,
) -> ResolvedImage | ResolvedIndex:
    """``docker://NAME`` is NAME as docker reads it (skopeo's and podman's rule); a bare
    NAME is a short name that registries.conf may resolve to one or more candidates,
    tried in order, as podman pulls them."""
    conf = options.registries if options is not None else None
    if text.startswith("docker://") or conf is None:
        return _resolve_registry(Reference.parse(name), platform, options, all_platforms, client)
    resolution = conf.resolve_short_name(name)
    if resolution.rationale in ("qualified", "docker"):
        return _resolve_registry(resolution.candidates[0], platform, options, all_platforms, client)
    failures: list[SnapshotterError] = []
    for ref in resolution.candidates:
        try:
            return _resolve_registry(ref, platform, options, all_platforms, client)
        except SnapshotterError as exc:
            failures.append(exc)
    how = f"short name {name!r} resolved by {resolution.describe()}"
    if len(failures) == 1:
        raise reworded(failures[0], f"{failures[0]} ({how})") from failures[0]
    raise reworded(
        failures[-1], f"{how}: every candidate failed: " + "; ".join(str(f) for f in failures)
    ) from failures[-1]


def _resolve_registry(
    ref: Reference,
    platform: Platform | None,
    options: RegistryOptions | None,
    all_platforms: bool = False,
    given: RegistryClient | None = None,
) -> ResolvedImage | ResolvedIndex:
    """Resolve a registry reference; the result's ``close`` ends its client's connections
    (unless the client was ``given``: its owner closes it)."""
    from dataclasses import replace

    from .registry import DEFAULT_OPTIONS, RegistryClient

    client = given or RegistryClient(options or DEFAULT_OPTIONS)
    close = client.close if given is None else None
    try:
        source = f"docker://{ref}"
        body, media_type, digest = client.manifest(ref)
        names = (ref.name(),) if ref.tag else ()
        if all_platforms and media_type in INDEX_TYPES:

            def fetch(desc: Descriptor) -> bytes:
                child_ref = replace(ref, tag=None, digest=desc.digest)
                data, child_type, _ = client.manifest(child_ref)
                if child_type not in MANIFEST_TYPES | INDEX_TYPES:
                    raise UnsupportedMedia(
                        f"{source}: unsupported manifest media type {child_type!r}"
                    )
                return data

            def child(desc: Descriptor, data: bytes) -> ResolvedImage:
                return _registry_image(client, ref, data, desc.digest, (), None)

            index = _collect_index(source, body, digest, names, fetch, child)
            return replace(index, close=close)
        want = platform or Platform.host()
        seen: set[Digest] = set()
        while media_type in INDEX_TYPES:
            if digest in seen or len(seen) > 8:
                raise InvalidReference(f"{source}: image index {digest} nests in a loop")
            seen.add(digest)
            index_doc = Index.parse(body, f"{source}: index {digest}")
            desc = select_platform(index_doc, want, f"{source}: index {digest}")
            body, media_type, digest = client.manifest(replace(ref, tag=None, digest=desc.digest))
        if media_type not in MANIFEST_TYPES:
            raise UnsupportedMedia(f"{source}: unsupported manifest media type {media_type!r}")
        image = _registry_image(client, ref, body, digest, names, platform)
        return replace(image, close=close)
    except BaseException:
        if close is not None:
            close()
        raise


def _registry_image(
    client: RegistryClient,
    ref: Reference,
    body: bytes,
    digest: Digest,
    names: tuple[str, ...],
    platform: Platform | None,
) -> ResolvedImage:
    """One image manifest from a registry (``body``, verified by the client), its config
    fetched; layers are opened by the caller, through the same client."""

    def layer_opener(layer: Descriptor) -> Opener:
        return lambda: client.open_blob(ref, layer.digest, layer.size)

    return _image(
        f"docker://{ref}",
        body,
        digest,
        names,
        platform,
        read_config=lambda config: client.blob(ref, config.digest, size=config.size),
        layer_opener=layer_opener,
    )


# -- every image of an index ----------------------------------------------------------------

# buildx attaches provenance/SBOM attestations as manifests for platform unknown/unknown,
# marked with this annotation (docker buildx docs, "attestation storage").
_REFERENCE_TYPE = "vnd.docker.reference.type"


def _collect_index(
    source: str,
    index_bytes: bytes,
    index_digest: Digest,
    names: tuple[str, ...],
    fetch: Callable[[Descriptor], bytes],
    image: Callable[[Descriptor, bytes], ResolvedImage],
) -> ResolvedIndex:
    """Resolve every image ``index_bytes`` lists, depth first through nested indexes.

    ``fetch`` returns a child's verified bytes, ``image`` resolves a manifest.  Children
    that are not container images (attestations, artifacts, unknown media types) or whose
    layers cannot be unpacked (non-distributable Windows base layers) are skipped and
    reported; a manifest listed twice is kept once.
    """
    top = Index.parse(index_bytes, f"{source}: index {index_digest}")
    found: dict[Digest, IndexImage] = {}
    skipped: list[str] = []
    seen = {index_digest}

    def walk(index: Index, depth: int) -> None:
        for desc in index.manifests:
            plat = desc.platform
            if desc.annotations.get(_REFERENCE_TYPE) or (
                plat is not None and (plat.os, plat.architecture) == ("unknown", "unknown")
            ):
                skipped.append(f"{desc.digest} ({desc.annotations.get(_REFERENCE_TYPE, plat)})")
                continue
            if desc.media_type in INDEX_TYPES:
                if desc.digest in seen or depth >= 8:
                    raise InvalidReference(f"{source}: image index {desc.digest} nests in a loop")
                seen.add(desc.digest)
                walk(Index.parse(fetch(desc), f"{source}: index {desc.digest}"), depth + 1)
                continue
            if desc.media_type not in MANIFEST_TYPES:
                skipped.append(f"{desc.digest} ({desc.media_type})")
                continue
            if desc.digest in found:
                continue
            data = fetch(desc)
            config = Manifest.parse(data, f"{source}: manifest {desc.digest}").config
            if config.media_type not in CONFIG_TYPES:
                skipped.append(f"{desc.digest} (artifact {config.media_type})")
                continue
            try:
                resolved = image(desc, data)
            except UnsupportedMedia as exc:
                # e.g. Windows images, whose base layers are non-distributable: keep the rest
                where = str(plat) if plat is not None and plat.os else "image"
                why = "non-distributable layers" if "foreign" in str(exc) else "unsupported media"
                skipped.append(f"{desc.digest} ({where}: {why})")
                continue
            if plat is None or not plat.os:
                plat = resolved.platform
            found[desc.digest] = IndexImage(plat, resolved)

    walk(top, 0)
    if not found:
        raise NotFound(
            f"{source}: index {index_digest} lists no container image "
            f"({len(skipped)} other manifests)"
        )
    return ResolvedIndex(
        source=source,
        index_bytes=index_bytes,
        index_digest=index_digest,
        media_type=top.media_type,
        images=tuple(found.values()),
        skipped=tuple(skipped),
        names=names,
    )
