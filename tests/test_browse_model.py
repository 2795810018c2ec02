"""The browser's model without a screen: layer rows, the compared tree and its statuses (which
must agree with ``snapshotter diff``), the flattened rows, and paged contents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browse_images import BINARY, MANY, PY_SOURCE, build

from snapshotter.browse.model import (
    Comparison,
    Mode,
    Pages,
    Status,
    TreeRows,
    aggregated_comparison,
    command_text,
    compare_bar,
    image_comparison,
    layer_comparison,
    layer_rows,
    looks_binary,
)
from snapshotter.explore.diff import Action, layer_diff, view_changes
from snapshotter.explore.image import StoredImage


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[StoredImage, StoredImage]:
    tmp = tmp_path_factory.mktemp("browse-model")
    return build(tmp / "store", tmp)


def statuses(comparison: Comparison) -> dict[str, Status]:
    return {item.path: item.status for item in comparison.walk()}


# -- layers ------------------------------------------------------------------------------------


def test_layer_rows_are_dives(images: tuple[StoredImage, StoredImage]) -> None:
    image, _ = images
    rows = layer_rows(image)
    assert [r.number for r in rows] == [1, 2, 3]
    # dive strips "/bin/sh -c " and the legacy "#(nop) "; newlines show as ↵; the empty ENV
    # entry makes no layer.
    assert [r.command for r in rows] == [
        "ADD file:abc in /",
        "apt-get install app↵&& clean",
        "COPY many /many # buildkit",
    ]
    # Size: the file content the layer ships.
    assert (
        rows[0].size
        == len(b"127.0.0.1 localhost\n") + 3 + 5 + len(BINARY) + sum(range(1, MANY + 1)) + 50_000
    )
    assert rows[1].size == len(b"v2, longer\n") + 5 + len(PY_SOURCE)
    assert [r.diff_id for r in rows] == [layer.diff_id for layer in image.layers]
    assert command_text('/bin/sh -c #(nop)  CMD ["sh"]') == 'CMD ["sh"]'


def test_compare_bars() -> None:
    assert [compare_bar(Mode.LAYER, 2, n) for n in (1, 2, 3)] == ["lower", "upper", ""]
    assert [compare_bar(Mode.AGGREGATED, 3, n) for n in (1, 2, 3)] == ["lower", "upper", "upper"]


# -- statuses agree with `diff` --------------------------------------------------------------------


def test_layer_one_is_all_added(images: tuple[StoredImage, StoredImage]) -> None:
    image, _ = images
    found = statuses(layer_comparison(image, 1))
    assert set(found.values()) == {Status.ADDED}
    assert len(found) == len(list(image.view(1).tree.walk())) - 1  # every path but the root


def test_layer_changes_agree_with_diff(images: tuple[StoredImage, StoredImage]) -> None:
    image, _ = images
    for number in (2, 3):
        comparison = layer_comparison(image, number)
        found = statuses(comparison)
        for change in layer_diff(image, number).changes:
            want = {
                Action.ADDED: Status.ADDED,
                Action.CHANGED: Status.MODIFIED,
                Action.DELETED: Status.REMOVED,
            }[change.action]
            assert found.pop(change.path) is want, change
        # What diff does not list is unmodified, or a directory with changes below it.
        for path, status in found.items():
            below = any(p.startswith(path + "/") for p in comparison.changes)
            want = Status.MODIFIED if below else Status.UNMODIFIED
            if status is Status.REMOVED:  # below a removed top path
                assert any(path.startswith(p + "/") for p in comparison.changes), path
            else:
                assert status is want, path


def test_layer_two_by_construction(images: tuple[StoredImage, StoredImage]) -> None:
    image, _ = images
    found = statuses(layer_comparison(image, 2))
    assert found["etc"] is Status.MODIFIED  # unchanged itself, changes below
    assert found["etc/conf"] is Status.MODIFIED
    assert found["etc/hosts"] is Status.REMOVED  # shown, from the layer below
    assert found["etc/same"] is Status.UNMODIFIED  # written again, identical
    assert found["etc/link"] is Status.ADDED
    assert found["app"] is found["app/main.py"] is Status.ADDED
    assert found["many"] is found["many/f007"] is Status.UNMODIFIED


def test_opaque_directory_shows_what_it_hid(images: tuple[StoredImage, StoredImage]) -> None:
    image, _ = images
    comparison = layer_comparison(image, 3)
    found = statuses(comparison)
    assert found["many/only"] is Status.ADDED
    removed = [p for p, s in found.items() if p.startswith("many/f") and s is Status.REMOVED]
    assert len(removed) == MANY
    # The removed entries are the lower view's, with their sizes.
    items = {i.path: i for i in comparison.walk()}
    assert items["many/f009"].size == 10 and items["many/f009"].side is comparison.lower


def test_aggregated_is_layer_one_against_n(images: tuple[StoredImage, StoredImage]) -> None:
    image, _ = images
    comparison = aggregated_comparison(image, 3)
    found = statuses(comparison)
    assert found["etc/hosts"] is Status.REMOVED  # removed by layer 2
    assert found["app/main.py"] is Status.ADDED  # added by layer 2
    assert found["many/only"] is Status.ADDED  # added by layer 3
    assert found["etc/conf"] is Status.MODIFIED
    changes = view_changes(image, image, upto=1, other_upto=3, mtime=False)
    assert set(comparison.changes) == {c.path for c in changes}
    assert set(statuses(aggregated_comparison(image, 1)).values()) == {Status.UNMODIFIED}


def test_compare_two_images_agrees_with_diff(images: tuple[StoredImage, StoredImage]) -> None:
    image, other = images
    comparison = image_comparison(image, other)
    found = statuses(comparison)
    assert found["new"] is Status.ADDED
    assert found["usr"] is found["usr/share/big"] is Status.REMOVED
    assert found["app"] is Status.REMOVED  # only IMAGE has it
    assert found["etc/hosts"] is Status.ADDED  # IMAGE deleted it, OTHER kept the base's
    assert found["bin/tool"] is Status.UNMODIFIED
    for change in view_changes(image, other):
        assert change.path in found


# -- rows ---------------------------------------------------------------------------------------


def test_rows_list_only_open_directories(images: tuple[StoredImage, StoredImage]) -> None:
    image, _ = images
    rows = TreeRows(layer_comparison(image, 1))
    assert [r.item.name for r in rows.rows] == ["bin", "etc", "many", "usr"]
    many = rows.index_of("many")
    assert many is not None
    assert rows.expand(many) == MANY
    assert len(rows.rows) == 4 + MANY
    assert rows.rows[many + 1].guides == "│   " and not rows.rows[many + 1].last
    assert rows.rows[many + MANY].last
    rows.toggle(many)
    assert len(rows.rows) == 4
    rows.toggle(many)
    rows.collapse_all()
    assert len(rows.rows) == 4 and not rows.expanded


def test_hiding_statuses_and_filters(images: tuple[StoredImage, StoredImage]) -> None:
    image, _ = images
    rows = TreeRows(layer_comparison(image, 2), expanded={"etc"})
    assert [r.item.path for r in rows.rows if r.depth == 1] == [
        "etc/conf",
        "etc/hosts",
        "etc/link",
        "etc/same",
    ]
    rows.hidden = {Status.REMOVED, Status.UNMODIFIED}
    rows.rebuild()
    assert [r.item.path for r in rows.rows] == ["app", "etc", "etc/conf", "etc/link"]
    rows.hidden = set()
    rows.pattern = re.compile(r"f01\d$")
    rows.rebuild()
    assert [r.item.path for r in rows.rows] == ["many"] + [f"many/f01{i}" for i in range(10)]


def test_sort_by_size(images: tuple[StoredImage, StoredImage]) -> None:
    image, _ = images
    rows = TreeRows(layer_comparison(image, 1), sort_by_size=True)
    sizes = [r.item.size for r in rows.rows]
    assert sizes == sorted(sizes, reverse=True)
    assert rows.rows[0].item.name == "usr" and rows.rows[0].item.size == 50_000
    assert rows.rows[1].item.name == "many"


# -- contents -------------------------------------------------------------------------------------


def test_text_pages_read_only_what_is_shown(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    lines = [f"line {i} " + "x" * (i % 70) for i in range(200_000)]
    path.write_text("\n".join(lines) + "\n")
    pages = Pages(path, path.stat().st_size)
    assert not pages.binary
    assert [pages.line(i) for i in range(3)] == lines[:3]
    assert pages.reads <= 2 and not pages.complete  # 10 MB file, 64 KiB read
    assert pages.line(150_000) == lines[150_000]
    assert pages.lines_known >= 150_001
    assert pages.line(199_999) == lines[-1] and pages.line(200_000) == ""
    assert pages.complete and pages.lines_known == 200_000
    pages.close()


def test_binary_pages_are_a_hex_dump(tmp_path: Path) -> None:
    path = tmp_path / "bin"
    path.write_bytes(BINARY)
    pages = Pages(path, len(BINARY))
    assert pages.binary
    assert pages.hex_rows == -(-len(BINARY) // 16)
    assert pages.hex_row(0) == (
        "00000000: 0001 0203 0405 0607 0809 0a0b 0c0d 0e0f  ................"
    )
    assert pages.hex_row(4).endswith("@ABCDEFGHIJKLMNO")
    assert pages.hex_row(pages.hex_rows - 1).startswith(f"{(pages.hex_rows - 1) * 16:08x}: ")
    assert looks_binary("héllo".encode()[:2]) is False  # a character cut at the end
    assert looks_binary(b"\xff\xfeabc") is True
