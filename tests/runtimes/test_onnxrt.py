"""The onnxruntime backend keeps the cache in bound OrtValues: double-buffered steps, beam
reorder by an ORT Gather, and no cache tensor ever mapped into numpy inside the loop."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from genrec.inputs import history_feed
from genrec.runtimes import PrefillBatch, SearchParams, generate, rank


def _prefill(backend, seqs, users):
    d = backend.dims
    feed, base = history_feed([seqs.items[u] for u in users], d.max_history,
                              [seqs.times[u] for u in users], [seqs.times[u][-1] for u in users],
                              with_time=d.needs_timestamps)
    excl = np.zeros((len(users), d.max_exclude), np.int32)
    out, state = backend.prefill(PrefillBatch(feed["item_ids"], feed["lengths"], excl,
                                              feed.get("timestamps"), feed.get("request_time")))
    return out, state, feed


def test_cache_never_leaves_ortvalues_in_the_loop(backends, requests, monkeypatch):
    _, backend = backends["hstu"]

    def forbidden(self):
        raise AssertionError("a cache OrtValue was copied to numpy")

    monkeypatch.setattr(ort.OrtValue, "numpy", forbidden)
    with pytest.raises(AssertionError):  # the trap is armed
        ort.OrtValue.ortvalue_from_numpy(np.zeros(2, np.float32)).numpy()
    generate(backend, requests, 3, SearchParams("beam", num_beams=2))
    rank(backend, requests)


def test_steps_swap_two_buffers(backends, beauty):
    _, backend = backends["llama"]
    out, state, feed = _prefill(backend, beauty, [0, 1, 2, 3])
    assert all(isinstance(v, ort.OrtValue) for v in state.cache)
    first = [v.data_ptr() for v in state.cache]
    step = dict(new_item=out.topk_ids[:, 0], position=feed["lengths"], timestamp=None,
                exclude_ids=np.zeros((4, backend.dims.max_exclude), np.int32))
    backend.step(state, **step)
    second = [v.data_ptr() for v in state.cache]
    backend.step(state, **{**step, "position": feed["lengths"] + 1})
    assert set(first).isdisjoint(second)  # present_* went to the other set
    assert [v.data_ptr() for v in state.cache] == first  # and back: no allocation per step


@pytest.mark.parametrize("arch", ["hstu", "gpt"])
def test_reorder_selects_and_expands_rows_like_torch(arch, backends, beauty):
    """Reorder 4 rows into 8 (beam expansion) then step: both backends see the same cache rows."""
    index = np.array([3, 3, 0, 1, 2, 2, 1, 0])
    outs = []
    for backend in backends[arch]:
        out, state, feed = _prefill(backend, beauty, [5, 6, 7, 8])
        backend.reorder(state, index)
        assert state.batch == 8
        ts = None if feed.get("request_time") is None else feed["request_time"][index]
        step = backend.step(state, out.topk_ids[index, 0], feed["lengths"][index], ts,
                            np.zeros((8, backend.dims.max_exclude), np.int32))
        cands = out.topk_ids[index, 1:1 + backend.dims.rank_candidates]
        scores = backend.rank(state, cands, feed["lengths"][index] + 1, ts)
        outs.append((step, scores))
    (t_step, t_scores), (o_step, o_scores) = outs
    np.testing.assert_array_equal(o_step.topk_ids[:, :5], t_step.topk_ids[:, :5])
    np.testing.assert_allclose(o_step.log_z, t_step.log_z, atol=1e-4)
    np.testing.assert_allclose(o_scores, t_scores, atol=1e-5)
    # rows 0 and 1 are both old row 3, so they are identical
    np.testing.assert_array_equal(o_scores[0], o_scores[1])
