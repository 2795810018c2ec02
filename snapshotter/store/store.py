"""The content-addressed store: blobs, snapshots by diff_id, images by manifest digest.

Layout under the store root (docs/store.md has the long form)::

    state.json                    images, indexes, names -> digest, layer digest -> diff_id
    lock                          flock: held exclusively while state changes
    journal.json                  present only while a commit is under way
    blobs/sha256/<hex>            manifests and configs, verbatim
    snapshots/sha256/<hex>/       one per diff_id: toc.json.zst + data/
    merged/<chain_id hex>         cached merged trees (rebuilt from tocs when missing)
    mounts/<id>.json              live mounts; each flocked by its daemon while it lives
    tmp/<id>.lock, tmp/<id>/      staging; an entry whose lock is free belongs to the dead

Atomicity: everything a pull makes is staged under ``tmp/`` first.  The commit takes the
lock, writes a journal naming what it is about to add, renames staged snapshots and blobs
into place, then replaces ``state.json`` (the commit point) and drops the journal.  Whoever
takes the lock next and finds a journal removes what it names that ``state.json`` does not
reference, so a pull killed at any instant leaves the store as it was.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
from collections.abc import Collection, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InUse, InvalidReference, NotFound, StoreCorrupt
from ..oci.digest import Digest
from ..oci.model import Platform, chain_ids
from ..oci.reference import Reference
from .toc import TOC_NAME

# Version 2 adds ``indexes``; a state without any is still written as version 1, so a store
# that never saw ``pull --all-platforms`` stays readable by older snapshotters, and one that
# did is refused by them rather than misread (their names could point at an index).
STATE_VERSION = 2
STATE_VERSIONS = (1, 2)


def default_root() -> Path:
    env = os.environ.get("SNAPSHOTTER_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/snapshotter")
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data_home) / "snapshotter"


@dataclass(slots=True)
class LayerRecord:
    digest: str  # the blob as stored (compressed)
    diff_id: str  # the uncompressed tar; names the snapshot
    media_type: str
    size: int  # bytes of the blob
    unpacked_size: int  # bytes of content in the snapshot


@dataclass(slots=True)
class ImageRecord:
    digest: str  # manifest digest: the image's identity in the store
    config: str  # config digest: docker's "image id"
    media_type: str
    platform: str
    layers: list[LayerRecord]  # base first
    created: str
    pulled: str
    source: str

    @property
    def size(self) -> int:
        return sum(layer.unpacked_size for layer in self.layers)

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> ImageRecord:
        layers = [LayerRecord(**layer) for layer in obj["layers"]]  # type: ignore[attr-defined]
        fields = {k: v for k, v in obj.items() if k != "layers"}
        return cls(layers=layers, **fields)  # type: ignore[arg-type]


@dataclass(slots=True)
class IndexEntry:
    digest: str  # manifest digest of an image in ``State.images``
    platform: str  # as the index's descriptor says (else the config), e.g. linux/arm64/v8


@dataclass(slots=True)
class IndexRecord:
    """An image index (or manifest list) kept whole by ``pull --all-platforms``.

    Names may point at it as at an image; the images it lists are ordinary images, shared
    with any other index or name.  ``manifests`` lists only images that are in the store
    (attestations and other non-images of the index are not), in the index's order, which
    is also the order of preference when several match a platform.
    """

    digest: str  # the index blob as the source had it
    media_type: str
    manifests: list[IndexEntry]
    pulled: str
    source: str

    def select(self, want: Platform) -> IndexEntry | None:
        for entry in self.manifests:
            with contextlib.suppress(InvalidReference):
                if Platform.parse(entry.platform).matches(want):
                    return entry
        return None

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> IndexRecord:
        entries = [IndexEntry(**e) for e in obj["manifests"]]  # type: ignore[attr-defined]
        fields = {k: v for k, v in obj.items() if k != "manifests"}
        return cls(manifests=entries, **fields)  # type: ignore[arg-type]


@dataclass(slots=True)
class State:
    images: dict[str, ImageRecord] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # full name -> manifest/index digest
    layers: dict[str, str] = field(default_factory=dict)  # layer digest -> diff_id
    indexes: dict[str, IndexRecord] = field(default_factory=dict)  # index digest -> record

    def names_of(self, digest: str) -> list[str]:
        """The names pointing at ``digest`` (an image or an index) itself."""
        return sorted(n for n, d in self.names.items() if d == digest)

    def indexes_of(self, digest: str) -> list[str]:
        """The indexes that list the image ``digest``."""
        return sorted(
            i for i, r in self.indexes.items() if any(e.digest == digest for e in r.manifests)
        )

    def all_names_of(self, digest: str) -> list[str]:
        """Names that reach the image ``digest``: its own and those of indexes listing it."""
        names = set(self.names_of(digest))
        for index in self.indexes_of(digest):
            names.update(self.names_of(index))
        return sorted(names)

    def reachable(
        self, *, without_names: Collection[str] = (), without_indexes: Collection[str] = ()
    ) -> set[str]:
        """Digests of the images and indexes some name reaches, directly or through an
        index, not counting ``without_names`` and ``without_indexes``.  An image outside
        this set is dangling (``<none>``)."""
        out: set[str] = set()
        for name, digest in self.names.items():
            if name in without_names or digest in without_indexes:
                continue
            out.add(digest)
            index = self.indexes.get(digest)
            if index is not None:
                out.update(e.digest for e in index.manifests)
        return out

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "version": STATE_VERSION if self.indexes else 1,
            "images": {d: asdict(r) for d, r in sorted(self.images.items())},
            "names": dict(sorted(self.names.items())),
            "layers": dict(sorted(self.layers.items())),
        }
        if self.indexes:
            doc["indexes"] = {d: asdict(r) for d, r in sorted(self.indexes.items())}
        return doc

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> State:
        if obj.get("version") not in STATE_VERSIONS:
            raise StoreCorrupt(f"state.json: unknown version {obj.get('version')!r}")
        images = {d: ImageRecord.from_json(r) for d, r in obj["images"].items()}  # type: ignore[attr-defined]
        indexes = {
            d: IndexRecord.from_json(r)
            for d, r in obj.get("indexes", {}).items()  # type: ignore[attr-defined]
        }
        return cls(images, dict(obj["names"]), dict(obj["layers"]), indexes)  # type: ignore[call-overload]


@dataclass(frozen=True, slots=True)
class MountRecord:
    path: Path
    image: str
    diff_ids: tuple[str, ...]
    mountpoint: str
    pid: int


@dataclass(frozen=True, slots=True)
class PruneReport:
    images: list[str]
    snapshots: list[str]
    blobs: list[str]
    freed: int


class Staging:
    """A private directory under tmp/, removed on exit unless its contents were moved."""

    def __init__(self, store: Store):
        store.tmp.mkdir(parents=True, exist_ok=True)
        while True:
            token = secrets.token_hex(8)
            self.lock_path = store.tmp / f"{token}.lock"
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A sweep may have found the new lock file unlocked and removed it before our
            # flock; then the lock guards nothing and we start over.
            try:
                if os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self._lock_fd = fd
        self.path = store.tmp / token
        self.path.mkdir()

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.lock_path.unlink()
        os.close(self._lock_fd)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Store:
    """One store root.  Methods that change state take the lock themselves."""

    def __init__(self, root: Path):
        # Absolute once and for all: a mount's daemon changes to / and must still find it.
        root = Path(os.path.abspath(root))
        self.root = root
        self.blobs = root / "blobs"
        self.snapshots = root / "snapshots"
        self.mounts = root / "mounts"
        self.tmp = root / "tmp"
        self.state_path = root / "state.json"
        self.journal_path = root / "journal.json"

    # -- paths ---------------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        return self.blobs / digest.algorithm / digest.hex

    def snapshot_path(self, diff_id: Digest) -> Path:
        return self.snapshots / diff_id.algorithm / diff_id.hex

    def has_snapshot(self, diff_id: Digest) -> bool:
        return (self.snapshot_path(diff_id) / TOC_NAME).is_file()

    def read_blob(self, digest: Digest) -> bytes:
        return self.blob_path(digest).read_bytes()

    # -- state ---------------------------------------------------------------------------

    def ensure(self) -> None:
        for d in (self.root, self.blobs, self.snapshots, self.mounts, self.tmp):
            d.mkdir(parents=True, exist_ok=True, mode=0o700 if d == self.root else 0o755)

    def read_state(self) -> State:
        """A consistent snapshot of state.json (it is only ever replaced by rename)."""
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return State()
        try:
            return State.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreCorrupt(f"{self.state_path}: unreadable ({exc})") from exc

    def current_state(self) -> State:
        """The committed state for a reader, after tidying up what dead pulls left.

        Recovery needs the store lock, so it is only attempted when there is something to
        recover and the store is writable; otherwise this is a plain ``read_state``.
        """
        try:
            leftovers = self.journal_path.exists() or any(self.tmp.iterdir())
        except FileNotFoundError:
            leftovers = False
        if leftovers and os.access(self.root, os.W_OK):
            with self.locked() as state:
                return state
        return self.read_state()

    def _commit_temp(self, what: str) -> Path:
        """A temp file for a write made under the store lock.

        It lives in tmp/ (same filesystem, so it can be renamed into place), and recovery,
        which runs under the same lock, removes any a killed commit left there.
        """
        self.tmp.mkdir(parents=True, exist_ok=True)
        return self.tmp / f"{what}-{secrets.token_hex(8)}.part"

    def _write_state(self, state: State) -> None:
        tmp = self._commit_temp("state")
        _write_synced(tmp, json.dumps(state.to_json(), indent=1).encode())
        os.rename(tmp, self.state_path)
        _fsync_dir(self.root)

    @contextlib.contextmanager
    def locked(self) -> Iterator[State]:
        """Hold the store lock; recover from any dead commit first; yield the state.

        The caller mutates the yielded state and calls ``save``; nothing is written
        implicitly.
        """
        self.ensure()
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self.read_state()
            self._recover(state)
            yield state
        finally:
            os.close(fd)

    def save(self, state: State) -> None:
        """Replace state.json; call only inside ``locked``."""
        self._write_state(state)

    def _recover(self, state: State) -> None:
        """Undo what a dead commit added beyond the committed state; sweep dead staging."""
        if self.journal_path.exists():
            try:
                added = json.loads(self.journal_path.read_bytes())["added"]
            except (ValueError, KeyError, OSError):
                added = []
            referenced = self._referenced_paths(state)
            for rel in added:
                path = self.root / rel
                if rel in referenced or not _inside(path, self.root):
                    continue
                self._discard(path)
            self.journal_path.unlink()
            _fsync_dir(self.root)
        self.sweep_tmp()

    def sweep_tmp(self) -> None:
        """Remove what dead pulls and dead commits left in tmp/; call under the store lock.

        A staging area ``<id>/`` belongs to whoever holds the flock on ``<id>.lock``; live
        pulls create and remove theirs at any moment (without the store lock), so every
        entry may vanish while we look at it.  Commit temp files (``*.part``) are only
        written under the store lock, so any found here are dead.
        """
        try:
            entries = list(self.tmp.iterdir())
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.suffix == ".lock":
                try:
                    fd = os.open(entry, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
                except FileNotFoundError:
                    continue  # its owner finished meanwhile
                try:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # its owner is alive
                    shutil.rmtree(entry.with_suffix(""), ignore_errors=True)
                    entry.unlink(missing_ok=True)
                finally:
                    os.close(fd)
            elif entry.suffix == ".part":
                entry.unlink(missing_ok=True)
            elif (
                not entry.with_suffix(".lock").exists()
                and entry.is_dir()
                and not entry.is_symlink()
            ):
                shutil.rmtree(entry, ignore_errors=True)

    def _referenced_paths(self, state: State) -> set[str]:
        refs: set[str] = set()
        for image in state.images.values():
            for d in (image.digest, image.config):
                dig = Digest.parse(d)
                refs.add(f"blobs/{dig.algorithm}/{dig.hex}")
            for layer in image.layers:
                dig = Digest.parse(layer.diff_id)
                refs.add(f"snapshots/{dig.algorithm}/{dig.hex}")
        for index_digest in state.indexes:
            dig = Digest.parse(index_digest)
            refs.add(f"blobs/{dig.algorithm}/{dig.hex}")
        return refs

    def _discard(self, path: Path) -> None:
        """Remove a snapshot or blob: first out of sight (rename), then from disk."""
        if not path.exists():
            return
        if path.is_dir():
            self.tmp.mkdir(parents=True, exist_ok=True)
            trash = self.tmp / f"trash-{secrets.token_hex(8)}"
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            path.unlink()

    # -- commit --------------------------------------------------------------------------

    def staging(self) -> Staging:
        self.ensure()
        return Staging(self)

    def commit_image(
        self,
        record: ImageRecord,
        names: Iterable[str],
        staged_snapshots: dict[str, Path],
        blobs: dict[str, bytes],
        layer_map: dict[str, str],
    ) -> list[str]:
        """Atomically add an image and point ``names`` at it.

        ``staged_snapshots`` maps diff_id -> a staged snapshot dir (moved into place unless
        the store already has that snapshot); every other diff_id of the image must already
        be in the store.  Returns the names that moved away from another image.
        """
        return self.commit([record], None, names, staged_snapshots, blobs, layer_map)

    def commit(
        self,
        records: list[ImageRecord],
        index: IndexRecord | None,
        names: Iterable[str],
        staged_snapshots: dict[str, Path],
        blobs: dict[str, bytes],
        layer_map: dict[str, str],
    ) -> list[str]:
        """Atomically add ``records`` (and ``index``, which lists them) in one state write.

        ``names`` point at ``index`` if there is one, else at the single record.  Snapshots
        and blobs follow :meth:`commit_image`'s rules; ``blobs`` must hold every manifest,
        config and the index.  Returns the names that moved away from another digest.
        """
        if index is None and len(records) != 1:
            raise ValueError("records: without an index, commit exactly one image")
        names = list(names)
        with self.locked() as state:
            for diff_id in {d for record in records for d in record.diff_ids}:
                if diff_id not in staged_snapshots and not self.has_snapshot(Digest.parse(diff_id)):
                    raise NotFound(
                        f"snapshot {diff_id} was removed while the pull ran "
                        "(a concurrent prune?); pull again"
                    )
            moves: list[tuple[Path, Path]] = []
            for diff_id, staged in staged_snapshots.items():
                target = self.snapshot_path(Digest.parse(diff_id))
                if not target.exists():
                    moves.append((staged, target))
            writes: list[tuple[Path, bytes]] = []
            for digest, data in blobs.items():
                target = self.blob_path(Digest.parse(digest))
                if not target.exists():
                    writes.append((target, data))
            added = [str(t.relative_to(self.root)) for _, t in moves] + [
                str(t.relative_to(self.root)) for t, _ in writes
            ]
            _write_synced(self.journal_path, json.dumps({"added": added}).encode())
            for staged, target in moves:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staged, target)
            for target, data in writes:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = self._commit_temp("blob")
                _write_synced(tmp, data)
                os.rename(tmp, target)
            named = index.digest if index is not None else records[0].digest
            moved = [n for n in names if state.names.get(n) not in (None, named)]
            for record in records:
                existing = state.images.get(record.digest)
                if existing is not None:
                    record.pulled = existing.pulled
                state.images[record.digest] = record
            if index is not None:
                existing_index = state.indexes.get(index.digest)
                if existing_index is not None:
                    index.pulled = existing_index.pulled
                state.indexes[index.digest] = index
            for name in names:
                state.names[name] = named
            state.layers.update(layer_map)
            self._write_state(state)
            self.journal_path.unlink()
            return moved

    def commit_snapshots(
        self, staged_snapshots: dict[str, Path], layer_map: dict[str, str]
    ) -> None:
        """Move staged snapshots (diff_id -> staged dir) into place with no image naming
        them: the layers a lazy mount fetched whole.  Until an image or a live mount
        references them, ``prune`` removes them; a later ``pull`` of an image with one of
        them reuses it.  The journal makes the moves all or nothing, as in ``commit``."""
        with self.locked() as state:
            moves = [
                (staged, target)
                for diff_id, staged in staged_snapshots.items()
                if not (target := self.snapshot_path(Digest.parse(diff_id))).exists()
            ]
            added = [str(t.relative_to(self.root)) for _, t in moves]
            _write_synced(self.journal_path, json.dumps({"added": added}).encode())
            for staged, target in moves:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staged, target)
            state.layers.update(layer_map)
            self._write_state(state)
            self.journal_path.unlink()

    # -- lookups -------------------------------------------------------------------------

    def resolve(self, state: State, text: str) -> str:
        """NAME, NAME@DIGEST, a digest, or a unique id/digest prefix -> manifest digest, or
        the digest of an index (see :meth:`resolve_image` for the image it stands for)."""
        if "@" in text:
            _, _, digest_text = text.rpartition("@")
            digest = str(Digest.parse(digest_text))
            if digest in state.images or digest in state.indexes:
                return digest
            raise NotFound(f"image {text!r}: no image with digest {digest} in the store")
        for name in _candidate_names(text):
            if name in state.names:
                return state.names[name]
        prefix = text.removeprefix("sha256:")
        if re.fullmatch(r"[0-9a-f]{3,64}", prefix):
            hits = {
                d
                for d, r in state.images.items()
                if Digest.parse(d).hex.startswith(prefix)
                or Digest.parse(r.config).hex.startswith(prefix)
            }
            hits.update(d for d in state.indexes if Digest.parse(d).hex.startswith(prefix))
            if len(hits) == 1:
                return hits.pop()
            if len(hits) > 1:
                raise InvalidReference(f"image {text!r}: prefix matches {len(hits)} images")
        raise NotFound(f"image {text!r}: not in the store (see 'snapshotter images')")

    def resolve_image(
        self, state: State, text: str, platform: Platform | None = None
    ) -> tuple[ImageRecord, IndexRecord | None]:
        """The image ``text`` stands for, and the index it was picked from, if any.

        An index gives its image for ``platform`` (default: the host's), as docker and
        podman pick from a multi-platform image; a plain image must match ``platform`` when
        one is given.
        """
        digest = self.resolve(state, text)
        index = state.indexes.get(digest)
        if index is None:
            record = state.images[digest]
            if platform is not None and not _platform_matches(record.platform, platform):
                raise NotFound(f"image {text!r} is for {record.platform}, not {platform}")
            return record, None
        want = platform or Platform.host()
        entry = index.select(want)
        if entry is None or entry.digest not in state.images:
            available = ", ".join(e.platform for e in index.manifests) or "none"
            raise NotFound(
                f"image {text!r}: index {digest} has no image for platform {want} in the "
                f"store; available: {available} (use --platform)"
            )
        return state.images[entry.digest], index

    def names_for(self, text: str) -> list[str]:
        return _candidate_names(text)

    # -- live mounts -----------------------------------------------------------------------

    def live_mounts(self) -> list[MountRecord]:
        out: list[MountRecord] = []
        if not self.mounts.is_dir():
            return out
        for path in self.mounts.glob("*.json"):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                        raise
                    # Held by a live daemon: it is a mount.
                    doc = json.loads(os.pread(fd, 1 << 20, 0) or b"{}")
                    out.append(
                        MountRecord(
                            path,
                            str(doc.get("image", "")),
                            tuple(doc.get("diff_ids", ())),
                            str(doc.get("mountpoint", "")),
                            int(doc.get("pid", 0)),
                        )
                    )
                else:
                    path.unlink(missing_ok=True)  # its daemon is gone
            except ValueError:
                continue
            finally:
                os.close(fd)
        return out

    # -- removal ---------------------------------------------------------------------------

    def untag(self, state: State, name: str) -> str | None:
        """Drop a name; return the digest of an image that lost its last name, if any."""
        digest = state.names.pop(name)
        return digest if not state.names_of(digest) else None

    def remove_image(self, state: State, digest: str) -> None:
        """Drop an image with its names; indexes that listed it forget it, and an index left
        with no image goes too."""
        for name in state.names_of(digest):
            del state.names[name]
        state.images.pop(digest, None)
        for index_digest in state.indexes_of(digest):
            index = state.indexes[index_digest]
            index.manifests = [e for e in index.manifests if e.digest != digest]
            if not index.manifests:
                self.remove_index(state, index_digest)

    def remove_index(self, state: State, digest: str) -> None:
        """Drop an index with its names; its images stay (dangling if nothing else names
        them)."""
        for name in state.names_of(digest):
            del state.names[name]
        state.indexes.pop(digest, None)

    def collect_garbage(self, state: State) -> PruneReport:
        """Remove snapshots and blobs that no image and no live mount references.

        Call inside ``locked``, after changing ``state``; writes the state first, so a crash
        leaves garbage (removable later), never a dangling reference.
        """
        self._write_state(state)
        keep_snapshots = {d for image in state.images.values() for d in image.diff_ids}
        keep_blobs = {d for image in state.images.values() for d in (image.digest, image.config)}
        keep_blobs.update(state.indexes)
        for mount in self.live_mounts():
            keep_snapshots.update(mount.diff_ids)
        removed_snapshots: list[str] = []
        removed_blobs: list[str] = []
        freed = 0
        for algorithm_dir in _subdirs(self.snapshots):
            for snap in _subdirs(algorithm_dir):
                digest = f"{algorithm_dir.name}:{snap.name}"
                if digest not in keep_snapshots:
                    freed += _disk_usage(snap)
                    self._discard(snap)
                    removed_snapshots.append(digest)
        for algorithm_dir in _subdirs(self.blobs):
            for blob in algorithm_dir.iterdir():
                digest = f"{algorithm_dir.name}:{blob.name}"
                if digest not in keep_blobs:
                    freed += blob.stat().st_size
                    blob.unlink()
                    removed_blobs.append(digest)
        # Cached merged trees: keep those of every layer prefix of a kept image or mount.
        keep_chains: set[str] = set()
        for image in state.images.values():
            keep_chains.update(c.hex for c in chain_ids([Digest.parse(d) for d in image.diff_ids]))
        for mount in self.live_mounts():
            keep_chains.update(c.hex for c in chain_ids([Digest.parse(d) for d in mount.diff_ids]))
        merged_dir = self.root / "merged"
        if merged_dir.is_dir():
            for cached in merged_dir.iterdir():
                if cached.name not in keep_chains:
                    freed += cached.stat().st_size
                    cached.unlink()
        live = {d for d in keep_snapshots if self.has_snapshot(Digest.parse(d))}
        state.layers = {k: v for k, v in state.layers.items() if v in live}
        self._write_state(state)
        return PruneReport([], removed_snapshots, removed_blobs, freed)


def in_use(store: Store) -> dict[str, list[str]]:
    """manifest digest -> mountpoints of live mounts of it."""
    out: dict[str, list[str]] = {}
    for mount in store.live_mounts():
        out.setdefault(mount.image, []).append(mount.mountpoint)
    return out


def check_not_in_use(store: Store, digest: str, text: str) -> None:
    mounts = in_use(store).get(digest)
    if mounts:
        raise InUse(
            f"image {text!r} is in use by the mount at {', '.join(map(repr, mounts))} "
            "(unmount it, or use --force)"
        )


def _platform_matches(recorded: str, want: Platform) -> bool:
    try:
        return Platform.parse(recorded).matches(want)
    except InvalidReference:
        return True  # the config names no platform: nothing to check against


def _candidate_names(text: str) -> list[str]:
    out = []
    with contextlib.suppress(InvalidReference):
        out.append(Reference.parse(text).name())
    if "/" not in text.split(":")[0] or not any(c in text.split("/")[0] for c in ".:"):
        with contextlib.suppress(InvalidReference):
            out.append(Reference.parse(f"localhost/{text}").name())
    return out


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _subdirs(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    return [p for p in path.iterdir() if p.is_dir()]


def _disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total
