"""Full-catalogue evaluation (MODELS.md §1.7): rank the held-out item among all items with the
user's history excluded, and report HR@K, NDCG@K and MRR.

Ranks are computed from the full score row on the host side of torch, so the number reported
is exact (no top-K' cut-off as in Meta's 2,500-candidate shortcut).
"""

from __future__ import annotations

import numpy as np
import torch

from .data import Examples
from .inputs import history_feed
from .metrics import DEFAULT_KS, ranking_metrics
from .models import GenerativeRecommender


def history_inputs(model: GenerativeRecommender, histories, times, request_times, width: int | None = None):
    """Pad histories (most recent T kept) into model inputs; times rebased per row to int32 range.

    Only time differences enter HSTU, so subtracting each row's first timestamp changes nothing
    while keeping the values inside int32 for exported graphs. ``width`` (<= T) pads to fewer
    columns when every history is shorter; the user vectors do not change (causal attention,
    right padding).
    """
    width = min(width or model.config.max_len, model.config.max_len)
    feed, _ = history_feed(histories, width, times, request_times, with_time=model.needs_timestamps)
    t = {k: torch.from_numpy(v.astype(np.int64)) for k, v in feed.items()}
    return t["item_ids"], t["lengths"], t.get("timestamps"), t.get("request_time")


@torch.no_grad()
def target_ranks(model: GenerativeRecommender, examples: Examples, batch_size: int = 256) -> np.ndarray:
    """1-based rank of every example's target among all items not in its (kept) history.

    Examples are visited in order of history length and each batch is padded to its longest
    history only (a Beauty history is ~9 items against T = 50), ranks return in input order.
    """
    was_training = model.training
    model.eval()
    vectors = model.item_vectors()
    ranks = np.empty(len(examples), dtype=np.int64)
    lens = np.fromiter((len(h) for h in examples.histories), dtype=np.int64, count=len(examples))
    order = np.argsort(lens, kind="stable")
    for start in range(0, len(examples), batch_size):
        sel = order[start:start + batch_size]
        hist = [examples.histories[i] for i in sel]
        times = None if examples.history_times is None else [examples.history_times[i] for i in sel]
        req = None if examples.target_times is None else examples.target_times[sel]
        ids, lengths, ts, rq = history_inputs(model, hist, times, req, width=max(1, int(lens[sel].max())))
        user, _ = model.prefill(ids, lengths, ts, rq)
        scores = user @ vectors.t()  # (B, N+1)
        scores[:, 0] = float("-inf")
        scores.scatter_(1, ids, float("-inf"))  # history (as the model saw it) excluded
        target = torch.from_numpy(examples.targets[sel])
        tscore = scores.gather(1, target[:, None])
        ranks[sel] = (scores >= tscore).sum(1).numpy()  # pessimistic ties, as genrec.metrics
    model.train(was_training)
    return ranks


def evaluate(model: GenerativeRecommender, examples: Examples, ks=DEFAULT_KS, batch_size: int = 256) -> dict[str, float]:
    """HR@K, NDCG@K for ``ks`` and MRR over ``examples``."""
    return ranking_metrics(target_ranks(model, examples, batch_size), ks)
