"""The blocking checks every exported graph passes before a bundle is written.

1. ``onnx.checker`` with ``full_check`` (strict shape inference included);
2. the graph loads in an onnxruntime CPU session;
3. numerics against the torch model on real histories: batch sizes 1, 3 and the largest
   gear, short and full-length histories, prefill followed by ``steps`` incremental steps
   fed with the model's own (greedy) choices, each backend carrying its *own* cache from
   step to step, plus M-FALCON rank on real candidates. Compared: ``user_emb`` and
   ``topk_scores`` (allclose with atol/rtol), ``topk_ids`` exactly up to ties, ``log_z``;
4. (``--target ascend``) the ATC-compatibility lint.

Each check returns a plain dict for the manifest; a failure raises ExportError naming the
graph, the check, the worst input and the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from genrec.errors import ExportError
from genrec.inputs import history_feed, pad_rows, tile_history
from genrec.models import GenerativeRecommender

from .graphs import GraphDims, PrefillGraph, RankGraph, StepGraph

DEFAULT_ATOL = 1e-4  # fp32 vs fp32: errors seen are ~1e-6; 1e-4 leaves room for other CPUs
DEFAULT_RTOL = 1e-3
TIE_TOL = 1e-5  # two scores this close may swap places in top-k


def structural_check(path: Path) -> dict[str, Any]:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # onnx raises ValidationError / InferenceError
        raise ExportError(f"{path.name}: onnx checker failed: {str(e).splitlines()[0][:300]}") from None
    return {"check": "onnx.checker", "graph": path.stem, "passed": True}


def ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"{path.name}: onnxruntime cannot load the graph: {str(e).splitlines()[0][:300]}") from None


@dataclass
class Histories:
    """Histories for the numeric check; ``source`` says where they came from (for the report)."""

    items: list[np.ndarray]
    times: list[np.ndarray] | None
    request_times: np.ndarray | None
    source: str


def random_histories(n: int, num_items: int, max_len: int, seed: int = 0,
                     bucket_config: tuple[int, float] | None = None) -> Histories:
    """Random valid histories for the numeric check when no data is at hand.

    Timestamps are whole seconds, like real ones, and never coarser: a check on rounded
    times would never see a gap on a time-bucket edge, where a backend's Log rounding would
    move HSTU's time bias. A quarter of the gaps sit on purpose on either side of an edge
    of HSTU's buckets (``bucket_config`` = (num_buckets, divisor), default Meta's 128 and
    0.301; edges up to 30 days), so any bucket a graph computes differently from torch shows
    up in the check, most of all with large ``w_ts`` tables. Other backbones ignore times."""
    from genrec.models.hstu import HSTUConfig, bucket_bounds

    rng = np.random.default_rng(seed)
    month = 86400 * 30
    nb, div = bucket_config or (HSTUConfig.num_buckets, HSTUConfig.bucket_divisor)
    last = np.array(bucket_bounds(nb, div)[:-1], dtype=np.int64)  # the last gap of each bucket
    on_edge = np.unique(np.concatenate([last, last + 1]))
    on_edge = on_edge[on_edge < month]
    items = [rng.integers(1, num_items + 1, int(rng.integers(1, max_len + 1))) for _ in range(n)]
    times = []
    for s in items:
        gaps = rng.integers(0, month, len(s))
        pick = rng.random(len(s)) < 0.25
        gaps[pick] = rng.choice(on_edge, int(pick.sum()))
        times.append(np.cumsum(gaps) + 1_300_000_000)
    return Histories(items, times, np.array([t[-1] + 3600 for t in times]), "random valid histories (no --data)")


def full_length(h: Histories, max_len: int) -> Histories:
    """Lengthen real histories past ``max_len`` by repeating them (their own items and time
    gaps, ``genrec.inputs.tile_history``), since real data is often shorter than T."""
    items, times = [], []
    for i, s in enumerate(h.items):
        it, ts = tile_history(s, None if h.times is None else h.times[i], max_len + 3)
        items.append(it)
        times.append(ts)
    req = None if h.times is None else np.array([t[-1] + 3600 for t in times])
    return Histories(items, times if h.times is not None else None, req, h.source + ", tiled past T")


@dataclass
class Worst:
    """Running maximum of one compared quantity, remembering the input that produced it."""

    abs_err: float = 0.0
    rel_err: float = 0.0
    excess: float = 0.0  # max of |a-b| - (atol + rtol|b|); > 0 means a breach
    where: str = ""

    def update(self, got: np.ndarray, ref: np.ndarray, atol: float, rtol: float, where: str) -> None:
        got, ref = got.astype(np.float64), ref.astype(np.float64)
        if np.isnan(ref).any() or np.isnan(got).any():  # NaN == NaN would pass as a match
            self.excess, self.where = float("inf"), where + " (NaN in the output)"
            return
        finite = np.isfinite(ref)
        if not np.array_equal(finite, np.isfinite(got)):
            self.excess, self.where = float("inf"), where + " (inf/nan pattern differs)"
            return
        diff = np.abs(got[finite] - ref[finite])
        if diff.size == 0:
            return
        rel = diff / np.maximum(np.abs(ref[finite]), 1e-12)
        excess = float((diff - (atol + rtol * np.abs(ref[finite]))).max())
        if excess > 0 and excess > self.excess:  # a breach: name the worst breaching input
            self.excess, self.where = excess, where
        elif self.excess <= 0 and float(diff.max()) >= self.abs_err:
            self.where = where
        self.abs_err, self.rel_err = max(self.abs_err, float(diff.max())), max(self.rel_err, float(rel.max()))

    def report(self) -> dict[str, Any]:
        return {"max_abs": self.abs_err, "max_rel": self.rel_err, "worst_input": self.where}


@dataclass
class GraphReport:
    user_emb: Worst = field(default_factory=Worst)
    topk_scores: Worst = field(default_factory=Worst)
    log_z: Worst = field(default_factory=Worst)
    scores: Worst = field(default_factory=Worst)
    ids_compared: int = 0
    ids_mismatched: int = 0  # beyond ties
    id_where: str = ""
    runs: int = 0


def ids_match_up_to_ties(got_ids: np.ndarray, ref_ids: np.ndarray, ref_scores: np.ndarray,
                         tie_tol: float = TIE_TOL) -> np.ndarray:
    """Per-row bool: the two top-k lists are equal except where reference scores tie."""
    ok = np.ones(len(got_ids), dtype=bool)
    for r in np.nonzero((got_ids != ref_ids).any(axis=1))[0]:
        for i in np.nonzero(got_ids[r] != ref_ids[r])[0]:
            same = np.nonzero(ref_ids[r] == got_ids[r, i])[0]
            at_boundary = abs(ref_scores[r, i] - ref_scores[r, -1]) <= tie_tol
            tied = same.size and abs(ref_scores[r, same[0]] - ref_scores[r, i]) <= tie_tol
            if not (tied or at_boundary):
                ok[r] = False
    return ok


def _torch_run(graph: torch.nn.Module, feed: dict[str, np.ndarray], names: list[str]):
    with torch.no_grad():
        out = graph(*(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names))
    out = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in out]


def numeric_check(model: GenerativeRecommender, dims: GraphDims, sessions: dict[str, Any],
                  histories: Histories, gears: list[int], steps: int = 5,
                  atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Check 3: onnxruntime vs torch over prefill + ``steps`` steps + rank; raises ExportError."""
    if steps > dims.capacity - dims.max_history:
        steps = dims.capacity - dims.max_history
    graphs = {"prefill": PrefillGraph(model, dims).eval(), "step": StepGraph(model, dims).eval(),
              "rank": RankGraph(model, dims).eval()}
    reports = {n: GraphReport() for n in graphs}
    full = full_length(histories, dims.max_history)
    rng = np.random.default_rng(0)
    for kind, h in (("short", histories), ("full-length", full)):
        for b in sorted({1, 3, max(gears)}):
            idx = rng.choice(len(h.items), size=b, replace=len(h.items) < b)
            _check_case(model, dims, graphs, sessions, reports, h, idx, steps, atol, rtol,
                        f"batch {b}, {kind} histories")
            if progress:
                progress(f"numerics: batch {b}, {kind} histories")
    result = {"check": "numerics", "data": histories.source, "steps": steps, "atol": atol, "rtol": rtol,
              "batch_sizes": sorted({1, 3, max(gears)}), "graphs": {}}
    for name, rep in reports.items():
        fields = ("user_emb", "topk_scores", "log_z") if name != "rank" else ("scores",)
        entry = {f: getattr(rep, f).report() for f in fields}
        if name != "rank":
            entry["topk_ids_mismatch_rows"] = rep.ids_mismatched
            entry["topk_ids_rows"] = rep.ids_compared
        result["graphs"][name] = entry
        for f in fields:
            w = getattr(rep, f)
            if w.excess > 0:
                raise ExportError(
                    f"{name}.onnx failed the numeric check: {f} max abs error {w.abs_err:.3g}, max rel "
                    f"{w.rel_err:.3g} exceed atol {atol:g} + rtol {rtol:g} (worst input: {w.where})")
        if rep.ids_mismatched:
            raise ExportError(f"{name}.onnx failed the numeric check: topk_ids differ beyond ties in "
                              f"{rep.ids_mismatched}/{rep.ids_compared} rows (first at {rep.id_where})")
    result["passed"] = True
    return result


def _check_case(model, dims, graphs, sessions, reports, h: Histories, idx, steps, atol, rtol, label):
    hist = [h.items[i] for i in idx]
    times = None if h.times is None else [h.times[i] for i in idx]
    req = None if h.request_times is None else h.request_times[idx]
    feed, _ = history_feed(hist, dims.max_history, times, req, with_time=model.needs_timestamps)
    kept = [s[-dims.max_history:] for s in hist]
    excluded = [list(s) for s in kept]
    feed["exclude_ids"] = pad_rows(excluded, dims.max_exclude)

    def compare(name, t_out, o_out, where):
        rep = reports[name]
        rep.runs += 1
        rep.user_emb.update(o_out[0], t_out[0], atol, rtol, where)
        rep.topk_scores.update(o_out[2], t_out[2], atol, rtol, where)
        rep.log_z.update(o_out[3], t_out[3], atol, rtol, where)
        ok = ids_match_up_to_ties(o_out[1], t_out[1], t_out[2])
        rep.ids_compared += len(ok)
        if not ok.all() and not rep.ids_mismatched:
            rep.id_where = where
        rep.ids_mismatched += int((~ok).sum())

    names = graphs["prefill"].input_names()
    t_out = _torch_run(graphs["prefill"], feed, names)
    o_out = sessions["prefill"].run(None, {n: feed[n] for n in names})
    compare("prefill", t_out, o_out, f"{label}, prefill")
    n_cache = len(model.cache_names())
    t_cache, o_cache = t_out[4:4 + n_cache], o_out[4:4 + n_cache]

    # rank: real items as candidates, against each backend's own prefill cache
    cand = rng_candidates(h, len(idx), dims.rank_candidates, model.config.num_items)
    rank_feed = {"candidates": cand, "position": feed["lengths"]}
    if model.needs_timestamps:
        rank_feed["timestamp"] = feed["request_time"]
    past = graphs["step"].input_names()[-n_cache:]
    rnames = graphs["rank"].input_names()
    t_rank = _torch_run(graphs["rank"], {**rank_feed, **dict(zip(past, t_cache))}, rnames)
    o_rank = sessions["rank"].run(None, {**rank_feed, **dict(zip(past, o_cache))})
    reports["rank"].scores.update(o_rank[0], t_rank[0], atol, rtol, f"{label}, rank")

    snames = graphs["step"].input_names()
    position = feed["lengths"].copy()
    for s in range(steps):
        choice = t_out[1][:, 0].astype(np.int32)  # the reference's own greedy choice
        for row, c in zip(excluded, choice):
            row.append(int(c))
        step_feed = {"new_item": choice, "position": position,
                     "exclude_ids": pad_rows(excluded, dims.max_exclude)}
        if model.needs_timestamps:
            step_feed["timestamp"] = feed["request_time"]
        t_out = _torch_run(graphs["step"], {**step_feed, **dict(zip(past, t_cache))}, snames)
        o_out = sessions["step"].run(None, {**step_feed, **dict(zip(past, o_cache))})
        compare("step", t_out, o_out, f"{label}, step {s + 1}")
        t_cache, o_cache = t_out[4:4 + n_cache], o_out[4:4 + n_cache]
        position = position + 1


def rng_candidates(h: Histories, b: int, m: int, num_items: int) -> np.ndarray:
    pool = np.concatenate(h.items)
    rng = np.random.default_rng(1)
    return pool[rng.integers(0, len(pool), (b, m))].astype(np.int32).clip(1, num_items)
