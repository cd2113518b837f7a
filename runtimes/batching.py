"""Requests to graph inputs: chunks sized to the batch gears, padding, exclusion lists.

The host side that every entry point of the decoding loop shares (``recommend``,
``generate``, ``rank``, the ``Stepper`` that parity and bench drive), kept in one place so
that serving, the parity gate and the benchmarks build identical inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from genrec.errors import ConfigError
from genrec.inputs import history_feed

from .base import Backend, PrefillBatch, State, StepOutput
from .requests import Prepared, cut

__all__ = ["Prefilled", "chunks", "exclusions", "gear", "history_exclusions", "pad", "prefill_rows", "push"]

DENSE_KEYS = 1 << 22  # largest (rows x id span) table ``exclusions`` dedupes in (32 MiB of int64)
Where = Callable[[int], str]  # names request i (0-based) of the sequence passed in, in errors


def chunks(backend: Backend, rows: list, batch_size: int | None, per_request: int = 1):
    """(index of the first request, requests) in order, at most a gear's worth of rows each."""
    largest = max(backend.batch_gears)
    size = min(batch_size or largest, largest // per_request)  # requests per batch
    if size < 1:
        raise ConfigError(f"{per_request} rows per request do not fit the largest batch gear "
                          f"{largest}; use fewer beams or a bundle with larger gears")
    for start in range(0, len(rows), size):
        yield start, rows[start:start + size]


def gear(backend: Backend, n: int) -> int:
    return next(g for g in sorted(backend.batch_gears) if g >= n)


def pad(a: np.ndarray | None, g: int) -> np.ndarray | None:
    """Pad the batch axis to ``g`` rows by repeating row 0 (valid inputs, results dropped)."""
    if a is None or len(a) == g:
        return a
    return np.concatenate([a, np.repeat(a[:1], g - len(a), axis=0)])


def exclusions(backend: Backend, lists: list[np.ndarray], needed: int = 1, where: Where | None = None,
             k: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-row exclusion lists -> (exclude_ids (n, X) int32, overflow ids per row for the host).

    Each row keeps its ids once, in order of first occurrence,
    the first X in ``exclude_ids`` and the rest as overflow; done for all rows at once: the
    first occurrence of every (row, id) key is found with one ``minimum.at`` into a dense
    (rows x ids) table when that table is small, else with one stable sort of the keys.
    Any overflow is fine (``exact.resolve`` answers such rows exactly); ``needed``, ``where``
    and ``k`` sized the old refusal and are ignored, kept for parity's and bench's calls.
    """
    x, n = backend.dims.max_exclude, len(lists)
    out = np.zeros((n, x), np.int32)
    sizes = np.fromiter((len(ids) for ids in lists), np.int64, n)
    flat = np.concatenate(lists).astype(np.int64, copy=False) if sizes.sum() else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(n), sizes)
    if flat.size:
        low = int(flat.min())
        span = int(flat.max()) - low + 1
        key = rows * span + (flat - low)
        at = np.arange(flat.size)
        if n * span <= DENSE_KEYS:
            first = np.full(n * span, flat.size, np.int64)
            np.minimum.at(first, key, at)  # index of each key's first occurrence
            keep = first[key] == at
        else:
            order = np.argsort(key, kind="stable")  # equal keys keep their order: first occurrence leads
            sorted_key = key[order]
            lead = np.ones(flat.size, bool)
            lead[1:] = sorted_key[1:] != sorted_key[:-1]
            keep = np.zeros(flat.size, bool)
            keep[order[lead]] = True
        flat, rows = flat[keep], rows[keep]
    counts = np.bincount(rows, minlength=n)
    rank = np.arange(flat.size) - (np.cumsum(counts) - counts)[rows]  # index within the row
    inside = rank < x
    out[rows[inside], rank[inside]] = flat[inside]
    extra = np.maximum(counts - x, 0)
    if not extra.any():
        empty = flat[:0]
        return out, [empty] * n
    return out, cut(flat[~inside], extra)


def push(backend: Backend, excl: np.ndarray, overflow: list[np.ndarray], items: np.ndarray
          ) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """``exclusions`` of each row's list with ``items[i]`` put in front, from that row's previous result.

    When the new item is not in the row's list yet (it never is for a slate item: the loop only
    picks valid candidates), the row's ids in order of first occurrence are the item, then the
    old ones: ``exclude_ids`` shifts right by one and the id pushed past X leads the overflow.
    Returns None when an item is already listed (the caller redoes the full ``exclusions``).
    """
    x = backend.dims.max_exclude
    sizes = np.fromiter((o.size for o in overflow), np.int64, len(overflow))
    if not x or (excl == items[:, None]).any() or (
            sizes.any() and (np.concatenate(overflow) == np.repeat(items, sizes)).any()):
        return None
    out = np.empty_like(excl)
    out[:, 0], out[:, 1:] = items, excl[:, :-1]
    dropped = excl[:, -1]  # nonzero: the row already held X ids, its last one overflows now
    full = np.flatnonzero(dropped)
    if not full.size:
        return out, overflow
    overflow = list(overflow)
    for i in full:
        overflow[i] = np.concatenate([dropped[i:i + 1].astype(np.int64), overflow[i]])
    return out, overflow


@dataclass
class Prefilled:
    """One chunk after prefill: the state and per-row step inputs (unpadded)."""

    out: StepOutput
    state: State
    lengths: np.ndarray  # (n,) int32 history length after truncation to T
    request_time: np.ndarray | None  # (n,) int32 rebased request time (HSTU step/rank timestamp)


def prefill_rows(backend: Backend, rows: list[Prepared], exclude: np.ndarray) -> Prefilled:
    d, g = backend.dims, gear(backend, len(rows))
    feed, _base = history_feed(
        [r.history for r in rows], d.max_history,
        [r.times for r in rows] if d.needs_timestamps else None,
        [r.request_time for r in rows] if d.needs_timestamps else None,
        with_time=d.needs_timestamps)
    batch = PrefillBatch(item_ids=pad(feed["item_ids"], g), lengths=pad(feed["lengths"], g),
                         exclude_ids=pad(exclude, g), timestamps=pad(feed.get("timestamps"), g),
                         request_time=pad(feed.get("request_time"), g), validated=True)
    out, state = backend.prefill(batch)
    return Prefilled(out, state, feed["lengths"], feed.get("request_time"))


def history_exclusions(rows: list[Prepared], with_history: bool = True) -> list[np.ndarray]:
    """Deny list first, then the history most recent first (what X keeps when it overflows)."""
    return [np.concatenate([r.exclude, r.history[::-1]]) if with_history else r.exclude for r in rows]
