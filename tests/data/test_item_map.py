"""ItemMap: deterministic ids, round trips, unknown ids, dense and binary-search lookups."""

from __future__ import annotations

import json

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


def test_a_million_lookups_round_trip() -> None:
    rng = np.random.default_rng(0)
    raw = rng.choice(10_000_000, size=200_000, replace=False)
    m = ItemMap.from_raw(raw)
    queries = rng.choice(raw, size=1_000_000)
    np.testing.assert_array_equal(m.to_raw(m.to_internal(queries)), queries)


@pytest.mark.parametrize("offset", [0, 10**12])  # a dense table, then binary search
def test_dense_and_sorted_lookups_agree(offset) -> None:
    raw = np.array([70, 3, 500, 41, 9]) + offset
    m = ItemMap.from_list(raw.tolist())
    assert (m._dense is None) == (offset > 0)
    queries = np.array([500, 3, 9, 41, 70, 3]) + offset
    assert m.to_internal(queries).tolist() == [3, 2, 5, 4, 1, 2]
    probes = np.array([-1, 0, 4, 501, 10**6, 2**62]) + offset  # unknown, and out of any table
    assert not m.known(probes).any()
    assert m.known(raw).all()
    with pytest.raises(DataError, match="unknown item id"):
        m.to_internal(np.array([3, 501]) + offset)
