"""The onnxruntime backend keeps the cache in bound OrtValues: steps that write it in place
(or double-buffer it), beam reorder by an ORT Gather, and no cache tensor ever mapped into
numpy inside the loop."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from genrec.inputs import history_feed
from genrec.runtimes import PrefillBatch, SearchParams, generate, get_backend, rank, recommend


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


def _steps(backend, beauty, users, n):
    """Prefill ``users`` then ``n`` greedy steps; the data pointers of the cache after each."""
    out, state, feed = _prefill(backend, beauty, users)
    ptrs, outs = [[v.data_ptr() for v in state.cache]], [out]
    ts = feed.get("request_time")
    for i in range(n):
        out = backend.step(state, out.topk_ids[:, 0], feed["lengths"] + i, ts,
                           np.zeros((len(users), backend.dims.max_exclude), np.int32))
        ptrs.append([v.data_ptr() for v in state.cache])
        outs.append(out)
    return state, ptrs, outs


@pytest.mark.parametrize("arch", ["hstu", "llama"])
def test_steps_write_the_cache_in_place(arch, backends, beauty, bundles):
    """On CPU every cache tensor is written in place (one buffer, no copy per step), with
    exactly the results of double buffering."""
    _, backend = backends[arch]
    assert backend.inplace_cache == backend._past  # every past_* input qualifies
    state, ptrs, outs = _steps(backend, beauty, [0, 1, 2, 3], 3)
    assert all(p == ptrs[0] for p in ptrs)
    assert state.spare is None  # no second set is even allocated until a beam reorder
    with get_backend("onnxruntime", bundles[arch], threads=1, inplace_cache=False) as double:
        assert double.inplace_cache == []
        _, dptrs, douts = _steps(double, beauty, [0, 1, 2, 3], 3)
        # a graph where only some cache inputs qualify (e.g. from an older exporter): mixed
        double._inplace = [i % 2 == 0 for i in range(len(double._past))]
        _, mptrs, mouts = _steps(double, beauty, [0, 1, 2, 3], 3)
    assert set(dptrs[0]).isdisjoint(dptrs[1]) and dptrs[2] == dptrs[0]  # two sets, swapped
    assert [p[0] for p in mptrs] == [mptrs[0][0]] * 4 and mptrs[1][1] != mptrs[0][1] == mptrs[2][1]
    for a, b, c in zip(outs, douts, mouts):
        for x in (b, c):
            np.testing.assert_array_equal(a.topk_ids, x.topk_ids)
            np.testing.assert_array_equal(a.topk_scores, x.topk_scores)
            np.testing.assert_array_equal(a.log_z, x.log_z)


def _ptrs(state) -> list[int]:
    return [v.data_ptr() for v in state.cache]


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
    np.testing.assert_array_equal(a.topk_scores, b.topk_scores)
    np.testing.assert_array_equal(a.log_z, b.log_z)


def _same_prefill_and_step(one, other, beauty, users) -> None:
    """Prefill ``users`` on two backends, then one step from each top item: outputs, user
    embedding and cache bit for bit the same."""
    a, sa, feed = _prefill(one, beauty, users)
    b, sb, _ = _prefill(other, beauty, users)
    _same(a, b)
    np.testing.assert_array_equal(a.user_emb, b.user_emb)
    for x, y in zip(sa.cache, sb.cache):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    excl = np.zeros((len(users), one.dims.max_exclude), np.int32)
    _same(*[be.step(s, o.topk_ids[:, 0], feed["lengths"], feed.get("request_time"), excl)
            for be, s, o in ((one, sa, a), (other, sb, b))])


def test_a_dead_states_cache_serves_the_next_prefill_and_a_live_ones_never(backends, beauty):
    """Cache buffers come back to the backend when their state dies and the next prefill of
    that batch size reuses them (no fresh pages, nothing to rebind); while a state lives its
    buffers are its own: another prefill neither takes nor overwrites them."""
    _, backend = backends["hstu"]
    out_a, a, _ = _prefill(backend, beauty, [0, 1, 2, 3])
    held = [v.numpy().copy() for v in a.cache]
    _, b, _ = _prefill(backend, beauty, [4, 5, 6, 7])
    assert set(_ptrs(a)).isdisjoint(_ptrs(b))
    for v, before in zip(a.cache, held):  # b's prefill wrote its own buffers only
        np.testing.assert_array_equal(v.numpy(), before)
    a_ptrs = _ptrs(a)
    del a
    out_c, c, _ = _prefill(backend, beauty, [0, 1, 2, 3])
    assert _ptrs(c) == a_ptrs
    _same(out_c, out_a)
    for v, before in zip(c.cache, held):
        np.testing.assert_array_equal(v.numpy(), before)


def test_a_reordered_state_gives_its_cache_back_at_its_new_batch(backends, beauty, bundles):
    """A beam reorder can change a state's batch (4 rows -> 8): its buffers then go back
    under 8 rows, and the next 8-row prefill runs on them with a fresh backend's results."""
    _, backend = backends["hstu"]
    _, state, _ = _prefill(backend, beauty, [0, 1, 2, 3])
    backend.reorder(state, np.repeat(np.arange(4), 2))
    assert state.batch == 8 and [v.shape()[0] for v in state.cache] == [8] * len(state.cache)
    del state
    users = list(range(10, 18))
    out, again, _ = _prefill(backend, beauty, users)
    with get_backend("onnxruntime", bundles["hstu"], threads=1) as fresh:
        ref, _, _ = _prefill(fresh, beauty, users)
    _same(out, ref)


def test_a_validated_batch_skips_the_range_checks_only(backends, beauty):
    """``validated`` (set by the loop's batcher, whose requests were checked on entry) skips
    the id and length range checks; a hand-built batch keeps them, and types and shapes are
    checked either way."""
    from genrec.errors import ConfigError

    _, backend = backends["sasrec"]
    out, _, feed = _prefill(backend, beauty, [0, 1, 2, 3])
    excl = np.zeros((4, backend.dims.max_exclude), np.int32)
    bad = feed["item_ids"].copy()
    bad[0, 0] = backend.dims.num_items + 1
    with pytest.raises(ConfigError, match="item_ids must be internal ids"):
        backend.prefill(PrefillBatch(bad, feed["lengths"], excl))
    with pytest.raises(ConfigError, match="must be integers"):
        backend.prefill(PrefillBatch(feed["item_ids"].astype(np.float32), feed["lengths"], excl, validated=True))
    with pytest.raises(ConfigError, match="has shape"):
        backend.prefill(PrefillBatch(feed["item_ids"][:, :3], feed["lengths"], excl, validated=True))
    ok, _ = backend.prefill(PrefillBatch(feed["item_ids"], feed["lengths"], excl, validated=True))
    _same(ok, out)


def test_the_loops_batches_are_marked_validated(backends, requests, monkeypatch):
    _, backend = backends["sasrec"]
    seen = []
    real = type(backend).prefill
    monkeypatch.setattr(type(backend), "prefill", lambda self, batch: (seen.append(batch.validated), real(self, batch))[1])
    recommend(backend, requests[:5])
    assert seen and all(seen)


def _scatter_graph(extra_reader: str | None = None, reduction: str | None = None):
    """present = ScatterElements(past, idx, row) (+ optionally another node reading past)."""
    from onnx import TensorProto as T, helper

    attrs = {"axis": 1, **({"reduction": reduction} if reduction else {})}
    nodes = [helper.make_node("ScatterElements", ["past", "idx", "row"], ["present"], **attrs)]
    outputs = [helper.make_tensor_value_info("present", T.FLOAT, ["b", 5])]
    if extra_reader:
        nodes.append(helper.make_node(extra_reader, ["past"], ["seen"]))
        outputs.append(helper.make_tensor_value_info("seen", T.FLOAT if extra_reader == "Neg" else T.INT64, None))
    inputs = [helper.make_tensor_value_info("past", T.FLOAT, ["b", 5]),
              helper.make_tensor_value_info("idx", T.INT64, ["b", 1]),
              helper.make_tensor_value_info("row", T.FLOAT, ["b", 1])]
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs))


@pytest.mark.parametrize("extra, reduction, safe", [
    (None, None, True), ("Shape", None, True),  # a Shape reader sees only the (unchanged) shape
    ("Neg", None, False),  # another reader could run after the write and see the new row
    (None, "add", False),  # a reducing scatter is not a plain write
])
def test_writable_in_place_only_when_the_scatter_is_the_only_reader(extra, reduction, safe):
    from genrec.onnx_graph import writable_in_place

    assert writable_in_place(_scatter_graph(extra, reduction), {"past": "present"}) == ({"past"} if safe else set())
    assert writable_in_place(_scatter_graph(), {"past": "elsewhere"}) == set()


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


SHARED = r"""
import json, sys
import numpy as np
import onnxruntime as ort
from genrec.runtimes import get_backend, recommend
from genrec.errors import ConfigError
path, reqs = sys.argv[1], json.loads(sys.argv[2])
out = {}
for shared in (True, False):
    try:
        with get_backend("onnxruntime", path, threads=2, shared_threads=shared) as be:
            out[str(shared)] = [r.items for r in recommend(be, reqs, 5)]
    except Exception as e:
        out[str(shared)] = type(e).__name__ + ": " + str(e)
try:  # a second size cannot be had once the pool exists
    get_backend("onnxruntime", path, threads=1, shared_threads=True)
    out["second"] = "opened"
except ConfigError as e:
    out["second"] = "ConfigError"
print(json.dumps(out))
"""


def test_shared_threads_give_the_same_results_in_their_own_process(bundles, requests):
    """The process-wide pool changes every session of the process, so it is tried in a real
    subprocess: same recommendations; per-session sessions are then refused by onnxruntime."""
    import json
    import subprocess
    import sys

    reqs = [{"user_id": r.user_id, "items": list(map(int, r.items)), "timestamps": list(map(int, r.timestamps)),
             "request_time": int(r.request_time)} for r in requests[:6]]
    proc = subprocess.run([sys.executable, "-c", SHARED, str(bundles["hstu"]), json.dumps(reqs)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    with get_backend("onnxruntime", bundles["hstu"], threads=1) as be:
        want = [r.items for r in recommend(be, reqs, 5)]
    assert out["True"] == want
    assert "use_per_session_threads" in out["False"]  # onnxruntime's rule, not ours
    assert out["second"] == "ConfigError"


def test_spin_window_bounds_the_spin_after_a_run_where_onnxruntime_can():
    """After a run the pool spins for ``spin_after_us`` and then sleeps; 0, or an onnxruntime
    without the time bound (before 1.26), stops it the moment the run returns instead, never
    an unbounded spin (which made a batch-64 slate 1.8x slower)."""
    from genrec.errors import ConfigError
    from genrec.runtimes.onnxrt import spin_window
    from genrec.runtimes.registry import parse_backend_options

    stop = {"session.force_spinning_stop": "1"}
    assert spin_window("1.32.0", 500) == {"session.force_spinning_stop": "0", "session.intra_op.spin_duration_us": "500"}
    assert spin_window("1.26.1", 200)["session.intra_op.spin_duration_us"] == "200"
    assert spin_window("1.32.0", 0) == stop and spin_window("1.25.9", 500) == stop
    assert spin_window("1.9.0", 500) == stop and spin_window("weird", 500) == stop
    with pytest.raises(ConfigError, match="spin_after_us must be >= 0"):
        spin_window("1.32.0", -1)
    assert parse_backend_options("onnxruntime", {"spin_after_us": "200"}) == {"spin_after_us": 200}


def test_every_spin_setting_gives_the_same_results(bundles, requests):
    """The spin window changes when threads sleep, never what they compute."""
    outs = []
    for us in (0, 500):
        with get_backend("onnxruntime", bundles["hstu"], threads=2, spin_after_us=us) as backend:
            outs.append([r.items for r in generate(backend, requests[:12], 4)])
    assert outs[0] == outs[1]


def test_batch_one_runs_on_a_session_of_fixed_shapes_with_the_same_results(bundles, beauty):
    """With 1 among the gears, batch 1 gets its own prefill session with the batch axis fixed
    (onnxruntime folds the shape work): bit for bit what the dynamic session gives, and the
    other batch sizes and ``static_batch1=False`` keep the dynamic one."""
    from genrec.runtimes.onnxrt import STATIC1

    with get_backend("onnxruntime", bundles["hstu"], threads=1) as fixed, \
            get_backend("onnxruntime", bundles["hstu"], threads=1, static_batch1=False) as dynamic:
        assert STATIC1 in fixed._sess and STATIC1 not in dynamic._sess
        for users in ([5], [5, 6, 7, 8]):
            _same_prefill_and_step(fixed, dynamic, beauty, users)
        assert {(STATIC1, 1), ("prefill", 4)} <= set(fixed._bindings) and ("prefill", 1) not in fixed._bindings


def test_bitcast_buckets_change_the_loaded_graph_not_one_result(bundles, beauty, requests):
    """On the CPU the HSTU graphs are loaded with their time-bucket Log replaced by a lookup of
    the float's bit cell (``genrec.bucket_table``): no bucket Log is left in the graph that
    runs, and prefill, step, rank and whole slates are bit for bit those of the graph as
    exported (``bitcast_buckets=False``)."""
    import onnx

    from genrec.bundle import load_bundle
    from genrec.runtimes.onnxrt import load_graph

    bundle = load_bundle(bundles["hstu"])
    path = bundle.graph_path("prefill", "fp32")
    logs = {n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Log"}
    model, proto = load_graph(path, bitcast_buckets=True)
    left = {n.name for n in proto.graph.node if n.op_type == "Log"}
    assert isinstance(model, bytes) and onnx.load_from_string(model).opset_import[0].version == 26
    assert len(logs - left) >= 2 and len(left) == 1  # every bucket Log; the log-sum-exp's stays
    for graph in ("prefill", "step", "rank"):  # each bucket folded into its layers' bias lookups
        _, proto = load_graph(bundle.graph_path(graph, "fp32"), bitcast_buckets=True)
        made = {n.name.split("/")[0] for n in proto.graph.node if "_bucket_" in n.name}
        assert made and all(name.startswith("fused_bucket_") for name in made), (graph, made)
    with get_backend("onnxruntime", bundles["hstu"], threads=1) as fast, \
            get_backend("onnxruntime", bundles["hstu"], threads=1, bitcast_buckets=False) as plain:
        assert fast.bitcast_buckets and not plain.bitcast_buckets
        for users in ([5], [5, 6, 7, 8], list(range(20, 28))):
            _same_prefill_and_step(fast, plain, beauty, users)
        slates = [[(r.items, r.scores) for r in generate(be, requests[:16], 5, SearchParams("beam", num_beams=3))]
                  for be in (fast, plain)]
        assert slates[0] == slates[1]
        ranked = [[(r.items, r.scores) for r in rank(be, requests[:16])] for be in (fast, plain)]
        assert ranked[0] == ranked[1]


def test_bitcast_buckets_asked_of_an_onnxruntime_without_bitcast_is_a_config_error(bundles, monkeypatch):
    from genrec.errors import ConfigError
    from genrec.runtimes import onnxrt

    monkeypatch.setitem(onnxrt._BITCAST, ort.__version__, False)  # as the probe finds on onnxruntime 1.18
    with pytest.raises(ConfigError, match="BitCast"):
        get_backend("onnxruntime", bundles["hstu"], threads=1, bitcast_buckets=True)
    with get_backend("onnxruntime", bundles["hstu"], threads=1) as backend:  # unset: the graph as exported
        assert not backend.bitcast_buckets
