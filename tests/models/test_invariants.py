"""The static-cache invariants every backbone is built on, on real Beauty histories.

prefill(prefix) + step(...) == prefill(prefix + items) (fp32, atol 1e-5); batched == one at a
time; M-FALCON rank == appending each candidate alone. Histories of varied lengths share one
batch, so right padding and per-row positions are exercised together.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.data import leave_one_out, read_sequences
from genrec.inputs import history_feed
from genrec.models import build_model, make_config
from support import ARCHS, SLICE

ATOL = 1e-5
T, NEW = 16, 6


@pytest.fixture(scope="module")
def histories():
    ex = leave_one_out(read_sequences(SLICE)).examples("test")
    order = np.argsort([len(h) for h in ex.histories])
    pick = [order[0], order[len(order) // 2], order[-1], order[-40]]  # shortest .. longer than T
    return ([ex.histories[i] for i in pick], [ex.history_times[i] for i in pick],
            ex.target_times[pick], [ex.targets[i] for i in pick])


def tensors(feed):
    return {k: torch.from_numpy(v.astype(np.int64)) for k, v in feed.items()}


def prefill(model, hist, times, req, capacity=T + NEW, max_len=T):
    f = tensors(history_feed(hist, max_len, times, req, with_time=model.needs_timestamps)[0])
    return model.prefill(f["item_ids"], f["lengths"], f.get("timestamps"), f.get("request_time"), capacity), f


def seeded(arch, seed=0):
    torch.manual_seed(seed)
    return build_model(make_config(arch, 8877, "small", max_len=T, max_new_items=NEW, dropout=0.0)).eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_then_steps_equals_prefill_of_whole_sequence(arch, histories):
    model = seeded(arch)
    hist, times, req, _ = histories
    # keep histories short enough that T + steps fits, but mixed in length
    hist = [h[-(T - 3):] for h in hist]
    times = [t[-(T - 3):] for t in times]
    rng = np.random.default_rng(0)
    new_items = rng.integers(1, 8877, size=(len(hist), 3))
    with torch.no_grad():
        (user, cache), f = prefill(model, hist, times, req)
        base = f.get("request_time")
        for s in range(3):
            position = f["lengths"] + s
            ts = base if model.needs_timestamps else None
            user, cache = model.step(torch.from_numpy(new_items[:, s]), position, ts, cache)
            longer = [np.concatenate([h, new_items[i, : s + 1]]) for i, h in enumerate(hist)]
            longer_t = [np.concatenate([t, np.full(s + 1, req[i])]) for i, t in enumerate(times)]
            (ref, _), _ = prefill(model, longer, longer_t, req)
            torch.testing.assert_close(user, ref, atol=ATOL, rtol=0)
    # and the cache shapes never changed
    assert [c.shape for c in cache] == [c.shape for c in prefill(model, hist, times, req)[0][1]]


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_equals_one_at_a_time(arch, histories):
    model = seeded(arch)
    hist, times, req, _ = histories
    with torch.no_grad():
        (batched, _), _ = prefill(model, hist, times, req)
        for i in range(len(hist)):
            (single, _), _ = prefill(model, hist[i:i + 1], times[i:i + 1], req[i:i + 1])
            torch.testing.assert_close(batched[i:i + 1], single, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_rank_equals_appending_each_candidate_alone(arch, histories):
    model = seeded(arch)
    hist, times, req, targets = histories
    hist = [h[-(T - 1):] for h in hist]
    times = [t[-(T - 1):] for t in times]
    cands = np.stack([np.array([targets[i], 5, 17, 300]) for i in range(len(hist))])
    with torch.no_grad():
        (_, cache), f = prefill(model, hist, times, req)
        ts = f.get("request_time")
        scores = model.rank(torch.from_numpy(cands), f["lengths"], ts, cache)
        vectors = model.item_vectors()
        for j in range(cands.shape[1]):
            longer = [np.concatenate([h, cands[i, j:j + 1]]) for i, h in enumerate(hist)]
            longer_t = [np.concatenate([t, [req[i]]]) for i, t in enumerate(times)]
            (u, _), _ = prefill(model, longer, longer_t, req)
            alone = (u * vectors[torch.from_numpy(cands[:, j])]).sum(-1)
            torch.testing.assert_close(scores[:, j], alone, atol=ATOL, rtol=0)
    assert scores.std() > 0  # not a constant


@pytest.mark.parametrize("arch", ARCHS)
def test_head_masks_exclusions_and_log_z_is_logsumexp(arch, histories):
    model = seeded(arch)
    hist, times, req, _ = histories
    with torch.no_grad():
        (user, _), f = prefill(model, hist, times, req)
        exclude = f["item_ids"]
        ids, scores, log_z = model.score(user, exclude, 30)
        full = user @ model.item_vectors().t()
    for i in range(len(hist)):
        banned = set(exclude[i].tolist()) | {0}
        assert not banned & set(ids[i].tolist())
        keep = torch.tensor([j not in banned for j in range(full.shape[1])])
        expect = torch.logsumexp(full[i][keep] / model.config.temperature, 0)
        torch.testing.assert_close(log_z[i], expect, atol=1e-4, rtol=1e-5)
        assert torch.all(scores[i][:-1] >= scores[i][1:])
        torch.testing.assert_close(scores[i], full[i, ids[i]])


def test_hstu_time_bias_uses_the_next_timestamp(histories):
    """Changing only the request time changes HSTU's user vector (it biases the last position)."""
    model = seeded("hstu")
    hist, times, req, _ = histories
    with torch.no_grad():
        (a, _), _ = prefill(model, hist, times, req)
        (b, _), _ = prefill(model, hist, times, req + 86400 * 365)
    assert (a - b).abs().max() > 1e-4


def test_hstu_row_blocks_change_nothing(histories, monkeypatch):
    """At T >= BLOCK_FROM the causal pass runs in row blocks; encode, prefill and prefill+steps
    give what one block gives, on real histories (one longer than T)."""
    import genrec.models.hstu as hstu

    t = 96
    assert len(hstu.row_blocks(t)) == hstu.ROW_BLOCKS > 1
    torch.manual_seed(0)
    model = build_model(make_config("hstu", 8877, "small", max_len=t, max_new_items=NEW, dropout=0.0)).eval()
    hist, times, req, _ = histories
    f = tensors(history_feed(hist, t, times, req, with_time=True)[0])
    args = (f["item_ids"], f["lengths"], f["timestamps"], f["request_time"])
    with torch.no_grad():
        blocked, blocked_cache = model.encode(*args)
        (user, _), _ = prefill(model, hist, times, req, capacity=t + NEW, max_len=t)
        monkeypatch.setattr(hstu, "BLOCK_FROM", 10 ** 9)
        assert len(hstu.row_blocks(t)) == 1
        whole, whole_cache = model.encode(*args)
        (user_one, _), _ = prefill(model, hist, times, req, capacity=t + NEW, max_len=t)
    valid = torch.arange(t)[None, :] < f["lengths"][:, None]
    torch.testing.assert_close(blocked[valid], whole[valid], atol=1e-6, rtol=0)
    for a, b in zip(blocked_cache, whole_cache):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    torch.testing.assert_close(user, user_one, atol=1e-6, rtol=0)


@pytest.mark.parametrize("t", [63, 64, 200, 384, 385, 512, 1024, 2048, 3000])
def test_hstu_row_blocks_cover_the_square_in_bounded_rows(t):
    """Row blocks tile 0..T without gaps; long histories get blocks of at most BLOCK_ROWS rows
    (the largest (B, rows, T) tensor of a prefill grows linearly in T), short ones keep the
    three blocks measured fastest at T=200, and below BLOCK_FROM there is one block."""
    import genrec.models.hstu as hstu

    blocks = hstu.row_blocks(t)
    assert blocks[0][0] == 0 and blocks[-1][1] == t
    assert all(b0 == a1 for (_, b0), (a1, _) in zip(blocks, blocks[1:]))
    assert all(b > a for a, b in blocks)
    if t < hstu.BLOCK_FROM:
        assert blocks == [(0, t)]
    elif t <= hstu.ROW_BLOCKS * hstu.BLOCK_ROWS:
        assert len(blocks) == hstu.ROW_BLOCKS
    else:
        assert max(b - a for a, b in blocks) <= hstu.BLOCK_ROWS
        assert len(blocks) == -(-t // hstu.BLOCK_ROWS)
    # the share of the causal square the blocks compute: rows [a, b) against keys [0, b)
    computed = sum((b - a) * b for a, b in blocks) / (t * t)
    assert computed <= (1.0 if len(blocks) == 1 else 0.5 + 1 / len(blocks))
