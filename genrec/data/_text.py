"""Line-level helpers shared by the readers: reading, splitting, integer parsing.

Why: every bad-data error must name the file and the 1-based line, and parsing must stay fast on
million-line files, so integers are converted in bulk (``map(int, ...)`` in C) and only on failure
do we walk the tokens again to find and report the first bad one.
"""

from __future__ import annotations

import gzip
import math
import re
from pathlib import Path

import numpy as np

from genrec.errors import DataError

SEP_ALIASES = {"tab": "\t", "\\t": "\t", "comma": ",", "space": " ", "whitespace": " "}


# C0 and C1 control characters except tab (a separator); \n and \r end lines (Python's universal
# newlines turn \r\n and \r into \n when reading)
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
ENCODING = "utf-8-sig"  # UTF-8 that drops a byte-order mark at the start of the file (Excel writes one)


def read_lines(path: Path) -> list[str]:
    """All physical lines of a text file (``.gz`` allowed); DataError if unreadable.

    A UTF-8 byte-order mark at the start is dropped: kept, it would glue itself to the first
    user id or header name. Control characters (C0 and C1, tab aside) are refused with file
    and line: a NUL-padded or binary-damaged file would otherwise yield ids no request can
    ever match, and some of them (vertical tab, form feed, U+001C-U+001E) silently split
    lines or fields in ``str.splitlines``/``str.split``. Lines are split at newlines only, as
    an editor counts them, so the line numbers in errors are the ones the user sees.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding=ENCODING) as fh:
                text = fh.read()
        else:
            text = path.read_text(encoding=ENCODING)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    bad = CONTROL.search(text)
    if bad:
        start = text.rfind("\n", 0, bad.start()) + 1
        end = text.find("\n", bad.start())
        line = text[start:end if end >= 0 else len(text)]
        col = bad.start() - start
        lineno = text.count("\n", 0, bad.start()) + 1
        raise DataError(f"{path}:{lineno}: control character U+{ord(bad.group()):04X} at column {col + 1} "
                        f"in {line[max(0, col - 30):col + 30]!r}; ids and values must be printable text")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return lines


def data_lines(lines: list[str]) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers."""
    return [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]


def resolve_sep(sep: str | None, first_line: str) -> str:
    """The separator to use: explicit (aliases allowed) or detected from the first line.

    Detection order: ``::`` (MovieLens), tab, comma, else runs of whitespace (returned as ``" "``).
    """
    if sep is not None:
        if sep == "":
            raise DataError("separator must not be empty")
        return SEP_ALIASES.get(sep, sep)
    for cand in ("::", "\t", ","):
        if cand in first_line:
            return cand
    return " "


def split_fields(line: str, sep: str) -> list[str]:
    """Split one line; ``" "`` means any run of whitespace.

    Fields are not stripped here (it would double the parse time): ``int``/``float`` ignore
    surrounding blanks, and callers strip user ids and header names themselves.
    """
    if sep == " ":
        return line.split()
    return line.split(sep)


def first_data_line(path: Path) -> tuple[int, str] | None:
    """The first non-blank line and its number, reading no further (format detection)."""
    try:
        opener = gzip.open(path, "rt", encoding=ENCODING) if path.suffix == ".gz" else open(
            path, encoding=ENCODING
        )
        with opener as fh:
            for n, line in enumerate(fh, start=1):
                if line.strip():
                    return n, line.rstrip("\r\n")
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    return None


def is_number(token: str) -> bool:
    """Whether ``float`` accepts the token (used for header detection)."""
    try:
        float(token)
    except ValueError:
        return False
    return True


def parse_ints(
    tokens: list[str], line_nos: np.ndarray, path: Path, what: str, allow_float: bool = False
) -> np.ndarray:
    """Convert tokens to int64; DataError ``path:line: <what> 'tok' is not an integer``.

    ``allow_float`` accepts finite decimals (timestamps such as ``978300760.0``), truncated.
    """
    try:
        return np.fromiter(map(int, tokens), dtype=np.int64, count=len(tokens))
    except (ValueError, OverflowError):
        pass
    out = np.empty(len(tokens), dtype=np.int64)
    for i, tok in enumerate(tokens):
        try:
            value = int(tok)
        except ValueError:
            value = None
            if allow_float:
                try:
                    f = float(tok)
                    value = int(f) if math.isfinite(f) else None
                except ValueError:
                    pass
        if value is None or not -(2**63) <= value < 2**63:
            kind = "a number" if allow_float else "an integer"
            raise DataError(f"{path}:{int(line_nos[i])}: {what} {tok!r} is not {kind}")
        out[i] = value
    return out


def check_floats(tokens: list[str], line_nos: np.ndarray, path: Path, what: str) -> None:
    """DataError at the first token that is not a number (used for ignored rating columns)."""
    try:
        list(map(float, tokens))
        return
    except ValueError:
        pass
    for i, tok in enumerate(tokens):
        if not is_number(tok):
            raise DataError(f"{path}:{int(line_nos[i])}: {what} {tok!r} is not a number")
