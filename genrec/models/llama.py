"""Llama decoder block (Touvron et al. 2023; HF ``LlamaDecoderLayer``) over item ids.

Pre-norm with RMSNorm, bias-free q/k/v/o, RoPE on q and k (θ = 10000, rotate-half pairing),
causal softmax attention, SwiGLU MLP ``down(SiLU(gate x) ⊙ up x)`` with the hidden size
2/3·4d rounded up to ``multiple_of``, final RMSNorm, no absolute positions (MODELS.md §4.1).
Input is sqrt(d)·E[item] as in the USTC group's LLaMA2_SASRec. RMSNorm is written out
(ReduceMean, Sqrt) because ATC registers no RMSNormalization op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import ModelConfig, split_heads
from .stack import CachedBlock, SoftmaxBackbone


@dataclass(frozen=True)
class LlamaConfig(ModelConfig):
    arch: str = "llama"
    multiple_of: int = 32
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class LlamaBlock(CachedBlock):
    def __init__(self, cfg: LlamaConfig, rope: "Rope"):
        super().__init__(cfg.d_model, cfg.num_heads, cfg.dropout)
        d = cfg.d_model
        hidden = cfg.multiple_of * math.ceil(int(2 * 4 * d / 3) / cfg.multiple_of)
        self.attn_norm = RMSNorm(d, cfg.norm_eps)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.mlp_norm = RMSNorm(d, cfg.norm_eps)
        self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.rope = [rope]  # a list, so the shared tables are not registered once per block

    def project(self, x, pos):
        h = self.attn_norm(x)
        q, k = split_heads(self.q(h), self.num_heads), split_heads(self.k(h), self.num_heads)
        cos, sin = self.rope[0](pos)  # (B, 1, L, dh)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        return q, k, split_heads(self.v(h), self.num_heads), None

    def finish(self, x, ctx, attn):
        h = x + self.drop(self.o(attn))
        m = self.mlp_norm(h)
        return h + self.drop(self.down(F.silu(self.gate(m)) * self.up(m)))


class Rope(nn.Module):
    """cos/sin tables for every position the cache can hold, gathered per token."""

    def __init__(self, positions: int, head_dim: int, theta: float):
        super().__init__()
        inv = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        ang = torch.arange(positions, dtype=torch.float64)[:, None] * inv[None, :]  # (P, dh/2)
        ang = torch.cat([ang, ang], dim=-1)
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)

    def forward(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[pos][:, None], self.sin[pos][:, None]  # (B, 1, L, dh)


class Llama(SoftmaxBackbone):
    arch = "llama"
    config_class = LlamaConfig

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.rope = Rope(config.capacity, config.d_model // config.num_heads, config.rope_theta)
        self.blocks = nn.ModuleList(LlamaBlock(config, self.rope) for _ in range(config.num_layers))
        self.final_norm = RMSNorm(config.d_model, config.norm_eps)
        self.drop = nn.Dropout(config.dropout)
        self.scale = math.sqrt(config.d_model)
        for name, p in self.named_parameters():
            if name.startswith("blocks") and p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def embed(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.drop(self.item_emb(ids) * self.scale)  # positions enter through RoPE
