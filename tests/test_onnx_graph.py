"""``genrec.onnx_graph.max_min_to_clip``: ``Min(Max(x, lo), hi)`` with scalar constant bounds
becomes one ``Clip(x, lo, hi)`` where that is the same function, and nothing else changes.

The exporter applies it to every graph; HSTU's exact time buckets go through it (their
exactness is tested through the exporter's own rewrites in tests/models/test_time_buckets.py).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from genrec.onnx_graph import max_min_to_clip

TYPES = {np.int32: TensorProto.INT32, np.int64: TensorProto.INT64, np.float32: TensorProto.FLOAT}


def pair_model(dtype, lo, hi, *, extra_reader: bool = False, swap: bool = False) -> onnx.ModelProto:
    """y = Min(Max(x, lo), hi) (+ Max's output as a second graph output when ``extra_reader``);
    ``swap`` puts the constants first."""
    t = TYPES[dtype]
    consts = [numpy_helper.from_array(np.array(lo, dtype), "lo"), numpy_helper.from_array(np.array([hi], dtype), "hi")]
    nodes = [helper.make_node("Max", ["lo", "x"] if swap else ["x", "lo"], ["m"]),
             helper.make_node("Min", ["hi", "m"] if swap else ["m", "hi"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", t, [3, 5])]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("m", t, [3, 5]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", t, [3, 5])], outputs, consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


@pytest.mark.parametrize("dtype, lo, hi", [(np.int32, 0, 1), (np.int64, -3, 7), (np.float32, -0.5, 0.5),
                                           (np.int32, 2, 2)])
@pytest.mark.parametrize("swap", [False, True])
def test_pair_becomes_one_clip_with_the_same_values(dtype, lo, hi, swap):
    rng = np.random.default_rng(0)
    x = (rng.integers(-10, 10, size=(3, 5)) if dtype != np.float32 else rng.normal(size=(3, 5))).astype(dtype)
    model = pair_model(dtype, lo, hi, swap=swap)
    before = run(model, x)
    assert max_min_to_clip(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Clip"]
    assert {t.name for t in model.graph.initializer} == set(model.graph.node[0].input[1:])  # old bounds dropped
    after = run(model, x)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[0], np.minimum(np.maximum(x, dtype(lo)), dtype(hi)))


def test_left_alone_where_it_would_not_be_the_same():
    shared = pair_model(np.int32, 0, 1, extra_reader=True)  # Max's output is read elsewhere too
    crossed = pair_model(np.int32, 5, 1)  # lo > hi: Min(Max(x, 5), 1) = 1, Clip would be undefined
    for model in (shared, crossed):
        ops = [n.op_type for n in model.graph.node]
        assert max_min_to_clip(model) == 0 and [n.op_type for n in model.graph.node] == ops


def test_hstu_prefill_has_no_max_min_pairs_left(bundles):
    """The exporter applied it: the bucket correction of every row block is one Clip."""
    model = onnx.load(str(bundles["hstu"] / "prefill.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "Max" not in ops and "Min" not in ops and ops.count("Clip") >= 2
