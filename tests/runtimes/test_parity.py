"""`genrec parity`: comparators against hand computations, exact self-parity, and a nudged
graph that must fail with exit 1 and name the first divergent step."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from genrec.bundle import load_bundle, write_manifest
from genrec.runtimes import get_backend
from genrec.runtimes.parity import (TensorStats, Thresholds, first_divergence, list_agreement,
                                    requests_from_data, run_parity, task_metrics)
from support import SLICE


def test_tensor_stats_match_a_hand_computation():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]])
    cand = np.array([[1.0, 2.5], [3.0, 4.0]])
    st = TensorStats()
    st.add(ref, cand, ["a", "b"])
    assert st.max_abs == pytest.approx(0.5)
    assert st.max_rel == pytest.approx(0.25)  # 0.5 / 2
    # cosine of (1, 2) and (1, 2.5): 6 / (sqrt(5) * sqrt(7.25))
    assert st.cosine_min == pytest.approx(6 / (math.sqrt(5) * math.sqrt(7.25)))
    assert st.worst_user == "a"
    st.add(np.array([[-np.inf, 1.0]]), np.array([[-np.inf, 1.0]]), ["c"])  # masked ids agree
    assert st.max_abs == pytest.approx(0.5)
    st.add(np.array([[-np.inf, 1.0]]), np.array([[0.0, 1.0]]), ["d"])  # a mask that differs
    assert st.max_abs == math.inf and st.worst_user == "d"


def test_list_and_task_metrics_match_a_hand_computation():
    ref = [[1, 2, 3], [4, 5, 6]]
    cand = [[1, 2, 3], [4, 6, 7]]
    got = list_agreement(ref, cand, 3)
    assert got["exact_match"] == 0.5
    assert got["overlap@3"] == pytest.approx((3 / 3 + 2 / 3) / 2)
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 9, 3]) == 2
    # targets at rank 1, rank 3 and missing: HR@2 = 1/3, NDCG@2 = 1/3, MRR = (1 + 1/3) / 3
    m = task_metrics([[7, 8, 9], [1, 2, 3], [4, 5, 6]], [7, 3, 0], k=2)
    assert m["HR@2"] == pytest.approx(1 / 3)
    assert m["NDCG@2"] == pytest.approx(1 / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 3) / 3)


def test_thresholds_per_precision_and_overrides():
    assert Thresholds.for_precision("fp32").user_emb_max_abs == 1e-4
    assert Thresholds.for_precision("fp16").user_emb_max_abs is None  # judged by lists and metrics
    th = Thresholds.for_precision("fp16", {"fp16": {"overlap_min": 0.5}, "fp32": {"overlap_min": 0.1}})
    assert th.overlap_min == 0.5
    from genrec.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown threshold"):
        Thresholds.for_precision("fp32", {"nope": 1})


def test_parity_of_a_backend_with_itself_is_exact(bundles):
    b = load_bundle(bundles["hstu"])
    reqs = requests_from_data(SLICE, b.id_map, 40, b.dims.max_history)
    with get_backend("onnxruntime", b) as one, get_backend("onnxruntime", b) as two:
        report = run_parity(one, two, reqs, steps=3)
    assert report["passed"], report["breaches"]
    for per in report["tensor"].values():
        for st in per.values():
            assert st["max_abs"] == 0.0
    assert report["list"]["exact_match"] == 1.0 and report["list"]["slates_equal"] == 1.0
    assert all(d == 0 for d in report["task"]["delta"].values())
    lengths = {len(r.items) for r in reqs.requests}
    assert 1 in lengths and max(lengths) > b.dims.max_history  # edge cases are in the request set


def nudge_step_graph(bundle_dir, scale=0.3, seed=0):
    """Add noise to every weight matrix of step.onnx and re-sign the manifest."""
    path = bundle_dir / "step.onnx"
    model = onnx.load(str(path))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.ndim == 2 and w.shape[0] < 1000:  # layer weights, not the item table
            init.CopyFrom(numpy_helper.from_array((w + scale * w.std() * rng.standard_normal(w.shape)).astype(np.float32), init.name))
    onnx.save(model, str(path))
    write_manifest(bundle_dir, json.loads((bundle_dir / "manifest.json").read_text()))


def test_nudged_graph_fails_with_exit_1_naming_the_first_divergent_step(tmp_path, bundles):
    out = tmp_path / "nudged"
    shutil.copytree(bundles["llama"], out)
    nudge_step_graph(out)
    load_bundle(out)  # still a valid, signed bundle: only the numbers are wrong
    report = tmp_path / "parity.json"
    res = subprocess.run([sys.executable, "-m", "genrec", "parity", str(out), "--data", str(SLICE),
                          "--users", "40", "--generate", "4", "--report", str(report)],
                         capture_output=True, text=True)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert "step 1: user_emb max abs error" in res.stderr  # prefill is untouched, step 1 is not
    assert "prefill:" not in res.stderr
    assert "first divergent step 2" in res.stderr  # slate item 1 comes from prefill, item 2 from step 1
    data = json.loads(report.read_text())
    assert not data["passed"] and data["list"]["first_divergent_step"] == 2
    assert data["tensor"]["prefill"]["user_emb"]["max_abs"] < 1e-4


def test_cli_thresholds_file_and_bad_input(tmp_path, bundles):
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"fp32": {"user_emb_max_abs": 1e-12}}))
    base = [sys.executable, "-m", "genrec", "parity", str(bundles["sasrec"]), "--data", str(SLICE),
            "--users", "20", "--generate", "2"]
    res = subprocess.run(base + ["--thresholds", str(strict)], capture_output=True, text=True)
    assert res.returncode == 1 and "user_emb max abs error" in res.stderr and "> 1e-12" in res.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"no_such_limit": 1}))
    res = subprocess.run(base + ["--thresholds", str(bad)], capture_output=True, text=True)
    assert res.returncode == 1 and res.stderr.startswith("error: unknown threshold")
    res = subprocess.run(base[:5] + ["--candidate", "nosuchbackend", "--data", str(SLICE)],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "nosuchbackend" in res.stderr and "Traceback" not in res.stderr


def _parity_cli(bundle, *extra):
    return subprocess.run([sys.executable, "-m", "genrec", "parity", str(bundle), "--data", str(SLICE),
                           "--users", "20", "--generate", "2", *extra], capture_output=True, text=True)


def test_altered_manifest_fails_the_gate(tmp_path, bundles):
    """Both backends would read the same reversed id map: the gate must not pass it."""
    out = tmp_path / "altered"
    shutil.copytree(bundles["sasrec"], out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["id_map"].reverse()
    (out / "manifest.json").write_text(json.dumps(manifest))
    res = _parity_cli(out)
    assert res.returncode == 1 and "PASSED" not in res.stdout
    assert res.stderr.startswith("error: ") and "id_map differs from model.pt" in res.stderr
    assert "Traceback" not in res.stderr


def test_candidate_serving_other_sizes_fails_before_any_request(checkpoints, bundles):
    """The reference's sizes and id map come from its own source: a candidate that disagrees
    is a breach named by field, and nothing is compared."""
    ref = get_backend("torch", checkpoints["sasrec"], topk=30, step_topk=30, max_exclude=28, rank_candidates=6,
                      batch_gears=(1, 4, 8))
    cand = get_backend("onnxruntime", bundles["sasrec"], threads=1)
    with ref, cand:
        reqs = requests_from_data(SLICE, ref.item_map.to_list(), 5, ref.dims.max_history)
        report = run_parity(ref, cand, reqs, steps=2)
    assert not report["passed"] and report["requests"] == 0
    assert report["breaches"] == ["dims: the candidate serves with topk=40, the reference with 30",
                                  "dims: the candidate serves with step_topk=32, the reference with 30"]


def test_expect_digest_refuses_another_bundle(bundles):
    digest = load_bundle(bundles["gpt"]).digest
    res = _parity_cli(bundles["gpt"], "--expect-digest", "0" * 64)
    assert res.returncode == 1 and f"digest {digest} is not the expected" in res.stderr
    res = _parity_cli(bundles["gpt"], "--expect-digest", digest)
    assert res.returncode == 0, res.stderr


def test_parity_runs_on_histories_longer_than_the_exclude_width(backends, bundles):
    """Histories past X once made the gate refuse to run; it now drives the loop's own
    Stepper, whose answers are exact for any length, and the backends agree."""
    from genrec.runtimes import Request
    from genrec.runtimes.parity import ParityRequests

    ref, cand = backends["hstu"]
    base = requests_from_data(SLICE, ref.item_map.to_list(), 200, ref.dims.max_history)
    pool = list(dict.fromkeys(i for r in base.requests for i in r.items))  # distinct items, in order
    width = 3 * ref.dims.max_exclude
    assert len(pool) >= 12 * 5 + width
    long = []
    for u in range(12):  # each history: `width` distinct items, so exclusions overflow X
        items = pool[5 * u:5 * u + width]
        times = [1_400_000_000 + 3600 * t for t in range(width)]
        long.append(Request(f"long{u}", items, times, times[-1] + 60))
    report = run_parity(ref, cand, ParityRequests(long, base.targets[:12], 12, "joined histories"), steps=3)
    assert report["passed"], report["breaches"]
    assert report["requests"] == 12 and "step 3" in report["tensor"]
