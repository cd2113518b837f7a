"""HSTU (Zhai et al., "Actions Speak Louder than Words", ICML 2024), research variant.

Follows Meta's ``generative_recommenders/research/modeling/sequential/hstu.py`` (MODELS.md
§1.1–1.4): input sqrt(d)·E[item] + P[pos]; per layer a non-affine LayerNorm, one fused UVQK
projection without bias with SiLU on all four parts, pointwise attention
``SiLU(QKᵀ + rab) / N`` (no 1/sqrt(d), N = the fixed padded length, causal mask including
the diagonal), ``rab`` = relative-position bias + log-bucketed time-difference bias using
the *next* item's timestamp, shared by all heads; then ``W_o(U ⊙ LayerNorm(A·V)) + b_o + x``
with a non-affine LayerNorm over all heads; no FFN, no final norm.

Time convention: position i's bias uses t[i+1]; the last history position and every
generated item use the request time. With it, prefill of a prefix followed by steps equals
prefill of the whole sequence. Deployment choices: the 1/N division is applied to A·V
(identical by linearity, and it keeps elementwise work off the (T, T) matrix); the
position bias is gathered once per layer from a constant index (batch-independent); the
time buckets are computed once and shared by all layers; the causal pass runs in row blocks
that skip keys the mask would zero (``row_blocks``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Cache, GenerativeRecommender, ModelConfig, merge_heads, split_heads, take_row, write_at


@dataclass(frozen=True)
class HSTUConfig(ModelConfig):
    arch: str = "hstu"
    attn_dim: int = 0  # d_qk per head; 0 = d_model // num_heads
    linear_dim: int = 0  # d_v per head; 0 = d_model // num_heads
    linear_dropout: float = 0.2
    num_buckets: int = 128
    bucket_divisor: float = 0.301  # log-bucket width, timestamps in seconds


MASKED = -1.0e4  # added to the bias outside the causal window: SiLU(x - 1e4) is exactly 0 in fp32/fp16


def time_buckets(delta: torch.Tensor, num_buckets: int, divisor: float) -> torch.Tensor:
    """bucket(Δ) = clamp(trunc(ln(max(|Δ|, 1)) / divisor), 0, num_buckets), computed in fp32.

    Δ is int32 (timestamps are rebased per history, see genrec.inputs), which halves the
    memory traffic of the one (B, T, T) pass that all layers share; the bucket comes out as
    int64, the index type the layers' GatherElements lookups take.
    """
    mag = delta.abs().clamp_min(1).to(torch.float32)
    bucket = (torch.log(mag) * (1.0 / divisor)).to(torch.int64)  # int64: gather's index type, no 2nd cast
    if math.log(2.0 ** 31) / divisor < num_buckets:  # int32 Δ can't reach the top bucket: no clamp
        return bucket
    return bucket.clamp_max(num_buckets)


ROW_BLOCKS = 3  # query-row blocks of the causal pass from BLOCK_FROM history slots on
BLOCK_FROM = 64


def row_blocks(t: int) -> list[tuple[int, int]]:
    """Row ranges [a, b) that split a causal (T, T) pass: rows [a, b) see keys [0, b) only.

    Three blocks skip a third of every (T, T) tensor, entries the causal mask would zero anyway:
    the bucket Log/Cast passes, the bias gather and adds, QKᵀ, SiLU and A·V, which dominate an
    HSTU prefill at T=200, shrink by a third. Measured on onnxruntime at T=200, batch 64: 2
    blocks 9% faster than 1, 3 blocks 15%, 4 no better than 3 (batch 1: 2% slower, more
    nodes). Below BLOCK_FROM slots the extra ops cost more than they save. Results are exactly
    those of the single block (each row's sums run over the same keys)."""
    if t < BLOCK_FROM:
        return [(0, t)]
    edges = [round(t * i / ROW_BLOCKS) for i in range(ROW_BLOCKS + 1)]
    return list(zip(edges, edges[1:]))


def lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for a 1-D table, as Expand + GatherElements over the last axis.

    ``table[index]`` with an N-D index exports as GatherND, and a flat Gather over millions of
    indices is little better; onnxruntime runs GatherElements about 7x faster here."""
    return torch.gather(table.expand(*index.shape[:-1], table.shape[0]), -1, index.to(torch.int64))


class HSTULayer(nn.Module):
    def __init__(self, cfg: HSTUConfig):
        super().__init__()
        h = cfg.num_heads
        self.heads = h
        self.dqk = cfg.attn_dim or cfg.d_model // h
        self.dv = cfg.linear_dim or cfg.d_model // h
        self.n = cfg.capacity  # the fixed divisor N (211 for T = 200)
        self.eps = 1e-6
        self.uvqk = nn.Linear(cfg.d_model, 2 * h * (self.dv + self.dqk), bias=False)
        nn.init.normal_(self.uvqk.weight, std=0.02)
        self.o = nn.Linear(h * self.dv, cfg.d_model)
        nn.init.xavier_uniform_(self.o.weight)
        nn.init.zeros_(self.o.bias)
        self.w_pos = nn.Parameter(torch.randn(2 * self.n - 1) * 0.02)
        self.w_ts = nn.Parameter(torch.randn(cfg.num_buckets + 1) * 0.02)
        self.drop = nn.Dropout(cfg.linear_dropout)

    def _project(self, x: torch.Tensor):
        xn = F.layer_norm(x, (x.shape[-1],), eps=self.eps)
        hv, hq = self.heads * self.dv, self.heads * self.dqk
        # one product per part, from row slices of the fused weight (constants once exported): a
        # fused product cut afterwards makes onnxruntime copy the four parts out (a Split), which
        # cost more than the wider GEMM saved: batch-64 prefill 11% faster on onnxruntime and
        # 17% in eager torch, batch 1 3-4% slower (more ops)
        w, edges = self.uvqk.weight, (0, hv, 2 * hv, 2 * hv + hq, 2 * hv + 2 * hq)
        u, v, q, k = (F.silu(F.linear(xn, w[a:b])) for a, b in zip(edges, edges[1:]))
        return u, split_heads(v, self.heads), split_heads(q, self.heads), split_heads(k, self.heads)

    def _finish(self, x: torch.Tensor, u: torch.Tensor, av: torch.Tensor) -> torch.Tensor:
        o = merge_heads(av) / self.n  # (B, L, H*dv); = (SiLU(S)/N)·V
        o = F.layer_norm(o, (o.shape[-1],), eps=self.eps)
        return self.o(self.drop(u * o)) + x

    def bias(self, rel_index: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
        """rab = w_pos[rel_index] + w_ts[buckets]; rel_index broadcasts against buckets."""
        return lookup(self.w_pos, rel_index) + lookup(self.w_ts, buckets)

    def forward(self, x, rel_index, buckets, causal, blocks):
        """Full causal pass; ``blocks`` (see ``row_blocks``) split the query rows, and rows
        [a, b) attend to keys [0, b) only, with ``buckets`` the time buckets of each block."""
        u, v, q, k = self._project(x)  # q, k, v: (B, H, T, d)
        out = []
        for (a, b), bucket in zip(blocks, buckets):
            # the causal mask rides on the batch-independent position bias: SiLU(s - 1e4) = 0
            pos_bias = lookup(self.w_pos, rel_index[a:b, :b]) + torch.where(causal[a:b, :b], 0.0, MASKED)
            s = q[:, :, a:b] @ k[:, :, :b].transpose(-1, -2) + (pos_bias + lookup(self.w_ts, bucket))[:, None]
            out.append(F.silu(s) @ v[:, :, :b])  # (B, H, b - a, d)
        return self._finish(x, u, out[0] if len(out) == 1 else torch.cat(out, dim=2)), k, v

    def _attend_row(self, x, u, q, k_all, v_all, position, rel_row, bucket_row):
        """One query row per batch at ``position`` against keys at slots <= position."""
        slots = torch.arange(k_all.shape[2], device=x.device)
        valid = (slots[None, :] <= position[:, None])[:, None, None, :]
        s = q @ k_all.transpose(-1, -2) + self.bias(rel_row, bucket_row)[:, None, None, :]
        a = torch.where(valid, F.silu(s), torch.zeros_like(s))
        return self._finish(x, u, a @ v_all)

    def last_row(self, x, position, rel_row, bucket_row):
        """Full K/V (for the cache), attention output for the row at ``position`` only."""
        u, v, q, k = self._project(x)
        x_row, u_row, q_row = take_row(x, position, 1), take_row(u, position, 1), take_row(q, position, 2)
        return self._attend_row(x_row, u_row, q_row, k, v, position, rel_row, bucket_row)[:, 0], k, v

    def step(self, x, position, rel_row, bucket_row, k_cache, v_cache):
        u, v, q, k = self._project(x)  # (B, H, 1, d)
        k_cache, v_cache = write_at(k_cache, k, position), write_at(v_cache, v, position)
        return self._attend_row(x, u, q, k_cache, v_cache, position, rel_row, bucket_row), k_cache, v_cache

    def rank(self, x, position, rel_row, bucket_row, k_cache, v_cache):
        u, v, q, k = self._project(x)  # (B, H, M, d): candidates, all at ``position``
        slots = torch.arange(k_cache.shape[2], device=x.device)
        valid = (slots[None, :] < position[:, None])[:, None, None, :]
        s_hist = q @ k_cache.transpose(-1, -2) + self.bias(rel_row, bucket_row)[:, None, None, :]
        a_hist = torch.where(valid, F.silu(s_hist), torch.zeros_like(s_hist))  # (B, H, M, C)
        # a candidate sees itself at relative offset 0 and time difference 0 (bucket 0)
        s_self = (q * k).sum(-1, keepdim=True) + self.w_pos[self.n - 1] + self.w_ts[0]
        return self._finish(x, u, a_hist @ v_cache + F.silu(s_self) * v)


class HSTU(GenerativeRecommender):
    arch = "hstu"
    config_class = HSTUConfig

    def __init__(self, config: HSTUConfig):
        super().__init__(config)
        self.n = config.capacity
        self.pos_emb = nn.Embedding(self.n, config.d_model)
        nn.init.xavier_normal_(self.pos_emb.weight)
        self.layers = nn.ModuleList(HSTULayer(config) for _ in range(config.num_layers))
        self.drop = nn.Dropout(config.dropout)
        self.scale = math.sqrt(config.d_model)

    @property
    def needs_timestamps(self) -> bool:
        return True

    def cache_names(self) -> list[str]:
        return super().cache_names() + ["timestamps"]

    def _embed(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        valid = (ids != 0).unsqueeze(-1).to(self.item_emb.weight.dtype)
        return self.drop(self.item_emb(ids) * self.scale + self.pos_emb(pos)) * valid

    def _buckets(self, delta: torch.Tensor) -> torch.Tensor:
        return time_buckets(delta, self.config.num_buckets, self.config.bucket_divisor)

    def encode(self, item_ids, lengths, timestamps=None, request_time=None):
        return self._encode(item_ids, lengths, timestamps, request_time, last_only=False)

    def encode_last(self, item_ids, lengths, timestamps=None, request_time=None):
        return self._encode(item_ids, lengths, timestamps, request_time, last_only=True)

    def _encode(self, item_ids, lengths, timestamps, request_time, last_only):
        if timestamps is None or request_time is None:
            raise ValueError("HSTU needs timestamps and request_time")
        b, t = item_ids.shape
        pos = torch.arange(t, device=item_ids.device)
        x = self._embed(item_ids, pos[None, :])
        ts, now = timestamps.to(torch.int32), request_time.to(torch.int32)
        nxt = torch.cat([ts[:, 1:], ts[:, -1:]], dim=1)  # t[i+1]
        final = lengths.long() - 1
        nxt = torch.where(pos[None, :] == final[:, None], now[:, None], nxt)  # last position: request time
        blocks = row_blocks(int(t))  # a plain int also under TorchScript tracing (static T)
        # time buckets of each row block against the keys it sees, shared by all layers
        buckets = [self._buckets(nxt[:, a:b, None] - ts[:, None, :b]) for a, b in blocks]
        rel = (self.n - 1) + pos[None, :] - pos[:, None]  # (T, T) constant
        causal = pos[None, :] <= pos[:, None]
        cache: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            if last_only and i == len(self.layers) - 1:
                # the row at length-1, its buckets computed afresh from its next time (the request
                # time): the block buckets then only ever serve as gather indices
                x, k, v = layer.last_row(x, final, *self._rows(final, now, ts))
            else:
                x, k, v = layer(x, rel, buckets, causal, blocks)
            cache += [k, v]
        return x, tuple(cache) + (ts,)

    def _rows(self, position, timestamp, ts_cache):
        """Bias indices of one query row at ``position`` with next-time ``timestamp``: (B, C) each."""
        slots = torch.arange(ts_cache.shape[1], device=ts_cache.device)
        rel = (self.n - 1) + slots[None, :] - position[:, None]
        return rel, self._buckets(timestamp[:, None] - ts_cache)

    def _step(self, new_item, position, timestamp, cache: Cache):
        if timestamp is None:
            raise ValueError("HSTU needs a timestamp per step (the request time)")
        ts = timestamp.to(torch.int32)
        ts_cache = write_at(cache[-1], ts[:, None], position, dim=1)
        rel, buckets = self._rows(position, ts, ts_cache)
        x = self._embed(new_item[:, None], position[:, None])
        out: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            x, k, v = layer.step(x, position, rel, buckets, cache[2 * i], cache[2 * i + 1])
            out += [k, v]
        return x[:, 0], tuple(out) + (ts_cache,)

    def _rank(self, candidates, position, timestamp, cache: Cache):
        if timestamp is None:
            raise ValueError("HSTU needs the request time to rank candidates")
        rel, buckets = self._rows(position, timestamp.to(torch.int32), cache[-1])
        x = self._embed(candidates, position[:, None].expand_as(candidates))
        for i, layer in enumerate(self.layers):
            x = layer.rank(x, position, rel, buckets, cache[2 * i], cache[2 * i + 1])
        return x
