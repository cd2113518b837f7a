"""CastLike -> Cast (``genrec.onnx_graph.castlike_to_cast``, applied by the exporter and, for
graphs from elsewhere, by the onnxruntime backend at load through ``fold_castlike``) removes
every CastLike and changes no output.

Bundles from ``genrec export`` have no CastLike left, so the graph here is HSTU's prefill
exported the way the exporter does it but stopped before its rewrites (dynamo, no optimizer,
no constant folding): 18 CastLike nodes in front of the bias tables and the item table.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from genrec.bundle import load_bundle
from genrec.checkpoint import load_checkpoint
from genrec.data import leave_one_out, read_sequences
from genrec.exporter.graphs import PrefillGraph, example_inputs
from genrec.inputs import history_feed, pad_rows
from genrec.onnx_graph import castlike_to_cast
from genrec.runtimes.onnxrt import fold_castlike
from support import SLICE


def castlikes(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "CastLike" for n in model.graph.node)


@pytest.fixture(scope="module")
def raw_prefill(bundles, tmp_path_factory):
    """(path of the raw HSTU prefill graph, the bundle) for the session's HSTU checkpoint."""
    bundle = load_bundle(bundles["hstu"])
    model = load_checkpoint(bundle.checkpoint_path).model
    graph = PrefillGraph(model, bundle.dims).eval()
    args = example_inputs(model, bundle.dims, "prefill")
    batch = {0: torch.export.Dim("batch", min=1, max=64)}
    prog = torch.onnx.export(graph, args, input_names=graph.input_names(), output_names=graph.output_names(),
                             dynamic_shapes=(batch, batch, tuple(batch for _ in args[2:])),
                             opset_version=18, dynamo=True, optimize=False)
    path = tmp_path_factory.mktemp("castlike") / "prefill.onnx"
    onnx.save_model(prog.model_proto, str(path))
    return path, bundle


def test_folding_removes_every_castlike_and_keeps_the_outputs(raw_prefill):
    path, bundle = raw_prefill
    raw = onnx.load(str(path))
    assert castlikes(raw) > 0  # otherwise this test would prove nothing
    folded = fold_castlike(path)
    assert folded is not None and castlikes(onnx.load_from_string(folded)) == 0
    rewritten = onnx.load(str(path))
    assert castlike_to_cast(rewritten) and castlikes(rewritten) == 0
    onnx.checker.check_model(rewritten, full_check=True)
    assert rewritten.SerializeToString() == folded  # the backend's load path is the exporter's rewrite

    ex = leave_one_out(read_sequences(SLICE)).sample(6, seed=1).examples("test")
    t = bundle.dims.max_history
    feed, _ = history_feed(ex.histories, t, ex.history_times, ex.target_times, with_time=True)
    feed["exclude_ids"] = pad_rows([h[-t:] for h in ex.histories], bundle.dims.max_exclude)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    before = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(folded, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in before.get_outputs()]
    for name, x, y in zip(names, before.run(None, feed), after.run(None, feed)):
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_nothing_to_fold_returns_none(bundles):
    """An exported bundle's graph has no CastLike: the backend loads its bytes unchanged."""
    bundle = load_bundle(bundles["hstu"])
    path = bundle.graph_path("prefill")
    assert castlikes(onnx.load(str(path))) == 0 and fold_castlike(path) is None
