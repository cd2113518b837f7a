"""Turn ragged sequences into fixed-shape model inputs.

Why: exported graphs (ONNX, Ascend OM) want static shapes, so batches are always ``[B, max_len]``,
right-padded with 0 (the padding id), keeping the most recent ``max_len`` events of each user.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad_batch(
    seqs: Sequence[np.ndarray],
    max_len: int,
    times: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Return ``(ids[B, max_len] int64, lengths[B] int64, times[B, max_len] int64 | None)``.

    Each row holds the last ``min(len, max_len)`` items in chronological order starting at
    column 0, then zeros; ``lengths`` counts the real items. ``times`` is padded the same way.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if times is not None and len(times) != len(seqs):
        raise ValueError(f"{len(seqs)} sequences but {len(times)} time rows")
    batch = len(seqs)
    ids = np.zeros((batch, max_len), dtype=np.int64)
    lengths = np.zeros(batch, dtype=np.int64)
    out_times = np.zeros((batch, max_len), dtype=np.int64) if times is not None else None
    for row, seq in enumerate(seqs):
        seq = np.asarray(seq).reshape(-1)
        n = min(seq.size, max_len)
        lengths[row] = n
        if n:
            ids[row, :n] = seq[seq.size - n:]
        if out_times is not None:
            ts = np.asarray(times[row]).reshape(-1)
            if ts.size != seq.size:
                raise ValueError(f"row {row}: {seq.size} items but {ts.size} times")
            if n:
                out_times[row, :n] = ts[ts.size - n:]
    return ids, lengths, out_times
