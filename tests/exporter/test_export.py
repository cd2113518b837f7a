"""Export every backbone, and prove the blocking checks block."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from genrec.bundle import load_bundle
from genrec.errors import BundleError, ExportError
from genrec.exporter import export_bundle
from genrec.exporter.atc_lint import lint_model

from support import ARCHS


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}") or p.name == name]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_backbone_exports_and_passes_all_checks(arch, bundles):
    bundle = load_bundle(bundles[arch])  # verifies checksums and the IO contract
    m = bundle.manifest
    assert set(m.graphs) == {"prefill", "step", "rank"}
    assert all(g.exporter in ("dynamo", "torchscript") for g in m.graphs.values())
    numerics = next(c for c in m.checks if c["check"] == "numerics")
    assert numerics["passed"] and "real test histories" in numerics["data"]
    assert numerics["batch_sizes"] == [1, 3, 8] and numerics["steps"] >= 5
    for graph in ("prefill", "step"):
        entry = numerics["graphs"][graph]
        assert entry["user_emb"]["max_abs"] < 1e-4
        assert entry["topk_ids_mismatch_rows"] == 0 and entry["topk_ids_rows"] > 0
    assert numerics["graphs"]["rank"]["scores"]["max_abs"] < 1e-4
    # the step graph returns its own, smaller top-K (default min(K', 32)); prefill returns K'
    assert (bundle.dims.topk, bundle.dims.step_topk) == (40, 32)
    widths = {g: bundle.graph_spec(g).output("topk_ids").shape[1] for g in ("prefill", "step")}
    assert widths == {"prefill": 40, "step": 32}
    # one bundle serves ATC too: opset 18, int32 ids, batch the only dynamic axis, lint clean
    for name in ("prefill", "step", "rank"):
        path = bundle.graph_path(name)
        assert not [f for f in lint_model(path) if f.severity == "error"], name
        spec = bundle.graph_spec(name)
        for io in spec.inputs + spec.outputs:
            assert all(isinstance(d, int) and d > 1 for d in io.shape[1:]), io
            assert io.dtype != "int64", io
    assert list(m.id_map[:3]) == sorted(m.id_map)[:3] and len(m.id_map) == m.dims.num_items


def test_bundle_graph_matches_checkpoint_on_a_fresh_session(bundles):
    """The bundle's graph, run in a fresh session, reproduces the copied checkpoint's numbers."""
    import torch

    from genrec.checkpoint import load_checkpoint
    from genrec.exporter.graphs import PrefillGraph
    from genrec.inputs import history_feed, pad_rows

    b = load_bundle(bundles["llama"])
    model = load_checkpoint(b.checkpoint_path).model
    hist = [np.array([5, 9, 40, 2]), np.array([7]), np.arange(1, 30)]
    feed, _ = history_feed(hist, b.dims.max_history)
    feed["exclude_ids"] = pad_rows([h[-b.dims.max_history:] for h in hist], b.dims.max_exclude)
    sess = ort.InferenceSession(str(b.graph_path("prefill")), providers=["CPUExecutionProvider"])
    got = sess.run(None, feed)
    graph = PrefillGraph(model, b.dims)
    with torch.no_grad():
        ref = graph(*(torch.from_numpy(feed[n]) for n in graph.input_names()))
    np.testing.assert_allclose(got[0], ref[0].numpy(), atol=1e-5)
    np.testing.assert_array_equal(got[1], ref[1].numpy())
    assert not set(got[1][0]) & {5, 9, 40, 2, 0}  # history and padding excluded


def test_broken_graph_is_caught_by_numeric_check_and_leaves_nothing(tmp_path, checkpoints):
    def swap_op(name, proto):
        if name == "step":  # SiLU's Sigmoid -> Tanh: still a valid graph, wrong numbers
            for node in proto.graph.node:
                if node.op_type == "Sigmoid":
                    node.op_type = "Tanh"
                    break
            else:
                raise AssertionError("no Sigmoid to swap")
        return proto

    out = tmp_path / "bundle"
    with pytest.raises(ExportError) as err:
        export_bundle(checkpoints["llama"], out, batch_gears=(1, 4), topk=20, graph_hook=swap_op)
    # the step graph named (prefill and rank, untouched, passed), with the tensor, its errors
    # against the tolerances, and a step of a checked batch (gears 1, 4: sizes 1, 3, 4) as worst input
    assert re.fullmatch(r"step\.onnx failed the numeric check: user_emb max abs error [0-9.e+-]+, max rel "
                        r"[0-9.e+-]+ exceed atol 0\.0001 \+ rtol 0\.001 \(worst input: batch [134], "
                        r"(short|full-length) histories, step [1-5]\)", str(err.value)), str(err.value)
    assert leftovers(tmp_path, "bundle") == []


def test_existing_bundle_needs_force(tmp_path, bundles):
    out = tmp_path / "bundle"
    shutil.copytree(bundles["gpt"], out)
    before = (out / "manifest.json").read_text()
    ckpt = out / "model.pt"
    copy = tmp_path / "model.pt"
    shutil.copy(ckpt, copy)
    with pytest.raises(ExportError, match="--force"):
        export_bundle(copy, out, batch_gears=(1, 4), topk=20)
    assert (out / "manifest.json").read_text() == before
    export_bundle(copy, out, batch_gears=(1, 4), topk=20, force=True)
    after = json.loads((out / "manifest.json").read_text())
    assert after["batch_gears"] == [1, 4] and after["topk"] == 20
    assert leftovers(tmp_path, "bundle") == ["bundle"]


def test_tampered_or_incomplete_bundle_is_refused_by_name(tmp_path, bundles):
    out = tmp_path / "b"
    shutil.copytree(bundles["sasrec"], out)
    load_bundle(out)
    data = bytearray((out / "step.onnx").read_bytes())
    data[-10] ^= 0xFF
    (out / "step.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="step.onnx"):
        load_bundle(out)
    res = subprocess.run([sys.executable, "-m", "genrec", "inspect", str(out)], capture_output=True, text=True)
    assert res.returncode == 1 and "step.onnx" in res.stderr and "Traceback" not in res.stderr
    (out / "step.onnx").unlink()
    with pytest.raises(BundleError, match="step.onnx"):
        load_bundle(out)


EXPORT_WITH_SIGNAL = r'''
import os, signal, sys, threading
# a test run from a background job inherits SIGINT ignored (no KeyboardInterrupt at all);
# an interactive user's process has Python's handler, which is what is tested here
signal.signal(signal.SIGINT, signal.default_int_handler)

import click

from genrec.cli import run_cli
from genrec.exporter import export_bundle

checkpoint, out, sig, stage = sys.argv[1], sys.argv[2], getattr(signal, sys.argv[3]), sys.argv[4]
parent = os.path.dirname(out)


def hook(name, proto):
    """Runs on each exported graph inside the temporary bundle's block: a known stage. The
    signal goes to this (main) thread, whose handler runs before pthread_kill returns."""
    if name == stage:
        temps = os.listdir(parent)
        print("at signal:", os.getpid(), *temps, *sorted(os.listdir(os.path.join(parent, temps[0]))),
              file=sys.stderr, flush=True)
        signal.pthread_kill(threading.main_thread().ident, sig)
    return proto


@click.command()
def export():
    export_bundle(checkpoint, out, batch_gears=(1, 4), topk=20, graph_hook=hook)


run_cli(export, [], "genrec-export")
'''


@pytest.mark.parametrize("sig, stage, code", [("SIGINT", "step", 130), ("SIGTERM", "prefill", 143)])
def test_interrupted_export_leaves_nothing_behind(tmp_path, checkpoints, sig, stage, code):
    """The signal comes from inside the export at a known stage (the temporary bundle exists:
    empty at the first graph, holding prefill.onnx at the second) and goes through the CLI's
    own handling (``run_cli``): no race with an export that a busy machine finishes first."""
    out = tmp_path / "bundle"
    proc = subprocess.run([sys.executable, "-c", EXPORT_WITH_SIGNAL, str(checkpoints["sasrec"]), str(out), sig,
                           stage], capture_output=True, text=True, timeout=300)
    at_signal, *rest = proc.stderr.splitlines() or [""]
    m = re.fullmatch(r"at signal: (\d+) (\S+)( prefill\.onnx)?", at_signal)
    assert m and re.fullmatch(rf"\.bundle\.genrec-tmp-{m[1]}-[0-9a-f]{{8}}", m[2]), proc.stderr
    assert bool(m[3]) == (stage == "step"), at_signal
    assert rest == [f"error: interrupted by {sig}"], proc.stderr
    assert proc.returncode == code
    assert leftovers(tmp_path, "bundle") == []


def test_external_data_and_lower_opset(tmp_path, checkpoints):
    """Weights past the threshold go to <graph>.onnx.data; opset 16 still passes every check."""
    out = tmp_path / "bundle"
    bundle = export_bundle(checkpoints["sasrec"], out, opset=16, batch_gears=(1, 4), topk=20,
                           external_data_threshold=64 * 1024)
    files = bundle.manifest.files
    assert {"prefill.onnx.data", "step.onnx.data", "rank.onnx.data"} <= set(files)
    model = onnx.load(str(out / "prefill.onnx"), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 16
    assert "LayerNormalization" not in {n.op_type for n in model.graph.node}  # not in opset 16
    sess = ort.InferenceSession(str(out / "prefill.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "item_ids"


def test_cli_export_inspect_and_bad_input(tmp_path, checkpoints):
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "genrec", "export", str(checkpoints["gpt"]), "-o", str(out),
           "--batch-gears", "1,4", "--topk", "20", "--max-history", "12", "--target", "ascend"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "export checks" in res.stdout and "user_emb" in res.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["max_history"] == 12 and m["capacity"] == 20 and m["target"] == "ascend"
    res = subprocess.run([sys.executable, "-m", "genrec", "inspect", str(out), "--target", "ascend"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "past_key.0" in res.stdout and "MatMul" in res.stdout
    assert "ATC lint: clean" in res.stdout
    bad = tmp_path / "notours.pt"
    bad.write_bytes(b"not a checkpoint")
    res = subprocess.run([sys.executable, "-m", "genrec", "export", str(bad), "-o", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert res.returncode == 1 and res.stderr.startswith("error: ") and len(res.stderr.splitlines()) == 1
    res = subprocess.run(cmd[:6] + [str(tmp_path / "y"), "--max-history", "500"], capture_output=True, text=True)
    assert res.returncode == 1 and "--max-history 500" in res.stderr
    res = subprocess.run(cmd[:6] + [str(tmp_path / "y"), "--topk", "20", "--step-topk", "21"],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "--step-topk 21 must be between 2 and --topk 20" in res.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("opset", [18, 14])  # dynamo; TorchScript (traced shapes)
def test_hstu_row_blocks_export_and_pass_the_checks(tmp_path, opset):
    """At T >= 64 HSTU's causal pass runs in row blocks (genrec.models.hstu.row_blocks): the
    exported graphs must still match torch on real histories and lint clean for ATC."""
    from genrec.models.hstu import ROW_BLOCKS, row_blocks
    from support import make_checkpoint

    assert len(row_blocks(72)) == ROW_BLOCKS > 1
    ckpt = make_checkpoint("hstu", tmp_path / "hstu72.pt", max_len=72)
    export_bundle(ckpt, tmp_path / "b", batch_gears=(1, 4), topk=20, opset=opset)
    bundle = load_bundle(tmp_path / "b")
    assert bundle.manifest.opset == opset
    numerics = next(c for c in bundle.manifest.checks if c["check"] == "numerics")
    assert numerics["passed"] and numerics["graphs"]["prefill"]["user_emb"]["max_abs"] < 1e-4
    prefill = onnx.load(bundle.graph_path("prefill"))
    # one Log per block (shared by the layers) and one for the last layer's row
    assert sum(n.op_type == "Log" for n in prefill.graph.node) >= ROW_BLOCKS + 1
    assert not [f for f in lint_model(bundle.graph_path("prefill")) if f.severity == "error"]
