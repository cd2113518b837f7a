"""The decoder-stack skeleton shared by the softmax-attention backbones (SASRec, GPT, Llama).

A block only says how it projects q/k/v (``project``) and what it does after attention
(``finish``); the three inference shapes (full causal pass, one cached step, M-FALCON
candidates) are written once here over ``genrec.models.attention``. HSTU has its own
pointwise attention and bias, so it does not use this file.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import nn

from .attention import cached_attention, candidate_attention, causal_attention
from .base import Cache, GenerativeRecommender, merge_heads, take_row, write_at


class CachedBlock(nn.Module, abc.ABC):
    """A pre/post-norm attention block whose K/V can live in a static cache."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.attn_dropout = dropout

    @abc.abstractmethod
    def project(self, x: torch.Tensor, pos: torch.Tensor):
        """x (B, L, d), pos (B, L) -> q, k, v each (B, H, L, dh) and a context for ``finish``."""

    @abc.abstractmethod
    def finish(self, x: torch.Tensor, ctx, attn: torch.Tensor) -> torch.Tensor:
        """Residuals, norms and MLP after attention; attn is (B, L, H*dh)."""

    def forward(self, x, pos):
        q, k, v, ctx = self.project(x, pos)
        a = causal_attention(q, k, v, self.scale, self.attn_dropout, self.training)
        return self.finish(x, ctx, merge_heads(a)), k, v

    def last_row(self, x, pos, position):
        """Full K/V (for the cache) but attention for the row at ``position`` only."""
        q, k, v, ctx = self.project(x, pos)
        q_row, x_row = take_row(q, position, 2), take_row(x, position, 1)
        ctx_row = None if ctx is None else take_row(ctx, position, 1)
        a = cached_attention(q_row, k, v, position, self.scale)
        return self.finish(x_row, ctx_row, merge_heads(a))[:, 0], k, v

    def step(self, x, pos, position, k_cache, v_cache):
        q, k, v, ctx = self.project(x, pos)  # L = 1
        k_cache = write_at(k_cache, k, position)
        v_cache = write_at(v_cache, v, position)
        a = cached_attention(q, k_cache, v_cache, position, self.scale)
        return self.finish(x, ctx, merge_heads(a)), k_cache, v_cache

    def rank(self, x, pos, position, k_cache, v_cache):
        q, k, v, ctx = self.project(x, pos)  # L = M candidates, all at ``position``
        a = candidate_attention(q, k, v, k_cache, v_cache, position, self.scale)
        return self.finish(x, ctx, merge_heads(a))


class SoftmaxBackbone(GenerativeRecommender):
    """Embed -> CachedBlocks -> final norm; subclasses provide ``embed``, ``blocks``, ``final_norm``."""

    blocks: nn.ModuleList
    final_norm: nn.Module
    mask_padding: bool = False  # SASRec multiplies every block output by the validity mask

    @abc.abstractmethod
    def embed(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """ids (B, L), pos (B, L) -> input vectors (B, L, d)."""

    def encode(self, item_ids, lengths, timestamps=None, request_time=None):
        return self._encode(item_ids, lengths, last_only=False)

    def encode_last(self, item_ids, lengths, timestamps=None, request_time=None):
        return self._encode(item_ids, lengths, last_only=True)

    def _encode(self, item_ids, lengths, last_only: bool):
        b, t = item_ids.shape
        pos = torch.arange(t, device=item_ids.device)[None, :].expand(b, t)
        valid = (item_ids != 0).unsqueeze(-1).to(self.item_emb.weight.dtype)  # (B, T, 1)
        x = self.embed(item_ids, pos) * valid
        cache: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            if last_only and i == len(self.blocks) - 1:
                x, k, v = blk.last_row(x, pos, lengths.long() - 1)  # (B, d): the row at length-1
            else:
                x, k, v = blk(x, pos)
                if self.mask_padding:
                    x = x * valid
            cache += [k, v]
        return self.final_norm(x), tuple(cache)

    def _step(self, new_item, position, timestamp, cache: Cache):
        pos = position[:, None]  # (B, 1)
        x = self.embed(new_item[:, None], pos)
        out: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            x, k, v = blk.step(x, pos, position, cache[2 * i], cache[2 * i + 1])
            out += [k, v]
        return self.final_norm(x)[:, 0], tuple(out)

    def _rank(self, candidates, position, timestamp, cache: Cache):
        pos = position[:, None].expand_as(candidates)  # every candidate sits at ``position``
        x = self.embed(candidates, pos)
        for i, blk in enumerate(self.blocks):
            x = blk.rank(x, pos, position, cache[2 * i], cache[2 * i + 1])
        return self.final_norm(x)
