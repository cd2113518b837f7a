"""HSTU with a large time-bias table exports: its graphs bucket time gaps exactly as torch does.

With a float-only bucket, a gap on a bucket edge could land in the neighbouring bucket in
onnxruntime, and with ``w_ts`` scaled up a hundredfold the numeric check refused the export
(step.onnx, user_emb off by 1.8e-4 on this model). The check's random histories are whole
seconds with a quarter of their gaps on bucket edges, so the check sees those gaps.
"""

from __future__ import annotations

import numpy as np
import torch

from genrec.checkpoint import save_checkpoint
from genrec.exporter import export_bundle
from genrec.exporter.checks import random_histories
from genrec.models import build_model, make_config
from genrec.models.hstu import bucket_bounds

NUM_ITEMS = 500


def test_random_histories_are_whole_seconds_with_gaps_on_bucket_edges():
    h = random_histories(256, NUM_ITEMS, 20)
    gaps = np.concatenate([np.diff(t) for t in h.times])
    assert all(t.dtype.kind == "i" for t in h.times) and gaps.min() >= 0
    last = np.array(bucket_bounds(128, 0.301)[:-1])
    on_edge = np.isin(gaps, np.concatenate([last, last + 1]))
    assert 0.15 < on_edge.mean() < 0.4
    assert len(np.unique(gaps[on_edge])) > 40  # most edges up to 30 days, from both sides
    assert np.all(h.request_times > np.array([t[-1] for t in h.times]))


def test_large_time_bias_table_passes_the_export_numeric_check(tmp_path):
    torch.manual_seed(0)
    model = build_model(make_config("hstu", NUM_ITEMS, "small", max_len=20, max_new_items=8)).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.w_ts.mul_(100)
    # no dataset in the metadata and no --data: the check runs on random histories
    ckpt = save_checkpoint(tmp_path / "hstu.pt", model, list(range(1, NUM_ITEMS + 1)))
    bundle = export_bundle(ckpt, tmp_path / "b", batch_gears=(1, 4), topk=20)
    numerics = next(c for c in bundle.manifest.checks if c["check"] == "numerics")
    assert numerics["passed"] and numerics["data"].startswith("random valid histories")
    for graph in ("prefill", "step"):
        assert numerics["graphs"][graph]["user_emb"]["max_abs"] < 1e-5, graph
        assert numerics["graphs"][graph]["topk_ids_mismatch_rows"] == 0, graph
    assert numerics["graphs"]["rank"]["scores"]["max_abs"] < 1e-5
