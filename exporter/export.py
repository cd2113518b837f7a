"""``export_bundle``: checkpoint -> verified bundle of prefill/step/rank ONNX graphs.

Every graph goes through ``torch.onnx.export(dynamo=True)`` first; where that fails (or its
version converter cannot reach the requested opset) the TorchScript exporter is tried, and
the manifest records which exporter produced each graph. Nothing is written to the target
until every check of ``genrec.exporter.checks`` passed: the bundle is assembled in a
temporary sibling directory and renamed into place (``genrec.atomic``), so Ctrl-C, a crash
or a failed check leaves nothing behind, and an existing bundle is replaced only with
``force``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from genrec.atomic import atomic_directory, check_writable
from genrec.bundle import Bundle, io_spec_from_onnx, load_bundle, tool_versions, write_manifest
from genrec.manifest import DEFAULT_STEP_TOPK, Dims, GraphSpec, Manifest, TensorSpec
from genrec.checkpoint import Checkpoint, load_checkpoint
from genrec.errors import ExportError
from genrec.models import GenerativeRecommender
from genrec.onnx_graph import rewrite_exported

from . import atc_lint
from .checks import DEFAULT_ATOL, DEFAULT_RTOL, Histories, numeric_check, ort_session, random_histories, structural_check
from .graphs import GRAPHS, example_inputs

TWO_GB = 2 * 1024 ** 3
DEFAULT_GEARS = (1, 4, 16, 64)
Progress = Callable[[str], None]
GraphHook = Callable[[str, Any], Any]  # (graph name, onnx.ModelProto) -> onnx.ModelProto


STEP_TOPK = DEFAULT_STEP_TOPK


def resolve_dims(model: GenerativeRecommender, max_history: int | None, max_new_items: int | None,
                 topk: int, max_exclude: int | None, rank_candidates: int,
                 step_topk: int | None = None, batch_gears: tuple[int, ...] | list[int] = DEFAULT_GEARS) -> Dims:
    """Bundle sizes from flags, defaulting to the config; refuse what the model cannot hold."""
    cfg = model.config
    t = max_history or cfg.max_len
    g = max_new_items if max_new_items is not None else cfg.max_new_items
    if not 2 <= t <= cfg.max_len:
        raise ExportError(f"--max-history {t} must be between 2 and the model's max_len {cfg.max_len}")
    if not 1 <= g or t + g > cfg.capacity:
        raise ExportError(f"--max-new-items {g} must be >= 1 with T + new items <= {cfg.capacity} (the model's position table)")
    c = t + g
    # whole histories are excluded, and they often run far past T: default to a wide X (the
    # scatter into the score row is cheap) so the host rarely has to filter the overflow
    x = max_exclude or max(c, 4 * t, 256)
    if not 2 <= topk <= cfg.num_items:
        raise ExportError(f"--topk {topk} must be between 2 and the catalogue size {cfg.num_items}")
    if x < 2 or rank_candidates < 2:
        raise ExportError("--max-exclude and --rank-candidates must be at least 2 (no size-0/1 axes)")
    sk = min(topk, STEP_TOPK) if step_topk is None else step_topk
    if not 2 <= sk <= topk:
        raise ExportError(f"--step-topk {sk} must be between 2 and --topk {topk}")
    gears = tuple(sorted({int(b) for b in batch_gears}))
    if not gears or gears[0] < 1:
        raise ExportError(f"--batch-gears {list(batch_gears)}: need positive batch sizes")
    return Dims(arch=cfg.arch, num_items=cfg.num_items, max_history=t, capacity=c, topk=topk, step_topk=sk,
                max_exclude=x, rank_candidates=rank_candidates, batch_gears=gears,
                needs_timestamps=model.needs_timestamps, temperature=float(cfg.temperature),
                d_model=cfg.d_model)


def cache_specs(model: GenerativeRecommender, capacity: int) -> tuple[TensorSpec, ...]:
    """The cache tensors as the graphs carry them (no batch axis; integer caches as int32)."""
    return tuple(TensorSpec(n, "float32" if dt.is_floating_point else "int32", tuple(s))
                 for n, s, dt in model.cache_shapes(capacity))


def _quiet():
    """torch.onnx is chatty (warnings, registration logs); keep the user's terminal clean."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))  # onnxscript's folding prints misses
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"):
        logger = logging.getLogger(name)
        old = logger.level
        logger.setLevel(logging.ERROR)
        stack.callback(logger.setLevel, old)
    return stack


def export_graph(graph: torch.nn.Module, args: tuple, opset: int, max_batch: int) -> tuple[Any, str, str]:
    """Export one wrapper; returns (ModelProto, exporter used, note).

    ``optimize=False``: torch 2.13's onnxscript optimizer deletes ``Add(x, c)`` for |c| <= 1e-8
    (seen: SASRec's LayerNorm eps 1e-8 at opset 16, turning zero-variance padding rows into
    0/0 = NaN); onnxruntime and ATC fold constants themselves when they load the graph.
    Dynamo emits opset 18 natively; lower opsets go through ``onnx.version_converter`` (torch's
    own converter silently keeps 18 when it fails). If either step fails, TorchScript is
    tried at the requested opset and the note says why.
    """
    import onnx
    from onnx import version_converter

    from .patches import for_opset

    names_in, names_out = graph.input_names(), graph.output_names()
    batch = {0: torch.export.Dim("batch", min=1, max=max(max_batch, 2) * 16)}
    try:
        with _quiet(), for_opset(opset):
            prog = torch.onnx.export(graph, args, input_names=names_in, output_names=names_out,
                                     dynamic_shapes=(batch, batch, tuple(batch for _ in args[2:])),
                                     opset_version=18, dynamo=True, optimize=False)
        with _quiet():
            _fold(prog.model)
        proto = prog.model_proto
        if opset != 18:  # the converter can emit invalid nodes (seen: ReduceMax-18 attrs at 17)
            proto = _strip_reduce_attrs(version_converter.convert_version(proto, opset))
            onnx.checker.check_model(proto, full_check=True)
        return proto, "dynamo", ""
    except Exception as e:  # any dynamo or converter failure: fall back, and say why
        note = f"dynamo failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:160]}); used TorchScript"
    buf = io.BytesIO()
    try:
        with _quiet(), for_opset(opset):
            torch.onnx.export(graph, args, buf, input_names=names_in, output_names=names_out,
                              dynamic_axes={n: {0: "batch"} for n in names_in + names_out},
                              opset_version=opset, dynamo=False)
    except Exception as e:
        raise ExportError(f"{type(graph).__name__}: both exporters failed; TorchScript: "
                          f"{str(e).strip().splitlines()[0][:200]}; {note}") from None
    return onnx.load_from_string(buf.getvalue()), "torchscript", note


def _fold(model) -> None:
    """Constant folding and dead-node removal only (onnxscript's ``fold_constants``), not its
    full ``optimize``, whose rewrite rules drop ``Add(x, c)`` for |c| <= 1e-8."""
    from onnxscript import optimizer

    optimizer.fold_constants(model)
    optimizer.remove_unused_nodes(model)


def _strip_reduce_attrs(proto):
    """onnx's 18 -> 17 adapters keep ``noop_with_empty_axes`` on Reduce ops that only have it
    from 18 on (ReduceSum has it since 13); drop it where the target opset does not know it."""
    for node in proto.graph.node:
        if node.op_type.startswith("Reduce") and node.op_type != "ReduceSum":
            keep = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
            if len(keep) != len(node.attribute):
                del node.attribute[:]
                node.attribute.extend(keep)
    return proto


def fix_output_shapes(proto, example_outputs: list[torch.Tensor]):
    """Pin every non-batch output axis to its traced size (TorchScript leaves some symbolic),
    so that batch is the only dynamic axis, as ATC's gears require."""
    for vi, t in zip(proto.graph.output, example_outputs):
        dims = vi.type.tensor_type.shape.dim
        for axis, size in enumerate(t.shape):
            if axis == 0:
                dims[axis].dim_param = "batch"
            else:
                dims[axis].dim_value = int(size)
    return proto


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)


def save_graph(proto, path: Path, external_threshold: int) -> list[str]:
    """Save ``proto``; weights go to ``<name>.onnx.data`` when the graph passes the threshold."""
    import onnx

    size = proto.ByteSize()
    if size < external_threshold:
        onnx.save_model(proto, str(path))
        return []
    data = path.name + ".data"
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)
    return [data]


def load_histories(ckpt: Checkpoint, data: str | Path | None, n: int = 256) -> Histories:
    """Real test histories from ``data`` or the dataset the checkpoint was trained on."""
    from genrec.data import ItemMap, leave_one_out, read_sequences

    source = data or ckpt.metadata.get("dataset")
    if not source or not Path(source).exists():
        buckets = getattr(ckpt.config, "num_buckets", None)  # HSTU: put gaps on its own bucket edges
        return random_histories(n, ckpt.config.num_items, ckpt.config.max_len,
                                bucket_config=(buckets, ckpt.config.bucket_divisor) if buckets else None)
    seqs = read_sequences(source, item_map=ItemMap.from_list(ckpt.id_map))
    ex = leave_one_out(seqs).sample(n, seed=0).examples("test")
    req = ex.target_times
    return Histories(ex.histories, ex.history_times, req, f"real test histories from {source}")


def export_bundle(checkpoint: str | Path, output: str | Path, *, opset: int = 18,
                  max_history: int | None = None, max_new_items: int | None = None, topk: int = 100,
                  max_exclude: int | None = None, rank_candidates: int = 32, step_topk: int | None = None,
                  batch_gears: tuple[int, ...] | list[int] = DEFAULT_GEARS, target: str = "onnxruntime",
                  data: str | Path | None = None, force: bool = False, steps: int = 5,
                  atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                  external_data_threshold: int = TWO_GB, graph_hook: GraphHook | None = None,
                  progress: Progress | None = None) -> Bundle:
    """Export ``checkpoint`` to a verified bundle at ``output``; returns the loaded bundle.

    ``graph_hook(name, proto) -> proto`` runs on each exported graph before the checks (graph
    surgery, e.g. op replacement for a target); whatever it returns must still pass them.
    """
    say = progress or (lambda msg: None)
    if not 14 <= opset <= 18:
        raise ExportError(f"--opset {opset} is not supported: choose 14..18 (ATC parses 11..18; torch emits 18)")
    if target not in ("onnxruntime", "ascend"):
        raise ExportError(f"--target {target!r}: choose onnxruntime or ascend")
    output = Path(output)
    if output.exists() and not force:
        raise ExportError(f"{output} exists; pass --force to replace it")
    check_writable(output, directory=True)  # a bad -o is refused before minutes of export
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.model.eval()
    dims = resolve_dims(model, max_history, max_new_items, topk, max_exclude, rank_candidates, step_topk,
                        batch_gears)
    gears = list(dims.batch_gears)
    histories = load_histories(ckpt, data)
    checks: list[dict[str, Any]] = []
    graphs: dict[str, dict[str, Any]] = {}
    t_start = time.perf_counter()
    with atomic_directory(output, force=force) as tmp:
        sessions = {}
        for name, cls in GRAPHS.items():
            t0 = time.perf_counter()
            wrapper = cls(model, dims).eval()
            args = example_inputs(model, dims, name)
            proto, exporter, note = export_graph(wrapper, args, opset, max(gears))
            with torch.no_grad():
                traced = wrapper(*args)
            proto = fix_output_shapes(proto, list(traced) if isinstance(traced, tuple) else [traced])
            rewrite_exported(proto)
            if graph_hook is not None:
                proto = graph_hook(name, proto)
            path = tmp / f"{name}.onnx"
            extra = save_graph(proto, path, external_data_threshold)
            graphs[name] = {"file": path.name, "exporter": exporter, **io_spec_from_onnx(path)}
            if note:
                graphs[name]["note"] = note
            say(f"{name}: exported with {exporter} in {time.perf_counter() - t0:.1f} s"
                + (f" ({note})" if note else "") + (f", external data {extra[0]}" if extra else ""))
            checks.append(structural_check(path))
            sessions[name] = ort_session(path)
            checks.append({"check": "onnxruntime.load", "graph": name, "passed": True})
            say(f"{name}: onnx.checker and onnxruntime load passed")
            lint = atc_lint.lint_model(path)
            errors = [f for f in lint if f.severity == "error"]
            checks.append({"check": "atc_lint", "graph": name, "blocking": target == "ascend",
                           "passed": not errors, "errors": len(errors),
                           "warnings": len(lint) - len(errors),
                           "findings": [f.format() for f in lint][:50]})
            if target == "ascend" and errors:
                raise ExportError(f"{name}.onnx fails the ATC lint ({len(errors)} error(s)); first: {errors[0].format()}")
        checks.append(numeric_check(model, dims, sessions, histories, gears, steps, atol, rtol,
                                    progress=say))
        say(f"numerics passed on {histories.source}")
        del sessions
        shutil.copyfile(checkpoint, tmp / "model.pt")
        write_manifest(tmp, Manifest(
            arch=model.config.arch, config=model.config.to_dict(), dims=dims, opset=opset, precision="fp32",
            target=target, id_map=tuple(int(i) for i in ckpt.id_map),
            graphs={n: GraphSpec.from_dict(g, f"graphs.{n}") for n, g in graphs.items()},
            cache=cache_specs(model, dims.capacity), source_checkpoint="model.pt", files={},
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), checks=tuple(checks),
            versions=tool_versions(), extra={"export_seconds": round(time.perf_counter() - t_start, 1)}))
        load_bundle(tmp)  # the full cross-check (files, graphs, model.pt) before the rename
    return load_bundle(output)
