"""ItemMap: deterministic ids, round trips, unknown ids, speed on a million ids."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from genrec.data import ItemMap
from genrec.errors import DataError


def test_ids_follow_ascending_raw_order() -> None:
    m = ItemMap.from_raw([50, 7, 0, 7, 1000])
    assert m.num_items == 4
    assert m.to_list() == [0, 7, 50, 1000]
    assert m.to_internal([0, 7, 50, 1000]).tolist() == [1, 2, 3, 4]
    assert m.to_internal(np.array([1000, 0])).dtype == np.int64


def test_round_trip_raw_internal_and_json() -> None:
    raw = np.array([[12, 5], [99, 12]])
    m = ItemMap.from_raw(raw.ravel())
    internal = m.to_internal(raw)
    assert internal.shape == (2, 2)
    assert internal.min() >= 1 and internal.max() <= m.num_items
    np.testing.assert_array_equal(m.to_raw(internal), raw)
    again = ItemMap.from_list(json.loads(json.dumps(m.to_list())))
    assert again == m
    np.testing.assert_array_equal(again.to_internal(raw), internal)


def test_from_list_keeps_given_order() -> None:
    m = ItemMap.from_list([30, 10, 20])
    assert m.to_internal([30, 10, 20]).tolist() == [1, 2, 3]
    assert m.to_list() == [30, 10, 20]


def test_unknown_id_raises_and_names_it() -> None:
    m = ItemMap.from_raw([1, 2, 3])
    with pytest.raises(DataError, match=r"\b42\b"):
        m.to_internal([1, 42])
    with pytest.raises(DataError, match="unknown"):
        m.to_internal([-5])
    assert m.contains(2) and not m.contains(4) and not m.contains(0)
    assert m.known([1, 4, 3]).tolist() == [True, False, True]


def test_bad_internal_ids_and_duplicates() -> None:
    m = ItemMap.from_raw([10, 20])
    with pytest.raises(DataError):
        m.to_raw([0])
    with pytest.raises(DataError):
        m.to_raw([3])
    with pytest.raises(DataError, match="duplicate"):
        ItemMap.from_list([1, 2, 1])
    with pytest.raises(DataError):
        m.to_internal(["a"])  # type: ignore[list-item]


def test_million_ids_is_fast() -> None:
    rng = np.random.default_rng(0)
    raw = rng.choice(10_000_000, size=200_000, replace=False)
    m = ItemMap.from_raw(raw)
    queries = rng.choice(raw, size=1_000_000)
    start = time.perf_counter()
    internal = m.to_internal(queries)
    elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(m.to_raw(internal), queries)
    assert elapsed < 2.0, f"to_internal took {elapsed:.2f}s for 1e6 ids"
