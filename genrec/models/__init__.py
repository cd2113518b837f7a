"""The model zoo: four generative backbones over item-id sequences with one common surface.

``build_model(config)`` builds any of them; ``config_from_dict`` restores a config from a
checkpoint or a bundle manifest; ``PRESETS`` holds the published shapes (MODELS.md §1.8)
and a small fast preset for tests and the demo.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import ConfigError
from .base import Cache, GenerativeRecommender, ModelConfig
from .gpt import GPT, GPTConfig
from .head import l2_normalize, score_catalogue
from .hstu import HSTU, HSTUConfig
from .llama import Llama, LlamaConfig
from .sasrec import SASRec, SASRecConfig

MODELS: dict[str, type[GenerativeRecommender]] = {m.arch: m for m in (HSTU, SASRec, GPT, Llama)}
ARCHS = tuple(MODELS)

# Shapes from Meta's frozen gin configs (MODELS.md §1.8); SASRec/GPT/Llama use the SASRec
# baseline shape of the same dataset, as the scaling study does. "small" is for tests/demo;
# "beauty" is for Amazon Beauty (Books-like short sequences: T = 50, dropout 0.5, one head).
# Both use dropout 0.5: on Beauty's ~9-item histories 0.5 beat 0.2 for every backbone
# (slice test NDCG@10, 2 seeds each, same budget).
PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(d_model=32, num_layers=2, num_heads=2, max_len=50, max_new_items=11, dropout=0.5),
    "beauty": dict(d_model=64, num_layers=2, num_heads=1, max_len=50, max_new_items=11, dropout=0.5),
    "ml-1m": dict(d_model=50, num_layers=2, num_heads=1, max_len=200, max_new_items=11, dropout=0.2),
    "ml-1m-large": dict(d_model=50, num_layers=8, num_heads=2, max_len=200, max_new_items=11, dropout=0.2),
    "ml-20m": dict(d_model=256, num_layers=4, num_heads=4, max_len=200, max_new_items=11, dropout=0.2),
    "ml-20m-large": dict(d_model=256, num_layers=16, num_heads=8, max_len=200, max_new_items=11, dropout=0.2),
}


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Rebuild a backbone config; unknown keys or archs are a ConfigError, not a TypeError."""
    arch = d.get("arch")
    if arch not in MODELS:
        raise ConfigError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    cls = MODELS[arch].config_class
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {arch} config key(s): {', '.join(unknown)}")
    return cls(**d)


def make_config(arch: str, num_items: int, preset: str = "small", **overrides: Any) -> ModelConfig:
    """Config for ``arch`` at a preset shape, with overrides (``--set key=value``)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    d = dict(PRESETS[preset], arch=arch, num_items=num_items)
    if arch == "hstu":
        d["linear_dropout"] = d["dropout"]
    d.update(overrides)
    return config_from_dict(d)


def build_model(config: ModelConfig) -> GenerativeRecommender:
    """Instantiate the backbone a config names."""
    if config.d_model % config.num_heads:
        raise ConfigError(f"d_model {config.d_model} is not divisible by num_heads {config.num_heads}")
    return MODELS[config.arch](config)


__all__ = [
    "ARCHS", "Cache", "GenerativeRecommender", "GPT", "GPTConfig", "HSTU", "HSTUConfig", "Llama",
    "LlamaConfig", "MODELS", "ModelConfig", "PRESETS", "SASRec", "SASRecConfig", "build_model",
    "config_from_dict", "l2_normalize", "make_config", "score_catalogue",
]
