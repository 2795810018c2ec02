"""How values read to people: sizes, modes, kinds, widths and names from images.

Shared by the command line (``cli/``) and the terminal browser (``browse/``), so a size, a
mode or a hostile file name looks the same in both.  Plain functions over plain values:
nothing here imports more than the standard library and ``store.toc``.
"""

from __future__ import annotations

import re
import unicodedata

from .store.toc import EntryKind

# -- widths on a terminal --------------------------------------------------------------------


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


# -- sizes ---------------------------------------------------------------------------------


def human_size(n: int) -> str:
    """docker's SI sizes: 1kB = 1000 bytes, 3 significant digits, no space (``4.62kB``)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.3g}{unit}"
        size /= 1000
    return f"{n}B"


# -- file modes and kinds ------------------------------------------------------------------

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


# -- names and text from images ------------------------------------------------------------

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


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` (a history's created_by) for one line: tabs, newlines and other control
    characters as spaces; cut to ``limit`` characters with "…" when longer."""
    text = "".join(c if c.isprintable() else " " for c in text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


__all__ = [
    "char_width",
    "display_width",
    "ellipsis",
    "human_size",
    "kind_name",
    "mode_string",
    "one_line",
    "shown",
]
