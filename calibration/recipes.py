"""The three recipes, each a call into a maintained library (no quantizer of our own).

- ``fp16``: onnxconverter-common's ``convert_float_to_float16`` with ``keep_io_types`` (the
  graph's IO stays float32, so the bundle's IO contract and every backend's buffers are
  unchanged) and a node block list;
- ``int8-dynamic``: onnxruntime's ``quantize_dynamic`` (int8 weights, activations quantised
  per call, no calibration);
- ``int8-static``: onnxruntime's ``quant_pre_process`` then ``quantize_static`` in QDQ format
  with a ``CalibrationDataReader`` fed real bundle inputs (``data.py``), U8 activations and S8
  weights (the x86 CPU recommendation in onnxruntime's docstring).

What always stays fp32 (``ALWAYS_FP32``): the scoring head (the MatMul of the user vector with
the whole item table), TopK and log_z. They decide *which* items are returned: an int8 or fp16
score changes ties and the order among near-equal items over the entire catalogue, and log_z
(a log-sum-exp over every item) is what beam search and sampling normalise with, so an error
there shifts every log-probability. They cost one (B, d) x (d, N) product per call, which the
quantised layers do not touch. The cache writes (ScatterElements into ``present_*``) also stay
fp32: the cache keeps its dtype and the onnxruntime backend keeps writing it in place.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from genrec.errors import GenrecError

from .groups import HEAD, LOOKUPS, _const_tensors, cache_writes

__all__ = ["PRECISIONS", "ALWAYS_FP32", "QUANT_OPS", "MissingQuantTools", "convert_graph", "preprocess",
           "recipe", "tool_versions"]

PRECISIONS = ("fp16", "int8-dynamic", "int8-static")
ALWAYS_FP32 = (HEAD,)  # groups kept fp32 unless the caller insists (see the module docstring)
QUANT_OPS = ("MatMul", "Gemm", "Gather")  # what int8 touches: weights, attention, table lookups
METHODS = ("minmax", "entropy", "percentile")
# ops onnxconverter-common must leave alone besides its defaults: log_z, cache writes; Cast to
# float and ConstantOfShape produce float from int/bool data, and the converter (1.16) retypes
# their outputs as fp16 without changing ``to``/``value``, which onnxruntime then refuses
FP16_OPS = ("ReduceLogSumExp", "TopK")


class MissingQuantTools(GenrecError):
    """onnxconverter-common (or onnxruntime.quantization) is not installed."""


def tool_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("onnxruntime", "onnxconverter-common", "onnx"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def recipe(precision: str, method: str, per_channel: bool) -> dict[str, Any]:
    """What the manifest records about how a variant was made (tools, types, settings)."""
    if precision == "fp16":
        return {"precision": precision, "tool": "onnxconverter_common.float16.convert_float_to_float16",
                "keep_io_types": True, "fp32_ops": sorted(FP16_OPS) + ["Cast(to=float)", "ConstantOfShape",
                                                                      "cache ScatterElements"],
                "versions": tool_versions()}
    out: dict[str, Any] = {"precision": precision, "op_types": list(QUANT_OPS), "weight_type": "QInt8",
                           "per_channel": per_channel, "versions": tool_versions()}
    if precision == "int8-dynamic":
        out["tool"] = "onnxruntime.quantization.quantize_dynamic"
    else:
        out.update(tool="onnxruntime.quantization.quantize_static", quant_format="QDQ",
                   activation_type="QUInt8", calibrate_method=method,
                   preprocess="onnxruntime.quantization.quant_pre_process(skip_symbolic_shape=True)")
    return out


def preprocess(src: Path, dst: Path) -> None:
    """``quant_pre_process``: onnx shape inference and onnxruntime's basic optimisations.

    Symbolic shape inference is skipped: onnxruntime's symbolic inferencer fails on the
    exporter's attribute-only Constant nodes (``Constant(value_ints=...)``), and every shape
    in a bundle graph is static but the batch axis anyway."""
    try:
        from onnxruntime.quantization import quant_pre_process
    except ImportError as e:
        raise MissingQuantTools(f"onnxruntime.quantization is not importable ({e}); pip install onnxruntime") from None
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    _tidy(dst)
    import onnx

    model = onnx.load(str(dst))
    if read_outputs_through_identity(model):
        onnx.save(model, str(dst))


def _tidy(path: Path) -> None:
    """Drop opset imports no node uses (the optimizer adds one per domain it knows)."""
    import onnx

    model = onnx.load(str(path))
    used = {n.domain or "" for n in model.graph.node}
    keep = [o for o in model.opset_import if (o.domain or "") in used or o.domain in ("", "ai.onnx")]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)
        onnx.save(model, str(path))


def convert_graph(precision: str, src: Path, dst: Path, exclude: Iterable[str], *, reader: Any = None,
                  cache: Path | None = None, method: str = "minmax", per_channel: bool = False) -> None:
    """Write ``src`` converted to ``precision`` at ``dst``, the nodes in ``exclude`` kept fp32.

    int8 takes ``src`` already pre-processed (``preprocess``), so that node names match the
    groups found on it; int8-static needs ``reader`` (or an existing ``cache`` of ranges:
    onnxruntime's ``calibration_cache_path``, which the group search reuses so that it
    calibrates once per graph, not once per try)."""
    exclude = sorted(set(exclude))
    if precision == "fp16":
        _fp16(src, dst, exclude)
    elif precision == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(QUANT_OPS), per_channel=per_channel,
                         weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    elif precision == "int8-static":
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANT_OPS), per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, calibrate_method=methods[method],
                        calibration_cache_path=None if cache is None else str(cache))
    else:
        raise GenrecError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    _tidy(dst)


def _fp16(src: Path, dst: Path, exclude: list[str]) -> None:
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise MissingQuantTools("fp16 needs onnxconverter-common: pip install 'genrec-deploy[quant]' "
                                "(or pip install onnxconverter-common)") from None
    model = onnx.load(os.fspath(src))
    del model.graph.value_info[:]  # stale float32 types would contradict the converted graph
    ops = set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_OPS)
    writes = cache_writes(model.graph)
    block = set(exclude) | set(writes)
    inits = {t.name for t in model.graph.initializer}
    const = _const_tensors(model.graph)
    block.update(read_outputs_through_identity(model))
    for n in model.graph.node:
        # constant subgraphs (the item table's normalisation, masks): onnxruntime folds them at
        # load, so fp16 gains nothing, and they read the fp32 table the head shares
        if all(i in const for i in n.input if i):
            block.add(n.name)
        if (n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)) \
                or n.op_type == "ConstantOfShape":
            block.add(n.name)
        # table lookups are copies (nothing to gain in fp16), and the item table is shared with
        # the fp32 head: the converter keeps a shared initializer fp32 but retypes the lookup
        if n.op_type in LOOKUPS and n.input[0] in inits:
            block.add(n.name)
    want = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    out = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=sorted(ops),
                                           node_block_list=sorted(block))
    _restore_outputs(out, want)
    _cache_writes_read_inputs(out, set(writes))
    onnx.save(out, os.fspath(dst))


def _cache_writes_read_inputs(model: Any, writes: set[str]) -> None:
    """Let each cache write read its ``past_*`` input directly again.

    ``keep_io_types`` casts every float input to fp16 and the blocked (fp32) ScatterElements
    casts it back: the same values, but ``past_*`` is then read by a Cast, and the onnxruntime
    backend could no longer write the cache in place. The Cast pair is bypassed and dropped
    once nothing reads it."""
    import onnx

    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    for n in list(model.graph.node):
        if n.name in writes:
            t = n.input[0]
            while t not in inputs and t in producer and producer[t].op_type == "Cast":
                t = producer[t].input[0]
            if t in inputs:
                n.input[0] = t
            users = [c for c in model.graph.node if n.output[0] in c.input]
            if (len(users) == 1 and users[0].op_type == "Cast" and users[0].output[0] in outputs
                    and all(a.i == onnx.TensorProto.FLOAT for a in users[0].attribute if a.name == "to")):
                n.output[0] = users[0].output[0]  # the write makes present_* itself, not a Cast of it
                model.graph.node.remove(users[0])
    for n in model.graph.node:  # Shape of a cast input: the input's own shape
        if n.op_type == "Shape" and n.input[0] in producer and producer[n.input[0]].op_type == "Cast" \
                and producer[n.input[0]].input[0] in inputs:
            n.input[0] = producer[n.input[0]].input[0]
    while True:  # drop Casts nobody reads any more
        read = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if n.op_type == "Cast" and not any(o in read for o in n.output)]
        if not dead:
            return
        for n in dead:
            model.graph.node.remove(n)


def read_outputs_through_identity(model: Any) -> list[str]:
    """Graph outputs that nodes also read (a step's ``present_*``, read by attention) are read
    through an Identity instead; returns the Identity names.

    The output stays produced by the cache-writing ScatterElements, which is what lets the
    onnxruntime backend bind ``past_*`` and ``present_*`` to one buffer (``genrec.onnx_graph.
    writable_in_place``); the quantizer then puts its QuantizeLinear on the Identity's output,
    not on the graph output, and onnxconverter-common (1.16), which casts no graph output for
    its fp16 readers, casts the Identity's. onnxruntime removes the Identity at load."""
    from onnx import helper

    outs = {o.name for o in model.graph.output}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for j, i in enumerate(n.input):
            if i in outs:
                readers.setdefault(i, []).append((n, j))
    added = []
    for o, uses in readers.items():
        read = f"{o}__read"
        for n, j in uses:
            n.input[j] = read
        added.append(helper.make_node("Identity", [o], [read], name=f"{o}__read"))
    if added:
        nodes = list(model.graph.node)
        producer = {out: k for k, n in enumerate(nodes) for out in n.output}
        for ident in sorted(added, key=lambda x: -producer.get(x.input[0], -1)):
            nodes.insert(producer.get(ident.input[0], -1) + 1, ident)  # keep topological order
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return [a.name for a in added]


def _restore_outputs(model: Any, want: dict[str, int]) -> None:
    """Give graph outputs back their float32 type where the converter retyped them.

    onnxconverter-common 1.16 casts the output of a *blocked* (fp32) node that is a graph
    output down to fp16 and retypes the output, despite ``keep_io_types``; the Cast it
    inserted is turned back into one to the original type (a no-op on fp32 data), so the IO
    contract, and the fp32 head's exact scores, are what reach the caller."""
    import onnx

    producer = {o: n for n in model.graph.node for o in n.output}
    for o in model.graph.output:
        t = want.get(o.name)
        if t is None or o.type.tensor_type.elem_type == t:
            continue
        node = producer.get(o.name)
        if node is None or node.op_type != "Cast":
            raise MissingQuantTools(f"fp16 conversion retyped output {o.name!r} without a Cast; "
                                    "this onnxconverter-common version is not supported")
        for a in node.attribute:
            if a.name == "to":
                a.i = t
        o.type.tensor_type.elem_type = t
    onnx.checker.check_model(model)
