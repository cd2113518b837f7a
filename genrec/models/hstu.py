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
time buckets are computed once and shared by all layers, exactly as Meta's code computes
them whatever the runtime's Log (``time_buckets``); the causal pass runs in row blocks that
skip keys the mask would zero (``row_blocks``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
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

INT32_MAX = 2 ** 31 - 1


def reference_bucket(gap: torch.Tensor, num_buckets: int, divisor: float) -> torch.Tensor:
    """The time bucket exactly as Meta's research code computes it (MODELS.md §1.3): float32
    ``torch.log`` on CPU of max(|gap|, 1) taken as int64, divided by ``divisor`` in float32,
    truncated, clamped to [0, num_buckets]. This, not the formula in exact arithmetic (which
    differs from it on thousands of int32 gaps, the float32 rounding of gaps past 2^24
    included), is what a checkpoint trained with that code learnt; ``bucket_bounds`` is
    derived from it."""
    x = gap.to(device="cpu", dtype=torch.int64)
    return torch.clamp((torch.log(torch.abs(x).clamp(min=1)) / divisor).long(), 0, num_buckets)


@functools.lru_cache(maxsize=16)
def bucket_bounds(num_buckets: int, divisor: float) -> tuple[int, ...]:
    """``bounds[k]`` = the largest int32 gap whose reference bucket is at most ``k``, for every
    bucket an int32 gap reaches (the last entry is INT32_MAX): the integer edge table that
    makes ``time_buckets`` exact whatever the runtime's Log does.

    Derived by bisection on ``reference_bucket`` (monotone in |gap|; each edge found is checked
    to be a real step) and cached per (num_buckets, divisor). Must first run outside tracing,
    which ``HSTU.__init__`` ensures: under torch.export the scan's ops would be traced, not run.
    """
    if not (num_buckets >= 1 and math.isfinite(divisor) and divisor > 0):
        raise ConfigError(f"hstu time buckets: num_buckets {num_buckets} must be >= 1 and "
                          f"bucket_divisor {divisor} a positive number")
    reach = int(reference_bucket(torch.tensor([INT32_MAX]), num_buckets, divisor)[0])
    want = torch.arange(1, reach + 1, dtype=torch.int64)  # edge[k] = smallest gap in bucket >= k
    lo, hi = torch.ones_like(want), torch.full_like(want, INT32_MAX)
    while bool((lo < hi).any()):
        mid = (lo + hi) // 2
        ok = reference_bucket(mid, num_buckets, divisor) >= want
        lo, hi = torch.where(ok, lo, mid + 1), torch.where(ok, mid, hi)
    edges = lo
    if reach and not (bool((reference_bucket(edges, num_buckets, divisor) >= want).all())
                      and bool((reference_bucket(edges - 1, num_buckets, divisor) < want).all())):
        raise RuntimeError("torch.log is not monotone here: the HSTU time-bucket edges cannot be derived")
    return (*(int(e) - 1 for e in edges), INT32_MAX)


def _estimate_scale(num_buckets: int, divisor: float) -> float:
    """Multiplier of ln|gap| whose truncation is the reference bucket or one below it.

    1/divisor shrunk by a factor (1 - eps): the estimate then sits below the exact ratio by
    eps·y, from 0.016 buckets at a 2-second gap up to half a bucket at the largest gap that
    still matters (int32's end, or the top bucket). A Log off by less than that, a few ulps
    in fp32, even fp16's 1e-3 relative, can no longer land on the far side of an edge, and
    ``time_buckets`` then needs only an upward correction: one comparison, one gather."""
    y_top = min(math.log(2.0 ** 31) / divisor, num_buckets + 1.0)
    return (1.0 - 0.5 / max(y_top, 1.0)) / divisor


def time_buckets(delta: torch.Tensor, num_buckets: int, divisor: float,
                 bounds: torch.Tensor | None = None) -> torch.Tensor:
    """bucket(Δ) of int32 gaps, exactly ``reference_bucket`` (Meta's code) on every backend.

    A float Log rounds differently in torch, onnxruntime and ATC (and Meta divides by the
    divisor where a product by its inverse is cheaper), and a gap within a few ulps of a
    bucket edge then lands in the neighbouring bucket: the user embedding moves by up to 4e-2
    and the top-10 changes. So the Log only estimates, biased low (``_estimate_scale``) to the
    reference bucket or one below, and an int32 comparison of |Δ| with the integer edge table
    (``bucket_bounds``) adds the missing one. Cost on the (B, T, T) pass: a gather, a Sub,
    a Clip and an Add, all int32 (the scaled Log was there already); measured on onnxruntime,
    1 thread, ml-1m shape, batch 64, T = 200: about 3-4 ms, 10% of the prefill.

    Δ must be int32 (timestamps are rebased per history, see genrec.inputs; |Δ| < 2^31): that
    halves the memory traffic of the one (B, T, T) pass all layers share. ``bounds``: the
    table as an int32 tensor (the HSTU module's buffer, so exports see a constant); by default
    the cached one. The bucket comes out int64, the index type of the layers' GatherElements;
    exported graphs narrow it back to int32 (``genrec.onnx_graph.narrow_index_casts``).
    """
    if delta.dtype != torch.int32:
        raise TypeError(f"time_buckets takes int32 time differences, got {delta.dtype}")
    if bounds is None:
        bounds = torch.tensor(bucket_bounds(num_buckets, divisor), dtype=torch.int32, device=delta.device)
    mag = delta.abs().clamp_min_(1)
    est = torch.log(mag.to(torch.float32)).mul_(_estimate_scale(num_buckets, divisor)).to(torch.int32)
    if math.log(2.0 ** 31) / divisor >= num_buckets:  # the estimate can pass the top bucket
        est = est.clamp_max_(num_buckets)
    if torch.onnx.is_in_onnx_export():
        bound = lookup(bounds, est)  # GatherElements: ~2.5x a flat Gather on onnxruntime
    else:  # eager: int32 indices, no (B, T, T) int64 copy, no expanded table
        bound = bounds.index_select(0, est.reshape(-1)).view(est.shape)
    # 1 where |Δ| passes the edge: Sub + Clip (both in [0, 2^31): no overflow), not Greater +
    # Cast, because onnxruntime's Cast runs on one thread and Sub/Clip on all of them
    return est.add_((mag - bound).clamp_(0, 1)).to(torch.int64)


ROW_BLOCKS = 3  # query-row blocks of the causal pass from BLOCK_FROM history slots on
BLOCK_FROM = 64
BLOCK_ROWS = 128  # past ROW_BLOCKS * BLOCK_ROWS slots, blocks of at most this many rows


def row_blocks(t: int) -> list[tuple[int, int]]:
    """Row ranges [a, b) that split a causal (T, T) pass: rows [a, b) see keys [0, b) only.

    Three blocks skip a third of every (T, T) tensor, entries the causal mask would zero anyway:
    the bucket Log/Cast passes, the bias gather and adds, QKᵀ, SiLU and A·V, which dominate an
    HSTU prefill at T=200, shrink by a third. Measured on onnxruntime at T=200, batch 64: 2
    blocks 9% faster than 1, 3 blocks 15%, 4 no better than 3 (batch 1: 2% slower, more
    nodes). Below BLOCK_FROM slots the extra ops cost more than they save.

    Long histories get blocks of at most BLOCK_ROWS rows: the largest (B, rows, T) tensor of
    the pass, and so the peak memory of a prefill, then grows as B·T·BLOCK_ROWS instead of
    B·T²/3, and the skipped share of the (T, T) square approaches a half (T=2048: 16 blocks,
    47% skipped). Results are exactly those of the single block (each row's sums run over the
    same keys)."""
    if t < BLOCK_FROM:
        return [(0, t)]
    n = max(ROW_BLOCKS, -(-t // BLOCK_ROWS))
    edges = [round(t * i / n) for i in range(n + 1)]
    return list(zip(edges, edges[1:]))


def lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for a 1-D table, as one GatherElements per row of the index's first axis.

    ``table[index]`` with an N-D index exports as GatherND, and a flat Gather over millions of
    indices is little better; onnxruntime runs GatherElements about 7x faster here. The index
    is seen as (rows of its first axis, the rest flattened), a free Reshape, and the table as
    that many copies of itself (an Expand of a few KB, not of the index's (B, rows, 129) shape,
    which cost 1.8 ms of a 75 ms batch-64 prefill): onnxruntime's GatherElements splits its
    work by rows of the index, so a flat index ran on one thread whatever the pool held (HSTU
    (B, T, T) bucket and bias lookups, batch 64: 0.57 ms flat against 0.35 ms by batch rows on
    2 threads, and 0.67 against 0.57 on one)."""
    if index.dim() < 2:
        return torch.gather(table, 0, index.to(torch.int64))
    rows = index.reshape(index.shape[0], -1)
    return torch.gather(table[None].expand(rows.shape[0], -1), 1, rows.to(torch.int64)).view(index.shape)


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

    def _project(self, x: torch.Tensor, row: torch.Tensor | None = None):
        """SiLU(U), V, Q, K of ``x``; with ``row`` (B,), U and Q of that row only (B, 1, ...):
        the last layer of a prefill attends for one query row, so projecting every row's U and
        Q there was half its projection work thrown away (K and V are kept for the cache)."""
        xn = F.layer_norm(x, (x.shape[-1],), eps=self.eps)
        hv, hq = self.heads * self.dv, self.heads * self.dqk
        # one product per part, from row slices of the fused weight (constants once exported): a
        # fused product cut afterwards makes onnxruntime copy the four parts out (a Split), which
        # cost more than the wider GEMM saved: batch-64 prefill 11% faster on onnxruntime and
        # 17% in eager torch, batch 1 3-4% slower (more ops)
        w, edges = self.uvqk.weight, (0, hv, 2 * hv, 2 * hv + hq, 2 * hv + 2 * hq)
        uq_in = xn if row is None else take_row(xn, row, 1)
        u, v, q, k = (F.silu(F.linear(uq_in if i in (0, 2) else xn, w[a:b]))
                      for i, (a, b) in enumerate(zip(edges, edges[1:])))
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
        [a, b) attend to keys [0, b) only, with ``buckets`` the time buckets of each block (a
        list, or a function of (a, b) that makes them)."""
        u, v, q, k = self._project(x)  # q, k, v: (B, H, T, d)
        out = []
        for i, (a, b) in enumerate(blocks):
            bucket = buckets(a, b) if callable(buckets) else buckets[i]
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
        u_row, v, q_row, k = self._project(x, position)
        return self._attend_row(take_row(x, position, 1), u_row, q_row, k, v, position, rel_row, bucket_row)[:, 0], k, v

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
        # the integer edge table of the time buckets, derived here (never under tracing) from
        # the config; not a weight, so not in the state dict
        bounds = bucket_bounds(config.num_buckets, config.bucket_divisor)
        self.register_buffer("time_bounds", torch.tensor(bounds, dtype=torch.int32), persistent=False)

    @property
    def needs_timestamps(self) -> bool:
        return True

    def cache_names(self) -> list[str]:
        return super().cache_names() + ["timestamps"]

    def _embed(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        valid = (ids != 0).unsqueeze(-1).to(self.item_emb.weight.dtype)
        return self.drop(self.item_emb(ids) * self.scale + self.pos_emb(pos)) * valid

    def _buckets(self, delta: torch.Tensor) -> torch.Tensor:
        return time_buckets(delta, self.config.num_buckets, self.config.bucket_divisor, self.time_bounds)

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

        def block_buckets(a: int, b: int) -> torch.Tensor:  # rows [a, b) against the keys they see
            return self._buckets(nxt[:, a:b, None] - ts[:, None, :b])

        # time buckets of each row block, shared by all layers that attend every row; with one
        # such layer (2 layers and last_only) each block's are made where used, so only one
        # block's (B, rows, T) indices are ever alive
        full = len(self.layers) - (1 if last_only else 0)
        buckets = [block_buckets(a, b) for a, b in blocks] if full > 1 else block_buckets
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
