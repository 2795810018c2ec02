"""Output for people and for scripts: sizes, ages, tables, JSON.

Everything the commands print goes through here, so a size or a date looks the same in
every table, and ``--json`` documents have one style (indented, keys sorted).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import unicodedata
from collections.abc import Sequence

from ..store.toc import EntryKind


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


def char_width(c: str) -> int:
    """Columns a character takes as docker counts them when it cuts text: 2 for East Asian
    wide and fullwidth characters, else 1 (docker's ``formatter.charWidth``)."""
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal (as go-runewidth, which docker's tables pad
    with): wide characters 2, combining marks and format characters 0, others 1."""
    width = 0
    for c in text:
        if unicodedata.category(c) in ("Mn", "Me", "Cf"):
            continue
        width += char_width(c)
    return width


def ellipsis(text: str, max_width: int) -> str:
    """``text`` cut to ``max_width`` display columns with a final ``…``, exactly as
    docker's ``formatter.Ellipsis`` cuts CREATED BY (a wide character counts 2, so a cut
    line may be one column short)."""
    if max_width <= 0:
        return ""
    if max_width == 1:
        return text[:1]
    widths = [char_width(c) for c in text]
    if sum(widths) <= max_width:
        return text
    used = 0
    for i, w in enumerate(widths):
        if used + w > max_width - 1:
            return text[:i] + "…"
        used += w
    return text


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


def human_size(n: int) -> str:
    """docker's SI sizes: 1kB = 1000 bytes, 3 significant digits, no space (``4.62kB``)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.3g}{unit}"
        size /= 1000
    return f"{n}B"


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


# -- file modes ----------------------------------------------------------------------------

_KIND_LETTER = {
    EntryKind.FILE: "-",
    EntryKind.DIR: "d",
    EntryKind.SYMLINK: "l",
    EntryKind.CHAR: "c",
    EntryKind.BLOCK: "b",
    EntryKind.FIFO: "p",
    EntryKind.WHITEOUT: "w",
}


def mode_string(kind: EntryKind, mode: int) -> str:
    """``ls -l``'s mode column: ``drwxr-xr-x``, with setuid/setgid/sticky as s/S and t/T."""
    out = [_KIND_LETTER[kind]]
    for shift, special, letter in ((6, 0o4000, "s"), (3, 0o2000, "s"), (0, 0o1000, "t")):
        bits = (mode >> shift) & 7
        out.append("r" if bits & 4 else "-")
        out.append("w" if bits & 2 else "-")
        if mode & special:
            out.append(letter if bits & 1 else letter.upper())
        else:
            out.append("x" if bits & 1 else "-")
    return "".join(out)


def kind_name(kind: EntryKind) -> str:
    """The ``type`` of an entry in ``--json`` documents."""
    return _KIND_NAME[kind]


_KIND_NAME = {
    EntryKind.FILE: "file",
    EntryKind.DIR: "dir",
    EntryKind.SYMLINK: "symlink",
    EntryKind.CHAR: "char",
    EntryKind.BLOCK: "block",
    EntryKind.FIFO: "fifo",
    EntryKind.WHITEOUT: "whiteout",
}


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


# -- names from images ---------------------------------------------------------------------

# Characters that would drive a terminal (C0 and C1 controls, DEL) and the bytes of a name
# that were not UTF-8 (decoded as surrogate escapes, U+DC80..U+DCFF).
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\udc80-\udcff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code >= 0xDC80:  # surrogateescape: the raw byte
        code -= 0xDC00
    return f"\\x{code:02x}"


def shown(text: str, tty: bool) -> str:
    """A name from an image as a command prints it: on a terminal, control characters and
    undecodable bytes as ``\\xNN`` escapes, so no image can drive the terminal; to a pipe
    or file, exactly as the image has it (``main`` writes stdout with surrogateescape, so
    undecodable bytes go out as the bytes they were, as ``find`` and ``du`` print them).
    ``--json`` output is always exact."""
    return _UNPRINTABLE.sub(_escape, text) if tty else text


def warn(text: str) -> None:
    """A warning: one line on stderr, ``snapshotter: warning: ...``."""
    print(f"snapshotter: warning: {text}", file=sys.stderr)
