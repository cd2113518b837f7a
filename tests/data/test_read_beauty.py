"""Reading the aligned items/times format: the shipped slice, and every alignment defect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genrec.data import ItemMap, read_sequences
from genrec.errors import DataError

# Counts of the shipped slice, as written in data/beauty-slice/README.md (from data/make_slice.py).
USERS, ITEMS, INTERACTIONS, MIN_LEN, MAX_LEN = 3000, 8877, 26979, 5, 149


def test_shipped_slice(slice_dir: Path) -> None:
    data = read_sequences(slice_dir)
    assert len(data) == USERS
    assert data.num_items == ITEMS
    assert data.num_interactions == INTERACTIONS
    assert data.dropped_users == 0
    lengths = [len(s) for s in data.items]
    assert (min(lengths), max(lengths)) == (MIN_LEN, MAX_LEN)
    assert data.times is not None
    for seq, ts in zip(data.items, data.times):
        assert seq.dtype == np.int64 and ts.dtype == np.int64
        assert len(seq) == len(ts)
        assert np.all(np.diff(ts) >= 0)
        assert seq.min() >= 1 and seq.max() <= data.num_items
    # first line of items.txt: "4 5522 439 11140 5161 7849 1"
    assert data.users[0] == "4"
    assert data.item_map.to_raw(data.items[0]).tolist() == [5522, 439, 11140, 5161, 7849, 1]


def test_slice_by_items_file_and_auto_and_checkpoint_map(slice_dir: Path) -> None:
    a = read_sequences(slice_dir / "items.txt")  # sibling times.txt => beauty
    b = read_sequences(slice_dir, fmt="beauty", item_map=ItemMap.from_list(a.item_map.to_list()))
    assert a.users == b.users and a.item_map == b.item_map
    assert all(np.array_equal(x, y) for x, y in zip(a.items, b.items))


def test_directory_without_times(write) -> None:
    items = write("d/items.txt", "u1 10 20 30\nu2 20 30\nu3 30 10 20 40\n")
    data = read_sequences(items.parent)
    assert data.times is None
    assert data.users == ["u1", "u3"] and data.dropped_users == 1
    assert data.item_map.to_list() == [10, 20, 30, 40]
    assert [s.tolist() for s in data.items] == [[1, 2, 3], [3, 1, 2, 4]]


def _pair(write, items: str, times: str) -> Path:
    write("d/times.txt", times)
    return write("d/items.txt", items).parent


def test_misaligned_user_id(write) -> None:
    d = _pair(write, "1 5 6 7\n2 5 6 7\n", "1 1 2 3\n3 1 2 3\n")
    with pytest.raises(DataError, match=r"times\.txt:2:.*not aligned"):
        read_sequences(d)


def test_misaligned_length(write) -> None:
    d = _pair(write, "1 5 6 7\n2 5 6 7\n", "1 1 2 3\n2 1 2\n")
    with pytest.raises(DataError, match=r"times\.txt:2: .*2 times.*3 items"):
        read_sequences(d)


def test_missing_times_line(write) -> None:
    d = _pair(write, "1 5 6 7\n2 5 6 7\n", "1 1 2 3\n")
    with pytest.raises(DataError, match=r"items\.txt:2: user '2' has no line in .*times\.txt"):
        read_sequences(d)


def test_non_numeric_item(write) -> None:
    d = _pair(write, "1 5 6 7\n2 5 x 7\n", "1 1 2 3\n2 1 2 3\n")
    with pytest.raises(DataError, match=r"items\.txt:2: item id 'x' is not an integer"):
        read_sequences(d)


def test_non_numeric_time(write) -> None:
    d = _pair(write, "1 5 6 7\n\n2 5 6 7\n", "1 1 2 3\n\n2 1 2 soon\n")
    with pytest.raises(DataError, match=r"times\.txt:3: timestamp 'soon' is not a number"):
        read_sequences(d)


def test_time_going_backwards(write) -> None:
    d = _pair(write, "1 5 6 7\n2 5 6 7\n", "1 1 2 3\n2 10 20 15\n")
    with pytest.raises(DataError, match=r"times\.txt:2: timestamps go backwards"):
        read_sequences(d)


def test_time_reset_between_users_is_fine(write) -> None:
    d = _pair(write, "1 5 6 7\n2 5 6 7\n", "1 100 200 300\n2 1 2 3\n")
    data = read_sequences(d)
    assert data.times is not None and data.times[1].tolist() == [1, 2, 3]


def test_empty_file(write) -> None:
    d = _pair(write, "\n\n", "")
    with pytest.raises(DataError, match=r"items\.txt: file is empty"):
        read_sequences(d)


def test_duplicate_user(write) -> None:
    d = write("d/items.txt", "1 5 6 7\n2 5 6 7\n1 5 6 7\n").parent
    with pytest.raises(DataError, match=r"items\.txt:3: user '1' already appeared on line 1"):
        read_sequences(d)


def test_all_users_dropped(write) -> None:
    d = write("d/items.txt", "1 5 6\n2 5\n").parent
    with pytest.raises(DataError, match=r"items\.txt: no user has at least 3"):
        read_sequences(d)


def test_unknown_item_with_given_map(write) -> None:
    d = _pair(write, "1 5 6 7\n2 5 6 8\n", "1 1 2 3\n2 1 2 3\n")
    with pytest.raises(DataError, match=r"items\.txt:2: item id 8 is not in the item map"):
        read_sequences(d, item_map=ItemMap.from_raw([5, 6, 7]))


def test_missing_path_and_bad_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_sequences(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="unknown data format"):
        read_sequences(tmp_path, fmt="parquet")
    with pytest.raises(DataError, match="no items.txt"):
        read_sequences(tmp_path)
