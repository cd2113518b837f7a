"""Node groups of a bundle graph: what the accuracy gate may keep in fp32, by name.

The fallback search of ``genrec quantize`` (``search.py``) does not exclude single nodes: it
keeps whole *groups* in fp32, groups a reader can name and compare across graphs and backbones:

- ``layer{i}.projections``: the weight MatMuls of layer i (q/k/v/u, output, feed-forward);
- ``layer{i}.attention``: the activation-by-activation MatMuls of layer i (QKᵀ and AV) and, for
  fp16, every other op of the layer (norms, softmax, masks, residual adds);
- ``embeddings``: the item/position table lookups (and, for fp16, the ops before layer 0);
- ``head``: everything after the last layer's last projection: the final norm, the scoring
  MatMul against the whole item table, TopK and log_z.

The graphs carry no module names for every backbone (HSTU's projections are functional), so
groups are found from the graph's structure, which every exported backbone shares:

- a *projection* is a MatMul/Gemm whose B is constant (an initializer or computed from them);
- an *attention* MatMul has two activation inputs; in program order each layer has the same
  number of them, so they split evenly over the L layers (L = the ``past_key.*`` count);
- a projection belongs to layer i when it reaches layer i's attention without crossing another
  projection (q, k, v), or shares its input with one that does (HSTU's u); otherwise (output
  and feed-forward projections) it belongs to the layer of the attention just before it.

When a graph does not split that way, ``attention`` and ``projections`` are one group each
(still searchable, just coarser): ``NodeGroups.per_layer`` says which happened.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HEAD", "EMBEDDINGS", "NodeGroups", "node_groups", "cache_writes"]

HEAD = "head"
EMBEDDINGS = "embeddings"
MATMULS = ("MatMul", "Gemm", "Einsum")
LOOKUPS = ("Gather", "GatherND", "GatherElements")


@dataclass
class NodeGroups:
    """Group name -> node names of one graph, in program order of the groups' first node."""

    groups: dict[str, list[str]] = field(default_factory=dict)
    per_layer: bool = True
    layers: int = 0

    def nodes(self, names: set[str] | frozenset[str] | list[str]) -> list[str]:
        """Every node of the named groups (names this graph lacks contribute nothing)."""
        return [n for g in names for n in self.groups.get(g, [])]


def _const_tensors(graph: Any) -> set[str]:
    """Initializers, Constant outputs and every tensor computed from them alone."""
    const = {t.name for t in graph.initializer}
    for node in graph.node:
        ins = [i for i in node.input if i]
        if node.op_type == "Constant" or (ins and all(i in const for i in ins)):
            const.update(o for o in node.output if o)
    return const


def cache_writes(graph: Any) -> list[str]:
    """The ScatterElements/ScatterND nodes that read a ``past_*`` input or make a
    ``present_*`` output: they stay fp32 so that the cache keeps its dtype and the
    onnxruntime backend keeps writing it in place (``genrec.onnx_graph.writable_in_place``)."""
    outs = {o.name for o in graph.output if o.name.startswith("present_")}
    ins = {i.name for i in graph.input if i.name.startswith("past_")}
    return [n.name for n in graph.node if n.op_type in ("ScatterElements", "ScatterND")
            and (n.input[0] in ins or any(o in outs for o in n.output))]


def node_groups(model: Any) -> NodeGroups:
    """The groups of ``model`` (an onnx ModelProto); every node is in at most one group."""
    graph = model.graph
    nodes = list(graph.node)
    pos = {n.name: i for i, n in enumerate(nodes)}
    const = _const_tensors(graph)
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in nodes:
        for i in n.input:
            consumers[i].append(n)

    def is_const_node(n) -> bool:
        return all(o in const for o in n.output if o)

    table = _item_table(graph, const, nodes)
    scoring = [n for n in nodes if n.op_type in ("MatMul", "Gemm") and any(i in table for i in n.input)]
    proj = [n for n in nodes if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in const
            and not is_const_node(n) and n not in scoring]
    att = [n for n in nodes if n.op_type in MATMULS and not is_const_node(n)
           and not any(i in const for i in n.input[:2]) and n not in proj]
    out = NodeGroups()
    if not proj:
        return out
    # head: the scoring MatMuls and everything downstream of them and of the last projection,
    # plus the constant ops feeding it (the item table's normalisation and transpose)
    last = max(pos[n.name] for n in proj)
    head: set[str] = {n.name for n in scoring}
    todo = [o for o in nodes[last].output] + [o for n in scoring for o in n.output]
    while todo:
        t = todo.pop()
        for c in consumers.get(t, []):
            if c.name not in head:
                head.add(c.name)
                todo.extend(c.output)
    producer = {o: n for n in nodes for o in n.output}
    todo = [i for n in nodes if n.name in head for i in n.input]
    while todo:
        t = todo.pop()
        p = producer.get(t)
        if p is not None and p.name not in head and is_const_node(p):
            head.add(p.name)
            todo.extend(p.input)
    proj = [n for n in proj if n.name not in head]
    att = [n for n in att if n.name not in head]
    layers = len({i.name.split(".", 1)[1] for i in graph.input if i.name.startswith("past_key.")}
                 | {o.name.split(".", 1)[1] for o in graph.output if o.name.startswith("present_key.")})
    out.layers = layers
    layer_of: dict[str, int] = {}
    if layers and att and len(att) % layers == 0:
        per = len(att) // layers
        for k, n in enumerate(att):
            layer_of[n.name] = k // per
        proj_layer = _projection_layers(proj, att, layer_of, consumers, pos)
        if proj_layer is not None:
            layer_of.update(proj_layer)
    out.per_layer = len(layer_of) == len(att) + len(proj) and bool(layers)
    lookups = [n.name for n in nodes if n.op_type in LOOKUPS and n.name not in head and n.input[0] in const
               and not is_const_node(n)]
    first = min(pos[n.name] for n in proj + att)
    groups: dict[str, list[str]] = defaultdict(list)
    groups[EMBEDDINGS] = list(lookups)
    if out.per_layer:
        starts = sorted({min(pos[n] for n, lyr in layer_of.items() if lyr == i) for i in range(layers)})
        for n in nodes:
            if n.name in head or n.name in lookups or is_const_node(n):
                continue
            if n.name in layer_of:
                kind = "projections" if any(n is p for p in proj) else "attention"
                groups[f"layer{layer_of[n.name]}.{kind}"].append(n.name)
            elif pos[n.name] < first:
                groups[EMBEDDINGS].append(n.name)
            else:  # other ops of a layer: the span it falls in
                i = max(k for k, s in enumerate(starts) if s <= pos[n.name])
                groups[f"layer{i}.attention"].append(n.name)
    else:
        proj_names = {n.name for n in proj}
        for n in nodes:
            if n.name in head or n.name in lookups or is_const_node(n):
                continue
            if pos[n.name] < first:
                groups[EMBEDDINGS].append(n.name)
            else:
                groups["projections" if n.name in proj_names else "attention"].append(n.name)
    groups[HEAD] = [n.name for n in nodes if n.name in head]
    out.groups = {k: v for k, v in groups.items() if v}
    return out


def _item_table(graph: Any, const: set[str], nodes: list[Any]) -> set[str]:
    """The item table initializer (``*item_emb.weight``, else the 2-D float one with the most
    rows), any 2-D float initializer with as many rows or columns (its folded copies), and
    every constant tensor computed from them: a MatMul reading one scores the catalogue."""
    floats = (1, 10, 11, 16)  # float, float16, double, bfloat16
    tables = [t for t in graph.initializer if len(t.dims) == 2 and t.data_type in floats]
    named = [t for t in tables if t.name.endswith("item_emb.weight")]
    if not (named or tables):
        return set()
    rows = (named or [max(tables, key=lambda t: t.dims[0])])[0].dims[0]
    # optimizers fold the normalisation and transpose into a new (d, N + 1) initializer
    found = {t.name for t in tables if rows in t.dims}
    for n in nodes:
        if any(i in found for i in n.input) and n.op_type not in LOOKUPS and all(o in const for o in n.output if o):
            found.update(o for o in n.output if o)
    return found


def _projection_layers(proj, att, layer_of, consumers, pos) -> dict[str, int] | None:
    """Layer of each projection (see the module docstring); None if one cannot be placed."""
    proj_names = {n.name for n in proj}
    att_names = {n.name for n in att}
    out: dict[str, int] = {}
    for p in proj:  # q/k/v: reach an attention MatMul without crossing another projection
        seen, todo, hit = set(), list(p.output), set()
        while todo:
            t = todo.pop()
            for c in consumers.get(t, []):
                if c.name in seen or c.name in proj_names:
                    continue
                seen.add(c.name)
                if c.name in att_names:
                    hit.add(layer_of[c.name])
                    continue
                todo.extend(c.output)
        if hit:
            out[p.name] = min(hit)
    for p in proj:  # siblings of a q/k/v projection (same input): HSTU's u
        if p.name not in out:
            sib = [q for q in proj if q.name in out and q.input[0] == p.input[0]]
            if sib:
                out[p.name] = out[sib[0].name]
    att_pos = sorted((pos[n.name], layer_of[n.name]) for n in att)
    for p in proj:  # output and feed-forward: the layer of the attention just before
        if p.name not in out:
            before = [lyr for q, lyr in att_pos if q < pos[p.name]]
            if not before:
                return None
            out[p.name] = before[-1]
    return out
