"""GPT-2 block (Radford et al. 2019; HF ``GPT2Block``) over item ids.

Pre-LN: h = x + Attn(LN1(x)); out = h + MLP(LN2(h)). Fused qkv projection with bias,
causal softmax(QKᵀ/sqrt(dh)), MLP d -> 4d -> GELU (tanh approximation, "gelu_new") -> d,
learned absolute positions added to the item embedding, final ``ln_f`` (MODELS.md §4.2).
GELU is spelt out with Tanh because ATC's ONNX parser registers no ``Gelu`` op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import ModelConfig, split_heads
from .stack import CachedBlock, SoftmaxBackbone


@dataclass(frozen=True)
class GPTConfig(ModelConfig):
    arch: str = "gpt"
    mlp_ratio: int = 4
    ln_eps: float = 1e-5


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's gelu_new, written out so the exported graph has Tanh, not Gelu."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


class GPTBlock(CachedBlock):
    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg.d_model, cfg.num_heads, cfg.dropout)
        d = cfg.d_model
        self.ln_1 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.fc = nn.Linear(d, cfg.mlp_ratio * d)
        self.proj = nn.Linear(cfg.mlp_ratio * d, d)
        self.drop = nn.Dropout(cfg.dropout)
        for lin in (self.c_attn, self.c_proj, self.fc, self.proj):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        for lin in (self.c_proj, self.proj):  # GPT-2 scales residual projections by 1/sqrt(2L)
            nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * cfg.num_layers))

    def project(self, x, pos):
        qkv = self.c_attn(self.ln_1(x))  # sliced, not chunked: Split-18 has no down-converter
        d = qkv.shape[-1] // 3
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
        h = self.num_heads
        return split_heads(q, h), split_heads(k, h), split_heads(v, h), None

    def finish(self, x, ctx, attn):
        h = x + self.drop(self.c_proj(attn))
        return h + self.drop(self.proj(gelu_tanh(self.fc(self.ln_2(h)))))


class GPT(SoftmaxBackbone):
    arch = "gpt"
    config_class = GPTConfig

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.pos_emb = nn.Embedding(config.capacity, config.d_model)
        nn.init.normal_(self.pos_emb.weight, std=0.01)
        self.blocks = nn.ModuleList(GPTBlock(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.ln_eps)
        self.drop = nn.Dropout(config.dropout)

    def embed(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.drop(self.item_emb(ids) + self.pos_emb(pos))  # (B, L, d)
