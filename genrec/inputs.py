"""Host-side inputs shared by the exporter's numeric check and every runtime backend.

One place decides how a history becomes graph inputs, so export checks and serving can
never disagree: right padding with 0, the most recent ``T`` items kept, int32 ids and
positions, exclusion lists padded with 0 (the padding id, always excluded anyway), and
timestamps rebased to each row's first history time. Only time *differences* enter HSTU,
so the rebase changes nothing numerically while keeping seconds (or milliseconds over a
few weeks) inside int32, which is what ATC and the graphs take.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .data import pad_batch
from .errors import DataError


def pad_rows(rows: Sequence[Sequence[int]], width: int) -> np.ndarray:
    """Ragged int rows -> (B, width) int32, right-padded with 0; longer rows keep their last ``width``."""
    out = np.zeros((len(rows), width), dtype=np.int32)
    for i, r in enumerate(rows):
        r = np.asarray(r, dtype=np.int64)[-width:] if width else np.zeros(0, np.int64)
        out[i, : len(r)] = r
    return out


def history_feed(histories: Sequence[np.ndarray], max_len: int,
                 times: Sequence[np.ndarray] | None = None,
                 request_times: Sequence[int] | np.ndarray | None = None,
                 with_time: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Prefill inputs (``item_ids``, ``lengths`` and, ``with_time``, ``timestamps`` and
    ``request_time``) plus the per-row time base to subtract from later step timestamps."""
    ids, lengths, ts = pad_batch(histories, max_len, times)
    feed = {"item_ids": ids.astype(np.int32), "lengths": lengths.astype(np.int32)}
    base = np.zeros(len(ids), dtype=np.int64)
    if with_time:
        if ts is None or request_times is None:
            ts = np.zeros_like(ids)
            req = np.zeros(len(ids), dtype=np.int64)
        else:
            base = ts[:, 0].copy()
            ts = np.where(ids != 0, ts - base[:, None], 0)
            req = np.asarray(request_times, dtype=np.int64) - base
            if ts.size and (max(int(ts.max()), int(req.max())) >= 2 ** 31 or int(req.min()) < -(2 ** 31)):
                raise DataError("timestamps span more than 68 years after rebasing; HSTU expects "
                                "unix seconds (are these milliseconds?)")
        feed["timestamps"] = ts.astype(np.int32)
        feed["request_time"] = req.astype(np.int32)
    return feed, base


def tile_history(items: np.ndarray, times: np.ndarray | None, length: int
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Repeat a real history (its items and its time gaps) to ``length`` items, for checks on
    histories longer than T when real data is short. The repetitions are a day apart and the
    whole span is scaled down if needed to stay well inside int32 seconds (~34 years)."""
    items = np.asarray(items, dtype=np.int64)
    reps = length // len(items) + 1
    tiled = np.tile(items, reps)[:length]
    if times is None:
        return tiled, None
    t = np.asarray(times, dtype=np.int64)
    gaps = np.diff(t, prepend=t[0])
    gaps[0] = 86400  # the gap from the end of one repetition to the start of the next
    g = np.tile(gaps, reps)[:length]
    g[0] = 0
    span = int(g.sum())
    if span > 2 ** 30:
        g = g * (2 ** 30 / span)
    return tiled, t[0] + np.cumsum(g).astype(np.int64)
