"""The command line: usage errors, stdout for data only, images' columns and filters, --root.

Exit status: 0 success, 1 error (one line on stderr), 2 usage.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from builders import ImageBuilder, LayerBuilder, write_oci_layout
from conftest import run_on_a_terminal, run_snapshotter

from snapshotter.cli import build_parser

# In the order --help lists them: by family (cli/pull, cli/images, cli/inspect, cli/registry,
# cli/mount).
COMMANDS = [
    "pull",
    "images",
    "tag",
    "rmi",
    "prune",
    "history",
    "inspect",
    "tags",
    "search",
    "login",
    "logout",
    "mount",
    "umount",
]


def image(text: str) -> ImageBuilder:
    return ImageBuilder(
        [LayerBuilder().file("etc/base", b"base"), LayerBuilder().file("app", text.encode() * 50)]
    )


def layout(tmp_path: Path, name: str, tag: str = "1.0", text: str | None = None) -> str:
    write_oci_layout(tmp_path / name, {tag: image(text or name)})
    return f"oci:{tmp_path / name}:{tag}"


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapshotter: error: "), err
    return lines[0]


def columns(line: str) -> list[str]:
    return re.split(r" {2,}", line.strip())


# -- usage -------------------------------------------------------------------------------------

EXPLAINS = {
    "pull": "Import an image",
    "images": "List images",
    "tag": "another name",
    "rmi": "Remove names",
    "prune": "Remove dangling images",
    "history": "as docker history shows them",
    "inspect": "docker's image inspect document",
    "tags": "List the tags of a repository",
    "search": "repositories in a registry's catalog",
    "login": "Verify USER/PASSWORD against REGISTRY",
    "logout": "Remove the credentials",
    "mount": "exactly as a container",
    "umount": "Unmount a view",
}


@pytest.mark.parametrize(
    "command",
    COMMANDS,
)
def test_each_command_help_exits_0_and_explains(cli, command):
    result = cli(command, "--help")
    assert result.rc == 0
    assert result.out.startswith(f"usage: snapshotter {command} ")
    assert EXPLAINS[command] in " ".join(result.out.split())


def test_top_level_help_lists_every_command(cli):
    result = cli("--help")
    assert result.rc == 0
    listed = re.findall(r"^    (\w+) ", result.out, re.M)
    assert [c for c in listed if c in COMMANDS] == COMMANDS  # later commands may follow


def test_no_arguments_is_a_usage_error(tmp_path):
    result = run_snapshotter("--root", str(tmp_path / "s"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage: snapshotter" in result.stderr and "pull" in result.stderr
    bare = run_snapshotter()
    assert bare.returncode == 2 and bare.stdout == ""


def test_unknown_command_or_option_is_a_usage_error(tmp_path):
    for args, said in (
        (["frob"], "invalid choice: 'frob'"),
        (["pull", "--bogus", "x"], "--bogus"),
        (["pull"], "SOURCE"),
        (["pull", "--jobs", "two", "oci:x"], "two"),
    ):
        result = run_snapshotter("--root", str(tmp_path / "s"), *args)
        assert result.returncode == 2, args
        assert result.stdout == ""
        assert said in result.stderr.splitlines()[-1]
        assert result.stderr.splitlines()[-1].startswith("snapshotter: error: ")
    assert not (tmp_path / "s").exists()


def test_version(cli):
    result = cli("--version")
    assert result.rc == 0
    assert re.fullmatch(r"snapshotter \d+\.\d+\.\d+\n", result.out)


@pytest.mark.parametrize(
    "source,said",
    [
        ("NOPE:x", "neither an image reference nor TRANSPORT:PATH"),  # nope:x is a registry name
        ("oci:", "no path"),
        ("docker:alpine", "expected docker://NAME"),
        ("oci:/nonexistent/layout", "is not a directory"),
        ("docker-archive:/nonexistent.tar", "is not a file"),
    ],
)
def test_a_bad_source_is_one_line_on_stderr_and_creates_no_store(tmp_path, source, said):
    root = tmp_path / "store"
    result = run_snapshotter("--root", str(root), "pull", source)
    assert result.returncode == 1
    assert result.stdout == ""
    assert said in one_line_error(result.stderr)
    assert not root.exists()


def test_debug_shows_the_traceback(cli, tmp_path):
    plain = cli("inspect", "nope")
    assert plain.rc == 1 and "Traceback" not in plain.err
    debug = cli("--debug", "inspect", "nope")
    assert debug.rc == 1
    assert "Traceback" in debug.err
    assert debug.err.strip().splitlines()[-1] == plain.err.strip()


# -- pull output -------------------------------------------------------------------------------


def test_pull_prints_only_the_manifest_digest_on_stdout(tmp_path):
    source = layout(tmp_path, "app")
    result = run_snapshotter("--root", str(tmp_path / "s"), "pull", source)
    assert result.returncode == 0, result.stderr
    assert result.stdout == image("app").manifest_digest() + "\n"
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith(
        "pulled localhost/app:1.0 (linux/amd64, 2 layers: 2 unpacked, 0 already stored; "
    ), summary
    assert re.search(r" in \d+\.\ds$", summary)

    again = run_snapshotter("--root", str(tmp_path / "s"), "pull", layout(tmp_path, "b"))
    assert "2 layers: 1 unpacked, 1 already stored" in again.stderr


def _run_on_a_terminal(*args: str) -> tuple[int, str, str]:
    """Run snapshotter with stderr on a pseudo-terminal; return (rc, stdout, terminal text)."""
    run = run_on_a_terminal(*args, stdout=False, stderr=True, columns=120)
    return run.rc, run.out.decode(), run.shown.decode(errors="replace")


def test_pull_draws_a_bar_per_layer_on_a_terminal(tmp_path):
    big = ImageBuilder(
        [
            LayerBuilder().file("a", os.urandom(3 << 20)),
            LayerBuilder().file("b", os.urandom(1 << 20)),
        ]
    )
    write_oci_layout(tmp_path / "big", {"1": big})
    rc, out, terminal = _run_on_a_terminal(
        "--root", str(tmp_path / "s"), "pull", f"oci:{tmp_path / 'big'}:1"
    )
    assert rc == 0, terminal
    assert out == big.manifest_digest() + "\n"  # stdout stays data only
    layers = big.built_layers()
    for i, built in enumerate(layers, 1):
        label = f"layer {i}/2 {built.diff_id.split(':')[1][:12]}"
        assert label in terminal, terminal
    assert "3.1/3.1 MB" in terminal and "1.0/1.0 MB" in terminal  # bytes, per layer, done
    assert "\x1b[" in terminal  # drawn, with cursor control
    assert re.search(r"pulled localhost/big:1 \(linux/amd64, 2 layers: 2 unpacked", terminal)


def test_quiet_pull_on_a_terminal_draws_nothing(tmp_path):
    rc, out, terminal = _run_on_a_terminal(
        "--root", str(tmp_path / "s"), "pull", "-q", layout(tmp_path, "app")
    )
    assert rc == 0 and out == image("app").manifest_digest() + "\n"
    assert terminal == ""


def test_quiet_pull_prints_no_summary(tmp_path):
    result = run_snapshotter("--root", str(tmp_path / "s"), "pull", "-q", layout(tmp_path, "app"))
    assert result.returncode == 0
    assert result.stderr == ""
    assert result.stdout == image("app").manifest_digest() + "\n"


def test_pull_json_describes_the_result(cli, tmp_path):
    result = cli("pull", "--json", "-q", layout(tmp_path, "app"))
    assert result.rc == 0 and result.err == ""
    img = image("app")
    assert json.loads(result.out) == {
        "digest": img.manifest_digest(),
        "id": img.config_digest(),
        "names": ["localhost/app:1.0"],
        "moved": [],
        "platform": "linux/amd64",
        "layers": 2,
        "unpacked": 2,
        "reused": 0,
        "size": 4 + 150,
        "diff_ids": [lb.diff_id() for lb in img.layers],
    }


# -- images ------------------------------------------------------------------------------------

HEADER = ["REPOSITORY", "TAG", "IMAGE ID", "PLATFORM", "LAYERS", "CREATED", "SIZE"]


def test_images_table_has_docker_like_columns(cli, tmp_path):
    assert cli("pull", "-q", layout(tmp_path, "app")).rc == 0
    assert cli("pull", "-q", "--name", "busybox:1.36", layout(tmp_path, "bb")).rc == 0
    result = cli("images")
    assert result.rc == 0
    lines = result.out.splitlines()
    assert columns(lines[0]) == HEADER
    rows = {tuple(columns(line)[:2]): columns(line) for line in lines[1:]}
    assert set(rows) == {("localhost/app", "1.0"), ("busybox", "1.36")}  # docker's short form
    row = rows[("localhost/app", "1.0")]
    assert row[2] == image("app").config_digest().split(":")[1][:12]
    assert row[3:5] == ["linux/amd64", "2"]
    assert row[5].endswith(" ago")  # created 2024-01-01
    assert row[6] == "154B"
    # columns line up: each header starts where its values start
    starts = [lines[0].index(h) for h in HEADER]
    for line in lines[1:]:
        assert all(line[s - 1] == " " for s in starts[1:])


def test_images_digests_and_no_trunc(cli, tmp_path):
    assert cli("pull", "-q", layout(tmp_path, "app")).rc == 0
    img = image("app")
    lines = cli("images", "--digests").out.splitlines()
    assert columns(lines[0]) == HEADER[:2] + ["DIGEST"] + HEADER[2:]
    assert columns(lines[1])[2] == img.manifest_digest()
    full = cli("images", "--no-trunc").out.splitlines()
    assert columns(full[1])[2] == img.config_digest()


def test_images_quiet_prints_each_image_id_once(cli, tmp_path):
    assert cli("pull", "-q", layout(tmp_path, "app")).rc == 0
    assert cli("pull", "-q", layout(tmp_path, "other")).rc == 0
    assert cli("tag", "localhost/app:1.0", "localhost/app:also").rc == 0
    ids = cli("images", "-q").out.split()
    assert sorted(ids) == sorted(image(n).config_digest()[7:19] for n in ("app", "other"))
    full = cli("images", "-q", "--no-trunc").out.split()
    assert sorted(full) == sorted(image(n).config_digest() for n in ("app", "other"))


def test_empty_store_lists_only_the_header(cli):
    result = cli("images")
    assert result.rc == 0
    assert [columns(line) for line in result.out.splitlines()] == [HEADER]
    assert json.loads(cli("images", "--json").out) == []
    assert cli("images", "-q").out == ""


NAMED = {
    "foo/sample:1": "docker.io/foo/sample:1",
    "example.com/foo/sample:1": "example.com/foo/sample:1",
    "sample": "docker.io/library/sample:latest",
    "example.com/sample:2": "example.com/sample:2",
    "foo/other:1": "docker.io/foo/other:1",
}


@pytest.fixture
def named_images(cli, tmp_path) -> dict[str, str]:
    """One image per name; returns full name -> manifest digest."""
    out = {}
    for i, (given, full) in enumerate(NAMED.items()):
        result = cli("pull", "--json", "-q", "--name", given, layout(tmp_path, f"i{i}"))
        assert result.rc == 0, result.err
        doc = json.loads(result.out)
        assert doc["names"] == [full]
        out[full] = doc["digest"]
    return out


def _matching(cli, *filters: str) -> set[str]:
    result = cli("images", "--json", *[f"--filter={f}" for f in filters])
    assert result.rc == 0, result.err
    return {n for i in json.loads(result.out) for n in i["names"]}


def test_reference_filter_globs_do_not_cross_slashes(cli, named_images):
    assert _matching(cli, "reference=*/sample*") == {
        "docker.io/foo/sample:1",  # shown as foo/sample
        "example.com/sample:2",
    }
    assert _matching(cli, "reference=sample") == {"docker.io/library/sample:latest"}
    assert _matching(cli, "reference=foo/*") == {"docker.io/foo/sample:1", "docker.io/foo/other:1"}
    assert _matching(cli, "reference=*/*:1") == {"docker.io/foo/sample:1", "docker.io/foo/other:1"}
    assert _matching(cli, "reference=example.com/*/sample:?") == {"example.com/foo/sample:1"}
    assert _matching(cli, "reference=*sample*") == {"docker.io/library/sample:latest"}
    assert _matching(cli, "reference=nothing*") == set()


def test_filters_combine(cli, named_images, tmp_path):
    # move foo/sample:1 to another image: the first one dangles
    assert cli("pull", "-q", "--name", "foo/sample:1", layout(tmp_path, "n", text="new")).rc == 0
    dangling = json.loads(cli("images", "--json", "--filter", "dangling=true").out)
    assert [i["digest"] for i in dangling] == [named_images["docker.io/foo/sample:1"]]
    assert _matching(cli, "dangling=false") == set(NAMED.values())
    assert _matching(cli, "dangling=false", "reference=foo/*") == {
        "docker.io/foo/sample:1",
        "docker.io/foo/other:1",
    }
    assert _matching(cli, "dangling=true", "reference=*") == set()


def test_reference_filter_lists_only_matching_names(cli, tmp_path):
    assert cli("pull", "-q", "--name", "foo/sample:1", layout(tmp_path, "a")).rc == 0
    assert cli("tag", "foo/sample:1", "bar/other:1").rc == 0
    rows = cli("images", "--filter", "reference=*/sample").out.splitlines()[1:]
    assert [columns(r)[:2] for r in rows] == [["foo/sample", "1"]]


@pytest.mark.parametrize("bad", ["nope=1", "dangling=maybe", "bogus", "reference"])
def test_a_bad_filter_exits_1(cli, bad):
    result = cli("images", "--filter", bad)
    assert result.rc == 1
    assert repr(bad) in one_line_error(result.err)
    assert result.out == ""


# -- tag, rmi, inspect output ------------------------------------------------------------------


def test_tag_rmi_and_inspect_speak_on_the_right_streams(cli, tmp_path):
    digest = json.loads(cli("pull", "--json", "-q", layout(tmp_path, "app")).out)["digest"]
    tagged = cli("tag", "localhost/app:1.0", "registry.example:5000/team/app:v2")
    assert (tagged.rc, tagged.out, tagged.err) == (0, "", "")
    doc = json.loads(cli("inspect", "--record", "registry.example:5000/team/app:v2").out)
    assert doc["names"] == ["localhost/app:1.0", "registry.example:5000/team/app:v2"]
    assert doc["digest"] == digest and len(doc["layers"]) == 2

    first = cli("rmi", "localhost/app:1.0")
    assert (first.rc, first.out) == (0, "Untagged: localhost/app:1.0\n")
    last = cli("rmi", "registry.example:5000/team/app:v2")
    assert last.rc == 0
    assert last.out.splitlines() == [
        "Untagged: registry.example:5000/team/app:v2",
        f"Deleted: {digest}",
    ]
    assert last.err.startswith("Freed ")
    missing = cli("inspect", "localhost/app:1.0")
    assert missing.rc == 1 and missing.out == ""
    assert "localhost/app:1.0" in one_line_error(missing.err)


# -- where the store is ------------------------------------------------------------------------


def test_root_option_overrides_the_environment(tmp_path):
    env_root, opt_root = tmp_path / "from-env", tmp_path / "from-option"
    env = {**os.environ, "SNAPSHOTTER_ROOT": str(env_root)}
    a = run_snapshotter("pull", "-q", layout(tmp_path, "a"), env=env)
    assert a.returncode == 0, a.stderr
    assert (env_root / "state.json").is_file()
    b = run_snapshotter("--root", str(opt_root), "pull", "-q", layout(tmp_path, "b"), env=env)
    assert b.returncode == 0, b.stderr

    def listed(*args: str) -> list[str]:
        result = run_snapshotter(*args, "images", "--json", env=env)
        assert result.returncode == 0, result.stderr
        return [n for i in json.loads(result.stdout) for n in i["names"]]

    assert listed() == ["localhost/a:1.0"]
    assert listed("--root", str(opt_root)) == ["localhost/b:1.0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "from-env", "from-option"]


def test_each_command_is_found_in_the_family_that_registers_it():
    import argparse
    import importlib

    from snapshotter.cli import COMMANDS, FAMILIES

    registered = {}
    for family in FAMILIES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"snapshotter.cli.{family}").register(sub)
        registered.update(dict.fromkeys(sub.choices, family))
    assert registered == COMMANDS
    assert list(build_parser()._subparsers._group_actions[0].choices) == list(COMMANDS)


def test_a_command_line_loads_only_its_command_family():
    code = (
        "import sys; from snapshotter.cli import build_parser;"
        "build_parser(sys.argv[1:]).parse_args(sys.argv[1:]);"
        "print(sorted(m for m in sys.modules if m.startswith('snapshotter.cli.')))"
    )
    for argv, loaded in (
        # mount takes the registry options (for mount --lazy docker://): cli.registry,
        # which needs cli.format, and neither imports anything heavy.
        (["--root", "/x", "umount", "/mnt"], ["common", "format", "mount", "registry"]),
        (["--debug", "ls", "img"], ["common", "files", "format"]),
    ):
        out = subprocess.run(
            [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True
        ).stdout
        assert out.strip() == repr([f"snapshotter.cli.{m}" for m in loaded])
