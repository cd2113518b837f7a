"""The accuracy gate: paired per-user ranking metrics of a variant against fp32.

Each judging user has one held-out item. The same users go through the fp32 graphs and the
variant (both on onnxruntime, through the serving loop's ``recommend``), and each user's
rank of the held-out item gives per-user NDCG@10, HR@10 and reciprocal rank under both
precisions. Comparing *paired* values (the same user under both) removes the user-to-user
variance that dominates these metrics: a 1% change in NDCG@10 is invisible next to the
spread between users, but not next to the spread of per-user differences.

The gated figure is the relative NDCG@10 loss, ``(NDCG_fp32 - NDCG_variant) / NDCG_fp32``;
its 95% confidence interval is a paired bootstrap over users (resampling users, both
precisions together). The absolute deltas get a normal-approximation interval of the mean
paired difference. The list-level figure is the mean overlap@10 of the two top-10 lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from genrec.errors import GenrecError

__all__ = ["Judged", "judge_lists", "compare", "target_ranks", "BOOTSTRAP"]

K = 10
BOOTSTRAP = 2000


class GateError(GenrecError):
    """The gate cannot measure (no fp32 hit among the judging users) or the variant failed."""


@dataclass
class Judged:
    """One precision's lists and per-user ranks on the judging users."""

    lists: list[list[int]]
    ranks: np.ndarray  # 1-based rank of the held-out item in the list; inf = not in the list


def target_ranks(lists: list[list[int]], targets: list[int]) -> np.ndarray:
    return np.array([lst.index(t) + 1 if t in lst else math.inf for lst, t in zip(lists, targets)], np.float64)


def judge_lists(backend, requests: list, targets: list[int], k: int) -> Judged:
    """Top-``k`` lists of ``requests`` through ``backend`` and the held-out items' ranks."""
    from genrec.runtimes import recommend

    lists = [r.items for r in recommend(backend, requests, k=k)]
    return Judged(lists, target_ranks(lists, targets))


def per_user(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user NDCG@10, HR@10 and reciprocal rank (0 for a miss)."""
    hit = ranks <= K
    return {f"NDCG@{K}": np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0), f"HR@{K}": hit.astype(np.float64),
            "MRR": np.where(np.isfinite(ranks), 1.0 / ranks, 0.0)}


def compare(ref: Judged, cand: Judged, seed: int = 0) -> dict[str, Any]:
    """Paired deltas with 95% intervals, the relative NDCG@10 loss with its bootstrap
    interval, and overlap@10; GateError when fp32 has no hit (no loss can be measured)."""
    a, b = per_user(ref.ranks), per_user(cand.ranks)
    n = len(ref.ranks)
    out: dict[str, Any] = {"users": n, "metrics": {}}
    for m in a:
        d = b[m] - a[m]
        half = 1.96 * float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
        out["metrics"][m] = {"fp32": float(a[m].mean()), "variant": float(b[m].mean()), "delta": float(d.mean()),
                             "delta_ci95": [float(d.mean()) - half, float(d.mean()) + half]}
    key = f"NDCG@{K}"
    base = a[key].mean()
    if base <= 0:
        raise GateError(f"fp32 NDCG@{K} is 0 on the {n} judging users (no held-out item in any top {K}): "
                        "the relative loss cannot be measured; judge more users (--judge-users) or check the model")
    loss = float((base - b[key].mean()) / base)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(BOOTSTRAP, n))
    ra, rb = a[key][idx].mean(axis=1), b[key][idx].mean(axis=1)
    ok = ra > 0
    boot = (ra[ok] - rb[ok]) / ra[ok]
    lo, hi = np.percentile(boot, [2.5, 97.5]) if boot.size else (math.nan, math.nan)
    out["ndcg_relative_loss"] = {"value": loss, "ci95": [float(lo), float(hi)], "bootstrap": BOOTSTRAP}
    out[f"overlap@{K}"] = float(np.mean([len(set(x[:K]) & set(y[:K])) / K for x, y in zip(ref.lists, cand.lists)]))
    return out
