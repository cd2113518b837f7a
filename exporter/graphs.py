"""The three exported graphs as thin ``nn.Module`` wrappers with the bundle's IO contract.

Each wrapper fixes what the manifest records (T, C, K', X, M) and names every input and
output (ARCHITECTURE.md §4): ids and positions int32 in and out, the cache as
``past_key.{i}``/``past_value.{i}`` -> ``present_key.{i}``/``present_value.{i}`` (HSTU adds
``past_timestamps`` -> ``present_timestamps``), batch the only dynamic axis. HSTU also takes
``request_time`` at prefill: the time its last history position's bias looks ahead to
(MODELS.md §1.1: the target's timestamp sits at index ``length``), which a ``[B, T]``
timestamps input has no slot for when the history fills all T positions.
"""

from __future__ import annotations

import torch
from torch import nn

from genrec.manifest import Dims
from genrec.models import GenerativeRecommender


GraphDims = Dims  # the exporter's name for the bundle's one set of sizes (genrec.manifest.Dims)


def cache_io_names(model: GenerativeRecommender) -> tuple[list[str], list[str]]:
    """``past_*`` input names and ``present_*`` output names, in cache order."""
    names = model.cache_names()
    return [f"past_{n}" for n in names], [f"present_{n}" for n in names]


def _cast_cache(model: GenerativeRecommender, cache) -> list[torch.Tensor]:
    # timestamps travel as int32 like every other integer input
    return [c.to(torch.int32) if not c.is_floating_point() else c for c in cache]


class PrefillGraph(nn.Module):
    def __init__(self, model: GenerativeRecommender, dims: Dims):
        super().__init__()
        self.model, self.dims = model, dims

    def input_names(self) -> list[str]:
        t = ["timestamps", "request_time"] if self.model.needs_timestamps else []
        return ["item_ids", "lengths", *t, "exclude_ids"]

    def output_names(self) -> list[str]:
        return ["user_emb", "topk_ids", "topk_scores", "log_z", *cache_io_names(self.model)[1]]

    def forward(self, item_ids, lengths, *rest):
        if self.model.needs_timestamps:
            timestamps, request_time, exclude_ids = rest
        else:
            (exclude_ids,), timestamps, request_time = rest, None, None
        user, cache = self.model.prefill(item_ids.long(), lengths.long(), timestamps, request_time,
                                         capacity=self.dims.capacity)
        ids, scores, log_z = self.model.score(user, exclude_ids, self.dims.topk)
        return (user, ids.to(torch.int32), scores, log_z, *_cast_cache(self.model, cache))


class StepGraph(nn.Module):
    def __init__(self, model: GenerativeRecommender, dims: Dims):
        super().__init__()
        self.model, self.dims = model, dims

    def input_names(self) -> list[str]:
        t = ["timestamp"] if self.model.needs_timestamps else []
        return ["new_item", "position", *t, "exclude_ids", *cache_io_names(self.model)[0]]

    def output_names(self) -> list[str]:
        return ["user_emb", "topk_ids", "topk_scores", "log_z", *cache_io_names(self.model)[1]]

    def forward(self, new_item, position, *rest):
        n = len(self.model.cache_names())
        if self.model.needs_timestamps:
            timestamp, exclude_ids, *cache = rest
        else:
            timestamp, (exclude_ids, *cache) = None, rest
        assert len(cache) == n
        user, cache = self.model.step(new_item, position, timestamp, tuple(cache))
        ids, scores, log_z = self.model.score(user, exclude_ids, self.dims.step_topk)
        return (user, ids.to(torch.int32), scores, log_z, *_cast_cache(self.model, cache))


class RankGraph(nn.Module):
    def __init__(self, model: GenerativeRecommender, dims: Dims):
        super().__init__()
        self.model, self.dims = model, dims

    def input_names(self) -> list[str]:
        t = ["timestamp"] if self.model.needs_timestamps else []
        return ["candidates", "position", *t, *cache_io_names(self.model)[0]]

    def output_names(self) -> list[str]:
        return ["scores"]

    def forward(self, candidates, position, *rest):
        if self.model.needs_timestamps:
            timestamp, *cache = rest
        else:
            timestamp, cache = None, rest
        return self.model.rank(candidates, position, timestamp, tuple(cache))


GRAPHS = {"prefill": PrefillGraph, "step": StepGraph, "rank": RankGraph}


def example_inputs(model: GenerativeRecommender, dims: Dims, name: str, batch: int = 3,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Valid example inputs for tracing: no axis of size 0 or 1 (torch.export would freeze it)."""
    g = torch.Generator().manual_seed(seed)
    n_items, t, c = model.config.num_items, dims.max_history, dims.capacity
    i32 = torch.int32
    lengths = torch.randint(2, t + 1, (batch,), generator=g, dtype=i32)
    lengths[0] = t
    if name == "prefill":
        ids = torch.randint(1, n_items + 1, (batch, t), generator=g, dtype=i32)
        ids = torch.where(torch.arange(t)[None, :] < lengths[:, None], ids, torch.zeros_like(ids))
        args = [ids, lengths]
        if model.needs_timestamps:
            ts = torch.cumsum(torch.randint(0, 86400, (batch, t), generator=g), 1).to(i32)
            args += [ts, ts[:, -1] + 3600]
        return (*args, torch.randint(0, n_items + 1, (batch, dims.max_exclude), generator=g, dtype=i32))
    cache = []
    for _, shape, dtype in model.cache_shapes(c):
        if dtype.is_floating_point:
            cache.append(torch.randn(batch, *shape, generator=g))
        else:  # HSTU's item timestamps
            cache.append(torch.cumsum(torch.randint(0, 86400, (batch, *shape), generator=g), 1).to(i32))
    position = lengths.clone()
    tstamp = [torch.full((batch,), 10 ** 6, dtype=i32)] if model.needs_timestamps else []
    if name == "step":
        new = torch.randint(1, n_items + 1, (batch,), generator=g, dtype=i32)
        excl = torch.randint(0, n_items + 1, (batch, dims.max_exclude), generator=g, dtype=i32)
        return (new, position, *tstamp, excl, *cache)
    cands = torch.randint(1, n_items + 1, (batch, dims.rank_candidates), generator=g, dtype=i32)
    return (cands, position, *tstamp, *cache)

