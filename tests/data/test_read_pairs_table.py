"""Reading `user item` pairs and interaction tables (separators, headers, sorting, errors)."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.data import read_sequences
from genrec.errors import DataError


def _seqs(data) -> dict[str, list[int]]:
    return {u: data.item_map.to_raw(s).tolist() for u, s in zip(data.users, data.items)}


def test_pairs_grouped_in_file_order(write) -> None:
    path = write("Beauty.txt", "1 30\n2 10\n1 20\n1 10\n2 40\n2 30\n3 5\n")
    data = read_sequences(path)  # auto: 2 fields => pairs
    assert data.times is None
    assert data.users == ["1", "2"] and data.dropped_users == 1
    assert _seqs(data) == {"1": [30, 20, 10], "2": [10, 40, 30]}
    assert data.item_map.to_list() == [10, 20, 30, 40]  # item 5 only in the dropped user


def test_pairs_with_header_and_comma(write) -> None:
    path = write("p.csv", "user,item\na,1\na,2\na,3\n")
    data = read_sequences(path, fmt="pairs")
    assert _seqs(data) == {"a": [1, 2, 3]}


def test_pairs_bad_field_count_and_non_numeric(write) -> None:
    path = write("p.txt", "1 2\n1 3\n1 4 5\n")
    with pytest.raises(DataError, match=r"p\.txt:3: 3 fields"):
        read_sequences(path, fmt="pairs")
    path = write("q.txt", "1 2\n1 three\n")
    with pytest.raises(DataError, match=r"q\.txt:2: item id 'three' is not an integer"):
        read_sequences(path, fmt="pairs")


def test_movielens_table_sorted_by_time_stably(write) -> None:
    path = write(
        "ratings.dat",
        "1::300::5::978300760\n1::100::3::978300700\n2::100::4::50\n"
        "1::200::4::978300700\n2::200::1::40\n2::300::2::60\n",
    )
    data = read_sequences(path)  # auto: '::', 4 fields => user item rating timestamp
    assert data.users == ["1", "2"]
    # user 1: items 100 and 200 tie at 978300700 and keep file order (stable sort)
    assert _seqs(data) == {"1": [100, 200, 300], "2": [200, 100, 300]}
    assert data.times is not None
    assert data.times[0].tolist() == [978300700, 978300700, 978300760]


def test_csv_header_columns_by_name(write) -> None:
    path = write(
        "ratings.csv",
        "timestamp,movieId,rating,userId\n30,7,4.5,u\n10,8,3.0,u\n20,9,1.0,u\n",
    )
    data = read_sequences(path)
    assert _seqs(data) == {"u": [8, 9, 7]}
    assert data.times is not None and data.times[0].tolist() == [10, 20, 30]


def test_tab_three_columns_no_header(write) -> None:
    path = write("i.tsv", "a\t1\t3\na\t2\t1\na\t3\t2\n")
    data = read_sequences(path, fmt="table", min_interactions=1)
    assert _seqs(data) == {"a": [2, 3, 1]}


def test_whitespace_table_explicit_sep_and_float_time(write) -> None:
    path = write("w.txt", "u 1 10.0\nu 2 20.5\nu 3 5\n")
    data = read_sequences(path, sep="whitespace")
    assert _seqs(data) == {"u": [3, 1, 2]}
    assert data.times is not None and data.times[0].dtype == np.int64


def test_table_header_unknown_columns(write) -> None:
    path = write("t.csv", "who,what,when\n1,2,3\n")
    with pytest.raises(DataError, match=r"t\.csv:1: unknown columns"):
        read_sequences(path)


def test_table_five_columns_without_header(write) -> None:
    path = write("t.txt", "1 2 3 4 5\n")
    with pytest.raises(DataError, match=r"t\.txt:1: unknown columns"):
        read_sequences(path)


def test_table_unknown_separator(write) -> None:
    path = write("t.txt", "1;2;3\n1;3;4\n")
    with pytest.raises(DataError, match=r"t\.txt:1: .*1 field"):
        read_sequences(path)
    with pytest.raises(DataError, match=r"t\.txt:1: only 1 field with separator '\|'"):
        read_sequences(path, fmt="table", sep="|")
    data = read_sequences(path, fmt="table", sep=";", min_interactions=1)
    assert _seqs(data) == {"1": [2, 3]}


def test_table_inconsistent_fields(write) -> None:
    path = write("t.csv", "1,2,3\n1,3,4\n1,4\n")
    with pytest.raises(DataError, match=r"t\.csv:3: 2 fields .*expected 3"):
        read_sequences(path)


def test_table_non_numeric_fields(write) -> None:
    path = write("t.csv", "user,item,timestamp\n1,2,3\n\n1,3,noon\n")
    with pytest.raises(DataError, match=r"t\.csv:4: timestamp 'noon' is not a number"):
        read_sequences(path)
    path = write("r.dat", "1::2::x::3\n")
    with pytest.raises(DataError, match=r"r\.dat:1: rating 'x' is not a number"):
        read_sequences(path)


def test_table_header_only_and_empty(write) -> None:
    with pytest.raises(DataError, match=r"h\.csv: file is empty"):
        read_sequences(write("h.csv", "user,item,timestamp\n"))
    with pytest.raises(DataError, match=r"e\.csv: file is empty"):
        read_sequences(write("e.csv", ""))


def test_string_user_ids_are_not_a_header(write) -> None:
    path = write("s.csv", "A1B2,5,100\nA1B2,6,50\nA1B2,7,75\n")
    data = read_sequences(path)
    assert _seqs(data) == {"A1B2": [6, 7, 5]}
