"""The numeric check's comparator on hand-made arrays."""

from __future__ import annotations

import numpy as np

from genrec.exporter.checks import Worst


def test_nan_in_either_output_is_a_breach_not_a_match():
    w = Worst()
    w.update(np.array([1.0, np.nan]), np.array([1.0, np.nan]), 1e-5, 1e-5, "row 1")
    assert w.excess == float("inf") and "NaN" in w.where
    ok = Worst()
    ok.update(np.array([1.0, -np.inf]), np.array([1.0 + 1e-7, -np.inf]), 1e-5, 1e-5, "row 0")
    assert ok.excess <= 0 and ok.abs_err < 1e-6  # -inf (an excluded id) on both sides is fine
