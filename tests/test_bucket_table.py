"""The bit-cell time-bucket table (``genrec.bucket_table``): exact against Meta's bucket on
every gap near an edge, refused where a cell would hold two edges, and a graph rewrite that
touches nothing but the bucket estimate.

The reference is Meta's expression run by torch (``tests/bucket_gaps.py``); the
graph-level check (every gap near an edge through onnxruntime) is in that file too."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from bucket_gaps import CONFIGS, gap_set, meta_bucket
from genrec.bucket_table import bitcast_time_buckets, cell_table, pick_table
from genrec.models.hstu import bucket_bounds


@pytest.mark.parametrize("num_buckets, divisor", CONFIGS)
def test_cell_estimate_plus_the_edge_comparison_is_metas_bucket(num_buckets, divisor):
    """``est[cell] + (|gap| > bounds[est])``, the computation the rewritten graph does with
    float32 bits as onnxruntime's Cast makes them, on every gap within 64 of an edge, the
    extremes and a million random ones of both signs."""
    bounds = np.array(bucket_bounds(num_buckets, divisor), dtype=np.int64)
    shift, table = pick_table(bounds)
    g = gap_set(num_buckets, divisor)
    mag = np.maximum(np.abs(g.astype(np.int64)), 1)
    cell = mag.astype(np.int32).astype(np.float32).view(np.uint32) >> np.uint32(shift)
    est = table[cell]
    got = est + (mag > bounds[est])
    ref = meta_bucket(torch.from_numpy(g).to(torch.int64), num_buckets, divisor).numpy()
    bad = np.nonzero(got != ref)[0]
    assert bad.size == 0, f"{bad.size} of {g.size} gaps differ, e.g. {g[bad[:5]]}"


def test_a_shift_whose_cells_hold_two_edges_is_refused():
    """Two edges 1% apart cannot share a cell of 1/8 (shift 20): that shift is refused and
    ``pick_table`` goes down to a finer one, where the estimate is right again."""
    bounds = np.array([1, 1000, 1010, 2 ** 31 - 1])
    assert cell_table(bounds, 20) is None
    shift, table = pick_table(bounds)
    assert shift < 20
    m = np.arange(1, 3000)
    cell = m.astype(np.float32).view(np.uint32) >> np.uint32(shift)
    est = table[cell]
    np.testing.assert_array_equal(est + (m > bounds[est]), np.searchsorted(bounds, m, side="left"))
    assert cell_table(np.array([5, 3, 2 ** 31 - 1]), 20) is None  # not sorted: not an edge table


def _graph(nodes, inputs, outputs, inits=(), opset=18):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def test_graphs_without_the_bucket_pattern_are_left_exactly_as_they_were():
    """The pattern itself is rewritten, with the same buckets as before and as Meta's; a plain
    Log (a log-sum-exp's), and the pattern in a graph holding an op whose meaning changed by
    opset 26 (Pad), an op of another domain, or with the estimate read outside the pattern
    (a different valid estimate would show there), keep their bytes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    plain = _graph([helper.make_node("Log", ["x"], ["y"])], [x], [y])
    before = plain.SerializeToString()
    assert bitcast_time_buckets(plain) == 0 and plain.SerializeToString() == before

    bounds = onnx.numpy_helper.from_array(np.array([bucket_bounds(128, 0.301)], np.int32), "bounds")
    i = helper.make_tensor_value_info("gap", TensorProto.INT32, [2, 3])
    o = helper.make_tensor_value_info("bucket", TensorProto.INT32, [2, 3])
    consts = [onnx.numpy_helper.from_array(np.array(v, dt), name) for name, v, dt in (
        ("one", 1, np.int32), ("zero", 0, np.int32), ("scale", 3.3, np.float32), ("rows", [0, -1], np.int64),
        ("copies", [2, 1], np.int64), ("shape", [2, 3], np.int64), ("pads", [0, 0, 0, 0], np.int64))]
    chain = [helper.make_node("Abs", ["gap"], ["a"]), helper.make_node("Clip", ["a", "one"], ["x"]),
             helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Log", ["f"], ["l"]), helper.make_node("Mul", ["l", "scale"], ["s"]),
             helper.make_node("Cast", ["s"], ["est"], to=TensorProto.INT32),
             helper.make_node("Reshape", ["est", "rows"], ["est_rows"]),
             helper.make_node("Expand", ["bounds", "copies"], ["tables"]),
             helper.make_node("GatherElements", ["tables", "est_rows"], ["edge_rows"], axis=1),
             helper.make_node("Reshape", ["edge_rows", "shape"], ["edge"]),
             helper.make_node("Sub", ["x", "edge"], ["d"]), helper.make_node("Clip", ["d", "zero", "one"], ["c"]),
             helper.make_node("Add", ["est", "c"], ["bucket"])]
    gaps = np.array([[0, 3, -20], [86400, -(2 ** 31 - 1), 1000]], np.int32)
    ok = _graph(chain, [i], [o], [bounds, *consts])
    want = ort.InferenceSession(ok.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"gap": gaps})
    assert bitcast_time_buckets(ok) == 1  # the pattern itself is recognised ...
    assert ok.opset_import[0].version == 26 and "Log" not in {n.op_type for n in ok.graph.node}
    onnx.checker.check_model(ok)
    got = ort.InferenceSession(ok.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"gap": gaps})
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[0], meta_bucket(torch.from_numpy(gaps).long(), 128, 0.301).numpy())
    est_out = helper.make_tensor_value_info("est", TensorProto.INT32, [2, 3])  # the estimate read elsewhere
    for extra, outs in ((helper.make_node("Pad", ["gap", "pads"], ["padded"]), [o]),
                        (helper.make_node("Foo", ["gap"], ["foo"], domain="com.example"), [o]),
                        (helper.make_node("Identity", ["gap"], ["same"]), [o, est_out])):
        model = _graph([*chain, extra], [i], outs, [bounds, *consts])
        before = model.SerializeToString()
        assert bitcast_time_buckets(model) == 0 and model.SerializeToString() == before  # ... but not here
