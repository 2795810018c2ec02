"""``history``, ``inspect`` (stored and ``docker://`` without pulling) and ``images``'
label/before/since filters.

Images are built here with a history known by construction: empty layers, a Docker-era
``/bin/sh -c #(nop)  ENV A=b``, tabs, a long line with ``&&``, a line of wide CJK
characters, a time with a zone offset; a history shorter than the layers, a longer one and
none at all.  Tables are compared whole, byte for byte, with docker's spacing (its
tabwriter: columns padded to max(10, widest + 3)).  Remote images are served by a real
``docker-registry`` behind a proxy that records every request, which is how the tests see
that no layer blob is fetched; skopeo is the independent oracle for what the registry
serves.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from builders import ImageBuilder, LayerBuilder, write_docker_archive, write_oci_layout
from conftest import CliResult, need_tool
from registry_fixtures import Fault, FaultProxy, Registry, isolate_user_auth, start_registry

from snapshotter.cli.format import ago, display_width, ellipsis

Cli = Callable[..., CliResult]

# -- images whose history is known by construction ---------------------------------------------

CJK = "你好世界" * 5
HIST_HISTORY: list[dict[str, Any]] = [
    {"created": "2023-05-01T10:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:5b1e in / "},
    {
        "created": "2023-05-01T10:00:01Z",
        "created_by": "/bin/sh -c #(nop)  ENV A=b",
        "empty_layer": True,
    },
    {
        "created": "2023-05-02T11:30:00.123456789Z",
        "created_by": "RUN /bin/sh -c\tapt-get update\t&& apt-get install -y ca-certificates "
        "curl # buildkit",
        "comment": "buildkit.dockerfile.v0",
    },
    {
        "created": "2023-05-02T11:30:05+02:00",
        "created_by": f"RUN /bin/sh -c echo {CJK} > /tmp/x # buildkit",
        "comment": "buildkit.dockerfile.v0",
        "author": "ada@example.com",
    },
    {
        "created": "2023-05-02T11:30:06Z",
        "created_by": 'CMD ["/bin/sh"]',
        "empty_layer": True,
        "comment": "buildkit.dockerfile.v0",
    },
]

HIST = ImageBuilder(
    [
        LayerBuilder().file("etc/os-release", b"ID=test\n" * 100),  # 800 bytes
        LayerBuilder().file("app/bin", b"b" * 4620),
        LayerBuilder().file("tmp/x", bytes(1_500_000)),
    ],
    created="2023-05-02T11:30:06Z",
    config_extra={
        "Env": ["PATH=/usr/bin:/bin", "A=b"],
        "Cmd": ["/bin/sh"],
        "WorkingDir": "/app",
        "Labels": {"org.example.team": "core", "tier": "<gold> & co"},
        "ExposedPorts": {"8080/tcp": {}},
        "StopSignal": "SIGTERM",
        "Hostname": "builder-7",  # an old, non-standard key docker no longer shows
    },
    config_top={"author": "ada@example.com", "docker_version": "20.10.7"},
    history=HIST_HISTORY,
)
SIZES = (800, 4620, 1_500_000)  # each layer's unpacked bytes, base first

# One non-empty entry for three layers: layers 2 and 3 have none.
SHORT = ImageBuilder(
    [
        LayerBuilder().file("a", b"a" * 10),
        LayerBuilder().file("b", b"b" * 20),
        LayerBuilder().file("c", b"c" * 30),
    ],
    history=[
        {"created": "2023-01-01T00:00:00Z", "created_by": "ADD base"},
        {"created": "2023-01-01T00:00:01Z", "created_by": "ENV X=1", "empty_layer": True},
    ],
)
# Three non-empty entries for one layer: the last two make no layer.
LONG = ImageBuilder(
    [LayerBuilder().file("only", b"o" * 7)],
    history=[
        {"created": "2023-01-01T00:00:00Z", "created_by": "ADD only"},
        {"created": "2023-01-02T00:00:00Z", "created_by": "RUN ghost one"},
        {"created": "2023-01-03T00:00:00Z", "created_by": "RUN ghost two"},
    ],
)
NONE = ImageBuilder([LayerBuilder().file("n", b"n")], history=[])


def iid(img: ImageBuilder) -> str:
    return img.config_digest()[7:19]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("history") / "oci"
    write_oci_layout(path, {"hist": HIST, "short": SHORT, "long": LONG, "none": NONE})
    return path


@pytest.fixture
def pulled(cli: Cli, layout: Path) -> Cli:
    for tag in ("hist", "short", "long", "none"):
        result = cli("pull", "-q", f"oci:{layout}:{tag}", "--name", f"{tag}:1")
        assert result.rc == 0, result.err
    return cli


def ok(result: CliResult) -> str:
    assert result.rc == 0, result.err
    return result.out


# -- cutting and spacing as docker does --------------------------------------------------------


@pytest.mark.parametrize(
    "text,width,expected",
    [  # docker/cli cli/command/formatter/displayutils_test.go
        ("t🐳ststring", 0, ""),
        ("t🐳ststring", 1, "t"),
        ("t🐳ststring", 2, "t…"),
        ("t🐳ststring", 6, "t🐳st…"),
        ("t🐳ststring", 20, "t🐳ststring"),
        ("你好世界teststring", 0, ""),
        ("你好世界teststring", 1, "你"),
        ("你好世界teststring", 3, "你…"),
        ("你好世界teststring", 6, "你好…"),
        ("你好世界teststring", 20, "你好世界teststring"),
        ("x" * 45, 45, "x" * 45),
        ("x" * 46, 45, "x" * 44 + "…"),
    ],
)
def test_ellipsis_cuts_as_docker(text: str, width: int, expected: str) -> None:
    assert ellipsis(text, width) == expected


def test_display_width_counts_wide_characters_twice() -> None:
    assert display_width("abc") == 3
    assert display_width("你好") == 4
    assert display_width("e\u0301") == 1  # a combining accent takes no column


# -- history of a stored image -----------------------------------------------------------------

CUT_RUN = "RUN /bin/sh -c apt-get update && apt-get ins…"  # 44 columns + …
CUT_CJK = "RUN /bin/sh -c echo 你好世界你好世界你好世界…"  # 20 + 12 wide = 44 columns + …


def test_history_non_human_is_dockers_table_byte_for_byte(pulled: Cli) -> None:
    i = iid(HIST)
    assert ok(pulled("history", "-H=false", "hist:1")) == (
        "IMAGE          CREATED AT             CREATED BY                                      SIZE      COMMENT\n"  # noqa: E501
        f'{i}   2023-05-02T11:30:06Z   CMD ["/bin/sh"]                                 0         buildkit.dockerfile.v0\n'  # noqa: E501
        f"<missing>      2023-05-02T09:30:05Z   {CUT_CJK}   1500000   buildkit.dockerfile.v0\n"
        f"<missing>      2023-05-02T11:30:00Z   {CUT_RUN}   4620      buildkit.dockerfile.v0\n"
        "<missing>      2023-05-01T10:00:01Z   /bin/sh -c #(nop)  ENV A=b                      0         \n"  # noqa: E501
        "<missing>      2023-05-01T10:00:00Z   /bin/sh -c #(nop) ADD file:5b1e in /            800       \n"  # noqa: E501
    )


@pytest.mark.parametrize(
    "flags",
    [("-H=false",), ("-H", "false"), ("--human=false",), ("--human", "false"), ("-H=0",)],
)
def test_every_spelling_of_human_false(pulled: Cli, flags: tuple[str, ...]) -> None:
    expected = ok(pulled("history", "-H=false", "hist:1"))
    assert "CREATED AT" in expected
    assert ok(pulled("history", *flags, "hist:1")) == expected
    assert ok(pulled("history", "hist:1", *flags)) == expected


def test_history_human_sizes_and_ages(pulled: Cli) -> None:
    i = iid(HIST)
    age = [ago(h["created"]) for h in reversed(HIST_HISTORY)]
    w = max(len(a) for a in age) + 3
    table = ok(pulled("history", "-H", "hist:1"))
    assert table == (
        f"IMAGE          {'CREATED':<{w}}CREATED BY                                      SIZE      COMMENT\n"  # noqa: E501
        f'{i}   {age[0]:<{w}}CMD ["/bin/sh"]                                 0B        buildkit.dockerfile.v0\n'  # noqa: E501
        f"<missing>      {age[1]:<{w}}{CUT_CJK}   1.5MB     buildkit.dockerfile.v0\n"
        f"<missing>      {age[2]:<{w}}{CUT_RUN}   4.62kB    buildkit.dockerfile.v0\n"
        f"<missing>      {age[3]:<{w}}/bin/sh -c #(nop)  ENV A=b                      0B        \n"  # noqa: E501
        f"<missing>      {age[4]:<{w}}/bin/sh -c #(nop) ADD file:5b1e in /            800B      \n"  # noqa: E501
    )
    assert all(a.endswith(" ago") for a in age)
    # -H is the default, on a terminal or not (docker's); --bytes gives exact sizes.
    assert ok(pulled("history", "hist:1")) == table
    piped = ok(pulled("history", "--bytes", "hist:1"))
    assert piped == (
        f"IMAGE          {'CREATED':<{w}}CREATED BY                                      SIZE      COMMENT\n"  # noqa: E501
        f'{i}   {age[0]:<{w}}CMD ["/bin/sh"]                                 0         buildkit.dockerfile.v0\n'  # noqa: E501
        f"<missing>      {age[1]:<{w}}{CUT_CJK}   1500000   buildkit.dockerfile.v0\n"
        f"<missing>      {age[2]:<{w}}{CUT_RUN}   4620      buildkit.dockerfile.v0\n"
        f"<missing>      {age[3]:<{w}}/bin/sh -c #(nop)  ENV A=b                      0         \n"  # noqa: E501
        f"<missing>      {age[4]:<{w}}/bin/sh -c #(nop) ADD file:5b1e in /            800       \n"  # noqa: E501
    )
    assert ok(pulled("history", "-H", "--bytes", "hist:1")) == piped


def test_history_no_trunc_and_quiet(pulled: Cli) -> None:
    full = ok(pulled("history", "--no-trunc", "-H=false", "hist:1")).splitlines()
    assert full[0].startswith(f"IMAGE{' ' * 69}CREATED AT")
    assert full[1].startswith(f"{HIST.config_digest()}   2023-05-02T11:30:06Z")
    # tabs become spaces, nothing is cut
    assert (
        "RUN /bin/sh -c apt-get update && apt-get install -y ca-certificates curl # buildkit   "
        in full[3]
    )
    # the CJK cell is 80 columns, the widest (the apt-get line) 83: padded to 86
    assert f"echo {CJK} > /tmp/x # buildkit      1500000" in full[2]
    quiet = ["<missing>"] * 4
    assert ok(pulled("history", "-q", "hist:1")).splitlines() == [iid(HIST), *quiet]
    assert ok(pulled("history", "-q", "--no-trunc", "hist:1")).splitlines() == [
        HIST.config_digest(),
        *quiet,
    ]


def test_history_format_json_is_dockers_json_lines(pulled: Cli) -> None:
    out = ok(pulled("history", "--format", "json", "hist:1"))
    lines = out.splitlines()
    # Go's json.Marshal (docker's formatter) escapes <, > and &; keys are sorted.
    assert lines[0].startswith('{"Comment":"buildkit.dockerfile.v0","CreatedAt":')
    assert '"ID":"\\u003cmissing\\u003e"' in lines[1]
    assert "update \\u0026\\u0026 apt-get" in lines[2]
    docs = [json.loads(line) for line in lines]
    created = [h["created"] for h in reversed(HIST_HISTORY)]
    assert docs == [
        {
            "Comment": "buildkit.dockerfile.v0",
            "CreatedAt": "2023-05-02T11:30:06Z",
            "CreatedBy": 'CMD ["/bin/sh"]',
            "CreatedSince": ago(created[0]),
            "ID": iid(HIST),
            "Size": "0B",
        },
        {
            "Comment": "buildkit.dockerfile.v0",
            "CreatedAt": "2023-05-02T09:30:05Z",
            "CreatedBy": CUT_CJK,
            "CreatedSince": ago(created[1]),
            "ID": "<missing>",
            "Size": "1.5MB",
        },
        {
            "Comment": "buildkit.dockerfile.v0",
            "CreatedAt": "2023-05-02T11:30:00Z",
            "CreatedBy": CUT_RUN,
            "CreatedSince": ago(created[2]),
            "ID": "<missing>",
            "Size": "4.62kB",
        },
        {
            "Comment": "",
            "CreatedAt": "2023-05-01T10:00:01Z",
            "CreatedBy": "/bin/sh -c #(nop)  ENV A=b",
            "CreatedSince": ago(created[3]),
            "ID": "<missing>",
            "Size": "0B",
        },
        {
            "Comment": "",
            "CreatedAt": "2023-05-01T10:00:00Z",
            "CreatedBy": "/bin/sh -c #(nop) ADD file:5b1e in / ",
            "CreatedSince": ago(created[4]),
            "ID": "<missing>",
            "Size": "800B",
        },
    ]
    # -H=false: raw sizes, and CreatedSince is CreatedAt (docker's); --no-trunc: full id.
    raw = [
        json.loads(line)
        for line in ok(
            pulled("history", "--format", "json", "-H=false", "--no-trunc", "hist:1")
        ).splitlines()
    ]
    assert [d["Size"] for d in raw] == ["0", "1500000", "4620", "0", "800"]
    assert [d["CreatedSince"] for d in raw] == [d["CreatedAt"] for d in raw]
    assert raw[0]["ID"] == HIST.config_digest()
    assert raw[1]["CreatedBy"] == f"RUN /bin/sh -c echo {CJK} > /tmp/x # buildkit"


def _layer(img: ImageBuilder, n: int, unpacked: int) -> dict[str, Any]:
    built = img.built_layers()[n - 1]
    return {
        "layer": n,
        "diff_id": built.diff_id,
        "digest": built.digest,
        "size": unpacked,
        "compressed_size": built.size,
    }


NO_LAYER = {"layer": None, "diff_id": None, "digest": None}


def test_history_json_is_ours_never_truncated(pulled: Cli) -> None:
    doc = json.loads(ok(pulled("history", "--json", "hist:1")))
    h = HIST_HISTORY
    entry = {"author": "", "comment": "", "empty_layer": False, "missing": False}
    assert doc == {
        "id": HIST.config_digest(),
        "remote": False,
        "warnings": [],
        "history": [
            {
                **entry,
                "created": h[4]["created"],
                "created_by": h[4]["created_by"],
                "comment": "buildkit.dockerfile.v0",
                "empty_layer": True,
                **NO_LAYER,
                "size": 0,
                "compressed_size": 0,
            },
            {
                **entry,
                "created": h[3]["created"],
                "created_by": h[3]["created_by"],
                "author": "ada@example.com",
                "comment": "buildkit.dockerfile.v0",
                **_layer(HIST, 3, SIZES[2]),
            },
            {
                **entry,
                "created": h[2]["created"],
                "created_by": h[2]["created_by"],  # tabs kept
                "comment": "buildkit.dockerfile.v0",
                **_layer(HIST, 2, SIZES[1]),
            },
            {
                **entry,
                "created": h[1]["created"],
                "created_by": h[1]["created_by"],
                "empty_layer": True,
                **NO_LAYER,
                "size": 0,
                "compressed_size": 0,
            },
            {
                **entry,
                "created": h[0]["created"],
                "created_by": h[0]["created_by"],
                **_layer(HIST, 1, SIZES[0]),
            },
        ],
    }


def test_a_short_history_warns_and_shows_missing_layers(pulled: Cli) -> None:
    result = pulled("history", "-H=false", "short:1")
    assert result.rc == 0
    assert result.err == (
        "snapshotter: warning: short:1: history has 1 non-empty entries for 3 layers; "
        "the last 2 layers show (missing)\n"
    )
    assert result.out == (
        "IMAGE          CREATED AT             CREATED BY   SIZE      COMMENT\n"
        f"{iid(SHORT)}   N/A                    (missing)    30        \n"
        "<missing>      N/A                    (missing)    20        \n"
        "<missing>      2023-01-01T00:00:01Z   ENV X=1      0         \n"
        "<missing>      2023-01-01T00:00:00Z   ADD base     10        \n"
    )
    doc = json.loads(ok(pulled("history", "--json", "short:1")))
    assert doc["warnings"] == [result.err.split("short:1: ", 1)[1].strip()]
    missing = {"created": "", "created_by": "", "author": "", "comment": ""}
    assert doc["history"][:2] == [
        {**missing, "empty_layer": False, "missing": True, **_layer(SHORT, 3, 30)},
        {**missing, "empty_layer": False, "missing": True, **_layer(SHORT, 2, 20)},
    ]
    assert [r["layer"] for r in doc["history"]] == [3, 2, None, 1]


def test_a_long_history_warns_and_shows_rows_without_a_layer(pulled: Cli) -> None:
    result = pulled("history", "-H=false", "long:1")
    assert result.err == (
        "snapshotter: warning: long:1: history has 3 non-empty entries for 1 layers; "
        "the last 2 match no layer\n"
    )
    assert result.out == (
        "IMAGE          CREATED AT             CREATED BY      SIZE      COMMENT\n"
        f"{iid(LONG)}   2023-01-03T00:00:00Z   RUN ghost two   -         \n"
        "<missing>      2023-01-02T00:00:00Z   RUN ghost one   -         \n"
        "<missing>      2023-01-01T00:00:00Z   ADD only        7         \n"
    )
    doc = json.loads(ok(pulled("history", "--json", "long:1")))
    assert [(r["layer"], r["size"], r["compressed_size"]) for r in doc["history"]] == [
        (None, None, None),
        (None, None, None),
        (1, 7, LONG.built_layers()[0].size),
    ]


def test_no_history_at_all_shows_every_layer_missing(pulled: Cli) -> None:
    result = pulled("history", "-q", "none:1")
    assert result.out == f"{iid(NONE)}\n"
    assert "history has 0 non-empty entries for 1 layers" in result.err


def test_history_usage_errors(pulled: Cli) -> None:
    for args, said in (
        (("history",), "IMAGE"),
        (("history", "hist:1", "-H", "maybe"), "expected true or false, got 'maybe'"),
        (("history", "--json", "--format", "json", "hist:1"), "not allowed with"),
        (("history", "--format", "yaml", "hist:1"), "invalid choice: 'yaml'"),
    ):
        result = pulled(*args)
        assert result.rc == 2, args
        assert result.out == ""
        assert said in result.err.splitlines()[-1], (args, result.err)
    # -H before IMAGE takes no value from it
    assert ok(pulled("history", "-H", "hist:1")) == ok(pulled("history", "hist:1", "-H"))
    missing = pulled("history", "nope:1")
    assert missing.rc == 1 and missing.err.startswith("snapshotter: error: image 'nope:1'")


# -- inspect of a stored image -----------------------------------------------------------------


def test_inspect_is_dockers_document(pulled: Cli, store_root: Path) -> None:
    out = ok(pulled("inspect", "hist:1"))
    assert out.startswith('[\n    {\n        "Id": "sha256:')  # docker's 4-space indent
    assert '"tier": "<gold> & co"' in out  # the daemon does not HTML-escape
    (doc,) = json.loads(out)
    built = HIST.built_layers()
    diff_ids = [b.diff_id for b in built]
    snapshots = [str(store_root / "snapshots" / "sha256" / d[7:]) for d in diff_ids]
    assert list(doc) == [
        "Id", "RepoTags", "RepoDigests", "Parent", "Comment", "Created", "DockerVersion",
        "Author", "Config", "Architecture", "Os", "Size", "GraphDriver", "RootFS", "Metadata",
        "Descriptor", "Snapshotter",
    ]  # fmt: skip
    manifest = HIST.manifest_digest()
    assert {
        k: v for k, v in doc.items() if k not in ("GraphDriver", "Metadata", "Snapshotter")
    } == {
        "Id": HIST.config_digest(),
        "RepoTags": ["hist:1"],
        "RepoDigests": [f"hist@{manifest}"],
        "Parent": "",
        "Comment": "buildkit.dockerfile.v0",
        "Created": "2023-05-02T11:30:06Z",
        "DockerVersion": "20.10.7",
        "Author": "ada@example.com",
        "Config": {
            "User": "",
            "ExposedPorts": {"8080/tcp": {}},
            "Env": ["PATH=/usr/bin:/bin", "A=b"],
            "Cmd": ["/bin/sh"],
            "Volumes": None,
            "WorkingDir": "/app",
            "Entrypoint": None,
            "OnBuild": None,
            "Labels": {"org.example.team": "core", "tier": "<gold> & co"},
            "StopSignal": "SIGTERM",
        },
        "Architecture": "amd64",
        "Os": "linux",
        "Size": sum(SIZES),
        "RootFS": {"Type": "layers", "Layers": diff_ids},
        "Descriptor": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest,
            "size": len(HIST.manifest_bytes()),
        },
    }
    assert list(doc["Config"]) == [
        "User", "ExposedPorts", "Env", "Cmd", "Volumes", "WorkingDir", "Entrypoint",
        "OnBuild", "Labels", "StopSignal",
    ]  # fmt: skip
    chain = diff_ids[0]
    for d in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {d}".encode()).hexdigest()
    assert doc["GraphDriver"] == {
        "Data": {"ChainID": chain, "LowerDir": ":".join(reversed(snapshots))},
        "Name": "snapshotter",
    }
    assert all(Path(s).is_dir() for s in snapshots)
    assert doc["Metadata"]["LastTagTime"].endswith("Z")
    assert doc["Snapshotter"] == {
        "source": doc["Snapshotter"]["source"],
        "remote": False,
        "manifest_digest": manifest,
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "index_digest": None,
        "platform": "linux/amd64",
        "compressed_size": sum(b.size for b in built),
        "unpacked_size": sum(SIZES),
        "layers": [
            {
                "number": n + 1,
                "digest": b.digest,
                "diff_id": b.diff_id,
                "media_type": b.media_type,
                "size": b.size,
                "unpacked_size": SIZES[n],
                "snapshot": snapshots[n],
            }
            for n, b in enumerate(built)
        ],
    }
    assert ok(pulled("inspect", "--json", "hist:1")) == out


def test_inspect_names_variant_and_absent_config(cli: Cli, tmp_path: Path) -> None:
    arm = ImageBuilder(
        [LayerBuilder().file("a", b"a")], architecture="arm", variant="v7",
        config_top={"os.version": "10.0.1"},
    )  # fmt: skip
    write_oci_layout(tmp_path / "oci", {"1": arm})
    assert cli("pull", "-q", f"oci:{tmp_path / 'oci'}:1", "--name", "team/app:1").rc == 0
    assert cli("tag", "team/app:1", "registry.example:5000/x:2").rc == 0
    (doc,) = json.loads(ok(cli("inspect", "team/app:1")))
    assert doc["RepoTags"] == ["registry.example:5000/x:2", "team/app:1"]
    assert doc["RepoDigests"] == [
        f"registry.example:5000/x@{arm.manifest_digest()}",
        f"team/app@{arm.manifest_digest()}",
    ]
    assert (doc["Architecture"], doc["Variant"], doc["Os"], doc["OsVersion"]) == (
        "arm", "v7", "linux", "10.0.1",
    )  # fmt: skip
    assert doc["Config"] == {
        "User": "", "Env": None, "Cmd": None, "Volumes": None, "WorkingDir": "",
        "Entrypoint": None, "OnBuild": None, "Labels": None,
    }  # fmt: skip
    assert (doc["Comment"], doc["Author"], doc["DockerVersion"]) == ("", "", "")


def test_inspect_of_an_index_names_it(cli: Cli, tmp_path: Path) -> None:
    amd = ImageBuilder([LayerBuilder().file("arch", b"amd64")], architecture="amd64")
    arm = ImageBuilder([LayerBuilder().file("arch", b"arm64")], architecture="arm64", variant="v8")
    write_oci_layout(tmp_path / "oci", {}, index_of={"multi": [amd, arm]})
    pull = cli("pull", "--json", "-q", "--all-platforms", f"oci:{tmp_path / 'oci'}:multi")
    index_digest = json.loads(ok(pull))["digest"]
    (doc,) = json.loads(ok(cli("inspect", "--platform", "linux/arm64", "localhost/oci:multi")))
    assert doc["Id"] == arm.config_digest()
    assert doc["RepoDigests"] == [f"localhost/oci@{index_digest}"]  # docker: the index's
    assert doc["Descriptor"]["digest"] == index_digest
    assert doc["Descriptor"]["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert doc["Snapshotter"]["index_digest"] == index_digest
    assert doc["Snapshotter"]["manifest_digest"] == arm.manifest_digest()
    # --raw: the index the name points at; with --platform, that platform's manifest
    index_blob = (tmp_path / "oci" / "blobs" / "sha256" / index_digest[7:]).read_bytes()
    assert ok(cli("inspect", "--raw", "localhost/oci:multi")) == index_blob.decode()
    raw = ok(cli("inspect", "--raw", "--platform", "linux/arm64", "localhost/oci:multi"))
    assert raw == arm.manifest_bytes().decode()


def test_inspect_record_is_the_store_record(pulled: Cli) -> None:
    doc = json.loads(ok(pulled("inspect", "--record", "hist:1")))
    assert doc["digest"] == HIST.manifest_digest() and doc["config"] == HIST.config_digest()
    assert doc["names"] == ["docker.io/library/hist:1"]
    assert [lay["unpacked_size"] for lay in doc["layers"]] == list(SIZES)
    result = pulled("inspect", "--record", "--raw", "hist:1")
    assert result.rc == 2 and "not allowed with" in result.err


# -- images: label, before, since --------------------------------------------------------------


def _dated(created: str, labels: dict[str, str], text: str) -> ImageBuilder:
    return ImageBuilder(
        [LayerBuilder().file("f", text.encode())],
        created=created,
        config_extra={"Labels": labels},
    )


DATED = {
    "old": _dated("2020-01-01T00:00:00Z", {"team": "core", "tier": "gold"}, "old"),
    "mid": _dated("2021-06-01T00:00:00+02:00", {"team": "core"}, "mid"),
    "new": _dated("2022-01-01T00:00:00Z", {"team": "web", "tier": "gold=yes"}, "new"),
    "undated": _dated("", {"team": "web"}, "undated"),
}


@pytest.fixture
def dated(cli: Cli, tmp_path: Path) -> Cli:
    write_oci_layout(tmp_path / "dated", DATED)
    for tag in DATED:
        assert cli("pull", "-q", f"oci:{tmp_path / 'dated'}:{tag}", "--name", f"{tag}:1").rc == 0
    return cli


def _names(cli: Cli, *filters: str) -> set[str]:
    args = [f"--filter={f}" for f in filters]
    doc = json.loads(ok(cli("images", "--json", *args)))
    return {n.split("/")[-1] for i in doc for n in i["names"]}


def test_label_filters(dated: Cli) -> None:
    assert _names(dated, "label=team") == {"old:1", "mid:1", "new:1", "undated:1"}
    assert _names(dated, "label=tier") == {"old:1", "new:1"}
    assert _names(dated, "label=tier=gold") == {"old:1"}
    assert _names(dated, "label=tier=gold=yes") == {"new:1"}  # the value may hold '='
    assert _names(dated, "label=team=web") == {"new:1", "undated:1"}
    assert _names(dated, "label=nope") == set()
    # repeats OR; different keys AND
    assert _names(dated, "label=tier=gold", "label=team=web") == {"old:1", "new:1", "undated:1"}
    assert _names(dated, "label=team=core", "reference=mid") == {"mid:1"}


def test_before_and_since_compare_created_times(dated: Cli) -> None:
    assert _names(dated, "before=new:1") == {"old:1", "mid:1"}
    assert _names(dated, "before=mid:1") == {"old:1"}  # 2021-05-31T22:00Z
    assert _names(dated, "since=old:1") == {"mid:1", "new:1"}
    assert _names(dated, "since=new:1") == set()  # strictly after: not itself
    assert _names(dated, "since=old:1", "before=new:1") == {"mid:1"}
    assert _names(dated, "before=mid:1", "before=new:1") == {"old:1", "mid:1"}  # OR
    assert _names(dated, "since=old:1", "label=tier") == {"new:1"}
    # by id or digest, as any image reference the store resolves
    assert _names(dated, f"before={DATED['mid'].config_digest()[7:19]}") == {"old:1"}
    assert _names(dated, f"since={DATED['mid'].manifest_digest()}") == {"new:1"}


def test_filters_combine_with_quiet_and_no_trunc(dated: Cli) -> None:
    ids = ok(dated("images", "-q", "--filter", "label=tier")).split()
    assert sorted(ids) == sorted(DATED[t].config_digest()[7:19] for t in ("old", "new"))
    full = ok(dated("images", "-q", "--no-trunc", "--filter", "since=old:1")).split()
    assert sorted(full) == sorted(DATED[t].config_digest() for t in ("mid", "new"))
    rows = ok(dated("images", "--no-trunc", "--filter", "before=mid:1")).splitlines()
    assert len(rows) == 2 and DATED["old"].config_digest() in rows[1]


@pytest.mark.parametrize(
    "bad,said,rc",
    [
        ("label=", "label takes KEY or KEY=VALUE", 1),
        ("colour=red", "unknown key 'colour' (before, dangling, label, reference, since)", 1),
        ("before=nope:1", "image 'nope:1'", 1),
        ("since=undated:1", "image 'undated:1' has no creation time", 1),
    ],
)
def test_bad_filters_are_one_line(dated: Cli, bad: str, said: str, rc: int) -> None:
    result = dated("images", "--filter", bad)
    assert result.rc == rc and result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapshotter: error: ") and said in lines[0]


# -- a real image from ../shared/fixtures against skopeo -----------------------------------------


def _skopeo(*args: str, auth: Path | None = None) -> bytes:
    """skopeo, with an empty auth file of its own (never the user's) when it talks to a
    registry."""
    need_tool("skopeo")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if auth is not None:
        env["REGISTRY_AUTH_FILE"] = str(auth)
    done = subprocess.run(["skopeo", *args], capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def test_inspect_and_history_of_a_fixture_agree_with_skopeo(cli: Cli, fixtures_dir: Path) -> None:
    source = f"docker-archive:{fixtures_dir / 'docker-archive' / 'ggcr--whiteout_dir.tar'}"
    assert cli("pull", "-q", source, "--name", "fixture:1").rc == 0
    seen = json.loads(_skopeo("inspect", source))
    config_raw = _skopeo("inspect", "--config", "--raw", source)
    config = json.loads(config_raw)
    (doc,) = json.loads(ok(cli("inspect", "fixture:1")))
    assert doc["Id"] == "sha256:" + hashlib.sha256(config_raw).hexdigest()
    assert (doc["Created"], doc["Architecture"], doc["Os"]) == (
        seen["Created"], seen["Architecture"], seen["Os"],
    )  # fmt: skip
    assert doc["Config"]["Env"] == seen["Env"] and doc["Config"]["Labels"] == seen["Labels"]
    # skopeo's manifest of a docker-archive lists diff_ids; ours the blobs as archived
    assert doc["RootFS"]["Layers"] == config["rootfs"]["diff_ids"] == seen["Layers"]
    with tarfile.open(source.split(":", 1)[1]) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        (entry,) = json.loads(member.read())
        blobs = []
        for name in entry["Layers"]:
            layer = tar.extractfile(name)
            assert layer is not None
            blob = layer.read()
            blobs.append(("sha256:" + hashlib.sha256(blob).hexdigest(), len(blob)))
    layers = doc["Snapshotter"]["layers"]
    assert [(layer["digest"], layer["size"]) for layer in layers] == blobs
    # history: every entry, newest first, exactly as the config has it (legacy #(nop) lines)
    hist = json.loads(ok(cli("history", "--json", "fixture:1")))
    assert [h["created_by"] for h in hist["history"]] == [
        h.get("created_by", "") for h in reversed(config["history"])
    ]
    assert hist["warnings"] == []
    table = ok(cli("history", "--no-trunc", "-H=false", "fixture:1")).splitlines()
    assert len(table) == 1 + len(config["history"])
    assert all("/bin/sh -c #(nop) COPY " in line for line in table[1:])


def test_a_fixture_index_descriptor_is_skopeos_digest(cli: Cli, fixtures_dir: Path) -> None:
    layout = fixtures_dir / "oci-layout" / "stereoscope--multiplatform_oci_dir"
    pull = cli("pull", "-q", "--all-platforms", f"oci:{layout}:latest", "--name", "mp:1")
    assert pull.rc == 0, pull.err
    seen = json.loads(_skopeo("inspect", "--override-arch", "arm64", f"oci:{layout}:latest"))
    (doc,) = json.loads(ok(cli("inspect", "--platform", "linux/arm64", "mp:1")))
    assert doc["Descriptor"]["digest"] == seen["Digest"]
    assert doc["RepoDigests"] == [f"mp@{seen['Digest']}"]
    assert [layer["digest"] for layer in doc["Snapshotter"]["layers"]] == seen["Layers"]
    assert (doc["Created"], doc["Architecture"]) == (seen["Created"], "arm64")


# -- docker://REF without pulling -----------------------------------------------------------------

AMD = ImageBuilder(
    [LayerBuilder().file("arch", b"amd64" * 100)],
    architecture="amd64",
    config_extra={"Cmd": ["amd64"]},
    history=[{"created": "2024-02-01T00:00:00Z", "created_by": "COPY arch /"}],
)
ARM = ImageBuilder(
    [LayerBuilder().file("arch", b"arm64" * 100), LayerBuilder().file("more", b"m")],
    architecture="arm64",
    variant="v8",
    config_extra={"Cmd": ["arm64"]},
    history=[
        {"created": "2024-02-01T00:00:00Z", "created_by": "COPY arch /"},
        {"created": "2024-02-01T00:00:01Z", "created_by": "COPY more /"},
    ],
)


@dataclass
class Served:
    registry: Registry
    proxy: FaultProxy
    index_digest: str
    auth: Path  # an empty auth file for skopeo

    @property
    def host(self) -> str:
        return self.proxy.host

    def blob_requests(self) -> list[str]:
        return [s.path.rsplit("/", 1)[-1] for s in self.proxy.requests_to(r"/blobs/")]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    need_tool("docker-registry")
    need_tool("skopeo")
    layout = tmp_path_factory.mktemp("remote") / "oci"
    write_oci_layout(layout, {"hist": HIST, "short": SHORT}, index_of={"multi": [AMD, ARM]})
    registry = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        registry.push(f"oci:{layout}:hist", "app:hist")
        registry.push(f"oci:{layout}:short", "app:short")
        registry.push(f"oci:{layout}:multi", "app:multi", all_images=True)
        index = json.loads((layout / "index.json").read_bytes())
        (multi,) = [m for m in index["manifests"] if m["mediaType"].endswith("index.v1+json")]
        proxy = FaultProxy(registry.host)
        try:
            yield Served(registry, proxy, multi["digest"], layout.parent / "auth.json")
        finally:
            proxy.stop()
    finally:
        registry.stop()


@pytest.fixture
def remote(
    served: Served, cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Served]:
    isolate_user_auth(monkeypatch, tmp_path)
    served.auth.write_text('{"auths": {}}')
    with served.proxy.lock:
        served.proxy.faults.clear()
        served.proxy.seen.clear()
    yield served


def _skopeo_remote(served: Served, *args: str) -> bytes:
    """skopeo against the registry itself (the proxy keeps one Accept header of several,
    which skopeo needs), for the reference ``args[-1]`` names through the proxy."""
    ref = args[-1].replace(served.proxy.host, served.registry.host)
    return _skopeo(*args[:-1], "--tls-verify=false", ref, auth=served.auth)


def test_remote_inspect_reads_manifest_and_config_only(
    remote: Served, cli: Cli, store_root: Path
) -> None:
    ref = f"{remote.host}/app:hist"
    (doc,) = json.loads(ok(cli("inspect", f"docker://{ref}")))
    assert remote.blob_requests() == [HIST.config_digest()]  # no layer blob
    assert not store_root.exists()  # nothing pulled, no store made
    seen = json.loads(_skopeo_remote(remote, "inspect", f"docker://{ref}"))
    assert doc["Descriptor"]["digest"] == seen["Digest"] == HIST.manifest_digest()
    assert doc["RepoTags"] == [ref] and doc["RepoDigests"] == [
        f"{remote.host}/app@{seen['Digest']}"
    ]
    assert [layer["digest"] for layer in doc["Snapshotter"]["layers"]] == seen["Layers"]
    built = HIST.built_layers()
    assert doc["Id"] == HIST.config_digest()
    assert doc["Size"] == sum(b.size for b in built)  # compressed: all that is known
    assert "GraphDriver" not in doc and "Metadata" not in doc
    assert doc["Config"]["Labels"] == {"org.example.team": "core", "tier": "<gold> & co"}
    assert doc["RootFS"]["Layers"] == [b.diff_id for b in built]
    assert doc["Snapshotter"] == {
        "source": f"docker://{ref}",
        "remote": True,
        "manifest_digest": HIST.manifest_digest(),
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "index_digest": None,
        "platform": "linux/amd64",
        "compressed_size": sum(b.size for b in built),
        "unpacked_size": None,
        "layers": [
            {
                "number": n + 1,
                "digest": b.digest,
                "diff_id": b.diff_id,
                "media_type": b.media_type,
                "size": b.size,
                "unpacked_size": None,
                "snapshot": None,
            }
            for n, b in enumerate(built)
        ],
    }


def test_remote_history_shows_compressed_sizes(remote: Served, cli: Cli) -> None:
    ref = f"docker://{remote.host}/app:hist"
    sizes = [b.size for b in HIST.built_layers()]
    table = ok(cli("history", "-H=false", ref)).splitlines()
    assert remote.blob_requests() == [HIST.config_digest()]
    cells = [re.split(r" {3,}", line) for line in table]
    assert [row[0] for row in cells] == ["IMAGE", iid(HIST)] + ["<missing>"] * 4
    # the SIZE column: compressed layer sizes, 0 for empty entries
    assert [row[3] for row in cells[1:]] == [
        "0", str(sizes[2]), str(sizes[1]), "0", str(sizes[0]),
    ]  # fmt: skip
    doc = json.loads(ok(cli("history", "--json", ref)))
    assert doc["remote"] is True and doc["id"] == HIST.config_digest()
    assert [(h["layer"], h["size"], h["compressed_size"]) for h in doc["history"]] == [
        (None, 0, 0), (3, None, sizes[2]), (2, None, sizes[1]), (None, 0, 0), (1, None, sizes[0]),
    ]  # fmt: skip
    short = cli("history", "-q", f"docker://{remote.host}/app:short")
    assert short.out.splitlines() == [iid(SHORT), *["<missing>"] * 3]
    assert "the last 2 layers show (missing)" in short.err


def test_remote_index_whole_and_by_platform(remote: Served, cli: Cli) -> None:
    ref = f"{remote.host}/app:multi"
    (whole,) = json.loads(ok(cli("inspect", f"docker://{ref}")))
    assert remote.blob_requests() == []  # the index alone
    assert whole["Descriptor"]["digest"] == remote.index_digest
    assert whole["RepoDigests"] == [f"{remote.host}/app@{remote.index_digest}"]
    assert [
        (m["Descriptor"]["digest"], m["Descriptor"]["platform"], m["Kind"])
        for m in whole["Manifests"]
    ] == [
        (AMD.manifest_digest(), {"architecture": "amd64", "os": "linux"}, "image"),
        (ARM.manifest_digest(), {"architecture": "arm64", "os": "linux", "variant": "v8"}, "image"),
    ]
    seen = json.loads(
        _skopeo_remote(remote, "inspect", "--override-arch", "arm64", f"docker://{ref}")
    )
    remote.proxy.seen.clear()
    (doc,) = json.loads(ok(cli("inspect", "--platform", "linux/arm64", f"docker://{ref}")))
    assert remote.blob_requests() == [ARM.config_digest()]
    # the digest the registry serves for the tag, as skopeo's Digest: the index's
    assert doc["Descriptor"]["digest"] == seen["Digest"] == remote.index_digest
    assert doc["Id"] == ARM.config_digest() and doc["Variant"] == "v8"
    assert doc["Snapshotter"]["index_digest"] == remote.index_digest
    assert doc["Snapshotter"]["manifest_digest"] == ARM.manifest_digest()
    assert [layer["digest"] for layer in doc["Snapshotter"]["layers"]] == seen["Layers"]
    hist = ok(cli("history", "-q", "--no-trunc", "--platform", "linux/arm64", f"docker://{ref}"))
    assert hist.splitlines() == [ARM.config_digest(), "<missing>"]
    missing = cli("inspect", "--platform", "linux/s390x", f"docker://{ref}")
    assert missing.rc == 1 and "no manifest for platform linux/s390x" in missing.err


def test_remote_raw_is_the_manifest_as_served(remote: Served, cli: Cli) -> None:
    for tag in ("hist", "multi"):
        ref = f"docker://{remote.host}/app:{tag}"
        raw = ok(cli("inspect", "--raw", ref))
        assert raw.encode() == _skopeo_remote(remote, "inspect", "--raw", ref)
    assert remote.blob_requests() == []
    ref = f"docker://{remote.host}/app:multi"
    raw = ok(cli("inspect", "--raw", "--platform", "linux/arm64", ref))
    assert raw == ARM.manifest_bytes().decode()


def test_remote_content_is_verified(remote: Served, cli: Cli) -> None:
    remote.proxy.faults.append(Fault("flip", pattern=rf"/blobs/{HIST.config_digest()}", at=10))
    result = cli("inspect", f"docker://{remote.host}/app:hist")
    assert result.rc == 1 and result.out == ""
    assert "snapshotter: error: " in result.err and HIST.config_digest() in result.err
    remote.proxy.faults.append(Fault("flip", pattern=r"/manifests/", at=20))
    result = cli("history", f"docker://{remote.host}/app:hist")
    assert result.rc == 1 and result.out == ""
    assert "manifest" in result.err


def test_remote_usage(remote: Served, cli: Cli) -> None:
    result = cli("inspect", "--record", f"docker://{remote.host}/app:hist")
    assert result.rc == 2 and "docker:// images have none" in result.err
    result = cli("inspect", "docker://")
    assert result.rc == 1 and "expected docker://NAME" in result.err
    result = cli("history", f"docker://{remote.host}/app:nope")
    assert result.rc == 1 and result.err.startswith("snapshotter: error: ")


def test_docker_archive_names_are_familiar(cli: Cli, tmp_path: Path) -> None:
    write_docker_archive(tmp_path / "img.tar", {"busybox:1.36": HIST})
    assert cli("pull", "-q", f"docker-archive:{tmp_path / 'img.tar'}").rc == 0
    (doc,) = json.loads(ok(cli("inspect", "busybox:1.36")))
    assert doc["RepoTags"] == ["busybox:1.36"]
    assert doc["RepoDigests"][0].startswith("busybox@sha256:")
