"""Read interaction files into :class:`SequenceData`.

Why: public sequential-recommendation data comes in three shapes (aligned items/times files as in
TiCoSeRec's Amazon sets, SASRec/BERT4Rec ``user item`` pairs, and MovieLens-style interaction
tables). One entry point, ``read_sequences``, turns each into per-user chronological sequences,
and every defect is a ``DataError`` naming the file and 1-based line, so a user can fix the data
instead of reading a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genrec.data._text import (
    check_floats,
    data_lines,
    first_data_line,
    is_number,
    parse_ints,
    read_lines,
    resolve_sep,
    split_fields,
)
from genrec.data.item_map import ItemMap
from genrec.data.sequences import SequenceData
from genrec.errors import DataError

FORMATS = ("auto", "beauty", "pairs", "table")
USER_NAMES = {"user", "userid"}
ITEM_NAMES = {"item", "itemid", "movieid"}
TIME_NAMES = {"timestamp", "time", "ts"}
RATING_NAMES = {"rating", "score"}


@dataclass
class _Parsed:
    """Flat, user-grouped interactions before filtering and id mapping."""

    path: Path  # file that line numbers refer to
    users: list[str]
    lengths: np.ndarray  # per user
    items: np.ndarray  # raw ids, flat, grouped by user, chronological
    times: np.ndarray | None
    lines: np.ndarray  # line number of each interaction


def read_sequences(
    path: str | Path,
    fmt: str = "auto",
    sep: str | None = None,
    min_interactions: int = 3,
    item_map: ItemMap | None = None,
    header: bool | None = None,
) -> SequenceData:
    """Read per-user chronological sequences from ``path``.

    fmt: ``"beauty"`` (a directory with items.txt [+ times.txt], or an items file with a sibling
    times.txt), ``"pairs"`` (``user item`` lines in time order), ``"table"`` (``user, item,
    [rating], timestamp``; separator ``::``/tab/comma/whitespace detected when ``sep`` is None;
    header detected when ``header`` is None) or ``"auto"``. Users with fewer than
    ``min_interactions`` events are dropped and counted in ``dropped_users``. With ``item_map``
    (e.g. from a checkpoint) every kept item must be in it; otherwise the map is built here.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")

    if fmt == "auto":
        fmt = _detect_format(path, sep, header)
    if fmt == "beauty":
        parsed = _read_beauty(path)
    elif path.is_dir():
        raise DataError(f"{path}: is a directory; format {fmt!r} needs a file")
    elif fmt == "pairs":
        parsed = _read_pairs(path, sep, header)
    else:
        parsed = _read_table(path, sep, header)
    return _finish(parsed, min_interactions, item_map, str(path))


# -- format detection -------------------------------------------------------------------------


def _beauty_files(path: Path) -> tuple[Path, Path | None]:
    if path.is_dir():
        items = path / "items.txt"
        if not items.is_file():
            raise DataError(f"{path}: directory has no items.txt")
    else:
        items = path
    times = items.parent / "times.txt"
    return items, (times if times.is_file() and times.resolve() != items.resolve() else None)


def _detect_format(path: Path, sep: str | None, header: bool | None) -> str:
    if path.is_dir():
        return "beauty"
    if path.name != "times.txt" and (path.parent / "times.txt").is_file():
        return "beauty"
    found = first_data_line(path)
    if found is None:
        raise DataError(f"{path}: file is empty")
    lineno, first = found
    use_sep = resolve_sep(sep, first)
    fields = split_fields(first, use_sep)
    if len(fields) == 2:
        return "pairs"
    if len(fields) >= 3:
        return "table"
    raise DataError(
        f"{path}:{lineno}: cannot tell the format: 1 field with separator {use_sep!r} "
        "(expected `user item` pairs or a `user item [rating] timestamp` table)"
    )


def _looks_like_header(fields: list[str]) -> bool:
    """A header names columns: at least two fields (or all of them) are not numbers.

    A data row has at most one non-numeric field (a string user id), so this never eats data.
    """
    non_numeric = sum(not is_number(f) for f in fields)
    return non_numeric >= min(2, len(fields))


def _norm(name: str) -> str:
    return name.strip().strip("\"'").lower().replace("_", "").replace("-", "").replace(" ", "")


# -- beauty: aligned items.txt / times.txt ----------------------------------------------------


def _read_user_lines(path: Path) -> tuple[list[tuple[int, str, list[str]]], dict[str, int]]:
    rows = data_lines(read_lines(path))
    if not rows:
        raise DataError(f"{path}: file is empty")
    out: list[tuple[int, str, list[str]]] = []
    seen: dict[str, int] = {}
    for lineno, line in rows:
        fields = line.split()
        user = fields[0]
        if user in seen:
            raise DataError(f"{path}:{lineno}: user {user!r} already appeared on line {seen[user]}")
        seen[user] = lineno
        out.append((lineno, user, fields[1:]))
    return out, seen


def _read_beauty(path: Path) -> _Parsed:
    items_path, times_path = _beauty_files(path)
    rows, _ = _read_user_lines(items_path)
    users = [u for _, u, _ in rows]
    lengths = np.fromiter((len(t) for _, _, t in rows), dtype=np.int64, count=len(rows))
    lines = np.repeat(np.array([n for n, _, _ in rows], dtype=np.int64), lengths)
    tokens = [tok for _, _, toks in rows for tok in toks]
    items = parse_ints(tokens, lines, items_path, "item id")

    times = None
    if times_path is not None:
        t_rows, _ = _read_user_lines(times_path)
        for (i_no, i_user, i_toks), (t_no, t_user, t_toks) in zip(rows, t_rows):
            if i_user != t_user:
                raise DataError(
                    f"{times_path}:{t_no}: user {t_user!r} but {items_path.name} line {i_no} "
                    f"has user {i_user!r} (files are not aligned)"
                )
            if len(i_toks) != len(t_toks):
                raise DataError(
                    f"{times_path}:{t_no}: user {t_user!r} has {len(t_toks)} times but "
                    f"{items_path.name} line {i_no} has {len(i_toks)} items"
                )
        if len(t_rows) != len(rows):
            short, long_, extra = (
                (times_path, items_path, rows[len(t_rows)])
                if len(t_rows) < len(rows)
                else (items_path, times_path, t_rows[len(rows)])
            )
            raise DataError(
                f"{long_}:{extra[0]}: user {extra[1]!r} has no line in {short} "
                f"({len(rows)} users in {items_path.name}, {len(t_rows)} in {times_path.name})"
            )
        t_lines = np.repeat(np.array([n for n, _, _ in t_rows], dtype=np.int64), lengths)
        t_tokens = [tok for _, _, toks in t_rows for tok in toks]
        times = parse_ints(t_tokens, t_lines, times_path, "timestamp", allow_float=True)
        _check_non_decreasing(times, lengths, t_lines, times_path)
    return _Parsed(items_path, users, lengths, items, times, lines)


def _check_non_decreasing(times: np.ndarray, lengths: np.ndarray, lines: np.ndarray, path: Path) -> None:
    if times.size < 2:
        return
    back = times[1:] < times[:-1]
    starts = np.cumsum(lengths)[:-1]  # flat index where each next user starts
    starts = starts[(starts > 0) & (starts < times.size)]
    back[starts - 1] = False  # the step from one user's last event to the next user's first
    if np.any(back):
        i = int(np.argmax(back)) + 1
        raise DataError(
            f"{path}:{int(lines[i])}: timestamps go backwards ({int(times[i - 1])} then "
            f"{int(times[i])}); sequences must be oldest first"
        )


# -- pairs and tables -------------------------------------------------------------------------


def _split_rows(
    path: Path, sep: str | None, header: bool | None
) -> tuple[list[str] | None, int, list[tuple[int, list[str]]], str]:
    """(header fields or None, header line, data rows (lineno, fields), separator)."""
    rows = data_lines(read_lines(path))
    if not rows:
        raise DataError(f"{path}: file is empty")
    use_sep = resolve_sep(sep, rows[0][1])
    split = [(n, split_fields(line, use_sep)) for n, line in rows]
    head_no, head = split[0]
    if len(head) < 2:
        raise DataError(
            f"{path}:{head_no}: only 1 field with separator {use_sep!r}; "
            "unknown separator (pass sep=)"
        )
    has_header = _looks_like_header(head) if header is None else header
    body = split[1:] if has_header else split
    if not body:
        raise DataError(f"{path}: file is empty (header only)")
    width = len(head)
    for n, fields in body:
        if len(fields) != width:
            raise DataError(
                f"{path}:{n}: {len(fields)} fields with separator {use_sep!r}, expected {width}"
            )
    return (head if has_header else None), head_no, body, use_sep


def _group(
    path: Path,
    user_tok: list[str],
    items: np.ndarray,
    times: np.ndarray | None,
    lines: np.ndarray,
) -> _Parsed:
    """Group interactions by user (users in order of first appearance), stable within user."""
    codes_of: dict[str, int] = {}
    codes = np.fromiter(
        (codes_of.setdefault(u, len(codes_of)) for u in user_tok), dtype=np.int64, count=len(user_tok)
    )
    order = np.arange(codes.size)
    if times is not None:
        order = np.argsort(times, kind="stable")
    order = order[np.argsort(codes[order], kind="stable")]
    lengths = np.bincount(codes, minlength=len(codes_of)).astype(np.int64)
    return _Parsed(
        path,
        list(codes_of),
        lengths,
        items[order],
        None if times is None else times[order],
        lines[order],
    )


def _read_pairs(path: Path, sep: str | None, header: bool | None) -> _Parsed:
    head, head_no, body, use_sep = _split_rows(path, sep, header)
    if len(body[0][1]) != 2:
        first = head_no if head is None else body[0][0]
        raise DataError(
            f"{path}:{first}: {len(body[0][1])} fields with separator {use_sep!r}; "
            "the pairs format is `user item` (use fmt='table' for more columns)"
        )
    lines = np.fromiter((n for n, _ in body), dtype=np.int64, count=len(body))
    items = parse_ints([f[1] for _, f in body], lines, path, "item id")
    return _group(path, [f[0].strip() for _, f in body], items, None, lines)


def _table_columns(path: Path, head: list[str] | None, head_no: int, width: int) -> tuple[int, int, int | None, int]:
    """(user, item, rating or None, timestamp) column indices."""
    if head is None:
        if width == 3:
            return 0, 1, None, 2
        if width == 4:
            return 0, 1, 2, 3
        raise DataError(
            f"{path}:{head_no}: unknown columns: {width} fields and no header line; expected "
            "3 (user item timestamp) or 4 (user item rating timestamp), or a header naming them"
        )
    names = [_norm(h) for h in head]

    def find(options: set[str], what: str) -> int | None:
        hits = [i for i, n in enumerate(names) if n in options]
        if len(hits) > 1:
            raise DataError(f"{path}:{head_no}: header has more than one {what} column: {head}")
        return hits[0] if hits else None

    user, item = find(USER_NAMES, "user"), find(ITEM_NAMES, "item")
    ts, rating = find(TIME_NAMES, "timestamp"), find(RATING_NAMES, "rating")
    missing = [w for w, i in (("user", user), ("item", item), ("timestamp", ts)) if i is None]
    if missing:
        raise DataError(
            f"{path}:{head_no}: unknown columns {head}: no {'/'.join(missing)} column "
            "(names: user|user_id|userId, item|item_id|itemId|movieId, timestamp|time|ts)"
        )
    return user, item, rating, ts  # type: ignore[return-value]


def _read_table(path: Path, sep: str | None, header: bool | None) -> _Parsed:
    head, head_no, body, _ = _split_rows(path, sep, header)
    width = len(body[0][1])
    if head is None and width == 2:
        raise DataError(
            f"{path}:{head_no}: 2 fields, no timestamp column; use fmt='pairs' for `user item` files"
        )
    u_col, i_col, r_col, t_col = _table_columns(path, head, head_no, width)
    lines = np.fromiter((n for n, _ in body), dtype=np.int64, count=len(body))
    items = parse_ints([f[i_col] for _, f in body], lines, path, "item id")
    if r_col is not None:
        check_floats([f[r_col] for _, f in body], lines, path, "rating")
    times = parse_ints([f[t_col] for _, f in body], lines, path, "timestamp", allow_float=True)
    return _group(path, [f[u_col].strip() for _, f in body], items, times, lines)


# -- filtering and id mapping -----------------------------------------------------------------


def _finish(
    parsed: _Parsed, min_interactions: int, item_map: ItemMap | None, source: str
) -> SequenceData:
    keep_user = parsed.lengths >= min_interactions
    dropped = int(np.count_nonzero(~keep_user))
    if not np.any(keep_user):
        raise DataError(
            f"{parsed.path}: no user has at least {min_interactions} interactions "
            f"({len(parsed.users)} users, all dropped)"
        )
    keep = np.repeat(keep_user, parsed.lengths)
    raw = parsed.items[keep]
    lines = parsed.lines[keep]
    if item_map is None:
        item_map = ItemMap.from_raw(raw)
    else:
        known = item_map.known(raw)
        if not np.all(known):
            unknown = raw[~known]
            first = int(np.argmin(np.where(known, np.iinfo(np.int64).max, lines)))
            raise DataError(
                f"{parsed.path}:{int(lines[first])}: item id {int(raw[first])} is not in the item "
                f"map ({np.unique(unknown).size} unknown id(s), {unknown.size} interaction(s))"
            )
    internal = item_map.to_internal(raw)
    lengths = parsed.lengths[keep_user]
    cuts = np.cumsum(lengths)[:-1]
    items = np.split(internal, cuts)
    times = None if parsed.times is None else np.split(parsed.times[keep], cuts)
    users = [u for u, k in zip(parsed.users, keep_user.tolist()) if k]
    return SequenceData(users, items, times, item_map, source, dropped)
