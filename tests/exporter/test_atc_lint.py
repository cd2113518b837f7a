"""Tests for the ATC-compatibility lint, on tiny graphs built with onnx.helper."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from genrec.errors import ExportError  # noqa: E402
from genrec.exporter.atc_lint import (  # noqa: E402
    Finding,
    format_findings,
    has_errors,
    lint_model,
    lint_summary,
)

F = TensorProto.FLOAT


def make(nodes, inputs, outputs, *, opset=18, inits=(), extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def keyed(findings):
    return {(f.rule, f.node) for f in findings}


def errors(findings):
    return [f for f in findings if f.severity == "error"]


def test_clean_graph_has_no_findings():
    m = make(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
         helper.make_node("Relu", ["h"], ["y"], name="relu")],
        [vi("x", F, ["batch", 8])],
        [vi("y", F, ["batch", 4])],
        inits=[init("w", np.ones((8, 4), np.float32))],
    )
    assert lint_model(m) == []
    assert lint_summary([]).startswith("ATC lint: clean")


def test_gelu_opset20_flags_opset_and_node():
    m = make([helper.make_node("Gelu", ["x"], ["y"], name="gelu")],
             [vi("x", F, ["batch", 8])], [vi("y", F, ["batch", 8])], opset=20)
    found = keyed(lint_model(m))
    assert ("opset", "<model>") in found
    assert ("unregistered-op", "gelu") in found
    f = next(f for f in lint_model(m) if f.node == "gelu")
    assert f.op_type == "Gelu" and f.severity == "error" and "ai.onnx::20::Gelu" in f.message


def _reduce_l2(opset):
    if opset >= 18:  # axes moved from attribute to input at 18
        node = helper.make_node("ReduceL2", ["x", "axes"], ["y"], name="l2", keepdims=0)
        inits = [init("axes", np.array([1], np.int64))]
    else:
        node = helper.make_node("ReduceL2", ["x"], ["y"], name="l2", axes=[1], keepdims=0)
        inits = []
    return make([node], [vi("x", F, ["batch", 8])], [vi("y", F, ["batch"])],
                opset=opset, inits=inits)


def test_reduce_l2_registered_only_up_to_17():
    bad = lint_model(_reduce_l2(18))
    assert keyed(bad) == {("unregistered-op", "l2")}
    assert "8-17" in bad[0].message and "export with opset 17" in bad[0].message
    assert lint_model(_reduce_l2(17)) == []


def _layernorm(opset):
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], name="ln", axis=-1)
    inits = [init("g", np.ones(8, np.float32)), init("b", np.zeros(8, np.float32))]
    return make([node], [vi("x", F, ["batch", 8])], [vi("y", F, ["batch", 8])],
                opset=opset, inits=inits)


def test_layernorm_needs_opset_17():
    bad = errors(lint_model(_layernorm(16)))
    assert keyed(bad) == {("unregistered-op", "ln")}
    assert "17-18" in bad[0].message and "export with opset 17" in bad[0].message
    assert errors(lint_model(_layernorm(17))) == []


def test_nonzero_is_shape_from_data_warning():
    m = make([helper.make_node("NonZero", ["x"], ["y"], name="nz")],
             [vi("x", F, ["batch", 8])], [vi("y", TensorProto.INT64, [2, "n"])])
    found = lint_model(m, dynamic_axes_ok={"n"})
    assert keyed(found) == {("shape-from-data", "nz")}
    assert found[0].severity == "warning" and "shape from data" in found[0].message


def test_reshape_from_values_warns_but_expand_from_batch_dim_is_fine():
    # Reshape whose target shape is the *values* of an input tensor: data-dependent.
    bad = make(
        [helper.make_node("Cast", ["n"], ["shape"], name="cast", to=TensorProto.INT64),
         helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")],
        [vi("x", F, ["batch", 8]), vi("n", TensorProto.INT32, [2])],
        [vi("y", F, ["batch", 8])],
    )
    assert ("shape-from-data", "reshape") in keyed(lint_model(bad))
    # Expand of a constant to [batch, 4] with batch taken from Shape(x): static per gear.
    ok = make(
        [helper.make_node("Shape", ["x"], ["sx"], name="shape"),
         helper.make_node("Gather", ["sx", "zero"], ["b"], name="gather", axis=0),
         helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"], name="unsq"),
         helper.make_node("Concat", ["b1", "four"], ["target"], name="concat", axis=0),
         helper.make_node("Expand", ["row", "target"], ["y"], name="expand")],
        [vi("x", F, ["batch", 8])],
        [vi("y", F, ["batch", 4])],
        inits=[init("zero", np.array(0, np.int64)), init("ax0", np.array([0], np.int64)),
               init("four", np.array([4], np.int64)), init("row", np.ones((1, 4), np.float32))],
    )
    assert lint_model(ok) == []


def test_loop_is_unsupported():
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_id"),
         helper.make_node("Relu", ["v_in"], ["v_out"], name="body_relu")],
        "body",
        [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []),
         vi("v_in", F, ["batch", 8])],
        [vi("cond_out", TensorProto.BOOL, []), vi("v_out", F, ["batch", 8])],
    )
    m = make([helper.make_node("Loop", ["trip", "cond", "x"], ["y"], name="loop", body=body)],
             [vi("x", F, ["batch", 8])], [vi("y", F, ["batch", 8])],
             inits=[init("trip", np.array(3, np.int64)), init("cond", np.array(True))])
    found = lint_model(m)
    assert keyed(errors(found)) == {("unsupported-op", "loop")}
    assert "Loop" in found[0].message


def test_int64_input_warns():
    m = make([helper.make_node("Gather", ["table", "ids"], ["y"], name="emb", axis=0)],
             [vi("ids", TensorProto.INT64, ["batch", 5])], [vi("y", F, ["batch", 5, 4])],
             inits=[init("table", np.zeros((10, 4), np.float32))])
    found = lint_model(m)
    assert keyed(found) == {("int64-input", "ids")}
    assert found[0].severity == "warning" and "int32" in found[0].message


def test_zero_sized_initializer_is_error():
    m = make([helper.make_node("Concat", ["x", "empty"], ["y"], name="cat", axis=1)],
             [vi("x", F, ["batch", 8])], [vi("y", F, ["batch", 8])],
             inits=[init("empty", np.zeros((1, 0), np.float32))])
    assert ("zero-size", "empty") in keyed(errors(lint_model(m)))


def test_zero_sized_intermediate_found_by_shape_inference():
    m = make([helper.make_node("Slice", ["x", "s", "e"], ["z"], name="slice"),
              helper.make_node("Relu", ["z"], ["y"], name="relu")],
             [vi("x", F, [2, 8])], [vi("y", F, None)],
             inits=[init("s", np.array([3], np.int64)), init("e", np.array([3], np.int64))])
    assert ("zero-size", "z") in keyed(errors(lint_model(m)))


def test_dynamic_non_batch_axis_is_error_unless_allowed():
    m = make([helper.make_node("Relu", ["x"], ["y"], name="relu")],
             [vi("x", F, ["batch", "seq"])], [vi("y", F, ["batch", "seq"])])
    found = errors(lint_model(m))
    assert keyed(found) == {("dynamic-axis", "x"), ("dynamic-axis", "y")}
    assert "axis 1" in found[0].message
    assert lint_model(m, dynamic_axes_ok={"seq"}) == []
    assert keyed(lint_model(m, dynamic_axes_ok={"x:1"})) == {("dynamic-axis", "y")}


def test_com_microsoft_op_is_contrib_error():
    m = make([helper.make_node("FastGelu", ["x"], ["y"], name="ms_gelu", domain="com.microsoft")],
             [vi("x", F, ["batch", 8])], [vi("y", F, ["batch", 8])],
             extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    found = errors(lint_model(m))
    assert keyed(found) == {("contrib-op", "ms_gelu")}
    assert "com.microsoft" in found[0].message


def test_lint_from_path_and_unreadable_path(tmp_path):
    m = _reduce_l2(18)
    p = tmp_path / "g.onnx"
    onnx.save(m, p)
    assert keyed(lint_model(p)) == {("unregistered-op", "l2")}
    assert keyed(lint_model(str(p))) == {("unregistered-op", "l2")}
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file \xff\xff")
    with pytest.raises(ExportError, match="bad.onnx"):
        lint_model(bad)


def test_finding_is_frozen_and_formats():
    f = Finding("unregistered-op", "l2", "ReduceL2", "why", "error")
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.rule = "x"  # type: ignore[misc]
    assert f.format() == "error [unregistered-op] l2 (ReduceL2): why"
    w = Finding("int64-input", "ids", "", "use int32", "warning")
    assert format_findings([w, f]).splitlines()[0].startswith("error")
    s = lint_summary([f, w])
    assert "1 error" in s and "1 warning" in s and "FAILED" in s
    assert has_errors([f]) and not has_errors([w])


def test_fast_on_thousands_of_nodes():
    n = 4000
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"r{i}") for i in range(n)]
    nodes.append(helper.make_node("Shape", [f"t{n}"], ["s"], name="shape"))
    nodes.append(helper.make_node("Reshape", [f"t{n}", "s"], ["y"], name="reshape"))
    m = make(nodes, [vi("t0", F, ["batch", 8])], [vi("y", F, ["batch", 8])])
    t0 = time.perf_counter()
    assert lint_model(m) == []
    assert time.perf_counter() - t0 < 5.0


def test_torch_dynamo_export_lints_clean_of_errors():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(8, 16)

        def forward(self, x):
            scores, ids = torch.topk(torch.relu(self.lin(x)), 4, dim=-1)
            return scores, ids.to(torch.int32)

    batch = torch.export.Dim("batch", min=1, max=64)
    prog = torch.onnx.export(
        Tiny().eval(), (torch.randn(2, 8),), dynamo=True, opset_version=18,
        input_names=["x"], output_names=["scores", "ids"],
        dynamic_shapes={"x": {0: batch}}, verbose=False,
    )
    model = prog.model_proto
    assert {n.op_type for n in model.graph.node} >= {"TopK"}
    found = lint_model(model)
    assert errors(found) == [], format_findings(found)
