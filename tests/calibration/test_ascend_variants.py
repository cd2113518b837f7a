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
