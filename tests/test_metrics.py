"""Ranking metrics against hand-computed values, ranking rules, and the popularity baseline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from rich.table import Table

from genrec.data import ItemMap, SequenceData, leave_one_out, read_sequences
from genrec.metrics import (
    format_metrics_table,
    most_popular_ranks,
    rank_of_target,
    ranking_metrics,
)

SLICE = Path(__file__).resolve().parents[1] / "data" / "beauty-slice"


def test_metrics_hand_computed() -> None:
    m = ranking_metrics(np.array([1, 2, 11]), ks=(1, 10, 50))
    assert list(m) == ["HR@1", "NDCG@1", "HR@10", "NDCG@10", "HR@50", "NDCG@50", "MRR"]
    assert m["HR@1"] == pytest.approx(1 / 3)
    assert m["NDCG@1"] == pytest.approx(1 / 3)
    assert m["HR@10"] == pytest.approx(2 / 3)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert m["HR@50"] == pytest.approx(1.0)
    assert m["NDCG@50"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(12)) / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 11) / 3)


def test_metrics_default_ks_and_bad_input() -> None:
    m = ranking_metrics([200, 201])
    assert m["HR@200"] == pytest.approx(0.5) and m["HR@50"] == 0.0
    assert m["NDCG@200"] == pytest.approx(0.5 / math.log2(201))
    with pytest.raises(ValueError):
        ranking_metrics([])
    with pytest.raises(ValueError):
        ranking_metrics([0, 1])


def test_rank_of_target_full_catalogue() -> None:
    # columns: 0 (padding) .. 5
    scores = np.array(
        [
            [9.0, 0.1, 0.5, 0.9, 0.3, 0.7],  # target 2 (0.5): 3 and 5 higher -> rank 3
            [9.0, 0.1, 0.5, 0.9, 0.3, 0.7],  # same, history {3} excluded -> rank 2
            [9.0, 0.4, 0.4, 0.4, 0.1, 0.2],  # target 1 ties with 2 and 3 -> pessimistic rank 3
            [9.0, 0.1, 0.5, 0.9, 0.3, 0.7],  # target 3 in its own history is still ranked -> 1
        ]
    )
    targets = np.array([2, 2, 1, 3])
    exclude = [np.array([], dtype=np.int64), np.array([3]), np.array([4]), np.array([3, 5])]
    ranks = rank_of_target(scores, targets, exclude)
    assert ranks.tolist() == [3, 2, 3, 1]
    assert rank_of_target(scores, targets).tolist() == [3, 3, 3, 1]


def test_rank_of_target_constant_scores_are_worst() -> None:
    ranks = rank_of_target(np.zeros((2, 11)), np.array([1, 10]), [np.array([2, 3]), np.array([])])
    assert ranks.tolist() == [8, 10]  # 10 items; 2 excluded -> 8 candidates, target last


def test_rank_of_target_nan_target_is_last() -> None:
    scores = np.array([[0.0, np.nan, 0.2, 0.1]])
    assert rank_of_target(scores, np.array([1])).tolist() == [3]


def test_most_popular_by_hand() -> None:
    # train parts: [1,1,2] and [1,3]; popularity 1:3, 2:1, 3:1, 4:0
    items = [np.array([1, 1, 2, 4, 2]), np.array([1, 3, 3, 4])]
    data = SequenceData(["a", "b"], items, None, ItemMap.from_raw([1, 2, 3, 4]), "mem", 0)
    split = leave_one_out(data)
    # a: test target 2, history {1,2,4} minus target -> candidates 2,3: 3 ties (pop 1) -> rank 2
    # b: test target 4 (pop 0), history {1,3} -> candidates 2,4: 2 higher -> rank 2
    assert most_popular_ranks(split, "test").tolist() == [2, 2]
    # a: valid target 4 (pop 0), history {1,2} -> candidates 3,4: 3 higher -> rank 2
    # b: valid target 3 (pop 1), history {1,3} minus target -> candidates 2,3,4: 2 ties -> rank 2
    assert most_popular_ranks(split, "valid").tolist() == [2, 2]


def test_most_popular_on_slice_beats_chance() -> None:
    split = leave_one_out(read_sequences(SLICE))
    ranks = most_popular_ranks(split)
    assert ranks.shape == (len(split),)
    assert ranks.min() >= 1 and ranks.max() <= split.num_items
    hr10 = ranking_metrics(ranks)["HR@10"]
    assert hr10 > 10 * 10 / split.num_items  # far above a random ranking


def test_format_metrics_table() -> None:
    table = format_metrics_table({"pop": {"HR@10": 0.1, "MRR": 0.05}, "model": {"HR@10": 0.2}})
    assert isinstance(table, Table)
    assert [c.header for c in table.columns] == ["model", "HR@10", "MRR"]
    assert table.row_count == 2
    assert list(table.columns[2].cells) == ["0.0500", "-"]
