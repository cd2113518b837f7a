"""Export-time patches, isolated in context managers (as Optimum's ModelPatcher does).

``LayerNormalization`` exists from opset 17 only (and ATC registers it for 17–18 only), so
below 17 layer norm is traced as its decomposition: ReduceMean, Sub, Mul, Sqrt, Div. The
patch swaps ``torch.nn.functional.layer_norm`` for the duration of an export; both
``nn.LayerNorm`` and HSTU's non-affine norm go through it. The math is the same, so the
numeric check still compares against the unpatched torch model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(-len(normalized_shape), 0))
    mean = x.mean(dim=dims, keepdim=True)
    centred = x - mean
    y = centred / torch.sqrt((centred * centred).mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


@contextlib.contextmanager
def for_opset(opset: int) -> Iterator[None]:
    """Apply the patches an export at ``opset`` needs."""
    if opset >= 17:
        yield
        return
    original = F.layer_norm
    F.layer_norm = _layer_norm
    try:
        yield
    finally:
        F.layer_norm = original
