"""Requests and results as plain data, and the validation every request passes before it runs.

A ``Request`` speaks raw item ids (the ids of the user's data); validation maps them to the
bundle's internal ids and refuses, with a ``DataError`` naming the request (or the JSONL line),
anything the graphs would silently mis-handle: unknown, negative or non-integer ids, empty
histories, missing timestamps or request time for HSTU, timestamps going backwards, and length
mismatches. ``request_from_json`` checks the JSON type of every field first, so that a hostile
line (``"items": null``, an object where a list belongs, a 40-digit user id) is one named error,
never a TypeError deep in the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from genrec.data import ItemMap
from genrec.errors import DataError

__all__ = ["Request", "Result", "request_from_json", "validate_request", "validate_requests"]

INT32_MAX = 2**31 - 1
INT64 = (-(2**63), 2**63 - 1)
SAFE_TIME = 2**62  # |t| below this: int64 differences of two times cannot wrap
FIELDS = ("user_id", "items", "timestamps", "request_time", "exclude", "candidates")


@dataclass
class Request:
    """One user's request, in raw item ids."""

    user_id: Any  # echoed back in the Result
    items: Sequence[int]  # history, oldest first; at least one item
    timestamps: Sequence[int] | None = None  # one per item, non-decreasing; required by HSTU
    request_time: int | None = None  # when the request is made (required by HSTU; else unused)
    exclude: Sequence[int] = ()  # deny list: raw ids never to return
    candidates: Sequence[int] | None = None  # raw ids to score (rank)


@dataclass
class Result:
    """One answer, in request order."""

    user_id: Any
    items: list[int]  # raw ids, best first
    scores: list[float]  # recommend/rank: model scores; generate: log p(item | history, slate so far)
    score: float | None = None  # generate: sum of log-probs / len**length_penalty


@dataclass
class Prepared:
    """A validated request in internal ids (what the loop works on)."""

    user_id: Any
    history: np.ndarray  # (L,) int64 internal ids, oldest first
    times: np.ndarray | None  # (L,) int64 raw timestamps
    request_time: int | None
    exclude: np.ndarray  # int64 internal ids
    candidates: np.ndarray | None
    raw_candidates: list[int] | None = field(default=None, repr=False)


def _show(value: Any, limit: int = 40) -> str:
    """``repr`` of a bad value, cut short: an error line quotes it, and a hostile one can be huge."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _ints(values: Any, name: str, where: str) -> np.ndarray:
    """A list of integers (not bools, not floats) as int64; DataError naming the bad element."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or (values.size and values.dtype.kind not in "iu"):
            raise DataError(f"{where}: {name} must be a flat array of integers, got {values.dtype}")
        return values.astype(np.int64)
    if isinstance(values, (str, bytes, dict)) or not isinstance(values, Sequence):
        raise DataError(f"{where}: {name} must be a list of integers, got {type(values).__name__}")
    if set(map(type, values)) <= {int}:  # fast path (bool is not int here): one C-level pass
        try:
            return np.asarray(values, dtype=np.int64).reshape(-1)
        except OverflowError:
            raise DataError(f"{where}: {name} holds an integer too large for int64") from None
    for i, v in enumerate(values):  # slow path: find the element to name in the error
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise DataError(f"{where}: {name}[{i}] is {_show(v)}, not an integer")
    try:
        return np.asarray(values, dtype=np.int64).reshape(-1)
    except OverflowError:
        raise DataError(f"{where}: {name} holds an integer too large for int64") from None


def _item_ids(values: Any, name: str, where: str, item_map: ItemMap) -> np.ndarray:
    if isinstance(values, (list, tuple)) and not values:  # the usual empty deny list: no lookup
        return np.zeros(0, dtype=np.int64)
    raw = _ints(values, name, where)
    if raw.size and raw.min() < 0:
        raise DataError(f"{where}: {name} has a negative item id {int(raw[raw < 0][0])}")
    try:
        return item_map.to_internal(raw)  # one lookup; the message is rebuilt only on failure
    except DataError:
        bad = np.unique(raw[~item_map.known(raw)])
        more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
        raise DataError(f"{where}: unknown item id {int(bad[0])}{more} in {name}: not in the "
                        f"bundle's catalogue of {item_map.num_items} items") from None


def _int(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{where}: {name} is {_show(value)}, not an integer")
    if not INT64[0] <= value <= INT64[1]:
        raise DataError(f"{where}: {name} {_show(value)} is too large for int64")
    return int(value)


def _backwards(times: np.ndarray) -> int | None:
    """Index of the first timestamp earlier than the one before it (compared, not subtracted:
    a difference of two extreme int64 values wraps around)."""
    back = np.flatnonzero(times[1:] < times[:-1])
    return int(back[0]) + 1 if back.size else None


def validate_request(req: Request, item_map: ItemMap, needs_timestamps: bool, where: str,
                     max_history: int | None = None, need_candidates: bool = False) -> Prepared:
    """Check ``req`` and map it to internal ids; DataError starting with ``where`` otherwise."""
    history = _item_ids(req.items, "items", where, item_map)
    if history.size == 0:
        raise DataError(f"{where}: empty history (items is []); send at least one item")
    times = request_time = None
    if req.timestamps is not None:
        times = _ints(req.timestamps, "timestamps", where)
        if times.size != history.size:
            raise DataError(f"{where}: {history.size} items but {times.size} timestamps")
        i = _backwards(times)
        if i is not None:
            raise DataError(f"{where}: timestamps go backwards at index {i} "
                            f"({int(times[i])} after {int(times[i - 1])}); send them oldest first")
    elif needs_timestamps:
        raise DataError(f"{where}: timestamps are required by this model (hstu): "
                        "one per item, oldest first")
    if req.request_time is not None:
        request_time = _int(req.request_time, "request_time", where)
        if times is not None and request_time < times[-1]:
            raise DataError(f"{where}: request_time {request_time} is before the last history "
                            f"timestamp {int(times[-1])}")
    elif needs_timestamps:  # a silent default (the last timestamp) would change the scores
        raise DataError(f"{where}: request_time is required by this model (hstu): the time of the "
                        "request, at or after the last timestamp")
    elif times is not None:
        request_time = int(times[-1])
    if needs_timestamps and times is not None:
        first = int(times[-max_history:][0] if max_history else times[0])
        if request_time - first > INT32_MAX:
            raise DataError(f"{where}: timestamps span {request_time - first} units, more than "
                            "int32 holds; send seconds, not milliseconds or finer")
    exclude = _item_ids(req.exclude if req.exclude is not None else (), "exclude", where, item_map)
    candidates = raw_candidates = None
    if req.candidates is not None:
        candidates = _item_ids(req.candidates, "candidates", where, item_map)
        raw_candidates = [int(c) for c in req.candidates]
    elif need_candidates:
        raise DataError(f"{where}: no candidates to rank; add a \"candidates\" list of item ids")
    return Prepared(req.user_id, history, times, request_time, exclude, candidates, raw_candidates)


def validate_requests(reqs: Sequence[Request], item_map: ItemMap, needs_timestamps: bool,
                      where: Callable[[int], str], max_history: int | None = None,
                      need_candidates: bool = False) -> list[Prepared]:
    """``validate_request`` for a batch: the same checks, results and messages (``where(i)``
    names request i), with the id lookups and the time-order checks done once over the whole
    batch. Per-request numpy calls were most of ``recommend``'s host time at batch 64; when the
    batch check finds anything wrong, the requests are validated one by one, which raises the
    first error in request order with its usual message."""
    try:
        rows = _validate_batch(reqs, item_map, needs_timestamps, max_history, need_candidates)
    except (DataError, OverflowError):  # the one-by-one pass below names the request
        rows = None
    if rows is not None:
        return rows
    return [validate_request(r, item_map, needs_timestamps, where(i), max_history, need_candidates)
            for i, r in enumerate(reqs)]


_NONE = np.zeros(0, dtype=np.int64)


def cut(flat: np.ndarray, sizes: Sequence[int] | np.ndarray) -> list[np.ndarray]:
    """``flat`` cut into consecutive views of ``sizes`` (``np.split`` without its per-piece
    overhead, which was a third of validating a batch of 64)."""
    ends = np.cumsum(sizes).tolist()
    return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends)]


def _ints_many(seqs: list, name: str) -> list[np.ndarray]:
    """``_ints`` of each sequence; lists of plain ints (what JSON gives) in one conversion."""
    if all(type(v) is list for v in seqs):
        flat = list(chain.from_iterable(seqs))
        if set(map(type, flat)) <= {int}:
            sizes = np.fromiter(map(len, seqs), np.int64, len(seqs))
            return cut(np.array(flat, dtype=np.int64), sizes)
    return [_ints(v, name, "") for v in seqs]


def _validate_batch(reqs: Sequence[Request], item_map: ItemMap, needs_timestamps: bool,
                    max_history: int | None, need_candidates: bool) -> list[Prepared] | None:
    """The batch form of ``validate_request``: Prepared rows, or None (or a DataError) if any
    request would fail it."""
    if not reqs:
        return []
    hist = _ints_many([r.items for r in reqs], "items")
    excl = [_NONE if r.exclude is None or (isinstance(r.exclude, (list, tuple)) and not r.exclude)
            else _ints(r.exclude, "exclude", "") for r in reqs]
    cand = [None if r.candidates is None else _ints(r.candidates, "candidates", "") for r in reqs]
    sizes = np.fromiter((h.size for h in hist), np.int64, len(hist))
    if not sizes.min() or (need_candidates and any(c is None for c in cand)):
        return None
    parts = hist + excl + [c for c in cand if c is not None]
    flat = np.concatenate(parts)
    if flat.size and flat.min() < 0:
        return None
    internal = cut(item_map.to_internal(flat), [p.size for p in parts])
    n = len(reqs)
    ihist, iexcl, icand = internal[:n], internal[n:2 * n], iter(internal[2 * n:])
    has_times = [r.timestamps is not None for r in reqs]
    times: list[np.ndarray | None] = [None] * n
    rtimes: list[int | None] = [None if r.request_time is None else _int(r.request_time, "", "")
                                for r in reqs]
    if any(has_times):
        if not all(has_times):
            return None
        times = _ints_many([r.timestamps for r in reqs], "timestamps")
        if any(t.size != h.size for t, h in zip(times, hist)):
            return None
        flat_t = np.concatenate(times)
        ends = np.cumsum(sizes)
        if needs_timestamps and any(t is None for t in rtimes):
            return None
        if flat_t.size and (flat_t.min() <= -SAFE_TIME or flat_t.max() >= SAFE_TIME):
            return None  # differences could wrap; the one-by-one pass compares exactly
        down = flat_t[1:] < flat_t[:-1]
        down[ends[:-1] - 1] = False  # one request's last time against the next one's first
        last = flat_t[ends - 1]
        given = np.array([last[i] if t is None else t for i, t in enumerate(rtimes)], dtype=np.int64)
        if down.any() or (given < last).any() or (given >= SAFE_TIME).any():
            return None
        if needs_timestamps:
            starts = ends - np.minimum(sizes, max_history) if max_history else ends - sizes
            if (given - flat_t[starts] > INT32_MAX).any():
                return None
        rtimes = given.tolist()
    elif needs_timestamps:
        return None
    return [Prepared(r.user_id, h, t, rt, e, None if c is None else next(icand),
                     None if c is None else c.tolist())
            for r, h, t, rt, e, c in zip(reqs, ihist, times, rtimes, iexcl, cand)]


_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", float: "a number",
               int: "an integer", type(None): "null"}
LISTS = ("items", "timestamps", "exclude", "candidates")


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def request_from_json(obj: Any, where: str) -> Request:
    """A decoded JSON object -> Request; DataError for a non-object, missing or unknown keys, and
    a field of the wrong JSON type (the elements of lists are checked by ``validate_request``).

    ``user_id`` is a string or an int64 (it is echoed back, and a consumer must be able to read
    it); ``items`` a list; ``timestamps``, ``exclude``, ``candidates`` a list or null (absent);
    ``request_time`` an integer or null.
    """
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        shown = ", ".join(_show(k, 30) for k in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise DataError(f"{where}: unknown field(s) {shown}; a request has {', '.join(FIELDS)}")
    for key in ("user_id", "items"):
        if key not in obj:
            raise DataError(f"{where}: missing {key!r}")
    uid = obj["user_id"]
    if isinstance(uid, bool) or not isinstance(uid, (str, int)):
        raise DataError(f"{where}: user_id is {_json_type(uid)}; send a string or an integer")
    if isinstance(uid, int) and not INT64[0] <= uid <= INT64[1]:
        raise DataError(f"{where}: user_id {_show(uid)} is too large for int64; send it as a string")
    for key in LISTS:
        value = obj.get(key)
        if not isinstance(value, list) and (value is not None or key == "items"):
            raise DataError(f"{where}: {key} is {_json_type(value)}; send a list of integers")
    rt = obj.get("request_time")
    if rt is not None and (isinstance(rt, bool) or not isinstance(rt, int)):
        raise DataError(f"{where}: request_time is {_json_type(rt)} {_show(rt)}; send an integer "
                        "(unix seconds)")
    return Request(**{k: obj[k] for k in FIELDS if k in obj and (obj[k] is not None or k == "user_id")})
