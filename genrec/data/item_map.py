"""Raw item id <-> internal id mapping.

Why: models need a dense embedding table with row 0 reserved for padding, while datasets use
arbitrary (sparse, sometimes 0-based) integer ids. The map is part of a checkpoint/bundle, so it
must be deterministic (internal ids follow ascending raw id) and serialisable to JSON, and it
sits on the serving path, so lookups are vectorised, never a dict per id: a dense raw -> internal
table when the raw ids are small non-negative integers (the usual case: one indexed load per id,
~50x faster than the binary search it replaces), else ``searchsorted`` over the sorted raw ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from genrec.errors import DataError

_SHOW = 5  # how many unknown ids an error message lists
DENSE_MIN = 1 << 20  # a dense lookup table may always have this many entries (4 MiB of int32) ...
DENSE_PER_ITEM = 16  # ... or this many per item


def _as_int64(values: Iterable[int] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    if arr.size == 0:
        return arr.astype(np.int64).reshape(arr.shape)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
        raise DataError(f"{what} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


class ItemMap:
    """Maps raw integer item ids to internal ids ``1..num_items``; 0 is padding."""

    __slots__ = ("_raw", "_sorted", "_order", "_dense")

    def __init__(self, raw_in_internal_order: np.ndarray) -> None:
        raw = _as_int64(raw_in_internal_order, "item ids").reshape(-1)
        order = np.argsort(raw, kind="stable")
        sorted_raw = raw[order]
        if sorted_raw.size > 1 and np.any(sorted_raw[1:] == sorted_raw[:-1]):
            dup = sorted_raw[1:][sorted_raw[1:] == sorted_raw[:-1]]
            raise DataError(f"item map has duplicate raw ids: {_fmt(np.unique(dup))}")
        self._raw = raw  # raw id of internal id i+1
        self._sorted = sorted_raw
        self._order = order  # position in _raw of each sorted raw id
        self._dense = None  # raw id -> internal id (0: unknown), when the raw ids allow one
        if sorted_raw.size and sorted_raw[0] >= 0 and sorted_raw[-1] < max(DENSE_MIN, DENSE_PER_ITEM * raw.size):
            self._dense = np.zeros(int(sorted_raw[-1]) + 1, np.int32)
            self._dense[raw] = np.arange(1, raw.size + 1, dtype=np.int32)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_raw(cls, raw_ids: Iterable[int] | np.ndarray) -> ItemMap:
        """Build from any raw ids (duplicates allowed); internal ids follow ascending raw id."""
        return cls(np.unique(_as_int64(raw_ids, "item ids")))

    @classmethod
    def from_list(cls, raw_ids: Sequence[int]) -> ItemMap:
        """Inverse of :meth:`to_list`: ``raw_ids[i]`` gets internal id ``i + 1``."""
        return cls(_as_int64(raw_ids, "item map"))

    def to_list(self) -> list[int]:
        """Raw ids in internal order (index i holds the raw id of internal id i + 1), for JSON."""
        return self._raw.tolist()

    # -- queries ------------------------------------------------------------------------
    @property
    def num_items(self) -> int:
        """Number of real items; internal ids are ``1..num_items``."""
        return int(self._raw.size)

    def __len__(self) -> int:
        return self.num_items

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ItemMap) and np.array_equal(self._raw, other._raw)

    def __repr__(self) -> str:
        return f"ItemMap(num_items={self.num_items})"

    def _lookup(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Internal ids (anything where unknown) and a mask of which raw ids are known."""
        if self._sorted.size == 0:
            return np.zeros(raw.shape, np.int64), np.zeros(raw.shape, bool)
        if self._dense is not None:
            inside = (raw >= 0) & (raw < self._dense.size)
            internal = self._dense[np.where(inside, raw, 0)]  # int32; to_internal widens once
            return internal, inside & (internal > 0)
        pos = np.searchsorted(self._sorted, raw)
        pos = np.minimum(pos, self._sorted.size - 1)
        return self._order[pos] + 1, self._sorted[pos] == raw

    def known(self, raw_ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Boolean mask (same shape as the input): which raw ids are in the map."""
        return self._lookup(_as_int64(raw_ids, "item ids"))[1]

    def contains(self, raw: int) -> bool:
        """Whether one raw id is in the map."""
        return bool(self.known(np.asarray([raw]))[0])

    def to_internal(self, raw_ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Raw ids -> internal ids (int64, same shape); DataError names any unknown raw id."""
        raw = _as_int64(raw_ids, "item ids")
        internal, ok = self._lookup(raw)
        if not np.all(ok):
            bad = np.unique(raw[~ok])
            raise DataError(f"{bad.size} unknown item id(s), not in the item map: {_fmt(bad)}")
        return internal.astype(np.int64, copy=False)

    def to_raw(self, internal_ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Internal ids (1..num_items) -> raw ids; DataError for padding or out-of-range ids."""
        internal = _as_int64(internal_ids, "internal item ids")
        ok = (internal >= 1) & (internal <= self.num_items)
        if not np.all(ok):
            bad = np.unique(internal[~ok])
            raise DataError(
                f"internal item id(s) outside 1..{self.num_items}: {_fmt(bad)}"
            )
        return self._raw[internal - 1]


def _fmt(ids: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in ids[:_SHOW])
    return shown + (f", ... ({ids.size - _SHOW} more)" if ids.size > _SHOW else "")
