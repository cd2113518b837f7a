"""Which of a graph's ops run on AI CPU instead of AI Core, per SoC, from ASCEND.md §1.5.

An AI CPU op is a separate task on the NPU's ARM cores: each one costs a task launch and a
synchronisation between the AI Core and AI CPU streams, and its kernel is far slower per byte.
The table below is ASCEND.md's (an op-info snapshot from 2022, plus current aclnn dispatch
code where it says otherwise): newer CANN adds AI Core kernels and never removes AI CPU ones,
so "AI CPU" means "AI CPU at least on older CANN". Only the ``_ge_attr_op_kernel_lib_name``
of each op in an ``atc --mode=1`` JSON of a real build settles it (``om_sidecar.engine_counts``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx

__all__ = ["AICPU_TABLE", "EngineFinding", "aicpu_ops", "soc_family"]

# op -> {SoC family: engine note}; families not listed run the op on AI Core
AICPU_TABLE: dict[str, dict[str, str]] = {
    "ScatterElements": {f: "AI CPU only (open-source AI Core kernel: Ascend 950)" for f in ("310P", "910", "910B")},
    "CumSum": {f: "AI CPU only (open-source AI Core kernel: Ascend 950)" for f in ("310P", "910", "910B")},
    "GatherElements": {f: "AI CPU only (AI Core kernel on 910B)" for f in ("310P", "910")},
    "Trilu": {f: "no kernel at all outside Ascend 950: likely a compile failure" for f in ("310P", "910", "910B")},
}
# TopK: fp32 had only an fp16 AI Core kernel (TopKD) in 2022; current aclnn puts fp32 on AI Core
_TOPK_FP32 = "fp32 TopK: AI CPU on older CANN (TopKD was fp16 only); current aclnn dispatches it to AI Core"
_COST = {
    "ScatterElements": "per call, the AI CPU kernel copies its whole data input (a KV cache tensor, or the "
                       "score row for exclusions) to its output, then scatters",
    "GatherElements": "per call, an AI CPU task reading the gathered tensor",
    "CumSum": "per call, an AI CPU task",
    "Trilu": "keep causal masks constant",
    "TopK": "per call, an AI CPU task over the score row",
}


def soc_family(soc: str) -> str | None:
    """310P, 910, 910B (A2 and A3 = 910_93xx) or 950; None for a SoC the table does not cover."""
    if soc.startswith("Ascend310P"):
        return "310P"
    if soc.startswith("Ascend910B") or soc.startswith("Ascend910_93"):
        return "910B"
    if soc in ("Ascend910", "Ascend910A", "Ascend910ProA", "Ascend910ProB", "Ascend910PremiumA"):
        return "910"
    if soc.startswith("Ascend950"):
        return "950"
    return None


@dataclass(frozen=True)
class EngineFinding:
    op_type: str
    count: int
    engine: str  # what the table says
    cost: str
    bytes_per_call: int  # bytes the AI CPU kernels touch per call at the largest gear (0: unknown)


def _bytes(model: onnx.ModelProto, node: onnx.NodeProto, batch: int) -> int:
    sizes = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.INT32: 4, onnx.TensorProto.INT64: 8,
             onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BOOL: 1}
    shapes = {v.name: v for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    v = shapes.get(node.input[0]) if node.input else None
    if v is None or not v.type.HasField("tensor_type"):
        return 0
    n = sizes.get(v.type.tensor_type.elem_type, 0)
    for i, d in enumerate(v.type.tensor_type.shape.dim):
        if d.HasField("dim_value"):
            n *= d.dim_value
        elif i == 0:
            n *= batch
        else:
            return 0
    return n


def aicpu_ops(model: onnx.ModelProto, soc: str, precision: str = "fp32", batch: int = 1) -> list[EngineFinding]:
    """The ops of ``model`` that ASCEND.md's table puts on AI CPU for ``soc`` (with counts, and the
    bytes their data input holds at ``batch``, the largest gear)."""
    family = soc_family(soc)
    if family is None:
        return []
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    counts = Counter(n.op_type for n in inferred.graph.node)
    size: Counter = Counter()
    for n in inferred.graph.node:
        if n.op_type in AICPU_TABLE or n.op_type == "TopK":
            size[n.op_type] += _bytes(inferred, n, batch)
    out = []
    for op, per_family in AICPU_TABLE.items():
        if counts[op] and family in per_family:
            out.append(EngineFinding(op, counts[op], per_family[family], _COST[op], size[op]))
    if counts["TopK"] and precision == "fp32" and family in ("310P", "910", "910B"):
        out.append(EngineFinding("TopK", counts["TopK"], _TOPK_FP32, _COST["TopK"], size["TopK"]))
    return out
