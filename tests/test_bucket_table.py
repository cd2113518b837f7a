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
from genrec.bucket_table import bitcast_time_buckets, cell_table, fused_table, pick_table
from genrec.models.hstu import bucket_bounds, time_buckets


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


def _bucket_chain(bounds) -> tuple[list, list]:
    """Nodes and constants of ``time_buckets`` as the exporter writes it: gap (2, 3) int32 in,
    ``bucket`` out, the estimate a scaled Log, the edge table ``bounds`` looked up by rows."""
    consts = [onnx.numpy_helper.from_array(np.array(v, dt), name) for name, v, dt in (
        ("bounds", [bounds], np.int32), ("one", 1, np.int32), ("zero", 0, np.int32), ("scale", 3.3, np.float32),
        ("rows", [0, -1], np.int64), ("copies", [2, 1], np.int64), ("shape", [2, 3], np.int64),
        ("pads", [0, 0, 0, 0], np.int64))]
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
    return chain, consts


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

    i = helper.make_tensor_value_info("gap", TensorProto.INT32, [2, 3])
    o = helper.make_tensor_value_info("bucket", TensorProto.INT32, [2, 3])
    chain, inits = _bucket_chain(bucket_bounds(128, 0.301))
    gaps = np.array([[0, 3, -20], [86400, -(2 ** 31 - 1), 1000]], np.int32)
    ok = _graph(chain, [i], [o], inits)
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
        model = _graph([*chain, extra], [i], outs, inits)
        before = model.SerializeToString()
        assert bitcast_time_buckets(model) == 0 and model.SerializeToString() == before  # ... but not here


INT32_MIN = -(2 ** 31)


def _exported_bucket(g: np.ndarray, num_buckets: int, divisor: float) -> np.ndarray:
    """The bucket every backend computes: Meta's, but for -2^31, whose |gap| wraps in int32
    and which the exported Clip(>= 1) puts in bucket 0 (Meta's int64 gap has no wrap)."""
    ref = meta_bucket(torch.from_numpy(g).to(torch.int64), num_buckets, divisor).numpy()
    ref[g == INT32_MIN] = 0
    np.testing.assert_array_equal(time_buckets(torch.from_numpy(g), num_buckets, divisor).numpy(), ref)
    return ref


@pytest.mark.parametrize("num_buckets, divisor", CONFIGS)
def test_the_fused_cell_index_reads_the_bias_of_metas_bucket(num_buckets, divisor):
    """``W[c + Clip(|gap| - thr[c], 0, 1)]`` with ``W = w[est]`` (``fused_table``), computed as
    the rewritten graph does (int32 |gap|, float32 bits), is ``w[bucket]`` on every gap near
    an edge, the extremes, random gaps of both signs, 0 and -2^31."""
    bounds = np.array(bucket_bounds(num_buckets, divisor), dtype=np.int64)
    shift, est, thr = fused_table(bounds, pick_table(bounds)[0], num_buckets + 1)
    w = np.arange(num_buckets + 1, dtype=np.float32) * 0.25 + 1  # distinct: a wrong bucket shows
    g = np.concatenate([gap_set(num_buckets, divisor), [0, INT32_MIN]]).astype(np.int32)
    mag = np.abs(g)  # int32, as onnxruntime's Abs: -2^31 stays negative
    cell = (mag.astype(np.float32).view(np.uint32) >> np.uint32(shift)).astype(np.int64)
    got = w[est][cell + np.clip(mag.astype(np.int64) - thr[cell], 0, 1)]
    ref = w[_exported_bucket(g, num_buckets, divisor)]
    bad = np.nonzero(got != ref)[0]
    assert bad.size == 0, f"{bad.size} of {g.size} gaps differ, e.g. {g[bad[:5]]}"


def test_the_fused_layout_is_refused_where_an_edge_cell_ends_on_another_step():
    """At shift 21 the cell [1024, 1280) holds the edge after 1100 and the next cell starts
    two buckets up (1280 opens bucket 2): moving one cell up would skip bucket 1. The bit-cell
    estimate is still exact there (``cell_table``), the fused index is refused."""
    bounds = np.array([1100, 1279, 2 ** 31 - 1])
    assert cell_table(bounds, 21) is not None and fused_table(bounds, 21, 3) is None
    assert fused_table(np.array(bucket_bounds(128, 0.301)), 21, 64) is None  # buckets past the bias table


def _lookups_graph(bounds, w: np.ndarray, bucket_out: bool):
    """``_bucket_chain`` and two layers' bias lookups of the bucket, each with its own copy of
    the (rows, rest) shape plumbing (Shape -> Slice -> Concat), as each exported layer has."""
    chain, inits = _bucket_chain(bounds)
    inits += [onnx.numpy_helper.from_array(np.array(v, np.int64), n)
              for n, v in (("s0", [0]), ("s1", [1]), ("rest", [-1]))]
    outs = [helper.make_tensor_value_info("bucket", TensorProto.INT32, [2, 3])] if bucket_out else []
    for j in range(2):
        inits.append(onnx.numpy_helper.from_array(w[j][None, :], f"w{j}"))
        chain += [helper.make_node("Shape", ["gap"], [f"shp{j}"]),
                  helper.make_node("Slice", [f"shp{j}", "s0", "s1"], [f"b{j}"]),
                  helper.make_node("Concat", [f"b{j}", "rest"], [f"rows{j}"], axis=0),
                  helper.make_node("Reshape", ["bucket", f"rows{j}"], [f"bucket_rows{j}"]),
                  helper.make_node("Expand", [f"w{j}", "copies"], [f"wt{j}"]),
                  helper.make_node("GatherElements", [f"wt{j}", f"bucket_rows{j}"], [f"bias_rows{j}"], axis=1),
                  helper.make_node("Reshape", [f"bias_rows{j}", "shape"], [f"bias{j}"])]
        outs.append(helper.make_tensor_value_info(f"bias{j}", TensorProto.FLOAT, [2, 3]))
    return _graph(chain, [helper.make_tensor_value_info("gap", TensorProto.INT32, [2, 3])], outs, inits)


@pytest.mark.parametrize("bounds, fused", [(bucket_bounds(128, 0.301), True), ((1100, 1279, 2 ** 31 - 1), False)])
def test_a_bucket_read_only_by_bias_lookups_is_folded_into_them(bounds, fused):
    """Where the bucket only feeds layers' bias lookups, the rewrite indexes each layer's table
    by the bucket's bit cell (``fused_bucket_*``; one lookup fewer, no Clip(>= 1)); where the
    layout does not hold, or the bucket is read elsewhere, only the estimate is rewritten
    (``bitcast_bucket_*``). Every bias is the table's entry of the exact bucket, -2^31 too."""
    bounds = np.array(bounds, np.int64)
    k = 129 if fused else 3
    w = np.random.default_rng(0).permutation(2 * k).astype(np.float32).reshape(2, k)
    gaps = np.array([[0, 3, -20], [86400, INT32_MIN, 2 ** 31 - 1]], np.int32)
    if not fused:
        gaps = np.array([[1099, 1100, 1101], [-1279, 1280, 1024]], np.int32)
    mag = np.maximum(np.abs(gaps.astype(np.int64)), 1)
    bucket = np.where(gaps == INT32_MIN, 0, np.searchsorted(bounds, mag, side="left"))
    for bucket_out in (False, True):
        model = _lookups_graph(bounds, w, bucket_out)
        assert bitcast_time_buckets(model) == 1
        onnx.checker.check_model(model)
        made = {n.name.split("/")[0].rsplit("_", 1)[0] for n in model.graph.node if "_bucket_" in n.name}
        assert made == {"fused_bucket" if fused and not bucket_out else "bitcast_bucket"}
        got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"gap": gaps})
        for j in range(2):
            np.testing.assert_array_equal(got[-2 + j], w[j][bucket])
        if bucket_out:
            np.testing.assert_array_equal(got[0], bucket)
