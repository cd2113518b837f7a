"""`genrec quantize` end to end on a trained bundle: variants, manifest, gate, refusals, atomicity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

CALIB, JUDGE = 48, 600  # as tests/calibration/conftest.py quantises
from support import SLICE

from genrec.bundle import load_bundle
from genrec.cli import cli, invoke
from genrec.runtimes import get_backend, recommend


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(src, dst)
    return dst


def test_variants_are_written_verified_and_recorded(quantized):
    path, infos = quantized
    b = load_bundle(path)  # every graph, variants included, cross-checked against the manifest
    assert b.precisions == ["fp32", "fp16", "int8-dynamic", "int8-static"]
    for prec, info in infos.items():
        v = b.manifest.variants[prec]
        assert v.dir == f"variants/{prec}" and v.info == json.loads(json.dumps(info))
        assert info["calibration"]["users"] == CALIB and info["judging"]["users"] == JUDGE
        assert len(info["calibration"]["data_sha256"]) == 64
        assert info["excluded"]["groups"][0] == "head" and info["excluded"]["nodes"]["step"]
        loss = info["deltas"]["ndcg_relative_loss"]
        assert loss["value"] <= 0.01 and loss["ci95"][0] <= loss["value"] <= loss["ci95"][1]
        assert info["deltas"]["metrics"]["NDCG@10"]["fp32"] > 0
        # the kept set is one the search tried and passed (not necessarily its last try: the
        # single-group round tries every group, then keeps the passing one of least loss)
        search, kept = info["gate"]["search"], sorted(info["excluded"]["searched_groups"])
        assert search[0]["excluded"] == [] and info["excluded"]["groups"] == info["excluded"]["default_groups"] + kept
        tried = [t for t in search if sorted(t["excluded"]) == kept]
        assert len(tried) == 1 and tried[0]["passed"] and tried[0]["ndcg_relative_loss"] == loss["value"]
        for g in ("prefill", "step", "rank"):  # the same IO contract as the fp32 graph
            assert b.graph_spec(g, prec).io() == b.graph_spec(g).io()
    static = infos["int8-static"]["calibration"]
    assert static["samples"]["step"] > 0 and static["samples"]["rank"] > 0 and len(static["feeds_sha256"]) == 64


def test_int8_static_is_qdq_with_an_fp32_scoring_head(quantized):
    path, _ = quantized
    step = onnx.load(str(path / "variants/int8-static/step.onnx"))
    ops = [n.op_type for n in step.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    producer = {o: n for n in step.graph.node for o in n.output}
    topk = next(n for n in step.graph.node if n.op_type == "TopK")
    # walk back from TopK to the catalogue MatMul: no DequantizeLinear feeds it (it stays fp32)
    node = topk
    while node.op_type != "MatMul":
        node = producer[node.input[0]]
    assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input)


def test_variants_serve_through_the_onnxruntime_backend(quantized, requests_slice):
    path, _ = quantized
    with get_backend("onnxruntime", path, threads=1) as ref:
        want = recommend(ref, requests_slice, k=10)
        in_place = ref.inplace_cache
    assert in_place
    for prec in ("fp16", "int8-dynamic", "int8-static"):
        with get_backend("onnxruntime", path, precision=prec, threads=1) as be:
            assert be.precision == prec
            assert be.inplace_cache == in_place  # variants keep the one-buffer cache writes
            got = recommend(be, requests_slice, k=10)
        overlap = np.mean([len(set(a.items) & set(b.items)) / 10 for a, b in zip(want, got)])
        assert overlap >= 0.7, (prec, overlap)


@pytest.fixture(scope="module")
def requests_slice(trained_bundle):
    from genrec.calibration.data import split_users

    return split_users(SLICE, None, load_bundle(trained_bundle, verify=False).id_map, 1, 40, seed=3).judge


def test_a_random_model_is_refused_and_the_bundle_left_as_it_was(bundles, tmp_path, capsys):
    path = copy(bundles["sasrec"], tmp_path)  # random weights: fp32 NDCG@10 is 0
    before = snapshot(tmp_path)
    code = invoke(cli, ["quantize", str(path), "--precision", "int8-dynamic", "--calib-data", str(SLICE),
                        "--calib-users", "8", "--judge-users", "20"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: fp32 NDCG@10 is 0 on the 20 judging users")
    assert snapshot(tmp_path) == before


def test_an_existing_variant_needs_force(quantized, tmp_path, capsys):
    path = copy(quantized[0], tmp_path)
    code = invoke(cli, ["quantize", str(path), "--precision", "fp16", "--calib-data", str(SLICE)])
    assert code == 1 and "has a fp16 variant already; pass --force" in capsys.readouterr().err


def test_an_interrupted_quantize_leaves_the_bundle_byte_identical(trained_bundle, tmp_path, monkeypatch):
    from genrec.calibration import quantize as q

    path = copy(trained_bundle, tmp_path)
    before = snapshot(tmp_path)
    calls = []
    real = q.convert_graph

    def interrupted(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:  # after one graph was written into the staged bundle
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(q, "convert_graph", interrupted)
    with pytest.raises(KeyboardInterrupt):
        q.quantize_bundle(path, "int8-dynamic", SLICE, calib_users=8, judge_users=50, threads=1)
    assert len(calls) == 2
    assert snapshot(tmp_path) == before  # no variant, no manifest change, no staging leftover


def test_a_failing_gate_names_the_loss_and_writes_nothing(trained_bundle, tmp_path, monkeypatch):
    from genrec.calibration import quantize as q
    from genrec.calibration.gate import GateError

    path = copy(trained_bundle, tmp_path)
    before = snapshot(tmp_path)
    worse = {"value": 0.2}

    def compare(ref, cand, seed=0):  # every try loses 20% NDCG@10
        return {"users": 1, "metrics": {}, "ndcg_relative_loss": {**worse, "ci95": [0.1, 0.3]}, "overlap@10": 0.5}

    monkeypatch.setattr(q, "compare", compare)
    with pytest.raises(GateError, match=r"refusing to write int8-dynamic: relative NDCG@10 loss 20\.00% exceeds "
                                        r"--max-ndcg-loss 1\.00%.*every node group in fp32 would quantise nothing"):
        q.quantize_bundle(path, "int8-dynamic", SLICE, calib_users=8, judge_users=50, threads=1)
    assert snapshot(tmp_path) == before


def test_ascend_int8_without_amct_says_what_to_install(trained_bundle, capsys):
    code = invoke(cli, ["quantize", str(trained_bundle), "--precision", "int8-static", "--calib-data", str(SLICE),
                        "--target", "ascend"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "needs Huawei AMCT (the Python package amct_onnx" in err[0]
