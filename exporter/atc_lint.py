"""ATC-compatibility lint: find what Huawei's ATC will reject before anyone reaches an Ascend box.

ATC (ONNX -> .om) fails late, on a machine most developers do not have, with terse E-codes.
Everything below is knowable from the ONNX file alone (ASCEND.md section 1.4,
ARCHITECTURE.md section 4), so the exporter runs this lint on every graph and records the
findings in the bundle:

- ``opset``: the model's ai.onnx opset must be 11-18 (ATC's documented range).
- ``unregistered-op``: ATC's parser looks each node up as ``<domain>::<model opset>::<OpType>``
  by exact match with no fallback (``atc_onnx_ops.json``); e.g. ReduceL2 is registered only up
  to 17 and LayerNormalization only at 17-18.
- ``contrib-op``: any node outside the ai.onnx domain (com.microsoft, local functions, ...).
- ``unsupported-op``: Loop/Scan (no subgraph adapter) and QuantizeLinear/DequantizeLinear.
- ``zero-size``: ATC requires every tensor dim to be non-zero.
- ``shape-from-data`` (warning): NonZero/Unique, or a Reshape/Expand/ConstantOfShape/Tile/
  Range/TopK whose shape argument depends on tensor *values*; gear OMs need every
  intermediate shape fixed once the batch gear is chosen. Shapes computed from ``Shape`` of
  tensors (e.g. Shape -> Gather -> Concat of the batch dim) are fine.
- ``int64-input`` (warning): ATC documents FP32/FP16/UINT8 inputs; export ids as int32.
- ``dynamic-axis``: only axis 0 may be symbolic, since ATC gears cover the batch axis only.

One linear pass over the graph (plus one ONNX shape inference), so it stays fast on graphs
with thousands of nodes.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import onnx
from onnx import TensorProto

from genrec.errors import ExportError

__all__ = [
    "Finding",
    "MAX_OPSET",
    "MIN_OPSET",
    "atc_registry",
    "format_findings",
    "has_errors",
    "lint_model",
    "lint_summary",
]

MIN_OPSET = 11
MAX_OPSET = 18
_DEFAULT_DOMAINS = ("", "ai.onnx")

Severity = Literal["error", "warning"]

_UNSUPPORTED = {
    "Loop": "ATC's ONNX parser has no Loop plugin or subgraph adapter (only If); unroll the "
    "loop in the model or run the decoding loop on the host",
    "Scan": "ATC's ONNX parser has no Scan plugin or subgraph adapter (only If); unroll it",
    "QuantizeLinear": "ATC does not parse QDQ; quantise for Ascend with AMCT (AscendQuant) "
    "and keep QDQ graphs for onnxruntime only",
    "DequantizeLinear": "ATC does not parse QDQ; quantise for Ascend with AMCT "
    "(AscendDequant) and keep QDQ graphs for onnxruntime only",
}

# Ops whose output shape is decided by an input's values, and which inputs those are.
_SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "Expand": (1,),
    "ConstantOfShape": (0,),
    "Tile": (1,),
    "Range": (0, 1, 2),
    "TopK": (1,),
}
_DATA_DEPENDENT = {
    "NonZero": "output length is the number of non-zero elements",
    "Unique": "output length is the number of distinct values",
}
# Ops whose outputs are not constants even when their inputs are (besides Random*).
_RANDOM = {"Bernoulli", "Multinomial"}


@dataclass(frozen=True)
class Finding:
    """One lint result. ``node`` is a node name, or a tensor name for tensor-level rules."""

    rule: str
    node: str
    op_type: str
    message: str
    severity: Severity = "error"

    def format(self) -> str:
        """One line: ``error [rule] node (OpType): message``."""
        what = f"{self.node} ({self.op_type})" if self.op_type else self.node
        return f"{self.severity} [{self.rule}] {what}: {self.message}"


def format_findings(findings: Iterable[Finding]) -> str:
    """All findings, errors first, one per line."""
    order = {"error": 0, "warning": 1}
    return "\n".join(f.format() for f in sorted(findings, key=lambda f: order[f.severity]))


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


def lint_summary(findings: Iterable[Finding]) -> str:
    """One line for logs and the bundle's checks: counts by severity and by rule."""
    findings = list(findings)
    if not findings:
        return "ATC lint: clean (0 errors, 0 warnings)"
    sev = Counter(f.severity for f in findings)
    rules = Counter(f.rule for f in findings)
    by_rule = ", ".join(r if n == 1 else f"{r} x{n}" for r, n in sorted(rules.items()))
    verdict = "FAILED" if sev["error"] else "passed with warnings"
    return (
        f"ATC lint: {verdict} ({sev['error']} error{'s' * (sev['error'] != 1)}, "
        f"{sev['warning']} warning{'s' * (sev['warning'] != 1)}: {by_rule})"
    )


@functools.lru_cache(maxsize=1)
def atc_registry() -> dict[str, Any]:
    """The packaged ``atc_onnx_ops.json`` (ATC's registered ONNX op keys), loaded once."""
    text = resources.files(__package__).joinpath("atc_onnx_ops.json").read_text("utf-8")
    data = json.loads(text)
    data["_ops_sets"] = {op: frozenset(v) for op, v in data["ops"].items()}
    return data


def _ranges(versions: Iterable[int]) -> str:
    """[8, 9, 10, 12] -> '8-10, 12'."""
    vs = sorted(versions)
    if not vs:
        return "none"
    parts, start, prev = [], vs[0], vs[0]
    for v in vs[1:] + [None]:  # type: ignore[list-item]
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)


class _Linter:
    def __init__(self, model: onnx.ModelProto, dynamic_axes_ok: set[str]):
        self.model = model
        self.allowed = dynamic_axes_ok
        self.findings: list[Finding] = []
        self.reg = atc_registry()
        self.opset: int | None = None
        for imp in model.opset_import:
            if imp.domain in _DEFAULT_DOMAINS:
                self.opset = int(imp.version)
        self.local_functions = {(f.domain, f.name) for f in model.functions}

    def add(self, rule: str, node: str, op_type: str, message: str, severity: Severity) -> None:
        self.findings.append(Finding(rule, node, op_type, message, severity))

    # -- model level ---------------------------------------------------------------------------
    def check_opset(self) -> None:
        if self.opset is None:
            self.add("opset", "<model>", "", "the model imports no ai.onnx opset", "error")
        elif not MIN_OPSET <= self.opset <= MAX_OPSET:
            self.add(
                "opset",
                "<model>",
                "",
                f"ai.onnx opset {self.opset} is outside ATC's supported {MIN_OPSET}-{MAX_OPSET}; "
                f"re-export with opset_version={min(max(self.opset, MIN_OPSET), MAX_OPSET)}",
                "error",
            )

    # -- nodes ---------------------------------------------------------------------------------
    def check_node(self, node: onnx.NodeProto, label: str) -> None:
        op = node.op_type
        if node.domain not in _DEFAULT_DOMAINS:
            self._contrib(node, label)
            return
        if op in _UNSUPPORTED:
            self.add("unsupported-op", label, op, f"{op} is not supported: {_UNSUPPORTED[op]}",
                     "error")
            return
        if op in self.reg["parser_builtin_ops"] or self.opset is None:
            return
        versions = self.reg["_ops_sets"].get(op)
        if versions is not None and self.opset in versions:
            return
        key = f"ai.onnx::{self.opset}::{op}"
        if versions is None:
            if op in self.reg.get("standard_ops_introduced_after_opset_18", ()):
                why = (f"{op} is an ai.onnx op newer than opset 18 and ATC registers it under no "
                       "version; export at opset <= 18 so it is decomposed")
            else:
                why = f"ATC registers {op} under no opset; rewrite it with supported ops"
        else:
            usable = [v for v in versions if MIN_OPSET <= v <= MAX_OPSET]
            if usable:
                best = min(usable, key=lambda v: (abs(v - self.opset), -v))
                hint = f"; export with opset {best} or rewrite it with supported ops"
            else:
                hint = "; rewrite it with supported ops"
            why = (f"ATC registers {op} only at opsets {_ranges(versions)}, not at the model's "
                   f"opset {self.opset} (exact-match lookup, no fallback){hint}")
        self.add("unregistered-op", label, op, f"{key} is not registered: {why}", "error")

    def _contrib(self, node: onnx.NodeProto, label: str) -> None:
        dom, op = node.domain, node.op_type
        if (dom, op) in self.local_functions:
            why = ("it calls a model-local function, which ATC cannot parse; inline it "
                   "(onnx.inliner.inline_local_functions)")
        elif op in self.reg.get("custom_ops", {}).get(dom, {}):
            why = (f"{dom}::{op} is an Ascend custom op; genrec graphs must use standard "
                   "ai.onnx ops so one bundle serves onnxruntime and ATC")
        else:
            why = (f"ATC registers no ONNX parser for domain {dom!r} (contrib/vendor op); "
                   "export with standard ai.onnx ops only")
        self.add("contrib-op", label, op, f"domain {dom!r}: {why}", "error")

    # -- data-dependent shapes --------------------------------------------------------------
    def walk(self, graph: onnx.GraphProto, static: set[str], prefix: str) -> None:
        """Check every node; ``static`` holds tensors whose values never depend on input data.

        A tensor is static if it is an initializer, the output of Shape/Size (shape of any
        tensor), or computed by a deterministic node from static tensors only. Nodes are
        topologically ordered (ONNX requirement), so one pass suffices.
        """
        static = set(static)
        static.update(t.name for t in graph.initializer)
        static.update(t.name for t in graph.sparse_initializer)
        # an initializer also listed as a graph input can be overridden by the caller
        static.difference_update(v.name for v in graph.input)
        static.add("")  # omitted optional inputs
        for i, node in enumerate(graph.node):
            label = f"{prefix}{node.name or f'{node.op_type}_{i}'}"
            self.check_node(node, label)
            op = node.op_type
            if op in _DATA_DEPENDENT and node.domain in _DEFAULT_DOMAINS:
                self.add("shape-from-data", label, op,
                         f"shape from data: {_DATA_DEPENDENT[op]}; ATC gear models need fixed "
                         "intermediate shapes", "warning")
            elif op in _SHAPE_INPUTS and node.domain in _DEFAULT_DOMAINS:
                for idx in _SHAPE_INPUTS[op]:
                    if idx < len(node.input) and node.input[idx] not in static:
                        self.add(
                            "shape-from-data", label, op,
                            f"shape from data: input {idx} ({node.input[idx]!r}) of {op} is "
                            "computed from tensor values, not from constants or Shape ops; "
                            "ATC gear models need fixed intermediate shapes", "warning")
                        break
            for attr in node.attribute:  # If branches etc.: same checks, outer scope visible
                for sub in _subgraphs(attr):
                    self.walk(sub, static, f"{label}/{attr.name}/")
            if op in ("Shape", "Size", "Constant"):
                static.update(node.output)
            elif op.startswith("Random") or op in _RANDOM or _has_subgraph(node):
                continue
            elif all(x in static for x in node.input):
                static.update(node.output)

    # -- tensors -------------------------------------------------------------------------------
    def check_tensors(self, inferred: onnx.ModelProto | None) -> None:
        g = self.model.graph
        for t in g.initializer:
            if any(d == 0 for d in t.dims):
                self.add("zero-size", t.name, "", f"initializer has shape {list(t.dims)}; ATC "
                         "requires every dim != 0", "error")
        for i, node in enumerate(g.node):
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value" and any(d == 0 for d in a.t.dims):
                        self.add("zero-size", node.name or f"Constant_{i}", "Constant",
                                 f"constant has shape {list(a.t.dims)}; ATC requires every "
                                 "dim != 0", "error")
        inits = {t.name for t in g.initializer}
        graph = inferred.graph if inferred is not None else g
        seen: set[str] = set()
        for kind, values in (("graph input", graph.input), ("graph output", graph.output),
                             ("intermediate tensor", graph.value_info)):
            for v in values:
                if v.name in inits or v.name in seen:
                    continue
                seen.add(v.name)
                dims = _dims(v)
                if dims is not None and any(d == 0 for d in dims):
                    self.add("zero-size", v.name, "", f"{kind} has shape {dims}; ATC requires "
                             "every dim != 0 (no zero-sized tensors)", "error")
        for kind, values in (("input", g.input), ("output", g.output)):
            for v in values:
                if v.name in inits:
                    continue
                if kind == "input" and _elem_type(v) == TensorProto.INT64:
                    self.add("int64-input", v.name, "", "graph input is int64; ATC documents "
                             "FP32/FP16/UINT8 inputs and some ops reject int64: export ids as "
                             "int32", "warning")
                dims = _dims(v)
                for axis, d in enumerate(dims or ()):
                    if axis == 0 or isinstance(d, int):
                        continue
                    if d in self.allowed or v.name in self.allowed or \
                            f"{v.name}:{axis}" in self.allowed:
                        continue
                    self.add("dynamic-axis", v.name, "", f"graph {kind} axis {axis} is dynamic "
                             f"({d!r}); ATC gears cover the batch axis (0) only, fix this axis "
                             "at export", "error")


def _subgraphs(attr: onnx.AttributeProto) -> Iterator[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        yield attr.g
    elif attr.type == onnx.AttributeProto.GRAPHS:
        yield from attr.graphs


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute)


def _elem_type(v: onnx.ValueInfoProto) -> int | None:
    return v.type.tensor_type.elem_type if v.type.HasField("tensor_type") else None


def _dims(v: onnx.ValueInfoProto) -> list[int | str] | None:
    """Dims as ints / symbolic names ('?' when unknown); None when not a tensor of known rank."""
    if not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
        return None
    out: list[int | str] = []
    for d in v.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or "?")
    return out


def _load(model: onnx.ModelProto | str | os.PathLike[str]) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    # External weights are irrelevant to every rule and can be many GB: leave them on disk.
    try:
        return onnx.load(os.fspath(model), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf/IO errors come in several types
        raise ExportError(f"ATC lint: cannot read ONNX model {model} ({e})") from None


def lint_model(
    model: onnx.ModelProto | str | Path,
    *,
    dynamic_axes_ok: set[str] | None = None,
) -> list[Finding]:
    """Lint an ONNX model (proto or path) for ATC; returns findings, errors and warnings.

    ``dynamic_axes_ok`` lists symbolic dims that may stay dynamic beyond axis 0, as a dim name
    (``"seq"``), a tensor name (all its axes) or ``"tensor:axis"``. The model is not modified.
    """
    m = _load(model)
    linter = _Linter(m, set(dynamic_axes_ok or ()))
    linter.check_opset()
    linter.walk(m.graph, set(), "")
    inferred: onnx.ModelProto | None
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    except Exception as e:  # noqa: BLE001 - e.g. a >2 GB in-memory proto; lint what we have
        inferred = None
        linter.add("shape-inference", "<model>", "", f"ONNX shape inference failed ({e}); "
                   "zero-size checks used the stored shapes only", "warning")
    linter.check_tensors(inferred)
    return linter.findings
