"""Request files in, result files out, for ``genrec-run --engine ray`` (JSONL and Parquet).

Input is a file or a directory of parts (``part-0000.parquet``, ... as Spark or Ray write
them), read in name order; every part has one format, told by its extension: ``.jsonl`` /
``.ndjson`` / ``.json`` (one request per line, as ``genrec-run`` reads) or ``.parquet`` (one
request per row, a column per request field). Hidden files and ``_SUCCESS``-style markers
(names starting with ``.`` or ``_``) are ignored.

What travels between the readers and the scoring actors is one layout for both formats, so
that the actors parse, validate and name rows the way ``genrec-run`` does: a Parquet row is
turned into the JSON object it stands for, and every row is a line of JSON bytes with its
file and 1-based line (row) number. Parquet column types are checked up front on the driver,
so that a bad schema is one ``error:`` line before the cluster does any work, never a row
error per row.

Output is one file written by the driver through ``genrec.atomic.atomic_file`` (it appears
complete or not at all): ``.jsonl`` lines are byte for byte those of ``genrec-run``;
``.parquet`` has the columns ``user_id``, ``items`` (list<int64>), ``scores``
(list<float64>) and, for ``--generate``, ``score`` (float64).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from genrec.errors import DataError

__all__ = ["InputFile", "ResultWriter", "TRANSIT_FIELDS", "input_files", "output_format", "read_blocks"]

JSONL_EXT = (".jsonl", ".ndjson", ".json")
PARQUET_EXT = (".parquet", ".pq")
REQUEST_FIELDS = ("user_id", "items", "timestamps", "request_time", "exclude", "candidates")
LIST_FIELDS = ("items", "timestamps", "exclude", "candidates")
# the columns of a block between reader and actor: file number, 1-based line/row, 0-based
# position of the row in the whole input (sampling seeds), the request as JSON bytes
TRANSIT_FIELDS = ("_file", "_row", "_index", "_raw")


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One part of the input, as the readers and the actors need it."""

    path: str  # as opened (absolute: the actors may run in another working directory)
    name: str  # as error lines name it (the path as given, quoted if unprintable)
    fmt: str  # "jsonl" | "parquet"
    size: int  # bytes on disk (Ray's size estimate)
    rows: int | None  # Parquet: rows from the footer; JSONL: None until counted
    offset: int = 0  # rows of the input before this file (sampling seeds)
    uid_type: str | None = None  # Parquet: "int" or "str", the user_id column's type

    @property
    def row_bytes(self) -> float:
        """About how many bytes a row takes between reader and actor (sizes Ray's blocks)."""
        return (self.size / self.rows if self.rows else 256.0) + 24


def _fmt(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "jsonl" if suffix in JSONL_EXT else "parquet" if suffix in PARQUET_EXT else None


def output_format(path: str) -> str:
    """``jsonl`` or ``parquet`` from the output's extension; DataError otherwise."""
    fmt = _fmt(Path(path))
    if fmt is None:
        raise DataError(f"--output {path}: the format follows the extension; end it in .parquet or .jsonl")
    return fmt


def input_files(path: str) -> list[InputFile]:
    """The parts of the input at ``path``, in name order, each checked to be readable (and a
    Parquet part's schema to hold requests); DataError naming the part otherwise.

    JSONL lines are counted (one pass over the bytes, at memory speed): the counts give the
    progress its total, each part its ``offset`` (sampled slates are seeded by a row's place
    in the whole input) and Ray its block sizes. Parquet parts know their rows from the footer.
    """
    root = Path(path)
    from .cli import display_name

    if root.is_dir():
        parts = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
        if not parts:
            raise DataError(f"{display_name(path)}: an empty directory; expected request files "
                            f"({', '.join(JSONL_EXT + PARQUET_EXT)})")
        fmts = {_fmt(p) for p in parts}
        if None in fmts or len(fmts) > 1:
            odd = next((p for p in parts if _fmt(p) is None), None)
            why = (f"{display_name(str(odd))} is neither JSONL nor Parquet" if odd is not None
                   else "it mixes JSONL and Parquet parts")
            raise DataError(f"{display_name(path)}: {why}; a directory of parts holds one format "
                            f"({', '.join(JSONL_EXT)} or {', '.join(PARQUET_EXT)})")
    elif root.is_file():
        parts = [root]
        if _fmt(root) is None:
            raise DataError(f"{display_name(path)}: the format follows the extension; name it .jsonl or .parquet")
    else:
        raise DataError(f"{display_name(path)}: no such file or directory")
    out, offset = [], 0
    for p in parts:
        name, fmt = display_name(str(p)), _fmt(p)
        try:
            size = p.stat().st_size
            with open(p, "rb"):
                pass
        except OSError as e:
            raise DataError(f"{name}: cannot read requests ({(e.strerror or str(e)).lower()})") from None
        rows = uid = None
        if fmt == "parquet":
            rows, uid = _parquet_schema(p, name)
        else:
            rows = _count_lines(p)
        out.append(InputFile(str(p.resolve()), name, fmt, size, rows, offset, uid))
        offset += rows or 0
    return out


def _count_lines(path: Path) -> int:
    """Lines as ``read_lines`` numbers them: newlines, plus one for a last line without one."""
    n, last = 0, b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def _parquet_schema(path: Path, name: str) -> tuple[int, str]:
    """(rows, user_id type) of a Parquet part whose columns are request fields of the right
    types; DataError naming the part and the column otherwise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{name}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    unknown = [f for f in schema.names if f not in REQUEST_FIELDS]
    if unknown:
        raise DataError(f"{name}: unknown column(s) {', '.join(unknown[:5])}; a request has "
                        f"{', '.join(REQUEST_FIELDS)}")
    for need in ("user_id", "items"):
        if need not in schema.names:
            raise DataError(f"{name}: no {need!r} column")
    t = pa.types
    for f in schema:
        typ = f.type
        if f.name == "user_id":
            ok = t.is_integer(typ) or t.is_string(typ) or t.is_large_string(typ)
            want = "a string or an integer"
        elif f.name == "request_time":
            ok, want = t.is_integer(typ) or t.is_null(typ), "an integer"
        else:
            ok = t.is_null(typ) or ((t.is_list(typ) or t.is_large_list(typ))
                                    and (t.is_integer(typ.value_type) or t.is_null(typ.value_type)))
            want = "a list of integers"
        if not ok:
            raise DataError(f"{name}: column {f.name} is {typ}; a request's {f.name} must be {want}")
    return meta.num_rows, "int" if t.is_integer(schema.field("user_id").type) else "str"


def read_blocks(part: InputFile, file_no: int, block_rows: int) -> Iterator[Any]:
    """Arrow tables of ``TRANSIT_FIELDS``, ``block_rows`` rows each (the last fewer): what
    one Ray read task yields for one part. Runs on a worker."""
    import pyarrow as pa

    def table(rows: list[int], raws: list[bytes]) -> pa.Table:
        n = len(rows)
        return pa.table({"_file": pa.array([file_no] * n, pa.int32()), "_row": pa.array(rows, pa.int64()),
                         "_index": pa.array([part.offset + r - 1 for r in rows], pa.int64()),
                         "_raw": pa.array(raws, pa.binary())})

    if part.fmt == "parquet":
        import pyarrow.parquet as pq

        done = 0
        for batch in pq.ParquetFile(part.path).iter_batches(batch_size=block_rows):
            rows = batch.to_pylist()
            raws = [json.dumps(r).encode() for r in rows]
            yield table(list(range(done + 1, done + len(rows) + 1)), raws)
            done += len(rows)
        return
    from .cli import read_lines

    nums: list[int] = []
    raws: list[bytes] = []
    with open(part.path, "rb") as fh:
        for n, raw in read_lines(fh, part.name):
            nums.append(n)
            raws.append(raw)
            if len(nums) >= block_rows:
                yield table(nums, raws)
                nums, raws = [], []
    if nums:
        yield table(nums, raws)


class ResultWriter:
    """Result rows -> one JSONL or Parquet file object (the caller's atomic temporary).

    JSONL lines are those ``genrec-run`` writes. Parquet rows are buffered into row groups
    of ``group_rows`` (an actor's batch of 8 rows would otherwise be a row group of 8). The
    Parquet ``user_id`` column is int64 when the ids are integers (a Parquet input's own
    column type; for JSONL input, the first rows'), else string; an integer id in a string
    column is written as its decimal string, a string id in an int64 column is an error.
    """

    def __init__(self, fh: IO[Any], fmt: str, with_score: bool, uid_type: str | None = None,
                 group_rows: int = 65536):
        self.fh, self.fmt, self.with_score, self.uid_type = fh, fmt, with_score, uid_type
        self.group_rows, self._rows = group_rows, {"user_id": [], "items": [], "scores": [], "score": []}
        self._writer = None

    def write(self, uids: list[Any], items: list[list[int]], scores: list[list[float]],
              score: list[float | None], where: list[str]) -> None:
        if self.fmt == "jsonl":
            self.fh.write("".join(json.dumps({"user_id": u, "items": i, "scores": s,
                                              **({"score": t} if t is not None else {})}) + "\n"
                                  for u, i, s, t in zip(uids, items, scores, score)))
            return
        if self.uid_type is None and uids:
            self.uid_type = "int" if all(type(u) is int for u in uids) else "str"
        if self.uid_type == "int":
            bad = next((j for j, u in enumerate(uids) if type(u) is not int), None)
            if bad is not None:
                raise DataError(f"{where[bad]}: user_id {uids[bad]!r} is a string, but the Parquet "
                                "output's user_id column is int64 (the first results had integer ids); "
                                "send every user_id as a string")
        else:
            uids = [u if type(u) is str else str(u) for u in uids]
        for key, vals in (("user_id", uids), ("items", items), ("scores", scores), ("score", score)):
            self._rows[key].extend(vals)
        if len(self._rows["user_id"]) >= self.group_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("user_id", pa.int64() if self.uid_type == "int" else pa.string()),
                            ("items", pa.list_(pa.int64())), ("scores", pa.list_(pa.float64())),
                            *([("score", pa.float64())] if self.with_score else [])])
        cols = {k: v for k, v in self._rows.items() if k != "score" or self.with_score}
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.fh, schema)
        if cols["user_id"]:
            self._writer.write_table(pa.table(cols, schema=schema))
        self._rows = {k: [] for k in self._rows}

    def close(self) -> None:
        """Write what is buffered and the Parquet footer (an empty input gives a valid file
        with no rows)."""
        if self.fmt == "parquet":
            self._flush()
            self._writer.close()
