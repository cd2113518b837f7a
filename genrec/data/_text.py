"""Line-level helpers shared by the readers: reading, splitting, integer parsing.

Why: every bad-data error must name the file and the 1-based line, and parsing must stay fast on
million-line files, so integers are converted in bulk (``map(int, ...)`` in C) and only on failure
do we walk the tokens again to find and report the first bad one.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from genrec.errors import DataError

SEP_ALIASES = {"tab": "\t", "\\t": "\t", "comma": ",", "space": " ", "whitespace": " "}


def read_lines(path: Path) -> list[str]:
    """All physical lines of a text file (``.gz`` allowed); DataError if unreadable."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                return fh.read().splitlines()
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None


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
        opener = gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(
            path, encoding="utf-8"
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
