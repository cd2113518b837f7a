"""The parts: node groups, the fallback search, the paired gate, disjoint users, recorded inputs."""

from __future__ import annotations

import math
import re

import numpy as np
import onnx
import pytest

from support import SLICE

from genrec.bundle import load_bundle
from genrec.calibration.gate import GateError, Judged, compare, per_user, target_ranks
from genrec.calibration.groups import node_groups
from genrec.calibration.search import search_groups


def test_groups_match_the_module_names_the_llama_graph_carries(trained_bundle):
    """Groups come from structure; llama's graphs also carry module paths, which must agree."""
    for g in ("prefill", "step", "rank"):
        model = onnx.load(str(trained_bundle / f"{g}.onnx"))
        ng = node_groups(model)
        assert ng.per_layer and ng.layers == 2
        meta = {n.name: {p.key: p.value for p in n.metadata_props}.get("namespace", "") for n in model.graph.node}
        for i in range(2):
            proj = ng.groups[f"layer{i}.projections"]
            assert len(proj) == 7  # q, k, v, o, gate, up, down
            for name in proj:
                assert re.search(rf"model\.blocks\.{i}\.(q|k|v|o|gate|up|down):", meta[name]), (g, name, meta[name])
            assert sum(model.graph.node[[n.name for n in model.graph.node].index(x)].op_type == "MatMul"
                       for x in ng.groups[f"layer{i}.attention"]) == 2  # QK^T and AV
        head_ops = {n.op_type for n in model.graph.node if n.name in set(ng.groups["head"])}
        if g != "rank":
            assert {"MatMul", "TopK"} <= head_ops  # scoring against the catalogue, TopK


def test_search_finds_the_fewest_groups_and_gives_up_short_of_all():
    groups = ["a", "b", "c", "d"]
    loss = {("a", "c"): 0.005}  # only a and c together pass

    def evaluate(excl):
        return loss.get(excl, 0.02 - 0.004 * (("a" in excl) + ("c" in excl)))

    res = search_groups(groups, evaluate, 0.01)
    assert res.excluded == ("a", "c")
    assert res.trail[0].excluded == () and not res.trail[0].passed
    assert {t.excluded for t in res.trail[1:5]} == {("a",), ("b",), ("c",), ("d",)}
    nothing = search_groups(groups, lambda excl: 0.5, 0.01)
    assert nothing.excluded is None and nothing.best.loss == 0.5
    assert ("a", "b", "c", "d") not in {t.excluded for t in nothing.trail}  # everything fp32 is never a variant
    assert search_groups(groups, lambda excl: 0.0, 0.01).excluded == ()


def test_paired_gate_metrics_and_interval():
    ref = Judged([[1, 2, 3]] * 4, target_ranks([[5, 1], [5, 1], [5, 1], [1, 5]], [1, 1, 1, 1]))
    assert list(ref.ranks) == [2, 2, 2, 1]
    cand = Judged([[1, 2, 3]] * 4, np.array([2.0, 2.0, math.inf, 1.0]))
    r = compare(ref, cand, seed=0)
    ndcg = per_user(ref.ranks)["NDCG@10"]
    want = (ndcg.mean() - (ndcg.sum() - ndcg[2]) / 4) / ndcg.mean()
    assert r["ndcg_relative_loss"]["value"] == pytest.approx(want)
    lo, hi = r["ndcg_relative_loss"]["ci95"]
    assert 0 <= lo <= want <= hi
    assert r["metrics"]["HR@10"]["delta"] == pytest.approx(-0.25) and r["overlap@10"] == pytest.approx(0.3)
    zero = Judged([[9]] * 3, np.full(3, math.inf))
    with pytest.raises(GateError, match="fp32 NDCG@10 is 0 on the 3 judging users"):
        compare(zero, zero)


def test_calibration_and_judging_users_are_disjoint(trained_bundle):
    from genrec.calibration.data import split_users

    ids = load_bundle(trained_bundle, verify=False).id_map
    u = split_users(SLICE, None, ids, 100, 300, seed=1)
    calib, judge = {r.user_id for r in u.calib}, {r.user_id for r in u.judge}
    assert len(calib) == 100 and len(judge) == 300 and not calib & judge
    held = split_users(SLICE, SLICE, ids, 100, 5000, seed=1)  # a holdout holding the calibration users
    assert held.dropped_overlap == 100 and len(held.judge) == 2900
    assert not calib & {r.user_id for r in held.judge}


def test_recorded_inputs_are_real_histories_and_real_caches(trained_bundle):
    from genrec.calibration.data import feeds_digest, record_feeds, split_users

    b = load_bundle(trained_bundle)
    users = split_users(SLICE, None, b.id_map, 12, 2, seed=2)
    feeds = record_feeds(b, users, steps=3, batch_size=4, threads=1)
    # 3 batches of 4: a prefill for the slates and one for ranking, 2 steps (3-item slates), 1 rank call
    assert feeds.counts() == {"prefill": 6, "step": 6, "rank": 3}
    internal = {i + 1 for i in range(b.dims.num_items)}
    for call in feeds.graphs["prefill"]:
        assert set(np.unique(call["item_ids"])) - {0} <= internal and call["lengths"].max() > 1
    for g in ("step", "rank"):
        for call in feeds.graphs[g]:
            past = [v for k, v in call.items() if k.startswith("past_")]
            assert past and all(np.abs(v).sum() > 0 for v in past)  # caches the fp32 prefill wrote
    assert feeds_digest(feeds) == feeds_digest(feeds) and len(feeds_digest(feeds)) == 64
