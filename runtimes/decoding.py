"""The shared decoding loop: one implementation, numpy on the host, for every backend.

Three entry points over a ``Backend`` (ARCHITECTURE.md §6):

- ``recommend(backend, requests, k)``: top-k after one prefill (classic retrieval);
- ``generate(backend, requests, steps, params)``: autoregressive slates, greedy, beam search
  or sampling, scored with normalised log-probabilities
  ``log p = topk_score / temperature - log_z`` (the head's ``log_z`` covers the whole
  catalogue minus exclusions, so nothing of size ``[B, num_items]`` leaves the device);
- ``rank(backend, requests)``: M-FALCON scores of candidate lists of any length, M at a time.

Batching: requests are taken in order in chunks of at most the largest batch gear, each
padded up to the smallest gear that holds it (padding rows repeat row 0 and are dropped);
histories are right-padded to T keeping the most recent T items (``genrec.inputs``).

Exclusions: an item is never returned if it is in the history, the deny list or (generate)
the slate so far. Up to X of them go to the graph's ``exclude_ids`` (slate first, then deny
list, then the most recent history); the rest (the overflow) are handled on the host by
``exact.resolve``, so that every answer equals the fully masked catalogue's whatever the
history length: overflow ids are filtered from the graph's top-K, generate's ``log_z`` is
corrected by their mass, and a row whose filtered top-K holds too few items (or whose overflow
held most of the mass) is scored over the whole catalogue on the host from ``user_emb`` and
the head's item table. No request is refused for the length of its history or deny list.

Errors about one request raise ``RequestError(message, index)``, ``index`` its 0-based
position in the sequence passed in, the message naming it with ``where(index)`` (default
``request {index + 1}``; the CLI names the JSONL line), so a caller can drop it and rerun the
rest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from genrec.errors import ConfigError, DataError, RequestError

from .base import Backend, StepOutput
from .batching import Where, chunks, exclusions, gear, history_exclusions, pad, prefill_rows
from .exact import resolve
from .requests import Prepared, Request, Result, request_from_json, validate_request, validate_requests
from .stepping import Stepper

__all__ = ["Request", "Result", "SearchParams", "Stepper", "chunks", "generate", "prepare", "rank", "recommend"]

STRATEGIES = ("greedy", "beam", "sample")
OnBatch = Callable[[int, float], None]  # (requests in the batch, seconds it took)


def _request_n(i: int) -> str:
    """The default ``where``: requests counted from 1, like the lines of a file."""
    return f"request {i + 1}"


@dataclass
class SearchParams:
    """How ``generate`` picks each next item."""

    strategy: str = "greedy"  # greedy | beam | sample
    num_beams: int = 4  # beam: hypotheses kept per request
    temperature: float = 1.0  # sample: divides the log-probs before sampling (> 0)
    top_k: int | None = None  # sample: only the k most likely items (None: all K' returned)
    top_p: float | None = None  # sample: smallest set with probability >= top_p (None: off)
    seed: int | None = None  # sample: same seed and requests -> same slates (None: random)
    length_penalty: float = 0.0  # Result.score = sum(log p) / len**length_penalty (0: plain sum)
    allow_repeats: bool = False  # allow history items and repeats within a slate

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        if self.num_beams < 1:
            raise ConfigError(f"num_beams must be >= 1, got {self.num_beams}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature} (use strategy greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


# --------------------------------------------------------------------------------------------
# requests -> validated rows -> padded batches


def prepare(backend: Backend, requests: Sequence[Request | dict], need_candidates: bool = False, *,
            where: Where | None = None) -> list[Prepared]:
    """Validate every request and map it to internal ids.

    The first bad request raises ``RequestError(message, index)``, the message starting with
    ``where(index)`` and its user_id, so that a streaming caller can name its input line and
    skip just that request. ``validate_requests`` (the fast batch check) says which request
    only in its message, so on failure the requests are checked one by one to find the index.
    """
    where = where or _request_n
    d = backend.dims
    reqs: list[Request] = []
    for i, r in enumerate(requests):
        try:
            reqs.append(request_from_json(r, where(i)) if isinstance(r, dict) else r)
        except DataError as e:
            raise (e if isinstance(e, RequestError) else RequestError(str(e), i)) from None
    name = lambda i: f"{where(i)} (user_id {reqs[i].user_id!r})"  # noqa: E731
    try:
        return validate_requests(reqs, backend.item_map, d.needs_timestamps, name, d.max_history,
                                 need_candidates)
    except RequestError:
        raise
    except DataError as e:
        error = e
    for i, r in enumerate(reqs):
        try:
            validate_request(r, backend.item_map, d.needs_timestamps, name(i), d.max_history,
                             need_candidates)
        except DataError as e:
            raise RequestError(str(e), i) from None
    raise error


def _namer(where: Where, start: int, rows: list[Prepared]) -> Callable[[int], str]:
    """Names row i of a chunk starting at request ``start``: ``where`` and its user_id."""
    return lambda i: f"{where(start + i)} (user_id {rows[i].user_id!r})"


def _candidates(out: StepOutput, row: int, temperature: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row ``row``'s valid top-K of a resolved output (``exact.resolve``: every exclusion
    masked): (ids, raw scores, normalised log-probs), best first."""
    keep = np.isfinite(out.topk_scores[row])
    ids, scores = out.topk_ids[row][keep], out.topk_scores[row][keep]
    return ids, scores, scores.astype(np.float64) / temperature - float(out.log_z[row])


def _raw(backend: Backend, ids: np.ndarray) -> list[int]:
    return backend.item_map.to_raw(ids).tolist() if len(ids) else []


def _timed(on_batch: OnBatch | None, n: int, t0: float) -> None:
    if on_batch is not None:
        on_batch(n, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# recommend


def recommend(backend: Backend, requests: Sequence[Request | dict], k: int = 10, *,
              batch_size: int | None = None, on_batch: OnBatch | None = None,
              where: Where | None = None) -> list[Result]:
    """Top-``k`` raw item ids per request after one prefill, history and deny list excluded.

    Exact for any history length (``exact.resolve``). A request whose exclusions leave fewer
    than ``k`` items gets what remains (an empty list if nothing does): a shorter list is
    still the right answer to "the best k", unlike a slate that cannot be completed.
    ``where(i)`` names request i in errors (default ``request {i + 1}``).
    """
    if not 1 <= k <= backend.dims.topk:
        raise ConfigError(f"k={k} must be in 1..{backend.dims.topk} (the bundle's top K')")
    where = where or _request_n
    rows, results = prepare(backend, requests, where=where), []
    for start, chunk in chunks(backend, rows, batch_size):
        t0 = time.perf_counter()
        excl, overflow = exclusions(backend, history_exclusions(chunk))
        b = prefill_rows(backend, chunk, excl)
        n = len(chunk)
        out = resolve(backend, b.out, excl, overflow, k, False, lambda r: start + r,
                      _namer(where, start, chunk))
        ids, scores = out.topk_ids[:n, :k], out.topk_scores[:n, :k]
        keep = np.isfinite(scores)  # resolved rows hold their valid candidates first
        if keep.all():  # the usual case: k valid candidates in every row
            items, values = _raw(backend, ids), scores.tolist()
        else:
            items = [_raw(backend, ids[i][keep[i]]) for i in range(n)]
            values = [scores[i][keep[i]].tolist() for i in range(n)]
        results.extend(Result(r.user_id, it, sc) for r, it, sc in zip(chunk, items, values))
        _timed(on_batch, n, t0)
    return results


# --------------------------------------------------------------------------------------------
# generate


def generate(backend: Backend, requests: Sequence[Request | dict], steps: int,
             params: SearchParams | None = None, *, batch_size: int | None = None,
             on_batch: OnBatch | None = None, where: Where | None = None, first_index: int = 0) -> list[Result]:
    """Slates of ``steps`` raw item ids per request; ``Result.scores`` are per-item log-probs.

    Sampling seeds request i with ``(params.seed, first_index + i)``: a caller that streams a
    file in batches passes the number of requests before each batch, and gets the slates of
    one call on the whole file.

    Exact for any history length: candidates and log-probs are those of the catalogue with
    the history, deny list and slate so far masked (``exact.resolve`` after every prefill and
    step). A request that runs out of items before its slate is full raises
    ``RequestError`` naming it with ``where(i)`` (default ``request {i + 1}``).
    """
    params = params or SearchParams()
    where = where or _request_n
    d = backend.dims
    if not 1 <= steps <= d.capacity - d.max_history:
        raise ConfigError(f"steps={steps} must be in 1..{d.capacity - d.max_history}: the bundle's "
                          f"cache holds C={d.capacity} = T={d.max_history} history + "
                          f"{d.capacity - d.max_history} generated items; re-export with a larger "
                          "max_new_items")
    beam = params.strategy == "beam"
    if beam and params.num_beams > d.step_topk and d.step_topk < d.num_items:
        raise ConfigError(f"num_beams={params.num_beams} exceeds the bundle's step top-K={d.step_topk}; "
                          "re-export with a larger --step-topk")
    rows, results = prepare(backend, requests, where=where), []
    per_request = params.num_beams if beam else 1
    for start, chunk in chunks(backend, rows, batch_size, per_request):
        t0 = time.perf_counter()
        run = _beam_chunk if beam else _greedy_chunk
        slates = run(backend, chunk, start, steps, params, where, first_index)
        raw = backend.item_map.to_raw(np.stack([ids for ids, _ in slates])).tolist()  # one lookup
        for r, items, (_, logps) in zip(chunk, raw, slates):
            total = float(np.sum(logps)) / max(len(logps), 1) ** params.length_penalty
            results.append(Result(r.user_id, items, logps.tolist(), total))
        _timed(on_batch, len(chunk), t0)
    return results


def _sample(logps: np.ndarray, params: SearchParams, rng: np.random.Generator) -> int:
    """Index into ``logps`` (sorted best first) drawn with temperature, top-k and top-p."""
    logits = logps / params.temperature
    if params.top_k is not None:
        logits = logits[:params.top_k]
    p = np.exp(logits - logits.max())
    cum = np.cumsum(p / p.sum())
    if params.top_p is not None and params.top_p < 1:
        cum = cum[:int(np.searchsorted(cum, params.top_p)) + 1]
    return min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), cum.size - 1)


def _no_items(name: str, index: int, s: int) -> RequestError:
    return RequestError(f"{name}: no item left to recommend at step {s + 1} (the catalogue "
                        "is exhausted by the history, deny list and slate)", index)


def _greedy_chunk(backend: Backend, rows: list[Prepared], start: int, steps: int,
                  params: SearchParams, where: Where, first_index: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Greedy or sampled slates of one chunk: one cache row per request (a ``Stepper``)."""
    d, n = backend.dims, len(rows)
    rngs = ([np.random.default_rng(np.random.SeedSequence(params.seed, spawn_key=(first_index + start + i,)))
             for i in range(n)] if params.strategy == "sample" else [])
    slates = np.zeros((n, steps), np.int64)
    logps = np.zeros((n, steps))
    stepper = Stepper(backend, rows, start=start, where=where, allow_repeats=params.allow_repeats)
    for s in range(steps):
        # greedy needs the best valid item; sampling the whole candidate list it draws from
        width = d.step_topk if s else d.topk
        needed = 1 if params.strategy == "greedy" else min(params.top_k or width, width)
        out = stepper.step(slates[:, s - 1], needed) if s else stepper.prefill(needed)
        if params.strategy == "greedy":  # the best valid candidate of every row at once
            best = out.topk_scores[:n, 0]
            found = np.isfinite(best)
            if not found.all():
                i = int(np.argmin(found))
                raise _no_items(stepper.name(i), start + i, s)
            slates[:, s] = out.topk_ids[:n, 0]
            logps[:, s] = best.astype(np.float64) / d.temperature - out.log_z[:n].astype(np.float64)
            continue
        for i in range(n):
            ids, _, lp = _candidates(out, i, d.temperature)
            if not ids.size:
                raise _no_items(stepper.name(i), start + i, s)
            j = _sample(lp, params, rngs[i])
            slates[i, s], logps[i, s] = ids[j], lp[j]
    return list(zip(slates, logps))


def _beam_chunk(backend: Backend, rows: list[Prepared], start: int, steps: int,
                params: SearchParams, where: Where, first_index: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Beam search: W hypotheses per request, one cache row each, reordered after every step.

    Each hypothesis needs its W best valid continuations (the W best slates of the next
    length are among them), so ``exact.resolve`` is asked for W per row."""
    d, n, w = backend.dims, len(rows), params.num_beams
    base = history_exclusions(rows, not params.allow_repeats)
    items = np.zeros((n, w, steps), np.int64)  # slate of every hypothesis
    logps = np.zeros((n, w, steps))  # log p of each of its items
    score = np.full((n, w), -np.inf)  # sum of log p; -inf = no hypothesis in this slot
    name = _namer(where, start, rows)
    excl, overflow = exclusions(backend, base)
    b = prefill_rows(backend, rows, excl)
    out = resolve(backend, b.out, excl, overflow, w, True, lambda r: start + r, name)
    for i in range(n):
        ids, _, lp = _candidates(out, i, d.temperature)
        if not ids.size:
            raise _no_items(name(i), start + i, 0)
        m = min(w, ids.size)
        items[i, :, 0], items[i, :m, 0], logps[i, :m, 0], score[i, :m] = ids[0], ids[:m], lp[:m], lp[:m]
    g = gear(backend, n * w)  # one cache row per hypothesis from here on
    lengths = np.repeat(b.lengths, w)
    req = None if b.request_time is None else np.repeat(b.request_time, w)
    base_rows = [base[i] for i in range(n) for _ in range(w)]
    row_name, row_index = lambda r: name(r // w), lambda r: start + r // w
    if steps > 1:
        backend.reorder(b.state, pad(np.repeat(np.arange(n), w), g))
    for s in range(1, steps):
        flat = items.reshape(n * w, steps)
        lists = base_rows if params.allow_repeats else [
            np.concatenate([flat[r, :s][::-1], base_rows[r]]) for r in range(n * w)]
        excl, overflow = exclusions(backend, lists)
        out = backend.step(b.state, pad(flat[:, s - 1], g), pad(lengths + s - 1, g),
                           pad(req, g), pad(excl, g))
        # dead slots (score -inf) copy the best hypothesis and are skipped below
        out = resolve(backend, out, excl, overflow, w, True, row_index, row_name)
        parents = np.zeros((n, w), np.int64)
        k = out.topk_ids.shape[1]  # the step graph's K
        for i in range(n):
            total = np.full((w, k), -np.inf)
            cand, cand_lp = np.zeros((w, k), np.int64), np.zeros((w, k))
            for h in range(w):
                if np.isfinite(score[i, h]):
                    ids, _, lp = _candidates(out, i * w + h, d.temperature)
                    total[h, :ids.size], cand[h, :ids.size], cand_lp[h, :ids.size] = score[i, h] + lp, ids, lp
            flat_total = total.ravel()
            best = np.argsort(-flat_total, kind="stable")[:w]  # ties: earlier beam, better rank
            alive = np.isfinite(flat_total[best])
            if not alive[0]:
                raise _no_items(name(i), start + i, s)
            score[i] = np.where(alive, flat_total[best], -np.inf)
            par, j = np.divmod(np.where(alive, best, best[0]), k)  # dead slots copy the best
            items[i], logps[i] = items[i, par], logps[i, par]
            items[i, :, s], logps[i, :, s] = cand[par, j], cand_lp[par, j]
            parents[i] = i * w + par
        if s < steps - 1:
            backend.reorder(b.state, pad(parents.reshape(-1), g))
    top = score.argmax(axis=1)  # all slates have the same length: the penalty cannot reorder
    return [(items[i, top[i]], logps[i, top[i]]) for i in range(n)]


# --------------------------------------------------------------------------------------------
# rank


def rank(backend: Backend, requests: Sequence[Request | dict],
         candidates: Sequence[Sequence[int]] | None = None, *, batch_size: int | None = None,
         on_batch: OnBatch | None = None, where: Where | None = None) -> list[Result]:
    """Score each request's candidates (``candidates[i]`` or ``requests[i].candidates``), best first.

    M-FALCON: the history is prefilled once, then the rank graph scores M candidates at a
    time, each seeing the history and itself only, so every score equals appending that
    candidate alone; the last microbatch is padded with the row's first candidate.
    ``where(i)`` names request i in errors (default ``request {i + 1}``).
    """
    if candidates is not None:
        if len(candidates) != len(requests):
            raise DataError(f"{len(candidates)} candidate lists for {len(requests)} requests")
        requests = [_with_candidates(r, c) for r, c in zip(requests, candidates)]
    rows, results = prepare(backend, requests, need_candidates=True, where=where), []
    m = backend.dims.rank_candidates
    for start, chunk in chunks(backend, rows, batch_size):
        t0 = time.perf_counter()
        b = prefill_rows(backend, chunk, np.zeros((len(chunk), backend.dims.max_exclude), np.int32))
        g = b.state.batch
        scores = [np.zeros(r.candidates.size, np.float32) for r in chunk]
        for j in range(max(math.ceil(r.candidates.size / m) for r in chunk)):
            block = np.ones((len(chunk), m), np.int64)
            for i, r in enumerate(chunk):
                part = r.candidates[j * m:(j + 1) * m]
                block[i] = r.candidates[0] if r.candidates.size else 1
                block[i, :part.size] = part
            out = backend.rank(b.state, pad(block, g), pad(b.lengths, g), pad(b.request_time, g))
            for i, r in enumerate(chunk):
                part = scores[i][j * m:(j + 1) * m]
                part[:] = out[i, :part.size]
        for r, sc in zip(chunk, scores):
            order = np.argsort(-sc, kind="stable")
            results.append(Result(r.user_id, [r.raw_candidates[o] for o in order], sc[order].tolist()))
        _timed(on_batch, len(chunk), t0)
    return results


def _with_candidates(req: Request | dict, cands: Sequence[int]) -> Request | dict:
    if isinstance(req, dict):
        return {**req, "candidates": cands}
    return Request(req.user_id, req.items, req.timestamps, req.request_time, req.exclude, cands)


