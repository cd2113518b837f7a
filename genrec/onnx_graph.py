"""Small, semantics-preserving rewrites of exported ONNX graphs, shared by the exporter and
the onnxruntime backend.

``castlike_to_cast``: torch's dynamo exporter (run without the onnxscript optimizer, see
``genrec.exporter.export``) leaves ``CastLike(x, like)`` nodes. onnxruntime's CPU provider has
no CastLike kernel, so its constant folding stops there and constant subgraphs behind it (the
L2-normalised item table, the (T, T) position bias) run on every call; ATC gains nothing from
them either. CastLike is defined as Cast to the type of ``like``, so the rewrite is exact.

``narrow_index_casts``: torch indexes with int64 only, so an exported gather's indices arrive
through ``Cast(to=INT64)``. Gather, GatherElements and ScatterElements take int32 indices as
well; where a Cast feeds nothing else, it is narrowed to int32 (or dropped when its input is
int32 already). For HSTU's (B, T, T) time buckets that halves the bytes of the largest index
tensor in the model, written once and read by a gather. Indices address one axis of a tensor,
so they always fit in int32.

``max_min_to_clip``: torch writes an integer ``clamp(x, lo, hi)`` as ``Min(Max(x, lo), hi)``;
one ``Clip`` is the same function in one pass (``rewrite_exported`` applies all three).

``writable_in_place``: which ``past_*`` cache inputs of a step graph a runtime may alias to
their ``present_*`` outputs (one buffer for both), so that a step writes one row instead of
copying the whole cache. Safe exactly when the input's only reader is the scatter that
produces the output: that kernel then finds input and output at one address and skips its
copy, and no other node can see the updated buffer too early.
"""

from __future__ import annotations

import math
from typing import Any


def _elem_types(model: Any) -> dict[str, int] | None:
    """Element type of every value onnx's shape inference can type (None if inference fails:
    the rewrites here are optimisations and then leave the graph alone)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001
        return None
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.value_info, *inferred.input, *inferred.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def _readers(graph: Any, skip: tuple[str, ...] = ()) -> dict[str, list[tuple[Any, int]]]:
    """value name -> [(node, input position)] of the nodes reading it (ops in ``skip`` left out)."""
    readers: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        if node.op_type in skip and node.domain in ("", "ai.onnx"):
            continue
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, i))
    return readers


def castlike_to_cast(model: Any) -> bool:
    """Rewrite every CastLike whose target type is known as Cast, in place; True if any changed."""
    import onnx

    graph = model.graph
    nodes = [n for n in graph.node if n.op_type == "CastLike" and n.domain in ("", "ai.onnx")]
    types = _elem_types(model) if nodes else None
    if not types:
        return False
    changed = False
    for node in nodes:
        to = types.get(node.input[1], 0)
        if not to:
            continue
        saturate = [a for a in node.attribute if a.name == "saturate"]
        node.op_type = "Cast"
        del node.input[1:]
        node.ClearField("attribute")
        node.attribute.append(onnx.helper.make_attribute("to", to))
        node.attribute.extend(saturate)
        changed = True
    return changed


SCATTERS = ("ScatterElements", "ScatterND")
SHAPE_ONLY = ("Shape", "Size")


def writable_in_place(model: Any, pairs: dict[str, str]) -> set[str]:
    """The inputs of ``pairs`` (input name -> output name) that may share one buffer with
    their output: it is read once (Shape/Size aside: a write never changes the shape), as the
    data input of a plain (no ``reduction``) ScatterElements or ScatterND whose output is that
    graph output."""
    graph = model.graph
    readers = _readers(graph, skip=SHAPE_ONLY)
    outputs = {o.name for o in graph.output}
    safe = set()
    for src, dst in pairs.items():
        uses = readers.get(src, [])
        if len(uses) != 1 or uses[0][1] != 0 or src in outputs or dst not in outputs:
            continue
        node = uses[0][0]
        plain = all(a.name != "reduction" or a.s in (b"", b"none") for a in node.attribute)
        if node.op_type in SCATTERS and node.domain in ("", "ai.onnx") and plain and node.output[0] == dst:
            safe.add(src)
    return safe


# (op, input position) that accept int32 as well as int64 indices
INDEX_INPUTS = {("Gather", 1), ("GatherElements", 1), ("ScatterElements", 1)}


RESHAPES = {("Reshape", 0), ("Flatten", 0), ("Squeeze", 0), ("Unsqueeze", 0)}  # pass values through unchanged


def narrow_index_casts(model: Any) -> int:
    """Narrow ``Cast(to=INT64)`` nodes whose every reader takes them as gather/scatter indices
    to int32, or drop them when their input is int32; returns how many changed. In place.

    Readers that only reshape (``RESHAPES``) are looked through: a Reshape whose every
    reader is itself an index input (HSTU's flattened bucket lookups) carries int32 as well,
    and the (B, rows, T) index tensor is then written once, in int32, not cast to int64."""
    import onnx

    graph = model.graph
    int64 = onnx.TensorProto.INT64
    casts = [n for n in graph.node if n.op_type == "Cast" and n.domain in ("", "ai.onnx")
             and any(a.name == "to" and a.i == int64 for a in n.attribute)]
    types = _elem_types(model) if casts else None
    if not types:
        return 0
    readers, outputs = _readers(graph), {o.name for o in graph.output}

    def index_only(name: str, through: set[str]) -> bool:
        uses = readers.get(name, [])
        if not uses or name in outputs:
            return False
        for n, i in uses:
            if n.domain not in ("", "ai.onnx"):
                return False
            if (n.op_type, i) in RESHAPES:
                through.add(n.output[0])
                if not index_only(n.output[0], through):
                    return False
            elif (n.op_type, i) not in INDEX_INPUTS:
                return False
        return True

    changed, drop, retyped = 0, [], set()
    for cast in casts:
        out, through = cast.output[0], set()
        if not index_only(out, through):
            continue
        retyped |= through
        if types.get(cast.input[0]) == onnx.TensorProto.INT32:
            for n, i in readers.get(out, []):
                n.input[i] = cast.input[0]
            drop.append(cast)
        else:
            for a in cast.attribute:
                if a.name == "to":
                    a.i = onnx.TensorProto.INT32
        changed += 1
    for cast in drop:
        graph.node.remove(cast)
    if changed:  # stale int64 annotations of the narrowed values would fail the checker
        narrowed = {c.output[0] for c in casts} | retyped
        keep = [v for v in graph.value_info if v.name not in narrowed]
        del graph.value_info[:]
        graph.value_info.extend(keep)
    return changed


def rewrite_exported(model: Any) -> None:
    """Every rewrite the exporter applies to a freshly exported graph, in place and in order:
    CastLike to Cast, int32 gather indices, Max/Min pairs to Clip."""
    castlike_to_cast(model)
    narrow_index_casts(model)
    max_min_to_clip(model)


def _scalar_constants(graph: Any) -> dict[str, Any]:
    """value name -> its value as a numpy scalar, for every one-element initializer or
    Constant node output."""
    from onnx import numpy_helper

    out = {}
    for t in graph.initializer:
        if len(t.dims) <= 1 and math.prod(t.dims) == 1:
            out[t.name] = numpy_helper.to_array(t).reshape(())
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value" and math.prod(a.t.dims) == 1:
                    out[n.output[0]] = numpy_helper.to_array(a.t).reshape(())
    return out


def max_min_to_clip(model: Any) -> int:
    """Rewrite ``Min(Max(x, lo), hi)`` with scalar constants ``lo <= hi`` as ``Clip(x, lo, hi)``
    (the same values by definition, for every element type Clip takes); returns how many, in
    place. torch's exporter writes an integer ``clamp(x, lo, hi)`` as the pair: two passes over
    the tensor where one does, and onnxruntime's variadic Max/Min kernels did not gain from a
    second thread (HSTU's (B, rows, T) bucket correction: Min 0.58 ms on 1 thread, 1.23 ms on 2)
    where its Clip does."""
    graph = model.graph
    consts = _scalar_constants(graph)
    readers, outputs = _readers(graph), {o.name for o in graph.output}

    def split(node):  # (x, bound) of a two-input Max/Min with one scalar constant input
        if node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            return None
        a, b = node.input
        if b in consts and a not in consts:
            return a, b
        if a in consts and b not in consts:
            return b, a
        return None

    changed, dropped = 0, set()
    for node in list(graph.node):
        if node.op_type != "Max" or (got := split(node)) is None:
            continue
        x, lo = got
        uses = readers.get(node.output[0], [])
        if len(uses) != 1 or node.output[0] in outputs or uses[0][0].op_type != "Min":
            continue
        nxt = uses[0][0]
        other = split(nxt)
        if other is None or other[0] != node.output[0]:
            continue
        hi = other[1]
        if consts[lo].dtype != consts[hi].dtype or not consts[lo] <= consts[hi]:
            continue
        import onnx
        from onnx import numpy_helper

        bounds = []
        for tag, name in (("lo", lo), ("hi", hi)):  # Clip's bounds are rank-0 tensors
            bounds.append(f"{nxt.output[0]}/clip_{tag}")
            graph.initializer.append(numpy_helper.from_array(consts[name], bounds[-1]))
        clip = onnx.helper.make_node("Clip", [x, *bounds], [nxt.output[0]], name=f"{nxt.name}/clip")
        graph.node.insert(list(graph.node).index(nxt), clip)
        graph.node.remove(node)
        graph.node.remove(nxt)
        dropped |= {lo, hi}
        changed += 1
    if changed:  # the pairs' own bound initializers, where nothing else reads them
        used = _all_inputs(graph) | outputs
        keep = [t for t in graph.initializer if t.name in used or t.name not in dropped]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return changed


def _all_inputs(graph: Any) -> set[str]:
    """Names read by any node of ``graph`` or of its subgraphs (which may read outer values)."""
    names = set()
    for n in graph.node:
        names.update(n.input)
        for a in n.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                names |= _all_inputs(g)
    return names
