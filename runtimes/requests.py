"""Requests and results as plain data, and the validation every request passes before it runs.

A ``Request`` speaks raw item ids (the ids of the user's data); validation maps them to the
bundle's internal ids and refuses, with a ``DataError`` naming the request (or the JSONL line),
anything the graphs would silently mis-handle: unknown, negative or non-integer ids, empty
histories, missing timestamps for HSTU, timestamps going backwards, and length mismatches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from genrec.data import ItemMap
from genrec.errors import DataError

__all__ = ["Request", "Result", "request_from_json", "validate_request"]

INT32_MAX = 2**31 - 1
FIELDS = ("user_id", "items", "timestamps", "request_time", "exclude", "candidates")


@dataclass
class Request:
    """One user's request, in raw item ids."""

    user_id: Any  # echoed back in the Result
    items: Sequence[int]  # history, oldest first; at least one item
    timestamps: Sequence[int] | None = None  # one per item, non-decreasing; required by HSTU
    request_time: int | None = None  # when the request is made (HSTU); default: last timestamp
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
            raise DataError(f"{where}: {name}[{i}] is {v!r}, not an integer")
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
        raise DataError(f"{where}: {name} is {value!r}, not an integer")
    return int(value)


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
        back = np.flatnonzero(np.diff(times) < 0)
        if back.size:
            i = int(back[0]) + 1
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


def request_from_json(obj: Any, where: str) -> Request:
    """A decoded JSON object -> Request; DataError for a non-object, missing or unknown keys."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise DataError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                        f"a request has {', '.join(FIELDS)}")
    for key in ("user_id", "items"):
        if key not in obj:
            raise DataError(f"{where}: missing {key!r}")
    return Request(**{k: obj[k] for k in FIELDS if k in obj and (obj[k] is not None or k == "user_id")})
