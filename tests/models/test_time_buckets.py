"""HSTU's time buckets equal Meta's on every gap, in torch and in an exported onnxruntime graph.

The reference is Meta's lambda itself, written out here and run with torch on CPU:
``(torch.log(torch.abs(x).clamp(min=1)) / 0.301).long()`` on int64, clamped to [0, 128].
The gaps are every gap within ±64 of each bucket edge, both signs, the extremes, and a large
random sample: a float-only bucket (the project's former ``log(gap) * (1/0.301)``) differs
from the reference on some of them, which the tests confirm, so they can fail.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from bucket_gaps import CONFIGS, INT32_MAX, gap_set, meta_bucket, naive_bucket
from genrec.models.hstu import HSTUConfig, bucket_bounds, time_buckets

@pytest.mark.parametrize("num_buckets, divisor", CONFIGS)
def test_edge_table_is_the_steps_of_a_monotone_reference(num_buckets, divisor):
    bounds = np.array(bucket_bounds(num_buckets, divisor), dtype=np.int64)
    reach = int(meta_bucket(torch.tensor([INT32_MAX]), num_buckets, divisor))
    assert len(bounds) == reach + 1 and bounds[-1] == INT32_MAX and np.all(np.diff(bounds) >= 0)
    g = np.sort(np.abs(gap_set(num_buckets, divisor, random=200_000).astype(np.int64)))
    ref = meta_bucket(torch.from_numpy(g), num_buckets, divisor).numpy()
    assert np.all(np.diff(ref) >= 0), "Meta's bucket is not monotone in |gap| on this CPU"
    # each bound is the last gap of its bucket: the next gap is in a higher one
    last = bounds[:-1]
    assert np.all(meta_bucket(torch.from_numpy(last), num_buckets, divisor).numpy() <= np.arange(reach))
    assert np.all(meta_bucket(torch.from_numpy(last + 1), num_buckets, divisor).numpy() > np.arange(reach))


def test_default_config_is_metas():
    cfg = HSTUConfig()
    assert (cfg.num_buckets, cfg.bucket_divisor) == (128, 0.301)
    assert len(bucket_bounds(128, 0.301)) == 72  # buckets 0..71: 2^31 seconds is bucket 71


@pytest.mark.parametrize("num_buckets, divisor", CONFIGS)
def test_torch_buckets_equal_metas_on_every_gap_near_an_edge(num_buckets, divisor):
    g = gap_set(num_buckets, divisor)
    ref = meta_bucket(torch.from_numpy(g).to(torch.int64), num_buckets, divisor)
    got = time_buckets(torch.from_numpy(g), num_buckets, divisor)
    assert got.dtype == torch.int64
    bad = np.nonzero((got != ref).numpy())[0]
    assert bad.size == 0, f"{bad.size} of {g.size} gaps differ, e.g. {g[bad[:5]]}"
    if (num_buckets, divisor) == (128, 0.301):  # the set does reach the edges a float bucket misses
        assert int((naive_bucket(torch.from_numpy(g), num_buckets, divisor) != ref).sum()) > 0
    with pytest.raises(TypeError, match="int32"):
        time_buckets(torch.from_numpy(g[:4].astype(np.int64)), num_buckets, divisor)


class BucketGraph(nn.Module):
    """Both bucket passes of HSTU: a prefill block (next times (B, W) against item times
    (B, S)) and a step row (the request time (B,) against the same item times)."""

    def __init__(self, num_buckets: int, divisor: float):
        super().__init__()
        self.num_buckets, self.divisor = num_buckets, divisor
        self.register_buffer("bounds", torch.tensor(bucket_bounds(num_buckets, divisor), dtype=torch.int32))

    def input_names(self) -> list[str]:
        return ["nxt", "ts", "request_time"]

    def output_names(self) -> list[str]:
        return ["block", "row"]

    def forward(self, nxt, ts, *rest):
        (request_time,) = rest  # the exporter's wrappers take (a, b, *rest)
        return (time_buckets(nxt[:, :, None] - ts[:, None, :], self.num_buckets, self.divisor, self.bounds),
                time_buckets(request_time[:, None] - ts, self.num_buckets, self.divisor, self.bounds))


@pytest.mark.parametrize("num_buckets, divisor", CONFIGS[::2])
def test_exported_graph_buckets_equal_metas_on_every_gap_near_an_edge(num_buckets, divisor, tmp_path):
    """Through the exporter's own export path (dynamo, no optimizer, CastLike and index-cast
    rewrites, ``rewrite_exported``): onnxruntime's Log may round differently, the buckets may not."""
    from genrec.exporter.atc_lint import lint_model
    from genrec.exporter.export import export_graph
    from genrec.onnx_graph import rewrite_exported

    width = 4096
    g = gap_set(num_buckets, divisor)
    g = np.concatenate([g, np.zeros(-len(g) % width, np.int32)]).reshape(-1, width)
    graph = BucketGraph(num_buckets, divisor).eval()
    example = (torch.from_numpy(g[:3]), torch.zeros(3, 1, dtype=torch.int32), torch.from_numpy(g[:3, 0]))
    proto, exporter, note = export_graph(graph, example, 18, max_batch=len(g))
    rewrite_exported(proto)
    ops = {n.op_type for n in proto.graph.node}
    assert exporter == "dynamo", note
    assert {"Log", "GatherElements", "Clip"} <= ops and not ops & {"Gather", "Max", "Min"}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    block, row = sess.run(None, {"nxt": g, "ts": np.zeros((len(g), 1), np.int32), "request_time": g[:, -1].copy()})
    ref = meta_bucket(torch.from_numpy(g).to(torch.int64), num_buckets, divisor).numpy()
    bad = np.nonzero(block.reshape(g.shape) != ref)
    assert bad[0].size == 0, f"{bad[0].size} of {g.size} gaps differ, e.g. {g[bad][:5]}"
    np.testing.assert_array_equal(row[:, 0], ref[:, -1])
    onnx.save_model(proto, str(tmp_path / "buckets.onnx"))  # standard ops only: ATC parses it
    assert not [f for f in lint_model(tmp_path / "buckets.onnx") if f.severity == "error"]

    # the onnxruntime backend's copy: the Log estimate replaced by a lookup of the float's bits
    from genrec.bucket_table import bitcast_time_buckets

    assert bitcast_time_buckets(proto) == 2 and "Log" not in {n.op_type for n in proto.graph.node}
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    block, row = sess.run(None, {"nxt": g, "ts": np.zeros((len(g), 1), np.int32), "request_time": g[:, -1].copy()})
    bad = np.nonzero(block.reshape(g.shape) != ref)
    assert bad[0].size == 0, f"bit cells: {bad[0].size} of {g.size} gaps differ, e.g. {g[bad][:5]}"
    np.testing.assert_array_equal(row[:, 0], ref[:, -1])
