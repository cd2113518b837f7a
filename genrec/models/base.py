"""What every backbone shares: the config base, the item table, the static KV cache contract.

A backbone encodes a right-padded history (oldest first) and exposes three inference entry
points over a cache of fixed capacity ``C``:

- ``prefill(item_ids, lengths, timestamps, request_time)`` -> (user_emb, cache)
- ``step(new_item, position, timestamp, cache)``           -> (user_emb, cache)
- ``rank(candidates, position, timestamp, cache)``         -> candidate vectors (M-FALCON)

The cache is a flat tuple of tensors whose shapes never change: ``key.i``/``value.i`` per
layer, (B, H, C, dh), plus whatever else a backbone needs (HSTU keeps the item timestamps).
Writes happen at ``position`` with ``torch.where`` over a one-hot of the capacity axis, so an
exported graph has no data-dependent shapes. Positions past the valid length hold finite
garbage that attention masks out.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .head import l2_normalize, score_catalogue

Cache = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ModelConfig:
    """Fields every backbone has. Subclasses add their own; all are JSON-serialisable."""

    arch: str = ""
    num_items: int = 0  # catalogue size; embedding table has num_items + 1 rows (0 = padding)
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 1
    max_len: int = 50  # T: longest history the model encodes (most recent items kept)
    max_new_items: int = 11  # generated slots; positions table / cache capacity = T + this
    dropout: float = 0.2  # input dropout
    temperature: float = 0.05  # sampled-softmax temperature; also the head's log_z scale
    l2_norm: bool = True  # cosine scoring (HSTU semantics) instead of plain dot product
    eps: float = 1e-6  # L2-norm clamp

    @property
    def capacity(self) -> int:
        """Largest cache capacity the position tables support (HSTU's padded length N)."""
        return self.max_len + self.max_new_items

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def take_row(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """x[b, ..., index[b], ...] along ``dim``, keeping that axis with size 1."""
    shape = [1] * x.dim()
    shape[0] = x.shape[0]
    idx = index.view(shape)
    expand = list(x.shape)
    expand[dim] = 1
    return x.gather(dim, idx.expand(expand))


def write_at(cache: torch.Tensor, new: torch.Tensor, position: torch.Tensor, dim: int = 2) -> torch.Tensor:
    """Write ``new`` into ``cache`` at slot ``position[b]`` of axis ``dim``, shape-preserving:
    K/V (B, H, 1, dh) into (B, H, C, dh) on axis 2, HSTU's times (B, 1) into (B, C) on axis 1.

    One ScatterElements reading the cache input itself (on ATC's list): cheaper than a Where
    over the whole cache, and a runtime may alias input and output so that only the row is
    written (``genrec.onnx_graph.writable_in_place``)."""
    index = position.long().view(-1, *[1] * (new.dim() - 1)).expand(new.shape)
    return cache.scatter(dim, index, new.to(cache.dtype))


def pad_to(x: torch.Tensor, capacity: int, dim: int = 2) -> torch.Tensor:
    """Pad the time axis of a freshly computed K/V (B, H, T, dh) with zeros up to ``capacity``."""
    extra = capacity - x.shape[dim]
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, H*dh) -> (B, H, L, dh)."""
    b, l, _ = x.shape
    if heads == 1:  # same memory layout: skip the Transpose node onnxruntime would materialise
        return x.unsqueeze(1)
    return x.view(b, l, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, dh) -> (B, L, H*dh)."""
    b, h, l, dh = x.shape
    if h == 1:
        return x.squeeze(1)
    return x.transpose(1, 2).reshape(b, l, h * dh)


class GenerativeRecommender(nn.Module, abc.ABC):
    """Base of the four backbones: item table, head, and the prefill/step/rank skeleton.

    Subclasses implement ``encode`` (full sequence, training and prefill), ``_step`` and
    ``_rank``; everything about the cache layout, capacity and scoring lives here once.
    """

    arch: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.num_items + 1, config.d_model, padding_idx=0)
        nn.init.trunc_normal_(self.item_emb.weight, std=0.02, a=-0.04, b=0.04)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    # -- subclass surface -------------------------------------------------------------
    @abc.abstractmethod
    def encode(
        self,
        item_ids: torch.Tensor,
        lengths: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        request_time: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Cache]:
        """(B, T) history -> hidden (B, T, d) at every position and the uncapped cache."""

    @abc.abstractmethod
    def _step(self, new_item, position, timestamp, cache) -> tuple[torch.Tensor, Cache]:
        """One item per row at ``position`` -> hidden (B, d) and the updated cache."""

    @abc.abstractmethod
    def _rank(self, candidates, position, timestamp, cache) -> torch.Tensor:
        """(B, M) candidates at ``position`` -> hidden (B, M, d), each seeing history + itself."""

    def cache_names(self) -> list[str]:
        """Names of the cache tensors in order (``key.0``, ``value.0``, ...)."""
        return [f"{kind}.{i}" for i in range(self.config.num_layers) for kind in ("key", "value")]

    @property
    def needs_timestamps(self) -> bool:
        return False

    @torch.no_grad()
    def cache_shapes(self, capacity: int | None = None) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """(name, shape without the batch axis, dtype) of every cache tensor, read off a tiny prefill."""
        ids = torch.ones(2, 2, dtype=torch.long)
        lengths = torch.full((2,), 2)
        ts = torch.zeros(2, 2, dtype=torch.long) if self.needs_timestamps else None
        _, cache = self.prefill(ids, lengths, ts, ts[:, 0] if ts is not None else None, capacity)
        return [(n, tuple(c.shape[1:]), c.dtype) for n, c in zip(self.cache_names(), cache)]

    # -- shared inference entry points ------------------------------------------------
    def output_vector(self, h: torch.Tensor) -> torch.Tensor:
        """Encoder output -> the vector that is scored (L2-normalised for cosine scoring)."""
        return l2_normalize(h, self.config.eps) if self.config.l2_norm else h

    def item_vectors(self) -> torch.Tensor:
        """(N+1, d) table the head scores against; shares weights with the input table."""
        w = self.item_emb.weight
        return l2_normalize(w, self.config.eps) if self.config.l2_norm else w

    def prefill(
        self,
        item_ids: torch.Tensor,
        lengths: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        request_time: torch.Tensor | None = None,
        capacity: int | None = None,
    ) -> tuple[torch.Tensor, Cache]:
        """Encode a right-padded history and return the user vector at ``length-1`` and the cache."""
        capacity = capacity or self.config.capacity
        if not item_ids.shape[1] < capacity <= self.config.capacity:
            raise ValueError(
                f"capacity {capacity} must exceed the history length {item_ids.shape[1]} "
                f"and be at most {self.config.capacity}"
            )
        user, cache = self.encode_last(item_ids, lengths, timestamps, request_time)
        return self.output_vector(user), tuple(self._pad_cache(c, capacity) for c in cache)

    @abc.abstractmethod
    def encode_last(self, item_ids, lengths, timestamps=None, request_time=None) -> tuple[torch.Tensor, Cache]:
        """Like ``encode`` but returns only the hidden state at ``length-1`` (B, d).

        Serving needs one output row, so the last layer attends for that row only (the
        "logits at the last position only" of nanoGPT); earlier layers still run in full
        because their outputs feed the last layer's keys and values.
        """

    def _pad_cache(self, c: torch.Tensor, capacity: int) -> torch.Tensor:
        return pad_to(c, capacity, dim=c.dim() - 2 if c.dim() == 4 else 1)

    def step(
        self,
        new_item: torch.Tensor,
        position: torch.Tensor,
        timestamp: torch.Tensor | None,
        cache: Cache,
    ) -> tuple[torch.Tensor, Cache]:
        """Append one item per row at ``position`` (B,); returns the new user vector and cache."""
        h, cache = self._step(new_item.long(), position.long(), timestamp, cache)
        return self.output_vector(h), cache

    def rank(
        self,
        candidates: torch.Tensor,
        position: torch.Tensor,
        timestamp: torch.Tensor | None,
        cache: Cache,
    ) -> torch.Tensor:
        """M-FALCON: score (B, M) candidates placed at ``position``, each seeing history + itself.

        Every candidate token attends to the cached history (slots < position) and to itself,
        never to the other candidates, so its score equals appending that candidate alone.
        The score is the cosine (or dot) of the candidate token's output with the candidate's
        own item vector: a target-aware score computed in one pass for all M candidates.
        """
        h = self._rank(candidates.long(), position.long(), timestamp, cache)  # (B, M, d)
        target = self.item_vectors()[candidates.long()]  # (B, M, d)
        return (self.output_vector(h) * target).sum(-1)

    def score(
        self, user_emb: torch.Tensor, exclude_ids: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Head: top-k ids/scores and log_z for ``user_emb`` with ``exclude_ids`` masked."""
        return score_catalogue(user_emb, self.item_vectors(), exclude_ids, k, self.config.temperature)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def input_scale(config: ModelConfig) -> float:
    """Embedding scale sqrt(d) used by HSTU and SASRec inputs."""
    return math.sqrt(config.d_model)
