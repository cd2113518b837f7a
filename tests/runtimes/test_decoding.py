"""The shared loop: beam search against exhaustive enumeration, exclusions, sampling,
batching and request order, M-FALCON rank against one-candidate-at-a-time prefills."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rt_support import assert_same_results

from genrec.checkpoint import load_checkpoint, save_checkpoint
from genrec.errors import ConfigError, RequestError
from genrec.inputs import history_feed
from genrec.models import build_model, make_config
from genrec.runtimes import PrefillBatch, Request, SearchParams, generate, get_backend, rank, recommend

TINY_RAW = [100 + 7 * i for i in range(8)]  # raw ids of a catalogue of 8 items


@pytest.fixture(scope="module", params=["hstu", "sasrec"])
def tiny(request, tmp_path_factory):
    """A random 8-item model served by the torch backend straight from its checkpoint."""
    torch.manual_seed(3)
    model = build_model(make_config(request.param, 8, "small", max_len=6, max_new_items=4)).eval()
    path = save_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pt", model, TINY_RAW)
    backend = get_backend("torch", path, topk=8, batch_gears=(1, 4, 32))
    yield load_checkpoint(path).model, backend
    backend.close()


def _log_probs(model, history, prefix, times, request_time):
    """log p(next item | history + prefix) over internal ids, by a fresh prefill of the whole sequence."""
    seq = history + prefix
    ts = times + [request_time] * len(prefix)  # generated items carry the request time
    with torch.no_grad():
        user, _ = model.prefill(torch.tensor([seq]), torch.tensor([len(seq)]), torch.tensor([ts]),
                                torch.tensor([request_time]))
        logits = (user @ model.item_vectors().T)[0] / model.config.temperature
    logits[[0, *seq]] = -torch.inf  # padding, history and the slate so far are excluded
    return torch.log_softmax(logits.double(), 0).numpy()


def test_beam_search_matches_exhaustive_enumeration(tiny):
    model, backend = tiny
    history, times, req = [2, 5], [1_000, 90_000], 200_000
    free = [i for i in range(1, 9) if i not in history]  # 6 items -> 120 slates of 3
    cache = {}

    def lp(prefix):
        key = tuple(prefix)
        if key not in cache:
            cache[key] = _log_probs(model, history, list(prefix), times, req)
        return cache[key]

    totals = {s: sum(lp(s[:i])[s[i]] for i in range(3)) for s in itertools.permutations(free, 3)}
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    (best, best_score), (_, second) = ranked[0], ranked[1]
    assert best_score - second > 1e-4  # a unique optimum, so the comparison is not flaky

    request = Request("u", [TINY_RAW[i - 1] for i in history], times, req)
    # 30 beams hold every 2-item prefix, so beam search is exact here
    result = generate(backend, [request], 3, SearchParams("beam", num_beams=30))[0]
    assert result.items == [TINY_RAW[i - 1] for i in best]
    assert result.score == pytest.approx(best_score, abs=1e-4)
    assert result.scores == pytest.approx([lp(best[:i])[best[i]] for i in range(3)], abs=1e-4)

    greedy = generate(backend, [request], 3)[0]
    one_beam = generate(backend, [request], 3, SearchParams("beam", num_beams=1))[0]
    assert one_beam.items == greedy.items and one_beam.scores == pytest.approx(greedy.scores)
    assert greedy.score <= result.score + 1e-6


def test_catalogue_exhaustion_is_an_error(tiny):
    _, backend = tiny
    request = Request("u", TINY_RAW[:6], list(range(6)), 10)  # 2 items left for 3 steps
    with pytest.raises(RequestError, match=r"^request 1 \(user_id 'u'\): no item left") as e:
        generate(backend, [request], 3)
    assert e.value.index == 0


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_no_repeats_within_a_slate_or_from_history_and_deny_list(strategy, backends, requests):
    _, ort_backend = backends["hstu"]
    steps = ort_backend.dims.capacity - ort_backend.dims.max_history  # the most the cache holds
    params = SearchParams(strategy, num_beams=3, seed=0)
    for req, res in zip(requests, generate(ort_backend, requests, steps, params)):
        assert len(res.items) == steps == len(set(res.items))
        assert not set(res.items) & (set(req.items) | set(req.exclude))
        assert all(s <= 0 for s in res.scores)
    with pytest.raises(ConfigError, match="steps=9"):
        generate(ort_backend, requests, steps + 1, params)


def test_sampling_is_reproducible_with_a_seed(backends, requests):
    _, ort_backend = backends["sasrec"]

    def run(seed, **kw):
        params = SearchParams("sample", seed=seed, top_k=20, top_p=0.95, temperature=1.5)
        return [r.items for r in generate(ort_backend, requests, 5, params, **kw)]

    first = run(7)
    assert run(7) == first
    assert run(7, batch_size=1) == first  # one random stream per request: batching cannot matter
    assert run(8) != first


def test_results_in_request_order_whatever_the_batching(backends, requests):
    _, ort_backend = backends["gpt"]
    shuffled = [requests[i] for i in (3, 0, 7, 1, 9, 2, 5, 4, 8, 6)]
    for fn in (lambda rs, **kw: recommend(ort_backend, rs, 5, **kw),
               lambda rs, **kw: generate(ort_backend, rs, 3, SearchParams("beam", num_beams=2), **kw),
               lambda rs, **kw: rank(ort_backend, rs, **kw)):
        whole = fn(requests)
        assert [r.user_id for r in whole] == [q.user_id for q in requests]
        assert_same_results(whole, fn(requests, batch_size=1), atol=1e-5)  # gear 1, one by one
        assert_same_results(whole, fn(requests, batch_size=3), atol=1e-5)  # chunks of 3 padded to gear 4
        by_user = {r.user_id: r for r in whole}
        assert_same_results([by_user[q.user_id] for q in shuffled], fn(shuffled), atol=1e-5)


def _prefill_user_emb(backend, histories, times, request_times):
    """user_emb of each (internal) history by the backend's own prefill, in gear-sized batches."""
    out, gear = [], max(backend.batch_gears)
    for s in range(0, len(histories), gear):
        h, t, r = histories[s:s + gear], times[s:s + gear], request_times[s:s + gear]
        pad = gear - len(h)
        feed, _ = history_feed([np.asarray(x) for x in h + h[:1] * pad], backend.dims.max_history,
                               [np.asarray(x) for x in t + t[:1] * pad], r + r[:1] * pad,
                               with_time=backend.dims.needs_timestamps)
        batch = PrefillBatch(feed["item_ids"], feed["lengths"],
                             np.zeros((gear, backend.dims.max_exclude), np.int32),
                             feed.get("timestamps"), feed.get("request_time"))
        out.append(backend.prefill(batch)[0].user_emb[:len(h)])
    return np.concatenate(out)


@pytest.mark.parametrize("arch", ["hstu", "llama"])
def test_rank_equals_scoring_each_candidate_alone(arch, backends, bundles, requests):
    _, ort_backend = backends[arch]
    t = ort_backend.dims.max_history
    short = [r for r in requests if len(r.items) < t and r.candidates]
    ranked = {r.user_id: dict(zip(r.items, r.scores)) for r in rank(ort_backend, short)}
    m = ort_backend.dims.rank_candidates
    assert max(len(r.candidates) for r in short) > m  # several microbatches, the last one padded

    to_int = ort_backend.item_map.to_internal
    rows, times, reqs, keys = [], [], [], []
    for r in short:
        for c in r.candidates:
            rows.append(to_int(r.items).tolist() + [int(to_int([c])[0])])
            times.append(list(r.timestamps) + [r.request_time])  # the candidate sits at request time
            reqs.append(r.request_time)
            keys.append((r.user_id, c))
    emb = _prefill_user_emb(ort_backend, rows, times, reqs)
    item_vectors = load_checkpoint(bundles[arch] / "model.pt").model.item_vectors().detach().numpy()
    alone = np.einsum("bd,bd->b", emb, item_vectors[[row[-1] for row in rows]])
    got = np.array([ranked[u][c] for u, c in keys])
    np.testing.assert_allclose(got, alone, atol=1e-5)
    for r in rank(ort_backend, short):
        assert r.scores == sorted(r.scores, reverse=True)


def test_exclusions_beyond_x_are_filtered_on_the_host(backends, requests):
    torch_backend, ort_backend = backends["sasrec"]
    req = requests[7]  # a short history
    x, k_prime = ort_backend.dims.max_exclude, ort_backend.dims.topk
    top = recommend(ort_backend, [req], k_prime)[0].items
    deny = top[:30]  # history + 30 > X: the overflow is filtered from the K' candidates
    assert len(set(req.items) | set(deny)) > x
    denied = Request(req.user_id, req.items, req.timestamps, req.request_time, deny)
    for backend in (torch_backend, ort_backend):
        got = recommend(backend, [denied], 10)[0]
        assert got.items == [i for i in top if i not in deny][:10]
    # 60 + history > X + K' - k, once refused: now answered, the same on both backends
    many = ort_backend.item_map.to_raw(np.arange(1, 61)).tolist()
    longer = Request(req.user_id, req.items, req.timestamps, req.request_time, many)
    got = [recommend(b, [longer], 10)[0] for b in (torch_backend, ort_backend)]
    assert_same_results(got[:1], got[1:])
    assert len(got[0].items) == 10 and not set(got[0].items) & (set(many) | set(req.items))


def test_api_errors_name_the_request(backends, requests):
    _, ort_backend = backends["hstu"]
    bad = Request("bob", requests[0].items, None)  # hstu needs timestamps
    with pytest.raises(RequestError, match=r"request 2 \(user_id 'bob'\): timestamps are required"):
        recommend(ort_backend, [requests[0], bad])
    with pytest.raises(ConfigError, match="k=41"):
        recommend(ort_backend, requests, 41)
    with pytest.raises(ConfigError, match="largest batch gear"):
        generate(ort_backend, requests, 2, SearchParams("beam", num_beams=9))
    with pytest.raises(ConfigError, match="step top-K=32; re-export with a larger --step-topk"):
        generate(ort_backend, requests, 2, SearchParams("beam", num_beams=33))
    with pytest.raises(ConfigError, match="strategy 'topk'"):
        SearchParams("topk")


def test_exclusion_lists_dedupe_the_same_with_either_method(backends, requests, monkeypatch):
    """``exclusions`` keeps each id once per row in order of first occurrence, whether it finds
    first occurrences in a dense table or by sorting (large catalogues); real histories repeat items."""
    import genrec.runtimes.batching as batching
    import genrec.runtimes.decoding as dec

    _, backend = backends["llama"]
    rows = dec.prepare(backend, requests)
    lists = [np.concatenate([r.exclude, r.history[::-1], r.history[:3]]) for r in rows]  # repeats
    want = []
    for ids in lists:
        seen: dict[int, None] = {}
        for i in ids.tolist():
            seen.setdefault(i, None)
        want.append(list(seen))
    x = backend.dims.max_exclude
    got = {}
    for dense in (1 << 22, 0):
        monkeypatch.setattr(batching, "DENSE_KEYS", dense)
        excl, overflow = batching.exclusions(backend, lists)
        got[dense] = [[int(v) for v in e if v] + o.tolist() for e, o in zip(excl, overflow)]
        assert all(len(w) <= x or len(o) == len(w) - x for w, o in zip(want, overflow))
    assert got[1 << 22] == got[0] == want
