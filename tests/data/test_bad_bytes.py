"""Bytes a text editor hides: a UTF-8 byte-order mark is accepted, control characters are refused.

Built from the shipped slice, written out in each format (beauty, pairs, table, gzipped):
with a BOM the file reads exactly as without; a NUL or other control character in an id is a
DataError naming the file and the line (as an editor counts lines), and the CLI prints it as
one ``error:`` line.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genrec.data import SequenceData, read_sequences
from genrec.errors import DataError

BOM = "\ufeff"


@pytest.fixture(scope="module")
def slice_files(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """The slice as text in every format: name -> (path to write it at, text without a BOM)."""
    src = Path(__file__).resolve().parents[2] / "data" / "beauty-slice"
    items = (src / "items.txt").read_text(encoding="utf-8")
    times = (src / "times.txt").read_text(encoding="utf-8")
    root = tmp_path_factory.mktemp("formats")
    pairs, table = ["user item"], ["userId,movieId,rating,timestamp"]
    for i_line, t_line in zip(items.splitlines(), times.splitlines()):
        user, *its = i_line.split()
        _, *ts = t_line.split()
        pairs += [f"{user} {it}" for it in its]
        table += [f"{user},{it},5,{t}" for it, t in zip(its, ts)]
    return {"items": (root / "b" / "items.txt", items), "times": (root / "b" / "times.txt", times),
            "pairs": (root / "pairs.txt", "\n".join(pairs) + "\n"),
            "table": (root / "ratings.csv", "\n".join(table) + "\n")}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


def same(a: SequenceData, b: SequenceData) -> bool:
    return (a.users == b.users and a.item_map == b.item_map
            and all(np.array_equal(x, y) for x, y in zip(a.items, b.items))
            and (a.times is None) == (b.times is None)
            and (a.times is None or all(np.array_equal(x, y) for x, y in zip(a.times, b.times))))


def test_a_bom_at_the_start_changes_nothing(slice_files, slice_dir, tmp_path):
    items, times = slice_files["items"], slice_files["times"]
    plain = read_sequences(slice_dir)
    assert plain.users[0] == "4" and plain.num_interactions == 26979 and plain.times is not None
    # beauty: a BOM on both files, and on one only (the users must still align)
    write(tmp_path / "both" / "items.txt", BOM + items[1])
    write(tmp_path / "both" / "times.txt", BOM + times[1])
    write(tmp_path / "one" / "items.txt", items[1])
    write(tmp_path / "one" / "times.txt", BOM + times[1])
    for d in ("both", "one"):
        assert same(read_sequences(tmp_path / d), plain), d
    for fmt in ("pairs", "table"):  # the BOM would otherwise glue itself to the header's first name
        path, text = slice_files[fmt]
        ref = read_sequences(write(path, text))
        got = read_sequences(write(tmp_path / path.name, BOM + text))  # format and header detected
        assert same(got, ref) and ref.users[0] == "4", fmt
        gz = read_sequences(write(tmp_path / (path.name + ".gz"), BOM + text), fmt=fmt)
        assert same(gz, ref), fmt
    assert same(read_sequences(slice_files["table"][0]), plain)  # the table is the slice itself


def inject(text: str, line: int, field: int, char: str) -> str:
    """``char`` inside field ``field`` (0-based, whitespace or comma separated) of 1-based ``line``."""
    lines = text.split("\n")
    sep = "," if "," in lines[line - 1] else " "
    fields = lines[line - 1].split(sep)
    fields[field] = fields[field][:1] + char + fields[field][1:]
    lines[line - 1] = sep.join(fields)
    return "\n".join(lines)


@pytest.mark.parametrize("fmt, line, field, char", [
    ("items", 1500, 0, "\x00"),  # NUL in a user id
    ("items", 7, 3, "\x1c"),  # file separator in an item id: str.split would cut the id in two
    ("times", 3000, 0, "\x7f"),  # DEL in the last user id of times.txt
    ("pairs", 12345, 1, "\x00"),  # NUL in an item id
    ("pairs", 2, 0, "\x0b"),  # vertical tab: a line break to str.splitlines
    ("table", 26980, 0, "\x1b"),  # ESC in the last user id
    ("table", 40, 1, "\x85"),  # C1 next-line
])
def test_control_characters_in_ids_are_refused_by_file_and_line(slice_files, tmp_path, fmt, line, field, char):
    files = {k: v for k, v in slice_files.items()}
    path, text = files[fmt]
    bad = write(tmp_path / fmt / path.name, inject(text, line, field, char))
    if fmt in ("items", "times"):
        other = "times" if fmt == "items" else "items"
        write(tmp_path / fmt / files[other][0].name, files[other][1])
    with pytest.raises(DataError) as err:
        read_sequences(bad.parent if fmt in ("items", "times") else bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}:{line}: control character U+{ord(char):04X}"), msg
    assert "\n" not in msg and repr(char)[1:-1] in msg  # shown escaped, on one line


def test_the_cli_prints_one_error_line(slice_files, tmp_path):
    items, times = slice_files["items"], slice_files["times"]
    bad = write(tmp_path / "d" / "items.txt", inject(items[1], 2, 0, "\x00"))
    write(tmp_path / "d" / "times.txt", times[1])
    proc = subprocess.run([sys.executable, "-m", "genrec", "train", "--data", str(bad.parent), "--arch",
                           "sasrec", "-o", str(tmp_path / "m.pt")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}:2: control character U+0000"), proc.stderr
    assert not (tmp_path / "m.pt").exists()
