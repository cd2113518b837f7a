"""The benchmarks' peer backends against the eager torch reference: ``openvino`` (the bundle's
ONNX graphs on OpenVINO CPU) and ``torch.compile``. A benchmark that races us against them is
only worth reading if they compute what we compute, so they are held to the same parity as
onnxruntime (tests/runtimes/test_parity_torch_ort.py): identical ids, scores within 1e-4.

OpenVINO is the ``bench`` extra: without it those tests skip (visibly, ``-ra``); CI installs it.
torch.compile is slow to compile (about a minute on 2 cores, cold), so it is checked on one
backbone at one batch size.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from rt_support import assert_same_results
from support import SLICE

from genrec.errors import ConfigError
from genrec.runtimes import PrefillBatch, SearchParams, generate, get_backend, rank, recommend

ATOL = 1e-4


@pytest.fixture(scope="module")
def openvino_backends(bundles):
    """``openvino_backends[arch]``: an openvino backend over the session's bundle, opened once."""
    pytest.importorskip("openvino", reason="the bench extra (pip install -e '.[bench]')")
    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = get_backend("openvino", bundles[arch], threads=1)
        return cache[arch]

    yield get
    for backend in cache.values():
        backend.close()


def histories(dims, b: int, seed: int = 0) -> PrefillBatch:
    """``b`` random right-padded histories of mixed lengths, with a deny list and (HSTU)
    rebased timestamps: enough to exercise prefill, step, reorder and rank directly."""
    rng = np.random.default_rng(seed)
    t = dims.max_history
    lengths = rng.integers(1, t + 1, size=b).astype(np.int32)
    ids = rng.integers(1, dims.num_items + 1, size=(b, t)).astype(np.int32)
    ids[np.arange(t) >= lengths[:, None]] = 0
    exclude = np.zeros((b, dims.max_exclude), np.int32)
    exclude[:, :3] = ids[:, :3]
    if not dims.needs_timestamps:
        return PrefillBatch(ids, lengths, exclude)
    ts = np.cumsum(rng.integers(1, 86_400, size=(b, t)), axis=1).astype(np.int32)
    ts -= ts[:, :1]
    return PrefillBatch(ids, lengths, exclude, ts, ts[np.arange(b), lengths - 1] + 3600)


def assert_close_outputs(ref, got) -> None:
    """Same top-K' ids, scores and log_z within ATOL, and the contract's dtypes."""
    assert got.topk_ids.dtype == np.int64 and got.topk_scores.dtype == np.float32
    assert got.log_z.dtype == np.float32
    np.testing.assert_array_equal(got.topk_ids, ref.topk_ids)
    np.testing.assert_allclose(got.topk_scores, ref.topk_scores, atol=ATOL, rtol=0)
    np.testing.assert_allclose(got.log_z, ref.log_z, atol=ATOL, rtol=0)


def step_inputs(dims, best: np.ndarray, position: np.ndarray, batch: PrefillBatch, rows: np.ndarray):
    """The next step's feeds: row r appends item ``best[r]`` at ``position[r]``, at the
    request time of history ``rows[r]`` of ``batch`` (HSTU)."""
    timestamp = batch.request_time[rows] if dims.needs_timestamps else None
    exclude = np.zeros((position.size, dims.max_exclude), np.int32)
    return best.astype(np.int32), position.astype(np.int32), timestamp, exclude


# -- openvino ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["hstu", "sasrec"])
def test_openvino_agrees_with_torch(arch, backends, openvino_backends, requests):
    ref, cand = backends[arch][0], openvino_backends(arch)
    assert_same_results(recommend(ref, requests, k=10), recommend(cand, requests, k=10), atol=ATOL)
    greedy = SearchParams("greedy")
    assert_same_results(generate(ref, requests, 3, greedy), generate(cand, requests, 3, greedy), atol=ATOL)
    beam = SearchParams("beam", num_beams=3)  # reorders the cache between steps
    r, c = generate(ref, requests, 3, beam), generate(cand, requests, 3, beam)
    assert_same_results(r, c, atol=ATOL)
    assert [x.score for x in r] == pytest.approx([x.score for x in c], abs=ATOL)
    assert_same_results(rank(ref, requests), rank(cand, requests), atol=ATOL)


def test_openvino_reorder_changes_the_gear_then_step_and_rank(backends, openvino_backends):
    """Reorder from gear 4 to gear 8 (a batch OpenVINO has not compiled for yet), then step and
    rank; outputs are owned copies (OpenVINO overwrites its output tensors on the next call)
    and the inputs, shared with OpenVINO rather than copied, come back untouched."""
    ref, cand = backends["hstu"][0], openvino_backends("hstu")
    dims = cand.dims
    batch = histories(dims, 4)
    kept = {k: v.copy() for k, v in vars(batch).items() if isinstance(v, np.ndarray)}
    (r_out, r_state), (c_out, c_state) = ref.prefill(batch), cand.prefill(batch)
    assert_close_outputs(r_out, c_out)
    first = c_out.topk_ids.copy(), c_out.topk_scores.copy(), c_out.user_emb.copy()
    cand.prefill(histories(dims, 4, seed=1))  # same compiled request, other numbers
    for before, now in zip(first, (c_out.topk_ids, c_out.topk_scores, c_out.user_emb)):
        np.testing.assert_array_equal(now, before)
    for k, v in kept.items():
        np.testing.assert_array_equal(getattr(batch, k), v)

    index = np.array([3, 0, 0, 1, 2, 3, 1, 2])
    ref.reorder(r_state, index)
    cand.reorder(c_state, index)
    position = batch.lengths[index] + 1
    feeds = step_inputs(dims, r_out.topk_ids[index, 0], position, batch, index)
    assert_close_outputs(ref.step(r_state, *feeds), cand.step(c_state, *feeds))

    candidates = np.random.default_rng(2).integers(1, dims.num_items + 1, size=(8, dims.rank_candidates))
    got = cand.rank(c_state, candidates, position + 1, feeds[2])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref.rank(r_state, candidates, position + 1, feeds[2]), atol=ATOL, rtol=0)


def test_openvino_rejects_an_unknown_inference_precision(bundles):
    with pytest.raises(ConfigError, match="inference_precision 'f8'"):
        get_backend("openvino", bundles["sasrec"], inference_precision="f8")


def test_parity_cli_passes_openvino(bundles, openvino_backends):
    res = subprocess.run([sys.executable, "-m", "genrec", "parity", str(bundles["sasrec"]), "--data", str(SLICE),
                          "--candidate", "openvino", "--users", "20", "--generate", "2"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASSED parity torch vs openvino" in res.stdout


# -- torch.compile -------------------------------------------------------------------------


def test_torch_compile_matches_eager_without_recompiling(bundles, backends):
    """Batch 1 only: each batch gear compiles prefill and step once (about a minute here).
    Steps at new positions, and a reorder between steps, must not compile them again."""
    import torch
    from torch._dynamo.utils import counters

    ref = backends["sasrec"][0]
    compiled = get_backend("torch.compile", bundles["sasrec"])
    assert compiled.name == "torch.compile" and compiled.compiled
    graphs = counters["stats"]["unique_graphs"]
    try:
        batch = histories(compiled.dims, 1, seed=3)
        (r_out, r_state), (c_out, c_state) = ref.prefill(batch), compiled.prefill(batch)
        assert_close_outputs(r_out, c_out)
        position, row = batch.lengths + 1, np.array([0])
        for step in range(3):
            if step == 2:  # the beam path: the step must take the cache tensors reorder makes
                ref.reorder(r_state, row)
                compiled.reorder(c_state, row)
            feeds = step_inputs(compiled.dims, r_out.topk_ids[:, 0], position, batch, row)
            r_out, c_out = ref.step(r_state, *feeds), compiled.step(c_state, *feeds)
            assert_close_outputs(r_out, c_out)
            position = position + 1
        assert counters["stats"]["unique_graphs"] - graphs == 2  # prefill + step, once each
        assert torch._dynamo.config.cache_size_limit >= len(compiled.dims.batch_gears)
    finally:
        compiled.close()
