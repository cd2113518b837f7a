"""ATC never receives a QDQ graph: converting a bundle with int8 variants compiles the fp32 graphs."""

from __future__ import annotations

import io
import json
import shutil
import zipfile

import onnx

from ascend_support import double_env

from genrec.exporter.convert import convert_bundle

MAGIC = b"GENREC-ATC-DOUBLE-OM\n"


def test_convert_of_a_quantized_bundle_compiles_no_qdq_graph(quantized, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", double_env()["PATH"])
    path = tmp_path / "bundle"
    shutil.copytree(quantized[0], path)
    b = convert_bundle(path, "Ascend310P3", "fp32", log_dir=tmp_path / "logs")
    assert b.precisions == ["fp32", "fp16", "int8-dynamic", "int8-static"]  # the variants stay
    (build,) = b.manifest.targets["ascend"]
    for graph, rel in build.graphs.items():
        data = (path / rel).read_bytes()
        assert data.startswith(MAGIC)
        with zipfile.ZipFile(io.BytesIO(data[len(MAGIC):])) as zf:
            meta = json.loads(zf.read("meta.json"))
            model = onnx.load_from_string(zf.read("model.onnx"))
        ops = {n.op_type for n in model.graph.node}
        assert not ops & {"QuantizeLinear", "DequantizeLinear", "MatMulInteger", "DynamicQuantizeLinear"}, graph
        assert "variants/" not in json.dumps(meta) and "variants/" not in build.commands[graph]


def test_amct_flow_writes_deploy_models_from_the_calibration_inputs(trained_bundle, tmp_path, monkeypatch):
    """With ``amct_onnx`` importable (a stand-in with AMCT's documented PTQ calls, ASCEND.md §6),
    each graph goes create_quant_config -> quantize_model -> calibration runs -> save_model."""
    import sys
    import types

    import onnxruntime as ort

    from support import SLICE

    from genrec.calibration.ascend import quantize_for_ascend

    calls = []
    fake = types.ModuleType("amct_onnx")
    fake.AMCT_SO = ort.SessionOptions()
    fake.create_quant_config = lambda cfg, model, skip_layers=None, batch_num=1: (
        calls.append(("config", batch_num)), open(cfg, "w").write("{}"))
    fake.quantize_model = lambda cfg, model, modified, record: (
        calls.append(("quantize", model)), shutil.copyfile(model, modified), open(record, "w").write(""))
    fake.save_model = lambda modified, record, save_path: (
        calls.append(("save", save_path)), shutil.copyfile(modified, save_path + "_deploy_model.onnx"))
    monkeypatch.setitem(sys.modules, "amct_onnx", fake)
    path = tmp_path / "bundle"
    shutil.copytree(trained_bundle, path)
    out = quantize_for_ascend(path, "int8-static", SLICE, calib_users=8)
    assert out == tmp_path / "bundle-amct"  # beside the bundle: the bundle itself is untouched
    assert [c[0] for c in calls] == ["config", "quantize", "save"] * 3
    assert all(c[1] > 0 for c in calls if c[0] == "config")  # batch_num = the recorded calls
    for g in ("prefill", "step", "rank"):
        assert (out / f"{g}_deploy_model.onnx").is_file()
