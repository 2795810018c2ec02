"""explore/image.py and cli/format.py: layers numbered from 1, history matched to layers,
and the formatting every explore command shares."""

from __future__ import annotations

import hashlib

from snapshotter.cli.format import human_size, mode_string, rfc3339_ns
from snapshotter.explore.image import align_history, normalize_path
from snapshotter.store.toc import EntryKind


def test_history_entries_take_layers_in_order_skipping_empty_ones():
    history = [
        {"created_by": "ADD base", "created": "2024-01-01T00:00:00Z"},
        {"created_by": "ENV A=b", "empty_layer": True},
        {"created_by": "RUN make"},
        {"created_by": 'CMD ["x"]', "empty_layer": True},
    ]
    entries, of_layer, warnings = align_history(history, 2)
    assert [e.layer for e in entries] == [1, None, 2, None]
    assert [e.created_by for e in of_layer if e] == ["ADD base", "RUN make"]
    assert entries[1].empty_layer and not entries[0].empty_layer
    assert warnings == ()


def test_a_short_history_leaves_layers_without_an_entry_and_warns():
    entries, of_layer, warnings = align_history([{"created_by": "ADD base"}], 3)
    assert of_layer[0] is not None and of_layer[1] is None and of_layer[2] is None
    assert len(warnings) == 1 and "last 2 layers show (missing)" in warnings[0]


def test_a_long_history_matches_what_it_can_and_warns():
    entries, of_layer, warnings = align_history([{"created_by": "a"}, {"created_by": "b"}], 1)
    assert [e.layer for e in entries] == [1, None]
    assert len(warnings) == 1 and "the last 1 match no layer" in warnings[0]


def test_history_fields_of_the_wrong_type_are_empty_not_errors():
    entries, _, _ = align_history([{"created_by": 5, "created": None, "empty_layer": "yes"}], 1)
    assert entries[0].created_by == "" and entries[0].created == ""
    assert entries[0].layer == 1  # "yes" is not true: the entry made a layer


def test_paths_are_normalized_as_a_chroot_would():
    assert normalize_path("/etc/../etc/./passwd") == "etc/passwd"
    assert normalize_path("../../..") == ""
    assert normalize_path("/") == ""
    assert normalize_path("a//b/") == "a/b"


def test_mode_strings_match_ls():
    assert mode_string(EntryKind.DIR, 0o755) == "drwxr-xr-x"
    assert mode_string(EntryKind.FILE, 0o4755) == "-rwsr-xr-x"
    assert mode_string(EntryKind.FILE, 0o2644) == "-rw-r-Sr--"
    assert mode_string(EntryKind.DIR, 0o1777) == "drwxrwxrwt"
    assert mode_string(EntryKind.DIR, 0o1776) == "drwxrwxrwT"
    assert mode_string(EntryKind.SYMLINK, 0o777) == "lrwxrwxrwx"
    assert mode_string(EntryKind.CHAR, 0o620) == "crw--w----"


def test_sizes_are_dockers():
    assert [human_size(n) for n in (0, 999, 4620, 338_000_000, 1_500_000_000)] == [
        "0B",
        "999B",
        "4.62kB",
        "338MB",
        "1.5GB",
    ]


def test_times_keep_nanoseconds():
    assert rfc3339_ns(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert rfc3339_ns(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"


def test_a_store_from_before_toc_digests_still_gets_them_by_hashing(tmp_path, cli, store_root):
    """Snapshots unpacked before toc version 2 have no content digests: the explore
    commands hash the data files instead, and answer the same."""
    import json

    import zstandard
    from builders import ImageBuilder, LayerBuilder, write_oci_layout

    base = LayerBuilder().file("a", b"alpha").file("b", b"x" * 100_000).file("empty", b"")
    top = LayerBuilder().file("a", b"ALPHA").file("c", b"y" * 5000).hardlink("d", "c")
    write_oci_layout(tmp_path / "oci", {"1": ImageBuilder([base, top])})
    assert cli("pull", "-q", f"oci:{tmp_path / 'oci'}:1", "--name", "old:1").rc == 0
    before = json.loads(cli("ls", "-R", "--json", "old:1").out)
    assert {e["path"]: e["digest"] for e in before}["/a"] == (
        "sha256:" + hashlib.sha256(b"ALPHA").hexdigest()
    )
    for toc in (store_root / "snapshots" / "sha256").glob("*/toc.json.zst"):
        doc = json.loads(zstandard.ZstdDecompressor().decompressobj().decompress(toc.read_bytes()))
        doc["version"] = 1
        doc["entries"] = [row[:13] for row in doc["entries"]]
        toc.write_bytes(zstandard.ZstdCompressor().compress(json.dumps(doc).encode()))
    after = json.loads(cli("ls", "-R", "--json", "old:1").out)
    assert after == before
    assert cli("diff", "old:1", "--layer", "2").out == "C /a\nA /c\nA /d\n"
