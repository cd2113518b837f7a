"""Every valid request gets an exact answer, whatever its history or deny-list length.

The loop's answers (recommend, greedy and beam generate, on the torch and onnxruntime
backends) are compared with torch masking the *whole* exclusion list in the head
(``model.score`` with an exclude tensor as wide as the list), on real histories longer than
the bundle's exclude width X=28 and deny lists that push the overflow over the graph's top-K'.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.checkpoint import load_checkpoint
from genrec.errors import ConfigError, RequestError
from genrec.inputs import history_feed
from genrec.runtimes import Request, SearchParams, StepOutput, generate, rank, recommend
from genrec.runtimes import exact
from genrec.runtimes.batching import exclusions as _exclude, history_exclusions as _history_exclusions
from genrec.runtimes.batching import prefill_rows as _prefill
from genrec.runtimes.decoding import _sample, prepare
from genrec.runtimes.pytorch import TorchBackend

ARCH = "hstu"
STEPS = 8  # C - T of the test bundles: the most a slate can hold
DAY = 86_400


def _long_history(seqs, first_user: int, length: int) -> tuple[list[int], list[int]]:
    """``length`` distinct real items (internal ids): consecutive users' histories joined
    oldest first, each item once, with their real time gaps and a day between users."""
    items, gaps, seen, u = [], [], set(), first_user
    while len(items) < length:
        ts = seqs.times[u]
        for it, gap in zip(seqs.items[u].tolist(), np.diff(ts, prepend=ts[0] - DAY).tolist()):
            if it not in seen and len(items) < length:
                seen.add(it)
                items.append(it)
                gaps.append(gap)
        u += 1
    return items, (1_400_000_000 + np.cumsum(gaps)).tolist()


class Reference:
    """The checkpoint run in torch with every exclusion masked in the head: the exact answer."""

    def __init__(self, backend):
        self.model = load_checkpoint(backend.checkpoint_path).model.eval()
        self.dims = backend.dims

    @torch.inference_mode()
    def start(self, history: list[int], times: list[int], request_time: int):
        feed, _ = history_feed([np.asarray(history)], self.dims.max_history, [np.asarray(times)],
                               [request_time], with_time=True)
        t = {k: torch.from_numpy(v).long() for k, v in feed.items()}
        user, cache = self.model.prefill(t["item_ids"], t["lengths"], t["timestamps"], t["request_time"],
                                         capacity=self.dims.capacity)
        return user, cache, int(feed["lengths"][0]), t["request_time"]

    @torch.inference_mode()
    def head(self, user, excluded: list[set[int]], k: int):
        """Top-k ids, scores and log_z per row with each row's whole set masked."""
        width = max(len(e) for e in excluded)
        ex = torch.tensor([sorted(e) + [0] * (width - len(e)) for e in excluded])
        ids, scores, log_z = self.model.score(user, ex, k)
        return ids.numpy(), scores.double().numpy(), log_z.double().numpy()

    @torch.inference_mode()
    def step(self, items: list[int], position: int, request_time, cache):
        n = len(items)
        return self.model.step(torch.tensor(items), torch.full((n,), position),
                               request_time.repeat(n), cache)


@pytest.fixture(scope="module")
def case(backends, beauty):
    """Requests (raw ids) whose exclusions overflow X, each with its internal history,
    times and full exclusion set; plus the reference model."""
    torch_backend, _ = backends[ARCH]
    ref = Reference(torch_backend)
    to_raw = beauty.item_map.to_raw
    n_items = torch_backend.dims.num_items
    cases = []

    def add(name, items, times, deny=()):
        req = Request(name, to_raw(np.asarray(items)).tolist(), times, times[-1] + 3600,
                      to_raw(np.asarray(deny, dtype=np.int64)).tolist())
        cases.append((req, items, times, set(items) | set(deny)))

    for name, first, length in (("long-60", 6, 60), ("long-200", 40, 200)):
        add(name, *_long_history(beauty, first, length))
    # a short history whose deny list is its own 100 best items: the first 28 fill X,
    # the rest cover the graph's top-K', so no candidate survives the host filter
    items, times = beauty.items[17].tolist(), beauty.times[17].tolist()
    user = ref.start(items, times, times[-1] + 3600)[0]
    best = ref.head(user, [set(items)], 100)[0][0].tolist()
    add("deny-top-100", items, times, best)
    # the same but for its 30th best item: the only survivor of the graph's top-K', enough
    # for greedy (log_z corrected by a large overflow mass), too few for a beam of 3
    add("deny-top-100-but-one", items, times, best[:29] + best[30:])
    rng = np.random.default_rng(0)
    items, times = _long_history(beauty, 102, 40)
    free = np.setdiff1d(np.arange(1, n_items + 1), items)
    for left in (20, 10):  # all but 20 items excluded; exactly k=10 left
        add(f"all-but-{left}", items, times, rng.permutation(free)[left:])
    x = torch_backend.dims.max_exclude
    assert all(len(e) > x for *_, e in cases)  # every request overflows the graph's X
    return ref, cases


def _requests(case):
    return [c[0] for c in case[1]]


def _ref_recommend(ref, cases, k):
    out = []
    for _, items, times, excluded in cases:
        user = ref.start(items, times, times[-1] + 3600)[0]
        ids, scores, _ = ref.head(user, [excluded], k)
        keep = np.isfinite(scores[0])
        out.append((ids[0][keep].tolist(), scores[0][keep]))
    return out


def _ref_greedy(ref, items, times, excluded, steps):
    user, cache, length, req = ref.start(items, times, times[-1] + 3600)
    slate, logps = [], []
    for s in range(steps):
        ids, scores, log_z = ref.head(user, [excluded | set(slate)], 1)
        slate.append(int(ids[0, 0]))
        logps.append(scores[0, 0] / ref.model.config.temperature - log_z[0])
        user, cache = ref.step([slate[-1]], length + s, req, cache)
    return slate, logps


def _ref_beam(ref, items, times, excluded, steps, w):
    """Beam search over the fully masked catalogue: each hypothesis' w best continuations."""
    user, cache, length, req = ref.start(items, times, times[-1] + 3600)
    hyps = [([], [], 0.0)]  # (slate, log-probs, total)
    for s in range(steps):
        ids, scores, log_z = ref.head(user, [excluded | set(h[0]) for h in hyps], w)
        lps = scores / ref.model.config.temperature - log_z[:, None]
        pool = [(hyps[h][2] + lps[h, j], h, j) for h in range(len(hyps)) for j in range(w)
                if np.isfinite(lps[h, j])]
        pool.sort(key=lambda t: -t[0])
        chosen = pool[:w]
        hyps = [(hyps[h][0] + [int(ids[h, j])], hyps[h][1] + [lps[h, j]], total) for total, h, j in chosen]
        parents = torch.tensor([h for _, h, _ in chosen])
        cache = tuple(c.index_select(0, parents) for c in cache)
        if s < steps - 1:
            user, cache = ref.step([h[0][-1] for h in hyps], length + s, req, cache)
    return hyps[0]


def _ref_sample(ref, items, times, excluded, steps, params, i):
    """Sampling from each step's top-K (K' after the prefill, the step K after a step) of the
    fully masked catalogue, with request i's random stream."""
    rng = np.random.default_rng(np.random.SeedSequence(params.seed, spawn_key=(i,)))
    user, cache, length, req = ref.start(items, times, times[-1] + 3600)
    slate = []
    for s in range(steps):
        width = ref.dims.topk if s == 0 else ref.dims.step_topk
        ids, scores, log_z = ref.head(user, [excluded | set(slate)], width)
        keep = np.isfinite(scores[0])
        lp = scores[0][keep] / ref.model.config.temperature - log_z[0]
        slate.append(int(ids[0][keep][_sample(lp, params, rng)]))
        user, cache = ref.step([slate[-1]], length + s, req, cache)
    return slate


def _raw(backend, ids):
    return backend.item_map.to_raw(np.asarray(ids, dtype=np.int64)).tolist()


@pytest.mark.parametrize("which", [0, 1], ids=["torch", "onnxruntime"])
def test_recommend_is_exact_past_the_exclude_width(which, backends, case):
    backend = backends[ARCH][which]
    ref, cases = case
    exact.STATS.reset()
    got = recommend(backend, _requests(case), 10)
    assert exact.STATS.host_rows >= 3  # deny-top-100 and all-but-N go down the slow path
    for (req, *_), g, (ids, scores) in zip(cases, got, _ref_recommend(ref, cases, 10)):
        assert g.items == _raw(backend, ids), req.user_id
        np.testing.assert_allclose(g.scores, scores, atol=1e-4, rtol=0)
        assert len(g.items) == 10  # all-but-10: exactly the ten that remain
        assert not set(g.items) & (set(req.items) | set(req.exclude))


@pytest.mark.parametrize("which", [0, 1], ids=["torch", "onnxruntime"])
@pytest.mark.parametrize("kept", [exact.MIN_KEPT_MASS, 1.01], ids=["corrected", "host-scored"])
def test_greedy_slates_and_log_probs_are_exact(which, kept, backends, case, monkeypatch):
    """Every step's log-prob equals the fully masked catalogue's, whether the overflow's mass
    is subtracted from the graph's log_z or the row is scored on the host (``kept`` > 1 sends
    every overflowing row there)."""
    monkeypatch.setattr(exact, "MIN_KEPT_MASS", kept)
    backend = backends[ARCH][which]
    ref, cases = case
    exact.STATS.reset()
    got = generate(backend, _requests(case), STEPS)
    if kept < 1:
        assert exact.STATS.corrected_rows > 0  # the log_z correction was exercised
    assert exact.STATS.host_rows > 0
    for (req, items, times, excluded), g in zip(cases, got):
        slate, logps = _ref_greedy(ref, items, times, excluded, STEPS)
        assert g.items == _raw(backend, slate), req.user_id
        np.testing.assert_allclose(g.scores, logps, atol=1e-4, rtol=0)


@pytest.mark.parametrize("which", [0, 1], ids=["torch", "onnxruntime"])
def test_beam_search_is_exact(which, backends, case):
    backend = backends[ARCH][which]
    ref, cases = case
    got = generate(backend, _requests(case), STEPS, SearchParams("beam", num_beams=3))
    for (req, items, times, excluded), g in zip(cases, got):
        slate, logps, total = _ref_beam(ref, items, times, excluded, STEPS, 3)
        assert g.items == _raw(backend, slate), req.user_id
        np.testing.assert_allclose(g.scores, logps, atol=1e-4, rtol=0)
        assert g.score == pytest.approx(total, abs=1e-3)


def test_resolve_gives_each_row_the_candidates_it_needs(backends, case):
    """One survivor of the graph's top-K' is enough for greedy (filtered, log_z corrected);
    a beam of 3 needs 3, which only the host can find: both equal the reference's."""
    _, backend = backends[ARCH]
    ref, cases = case
    req, items, times, excluded = next(c for c in cases if c[0].user_id == "deny-top-100-but-one")
    rows = prepare(backend, [req])
    excl, overflow = _exclude(backend, _history_exclusions(rows))
    out = _prefill(backend, rows, excl).out
    want_ids, want_scores, want_log_z = ref.head(ref.start(items, times, req.request_time)[0], [excluded], 3)
    for needed, host in ((1, 0), (3, 1)):
        exact.STATS.reset()
        got = exact.resolve(backend, out, excl, overflow, needed, True, int, str)
        assert exact.STATS.host_rows == host
        ids, scores = got.topk_ids[0], got.topk_scores[0]
        assert np.isfinite(scores).sum() >= needed
        assert ids[:needed].tolist() == want_ids[0, :needed].tolist()
        np.testing.assert_allclose(scores[:needed], want_scores[0, :needed], atol=1e-5)
        np.testing.assert_allclose(got.log_z[0], want_log_z[0], atol=1e-4)


@pytest.mark.parametrize("top_k", [None, 5])
def test_sampling_draws_from_the_exact_candidates(top_k, backends, case):
    """Same seed, same draws as sampling the fully masked catalogue's top-K: a row whose
    filtered top-K lost any of the candidates the sampler draws from is scored on the host."""
    _, backend = backends[ARCH]
    ref, cases = case
    params = SearchParams("sample", seed=11, top_k=top_k, temperature=1.5)
    got = generate(backend, _requests(case), STEPS, params)
    for i, ((req, items, times, excluded), g) in enumerate(zip(cases, got)):
        assert g.items == _raw(backend, _ref_sample(ref, items, times, excluded, STEPS, params, i)), req.user_id


def test_fewer_items_left_than_asked(backends, case):
    """5 items left: recommend returns those 5 (best first); a slate of 8 is a RequestError
    naming the request by the caller's ``where`` and giving its index."""
    _, backend = backends[ARCH]
    ref, cases = case
    req, items, times, excluded = cases[-1]  # all-but-10
    deny = list(req.exclude) + _raw(backend, sorted(set(range(1, backend.dims.num_items + 1)) - excluded)[:5])
    five = Request("five", req.items, req.timestamps, req.request_time, deny)
    got = recommend(backend, [five], 10)[0]
    want = _ref_recommend(ref, [(five, items, times, excluded | set(backend.item_map.to_internal(deny).tolist()))], 10)[0]
    assert len(got.items) == 5 and got.items == _raw(backend, want[0])
    lines = [4, 7]
    with pytest.raises(RequestError, match=r"^requests.jsonl line 7 \(user_id 'five'\): no item left "
                                           r"to recommend at step 6") as e:
        generate(backend, [cases[0][0], five], STEPS, where=lambda i: f"requests.jsonl line {lines[i]}")
    assert e.value.index == 1


def test_request_errors_carry_the_index_and_a_1_based_name(backends, case):
    _, backend = backends[ARCH]
    good = _requests(case)[0]
    no_times = Request("bob", good.items, None)  # hstu needs timestamps
    for fn in (lambda rs, **kw: recommend(backend, rs, **kw), lambda rs, **kw: generate(backend, rs, 2, **kw),
               lambda rs, **kw: rank(backend, [Request(r.user_id, r.items, r.timestamps, r.request_time,
                                                        candidates=[r.items[0]]) for r in rs], **kw)):
        with pytest.raises(RequestError, match=r"^request 3 \(user_id 'bob'\): timestamps are required") as e:
            fn([good, good, no_times])
        assert e.value.index == 2
    with pytest.raises(RequestError, match=r"^line 12: unknown field.*colour") as e:
        recommend(backend, [good, {"user_id": "x", "items": [1], "colour": 1}], where=lambda i: f"line {11 + i}")
    assert e.value.index == 1


class _NoUserEmb(TorchBackend):
    """A backend whose outputs lack user_emb (allowed by the protocol)."""

    @staticmethod
    def _output(ids, scores, log_z, user) -> StepOutput:
        out = TorchBackend._output(ids, scores, log_z, user)
        return StepOutput(out.topk_ids, out.topk_scores, out.log_z)


def test_without_user_emb_the_slow_path_says_why(bundles, case):
    backend = _NoUserEmb(bundles[ARCH])
    try:
        reqs = _requests(case)
        assert len(recommend(backend, reqs[:2], 10)[1].items) == 10  # filtering needs no user_emb
        with pytest.raises(ConfigError, match=r"request 3 \(user_id 'deny-top-100'\): .* returns no "
                                              "user_emb"):
            recommend(backend, reqs, 10)
    finally:
        backend.close()
