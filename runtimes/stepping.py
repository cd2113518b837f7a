"""``Stepper``: one chunk of requests decoded an item at a time, with the loop's own code.

``generate``'s greedy and sampled slates run on it, and so do the parity gate (two backends
fed the same choices and compared call by call) and the benchmarks (timing prefill and
steps). A gate that re-implemented the loop would check a copy of the serving code; this way
it checks the code that serves.

    rows = prepare(backend, requests)
    for start, chunk in chunks(backend, rows, None):
        s = Stepper(backend, chunk, start=start)
        out = s.prefill()                  # exact: every exclusion masked (exact.resolve)
        s.raw                              # what the graph itself returned
        out = s.step(out.topk_ids[:, 0])   # append the best item of every row, get the next
"""

from __future__ import annotations

import numpy as np

from .base import Backend, State, StepOutput
from .batching import Prefilled, Where, exclusions, history_exclusions, pad, prefill_rows, push
from .exact import resolve
from .requests import Prepared

__all__ = ["Stepper"]


class Stepper:
    """Prefill, then steps, for one chunk of validated requests (at most a gear of rows).

    Keeps the chunk's exclusions (history, deny list, the items appended so far) up to date:
    X of them go to the graph, the overflow to ``exact.resolve``, so every call returns the
    answer of the fully masked catalogue. ``raw`` is the graph's own output of the last call.
    Rows ``start + i`` of the caller's sequence are named in errors with ``where``.
    """

    def __init__(self, backend: Backend, rows: list[Prepared], *, start: int = 0, where: Where | None = None,
                 allow_repeats: bool = False):
        where = where or (lambda i: f"request {i + 1}")
        self.backend, self.rows, self.n, self.start = backend, rows, len(rows), start
        self.allow_repeats = allow_repeats
        self.name = lambda i: f"{where(start + i)} (user_id {rows[i].user_id!r})"
        self.base = history_exclusions(rows, not allow_repeats)
        self.excl, self.overflow = exclusions(backend, self.base)
        self.appended: list[np.ndarray] = []  # items appended by step(), oldest first
        self.batch: Prefilled | None = None
        self.raw: StepOutput | None = None

    @property
    def state(self) -> State:
        return self._prefilled().state

    @property
    def gear(self) -> int:
        """The batch the graphs run at (the chunk padded to a gear)."""
        return self._prefilled().state.batch

    def _prefilled(self) -> Prefilled:
        if self.batch is None:
            raise RuntimeError("Stepper: call prefill() first")
        return self.batch

    def _resolve(self, needed: int, with_log_z: bool) -> StepOutput:
        start = self.start
        return resolve(self.backend, self.raw, self.excl, self.overflow, needed, with_log_z,
                       lambda r: start + r, self.name)

    def prefill(self, needed: int = 1, with_log_z: bool = True) -> StepOutput:
        """Encode the histories; the first n rows of the exact top-K' (``needed`` valid
        candidates per row guaranteed where the catalogue has them) and ``log_z``."""
        self.batch = prefill_rows(self.backend, self.rows, self.excl)
        self.raw = self.batch.out
        return self._resolve(needed, with_log_z)

    def step(self, items: np.ndarray, needed: int = 1, with_log_z: bool = True) -> StepOutput:
        """Append ``items[i]`` (internal ids) to row i and return the next exact top-K."""
        b, items = self._prefilled(), np.asarray(items, np.int64)[:self.n]
        self.appended.append(items)
        if not self.allow_repeats:  # with repeats allowed the exclusions never change
            pushed = push(self.backend, self.excl, self.overflow, items)
            if pushed is None:  # an item already listed: rebuild the lists
                slate = np.stack(self.appended, axis=1)
                pushed = exclusions(self.backend, [np.concatenate([slate[i, ::-1], x])
                                                   for i, x in enumerate(self.base)])
            self.excl, self.overflow = pushed
        g, position = self.gear, b.lengths + len(self.appended) - 1
        self.raw = self.backend.step(b.state, pad(items, g), pad(position, g), pad(b.request_time, g),
                                     pad(self.excl, g))
        return self._resolve(needed, with_log_z)

    def rank(self, candidates: np.ndarray) -> np.ndarray:
        """(n, M) M-FALCON scores of ``candidates`` at the position after what was appended."""
        b, g = self._prefilled(), self.gear
        position = b.lengths + len(self.appended)
        return self.backend.rank(b.state, pad(np.asarray(candidates), g), pad(position, g),
                                 pad(b.request_time, g))[:self.n]
