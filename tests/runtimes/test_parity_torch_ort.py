"""torch (eager checkpoint) and onnxruntime (exported graphs) agree through the shared loop,
for every backbone, on real histories of mixed lengths (1, 2, short, longer than T)."""

from __future__ import annotations

import pytest

from rt_support import assert_same_results
from support import ARCHS

from genrec.runtimes import SearchParams, generate, rank, recommend


@pytest.mark.parametrize("arch", ARCHS)
def test_recommend_generate_rank_agree(arch, backends, requests):
    ref, cand = backends[arch]
    assert max(len(r.items) for r in requests) > ref.dims.max_history  # truncation is exercised
    assert min(len(r.items) for r in requests) == 1

    assert_same_results(recommend(ref, requests, k=10), recommend(cand, requests, k=10))

    greedy = SearchParams("greedy")
    assert_same_results(generate(ref, requests, 4, greedy), generate(cand, requests, 4, greedy))

    beam = SearchParams("beam", num_beams=3)
    r, c = generate(ref, requests, 3, beam), generate(cand, requests, 3, beam)
    assert_same_results(r, c)
    assert [x.score for x in r] == pytest.approx([x.score for x in c], abs=1e-4)

    assert_same_results(rank(ref, requests), rank(cand, requests))
