"""SASRec (Kang & McAuley, ICDM 2018) as in Meta's generative-recommenders baseline.

Block (MODELS.md §1.8, §3.1): queries from LayerNorm(x), keys and values from the
un-normalised x; the attention residual adds the normalised queries; then
LayerNorm -> point-wise FFN (ReLU) with its own residual; outputs are multiplied by the
validity mask; a final LayerNorm follows the stack. Input: sqrt(d)·E[item] + P[pos].
Differences from the original: right padding (oldest item at index 0) so that a static
KV cache can grow to the right, and sampled-softmax training (see genrec.training).
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
class SASRecConfig(ModelConfig):
    arch: str = "sasrec"
    ffn_dim: int = 0  # 0 = d_model (Meta's SASRec configs)
    ln_eps: float = 1e-8


class SASRecBlock(CachedBlock):
    def __init__(self, cfg: SASRecConfig):
        super().__init__(cfg.d_model, cfg.num_heads, cfg.dropout)
        d, f = cfg.d_model, cfg.ffn_dim or cfg.d_model
        self.ln_attn = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln_ffn = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.ffn_in, self.ffn_out = nn.Linear(d, f), nn.Linear(f, d)
        self.drop = nn.Dropout(cfg.dropout)

    def project(self, x, pos):
        qn = self.ln_attn(x)  # keys/values use the un-normalised x (original SASRec)
        return (split_heads(self.q(qn), self.num_heads), split_heads(self.k(x), self.num_heads),
                split_heads(self.v(x), self.num_heads), qn)

    def finish(self, x, qn, attn):
        h = self.ln_ffn(qn + self.o(attn))
        return h + self.drop(self.ffn_out(self.drop(F.relu(self.ffn_in(h)))))


class SASRec(SoftmaxBackbone):
    arch = "sasrec"
    config_class = SASRecConfig
    mask_padding = True

    def __init__(self, config: SASRecConfig):
        super().__init__(config)
        self.pos_emb = nn.Embedding(config.capacity, config.d_model)
        # Meta's LearnablePositionalEmbeddingInputFeaturesPreprocessor: truncated normal with
        # std sqrt(1/d). nn.Embedding's default N(0, 1) drowns the item signal (sqrt(d)·E with
        # E ~ 0.02) about 9:1 and training collapsed (valid NDCG@10 ~0.001 on Beauty).
        std = 1.0 / math.sqrt(config.d_model)
        nn.init.trunc_normal_(self.pos_emb.weight, std=std, a=-2 * std, b=2 * std)
        self.blocks = nn.ModuleList(SASRecBlock(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.ln_eps)
        self.drop = nn.Dropout(config.dropout)
        self.scale = math.sqrt(config.d_model)

    def embed(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.drop(self.item_emb(ids) * self.scale + self.pos_emb(pos))  # (B, L, d)
