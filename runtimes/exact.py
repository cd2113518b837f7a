"""Exact candidates and ``log_z`` for rows whose exclusions overflow the graph's ``exclude_ids``.

A graph masks at most X ids per row (``exclude_ids``); the decoding loop passes the rest of a
row's exclusions (the *overflow*: what a long history or deny list holds beyond X) here, and
``resolve`` turns the graph's output into what the head would have returned with every
exclusion masked in the graph (``score_catalogue`` with an exclude tensor as wide as the whole
list), for the rows that need it:

- **filter** (every overflowing row): drop overflow ids from the row's top-K and move the
  survivors to the front (best first, ``-inf`` / id 0 after them). The survivors are exactly
  the best items of the fully masked catalogue: the graph's top-K is the top-K of a superset
  of it, so no better valid item can be missing ahead of a survivor.
- **correct** ``log_z`` (when the caller needs log-probs): the graph's ``log_z`` still counts
  the overflow items, so their mass is taken out on the host,
  ``log_z' = log_z + log(1 - sum_o exp(s_o / temperature - log_z))``, with ``s_o = user_emb .
  v_o`` scored from the head's item table (``Backend.item_vectors``): |overflow| dot products
  per row, not N. When the overflow held most of the mass the subtraction cancels (the fp32
  ``log_z`` carries ~1e-6 relative error, which ``1 - S`` amplifies by ``1 / (1 - S)``), so a
  row that would keep less than ``MIN_KEPT_MASS`` of it is scored in full instead.
- **host-score** (the slow path): a row whose filtered top-K holds fewer than ``needed``
  survivors (while the graph's top-K was full, i.e. more valid items exist beyond it) is
  scored against the whole catalogue on the host, ``user_emb @ item_vectors.T`` with every
  exclusion masked; its top-K and its ``log_z`` (float64 log-sum-exp) come from there.

Only the rows that need it pay for it: a row without overflow is never touched, and an
overflowing row whose survivors suffice costs an ``isin`` over K ids (plus |overflow| dot
products when ``log_z`` is needed). ``STATS`` counts what happened, for benchmarks.

Every backend's ``StepOutput`` must carry ``user_emb`` for the last two; a backend that does
not cannot answer such rows exactly, and ``resolve`` says so naming the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from genrec.errors import ConfigError

from .base import Backend, StepOutput

__all__ = ["MIN_KEPT_MASS", "STATS", "ExactStats", "host_scores", "resolve"]

# smallest share of the graph's partition function a log_z correction may keep: below it the
# fp32 error of log_z (~1e-6 relative) would grow past ~4e-6 nats, so the row is host-scored
MIN_KEPT_MASS = 0.25
HOST_BLOCK = 1 << 22  # most floats of one (rows x N+1) host score block (16 MiB)
DENSE_KEYS = 1 << 24  # largest (rows x N+1) boolean table the overflow lookup uses (16 MiB)


@dataclass
class ExactStats:
    """Counters of what ``resolve`` did since the last ``reset``: process-wide diagnostics for
    benchmarks (not synchronised: threads sharing a process share and may race on them)."""

    rows: int = 0  # rows resolved (a request's row once per prefill or step)
    overflow_rows: int = 0  # rows with exclusions beyond X (filtered on the host)
    corrected_rows: int = 0  # overflowing rows whose log_z was corrected by the overflow's mass
    host_rows: int = 0  # rows scored over the whole catalogue on the host (the slow path)
    seconds: float = 0.0  # wall time of resolving batches with overflowing rows (host scoring included)
    host_seconds: float = 0.0  # wall time of the host scoring
    slow_requests: set[int] = field(default_factory=set)  # request indices with any host row

    def reset(self) -> None:
        self.__init__()


STATS = ExactStats()


def host_scores(backend: Backend, user_emb: np.ndarray, excl: np.ndarray,
                overflow: list[np.ndarray]) -> np.ndarray:
    """(rows, N+1) float32 scores ``user_emb @ item_vectors.T`` with padding, ``excl`` (the
    graph's exclude_ids rows) and each row's ``overflow`` ids set to -inf: the head's score row
    with every exclusion masked."""
    vectors = backend.item_vectors()
    user_emb = user_emb.astype(np.float32, copy=False)
    scores = np.empty((len(user_emb), len(vectors)), np.float32)
    # one row at a time: a batched sgemm of a few rows lets OpenBLAS split it over threads,
    # which stalled for ~15 ms per call on a busy 2-core machine (100x the work); a single
    # row stays on one thread (~20 us a row at N=8,877, d=32)
    for r, user in enumerate(user_emb):
        np.matmul(user, vectors.T, out=scores[r])
    scores[:, 0] = -np.inf
    rows = np.arange(len(scores))
    scores[rows[:, None], excl] = -np.inf
    for r, extra in enumerate(overflow):
        scores[r, extra] = -np.inf
    return scores


def _top(scores: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``width`` of each row, best first (ties by smaller id); masked entries become
    id 0 / -inf, like a compacted graph row."""
    n = scores.shape[1]
    if width < n:
        part = np.argpartition(-scores, width - 1, axis=1)[:, :width]
    else:
        part = np.broadcast_to(np.arange(n), (len(scores), n))
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    ids, vals = np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)
    ids = np.where(np.isfinite(vals), ids, 0)
    if width > n:  # a catalogue smaller than K: pad like a graph row
        ids = np.pad(ids, ((0, 0), (0, width - n)))
        vals = np.pad(vals, ((0, 0), (0, width - n)), constant_values=-np.inf)
    return ids.astype(np.int64), vals.astype(np.float32)


def _log_z(scores: np.ndarray, temperature: float) -> np.ndarray:
    """float64 log-sum-exp of ``scores / temperature`` per row over its finite entries
    (-inf for a row with none)."""
    logits = scores.astype(np.float64) / temperature
    peak = logits.max(axis=1, keepdims=True)
    safe = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return (np.log(np.exp(logits - safe).sum(axis=1)) + safe[:, 0])


def resolve(backend: Backend, out: StepOutput, excl: np.ndarray, overflow: list[np.ndarray],
            needed: int, with_log_z: bool, index: Callable[[int], int],
            name: Callable[[int], str]) -> StepOutput:
    """The first n = len(overflow) rows of ``out`` as if every exclusion had been masked in the graph.

    ``excl`` (n, X) is what the graph masked, ``overflow[r]`` the rest of row r's exclusions;
    a row needs ``needed`` valid candidates (recommend: k; greedy: 1; beam: its width;
    sampling: the candidates it draws from) and, ``with_log_z``, an exact ``log_z``.
    ``index(r)`` is the request row r belongs to (0-based in the caller's sequence, for
    ``STATS``), ``name(r)`` names it in errors.
    Returns ``out`` itself when no row overflows; otherwise a new StepOutput of n rows whose
    overflowing rows hold their valid candidates first (then id 0 / -inf) and whose ``log_z``
    is float64 (without ``with_log_z`` an overflowing row's ``log_z`` is the graph's, unused).
    """
    n = len(overflow)
    STATS.rows += n
    sizes = np.fromiter((o.size for o in overflow), np.int64, n)
    rows = np.flatnonzero(sizes)
    if not rows.size:
        return out
    STATS.overflow_rows += rows.size
    start = time.perf_counter()
    ids, scores = out.topk_ids[:n].copy(), out.topk_scores[:n].copy()
    log_z = out.log_z[:n].astype(np.float64)
    width, temperature = ids.shape[1], backend.dims.temperature
    # which top-K ids are in their row's overflow: one isin over (row, id) keys for all rows,
    # through a dense table of the keys when it is small (50x faster than sorting them)
    span = backend.dims.num_items + 1
    owner = np.repeat(np.arange(rows.size), sizes[rows])
    hit = np.isin(np.arange(rows.size)[:, None] * span + ids[rows],
                  owner * span + np.concatenate([overflow[r] for r in rows]),
                  kind="table" if rows.size * span <= DENSE_KEYS else "sort")
    finite = np.isfinite(scores[rows])
    keep = finite & ~hit
    m = keep.sum(axis=1)
    to_host = (m < needed) & finite.all(axis=1)  # valid items exist beyond the graph's top-K
    if with_log_z:
        vectors = backend.item_vectors()
        for j in np.flatnonzero(~to_host):
            r = int(rows[j])
            s = vectors[overflow[r]] @ _user_emb(backend, out, r, name)
            kept = 1.0 - float(np.exp(s.astype(np.float64) / temperature - log_z[r]).sum())
            if kept < MIN_KEPT_MASS:  # the overflow held most of the mass: cancellation
                to_host[j] = True
            else:
                log_z[r] += np.log(kept)
                STATS.corrected_rows += 1
    fast = ~to_host  # survivors first, in their order (best first), then id 0 / -inf
    order = np.argsort(~keep[fast], axis=1, kind="stable")
    sub = rows[fast]
    tail = np.arange(width) >= m[fast][:, None]
    ids[sub] = np.where(tail, 0, np.take_along_axis(ids[sub], order, axis=1))
    scores[sub] = np.where(tail, -np.inf, np.take_along_axis(scores[sub], order, axis=1))
    host = rows[to_host].tolist()
    if host:
        t0 = time.perf_counter()
        user = np.stack([_user_emb(backend, out, r, name) for r in host])
        block = max(1, HOST_BLOCK // (backend.dims.num_items + 1))
        for s in range(0, len(host), block):
            part = host[s:s + block]
            sc = host_scores(backend, user[s:s + block], excl[part], [overflow[r] for r in part])
            ids[part], scores[part] = _top(sc, width)
            if with_log_z:
                log_z[part] = _log_z(sc, temperature)
        STATS.host_rows += len(host)
        STATS.host_seconds += time.perf_counter() - t0
        STATS.slow_requests.update(index(r) for r in host)
    STATS.seconds += time.perf_counter() - start
    return StepOutput(ids, scores, log_z, None if out.user_emb is None else out.user_emb[:n])


def _user_emb(backend: Backend, out: StepOutput, r: int, name: Callable[[int], str]) -> np.ndarray:
    if out.user_emb is None:
        raise ConfigError(
            f"{name(r)}: its exclusions exceed the bundle's exclude width "
            f"X={backend.dims.max_exclude}, and the {backend.name} backend returns no user_emb, "
            "which the exact host path scores them with; use a backend that returns it "
            "(torch, onnxruntime) or re-export with a larger --max-exclude")
    return out.user_emb[r]
