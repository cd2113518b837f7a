"""Small, semantics-preserving rewrites of exported ONNX graphs, shared by the exporter and
the onnxruntime backend.

``castlike_to_cast``: torch's dynamo exporter (run without the onnxscript optimizer, see
``genrec.exporter.export``) leaves ``CastLike(x, like)`` nodes. onnxruntime's CPU provider has
no CastLike kernel, so its constant folding stops there and constant subgraphs behind it (the
L2-normalised item table, the (T, T) position bias) run on every call; ATC gains nothing from
them either. CastLike is defined as Cast to the type of ``like``, so the rewrite is exact.
"""

from __future__ import annotations

from typing import Any


def castlike_to_cast(model: Any) -> bool:
    """Rewrite every CastLike whose target type is known as Cast, in place; True if any changed."""
    import onnx

    graph = model.graph
    nodes = [n for n in graph.node if n.op_type == "CastLike" and n.domain in ("", "ai.onnx")]
    if not nodes:
        return False
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - an optimisation only: leave the graph as it is
        return False
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.value_info, *inferred.input, *inferred.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
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
