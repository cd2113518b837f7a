"""Tests for the bundle manifest and the verifying loader, on a tiny real bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from genrec.bundle import (  # noqa: E402
    Bundle,
    build_files_index,
    io_spec_from_onnx,
    load_bundle,
    sha256_file,
    validate_manifest,
    write_manifest,
)
from genrec.errors import BundleError  # noqa: E402

NUM_ITEMS = 10


def _graph(path, out_name="user_emb"):
    """item_ids[batch, 5] int32 -> mean item embedding [batch, 4] float32."""
    table = numpy_helper.from_array(np.random.rand(NUM_ITEMS + 1, 4).astype(np.float32), "table")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "item_ids"], ["e"], axis=0),
         helper.make_node("ReduceMean", ["e", "axes"], [out_name], keepdims=0)],
        "g",
        [helper.make_tensor_value_info("item_ids", TensorProto.INT32, ["batch", 5])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", 4])],
        initializer=[table, axes],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)


def _manifest(bundle_dir):
    graphs = {}
    for name in ("prefill", "step", "rank"):
        spec = io_spec_from_onnx(bundle_dir / f"{name}.onnx")
        graphs[name] = {"file": f"{name}.onnx", "exporter": "dynamo", **spec}
    return {
        "arch": "sasrec",
        "config": {"d": 4, "layers": 1},
        "num_items": NUM_ITEMS,
        "max_history": 5,
        "capacity": 8,
        "topk": 3,
        "max_exclude": 6,
        "rank_candidates": 2,
        "batch_gears": [1, 2, 4],
        "opset": 18,
        "precision": "fp32",
        "id_map": [100 + i for i in range(NUM_ITEMS)],
        "graphs": graphs,
        "source_checkpoint": "model.pt",
        "checks": [{"name": "onnx.checker", "passed": True}],
        "parity": None,
    }


@pytest.fixture
def bundle_dir(tmp_path):
    d = tmp_path / "bundle"
    d.mkdir()
    for name in ("prefill", "step", "rank"):
        _graph(d / f"{name}.onnx")
    (d / "model.pt").write_bytes(b"not really a checkpoint" * 10)
    write_manifest(d, _manifest(d))
    return d


def _rewrite(bundle_dir, **changes):
    """Edit manifest.json in place without re-hashing (simulates a hand-edited manifest)."""
    p = bundle_dir / "manifest.json"
    d = json.loads(p.read_text())
    d.update(changes)
    p.write_text(json.dumps(d))


def test_write_and_load_roundtrip(bundle_dir):
    text = (bundle_dir / "manifest.json").read_text()
    raw = json.loads(text)
    assert list(raw) == sorted(raw) and text.startswith("{\n  ")
    assert raw["schema"] == "genrec.bundle" and raw["schema_version"] == 1
    assert set(raw["files"]) == {"prefill.onnx", "step.onnx", "rank.onnx", "model.pt"}
    assert raw["files"]["model.pt"] == sha256_file(bundle_dir / "model.pt")
    assert {"torch", "onnx", "python"} <= set(raw["versions"])

    b = load_bundle(bundle_dir)
    assert isinstance(b, Bundle)
    assert (b.arch, b.num_items, b.max_history, b.capacity) == ("sasrec", NUM_ITEMS, 5, 8)
    assert (b.topk, b.max_exclude, b.rank_candidates) == (3, 6, 2)
    assert b.batch_gears == [1, 2, 4] and b.config == {"d": 4, "layers": 1}
    assert b.id_map[0] == 100
    assert b.graph_path("step") == bundle_dir / "step.onnx"
    assert b.graph_spec("prefill")["inputs"] == [
        {"name": "item_ids", "dtype": "int32", "shape": ["batch", 5]}]
    assert b.graph_spec("prefill")["outputs"][0]["dtype"] == "float32"
    assert b.checkpoint_path == bundle_dir / "model.pt"
    assert b.precisions == ["fp32"]
    with pytest.raises(BundleError, match="fp16"):
        b.graph_path("prefill", "fp16")


def test_variant_and_subfolders_are_hashed(bundle_dir):
    (bundle_dir / "fp16").mkdir()
    _graph(bundle_dir / "fp16" / "prefill.onnx")
    (bundle_dir / "om" / "Ascend910B").mkdir(parents=True)
    (bundle_dir / "om" / "Ascend910B" / "prefill.om").write_bytes(b"om")
    m = json.loads((bundle_dir / "manifest.json").read_text())
    spec = io_spec_from_onnx(bundle_dir / "fp16" / "prefill.onnx")
    m["variants"] = {"fp16": {"dir": "fp16", "graphs": {
        "prefill": {"file": "prefill.onnx", "exporter": "dynamo", **spec}}, "gate": {"ok": True}}}
    write_manifest(bundle_dir, m)
    b = load_bundle(bundle_dir)
    assert "fp16/prefill.onnx" in b.manifest["files"]
    assert "om/Ascend910B/prefill.om" in build_files_index(bundle_dir)
    assert b.precisions == ["fp32", "fp16"]
    assert b.graph_path("prefill", "fp16") == bundle_dir / "fp16" / "prefill.onnx"


def test_tampered_graph_is_refused(bundle_dir):
    p = bundle_dir / "step.onnx"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"step\.onnx.*sha256.*tampered"):
        load_bundle(bundle_dir)
    load_bundle(bundle_dir, verify=False)  # schema-only load still works


def test_missing_file_is_refused(bundle_dir):
    (bundle_dir / "rank.onnx").unlink()
    with pytest.raises(BundleError, match=r"rank\.onnx.*missing"):
        load_bundle(bundle_dir)


def test_unexpected_file_is_refused(bundle_dir):
    (bundle_dir / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"unexpected file 'extra\.bin'"):
        load_bundle(bundle_dir)


def test_missing_manifest_and_malformed_json(tmp_path, bundle_dir):
    with pytest.raises(BundleError, match="manifest.json missing"):
        load_bundle(tmp_path)
    (bundle_dir / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_dir)


def test_bad_schema_and_version_are_refused(bundle_dir):
    _rewrite(bundle_dir, schema="something.else")
    with pytest.raises(BundleError, match="schema"):
        load_bundle(bundle_dir)
    _rewrite(bundle_dir, schema="genrec.bundle", schema_version=2)
    with pytest.raises(BundleError, match="schema_version"):
        load_bundle(bundle_dir)


def test_io_contract_mismatch_is_refused(bundle_dir):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    m["graphs"]["prefill"]["inputs"][0]["dtype"] = "int64"
    (bundle_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"prefill\.onnx.*item_ids.*int32.*int64"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="IO contract"):
        write_manifest(bundle_dir, m)


def test_io_contract_output_name_mismatch(bundle_dir):
    _graph(bundle_dir / "step.onnx", out_name="renamed")
    m = json.loads((bundle_dir / "manifest.json").read_text())
    with pytest.raises(BundleError, match=r"step\.onnx.*renamed"):
        write_manifest(bundle_dir, m)


def test_graph_not_listed_in_files(bundle_dir):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    m["graphs"]["rank"]["file"] = "nowhere.onnx"
    with pytest.raises(BundleError, match="nowhere.onnx"):
        write_manifest(bundle_dir, m)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("num_items", "10", "num_items"),
        ("batch_gears", [], "batch_gears"),
        ("id_map", [1, 2], "id_map"),
        ("created_at", "yesterday", "created_at"),
        ("graphs", {"prefill": {"file": "../x.onnx", "exporter": "dynamo",
                                "inputs": [], "outputs": []}}, "inside the bundle"),
        ("graphs", {"prefill": {"file": "p.onnx", "exporter": "jit",
                                "inputs": [], "outputs": []}}, "exporter"),
        ("files", {"a": "nothex"}, "sha256"),
        ("step_topk", 10 ** 6, "step_topk"),  # more than topk
        ("step_topk", "8", "step_topk"),
    ],
)
def test_validate_manifest_names_bad_field(bundle_dir, field, value, match):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    validate_manifest(m)
    m[field] = value
    with pytest.raises(BundleError, match=match):
        validate_manifest(m)


def test_validate_manifest_names_missing_field(bundle_dir):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    del m["capacity"]
    with pytest.raises(BundleError, match="'capacity'"):
        validate_manifest(m)


def test_step_topk_is_optional_and_defaults_to_topk(bundle_dir):
    """Bundles written before the step graph had its own K still load: their step returns K'."""
    m = json.loads((bundle_dir / "manifest.json").read_text())
    m.pop("step_topk", None)
    validate_manifest(m)
    assert Bundle(bundle_dir, m).step_topk == m["topk"]


def test_sha256_file_streams(tmp_path):
    import hashlib

    p = tmp_path / "big"
    data = np.random.bytes(3 * (1 << 20) + 17)
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()
