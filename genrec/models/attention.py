"""Softmax attention over a static cache, shared by the SASRec, GPT and Llama blocks.

Three shapes of the same computation: the full causal pass (training and prefill), one query
against the cache (step), and M candidate queries that see the cached history plus
themselves only (M-FALCON rank). Masks are built from ``arange`` comparisons so exported
graphs stay shape-static. Written with MatMul + Softmax rather than
``scaled_dot_product_attention`` so every exporter and ATC sees plain ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                     dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """q, k, v: (B, H, T, dh) -> (B, H, T, dh); position i sees j <= i."""
    t = q.shape[2]
    s = (q @ k.transpose(-1, -2)) * scale  # (B, H, T, T)
    keep = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    p = torch.softmax(s.masked_fill(~keep, NEG_INF), dim=-1)
    return F.dropout(p, dropout, training) @ v


def cached_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     position: torch.Tensor, scale: float) -> torch.Tensor:
    """One query per row, q: (B, H, 1, dh), against cache slots <= position -> (B, H, 1, dh)."""
    slots = torch.arange(k_cache.shape[2], device=q.device)
    valid = (slots[None, :] <= position[:, None])[:, None, None, :]  # (B, 1, 1, C)
    s = (q @ k_cache.transpose(-1, -2)) * scale
    return torch.softmax(s.masked_fill(~valid, NEG_INF), dim=-1) @ v_cache


def candidate_attention(q: torch.Tensor, k_self: torch.Tensor, v_self: torch.Tensor,
                        k_cache: torch.Tensor, v_cache: torch.Tensor, position: torch.Tensor,
                        scale: float) -> torch.Tensor:
    """M candidates per row, q/k_self/v_self: (B, H, M, dh), each seeing cache slots < position
    and itself only -> (B, H, M, dh)."""
    c = k_cache.shape[2]
    slots = torch.arange(c, device=q.device)
    valid = (slots[None, :] < position[:, None])[:, None, None, :]  # (B, 1, 1, C)
    s_hist = ((q @ k_cache.transpose(-1, -2)) * scale).masked_fill(~valid, NEG_INF)  # (B, H, M, C)
    s_self = (q * k_self).sum(-1, keepdim=True) * scale  # (B, H, M, 1)
    p = torch.softmax(torch.cat([s_hist, s_self], dim=-1), dim=-1)
    return p[..., :c] @ v_cache + p[..., c:] * v_self
