"""eStargz layers read through their own TOC: the fixture BuildKit wrote, and layers built
here the way stargz-snapshotter's writer lays them out (each file's content a gzip member
of its own, big files in chunks, the TOC after the tar's end, the 51-byte footer)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import random
import struct
import tarfile
from pathlib import Path
from typing import Any

import pytest

from snapshotter.errors import DigestMismatch, UnsafeArchive
from snapshotter.lazy.estargz import TOC_DIGEST_ANNOTATION, footer_toc_offset, read_index
from snapshotter.lazy.layer_toc import Reader, TocIndex
from snapshotter.oci.digest import Digest
from snapshotter.store.toc import Toc
from snapshotter.store.unpack import scan_layer


class Blob:
    """A blob in memory, read by closed ranges, counting requests and bytes."""

    def __init__(self, data: bytes):
        self.data = bytearray(data)
        self.requests: list[tuple[int, int]] = []

    @property
    def size(self) -> int:
        return len(self.data)

    def read_range(self, first: int, last: int) -> bytes:
        assert 0 <= first <= last < len(self.data), (first, last)
        self.requests.append((first, last))
        return bytes(self.data[first : last + 1])


def footer(toc_offset: int) -> bytes:
    extra = b"SG" + struct.pack("<H", 22) + b"%016xSTARGZ" % toc_offset
    return (
        b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
        + struct.pack("<H", len(extra))
        + extra
        + b"\x01\x00\x00\xff\xff"
        + b"\x00" * 8
    )


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def estargz(
    members: list[tuple[tarfile.TarInfo, bytes]], chunk: int = 256 * 1024
) -> tuple[bytes, str, str]:
    """(blob, diff_id, TOC digest) of an eStargz layer of these entries."""
    out = io.BytesIO()
    plain = hashlib.sha256()

    def member(data: bytes) -> int:
        start = out.tell()
        out.write(gzip.compress(data, mtime=0))
        plain.update(data)
        return start

    entries: list[dict[str, Any]] = []
    kinds = {
        tarfile.DIRTYPE: "dir",
        tarfile.REGTYPE: "reg",
        tarfile.SYMTYPE: "symlink",
        tarfile.LNKTYPE: "hardlink",
        tarfile.CHRTYPE: "char",
        tarfile.FIFOTYPE: "fifo",
    }
    for info, data in members:
        info.size = len(data)
        member(info.tobuf(tarfile.PAX_FORMAT))
        entry: dict[str, Any] = {
            "name": info.name,
            "type": kinds[info.type],
            "mode": info.mode,
            "uid": info.uid,
            "gid": info.gid,
            "modtime": "2024-01-02T03:04:05Z",
        }
        if info.linkname:
            entry["linkName"] = info.linkname
        if info.type == tarfile.CHRTYPE:
            entry["devMajor"], entry["devMinor"] = info.devmajor, info.devminor
        xattrs = {
            k[len("SCHILY.xattr.") :]: base64.b64encode(
                v.encode("utf-8", "surrogateescape")
            ).decode()
            for k, v in info.pax_headers.items()
            if k.startswith("SCHILY.xattr.")
        }
        if xattrs:
            entry["xattrs"] = xattrs
        entries.append(entry)
        if info.type != tarfile.REGTYPE or not data:
            continue
        entry["size"] = len(data)
        entry["digest"] = sha(data)
        pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
        for n, piece in enumerate(pieces):
            payload = piece + (b"\0" * (-len(data) % 512) if n == len(pieces) - 1 else b"")
            at = member(payload)
            target = entry if n == 0 else {"name": info.name, "type": "chunk"}
            target.update(offset=at, chunkOffset=n * chunk, chunkDigest=sha(piece))
            if len(pieces) > 1:
                target["chunkSize"] = len(piece)
            if n:
                entries.append(target)
    member(b"\0" * 1024)
    toc_json = json.dumps({"version": 1, "entries": entries}).encode()
    toc_offset = out.tell()
    toc_info = tarfile.TarInfo("stargz.index.json")
    toc_info.size = len(toc_json)
    member(toc_info.tobuf(tarfile.USTAR_FORMAT) + toc_json + b"\0" * (-len(toc_json) % 512))
    out.write(footer(toc_offset))
    return out.getvalue(), "sha256:" + plain.hexdigest(), sha(toc_json)


def info(name: str, kind: bytes = tarfile.REGTYPE, **kw: Any) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mtime = 1704164645  # the TOC's 2024-01-02T03:04:05Z: a TOC has whole seconds
    ti.mode = kw.pop("mode", 0o644)
    for key, value in kw.items():
        setattr(ti, key, value)
    return ti


BIG = random.Random(7).randbytes(1 << 20) + b"tail"  # five chunks of 256 KiB, incompressible


def members() -> list[tuple[tarfile.TarInfo, bytes]]:
    return [
        (info("etc", tarfile.DIRTYPE, mode=0o755), b""),
        (info("etc/hosts", uid=10, gid=20), b"127.0.0.1 localhost\n"),
        (info("etc/empty"), b""),
        (info("etc/cap", pax_headers={"SCHILY.xattr.user.k": "v\udcff"}), b"x"),
        (info("etc/link", tarfile.SYMTYPE, linkname="hosts", mode=0o777), b""),
        (info("etc/hard", tarfile.LNKTYPE, linkname="etc/hosts"), b""),
        (info("dev", tarfile.DIRTYPE, mode=0o755), b""),
        (info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3), b""),
        (info("var/.wh..wh..opq"), b""),
        (info("var/big", mode=0o600), BIG),
        (info("usr/.wh.gone"), b""),
    ]


def pulled_toc(blob: bytes, diff_id: str, compression: str = "gzip") -> Toc:
    """The toc unpack makes of the same blob (the pass every pull makes)."""

    def content(inode: int, ti: tarfile.TarInfo, src: Any) -> tuple[str, int]:
        h = hashlib.sha256()
        left = ti.size
        while left:
            piece = src.read(min(left, 1 << 16))
            h.update(piece)
            left -= len(piece)
        return sha_hex(h), (ti.size + 4095) // 4096 * 8

    scan = scan_layer(
        io.BytesIO(blob),
        compression=compression,
        diff_id=Digest.parse(diff_id),
        layer_digest=Digest.parse(sha(blob)),
        blob_size=len(blob),
        what="test layer",
        content=content,
    )
    return scan.toc


def sha_hex(h: Any) -> str:
    return "sha256:" + h.hexdigest()


def test_footer() -> None:
    assert footer_toc_offset(footer(4152)) == 4152
    assert len(footer(0)) == 51
    assert footer_toc_offset(footer(4152)[:-1] + b"\x01") == 4152  # (ISIZE is not read)
    assert footer_toc_offset(b"\0" * 51) is None
    assert footer_toc_offset(footer(1).replace(b"STARGZ", b"STARGX")) is None


def test_the_toc_is_the_toc_a_pull_makes() -> None:
    blob, diff_id, toc_digest = estargz(members())
    source = Blob(blob)
    index = read_index(source, diff_id, toc_digest, "layer")
    assert isinstance(index, TocIndex)
    # One closed request: the tail (the TOC and the footer are in the last 512 KiB).
    assert source.requests == [(max(0, len(blob) - 512 * 1024), len(blob) - 1)]
    assert index.toc.entries == pulled_toc(blob, diff_id).entries
    paths = {e.path: e for e in index.toc.entries}
    assert paths["var"].opaque and paths["usr/gone"].is_whiteout
    assert paths["etc/hard"].inode == paths["etc/hosts"].inode
    assert paths["etc/cap"].xattrs == (("user.k", b"v\xff"),)
    assert paths["var/big"].digest == sha(BIG)


def test_every_file_reads_back_chunk_by_verified_chunk() -> None:
    blob, diff_id, toc_digest = estargz(members())
    source = Blob(blob)
    index = read_index(source, diff_id, toc_digest, "layer")
    assert isinstance(index, TocIndex)
    reader = Reader(index, source, keep_bytes=300_000)
    by_path = {e.path: e for e in index.toc.entries}
    want = {"etc/hosts": b"127.0.0.1 localhost\n", "etc/cap": b"x", "var/big": BIG}
    for path, data in want.items():
        entry = by_path[path]
        assert reader.read(entry.inode, entry.size, 0, entry.size) == data
    big = by_path["var/big"]
    assert len(index.chunks[big.inode]) == 5
    # A read inside one chunk fetches that chunk's member only, once.
    source.requests.clear()
    reader = Reader(index, source)
    assert reader.read(big.inode, big.size, 300_000, 4096) == BIG[300_000:304_096]
    assert reader.read(big.inode, big.size, 300_000 + 4096, 4096) == BIG[304_096:308_192]
    assert len(source.requests) == 1
    first, last = source.requests[0]
    assert last - first + 1 < 270_000  # one compressed chunk of 256 KiB, not the blob
    # Across a chunk boundary: both chunks.
    assert reader.read(big.inode, big.size, 262_100, 200) == BIG[262_100:262_300]
    assert reader.read(big.inode, big.size, len(BIG) - 2, 100) == b"il"


def test_a_tampered_chunk_is_refused_and_not_kept() -> None:
    blob, diff_id, toc_digest = estargz(members())
    source = Blob(blob)
    index = read_index(source, diff_id, toc_digest, "layer")
    assert isinstance(index, TocIndex)
    big = next(e for e in index.toc.entries if e.path == "var/big")
    piece = index.chunks[big.inode][2]
    saved = bytes(source.data)
    # Recompress the chunk with one byte changed: valid gzip, wrong content.
    changed = bytearray(BIG[piece.chunk_offset : piece.chunk_offset + piece.size])
    changed[10] ^= 1
    bad = gzip.compress(bytes(changed), mtime=0)
    source.data[piece.offset : piece.end] = bad + b"\0" * (piece.end - piece.offset - len(bad))
    reader = Reader(index, source)
    with pytest.raises(DigestMismatch, match="chunk at"):
        reader.read(big.inode, big.size, piece.chunk_offset, 10)
    assert reader.read(big.inode, big.size, 0, 10) == BIG[:10]  # other chunks still read
    source.data[:] = saved
    assert (
        reader.read(big.inode, big.size, piece.chunk_offset, 10) == BIG[piece.chunk_offset :][:10]
    )


def test_the_toc_must_match_the_manifests_digest() -> None:
    blob, diff_id, toc_digest = estargz(members())
    with pytest.raises(DigestMismatch, match="eStargz TOC has digest"):
        read_index(Blob(blob), diff_id, sha(b"another"), "layer")
    reason = read_index(Blob(blob), diff_id, None, "layer")
    assert reason == f"no {TOC_DIGEST_ANNOTATION} annotation to check its TOC against"
    plain = gzip.compress(b"\0" * 20_000)
    assert read_index(Blob(plain), diff_id, toc_digest, "layer") == "no eStargz footer"


def test_a_toc_beyond_the_tail_costs_a_second_request(monkeypatch: pytest.MonkeyPatch) -> None:
    many = [(info(f"f{i:04d}"), b"%d" % i) for i in range(2000)]
    blob, diff_id, toc_digest = estargz(many)
    monkeypatch.setattr("snapshotter.lazy.estargz.TAIL_READ", 4096)
    source = Blob(blob)
    index = read_index(source, diff_id, toc_digest, "layer")
    assert isinstance(index, TocIndex)
    (first, last), (toc_first, toc_last) = source.requests
    assert (first, last) == (len(blob) - 4096, len(blob) - 1)
    assert (toc_first, toc_last) == (index.toc_offset, first - 1)
    assert len(index.toc.entries) == 2001


@pytest.mark.parametrize(
    "name, error",
    [
        ("../escape", "escapes the layer root"),
        ("etc/link/through", "below symlink"),
    ],
)
def test_hostile_names_in_the_toc(name: str, error: str) -> None:
    hostile = [
        (info("etc", tarfile.DIRTYPE, mode=0o755), b""),
        (info("etc/link", tarfile.SYMTYPE, linkname="/"), b""),
        (info(name), b"x"),
    ]
    blob, diff_id, toc_digest = estargz(hostile)
    with pytest.raises(UnsafeArchive, match=error):
        read_index(Blob(blob), diff_id, toc_digest, "layer")


def test_the_estargz_fixture(fixtures_dir: Path, tmp_path: Path) -> None:
    """BuildKit's eStargz image (dive's test fixture): its TOC, then its one file."""
    with tarfile.open(fixtures_dir / "oci-archive" / "dive--test-oci-estargz-image.tar") as tf:
        tf.extractall(tmp_path, filter="data")
    index_doc = json.loads((tmp_path / "index.json").read_text())
    manifest = json.loads(blob_of(tmp_path, index_doc["manifests"][0]["digest"]))
    config = json.loads(blob_of(tmp_path, manifest["config"]["digest"]))
    layer = manifest["layers"][0]
    blob = blob_of(tmp_path, layer["digest"])
    diff_id = config["rootfs"]["diff_ids"][0]
    source = Blob(blob)
    index = read_index(source, diff_id, layer["annotations"][TOC_DIGEST_ANNOTATION], "fixture")
    assert isinstance(index, TocIndex)
    assert len(source.requests) == 1 and index.toc_offset == 4152
    assert index.toc.entries == pulled_toc(blob, diff_id).entries
    (readme,) = [e for e in index.toc.entries if e.path == "README.md"]
    text = Reader(index, source).read(readme.inode, readme.size, 0, readme.size)
    assert text.startswith(b"# dive\n") and len(text) == 11189 and sha(text) == readme.digest


def blob_of(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.partition(":")[2]).read_bytes()
