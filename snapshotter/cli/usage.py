"""``snapshotter du`` and ``wasted``: where an image's bytes are, and which it wastes."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from json.encoder import encode_basestring
from pathlib import Path

from ..errors import InvalidConfig
from ..explore.du import DiskUsage, disk_usage
from ..explore.image import StoredImage, display_path
from ..explore.wasted import (
    HIGHEST_USER_WASTED_PERCENT,
    HIGHEST_WASTED_BYTES,
    LOWEST_EFFICIENCY,
    HiddenEntry,
    RuleResult,
    Status,
    WasteReport,
    analyze,
    dive_file_list,
    evaluate,
    go_fixed,
    hidden,
    humanize_bytes,
    make_rules,
    parse_ci_config,
)
from ..store.store import Store
from . import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from .common import image_arguments, stored_image
from .format import (
    go_escape,
    kind_name,
    print_json,
    print_table,
    shown,
    size_arguments,
    size_text,
    wants_human,
    warn,
)

DIVE_CI_CONFIG = ".dive-ci"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "du",
        help="apparent bytes per directory of an image, and per layer",
        description=(
            "Print the bytes of regular files under each directory of the image's merged "
            "view (what a container sees), a directory after everything below it, as 'du "
            "--apparent-size -b' prints them: SIZE<tab>PATH. A hardlinked file counts once, "
            "at its first name. Symlinks are not followed. With --by-layer, also the bytes "
            "each layer ships under each directory, including those a later layer "
            "overwrote or deleted."
        ),
    )
    image_arguments(p)
    p.add_argument("path", metavar="PATH", nargs="?", default="/", help="start here (default /)")
    p.add_argument(
        "-d",
        "--depth",
        type=_depth,
        metavar="N",
        help="print directories at most N levels below PATH (totals still count everything)",
    )
    p.add_argument(
        "--by-layer",
        action="store_true",
        help="add a column per layer (L1 = the base): the bytes that layer ships under the "
        "directory, hidden ones included; VISIBLE is what the merged view shows",
    )
    p.add_argument("--json", action="store_true", help="one JSON document")
    size_arguments(p)
    p.set_defaults(handler=cmd_du)

    p = sub.add_parser(
        "wasted",
        help="bytes an image ships more than once or hidden (dive's efficiency, CI rules)",
        description=(
            "Score the image as dive does: for each path, the sizes of the entries every "
            "layer put there; efficiency = sum of the smallest / sum of all. A path with "
            "more than one entry wastes what is beyond one copy. The table lists those, "
            "most first. --ci (or CI=true in the environment, as dive) prints dive's CI "
            "report and checks its rules (from ./.dive-ci, or --ci-config, then the rule "
            "options): exit 1 when one fails. --json writes dive's --json document. "
            "--hidden lists every file a layer ships that a later layer hid. "
            "docs/wasted.md lists every difference from dive."
        ),
    )
    image_arguments(p)
    p.add_argument(
        "--ci",
        action="store_true",
        help="print dive's CI report and check the rules; exit 1 if one fails (also when "
        "the environment has CI=true, 1 or yes)",
    )
    p.add_argument(
        "--ci-config",
        type=Path,
        metavar="FILE",
        help=f"read the rules from FILE (YAML, dive's .dive-ci; default ./{DIVE_CI_CONFIG} "
        "when it exists); implies --ci",
    )
    p.add_argument(
        "--lowest-efficiency",
        "--lowestEfficiency",
        dest="lowest_efficiency",
        metavar="F",
        help="fail below this efficiency (0-1, or 'disabled'; default 0.9); implies --ci",
    )
    p.add_argument(
        "--highest-wasted-bytes",
        "--highestWastedBytes",
        dest="highest_wasted_bytes",
        metavar="N",
        help="fail above this many wasted bytes (20MB, 1.5GiB, 1000 ... or 'disabled', "
        "the default); implies --ci",
    )
    p.add_argument(
        "--highest-user-wasted-percent",
        "--highestUserWastedPercent",
        dest="highest_user_wasted_percent",
        metavar="F",
        help="fail above this ratio of wasted bytes to the bytes of the layers above the "
        "base image (0-1, or 'disabled'; default 0.1); implies --ci",
    )
    p.add_argument(
        "--hidden",
        action="store_true",
        help="list the files layers ship that the merged view hides: which layer, how many "
        "bytes, and what hid them (the audit for deleted secrets and bloat)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="write dive's --json document (with --hidden: the hidden files); no CI check",
    )
    size_arguments(p)
    p.set_defaults(handler=cmd_wasted)


def _depth(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {value}")
    return value


# -- du ----------------------------------------------------------------------------------------


def cmd_du(store: Store, args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty()
    image = stored_image(store, args)
    usage = disk_usage(image, args.path, args.depth, args.by_layer)
    if args.json:
        print_json(du_json(usage, args.by_layer))
        return EXIT_OK
    human = wants_human(args)
    if not args.by_layer:
        for row in usage.rows:
            print(f"{size_text(row.size, human)}\t{shown(display_path(row.path), tty)}")
        return EXIT_OK
    header = ["VISIBLE", *(f"L{n}" for n in range(1, usage.layers + 1)), "PATH"]
    table = [header]
    for row in usage.rows:
        table.append(
            [
                size_text(row.size, human),
                *(size_text(b, human) for b in row.by_layer),
                shown(display_path(row.path), tty),
            ]
        )
    print_table(table, sep="  ")
    return EXIT_OK


def du_json(usage: DiskUsage, by_layer: bool) -> dict[str, object]:
    entries: list[dict[str, object]] = []
    for row in usage.rows:
        entry: dict[str, object] = {
            "path": display_path(row.path),
            "depth": row.depth,
            "size": row.size,
        }
        if by_layer:
            entry["by_layer"] = [
                {"layer": n, "size": b} for n, b in enumerate(row.by_layer, start=1)
            ]
        entries.append(entry)
    return {
        "path": display_path(usage.path),
        "type": kind_name(usage.kind),
        "layers": usage.layers,
        "entries": entries,
    }


# -- wasted ------------------------------------------------------------------------------------


def cmd_wasted(store: Store, args: argparse.Namespace) -> int:
    if args.hidden:
        if args.ci or _rule_options(args):
            print(
                "snapshotter: error: wasted: --hidden lists files and checks no rules "
                "(drop --ci, --ci-config and the rule options)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        image = stored_image(store, args)
        entries = hidden(image)
        if args.json:
            print_json(hidden_json(entries))
        else:
            print_hidden(entries, wants_human(args))
        return EXIT_OK
    image = stored_image(store, args)
    report = analyze(image)
    if report.base.warning:
        warn(report.base.warning)
    if args.json:
        # As dive: --json writes the document and checks nothing.
        write_go_json(dive_json(image, report))
        return EXIT_OK
    if ci_mode(args):
        results = evaluate(make_rules(rule_values(args)), report)
        print(ci_report(report, results))
        return EXIT_ERROR if any(r.status is Status.FAIL for r in results) else EXIT_OK
    print_waste(report, wants_human(args))
    return EXIT_OK


def _rule_options(args: argparse.Namespace) -> bool:
    given = (
        args.ci_config,
        args.lowest_efficiency,
        args.highest_wasted_bytes,
        args.highest_user_wasted_percent,
    )
    return any(v is not None for v in given)


def ci_mode(args: argparse.Namespace) -> bool:
    """--ci, a rule option or --ci-config, or CI=true|1|yes in the environment (dive's
    test, exactly)."""
    return bool(args.ci) or _rule_options(args) or os.environ.get("CI") in ("true", "1", "yes")


def rule_values(args: argparse.Namespace) -> dict[str, str]:
    """The rules' texts: dive's defaults, then the config file, then the options."""
    values: dict[str, str] = {}
    path: Path | None = args.ci_config
    if path is None and Path(DIVE_CI_CONFIG).is_file():
        path = Path(DIVE_CI_CONFIG)
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidConfig(f"ci config {str(path)!r}: cannot read it ({exc})") from exc
        config = parse_ci_config(text, str(path))
        for warning in config.warnings:
            warn(warning)
        values.update(config.rules)
    for key, value in (
        (LOWEST_EFFICIENCY, args.lowest_efficiency),
        (HIGHEST_WASTED_BYTES, args.highest_wasted_bytes),
        (HIGHEST_USER_WASTED_PERCENT, args.highest_user_wasted_percent),
    ):
        if value is not None:
            values[key] = value
    return values


def _percent(report: WasteReport) -> str:
    """dive's userWastedPercent line: ``0 %`` when nothing is wasted."""
    if not report.wasted:
        return "0 %"
    return f"{go_fixed(report.user_wasted_ratio * 100, 2)} %"


def ci_report(report: WasteReport, results: Sequence[RuleResult]) -> str:
    """dive's CI report (cmd/dive/cli/internal/command/ci/evaluator.go), without colours,
    with our numbers: wastedBytes and each file's Wasted Space are the bytes beyond one
    copy, and files that waste nothing are left out."""
    tty = sys.stdout.isatty()

    def pair(key: str, value: str) -> str:
        return f"  {key + ':':<18} {value}"

    wasted = report.wasted
    human = f"({humanize_bytes(wasted)})" if wasted else ""
    analysis = "\n".join(
        [
            "Analysis:",
            pair("efficiency", f"{go_fixed(report.efficiency * 100, 2)} %"),
            pair("wastedBytes", f"{wasted} bytes {human}"),
            pair("userWastedPercent", _percent(report)),
        ]
    )
    files = report.files
    if files:
        rows = [f"  {'Count':<5}  {'Wasted Space':<12}  File Path"]
        rows += [
            f"  {p.count!s:<5}  {humanize_bytes(p.wasted):<12}  {shown(display_path(p.path), tty)}"
            for p in files
        ]
        inefficient = "Inefficient Files:\n" + "\n".join(rows)
    else:
        inefficient = "Inefficient Files: (None)"
    lines = [f"  {r.status.value}  {r.key} ({r.message})" for r in results]
    tally = {s: sum(1 for r in results if r.status is s) for s in Status}
    parts = [
        f"{name}:{tally[s]}"
        for name, s in (("pass", Status.PASS), ("fail", Status.FAIL), ("skip", Status.SKIP))
        if tally[s]
    ]
    status = "FAIL" if tally[Status.FAIL] else "PASS"
    evaluation = "Evaluation:\n" + "\n".join(lines) + f"\n\n{status} [{' '.join(parts)}]"
    return "\n\n".join([analysis, inefficient, evaluation])


def print_waste(report: WasteReport, human: bool) -> None:
    tty = sys.stdout.isatty()
    base = report.base.layers
    n = len(report.layers)
    if base >= n:
        user = "no layers above the base image"
    else:
        above = f"layer {n}" if base + 1 == n else f"layers {base + 1}-{n}"
        user = f"of {size_text(report.user_size, human)} in {above}, above the base"
    print(f"Image efficiency:  {go_fixed(report.efficiency * 100, 2)} %")
    print(f"Wasted:            {size_text(report.wasted, human)}")
    print(f"User wasted:       {_percent(report)} ({user})")
    print()
    table = [["Count", "Wasted Space", "File Path"]]
    for p in report.files:
        table.append([str(p.count), size_text(p.wasted, human), shown(display_path(p.path), tty)])
    print_table(table, sep="  ")


def print_hidden(entries: Sequence[HiddenEntry], human: bool) -> None:
    tty = sys.stdout.isatty()
    table = [["LAYER", "SIZE", "HIDDEN", "PATH"]]
    for e in entries:
        table.append(
            [
                str(e.layer),
                size_text(e.size, human),
                f"{e.how.text} in layer {e.by_layer}",
                shown(display_path(e.path), tty),
            ]
        )
    print_table(table, sep="  ")


def hidden_json(entries: Sequence[HiddenEntry]) -> dict[str, object]:
    return {
        "hidden": [
            {
                "path": display_path(e.path),
                "layer": e.layer,
                "type": kind_name(e.kind),
                "size": e.size,
                "digest": e.digest,
                "linkname": e.link,
                "how": e.how.value,
                "by_layer": e.by_layer,
                "by_path": display_path(e.by_path),
            }
            for e in entries
        ],
        "bytes": sum(e.size for e in entries),
    }


# -- dive's --json ---------------------------------------------------------------------------


def dive_json(image: StoredImage, report: WasteReport) -> dict[str, object]:
    """dive's export document (cmd/dive/cli/internal/command/export/export.go), keys in its
    order, plus a ``snapshotter`` object with our numbers (dive's readers ignore it)."""
    layers = []
    for layer in report.layers:
        files = [
            {
                "path": f.path,
                "typeFlag": f.type_flag,
                "linkName": f.link_name,
                "size": f.size,
                "fileMode": f.file_mode,
                "uid": f.uid,
                "gid": f.gid,
                "isDir": f.is_dir,
            }
            for f in dive_file_list(image, layer.number)
        ]
        layers.append(
            {
                "index": layer.number - 1,  # dive's: from 0
                "id": layer.digest.partition(":")[2],
                "digestId": layer.diff_id,
                "sizeBytes": layer.size,
                "command": layer.command,
                "fileList": files,
            }
        )
    ratio = report.user_wasted_ratio
    return {
        "layer": layers,
        "image": {
            "sizeBytes": report.size,
            "inefficientBytes": report.dive_inefficient_bytes,
            "efficiencyScore": report.efficiency,
            "fileReference": [
                {"count": p.count, "sizeBytes": p.total, "file": display_path(p.path)}
                for p in report.inefficient
            ],
        },
        "snapshotter": {
            "wastedBytes": report.wasted,
            "userSizeBytes": report.user_size,
            "userWastedPercent": ratio if math.isfinite(ratio) else None,
            "baseLayers": report.base.layers,
            "baseDigest": report.base.digest,
            "inefficientFiles": [
                {
                    "count": p.count,
                    "sizeBytes": p.total,
                    "wastedBytes": p.wasted,
                    "file": display_path(p.path),
                }
                for p in report.files
            ],
        },
    }


def write_go_json(doc: object) -> None:
    """``doc`` as Go's ``json.MarshalIndent(doc, "", "  ")`` writes it: keys in the given
    order, floats and strings in Go's forms."""
    out: list[str] = []
    _go_json(doc, "", out)
    sys.stdout.write("".join(out))
    sys.stdout.write("\n")


def _go_json(value: object, indent: str, out: list[str]) -> None:
    if isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        inner = indent + "  "
        if not any(isinstance(v, dict | list) for v in value.values()):
            # A flat object (a fileList entry: 100k of them): in one piece.
            out.append(
                "{\n"
                + ",\n".join(f"{inner}{_go_key(k)}: {_go_scalar(v)}" for k, v in value.items())
                + f"\n{indent}}}"
            )
            return
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            out.append(("," if i else "") + "\n" + inner + _go_key(key) + ": ")
            _go_json(item, inner, out)
        out.append("\n" + indent + "}")
    elif isinstance(value, list):
        if not value:
            out.append("[]")
            return
        inner = indent + "  "
        out.append("[")
        for i, item in enumerate(value):
            out.append(("," if i else "") + "\n" + inner)
            _go_json(item, inner, out)
        out.append("\n" + indent + "]")
    else:
        out.append(_go_scalar(value))


_KEYS: dict[str, str] = {}


def _go_key(key: object) -> str:
    """A key as Go writes it; remembered, as the same few keys come 100k times."""
    name = str(key)
    text = _KEYS.get(name)
    if text is None:
        text = _KEYS[name] = go_string(name)
    return text


def _go_scalar(value: object) -> str:
    if isinstance(value, str):
        return go_string(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_json_float(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


_SURROGATE = re.compile("[\ud800-\udfff]")
# Strings Go writes as they are: printable ASCII but for ", \\, <, > and &.
_PLAIN = re.compile(r"[ !#-%'-;=?-\[\]-~]*")


def go_string(text: str) -> str:
    """A JSON string as Go's encoding/json writes it: UTF-8, ``<``, ``>``, ``&``, U+2028
    and U+2029 escaped, each byte that is not UTF-8 as U+FFFD."""
    if _PLAIN.fullmatch(text):
        return f'"{text}"'
    text = _SURROGATE.sub("\ufffd", text)
    quoted = str(encode_basestring(text))
    return go_escape(quoted)


def go_json_float(x: float) -> str:
    """A float64 as Go's encoding/json writes it: the shortest digits, plain from 1e-6 to
    1e21, else with an exponent (``1e-7``); NaN and infinities are no JSON (null here)."""
    if not math.isfinite(x):
        return "null"
    if x == 0:
        return "0"
    if 1e-6 <= abs(x) < 1e21:
        text = repr(x)
        if "e" in text or "E" in text:
            # repr uses an exponent below 1e-4 and from 1e16: write it out.
            from decimal import Decimal

            text = format(Decimal(text), "f")
        return text.removesuffix(".0")
    return repr(x).replace("e-0", "e-")
