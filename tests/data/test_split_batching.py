"""Leave-one-out split semantics and right-padded batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genrec.data import ItemMap, SequenceData, leave_one_out, pad_batch, read_sequences
from genrec.errors import DataError


def _data(with_times: bool = True) -> SequenceData:
    items = [np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8])]
    times = [np.array([10, 20, 30, 40, 50]), np.array([1, 2, 3])] if with_times else None
    return SequenceData(["a", "b"], items, times, ItemMap.from_raw(range(1, 9)), "mem", 0)


def test_leave_one_out_positions() -> None:
    split = leave_one_out(_data())
    assert [s.tolist() for s in split.train_sequences()] == [[1, 2, 3], [6]]
    assert [t.tolist() for t in split.train_times()] == [[10, 20, 30], [1]]
    valid = split.examples("valid")
    assert [h.tolist() for h in valid.histories] == [[1, 2, 3], [6]]
    assert valid.targets.tolist() == [4, 7]
    assert valid.target_times.tolist() == [40, 2]
    assert [h.tolist() for h in valid.history_times] == [[10, 20, 30], [1]]
    test = split.examples("test")
    assert [h.tolist() for h in test.histories] == [[1, 2, 3, 4], [6, 7]]
    assert test.targets.tolist() == [5, 8]
    assert test.target_times.tolist() == [50, 3]
    assert test.users == ["a", "b"] and len(test) == 2
    with pytest.raises(ValueError):
        split.examples("train")


def test_leave_one_out_without_times() -> None:
    split = leave_one_out(_data(with_times=False))
    assert split.train_times() is None
    ex = split.examples("test")
    assert ex.history_times is None and ex.target_times is None


def test_leave_one_out_needs_three_items() -> None:
    data = SequenceData(["a"], [np.array([1, 2])], None, ItemMap.from_raw([1, 2]), "mem", 0)
    with pytest.raises(DataError, match="at least 3"):
        leave_one_out(data)


def test_sample(slice_dir: Path) -> None:
    split = leave_one_out(read_sequences(slice_dir))
    first = split.sample(10)
    assert first.users == split.users[:10]
    a, b = split.sample(50, seed=3), split.sample(50, seed=3)
    assert a.users == b.users and len(a) == 50
    order = [split.users.index(u) for u in a.users]
    assert order == sorted(order)
    assert split.sample(10**6) is split
    assert a.item_map is split.item_map


def test_pad_batch_keeps_most_recent() -> None:
    seqs = [np.array([1, 2, 3, 4, 5]), np.array([7]), np.array([], dtype=np.int64)]
    times = [np.array([10, 20, 30, 40, 50]), np.array([70]), np.array([], dtype=np.int64)]
    ids, lengths, t = pad_batch(seqs, 3, times)
    assert ids.dtype == np.int64 and ids.shape == (3, 3)
    assert ids.tolist() == [[3, 4, 5], [7, 0, 0], [0, 0, 0]]
    assert lengths.tolist() == [3, 1, 0]
    assert t is not None and t.tolist() == [[30, 40, 50], [70, 0, 0], [0, 0, 0]]
    ids, lengths, t = pad_batch(seqs[:2], 6)
    assert t is None and ids.tolist() == [[1, 2, 3, 4, 5, 0], [7, 0, 0, 0, 0, 0]]
    with pytest.raises(ValueError):
        pad_batch(seqs, 0)
