"""zstd:chunked layers read through their own TOC.  The layers are written by skopeo
(``--dest-compress-format zstd:chunked``: containers/storage's own writer, Debian's
package) from images built here, and, for the footer formats and hostile TOCs skopeo
would never write, by ``chunked()`` below, laid out as containers/storage's
docs/containers-storage-zstd-chunked.md describes.  The reference is what a pull makes of
the same blob (``scan_layer``), and the eager mount of the same image."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import need_tool, run_in
from test_estargz import Blob
from test_estargz import pulled_toc as estargz_pulled_toc
from test_fusefs import need_fuse
from test_lazy_mount import assert_same_view, cli_mounted

from snapshotter.errors import DigestMismatch, UnsafeArchive
from snapshotter.lazy import zstd_chunked
from snapshotter.lazy.layer_toc import ZSTD_CHUNKED, Chunk, Reader, TocIndex
from snapshotter.lazy.local import open_lazy_layout
from snapshotter.store.store import Store
from snapshotter.store.toc import Toc, TocEntry

NEW = "io.github.containers.zstd-chunked."
OLD = "io.containers.zstd-chunked."
SKIPPABLE = b"\x50\x2a\x4d\x18"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- a writer for what skopeo would not write ----------------------------------------------


def chunked(
    members: list[tuple[tarfile.TarInfo, bytes]],
    *,
    chunk: int = 64 * 1024,
    footer: int = 64,
    prefix: str = NEW,
    edit: Any = None,
    holes: bool = False,
) -> tuple[bytes, str, dict[str, str]]:
    """(blob, diff_id, annotations) of a zstd:chunked layer of these entries: every
    header and every chunk of content a zstd frame of its own, then the TOC, a tar-split
    stand-in and the footer as skippable frames.  ``edit(entries)`` may change the TOC
    entries before they are written (hostile cases).  ``holes``: a chunk of zeros (but the
    first) is a ``zeros`` chunk whose range is empty (its frame is in the tar stream all
    the same: the TOC alone says where holes are)."""
    out = io.BytesIO()
    plain = hashlib.sha256()
    cctx = zstandard.ZstdCompressor()

    def frame(data: bytes) -> int:
        start = out.tell()
        out.write(cctx.compress(data))
        plain.update(data)
        return start

    def skippable(data: bytes) -> int:
        out.write(SKIPPABLE + struct.pack("<I", len(data)))
        at = out.tell()
        out.write(data)
        return at

    kinds = {tarfile.DIRTYPE: "dir", tarfile.REGTYPE: "reg", tarfile.SYMTYPE: "symlink"}
    kinds |= {tarfile.LNKTYPE: "hardlink", tarfile.FIFOTYPE: "fifo"}
    entries: list[dict[str, Any]] = []
    for info, data in members:
        info.size = len(data)
        frame(info.tobuf(tarfile.PAX_FORMAT))
        entry: dict[str, Any] = {
            "type": kinds[info.type],
            "name": info.name,
            "mode": info.mode,
            "uid": info.uid,
            "gid": info.gid,
            "modtime": "2024-01-02T03:04:05.000000250Z",
        }
        if info.linkname:
            entry["linkName"] = info.linkname
        entries.append(entry)
        if info.type != tarfile.REGTYPE or not data:
            continue
        entry |= {"size": len(data), "digest": sha(data)}
        pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
        for n, piece in enumerate(pieces):
            at = frame(piece)
            if n == 0:
                entry["offset"] = at
                if len(pieces) > 1:
                    entry |= {"chunkSize": len(piece), "chunkDigest": sha(piece)}
            else:
                entries.append(
                    {
                        "type": "chunk",
                        "name": info.name,
                        "offset": at,
                        "chunkSize": len(piece),
                        "chunkOffset": n * chunk,
                        "chunkDigest": sha(piece),
                    }
                )
                if holes and not piece.strip(b"\0"):
                    entries[-1] |= {"chunkType": "zeros", "offset": out.tell()}
        entry["endOffset"] = out.tell()
        if len(data) % 512:
            frame(b"\0" * (-len(data) % 512))
    frame(b"\0" * 1024)
    if edit is not None:
        edit(entries)
    toc_json = json.dumps({"version": 1, "entries": entries}).encode()
    packed = cctx.compress(toc_json)
    toc_at = skippable(packed)
    split = cctx.compress(b'{"type":2,"payload":"","position":0}\n')
    split_at = skippable(split)
    numbers = [toc_at, len(packed), len(toc_json), 1]
    if footer == 64:
        numbers += [split_at, len(split), 38]
    magic = b"GNUlInUx" if footer == 64 else b"GnUlInUx"  # as containers/storage spelt it
    skippable(struct.pack(f"<{len(numbers)}Q", *numbers) + magic)
    annotations = {
        prefix + "manifest-checksum": sha(packed),
        prefix + "manifest-position": f"{toc_at}:{len(packed)}:{len(toc_json)}:1",
    }
    return out.getvalue(), "sha256:" + plain.hexdigest(), annotations


def info(name: str, kind: bytes = tarfile.REGTYPE, **kw: Any) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mtime = 1704164645  # 2024-01-02T03:04:05Z, and the TOC's 250 ns in PAX:
    ti.pax_headers = {"mtime": "1704164645.00000025"}
    ti.mode = kw.pop("mode", 0o644)
    for key, value in kw.items():
        setattr(ti, key, value)
    return ti


BIG = random.Random(9).randbytes(300_000) + b"\0" * 200_000 + b"end"


def members() -> list[tuple[tarfile.TarInfo, bytes]]:
    return [
        (info("etc/", tarfile.DIRTYPE, mode=0o755), b""),
        (info("etc/hosts", uid=10, gid=20), b"127.0.0.1 localhost\n"),
        (info("etc/empty"), b""),
        (info("etc/link", tarfile.SYMTYPE, linkname="hosts", mode=0o777), b""),
        (info("etc/hard", tarfile.LNKTYPE, linkname="etc/hosts"), b""),
        (info("var/.wh..wh..opq"), b""),
        (info("var/big", mode=0o600), BIG),
        (info("usr/.wh.gone"), b""),
    ]


def pulled_toc(blob: bytes, diff_id: str) -> Toc:
    """The toc unpack makes of the same blob (the pass every pull makes)."""
    return estargz_pulled_toc(blob, diff_id, "zstd")


def contents(blob: bytes) -> dict[str, bytes]:
    """Every file with content (hardlinks too) of the tar the blob decompresses to."""
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True)
    out = {}
    with tarfile.open(fileobj=io.BytesIO(plain.read()), mode="r:") as tf:
        for ti in tf:
            if ti.isfile() or ti.islnk():
                f = tf.extractfile(ti)
                assert f is not None
                out[ti.name] = f.read()
    return out


def read_all(index: TocIndex, source: Blob) -> dict[str, bytes]:
    reader = Reader(index, source)
    return {
        e.path: reader.read(e.inode, e.size, 0, e.size) for e in index.toc.entries if e.has_data
    }


# -- layers skopeo wrote ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def skopeo_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return skopeo_chunked_layout(tmp_path_factory.mktemp("zstd-chunked"))


def skopeo_chunked_layout(root: Path) -> Path:
    """An image of two layers (hardlinks, symlinks, a fifo, xattrs, fractional mtimes, a
    whiteout and an opaque directory, a 12 MiB file with an 8 MiB hole that
    containers/storage cuts into chunks, one of them of zeros), built here as gzip and
    converted by skopeo to zstd:chunked: the layout ``root/dst``, tag ``t``."""
    skopeo = need_tool("skopeo")
    rnd = random.Random(5)
    big = rnd.randbytes(3 << 20) + b"\0" * (8 << 20) + rnd.randbytes(1 << 20)
    text = b"".join(b"line %d of a text file\n" % i for i in range(200_000))
    base = (
        LayerBuilder()
        .dir("etc", xattrs={"user.k": b"v\xff"})
        .file("etc/a", b"hello\n", mtime=1700000000.25)
        .file("etc/empty")
        .file("big", big, mode=0o755, uid=7, gid=8)
        .file("text", text)
        .hardlink("etc/hl", "etc/a")
        .symlink("etc/sl", "a")
        .dir("d")
        .file("d/x", b"x")
        .fifo("fifo")
    )
    top = LayerBuilder().whiteout("etc/a").opaque("d").file("d/y", b"y" * 100_000)
    top.file("new", b"new\n")
    write_oci_layout(root / "src", {"t": ImageBuilder([base, top])})
    subprocess.run(
        [skopeo, "copy", "-q", "--dest-compress-format", "zstd:chunked"]
        + [f"oci:{root / 'src'}:t", f"oci:{root / 'dst'}:t"],
        check=True,
    )
    return root / "dst"


def layers_of(layout: Path) -> list[tuple[dict[str, Any], bytes, str]]:
    """(descriptor, blob, diff_id) of each layer of the layout's one image."""
    (desc,) = json.loads((layout / "index.json").read_text())["manifests"]
    blob = lambda d: (layout / "blobs/sha256" / d.partition(":")[2]).read_bytes()  # noqa: E731
    manifest = json.loads(blob(desc["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    return [
        (layer, blob(layer["digest"]), diff_id)
        for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True)
    ]


def test_skopeos_layers_give_the_toc_a_pull_makes(skopeo_layout: Path) -> None:
    for desc, blob, diff_id in layers_of(skopeo_layout):
        assert desc["mediaType"].endswith("tar+zstd") and zstd_chunked.is_annotated(
            desc["annotations"]
        )
        source = Blob(blob)
        index = zstd_chunked.read_index(source, desc["annotations"], diff_id, "layer")
        assert isinstance(index, TocIndex) and index.format == ZSTD_CHUNKED
        assert index.toc.entries == pulled_toc(blob, diff_id).entries
        position = zstd_chunked.annotation(desc["annotations"], "manifest-position")
        assert position is not None
        offset, length, _, _ = map(int, position.split(":"))
        # One closed request: the TOC's bytes, named by the descriptor.
        assert source.requests == [(offset, offset + length - 1)]
        assert index.toc_bytes == length


def test_every_file_reads_back_chunk_by_verified_chunk(skopeo_layout: Path) -> None:
    (base, blob, diff_id), _ = layers_of(skopeo_layout)
    source = Blob(blob)
    index = zstd_chunked.read_index(source, base["annotations"], diff_id, "layer")
    assert isinstance(index, TocIndex)
    (big,) = [e for e in index.toc.entries if e.path == "big"]
    chunks = index.chunks[big.inode]
    assert len(chunks) > 3  # containers/storage cut it (rolling checksum)
    assert read_all(index, source) == {k: v for k, v in contents(blob).items() if v}
    # A read in the middle of the big file fetches only the chunks it lies in.
    reader, before = Reader(index, source), len(source.requests)
    at = (3 << 20) + (8 << 20) + 1000
    assert reader.read(big.inode, big.size, at, 10) == contents(blob)["big"][at : at + 10]
    assert len(source.requests) - before == 1
    # The 8 MiB hole (a zeros chunk) is read from nowhere.
    hole = next(c for c in chunks if c.zeros)
    before = len(source.requests)
    assert Reader(index, source).read(big.inode, big.size, hole.chunk_offset, 1 << 20) == bytes(
        1 << 20
    )
    assert len(source.requests) == before


def test_without_the_position_annotation_one_tail_request_finds_the_footer(
    skopeo_layout: Path,
) -> None:
    """skopeo 1.9 writes the 40-byte footer, newer writers the 64-byte one (with the
    tar-split): both are read, under either annotation prefix."""
    (desc, blob, diff_id), _ = layers_of(skopeo_layout)
    checksum = {k: v for k, v in desc["annotations"].items() if k.endswith("manifest-checksum")}
    source = Blob(blob)
    index = zstd_chunked.read_index(source, checksum, diff_id, "layer")
    assert isinstance(index, TocIndex) and len(source.requests) == 1
    assert source.requests[0][1] == len(blob) - 1
    for footer in (64, 40):
        for prefix in (NEW, OLD):
            made, made_diff_id, annotations = chunked(members(), footer=footer, prefix=prefix)
            only = {k: v for k, v in annotations.items() if k.endswith("checksum")}
            for given in (annotations, only):
                source = Blob(made)
                index = zstd_chunked.read_index(source, given, made_diff_id, "layer")
                assert isinstance(index, TocIndex), index
                assert len(source.requests) == 1
                assert index.toc.entries == pulled_toc(made, made_diff_id).entries
                assert read_all(index, source) == {k: v for k, v in contents(made).items() if v}


def test_the_toc_must_match_the_manifests_checksum() -> None:
    blob, diff_id, annotations = chunked(members())
    wrong = dict(annotations)
    wrong[NEW + "manifest-checksum"] = sha(b"another toc")
    with pytest.raises(DigestMismatch, match="zstd:chunked TOC has digest"):
        zstd_chunked.read_index(Blob(blob), wrong, diff_id, "layer")
    # Without a checksum nothing ties the TOC to the image: not read through it.
    unvouched = {k: v for k, v in annotations.items() if not k.endswith("checksum")}
    assert "no zstd:chunked manifest-checksum" in str(
        zstd_chunked.read_index(Blob(blob), unvouched, diff_id, "layer")
    )
    assert (
        zstd_chunked.layer_index(unvouched, zstd_chunked.MEDIA_TYPE, Blob(blob), diff_id, "l")
        is None
    )
    # A plain zstd blob: no footer.
    plain = zstandard.ZstdCompressor().compress(b"\0" * 1024)
    only = {NEW + "manifest-checksum": sha(b"x")}
    assert zstd_chunked.read_index(Blob(plain), only, diff_id, "layer") == "no zstd:chunked footer"


def test_a_tampered_chunk_is_refused_and_not_kept() -> None:
    blob, diff_id, annotations = chunked(members())
    source = Blob(blob)
    index = zstd_chunked.read_index(source, annotations, diff_id, "layer")
    assert isinstance(index, TocIndex)
    (big,) = [e for e in index.toc.entries if e.path == "var/big"]
    second = index.chunks[big.inode][1]
    saved = forge(source, second)
    reader = Reader(index, source)
    with pytest.raises(DigestMismatch):
        reader.read(big.inode, big.size, second.chunk_offset, 100)
    assert reader.read(big.inode, big.size, 0, 100) == BIG[:100]  # other chunks still read
    source.data[second.offset : second.end] = saved
    assert (
        reader.read(big.inode, big.size, second.chunk_offset, 100)
        == BIG[second.chunk_offset : second.chunk_offset + 100]
    )


def _set(key: str, value: object, name: str = "var/big", kind: str = "reg") -> Any:
    def edit(entries: list[dict[str, Any]]) -> None:
        (entry,) = [e for e in entries if e["name"] == name and e["type"] == kind][:1]
        entry[key] = value

    return edit


@pytest.mark.parametrize(
    "edit, error",
    [
        (_set("name", "../escape", name="etc/hosts"), "escapes|outside|\\.\\."),
        (_set("endOffset", 10**9), "not usable"),
        (_set("offset", 10**9, kind="chunk"), "not usable"),
        (_set("chunkOffset", 1, kind="chunk"), "gap"),
        (_set("size", 10**7), "cover"),
        (_set("type", "socket", name="etc/empty"), "unknown type"),
        (_set("mode", -1, name="etc/empty"), "bad 'mode'"),
        (_set("modtime", "yesterday", name="etc/empty"), "bad 'modtime'"),
        (_set("xattrs", {"user.k": "%%%"}, name="etc/empty"), "not base64"),
    ],
)
def test_hostile_tocs_are_refused_in_one_line(edit: Any, error: str) -> None:
    blob, diff_id, annotations = chunked(members(), edit=edit)
    with pytest.raises(UnsafeArchive, match=error) as caught:
        zstd_chunked.read_index(Blob(blob), annotations, diff_id, "layer")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "position, error",
    [
        ("1:2:3", "is not a:b:c:d"),
        ("999999999:10:10:1", "outside the blob"),
        ("8:10:999999999999:1", "larger than"),
    ],
)
def test_a_hostile_position_is_refused(position: str, error: str) -> None:
    blob, diff_id, annotations = chunked(members())
    annotations[NEW + "manifest-position"] = position
    with pytest.raises(UnsafeArchive, match=error):
        zstd_chunked.read_index(Blob(blob), annotations, diff_id, "layer")


def test_a_toc_that_lies_about_its_size_is_refused() -> None:
    blob, diff_id, annotations = chunked(members())
    offset, length, size, kind = annotations[NEW + "manifest-position"].split(":")
    annotations[NEW + "manifest-position"] = f"{offset}:{length}:{int(size) - 1}:{kind}"
    with pytest.raises(UnsafeArchive, match="its position says"):
        zstd_chunked.read_index(Blob(blob), annotations, diff_id, "layer")


# -- mounted ----------------------------------------------------------------------------------


def test_skopeos_image_mounts_lazily_as_it_mounts_eagerly(
    skopeo_layout: Path, tmp_path: Path
) -> None:
    """Both layers are read through their TOCs (whatever their size: one request each),
    nothing is unpacked, and the view equals the eager mount of the pulled image."""
    need_fuse()
    source = f"oci:{skopeo_layout}:t"
    image = open_lazy_layout(Store(tmp_path / "probe"), source)
    assert [layer.how.partition(":")[0] for layer in image.layers] == [
        "indexed (zstd",
        "indexed (zstd",
    ], [layer.how for layer in image.layers]
    eager_root, lazy_root = tmp_path / "eager", tmp_path / "lazy"
    eager, lazy = tmp_path / "mp-eager", tmp_path / "mp-lazy"
    eager.mkdir()
    lazy.mkdir()
    eager_run, lazy_run = run_in(eager_root), run_in(lazy_root)
    assert eager_run("pull", "-q", source, "--name", "chunked:1").rc == 0
    with (
        cli_mounted(eager_run, eager_root, eager, "chunked:1"),
        cli_mounted(lazy_run, lazy_root, lazy, "--lazy", source) as err,
    ):
        lines = err.strip().splitlines()
        assert len(lines) == 2 and all("indexed (zstd:chunked TOC: " in x for x in lines), err
        assert assert_same_view(lazy, eager) >= 10
        assert (lazy / "big").read_bytes() == (eager / "big").read_bytes()
        assert os.getxattr(lazy / "etc", "user.k") == b"v\xff"
    snapshots = lazy_root / "snapshots"
    assert not snapshots.exists() or not any(snapshots.iterdir())


# -- readahead ----------------------------------------------------------------------------


def many_files() -> list[tuple[tarfile.TarInfo, bytes]]:
    rnd = random.Random(11)
    return [(info(f"f/{n:03}"), rnd.randbytes(2000 + n)) for n in range(300)]


def many_files_layer() -> tuple[Blob, TocIndex, list[TocEntry], dict[str, bytes]]:
    """A layer of ``many_files``: its blob, index, files in blob order and contents."""
    blob, diff_id, annotations = chunked(many_files())
    source = Blob(blob)
    index = zstd_chunked.read_index(source, annotations, diff_id, "layer")
    assert isinstance(index, TocIndex)
    files = [e for e in index.toc.entries if e.has_data]
    return source, index, files, {ti.name: data for ti, data in many_files()}


def forge(source: Blob, chunk: Chunk) -> bytes:
    """Put another valid zstd frame, of other bytes, where ``chunk``'s frame was; the
    bytes it replaced."""
    saved = bytes(source.data[chunk.offset : chunk.end])
    forged = zstandard.ZstdCompressor().compress(b"X" * chunk.size)
    source.data[chunk.offset : chunk.end] = forged.ljust(len(saved), b"\0")[: len(saved)]
    return saved


def test_files_read_in_blob_order_share_requests_and_others_do_not() -> None:
    """300 small files: a tree walk in blob order costs a few requests (the readahead
    window grows to 4 MiB); in reverse order, one request each; a single file, one
    request of its own chunk only."""
    source, index, files, expected = many_files_layer()
    assert len(files) == 300

    source.requests.clear()
    reader = Reader(index, source)
    for e in files:
        assert reader.read(e.inode, e.size, 0, e.size) == expected[e.path]
    print(f"\n300 files in blob order: {len(source.requests)} requests")
    assert len(source.requests) <= 10

    source.requests.clear()
    reader = Reader(index, source)
    for e in reversed(files):
        assert reader.read(e.inode, e.size, 0, e.size) == expected[e.path]
    assert len(source.requests) == 300

    source.requests.clear()
    one = files[150]
    assert Reader(index, source).read(one.inode, one.size, 0, one.size) == expected[one.path]
    ((first, last),) = source.requests
    (chunk,) = index.chunks[one.inode]
    assert (first, last) == (chunk.offset, chunk.end - 1)


def test_a_tampered_chunk_read_ahead_is_dropped_not_served() -> None:
    source, index, files, expected = many_files_layer()
    (bad,) = index.chunks[files[20].inode]
    forge(source, bad)
    reader = Reader(index, source)
    for e in files[:20]:  # sequential: the window reaches past file 20
        assert reader.read(e.inode, e.size, 0, e.size) == expected[e.path]
    with pytest.raises(DigestMismatch):
        reader.read(files[20].inode, files[20].size, 0, files[20].size)
    for e in files[21:40]:
        assert reader.read(e.inode, e.size, 0, e.size) == expected[e.path]


def test_holes_are_zeros_read_from_nowhere() -> None:
    """A ``zeros`` chunk (containers/storage's holes) is not fetched, even where its
    range is empty; its zeros are checked against its digest."""
    blob, diff_id, annotations = chunked(members(), holes=True)
    source = Blob(blob)
    index = zstd_chunked.read_index(source, annotations, diff_id, "layer")
    assert isinstance(index, TocIndex)
    (big,) = [e for e in index.toc.entries if e.path == "var/big"]
    holes = [c for c in index.chunks[big.inode] if c.zeros]
    assert len(holes) == 2
    source.requests.clear()
    reader = Reader(index, source)
    at = holes[0].chunk_offset
    assert reader.read(big.inode, big.size, at, 2 * holes[0].size) == bytes(2 * holes[0].size)
    assert source.requests == []
    assert reader.read(big.inode, big.size, 0, big.size) == BIG

    # Holes with no offset at all (omitted, as Go's omitempty leaves a 0): the chunk
    # before them ends where the next data chunk starts.
    def no_offsets(entries: list[dict[str, Any]]) -> None:
        for e in entries:
            if e.get("chunkType") == "zeros":
                del e["offset"]

    blob, diff_id, annotations = chunked(members(), holes=True, edit=no_offsets)
    index = zstd_chunked.read_index(Blob(blob), annotations, diff_id, "layer")
    assert isinstance(index, TocIndex)
    (big,) = [e for e in index.toc.entries if e.path == "var/big"]
    assert Reader(index, Blob(blob)).read(big.inode, big.size, 0, big.size) == BIG

    # a hole whose digest is not that of its zeros
    def lie(entries: list[dict[str, Any]]) -> None:
        hole = next(e for e in entries if e.get("chunkType") == "zeros")
        hole["chunkDigest"] = sha(b"not zeros")

    blob, diff_id, annotations = chunked(members(), holes=True, edit=lie)
    index = zstd_chunked.read_index(Blob(blob), annotations, diff_id, "layer")
    assert isinstance(index, TocIndex)
    (big,) = [e for e in index.toc.entries if e.path == "var/big"]
    with pytest.raises(DigestMismatch, match="a hole of"):
        Reader(index, Blob(blob)).read(big.inode, big.size, 0, big.size)
    with pytest.raises(UnsafeArchive, match="chunk of unknown type"):
        blob, diff_id, annotations = chunked(
            members(), edit=_set("chunkType", "sparkles", name="var/big", kind="chunk")
        )
        zstd_chunked.read_index(Blob(blob), annotations, diff_id, "layer")
