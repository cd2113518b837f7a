"""Meta's time bucket and the gap set that reaches every bucket edge, shared by the tests of
HSTU's exact buckets (``models/test_time_buckets.py``) and of the bit-cell table
(``test_bucket_table.py``)."""

from __future__ import annotations

import numpy as np
import torch

from genrec.models.hstu import bucket_bounds

INT32_MAX = 2 ** 31 - 1
CONFIGS = [(128, 0.301), (16, 0.301), (128, 0.1)]  # Meta's; a top bucket int32 reaches; one it passes


def meta_bucket(x: torch.Tensor, num_buckets: int, divisor: float) -> torch.Tensor:
    """Meta's research code, verbatim but for the parameters (MODELS.md §1.3)."""
    return torch.clamp((torch.log(torch.abs(x).clamp(min=1)) / divisor).long(), 0, num_buckets)


def naive_bucket(x: torch.Tensor, num_buckets: int, divisor: float) -> torch.Tensor:
    """The former float-only bucket, to show the gap set hits the edges where it goes wrong."""
    mag = x.abs().clamp_min(1).to(torch.float32)
    return (torch.log(mag) * (1.0 / divisor)).to(torch.int64).clamp(0, num_buckets)


def edges(num_buckets: int, divisor: float) -> np.ndarray:
    """Smallest gap of each bucket >= 1 that int32 reaches (from the table under test)."""
    return np.array(bucket_bounds(num_buckets, divisor)[:-1], dtype=np.int64) + 1


def gap_set(num_buckets: int, divisor: float, random: int = 1_000_000) -> np.ndarray:
    near = (edges(num_buckets, divisor)[:, None] + np.arange(-64, 65)[None, :]).ravel()
    near = np.unique(np.clip(near, 0, INT32_MAX))
    rng = np.random.default_rng(0)
    extremes = np.array([0, 1, 2, 3, INT32_MAX - 1, INT32_MAX])
    spread = rng.integers(-INT32_MAX, INT32_MAX, random, endpoint=True)
    log_uniform = np.minimum(np.exp(rng.uniform(0, np.log(INT32_MAX), random)), INT32_MAX).astype(np.int64)
    log_uniform *= rng.choice([-1, 1], random)
    return np.concatenate([near, -near, extremes, -extremes, spread, log_uniform]).astype(np.int32)
