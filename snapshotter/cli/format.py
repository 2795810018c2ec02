"""Output for people and for scripts: sizes, ages, tables, JSON.

Everything the commands print goes through here, so a size or a date looks the same in
every table, and ``--json`` documents have one style (indented, keys sorted).  How single
values read (sizes, modes, widths, names from images) lives in ``snapshotter/text.py``,
shared with the browser; it is imported back here so commands keep one import.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from collections.abc import Sequence

from ..text import (
    char_width,
    display_width,
    ellipsis,
    human_size,
    kind_name,
    mode_string,
    shown,
)


def print_json(doc: object) -> None:
    """One JSON document on stdout: indented, keys sorted."""
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def print_json_lines(docs: Sequence[object]) -> None:
    """docker's ``--format json``: one compact object per line, keys sorted, escaped as
    Go's json.Marshal escapes (``go_escape``)."""
    for doc in docs:
        line = json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        sys.stdout.write(go_escape(line) + "\n")


# Go's encoding/json escapes these inside strings (none can appear outside one).
_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_GO_ESCAPED = re.compile("[<>&\u2028\u2029]")


def go_escape(json_text: str) -> str:
    """JSON text as Go's encoding/json would have written it: ``<``, ``>``, ``&``, U+2028
    and U+2029 as ``\\uXXXX`` escapes (what docker's and dive's output carry)."""
    return _GO_ESCAPED.sub(lambda m: _GO_ESCAPES[m.group()], json_text)


def print_table(rows: Sequence[Sequence[str]], sep: str = "   ") -> None:
    """Columns padded to their widest cell; the first row is the header, if any."""
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(sep.join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def print_docker_table(rows: Sequence[Sequence[str]]) -> None:
    """A table spaced exactly as docker's (its tabwriter with minwidth 10 and padding 3):
    every column but the last is padded to max(10, widest cell + 3) display columns, the
    last is not padded; the first row is the header.  Unlike ``print_table``, lines keep
    docker's trailing blanks when the last cell is empty."""
    if not rows:
        return
    count = len(rows[0])
    widths = [max(10, max(display_width(row[i]) for row in rows) + 3) for i in range(count - 1)]
    for row in rows:
        cells = [
            cell + " " * (w - display_width(cell)) for cell, w in zip(row[:-1], widths, strict=True)
        ]
        print("".join(cells) + row[-1])


def parse_time(created: str) -> datetime.datetime | None:
    """An RFC 3339 time from a config or history entry (any precision); None if it is not
    one.  A time without a zone is UTC."""
    if not created:
        return None
    text = created.strip().replace("Z", "+00:00").replace("z", "+00:00")
    # fromisoformat takes at most 6 digits of fraction; Go writes 9.
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def ago(created: str) -> str:
    """docker's CreatedSince: ``3 weeks ago``; ``N/A`` for no date (or one in 2000 or
    before, which docker treats as none)."""
    when = parse_time(created)
    if when is None:
        return created or "N/A"
    if when <= datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC):
        return "N/A"
    seconds = (datetime.datetime.now(datetime.UTC) - when).total_seconds()
    for unit, span in (
        ("years", 31536000),
        ("months", 2592000),
        ("weeks", 604800),
        ("days", 86400),
        ("hours", 3600),
        ("minutes", 60),
    ):
        if seconds >= 2 * span:
            return f"{int(seconds // span)} {unit} ago"
    return "Less than a minute ago" if seconds >= 0 else created


# -- sizes: human on a terminal, exact bytes when piped ------------------------------------


def size_arguments(p: argparse.ArgumentParser) -> None:
    """``--bytes`` / ``--human``: how sizes print (default: human on a terminal, exact
    bytes when stdout is a pipe or file, so scripts get numbers)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--bytes",
        dest="human",
        action="store_false",
        default=None,
        help="print sizes as exact byte counts (the default when stdout is not a terminal)",
    )
    g.add_argument(
        "--human",
        dest="human",
        action="store_true",
        help="print sizes as docker does (4.62kB; the default on a terminal)",
    )


def wants_human(args: argparse.Namespace) -> bool:
    human: bool | None = getattr(args, "human", None)
    return sys.stdout.isatty() if human is None else human


def size_text(n: int, human: bool) -> str:
    return human_size(n) if human else str(n)


# -- times ---------------------------------------------------------------------------------


def mtime_text(mtime_ns: int) -> str:
    """An mtime as ``ls -l --time-style=long-iso`` in UTC: ``2024-01-01 12:00``."""
    when = datetime.datetime.fromtimestamp(mtime_ns // 1_000_000_000, datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M")


def rfc3339_ns(mtime_ns: int) -> str:
    """An mtime as RFC 3339 with nanoseconds, UTC (``2024-01-01T12:00:00.123456789Z``)."""
    secs, ns = divmod(mtime_ns, 1_000_000_000)
    when = datetime.datetime.fromtimestamp(secs, datetime.UTC)
    frac = f".{ns:09d}".rstrip("0").rstrip(".")
    return when.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


def warn(text: str) -> None:
    """A warning: one line on stderr, ``snapshotter: warning: ...``."""
    print(f"snapshotter: warning: {text}", file=sys.stderr)


__all__ = [
    "ago",
    "char_width",
    "display_width",
    "ellipsis",
    "go_escape",
    "human_size",
    "kind_name",
    "mode_string",
    "mtime_text",
    "parse_time",
    "print_docker_table",
    "print_json",
    "print_json_lines",
    "print_table",
    "rfc3339_ns",
    "shown",
    "size_arguments",
    "size_text",
    "wants_human",
    "warn",
]
