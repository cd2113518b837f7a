"""Accuracy parity between two backends: tensor, list and task level (ARCHITECTURE.md §7).

Run, then judge (Polygraphy's Comparator.run / compare_accuracy): the same real held-out
requests go through a reference and a candidate backend, and

- tensor level: every graph call is compared, per graph and per step: prefill, each step of
  a greedy slate (both fed the *reference's* choice, so inputs stay identical while each
  backend carries its own cache), and rank. Max abs / max rel error and the worst row's
  cosine of ``user_emb``; max abs error of ``topk_scores`` and ``log_z``;
- list level: top-k exact-match rate and overlap@k of ``recommend``; slates identical rate and
  the first divergent step of ``generate`` (each backend decoding on its own);
- task level: HR@10, NDCG@10 and MRR (within the top K') of the held-out next item, for both,
  and the deltas.

Thresholds depend on the candidate's precision (fp32 strict; fp16 and int8 judged by list-
and task-level deltas). A breach is reported with the worst users and steps by name.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from genrec.errors import ConfigError
from genrec.inputs import tile_history
from genrec.metrics import ranking_metrics

from .base import Backend, StepOutput
from .decoding import SearchParams, Stepper, chunks, generate, prepare, recommend
from .requests import Request

TASK_K = 10


# --------------------------------------------------------------------------------------------
# thresholds


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail limits; ``None`` = reported, not gated."""

    user_emb_max_abs: float | None = 1e-4  # tensor level, every graph and step
    topk_scores_max_abs: float | None = 1e-4
    log_z_max_abs: float | None = 1e-3
    rank_scores_max_abs: float | None = 1e-4
    cosine_min: float | None = 0.9999  # worst row's cosine of user_emb
    topk_exact_min: float | None = 0.99  # share of users whose top-k lists are identical
    overlap_min: float | None = 0.99  # mean |A ∩ B| / k
    slates_equal_min: float | None = 0.98  # share of users whose generated slates are identical
    metric_delta_max: float | None = 0.005  # |Δ| of HR@10, NDCG@10 and MRR

    @classmethod
    def for_precision(cls, precision: str, overrides: dict[str, Any] | None = None) -> "Thresholds":
        """Defaults for ``precision``, updated from ``overrides``: either flat keys, or one
        section per precision (``{"fp16": {...}, "int8": {...}}``)."""
        base = DEFAULTS.get(precision)
        if base is None:
            raise ConfigError(f"no parity thresholds for precision {precision!r}; known: {', '.join(DEFAULTS)}")
        overrides = overrides or {}
        section = overrides.get(precision, overrides.get(precision.split("-")[0]))  # "int8" covers both
        flat = section if isinstance(section, dict) else {k: v for k, v in overrides.items() if k not in DEFAULTS}
        known = {f.name for f in fields(cls)}
        bad = sorted(set(flat) - known)
        if bad:
            raise ConfigError(f"unknown threshold(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        return cls(**{**asdict(base), **flat})


DEFAULTS = {
    "fp32": Thresholds(),
    "fp16": Thresholds(user_emb_max_abs=None, topk_scores_max_abs=None, log_z_max_abs=None,
                       rank_scores_max_abs=None, cosine_min=0.999, topk_exact_min=None,
                       overlap_min=0.9, slates_equal_min=None, metric_delta_max=0.01),
    "int8": Thresholds(user_emb_max_abs=None, topk_scores_max_abs=None, log_z_max_abs=None,
                       rank_scores_max_abs=None, cosine_min=0.98, topk_exact_min=None,
                       overlap_min=0.8, slates_equal_min=None, metric_delta_max=0.02),
}
# the variants `genrec quantize` writes are judged like their family (int8: weights and
# activations both quantised or not, the list- and task-level limits are the same)
DEFAULTS["int8-dynamic"] = DEFAULTS["int8-static"] = DEFAULTS["int8"]
DEFAULTS["mixed"] = DEFAULTS["fp16"]  # Ascend's mixed precision mode: fp16 where ATC allows it


# --------------------------------------------------------------------------------------------
# comparators (pure functions: what the tests check against hand computations)


@dataclass
class TensorStats:
    max_abs: float = 0.0
    max_rel: float = 0.0
    cosine_min: float = 1.0
    worst_user: Any = None  # user with the largest abs error

    def add(self, ref: np.ndarray, cand: np.ndarray, users: list[Any]) -> None:
        """Fold in a (B, ...) pair; -inf entries (excluded ids) must match exactly."""
        ref, cand = np.asarray(ref, np.float64), np.asarray(cand, np.float64)
        ref2, cand2 = ref.reshape(len(ref), -1), cand.reshape(len(cand), -1)
        finite = np.isfinite(ref2) & np.isfinite(cand2)
        with np.errstate(invalid="ignore"):  # inf - inf where both are masked
            diff = np.where(finite, np.abs(ref2 - cand2), 0.0)
        diff = np.where(np.isfinite(ref2) == np.isfinite(cand2), diff, np.inf)
        rel = diff / np.maximum(np.abs(np.where(finite, ref2, 1.0)), 1e-12)
        row_abs = diff.max(axis=1)
        if row_abs.size and row_abs.max() >= self.max_abs and (row_abs.max() > 0 or self.worst_user is None):
            self.worst_user = users[int(row_abs.argmax())]
        self.max_abs = max(self.max_abs, float(row_abs.max(initial=0.0)))
        self.max_rel = max(self.max_rel, float(rel.max(initial=0.0)))
        if ref.ndim == 2 and np.all(finite):
            cos = cosine_rows(ref, cand)
            self.cosine_min = min(self.cosine_min, float(cos.min(initial=1.0)))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (1.0 for two zero rows)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)


def list_agreement(ref: list[list[int]], cand: list[list[int]], k: int) -> dict[str, float]:
    """Exact-match rate of the top-k lists and mean overlap@k = |A ∩ B| / k."""
    exact = [a[:k] == b[:k] for a, b in zip(ref, cand)]
    overlap = [len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ref, cand)]
    return {"exact_match": float(np.mean(exact)), f"overlap@{k}": float(np.mean(overlap))}


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """1-based step where two slates first differ, None if identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i + 1
    return None if len(a) == len(b) else min(len(a), len(b)) + 1


def task_metrics(lists: list[list[int]], targets: list[int], k: int = TASK_K) -> dict[str, float]:
    """HR@k, NDCG@k and MRR of each target within its list (rank past the list's end = miss)."""
    return ranking_metrics([lst.index(t) + 1 if t in lst else math.inf for lst, t in zip(lists, targets)], (k,))


# --------------------------------------------------------------------------------------------
# requests from held-out data


@dataclass
class ParityRequests:
    requests: list[Request]
    targets: list[int]  # raw held-out item per request (None for synthetic edge cases)
    natural: int  # the first ``natural`` requests are real held-out histories (task level)
    source: str


def requests_from_data(path: str | Path, id_map: list[int], users: int, max_history: int, seed: int = 0,
                       with_time: bool = True) -> ParityRequests:
    """Held-out histories (leave-one-out test split) of ``users`` users, plus edge cases: a few
    histories cut to length 1 and a few lengthened past T by repeating them."""
    from genrec.data import ItemMap, leave_one_out, read_sequences

    item_map = ItemMap.from_list(id_map)
    ex = leave_one_out(read_sequences(path, item_map=item_map)).sample(users, seed=seed).examples("test")
    reqs, targets = [], []
    for i, hist in enumerate(ex.histories):
        ts = ex.history_times[i].tolist() if ex.history_times is not None else None
        rt = int(ex.target_times[i]) if ex.target_times is not None else None
        reqs.append(Request(ex.users[i], item_map.to_raw(hist).tolist(), ts, rt))
        targets.append(int(item_map.to_raw(np.array([ex.targets[i]]))[0]))
    natural = len(reqs)
    edge = max(2, natural // 20)
    for r in reqs[:edge]:  # length 1
        reqs.append(Request(f"{r.user_id}#len1", r.items[-1:], r.timestamps[-1:] if r.timestamps else None,
                            r.request_time))
    for r in reqs[:edge]:  # longer than T
        items, ts = tile_history(np.asarray(r.items), None if r.timestamps is None else np.asarray(r.timestamps),
                                 max_history + 5)
        ts_list = None if ts is None else ts.tolist()
        reqs.append(Request(f"{r.user_id}#long", items.tolist(), ts_list, (ts_list[-1] + 3600) if ts_list else None))
    return ParityRequests(reqs, targets + [None] * (len(reqs) - natural), natural, f"{path} ({natural} held-out users)")


# --------------------------------------------------------------------------------------------
# tensor level: both backends step by step on identical inputs


@dataclass
class TensorTrace:
    per_call: dict[str, dict[str, TensorStats]] = field(default_factory=dict)

    def stats(self, call: str, name: str) -> TensorStats:
        return self.per_call.setdefault(call, {}).setdefault(name, TensorStats())

    def compare(self, call: str, ref: StepOutput, cand: StepOutput, users: list[Any]) -> None:
        n = len(users)
        if ref.user_emb is not None and cand.user_emb is not None:
            self.stats(call, "user_emb").add(ref.user_emb[:n], cand.user_emb[:n], users)
        self.stats(call, "topk_scores").add(ref.topk_scores[:n], cand.topk_scores[:n], users)
        self.stats(call, "log_z").add(ref.log_z[:n, None], cand.log_z[:n, None], users)


def trace_tensors(ref: Backend, cand: Backend, requests: list[Request], steps: int, seed: int = 0) -> TensorTrace:
    """Both backends call by call on identical inputs: the loop's own ``Stepper`` for each,
    the reference's exact greedy choice appended to both, every graph output compared."""
    trace = TensorTrace()
    rows = prepare(ref, requests)
    rng = np.random.default_rng(seed)
    m = ref.dims.rank_candidates
    for start, chunk in chunks(ref, rows, None):
        users, n = [r.user_id for r in chunk], len(chunk)
        rs, cs = Stepper(ref, chunk, start=start), Stepper(cand, chunk, start=start)
        out = rs.prefill()
        cs.prefill()
        trace.compare("prefill", rs.raw, cs.raw, users)
        block = rng.integers(1, ref.dims.num_items + 1, (n, m))
        trace.stats("rank", "scores").add(rs.rank(block), cs.rank(block), users)
        for s in range(steps):
            if not np.isfinite(out.topk_scores[:n, 0]).all():  # a row ran out of items
                break
            items = out.topk_ids[:n, 0]  # the reference's own greedy choice
            out = rs.step(items)
            cs.step(items)
            trace.compare(f"step {s + 1}", rs.raw, cs.raw, users)
    return trace


# --------------------------------------------------------------------------------------------
# the whole comparison


def source_breaches(ref: Backend, cand: Backend) -> list[str]:
    """Where the candidate's id map or sizes differ from the reference's own.

    The torch reference reads what the model is (arch, N, d, temperature, its id map) from
    model.pt, not from the manifest the candidate serves with; a candidate whose manifest was
    edited to agree with itself still disagrees with the source here, and fails the gate
    without a single request run."""
    out = []
    a, b = ref.item_map.to_list(), cand.item_map.to_list()
    if a != b:
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        out.append(f"id map: the candidate's differs from the reference's ({len(b)} vs {len(a)} ids, first "
                   f"difference at internal id {at + 1})")
    for f in fields(ref.dims):
        x, y = getattr(ref.dims, f.name), getattr(cand.dims, f.name)
        if x != y:
            out.append(f"dims: the candidate serves with {f.name}={y!r}, the reference with {x!r}")
    return out


def run_parity(ref: Backend, cand: Backend, reqs: ParityRequests, *, steps: int = 5, beams: int = 1,
               k: int = TASK_K, thresholds: Thresholds | None = None, seed: int = 0) -> dict[str, Any]:
    """Run both backends and judge; returns the report (``report["passed"]``)."""
    thresholds = thresholds or Thresholds()
    mismatch = source_breaches(ref, cand)
    if mismatch:  # comparing outputs of different models or maps would be meaningless
        return {"reference": ref.name, "candidate": cand.name, "data": reqs.source, "requests": 0,
                "thresholds": asdict(thresholds), "breaches": mismatch, "passed": False}
    steps = min(steps, ref.dims.capacity - ref.dims.max_history)
    trace = trace_tensors(ref, cand, reqs.requests, steps, seed)
    list_k = max(k, min(ref.dims.topk, 100))  # long lists for MRR (exact for any history length)
    rec_ref = recommend(ref, reqs.requests, k=list_k)
    rec_cand = recommend(cand, reqs.requests, k=list_k)
    ref_lists, cand_lists = [r.items for r in rec_ref], [r.items for r in rec_cand]
    params = SearchParams("beam", num_beams=beams) if beams > 1 else SearchParams("greedy")
    gen_ref = generate(ref, reqs.requests, steps, params)
    gen_cand = generate(cand, reqs.requests, steps, params)
    divergence = [first_divergence(a.items, b.items) for a, b in zip(gen_ref, gen_cand)]
    n = reqs.natural
    task_ref = task_metrics(ref_lists[:n], reqs.targets[:n], k)
    task_cand = task_metrics(cand_lists[:n], reqs.targets[:n], k)
    report: dict[str, Any] = {
        "reference": ref.name, "candidate": cand.name, "data": reqs.source, "requests": len(reqs.requests),
        "steps": steps, "beams": beams, "thresholds": asdict(thresholds),
        "tensor": {call: {name: asdict(st) for name, st in per.items()} for call, per in trace.per_call.items()},
        "list": {**list_agreement(ref_lists, cand_lists, k),
                 "slates_equal": float(np.mean([d is None for d in divergence])),
                 "first_divergent_step": min((d for d in divergence if d is not None), default=None),
                 "divergent_users": [{"user": reqs.requests[i].user_id, "step": d}
                                     for i, d in enumerate(divergence) if d is not None][:20]},
        "task": {"reference": task_ref, "candidate": task_cand,
                 "delta": {m: task_cand[m] - task_ref[m] for m in task_ref}, "users": n,
                 "note": f"MRR counts ranks within the top {list_k}"},
    }
    report["breaches"] = judge(report, trace, thresholds)
    report["passed"] = not report["breaches"]
    return report


# compared tensor -> its max-abs-error threshold; list-level figure -> (threshold, label)
TENSOR_LIMITS = {"user_emb": "user_emb_max_abs", "topk_scores": "topk_scores_max_abs",
                 "log_z": "log_z_max_abs", "scores": "rank_scores_max_abs"}
LIST_LIMITS = {"exact_match": ("topk_exact_min", "topk exact-match rate"),
               f"overlap@{TASK_K}": ("overlap_min", f"overlap@{TASK_K}"),
               "slates_equal": ("slates_equal_min", "slates identical rate")}


def judge(report: dict[str, Any], trace: TensorTrace, th: Thresholds) -> list[str]:
    """Human-readable breaches, each naming the worst call (graph/step) and user."""
    out = []
    for call, per in trace.per_call.items():
        for name, st in per.items():
            limit = getattr(th, TENSOR_LIMITS[name]) if name in TENSOR_LIMITS else None
            if limit is not None and st.max_abs > limit:
                out.append(f"{call}: {name} max abs error {st.max_abs:.3g} > {limit:g} (worst user {st.worst_user})")
            if name == "user_emb" and th.cosine_min is not None and st.cosine_min < th.cosine_min:
                out.append(f"{call}: user_emb cosine {st.cosine_min:.6f} < {th.cosine_min} (worst user {st.worst_user})")
    lst = report["list"]
    checks = [(what, lst[key], getattr(th, attr)) for key, (attr, what) in LIST_LIMITS.items()]
    for what, value, limit in checks:
        if limit is not None and value < limit:
            extra = ""
            if what.startswith("slates") and lst["first_divergent_step"] is not None:
                first = ", ".join(f"{d['user']} at step {d['step']}" for d in lst["divergent_users"][:5])
                extra = f"; first divergent step {lst['first_divergent_step']} ({first})"
            out.append(f"{what} {value:.4f} < {limit}{extra}")
    if th.metric_delta_max is not None:
        for m, d in report["task"]["delta"].items():
            if abs(d) > th.metric_delta_max:
                out.append(f"{m} delta {d:+.4f} exceeds ±{th.metric_delta_max}")
    return out


def load_thresholds(path: str | Path | None, precision: str) -> Thresholds:
    if path is None:
        return Thresholds.for_precision(precision)
    try:
        overrides = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read thresholds ({e})") from None
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: thresholds must be a JSON object")
    return Thresholds.for_precision(precision, overrides)
