"""The ``Backend`` protocol and the base class that does every check once.

A backend runs the three graphs of a bundle (prefill, step, rank) somewhere: eager torch,
onnxruntime sessions, AscendCL device buffers. The shared decoding loop
(``genrec.runtimes.decoding``) drives all of them through the same five calls and only ever
sees small host arrays (top-K' ids and scores, log_z); the KV cache lives in an opaque
``State`` that the backend owns and may keep on its device.

``BackendBase`` owns the public methods: it converts and checks inputs against the bundle
dims (shapes, dtypes, batch gears, id and position ranges), calls the backend's ``_prefill``
/ ``_step`` / ``_reorder`` / ``_rank``, and checks what comes back. A backend implements only
those four (plus ``_close``), which keeps each one around a hundred lines.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from genrec.bundle import Bundle, load_bundle
from genrec.manifest import Dims
from genrec.data import ItemMap
from genrec.errors import BundleError, ConfigError

__all__ = ["Backend", "BackendBase", "BundleDims", "Dims", "PrefillBatch", "State", "StepOutput", "open_bundle"]


BundleDims = Dims  # the runtimes' historical name for the bundle's one set of sizes


@dataclass
class PrefillBatch:
    """Prefill inputs for B rows, as ``genrec.inputs.history_feed`` builds them (int32)."""

    item_ids: np.ndarray  # (B, T) right-padded internal ids
    lengths: np.ndarray  # (B,) real history length per row, 1..T
    exclude_ids: np.ndarray  # (B, X) ids masked from the top-K', padded with 0
    timestamps: np.ndarray | None = None  # (B, T) rebased to each row's first time (HSTU)
    request_time: np.ndarray | None = None  # (B,) rebased the same way (HSTU)
    # True only where genrec's own batcher built it (``batching.prefill_rows``) from requests
    # it validated on entry (``requests``): ids in 0..N and lengths in 1..T by construction.
    # The backend then skips its range checks: three numpy passes that cost a batch-1 HSTU
    # prefill about 5% (each evicts the graph's code from the caches, and the run after it
    # pays too). Types and shapes are checked whatever this says.
    validated: bool = False

    @property
    def batch(self) -> int:
        return int(self.item_ids.shape[0])


@dataclass
class StepOutput:
    """What the loop sees after a prefill or step: host numpy arrays, B rows."""

    topk_ids: np.ndarray  # (B, K') int64 internal ids, best first
    topk_scores: np.ndarray  # (B, K') float32, -inf for excluded ids
    log_z: np.ndarray  # (B,) float32 log-sum-exp of score / temperature over valid items
    user_emb: np.ndarray | None = None  # (B, d) float32, when the backend returns it


class State:
    """Opaque per-batch decoding state (the KV cache); subclasses hold backend-owned buffers.

    Only ``batch`` (the number of rows the cache holds) is visible to the loop and the base.
    """

    batch: int = 0


@runtime_checkable
class Backend(Protocol):
    """What the decoding loop needs from a runtime (ARCHITECTURE.md §5)."""

    name: str
    dims: BundleDims
    item_map: ItemMap

    @property
    def batch_gears(self) -> tuple[int, ...]: ...

    def prefill(self, batch: PrefillBatch) -> tuple[StepOutput, State]: ...

    def step(self, state: State, new_item: np.ndarray, position: np.ndarray,
             timestamp: np.ndarray | None, exclude_ids: np.ndarray) -> StepOutput: ...

    def reorder(self, state: State, index: np.ndarray) -> None: ...

    def rank(self, state: State, candidates: np.ndarray, position: np.ndarray,
             timestamp: np.ndarray | None) -> np.ndarray: ...

    def close(self) -> None: ...


def open_bundle(source: Bundle | str | os.PathLike[str]) -> Bundle:
    """A verified bundle from a ``Bundle`` or a bundle directory."""
    if isinstance(source, Bundle):
        return source
    path = Path(source)
    if not path.is_dir():
        raise BundleError(f"{path}: not a bundle directory (export one with `genrec export`)")
    return load_bundle(path)


# numpy's native dtypes are singletons: ``a.dtype is _INT32`` is the cheap test (a byte-swapped
# array fails it and takes the converting path)
_INT32, _INT64, _FLOAT32 = np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.float32)


def _i32(x: Any, shape: tuple[int, ...], what: str, where: str) -> np.ndarray:
    """``x`` as a C-contiguous int32 array of ``shape``, not copied when it is one already.

    The common case (what ``history_feed`` builds) is decided on attributes alone: every
    numpy call between two runs costs a batch-1 prefill several times its own time, as the
    run that follows finds its code and data evicted from the caches."""
    a = x if type(x) is np.ndarray else np.asarray(x)
    if a.dtype == np.int32 and a.shape == shape and a.flags.c_contiguous:
        return a
    if a.dtype.kind not in "iu":
        raise ConfigError(f"{where}: {what} must be integers, got {a.dtype}")
    if a.shape != shape:
        raise ConfigError(f"{where}: {what} has shape {a.shape}, expected {shape}")
    return np.ascontiguousarray(a, dtype=np.int32)


class BackendBase(abc.ABC):
    """Shared checks around a backend's ``_prefill``/``_step``/``_reorder``/``_rank``/``_close``.

    Subclasses set ``name``, call ``super().__init__(dims, id_map)`` and implement the impls;
    they receive contiguous int32 arrays of checked shapes and return host numpy arrays.
    """

    name: str = "base"

    def __init__(self, dims: BundleDims, id_map: list[int], checkpoint_path: Path | None = None):
        self.dims = dims
        self.item_map = ItemMap.from_list(id_map)
        self.checkpoint_path = checkpoint_path  # the weights behind the graphs (item_vectors)
        self._item_vectors: np.ndarray | None = None
        if self.item_map.num_items != dims.num_items:
            raise BundleError(f"{self.name}: id map has {self.item_map.num_items} items, expected {dims.num_items}")
        self._closed = False

    # -- dims --------------------------------------------------------------------------------
    @property
    def batch_gears(self) -> tuple[int, ...]:
        return self.dims.batch_gears

    def __repr__(self) -> str:
        d = self.dims
        return (f"{type(self).__name__}({d.arch}, T={d.max_history}, C={d.capacity}, "
                f"K'={d.topk}, X={d.max_exclude}, M={d.rank_candidates}, gears={list(d.batch_gears)})")

    # -- checks ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError(f"{self.name} backend: used after close()")

    def _check_batch(self, b: int) -> None:
        if b not in self.dims.batch_gears:
            raise ConfigError(f"{self.name} backend: batch {b} is not one of the batch gears "
                              f"{list(self.dims.batch_gears)}; pad the batch to a gear")

    def _ids(self, x: Any, shape: tuple[int, ...], what: str, low: int = 0, ranges: bool = True) -> np.ndarray:
        a = _i32(x, shape, what, f"{self.name} backend")
        if not ranges:  # a batch the loop built from validated requests (PrefillBatch.validated)
            return a
        # one pass instead of a min and a max (a batch-1 prefill checks two id arrays): seen as
        # uint32, an id below ``low`` wraps past every valid one
        u = a.view(np.uint32) if low == 0 else a.view(np.uint32) - np.uint32(low)
        if a.size and int(u.max()) > self.dims.num_items - low:
            raise ConfigError(f"{self.name} backend: {what} must be internal ids in "
                              f"{low}..{self.dims.num_items}, got {a.min()}..{a.max()}")
        return a

    def _time(self, ts: Any, b: int, what: str) -> np.ndarray | None:
        if not self.dims.needs_timestamps:
            if ts is not None:
                raise ConfigError(f"{self.name} backend: {self.dims.arch} takes no {what}")
            return None
        if ts is None:
            raise ConfigError(f"{self.name} backend: {self.dims.arch} needs {what}")
        return _i32(ts, (b,), what, f"{self.name} backend")

    def _position(self, position: Any, b: int, last: int) -> np.ndarray:
        p = _i32(position, (b,), "position", f"{self.name} backend")
        if p.min() < 1 or p.max() > last:
            raise ConfigError(f"{self.name} backend: positions must be in 1..{last} "
                              f"(cache capacity {self.dims.capacity}), got {p.min()}..{p.max()}")
        return p

    def _check_output(self, out: StepOutput, b: int, k: int) -> StepOutput:
        if out.topk_ids.shape != (b, k) or out.topk_scores.shape != (b, k) or out.log_z.shape != (b,):
            raise BundleError(f"{self.name} backend: outputs have shapes {out.topk_ids.shape}, "
                              f"{out.topk_scores.shape}, {out.log_z.shape}; expected ({b}, {k}) and ({b},)")
        ids, scores, log_z = out.topk_ids, out.topk_scores, out.log_z
        if ids.dtype is _INT64 and scores.dtype is _FLOAT32 and log_z.dtype is _FLOAT32:
            return out  # the contract's types already (onnxruntime's outputs): no numpy call
        return StepOutput(ids.astype(np.int64, copy=False), scores.astype(np.float32, copy=False),
                          log_z.astype(np.float32, copy=False), out.user_emb)

    def item_vectors(self) -> np.ndarray:
        """The head's item vectors, (N + 1, d) float32, row 0 padding: what every score is the
        dot product of ``user_emb`` with. The decoding loop's exact path scores rows on the host
        with them when a history excludes more items than the graph's top-K' can absorb.
        Loaded once, on first use, from the checkpoint the graphs were exported from."""
        if self._item_vectors is None:
            if self.checkpoint_path is None:
                raise ConfigError(f"{self.name} backend: no checkpoint to read item vectors from")
            import torch

            from genrec.checkpoint import load_checkpoint

            bundle = getattr(self, "bundle", None)  # a verified bundle may still hold it
            ckpt = bundle.checkpoint() if bundle is not None else load_checkpoint(self.checkpoint_path)
            with torch.inference_mode():
                vec = ckpt.model.item_vectors()
            self._item_vectors = np.ascontiguousarray(vec.float().numpy())
        return self._item_vectors

    # -- the public surface ------------------------------------------------------------------
    def prefill(self, batch: PrefillBatch) -> tuple[StepOutput, State]:
        """Encode B histories; returns the first top-K' and a state holding the cache."""
        self._check_open()
        d, b = self.dims, batch.batch
        self._check_batch(b)
        if batch.validated and self._as_built(batch, b):  # the loop's own batches: nothing to convert
            out, state = self._prefill(batch)
            state.batch = b
            return self._check_output(out, b, d.topk), state
        where, ranges = f"{self.name} backend", not batch.validated
        lengths = _i32(batch.lengths, (b,), "lengths", where)
        if ranges and int((lengths.view(np.uint32) - np.uint32(1)).max()) >= d.max_history:  # 1..T, one pass
            raise ConfigError(f"{self.name} backend: lengths must be in 1..{d.max_history}")
        checked = PrefillBatch(
            item_ids=self._ids(batch.item_ids, (b, d.max_history), "item_ids", ranges=ranges),
            lengths=lengths,
            exclude_ids=self._ids(batch.exclude_ids, (b, d.max_exclude), "exclude_ids", ranges=ranges),
            validated=batch.validated,
        )
        if d.needs_timestamps:
            if batch.timestamps is None or batch.request_time is None:
                raise ConfigError(f"{self.name} backend: {d.arch} needs timestamps and request_time")
            checked.timestamps = _i32(batch.timestamps, (b, d.max_history), "timestamps", f"{self.name} backend")
            checked.request_time = self._time(batch.request_time, b, "request_time")
        out, state = self._prefill(checked)
        state.batch = b
        return self._check_output(out, b, self.dims.topk), state

    def _as_built(self, batch: PrefillBatch, b: int) -> bool:
        """True when ``batch`` already is what ``prefill``'s checks would make of it: C-contiguous
        int32 arrays of the bundle's shapes, timestamps exactly where the model takes them.

        Decided on attributes alone and without a new ``PrefillBatch``: the loop's batches are
        built this way, and rebuilding one (five conversions, a dataclass, error strings) cost
        a batch-1 HSTU prefill on 2 threads 3% (18 us of Python between two runs, most of it
        the run after it finding its code evicted from the caches)."""
        d = self.dims
        t = d.max_history
        if d.needs_timestamps:
            pairs = ((batch.item_ids, (b, t)), (batch.lengths, (b,)), (batch.exclude_ids, (b, d.max_exclude)),
                     (batch.timestamps, (b, t)), (batch.request_time, (b,)))
        elif batch.timestamps is None and batch.request_time is None:
            pairs = ((batch.item_ids, (b, t)), (batch.lengths, (b,)), (batch.exclude_ids, (b, d.max_exclude)))
        else:
            return False
        for a, shape in pairs:
            if type(a) is not np.ndarray or a.dtype is not _INT32 or a.shape != shape or not a.flags.c_contiguous:
                return False
        return True

    def step(self, state: State, new_item: Any, position: Any, timestamp: Any,
             exclude_ids: Any) -> StepOutput:
        """Append ``new_item`` at ``position`` per row (updates ``state``); returns the next top-K'."""
        self._check_open()
        b = state.batch
        out = self._step(state, self._ids(new_item, (b,), "new_item", low=1),
                         self._position(position, b, self.dims.capacity - 1),
                         self._time(timestamp, b, "timestamp"),
                         self._ids(exclude_ids, (b, self.dims.max_exclude), "exclude_ids"))
        return self._check_output(out, b, self.dims.step_topk)

    def reorder(self, state: State, index: Any) -> None:
        """Make row r of the cache a copy of old row ``index[r]``; the batch may change (a gear)."""
        self._check_open()
        idx = np.asarray(index)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise ConfigError(f"{self.name} backend: reorder index must be a 1-D int array")
        self._check_batch(idx.size)
        if idx.min() < 0 or idx.max() >= state.batch:
            raise ConfigError(f"{self.name} backend: reorder index outside 0..{state.batch - 1}")
        self._reorder(state, np.ascontiguousarray(idx, dtype=np.int64))
        state.batch = int(idx.size)

    def rank(self, state: State, candidates: Any, position: Any, timestamp: Any) -> np.ndarray:
        """M-FALCON: (B, M) candidate scores, each as if appended alone at ``position``."""
        self._check_open()
        b, m = state.batch, self.dims.rank_candidates
        scores = self._rank(state, self._ids(candidates, (b, m), "candidates", low=1),
                            self._position(position, b, self.dims.capacity - 1),
                            self._time(timestamp, b, "timestamp"))
        if scores.shape != (b, m):
            raise BundleError(f"{self.name} backend: rank returned {scores.shape}, expected ({b}, {m})")
        return scores.astype(np.float32, copy=False)

    def close(self) -> None:
        """Release sessions and device memory; the backend is unusable afterwards."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- what a backend implements -----------------------------------------------------------
    @abc.abstractmethod
    def _prefill(self, batch: PrefillBatch) -> tuple[StepOutput, State]:
        """Backend-specific part of the public method of the same name (checked inputs)."""

    @abc.abstractmethod
    def _step(self, state: State, new_item: np.ndarray, position: np.ndarray,
              timestamp: np.ndarray | None, exclude_ids: np.ndarray) -> StepOutput:
        """Backend-specific part of the public method of the same name (checked inputs)."""

    @abc.abstractmethod
    def _reorder(self, state: State, index: np.ndarray) -> None:
        """Backend-specific part of the public method of the same name (checked inputs)."""

    @abc.abstractmethod
    def _rank(self, state: State, candidates: np.ndarray, position: np.ndarray,
              timestamp: np.ndarray | None) -> np.ndarray:
        """Backend-specific part of the public method of the same name (checked inputs)."""

    def _close(self) -> None:
        pass
