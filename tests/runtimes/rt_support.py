"""Helpers for the runtime tests (importable as ``rt_support``)."""

from __future__ import annotations

import numpy as np

from genrec.runtimes import Request

# slice users picked for their history lengths: 24, 26, 38 and 30 are longer than T=20
LONG_USERS = (6, 17, 102, 113)


def make_requests(seqs, n: int = 10, with_candidates: bool = True) -> list[Request]:
    """Real histories of mixed lengths (1, 2, short, > T), raw ids, some deny lists and candidates.

    Candidate lists have lengths 0..13 so that rank needs 1-3 microbatches of M=6, padded.
    """
    raw = seqs.item_map.to_raw
    users = [0, 1, *LONG_USERS, 2, 3, 4, 5, 7, 8, 9, 10][:n]
    out = []
    for j, u in enumerate(users):
        items, times = raw(seqs.items[u]).tolist(), seqs.times[u].tolist()
        if j == 0:
            items, times = items[:1], times[:1]  # a history of one item
        elif j == 1:
            items, times = items[-2:], times[-2:]
        nxt = raw(seqs.items[(u + 1) % len(seqs)]).tolist() + raw(seqs.items[(u + 2) % len(seqs)]).tolist()
        cands = nxt[: [1, 6, 7, 13, 2, 5, 12, 3, 8, 9, 4, 11][j % 12]] if with_candidates else None
        exclude = raw(seqs.items[(u + 3) % len(seqs)]).tolist()[:3] if j % 3 == 2 else []
        out.append(Request(f"user{seqs.users[u]}", items, times, times[-1] + 3600 * (j + 1), exclude, cands))
    return out


def assert_same_results(ref, got, atol: float = 1e-4) -> None:
    """Same users in the same order, identical item lists, scores within ``atol``."""
    assert [r.user_id for r in ref] == [g.user_id for g in got]
    for r, g in zip(ref, got):
        assert r.items == g.items, f"{r.user_id}: {r.items} != {g.items}"
        np.testing.assert_allclose(g.scores, r.scores, atol=atol, rtol=0)
