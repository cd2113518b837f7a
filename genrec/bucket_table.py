"""HSTU's time buckets without a Log: an onnxruntime-only rewrite of exported graphs.

An exported HSTU graph estimates each (B, rows, T) time bucket as ``Cast(Log(float(|Δ|)) · s)``
and corrects the estimate by one with an integer comparison against the bucket edge table
(``genrec.models.hstu.time_buckets``). The Log is the most expensive elementwise pass of a
prefill: onnxruntime's Log costs about 2 ns an element on one thread, ten times a Cast or an
Abs, and with the Mul and Cast around it about a tenth of a batch-64 HSTU prefill (Log alone
3.6 of ~33 ms, ``benchmarks/ort_profile.py``).

The estimate only has to be the reference bucket or one below it. The top bits of a float32
already are a logarithm: ``bits(float(|Δ|)) >> k`` names a cell of relative width
2^(k-23), and where no cell holds more than one bucket edge (HSTU's edges are e^0.301 = 1.35x
apart, a cell at k = 21 is 1.25x wide) a table of each cell's lowest bucket is such an
estimate, exact by construction instead of up to a Log's rounding. ``bitcast_time_buckets``
replaces ``Log → Mul → Cast`` by ``BitCast → BitShift → BitCast → GatherElements(table)``
(int ops that onnxruntime runs at the speed of a copy) and leaves the comparison with the edge
table, and so the bucket, as it was: outputs are bit for bit those of the exported graph.

Where the bucket is read only by the layers' bias lookups ``w[bucket]`` (the prefill's row
blocks, the step's and rank's rows), the rewrite goes one step further (``fused_table``): the
edge threshold is read by cell too, and the comparison's 0/1 moves the bias lookup to the next
cell, ``W[c + (|Δ| > thr[c])]`` with ``W = w[est]``, valid where every cell with an edge inside
is followed by one that starts one bucket up (checked when the table is made; HSTU's default
passes). That drops a GatherElements, the Clip(>= 1) and the row-view reshapes of each
(B, rows, T) bucket pass: a batch-1 HSTU prefill on 2 threads 6% faster, batch 64 3.5%.

``BitCast`` is ONNX opset 26, which ATC does not take: the rewrite is for onnxruntime only and
is applied when the onnxruntime backend loads a graph; bundles keep the standard graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .onnx_graph import _all_inputs, _readers

OPSET = 26  # BitCast's first opset
FLOAT_2_31 = 0x4F000000  # bits of 2^31: float(INT32_MAX) rounds up to it
# ops in the graphs we export whose schema changed between opset 18 and 26 by adding element
# types only (plus Cast's ``saturate`` for float8 and ReduceMax's bool): a graph made of these
# and of ops that did not change means the same at opset 26, so its import may simply be raised
SAME_AT_26 = {"Cast", "Constant", "ConstantOfShape", "Equal", "ReduceMax", "Reshape", "Shape",
              "Squeeze", "TopK", "Transpose", "Unsqueeze"}


def _ints_from(lo: np.ndarray) -> np.ndarray:
    """Smallest int64 m >= 0 with float32(m) >= lo, for each float32 ``lo`` (vectorised
    bisection through numpy's round-to-nearest-even int -> float32 cast, the one onnxruntime's
    Cast makes)."""
    a = np.zeros(lo.shape, np.int64)
    b = np.full(lo.shape, 2 ** 32, np.int64)  # float32(2^32) >= every lo asked for
    while (a < b).any():
        mid = (a + b) // 2
        ok = mid.astype(np.float32) >= lo
        a, b = np.where(ok, a, mid + 1), np.where(ok, mid, b)
    return a


def cell_table(bounds: np.ndarray, shift: int) -> np.ndarray | None:
    """est[c] for every cell c = bits(float32(m)) >> shift of an int m in [1, 2^31), such that
    ``est + (m > bounds[est])`` is ``#{k: bounds[k] < m}``, the reference bucket; None where
    some cell holds two bucket edges (the shift is too coarse for this table).

    ``bounds``: the sorted integer edge table of the graph (``hstu.bucket_bounds``: bounds[k]
    is the largest gap whose bucket is at most k). est[c] is the bucket of the cell's smallest
    int; valid when the bucket of its largest int is at most one more."""
    cells = _cells(bounds, shift)
    if cells is None:
        return None
    _, live, ref_lo, ref_hi = cells
    if (live & (ref_hi - ref_lo > 1)).any():
        return None
    return np.where(live, ref_lo, 0).astype(np.int32)


def _cells(bounds: np.ndarray, shift: int) -> tuple[np.ndarray, ...] | None:
    """(bounds as int64, live, ref_lo, ref_hi) for each cell c = bits(float32(m)) >> shift of
    the ints m in [0, 2^31), up to the cell of 2^31: whether any int lands in c, and the
    reference bucket ``#{k: bounds[k] < max(m, 1)}`` of its smallest and its largest int. None
    where ``bounds`` is no edge table (empty or not sorted)."""
    bounds = np.asarray(bounds, np.int64).ravel()
    if bounds.size == 0 or (np.diff(bounds) < 0).any():
        return None
    cells = np.arange((FLOAT_2_31 >> shift) + 2, dtype=np.uint64)
    lo = (cells << np.uint64(shift)).astype(np.uint32).view(np.float32)
    first = _ints_from(lo)  # smallest int in each cell (and the next one's)
    smallest, largest = first[:-1], np.minimum(first[1:] - 1, 2 ** 31 - 1)
    ref_lo = np.searchsorted(bounds, np.maximum(smallest, 1), side="left")
    ref_hi = np.searchsorted(bounds, np.maximum(largest, 1), side="left")
    return bounds, smallest <= largest, ref_lo, ref_hi


def pick_table(bounds: np.ndarray) -> tuple[int, np.ndarray] | None:
    """(shift, table) with the coarsest shift (smallest table) that is exact, from cells 2^-1
    wide down to 2^-7; None if even 2^-7 cells hold two edges."""
    for shift in range(22, 15, -1):
        table = cell_table(bounds, shift)
        if table is not None:
            return shift, table
    return None


def _const(graph: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def _can_raise_opset(model: Any) -> bool:
    """True when every node is a default-domain op whose meaning is the same at opset 26."""
    import onnx.defs

    have = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if have is None or have < 13:
        return False
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            return False
        if any(a.HasField("g") or len(a.graphs) for a in node.attribute):
            return False  # subgraphs: not looked into
        try:
            same = (onnx.defs.get_schema(node.op_type, have, "").since_version
                    == onnx.defs.get_schema(node.op_type, OPSET, "").since_version)
        except onnx.defs.SchemaError:
            return False
        if not same and node.op_type not in SAME_AT_26:
            return False
    return True


def bitcast_time_buckets(model: Any) -> int:
    """Replace each HSTU time-bucket estimate ``Cast(int32→float) → Log → Mul(c) → Cast(int32)``
    whose estimate indexes a constant edge table (``GatherElements(Expand(table), Reshape(est))``,
    as ``genrec.models.hstu.lookup`` exports it) by a lookup of the float's bit cell, in place;
    returns how many (0: the graph is left exactly as it was, opset included).

    The cell table is made from the graph's own edge table, so the bucket, and with it every
    output, stays bit for bit the same (see the module docstring). The new lookup borrows the
    edge lookup's shapes: the index as (rows of its first axis, rest), the table as that many
    copies (a few KB). A bucket read only by bias lookups is folded into them
    (``fused_table``, nodes ``fused_bucket_*``); otherwise the estimate alone is replaced
    (``bitcast_bucket_*``). What the rewrite leaves unread is removed."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if not any(n.op_type == "Log" for n in graph.node) or not _can_raise_opset(model):
        return 0
    producer = {o: n for n in graph.node for o in n.output}
    readers = {name: [node for node, _ in uses] for name, uses in _readers(graph).items()}
    outputs = {o.name for o in graph.output}

    def only_reader(name: str, op: str) -> Any:
        r = readers.get(name, [])
        return r[0] if len(r) == 1 and r[0].op_type == op and name not in outputs else None

    def made_by(name: str, op: str) -> Any:
        node = producer.get(name)
        return node if node is not None and node.op_type == op and node.domain in ("", "ai.onnx") else None

    def attr(node: Any, name: str) -> Any:
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)

    def const(node: Any, i: int) -> float | None:
        v = _const(graph, node.input[i]) if len(node.input) > i and node.input[i] else None
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    def match(log: Any) -> tuple | None:
        """The nodes of one bucket as ``time_buckets`` exports it, checked end to end:
        x = Clip(|Δ|, >= 1); est = Cast(Mul(Log(Cast(x)), c)) [then Clip to the top bucket];
        edge = GatherElements(Expand(table), Reshape(est)); bucket = est + Clip(x - edge, 0, 1)
        and est read by nothing else: only then does a different valid estimate leave the
        bucket as it was."""
        to_float = made_by(log.input[0], "Cast")
        mul = only_reader(log.output[0], "Mul")
        to_int = mul and only_reader(mul.output[0], "Cast")
        if (to_float is None or attr(to_float, "to") != TensorProto.FLOAT or to_int is None
                or attr(to_int, "to") != TensorProto.INT32 or len(readers.get(log.input[0], [])) != 1
                or sum(const(mul, i) is not None for i in range(2)) != 1):
            return None
        x = to_float.input[0]
        low = made_by(x, "Clip")
        if low is None or (const(low, 1) or 0) < 1:  # gaps of at least 1: cells of positive floats only
            return None
        tip = only_reader(to_int.output[0], "Clip") or to_int
        uses = readers.get(tip.output[0], [])
        reshape = next((n for n in uses if n.op_type == "Reshape" and n.input[0] == tip.output[0]), None)
        add = next((n for n in uses if n.op_type == "Add"), None)
        gather = reshape and only_reader(reshape.output[0], "GatherElements")
        if len(uses) != 2 or add is None or gather is None or tip.output[0] in outputs:
            return None
        expand = made_by(gather.input[0], "Expand")
        table = expand and _const(graph, expand.input[0])
        if (gather.input[1] != reshape.output[0] or attr(gather, "axis") != 1 or table is None
                or table.ndim != 2 or table.shape[0] != 1):
            return None
        corr = made_by(next((i for i in add.input if i != tip.output[0]), ""), "Clip")
        sub = corr and made_by(corr.input[0], "Sub")
        if corr is None or (const(corr, 1), const(corr, 2)) != (0, 1) or sub is None or sub.input[0] != x:
            return None
        edge = made_by(sub.input[1], "Reshape")
        if sub.input[1] != gather.output[0] and (edge is None or edge.input[0] != gather.output[0]):
            return None
        picked = pick_table(table[0])
        if picked is None:
            return None
        return (to_float, log, mul, to_int, (reshape, expand.input[1]), picked), (low, add, table[0])

    def same_value(a: str, b: str, depth: int = 8) -> bool:
        """Whether values ``a`` and ``b`` are equal by construction: one name, equal constants,
        or the same deterministic op of equal inputs (each layer exports its own copy of a
        lookup's shape plumbing: Shape -> Slice -> Concat)."""
        if a == b:
            return True
        va, vb = _const(graph, a), _const(graph, b)
        if va is not None or vb is not None:
            return va is not None and vb is not None and va.dtype == vb.dtype and np.array_equal(va, vb)
        na, nb = producer.get(a), producer.get(b)
        if (depth == 0 or na is None or nb is None or na.op_type != nb.op_type or na.domain != nb.domain
                or na.op_type.startswith(("Random", "Bernoulli", "Multinomial"))
                or list(na.output).index(a) != list(nb.output).index(b) or len(na.input) != len(nb.input)
                or [x.SerializeToString() for x in na.attribute] != [x.SerializeToString() for x in nb.attribute]):
            return False
        return all(same_value(x, y, depth - 1) for x, y in zip(na.input, nb.input))

    def lookups(bucket: str) -> list | None:
        """The bias lookups that read ``bucket``, each ``GatherElements(Expand(w (1, K)),
        Reshape(bucket, rows))`` as ``hstu.lookup`` exports it, all with the same ``rows``;
        None if anything else reads it (then only the estimate is rewritten)."""
        found = []
        for reshape in readers.get(bucket, []):
            gather = only_reader(reshape.output[0], "GatherElements") if reshape.op_type == "Reshape" else None
            expand = gather and made_by(gather.input[0], "Expand")
            w = expand and _const(graph, expand.input[0])
            if (gather is None or reshape.input[0] != bucket or gather.input[1] != reshape.output[0]
                    or attr(gather, "axis") != 1 or w is None or w.ndim != 2 or w.shape[0] != 1
                    or w.dtype.kind != "f" or not same_value(reshape.input[1], readers[bucket][0].input[1])):
                return None
            found.append((reshape, gather, expand.input[1], w[0]))
        return found if found and bucket not in outputs else None

    found = [m for log in graph.node if log.op_type == "Log" and (m := match(log)) is not None]
    if not found:
        return 0
    plans = []
    for i, (plan, (low, add, bounds)) in enumerate(found):
        reads = lookups(add.output[0])
        fused = reads and fused_table(bounds, plan[-1][0], max(len(w) for *_, w in reads))
        if fused is None:
            plans.append(plan)
        else:  # the old chain is left unread and swept below
            _fuse(graph, f"fused_bucket_{i}", low.input[0], reads, fused)

    for i, (to_float, log, mul, to_int, (edge, copies), (shift, table)) in enumerate(plans):
        p = f"bitcast_bucket_{i}"
        f, est = to_float.output[0], to_int.output[0]
        graph.initializer.extend([
            numpy_helper.from_array(table[None, :], f"{p}/table"),
            numpy_helper.from_array(np.array(shift, np.uint32), f"{p}/shift"),
        ])
        for node in (log, mul, to_int):
            graph.node.remove(node)
        # just before the edge lookup that reads the estimate: computed where it is used (placed
        # where the Log was, batch-64 prefill 3% slower than here)
        at, rows = list(graph.node).index(edge), edge.input[1]
        for node in reversed([
            helper.make_node("BitCast", [f], [f"{p}/bits"], to=TensorProto.UINT32, name=f"{p}/bits"),
            helper.make_node("BitShift", [f"{p}/bits", f"{p}/shift"], [f"{p}/cell_u"], direction="RIGHT",
                             name=f"{p}/shift"),
            helper.make_node("BitCast", [f"{p}/cell_u"], [f"{p}/cell"], to=TensorProto.INT32, name=f"{p}/cell"),
            helper.make_node("Reshape", [f"{p}/cell", rows], [f"{p}/cell_rows"], name=f"{p}/cell_rows"),
            helper.make_node("Expand", [f"{p}/table", copies], [f"{p}/tables"], name=f"{p}/tables"),
            helper.make_node("GatherElements", [f"{p}/tables", f"{p}/cell_rows"], [f"{p}/est_rows"], axis=1,
                             name=f"{p}/est_rows"),
            helper.make_node("Shape", [f], [f"{p}/shape"], name=f"{p}/shape"),
            helper.make_node("Reshape", [f"{p}/est_rows", f"{p}/shape"], [est], name=f"{p}/est"),
        ]):
            graph.node.insert(at, node)
    _drop_dead_nodes(graph)
    _toposort(graph)
    _drop_unused_initializers(graph)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = OPSET
    return len(found)


def fused_table(bounds: np.ndarray, shift: int, size: int) -> tuple[int, np.ndarray, np.ndarray] | None:
    """(shift, est, thr) per cell c = bits(float32(m)) >> shift of every int32 m >= 0, and of
    m = -2^31 (|INT32_MIN| wraps in int32: the exported graph's Clip(>= 1) makes it bucket 0),
    such that ``c + (m > thr[c])`` indexes a table ``W[c] = w[est[c]]`` to give
    ``w[#{k: bounds[k] < max(m, 1)}]``, the reference bucket's bias; None where that layout
    cannot hold (a cell with an edge inside whose next cell does not start one bucket up,
    or buckets past the ``size`` of the bias tables).

    One lookup fewer than ``cell_table``'s ``est + (m > bounds[est])``: the edge comparison
    reads its threshold by cell, and its 0/1 moves the bias lookup to the next cell, whose
    lowest bucket is then the one above. ``thr`` is ``INT32_MAX`` in cells without an edge
    and 0 where no int >= 0 lands (|INT32_MIN| - 0 does not overflow)."""
    cells = _cells(bounds, shift)
    if cells is None:
        return None
    bounds, live, ref_lo, ref_hi = cells
    edge = live & (ref_hi > ref_lo)
    if (live & (ref_hi - ref_lo > 1)).any() or np.where(live, ref_hi, 0).max() >= size:
        return None
    est = np.where(live, ref_lo, 0)
    # a cell with an edge inside: its upper part reads the next cell's bias
    nxt = np.append(est[1:], -1)
    if (edge & (nxt != est + 1)).any():
        return None
    thr = np.where(edge, bounds[np.minimum(est, bounds.size - 1)], np.where(live, 2 ** 31 - 1, 0))
    wrap = 0xCF000000 >> shift  # cell of float32(-2^31)
    est_all = np.zeros(wrap + 1, np.int64)
    thr_all = np.zeros(wrap + 1, np.int64)
    est_all[: est.size], thr_all[: thr.size] = est, thr
    return shift, est_all.astype(np.int32), thr_all.astype(np.int32)


def _fuse(graph: Any, p: str, mag: str, reads: list, fused: tuple[int, np.ndarray, np.ndarray]) -> None:
    """Replace the bucket of |Δ| = ``mag`` (int32, before the Clip(>= 1)) and each bias lookup
    in ``reads`` (``lookups``) by ``W[c + Clip(|Δ| - thr[c], 0, 1)]`` with c = |Δ|'s bit cell
    (``fused_table``), in the lookups' own (rows, rest) view."""
    from onnx import TensorProto, helper, numpy_helper

    shift, est, thr = fused
    rows, copies = reads[0][0].input[1], reads[0][2]
    graph.initializer.extend([
        numpy_helper.from_array(thr[None, :], f"{p}/thr"),
        numpy_helper.from_array(np.array(shift, np.uint32), f"{p}/shift"),
        numpy_helper.from_array(np.array(0, np.int32), f"{p}/zero"),
        numpy_helper.from_array(np.array(1, np.int32), f"{p}/one"),
    ])
    at = list(graph.node).index(reads[0][1])
    nodes = [
        helper.make_node("Cast", [mag], [f"{p}/f"], to=TensorProto.FLOAT, name=f"{p}/f"),
        helper.make_node("BitCast", [f"{p}/f"], [f"{p}/bits"], to=TensorProto.UINT32, name=f"{p}/bits"),
        helper.make_node("BitShift", [f"{p}/bits", f"{p}/shift"], [f"{p}/cell_u"], direction="RIGHT",
                         name=f"{p}/shift"),
        helper.make_node("BitCast", [f"{p}/cell_u"], [f"{p}/cell"], to=TensorProto.INT32, name=f"{p}/cell"),
        helper.make_node("Reshape", [f"{p}/cell", rows], [f"{p}/cell_rows"], name=f"{p}/cell_rows"),
        helper.make_node("Reshape", [mag, rows], [f"{p}/mag_rows"], name=f"{p}/mag_rows"),
        helper.make_node("Expand", [f"{p}/thr", copies], [f"{p}/thrs"], name=f"{p}/thrs"),
        helper.make_node("GatherElements", [f"{p}/thrs", f"{p}/cell_rows"], [f"{p}/thr_rows"], axis=1,
                         name=f"{p}/thr_rows"),
        helper.make_node("Sub", [f"{p}/mag_rows", f"{p}/thr_rows"], [f"{p}/past"], name=f"{p}/past"),
        helper.make_node("Clip", [f"{p}/past", f"{p}/zero", f"{p}/one"], [f"{p}/up"], name=f"{p}/up"),
        helper.make_node("Add", [f"{p}/cell_rows", f"{p}/up"], [f"{p}/index"], name=f"{p}/index"),
    ]
    for node in reversed(nodes):
        graph.node.insert(at, node)
    for j, (_, gather, copies_j, w) in enumerate(reads):  # each layer's lookup where it was
        graph.initializer.append(numpy_helper.from_array(w[est][None, :], f"{p}/w{j}"))
        at = list(graph.node).index(gather)
        graph.node.remove(gather)
        graph.node.insert(at, helper.make_node("GatherElements", [f"{p}/ws{j}", f"{p}/index"], [gather.output[0]],
                                               axis=1, name=f"{p}/bias{j}"))
        graph.node.insert(at, helper.make_node("Expand", [f"{p}/w{j}", copies_j], [f"{p}/ws{j}"], name=f"{p}/ws{j}"))


def _drop_dead_nodes(graph: Any) -> None:
    """Remove nodes none of whose outputs is read (what a rewrite left of the old chain)."""
    outputs = {o.name for o in graph.output}
    while True:
        read = _all_inputs(graph) | outputs
        dead = [n for n in graph.node if not any(o in read for o in n.output if o)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def _toposort(graph: Any) -> None:
    """Order ``graph.node`` so that every node comes after the makers of its inputs, moving as
    little as possible: a node that is early pulls the makers of its inputs up to just before
    it (onnxruntime runs nodes in about this order, and a value made just before it is read is
    still in cache: a wave-by-wave sort made the batch-64 prefill 3% slower)."""
    maker = {o: n for n in graph.node for o in n.output}
    done: set[int] = set()
    ordered: list[Any] = []
    for first in list(graph.node):
        stack, open_ = [first], set()
        while stack:  # depth-first: a node's makers before it (iterative: graphs are deep)
            node = stack[-1]
            if id(node) in done:
                stack.pop()
                continue
            todo = [maker[i] for i in node.input if i in maker and id(maker[i]) not in done]
            if todo and id(node) not in open_:
                open_.add(id(node))
                stack.extend(reversed(todo))
                continue
            if todo:
                raise ValueError("bitcast_time_buckets: the rewritten graph has a cycle")
            stack.pop()
            done.add(id(node))
            ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)


def _drop_unused_initializers(graph: Any) -> None:
    used = _all_inputs(graph) | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
