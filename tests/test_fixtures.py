"""Every real archive and layout in ../shared/fixtures imports, or fails as its README says.

For each image that imports, skopeo (an independent reader) copies the same source to an OCI
layout, GNU tar extracts each of its layers, and every entry of our snapshot must equal what
GNU tar made of the layer: type, mode, owner, size, content, mtime (ns), link target,
device numbers, xattrs, hardlink groups, whiteouts and opaque markers.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import zstandard
from conftest import need_root, need_tool, tree_state
from oracle import assert_same_tree, decompress_to, gnu_tar_tree, oci_layers, snapshot_tree

from snapshotter.oci.digest import Digest
from snapshotter.store.store import Store

DA, OA, OL, SY = "docker-archive", "oci-archive", "oci-layout", "synthetic"

# (transport, fixture file, ref, ref for skopeo (None: the same), names, platform, layers)
IMPORTS = [
    (
        "docker-archive",
        f"{DA}/containers-image--almostempty.tar",
        "",
        "",
        ["docker.io/library/emptyimage:latest"],
        "linux/amd64",
        1,
    ),
    (
        "docker-archive",
        f"{DA}/container-inspector--she-image_from_scratch-1.0.tar",
        "",
        "",
        ["docker.io/she/image_from_scratch:1.0"],
        "linux/amd64",
        4,
    ),
    (
        "docker-archive",
        f"{DA}/osv-scalibr--symlinks.tar",
        "",
        "",
        ["docker.io/library/symlinks:latest"],
        "linux/amd64",
        2,
    ),
    (
        "docker-archive",
        f"{DA}/ggcr--test_link.tar",
        "bazel/v1/tarball:test_image_3",
        "bazel/v1/tarball:test_image_3",
        ["docker.io/bazel/v1/tarball:test_image_3"],
        "linux/amd64",
        2,
    ),
    (
        "docker-archive",
        f"{DA}/ggcr--test_link.tar",
        "@0",
        "@0",
        ["docker.io/bazel/v1/tarball:test_image_1"],
        "linux/amd64",
        1,
    ),
    (
        "docker-archive",
        f"{DA}/ggcr--whiteout_image.tar",
        "",
        "",
        ["docker.io/bazel/pkg/v1/mutate:whiteout_image"],
        "linux/amd64",
        3,
    ),
    (
        "docker-archive",
        f"{DA}/ggcr--whiteout_dir.tar",
        "",
        "",
        ["localhost:5000/whiteout:latest"],
        "linux/amd64",
        4,
    ),
    (
        "docker-archive",
        f"{DA}/snyk--hello-world-docker24.tar",
        "",
        "",
        ["docker.io/library/hello-world:latest"],
        "linux/arm64",
        1,
    ),
    (
        "docker-archive",
        f"{DA}/snyk--hello-world-docker25.tar",
        "",
        "",
        ["docker.io/library/hello-world:latest"],
        "linux/amd64",
        1,
    ),
    (
        "oci-archive",
        f"{DA}/snyk--hello-world-docker25.tar",
        "",
        "",
        ["docker.io/library/hello-world:latest"],
        "linux/amd64",
        1,
    ),
    ("docker-archive", f"{DA}/ggcr--hello-world-v25.tar", "", "", [], "linux/arm64", 1),
    ("docker-archive", f"{DA}/snyk--skopeo-nodes-fake-multi.tar", "", "", [], "linux/amd64", 2),
    (
        "docker-archive",
        f"{DA}/oras-go--hello-world-containerd.tar",
        "",
        "",
        ["docker.io/library/hello-world:latest"],
        "linux/amd64",
        1,
    ),
    (
        "oci-archive",
        f"{DA}/oras-go--hello-world-containerd.tar",
        "",
        None,
        ["docker.io/library/hello-world:latest"],
        "linux/amd64",
        1,
    ),
    ("oci-archive", f"{OA}/dive--test-oci-gzip-image.tar", "", "", [], "linux/arm64", 1),
    ("oci-archive", f"{OA}/dive--test-oci-zstd-image.tar", "", "", [], "linux/arm64", 1),
    ("oci-archive", f"{OA}/dive--test-oci-estargz-image.tar", "", "", [], "linux/arm64", 1),
    ("oci-archive", f"{OA}/dive--test-oci-uncompressed-image.tar", "", "", [], "linux/arm64", 1),
    (
        "oci",
        f"{OL}/regclient--testrepo",
        "v3",
        None,
        ["localhost/regclient--testrepo:v3"],
        "linux/amd64",
        5,
    ),
    (
        "oci",
        f"{OL}/regclient--testrepo",
        "v1",
        None,
        ["localhost/regclient--testrepo:v1"],
        "linux/amd64",
        2,
    ),
    (
        "oci",
        f"{OL}/regclient--testrepo",
        "b1",
        None,
        ["localhost/regclient--testrepo:b1"],
        "linux/amd64",
        1,
    ),
    (
        "oci",
        f"{OL}/stereoscope--multiplatform_oci_dir",
        "",
        None,
        ["docker.io/library/multi-platform:latest"],
        "linux/amd64",
        1,
    ),
    (
        "docker-archive",
        f"{SY}/oras-go--hello-world-prefixed-path.tar",
        "",
        "",
        ["docker.io/library/hello-world:latest"],
        "linux/amd64",
        1,
    ),
]

# (source, extra args, what the one-line error must say)
REFUSALS = [
    (f"docker-archive:{SY}/ggcr-pr889--foreign.tar", [], "non-distributable (foreign) layer"),
    (f"docker-archive:{SY}/ggcr-pr889--sparse_foreign.tar", [], "non-distributable (foreign)"),
    (
        f"oci-archive:{DA}/oras-go--hello-world-containerd.tar",
        ["--platform", "linux/arm64"],
        "for linux/arm64/v8 is not in the layout",
    ),
    (
        f"oci-archive:{DA}/oras-go--hello-world-containerd.tar",
        ["--platform", "linux/sparc"],
        "available: linux/386, linux/amd64",
    ),
    (f"oci-archive:{DA}/ggcr--hello-world-v25.tar", [], "lists no images"),
    (f"oci:{OL}/regclient--testrepo", [], "name one with :TAG"),
    (f"oci:{OL}/regclient--testrepo:a1", [], "an artifact"),
    (f"oci:{OL}/regclient--testrepo:nosuchtag", [], "no image tagged 'nosuchtag'"),
    (f"docker-archive:{DA}/ggcr--test_link.tar", [], "holds 2 images"),
    (
        f"oci-archive:{OA}/dive--test-oci-gzip-image.tar",
        ["--platform", "linux/amd64"],
        "is for linux/arm64",
    ),
]


def _source(fixtures_dir: Path, transport: str, rel: str, ref: str) -> str:
    return f"{transport}:{fixtures_dir / rel}" + (f":{ref}" if ref else "")


@pytest.mark.parametrize(
    "transport,rel,ref,skopeo_ref,names,platform,layers",
    IMPORTS,
    ids=[f"{t}:{Path(r).name}:{ref}" for t, r, ref, *_ in IMPORTS],
)
def test_fixture_imports_and_matches_gnu_tar(
    fixtures_dir,
    cli,
    store_root,
    tmp_path,
    transport,
    rel,
    ref,
    skopeo_ref,
    names,
    platform,
    layers,
):
    source = _source(fixtures_dir, transport, rel, ref)
    result = cli("pull", "--json", "--quiet", source)
    assert result.rc == 0, result.err
    doc = json.loads(result.out)
    assert doc["names"] == names
    assert doc["platform"] == platform
    assert doc["layers"] == layers
    listed = json.loads(cli("images", "--json").out)
    assert [i["digest"] for i in listed] == [doc["digest"]]

    store = Store(store_root)
    need_tool("skopeo")
    layout, tag = tmp_path / "skopeo", "x"
    src = _source(fixtures_dir, transport, rel, skopeo_ref if skopeo_ref is not None else ref)
    subprocess.run(["skopeo", "copy", "-q", src, f"oci:{layout}:{tag}"], check=True)
    need_root()
    need_tool("tar")
    pairs = oci_layers(layout, tag)
    assert [d for d, _ in pairs] == doc["diff_ids"]
    for i, (diff_id, blob) in enumerate(pairs):
        tar = decompress_to(blob, tmp_path / f"layer{i}.tar")
        expected = gnu_tar_tree(tar, tmp_path / f"gnu{i}")
        actual = snapshot_tree(store.snapshot_path(Digest.parse(diff_id)))
        assert_same_tree(actual, expected, f"{source} layer {i + 1}")


@pytest.mark.parametrize("rel_source,extra,message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_fixture_refusals_are_clear_and_leave_store_unchanged(
    fixtures_dir, cli, store_root, rel_source, extra, message
):
    from conftest import tree_state

    transport, _, rest = rel_source.partition(":")
    source = f"{transport}:{fixtures_dir}/{rest}"
    ok = cli(
        "pull", "--quiet", f"docker-archive:{fixtures_dir}/{DA}/containers-image--almostempty.tar"
    )
    assert ok.rc == 0
    before = tree_state(store_root)
    result = cli("pull", "--quiet", *extra, source)
    assert result.rc == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapshotter: error: "), result.err
    assert message in lines[0]
    assert tree_state(store_root) == before


def test_same_image_in_classic_and_docker25_layouts_agrees(fixtures_dir, cli, store_root):
    a = json.loads(
        cli(
            "pull",
            "--json",
            "-q",
            f"docker-archive:{fixtures_dir}/{DA}/snyk--hello-world-docker24.tar",
        ).out
    )
    b = json.loads(
        cli(
            "pull", "--json", "-q", f"docker-archive:{fixtures_dir}/{DA}/ggcr--hello-world-v25.tar"
        ).out
    )
    assert a["id"] == b["id"]
    assert a["diff_ids"] == b["diff_ids"]
    assert b["unpacked"] == 0 and b["reused"] == 1  # the snapshot was shared, not unpacked again


def spec_chain_ids(diff_ids: list[str]) -> list[str]:
    """image-spec config.md#layer-chainid, written out: ChainID(L1) = DiffID(L1), and
    ChainID(Ln) = SHA256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for diff_id in diff_ids:
        if out:
            diff_id = "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest()
        out.append(diff_id)
    return out


def test_chain_ids_of_a_five_layer_image_follow_the_image_spec(fixtures_dir, cli, store_root):
    """The chain id names the cached merged tree of each layer prefix (merged/<hex>), so a
    wrong one would let two different stacks share a tree."""
    source = f"oci:{fixtures_dir}/{OL}/regclient--testrepo:v3"
    doc = json.loads(cli("pull", "--json", "-q", source).out)
    assert len(doc["diff_ids"]) == 5 and len(set(doc["diff_ids"])) == 5
    expected = spec_chain_ids(doc["diff_ids"])
    assert expected[0] == doc["diff_ids"][0]
    assert len(set(expected[1:]) | set(doc["diff_ids"])) == 9  # nothing coincides

    from snapshotter.oci.model import chain_ids

    assert [str(c) for c in chain_ids([Digest.parse(d) for d in doc["diff_ids"]])] == expected
    inspected = json.loads(cli("inspect", doc["digest"]).out)[0]
    assert inspected["GraphDriver"]["Data"]["ChainID"] == expected[-1]
    for n in range(1, 6):  # each prefix's merged tree is cached under its own chain id
        assert cli("ls", "--layer", str(n), doc["digest"]).rc == 0
        cached = {p.name for p in (store_root / "merged").iterdir()}
        # pull built the whole image's
        assert cached == {c.removeprefix("sha256:") for c in [*expected[:n], expected[-1]]}


def test_docker25_archive_reads_the_same_through_both_transports(fixtures_dir, cli):
    path = fixtures_dir / DA / "snyk--hello-world-docker25.tar"
    a = json.loads(cli("pull", "--json", "-q", f"docker-archive:{path}").out)
    b = json.loads(cli("pull", "--json", "-q", f"oci-archive:{path}").out)
    assert a["digest"] == b["digest"]  # the real OCI manifest, not a synthesized one
    assert a["id"] == b["id"] and a["diff_ids"] == b["diff_ids"]
    assert b["unpacked"] == 0


def test_estargz_diff_id_covers_the_whole_stream(fixtures_dir, cli, store_root):
    # The diff_id hashes README.md, the end-of-archive marker and the TOC that follows it.
    doc = json.loads(
        cli(
            "pull",
            "--json",
            "-q",
            f"oci-archive:{fixtures_dir}/{OA}/dive--test-oci-estargz-image.tar",
        ).out
    )
    assert doc["diff_ids"][0].startswith("sha256:2b3dbfdf")
    tree = snapshot_tree(Store(store_root).snapshot_path(Digest.parse(doc["diff_ids"][0])))
    assert set(tree) == {"README.md"}


def test_symlink_targets_are_stored_verbatim(fixtures_dir, cli, store_root):
    doc = json.loads(
        cli(
            "pull", "--json", "-q", f"docker-archive:{fixtures_dir}/{DA}/osv-scalibr--symlinks.tar"
        ).out
    )
    links = {}
    for diff_id in doc["diff_ids"]:
        for path, node in snapshot_tree(
            Store(store_root).snapshot_path(Digest.parse(diff_id))
        ).items():
            if node.kind == "l":
                links[path] = node.link
    assert links["dir1/attack-symlink.txt"] == "../../secret.txt"
    assert links["dir1/attack-symlink-absolute.txt"] == "/../secret.txt"
    assert links["dir2/dir3/absolute-symlink-inside-root.txt"] == "/dir2/../dir1/sample.txt"
    assert len(links) == 10


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize(
    "transport,archive",
    [
        ("docker-archive", f"{DA}/snyk--hello-world-docker24.tar"),
        ("docker-archive", f"{DA}/ggcr--whiteout_image.tar"),
        ("oci-archive", "oci-archive/dive--test-oci-gzip-image.tar"),
    ],
)
def test_compressed_archive_pulls_like_the_plain_one(
    fixtures_dir, cli, tmp_path, transport, archive, compression
):
    """``docker save | gzip`` is how archives travel; skopeo reads them, so do we."""
    plain = fixtures_dir / archive
    packed = tmp_path / f"image.tar.{compression}"
    raw = plain.read_bytes()
    packed.write_bytes(
        gzip.compress(raw) if compression == "gzip" else zstandard.ZstdCompressor().compress(raw)
    )
    a = json.loads(cli("pull", "--json", "-q", f"{transport}:{plain}", root=tmp_path / "a").out)
    b = json.loads(cli("pull", "--json", "-q", f"{transport}:{packed}", root=tmp_path / "b").out)
    assert (b["digest"], b["id"], b["diff_ids"]) == (a["digest"], a["id"], a["diff_ids"])
    for diff_id in a["diff_ids"]:
        hex_ = diff_id.split(":")[1]
        assert tree_state(tmp_path / "a" / "snapshots" / "sha256" / hex_) == tree_state(
            tmp_path / "b" / "snapshots" / "sha256" / hex_
        )


def test_a_cut_compressed_archive_is_one_clear_error(fixtures_dir, cli, tmp_path, store_root):
    packed = tmp_path / "image.tar.gz"
    data = gzip.compress((fixtures_dir / DA / "snyk--hello-world-docker24.tar").read_bytes())
    packed.write_bytes(data[: len(data) // 2])
    before = tree_state(store_root)
    result = cli("pull", "-q", f"docker-archive:{packed}")
    assert result.rc == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "cannot decompress (gzip)" in lines[0], result.err
    assert tree_state(store_root) == before
