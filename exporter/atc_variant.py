"""The ATC build's own graph variant: cache writes as ``Where`` (AI Core) instead of
``ScatterElements`` (AI CPU only on 310P/910/910B, ASCEND.md §1.5), gated by exact parity.

The step graph writes each new key/value row (and timestamp) into its static cache with
``ScatterElements(past, index, new, axis)``, where ``index`` and ``new`` are one slot wide on
``axis``. onnxruntime runs that in place (genrec aliases ``past_*`` and ``present_*``), so it
costs one row; the same op on Ascend is an AI CPU task that copies the whole cache tensor
``data -> y`` and then scatters, every step, for every layer. The equivalent

    present = Where(Equal(slots, index), new, past)        slots = [0, 1, ..., C-1] on axis

runs on AI Core (Equal and SelectV2 have AI Core kernels on every SoC in the table) and moves
the same bytes as the AI CPU copy, without the AI CPU task. It would slow onnxruntime (a full
cache read and write per layer and step instead of one row), so the exporter's graphs keep
``ScatterElements`` and only the graphs ATC reads are rewritten.

The two forms agree exactly (a selection, no arithmetic) whenever every index lies in
``[0, C)`` (ScatterElements would wrap a negative index; genrec's positions never are); the
gate (``check_parity``) runs both graphs in onnxruntime on the same inputs at every gear and
requires bitwise-equal outputs before the variant is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from genrec.errors import ExportError
from genrec.manifest import Manifest

__all__ = ["CACHE_WRITES", "check_parity", "rewrite_cache_writes", "variant_for_atc"]

CACHE_WRITES = ("where", "scatter")


def _shape(v: onnx.ValueInfoProto) -> list[int | str] | None:
    if not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in v.type.tensor_type.shape.dim]


def rewrite_cache_writes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` with every one-slot ``ScatterElements`` write turned into Equal + Where;
    returns (model, names of the rewritten nodes). Other scatters (e.g. the exclusion mask, many
    indices per row) are left alone."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    info = {v.name: v for v in [*g.input, *g.value_info, *g.output]}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes, done = [], []
    for node in out.graph.node:
        if node.op_type != "ScatterElements" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        reduction = attrs.get("reduction", b"none")
        data, idx, upd = (info.get(n) for n in node.input)
        shapes = [_shape(v) if v is not None else None for v in (data, idx, upd)]
        if reduction not in (b"none", "none") or any(s is None for s in shapes):
            nodes.append(node)
            continue
        ds, is_, us = shapes
        axis = attrs.get("axis", 0) % len(ds)
        slots = ds[axis]
        eligible = (isinstance(slots, int) and len(ds) == len(is_) == len(us) and is_[axis] == 1 and us[axis] == 1
                    and all(a == b == c for k, (a, b, c) in enumerate(zip(ds, is_, us)) if k not in (0, axis)))
        if not eligible:
            nodes.append(node)
            continue
        name = node.name or f"scatter_{len(done)}"
        dtype = idx.type.tensor_type.elem_type
        shape = [1] * len(ds)
        shape[axis] = slots
        arange = np.arange(slots).reshape(shape).astype(helper.tensor_dtype_to_np_dtype(dtype))
        out.graph.initializer.append(numpy_helper.from_array(arange, f"{name}_slots"))
        hit = f"{name}_hit"
        nodes.append(helper.make_node("Equal", [f"{name}_slots", node.input[1]], [hit], name=f"{name}_equal"))
        nodes.append(helper.make_node("Where", [hit, node.input[2], node.input[0]], list(node.output),
                                      name=f"{name}_where"))
        done.append(name)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, done


def _feeds(m: Manifest, graph: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Valid inputs of one graph at ``batch``: ids in 1..N, positions in [T, C), lengths in 1..T."""
    d = m.dims
    feeds = {}
    for s in m.graphs[graph].inputs:
        shape = (batch, *s.shape[1:])
        if s.dtype.startswith("float"):
            feeds[s.name] = rng.standard_normal(shape).astype(s.dtype)
        elif s.name == "position":
            feeds[s.name] = rng.integers(d.max_history, d.capacity, shape).astype(s.dtype)
        elif s.name == "lengths":
            feeds[s.name] = rng.integers(1, d.max_history + 1, shape).astype(s.dtype)
        elif "time" in s.name:
            feeds[s.name] = np.sort(rng.integers(1_000_000, 2_000_000, shape), axis=-1).astype(s.dtype)
        else:
            feeds[s.name] = rng.integers(0, d.num_items + 1, shape).astype(s.dtype)
    return feeds


def check_parity(original: Path, variant: Path, m: Manifest, graph: str) -> dict[str, Any]:
    """Both graphs in onnxruntime on the same inputs at every gear: outputs must be bitwise equal."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sessions = [ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in (original, variant)]
    rng = np.random.default_rng(0)
    names = [o.name for o in sessions[0].get_outputs()]
    for batch in m.dims.batch_gears:
        feeds = _feeds(m, graph, batch, rng)
        a, b = (s.run(None, feeds) for s in sessions)
        for name, x, y in zip(names, a, b):
            if x.shape != y.shape or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                raise ExportError(f"{graph}: the ATC variant (cache writes as Where) differs from {original.name} on "
                                  f"{name} at batch {batch}; convert with --cache-write scatter")
    return {"check": "bitwise equal in onnxruntime", "batches": list(m.dims.batch_gears), "outputs": len(names)}


def variant_for_atc(bundle_dir: Path, m: Manifest, graph: str, out_dir: str,
                    dest_root: Path | None = None) -> tuple[str, dict[str, Any]] | None:
    """Write ``<out_dir>/<graph>.atc.onnx`` (under ``dest_root``, default the bundle) when the
    graph has cache writes to rewrite, check it, and return (bundle-relative file, what was
    done); None when there is nothing to rewrite."""
    src = bundle_dir / m.graphs[graph].file
    model = onnx.load(str(src))
    variant, done = rewrite_cache_writes(model)
    if not done:
        return None
    rel = f"{out_dir}/{graph}.atc.onnx"
    dst = (dest_root or bundle_dir) / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if variant.ByteSize() >= 2 * 1024 ** 3 - (1 << 20) or any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        onnx.save_model(variant, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dst.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(variant, str(dst))
    parity = check_parity(src, dst, m, graph)
    return rel, {"file": rel, "rewrite": "ScatterElements -> Equal + Where (cache writes on AI Core)",
                 "nodes": done, "parity": parity}
