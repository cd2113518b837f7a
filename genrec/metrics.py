"""Full-catalogue ranking metrics (HR@K, NDCG@K, MRR) and a most-popular baseline.

Why: sampled-negative metrics are known to mislead (Krichene & Rendle, KDD 2020), so the target is
ranked against every item with the user's history excluded, as in the SASRec/HSTU evaluations.
Ties are broken pessimistically: an item scoring exactly the target's score ranks ahead of it.
That keeps a degenerate model (constant scores, a collapsed export) at the bottom instead of
rewarding it, and keeps ranks integral.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from rich.table import Table

DEFAULT_KS = (1, 10, 50, 200)
_CHUNK = 1024  # rows per block when scoring a whole split (bounds memory at ~B*N bytes)


def ranking_metrics(ranks: np.ndarray | Sequence[int], ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean ``HR@K`` (rank <= K), ``NDCG@K`` (1/log2(rank+1) if rank <= K, else 0) and ``MRR``
    (1/rank) over 1-based ``ranks``; keys ordered HR@K, NDCG@K per K, then MRR. A rank of
    +inf is a miss (the target is not in a ranked list): it scores 0 everywhere."""
    r = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("ranking_metrics needs at least one rank")
    if np.any(np.isnan(r)) or np.any(r < 1):
        raise ValueError("ranks must be >= 1 (1-based; +inf for a miss)")
    gain = 1.0 / np.log2(r + 1.0)
    out: dict[str, float] = {}
    for k in ks:
        hit = r <= k
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float(np.where(hit, gain, 0.0).mean())
    out["MRR"] = float((1.0 / r).mean())
    return out


def rank_of_target(
    scores: np.ndarray,
    targets: np.ndarray | Sequence[int],
    exclude: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """1-based rank of each target among items ``1..N`` of ``scores[B, N+1]`` (column 0, padding,
    never counts).

    rank = 1 + #(other candidates scoring > target) + #(other candidates scoring == target)
    (pessimistic ties). ``exclude[i]`` (the user's history) removes items from the candidates,
    except the target itself. NaN scores count as -inf.
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be [B, N+1], got shape {s.shape}")
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    batch, width = s.shape
    if t.size != batch:
        raise ValueError(f"{batch} score rows but {t.size} targets")
    if t.size and (t.min() < 1 or t.max() >= width):
        raise ValueError(f"targets must be in 1..{width - 1}")
    if exclude is not None and len(exclude) != batch:
        raise ValueError(f"{batch} score rows but {len(exclude)} exclude lists")
    if np.issubdtype(s.dtype, np.floating) and np.isnan(s).any():
        s = np.where(np.isnan(s), -np.inf, s)

    rows = np.arange(batch)
    candidate = np.ones((batch, width), dtype=bool)
    candidate[:, 0] = False
    if exclude is not None and batch:
        lens = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=batch)
        if lens.sum():
            cols = np.concatenate([np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude])
            if cols.min() < 0 or cols.max() >= width:
                raise ValueError(f"excluded item ids must be in 0..{width - 1}")
            candidate[np.repeat(rows, lens), cols] = False
    candidate[rows, t] = False  # the target is not its own competitor
    target_score = s[rows, t][:, None]
    ahead = candidate & (s >= target_score)
    return 1 + ahead.sum(axis=1).astype(np.int64)


def most_popular_ranks(split, which: str = "test") -> np.ndarray:
    """Ranks of a most-popular baseline on ``split`` (a :class:`genrec.data.Split`).

    Popularity = interaction counts over the training sequences; every user gets the same
    scores, with their history excluded. A sanity floor: a trained model must beat it.
    """
    train = split.train_sequences()
    flat = np.concatenate(train) if train else np.zeros(0, dtype=np.int64)
    popularity = np.bincount(flat, minlength=split.num_items + 1).astype(np.float64)
    ex = split.examples(which)
    out = np.empty(len(ex), dtype=np.int64)
    for start in range(0, len(ex), _CHUNK):
        stop = min(start + _CHUNK, len(ex))
        scores = np.broadcast_to(popularity, (stop - start, popularity.size))
        out[start:stop] = rank_of_target(scores, ex.targets[start:stop], ex.histories[start:stop])
    return out


def format_metrics_table(
    rows: Mapping[str, Mapping[str, float]], title: str | None = None, digits: int = 4
) -> Table:
    """A rich Table: one row per name (model/backend), one column per metric (union of keys,
    first-seen order); missing values show as "-"."""
    columns: list[str] = []
    for metrics in rows.values():
        columns.extend(k for k in metrics if k not in columns)
    table = Table(title=title)
    table.add_column("model")
    for col in columns:
        table.add_column(col, justify="right")
    for name, metrics in rows.items():
        table.add_row(
            name,
            *(f"{metrics[c]:.{digits}f}" if c in metrics else "-" for c in columns),
        )
    return table
