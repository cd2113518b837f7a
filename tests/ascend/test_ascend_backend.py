"""The ``ascend`` backend through the pyACL double (tests/ascend_double/acl): every backbone
exported, converted by the ATC double, served by ``genrec-run --backend ascend`` and gated by
``genrec parity --reference torch --candidate ascend`` at the fp32 thresholds; the KV cache
and exclusions stay on the device; errors are named and release everything in order.

The doubles are the only stand-ins: onnxruntime runs the graph the OM embeds, files and
subprocesses are real. ``acl`` is importable only because these tests put the double's
directory on ``sys.path`` (in-process) or ``PYTHONPATH`` (subprocesses)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ascend_support import DOUBLE_ROOT, double_env
from support import ARCHS, SLICE

from genrec.bundle import load_bundle, write_manifest
from genrec.cli import invoke
from genrec.errors import BundleError, ConfigError

MAGIC = b"GENREC-ATC-DOUBLE-OM\n"
RELEASE = ["destroy_data_buffer", "free", "free_host", "destroy_dataset", "unload", "destroy_desc",
           "destroy_stream", "destroy_context", "reset_device"]


@pytest.fixture(scope="module")
def converted(bundles, tmp_path_factory):
    """Per backbone: a copy of the session bundle converted for Ascend310P3 (fp32) by the ATC
    double, made once per module (``converted("hstu")``)."""
    from genrec.exporter.convert import convert_bundle

    root, cache = tmp_path_factory.mktemp("ascend-bundles"), {}

    def make(arch: str, precision: str = "fp32", cache_write: str = "where") -> Path:
        key = (arch, precision, cache_write)
        if key not in cache:
            dst = root / f"{arch}-{precision}-{cache_write}"
            shutil.copytree(bundles[arch], dst)
            old = os.environ["PATH"]
            os.environ["PATH"] = double_env()["PATH"]
            try:
                convert_bundle(dst, "Ascend310P3", precision, log_dir=root / "logs", cache_write=cache_write)
            finally:
                os.environ["PATH"] = old
            cache[key] = dst
        return cache[key]
    return make


@pytest.fixture
def acl(monkeypatch):
    """The pyACL double, importable as ``acl`` for this test only; no fault injected."""
    monkeypatch.syspath_prepend(str(DOUBLE_ROOT))
    for var in ("ACL_DOUBLE_FAIL", "ACL_DOUBLE_ALIAS", "ACL_DOUBLE_SOC", "ACL_DOUBLE_TRACE"):
        monkeypatch.delenv(var, raising=False)
    import acl as module

    return module


def acl_env(**extra: str) -> dict[str, str]:
    env = double_env(**extra)
    env["PYTHONPATH"] = os.pathsep.join([str(DOUBLE_ROOT), env.get("PYTHONPATH", "")])
    return env


def requests_file(bundle: Path, path: Path, n: int = 11) -> Path:
    """``n`` held-out users of the slice as genrec-run requests (11: batches of 8 and 3 -> gear 4)."""
    from genrec.runtimes.parity import requests_from_data

    b = load_bundle(bundle)
    reqs = requests_from_data(SLICE, b.id_map, n, b.dims.max_history, 0).requests[:n]
    with open(path, "w") as fh:
        for r in reqs:
            line = {"user_id": r.user_id, "items": r.items, "candidates": r.items[-2:] + r.items[:5]}
            if r.timestamps is not None:
                line |= {"timestamps": r.timestamps, "request_time": r.request_time}
            fh.write(json.dumps(line) + "\n")
    return path


def run(args: list[str], capsys) -> tuple[int, str, str]:
    from genrec.runtimes.cli import run_command

    code = invoke(run_command, args)
    out = capsys.readouterr()
    return code, out.out, out.err


def results(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def release_calls(calls: list[tuple[str, int]]) -> list[str]:
    return [name for name, _ in calls if name in RELEASE]


def assert_documented_order(names: list[str]) -> None:
    """ASCEND.md §2.3: buffers and memory, datasets, models, descs, stream, context, device."""
    rank = {"destroy_data_buffer": 0, "free": 0, "free_host": 0, "destroy_dataset": 1, "unload": 2,
            "destroy_desc": 3, "destroy_stream": 4, "destroy_context": 5, "reset_device": 6}
    order = [rank[n] for n in names]
    assert order == sorted(order), names
    assert {"destroy_data_buffer", "free", "destroy_dataset", "unload", "destroy_desc"} <= set(names)


# --------------------------------------------------------------------------------------------
# every backbone: genrec-run and parity


@pytest.mark.parametrize("arch", ARCHS)
def test_backbone_serves_and_passes_parity(arch, converted, acl, capsys, tmp_path):
    path = converted(arch)
    reqs = requests_file(path, tmp_path / "requests.jsonl")
    modes = {"recommend": ["--k", "5"], "greedy": ["--generate", "3"],
             "beam": ["--generate", "3", "--strategy", "beam", "--beams", "2"], "rank": ["--rank"]}
    for mode, extra in modes.items():
        got = {}
        for backend in ("ascend", "onnxruntime"):
            code, out, err = run([str(path), "--backend", backend, "--input", str(reqs), *extra], capsys)
            assert code == 0, err
            got[backend] = results(out)
        assert len(got["ascend"]) == 11
        for a, o in zip(got["ascend"], got["onnxruntime"]):
            assert a["user_id"] == o["user_id"] and a["items"] == o["items"], (mode, a, o)
            np.testing.assert_allclose(a["scores"], o["scores"], rtol=1e-4, atol=1e-5)
    from genrec.runtimes.parity_cli import parity_command

    report = tmp_path / "parity.json"
    code = invoke(parity_command, [str(path), "--reference", "torch", "--candidate", "ascend", "--data", str(SLICE),
                                   "--users", "24", "--generate", "3", "--report", str(report)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "PASSED parity torch vs ascend" in out.out
    r = json.loads(report.read_text())
    assert r["passed"] and r["thresholds"]["user_emb_max_abs"] == 1e-4  # the fp32 thresholds
    assert set(r["tensor"]) >= {"prefill", "rank", "step 1", "step 3"}


def test_genrec_run_in_a_real_process_prints_traffic(converted, tmp_path):
    path = converted("hstu")
    reqs = requests_file(path, tmp_path / "requests.jsonl")
    p = subprocess.run([sys.executable, "-m", "genrec", "run", str(path), "--backend", "ascend", "--input", str(reqs),
                        "--generate", "2", "--stats", "--backend-option", "device_id=0"],
                       capture_output=True, text=True, env=acl_env(), timeout=300)
    assert p.returncode == 0, p.stderr
    assert len(results(p.stdout)) == 11
    step = next(line for line in p.stderr.splitlines() if line.startswith("stats step:"))
    assert "H2D" in step and "D2H" in step and "D2D 0" in step


# --------------------------------------------------------------------------------------------
# the cache and the exclusions stay on the device


def test_step_moves_only_ids_positions_and_small_outputs(converted, acl):
    from genrec.runtimes.ascend import AscendBackend
    from genrec.runtimes.decoding import prepare
    from genrec.runtimes.parity import requests_from_data
    from genrec.runtimes.stepping import Stepper

    path = converted("hstu")
    with AscendBackend(path) as be:
        d = be.dims
        rows = prepare(be, requests_from_data(SLICE, be.item_map.to_list(), 8, d.max_history, 0).requests[:8])
        s = Stepper(be, rows)
        out = s.prefill()
        before = be.stats()
        steps = 4
        for _ in range(steps):
            out = s.step(out.topk_ids[:, 0])
        st = be.stats()["step"]
        b, k, emb = 8, d.step_topk, be._graphs["step"].outputs["user_emb"].tail[0]
        # in: new_item, position, timestamp (int32 per row), the gear (8 bytes), and 4 bytes per
        # exclusion slot that changed (at most one per row: the item chosen)
        small_in = b * 4 * 3 + 8
        assert st["calls"] == steps and "prefill" in before
        assert steps * small_in < st["bytes"]["h2d"] <= steps * (small_in + 4 * b)
        assert st["bytes"]["d2h"] == steps * b * (4 * k + 4 * k + 4 + 4 * emb)  # top-k ids/scores, log_z, user_emb
        assert st["bytes"]["d2d"] == 0
        cache = sum(be._cache_sizes)
        assert st["bytes_per_call"]["h2d"] < cache / 100  # the cache itself never crosses


def test_exclusion_slots_are_rewritten_in_place():
    from genrec.runtimes.ascend import exclude_layout

    device = np.array([[5, 9, 0, 0], [7, 3, 2, 0]], np.int32)
    wanted = np.array([[11, 5, 9, 0], [8, 7, 3, 2]], np.int32)  # the loop's push: new item in front
    rows, changed = exclude_layout(device, wanted)
    assert rows.tolist() == [[5, 9, 11, 0], [7, 3, 2, 8]]
    assert changed.tolist() == [2, 7]
    rows, changed = exclude_layout(rows, np.array([[9, 5, 11, 0], [8, 7, 3, 2]], np.int32))
    assert changed.size == 0  # same sets: nothing to copy
    rows, changed = exclude_layout(rows, np.array([[1, 2, 3, 4], [0, 0, 0, 0]], np.int32))
    assert {frozenset(r[r != 0].tolist()) for r in rows} == {frozenset({1, 2, 3, 4}), frozenset()}


def test_beam_reorder_and_rank_match_onnxruntime_with_the_cache_on_device(converted, acl):
    from genrec.runtimes.ascend import AscendBackend
    from genrec.runtimes.decoding import SearchParams, generate, rank
    from genrec.runtimes.onnxrt import OrtBackend
    from genrec.runtimes.parity import requests_from_data

    path = converted("llama")
    with AscendBackend(path) as be, OrtBackend(path) as ref:
        reqs = requests_from_data(SLICE, be.item_map.to_list(), 6, be.dims.max_history, 0).requests[:6]
        a = generate(be, reqs, 4, SearchParams("beam", num_beams=3))
        o = generate(ref, reqs, 4, SearchParams("beam", num_beams=3))
        assert [r.items for r in a] == [r.items for r in o]
        st = be.stats()
        assert st["reorder"]["calls"] >= 3 and st["reorder"]["bytes"]["h2d"] == st["reorder"]["bytes"]["d2h"] == 0
        for r in reqs:
            r.candidates = r.items[:9]
        ra, ro = rank(be, reqs), rank(ref, reqs)
        for x, y in zip(ra, ro):
            assert x.items == y.items
            np.testing.assert_allclose(x.scores, y.scores, rtol=1e-4, atol=1e-5)


def test_the_context_is_bound_in_any_thread_that_calls(converted, acl):
    from genrec.runtimes.ascend import AscendBackend
    from genrec.runtimes.decoding import recommend
    from genrec.runtimes.parity import requests_from_data

    path = converted("sasrec")
    with AscendBackend(path) as be:
        reqs = requests_from_data(SLICE, be.item_map.to_list(), 4, be.dims.max_history, 0).requests[:4]
        here = recommend(be, reqs, 5)
        there: list = []
        t = threading.Thread(target=lambda: there.append(recommend(be, reqs, 5)))
        t.start()
        t.join()
        assert there and [r.items for r in there[0]] == [r.items for r in here]


def test_two_devices_used_in_turn_from_one_thread(converted, acl, monkeypatch):
    """Each call binds its own device's context: a model only runs in the context that loaded it."""
    from genrec.runtimes.ascend import AscendBackend
    from genrec.runtimes.decoding import recommend
    from genrec.runtimes.parity import requests_from_data

    monkeypatch.setenv("ACL_DOUBLE_DEVICES", "2")
    path = converted("sasrec")
    with AscendBackend(path, device_id=0) as a, AscendBackend(path, device_id=1) as b:
        reqs = requests_from_data(SLICE, a.item_map.to_list(), 3, a.dims.max_history, 0).requests[:3]
        first = [r.items for r in recommend(a, reqs, 5)]
        assert [r.items for r in recommend(b, reqs, 5)] == first
        assert [r.items for r in recommend(a, reqs, 5)] == first


def test_runtime_is_shared_and_reference_counted(converted, acl):
    from genrec.runtimes.ascend import AscendBackend

    path = converted("sasrec")
    start = len(acl.CALLS)
    a = AscendBackend(path)
    b = AscendBackend(path)
    calls = [n for n, _ in acl.CALLS[start:]]
    assert calls.count("set_device") == 1 and calls.count("create_context") == 1 and "init" not in calls[1:]
    a.close()
    assert "reset_device" not in [n for n, _ in acl.CALLS[start:]]
    b.close()
    assert [n for n, _ in acl.CALLS[start:]].count("reset_device") == 1


# --------------------------------------------------------------------------------------------
# errors


def test_without_cann_one_error_line_and_import_never_needs_acl(converted, tmp_path):
    path = converted("hstu")
    reqs = requests_file(path, tmp_path / "requests.jsonl", 2)
    p = subprocess.run([sys.executable, "-m", "genrec", "run", str(path), "--backend", "ascend", "--input", str(reqs)],
                       capture_output=True, text=True, env=double_env(), timeout=300)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ascend backend: cannot import pyACL"), p.stderr
    assert "CANN toolkit" in lines[0] and "set_env.sh" in lines[0] and "Traceback" not in p.stderr
    code = ("import sys, genrec, genrec.runtimes.registry as r; from genrec.cli import run_main; "
            "r.parse_backend_options('ascend', {'device_id': '1'}); assert 'acl' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], env=acl_env(), timeout=120).returncode == 0
    h = subprocess.run([sys.executable, "-m", "genrec", "--help"], capture_output=True, text=True, env=double_env())
    assert h.returncode == 0


def test_backend_options_are_checked_by_the_backend(converted, acl, capsys):
    path = converted("sasrec")
    code, _, err = run([str(path), "--backend", "ascend", "--backend-option", "devce_id=1"], capsys)
    assert code == 1 and "takes no option 'devce_id'; its options: device_id, soc, precision, inplace_cache" in err
    code, _, err = run([str(path), "--backend", "ascend", "--backend-option", "device_id=x"], capsys)
    assert code == 1 and "device_id='x': expected int" in err
    code, _, err = run([str(path), "--backend", "ascend", "--backend-option", "precision=fp16"], capsys)
    assert code == 1 and "no fp16 Ascend build for Ascend310P3" in err and "--precision fp16" in err
    code, _, err = run([str(path), "--backend", "ascend", "--backend-option", "soc=Ascend910B4"], capsys)
    assert code == 1 and "this NPU is Ascend310P3" in err
    code, _, err = run([str(path), "--backend", "ascend", "--backend-option", "device_id=5"], capsys)
    assert code == 1 and "acl.rt.set_device returned 200002 (ACL_ERROR_INVALID_DEVICE)" in err


def test_a_batch_that_is_not_a_gear(converted, acl):
    from genrec.runtimes.ascend import AscendBackend
    from genrec.runtimes.base import PrefillBatch

    path = converted("sasrec")
    with AscendBackend(path) as be:
        d = be.dims
        z = np.ones((3, d.max_history), np.int32)
        with pytest.raises(ConfigError, match="batch 3 is not one of the batch gears"):
            be.prefill(PrefillBatch(z, np.ones(3, np.int32), np.zeros((3, d.max_exclude), np.int32)))
        # what the runtime itself answers for a batch that is not a gear (ASCEND.md §2.5)
        g = be._graphs["prefill"]
        be._rt.bind()
        assert acl.mdl.set_dynamic_batch_size(g.model_id, g.in_ds, g.mbatch.index, 3) == 145013
        assert "not one of the model's gears" in acl.get_recent_err_msg()
        assert acl.mdl.set_dynamic_batch_size(g.model_id, g.in_ds, g.mbatch.index, 4) == 0


@pytest.mark.parametrize("fault, call", [("execute:500002", "mdl.execute"),
                                         ("set_dynamic_batch_size:145013", "mdl.set_dynamic_batch_size")])
def test_a_failed_call_is_named_and_releases_everything_in_order(fault, call, converted, acl, monkeypatch):
    from genrec.runtimes.acl_util import AclError
    from genrec.runtimes.ascend import AscendBackend
    from genrec.runtimes.decoding import recommend
    from genrec.runtimes.parity import requests_from_data

    path = converted("gpt")
    be = AscendBackend(path)
    reqs = requests_from_data(SLICE, be.item_map.to_list(), 2, be.dims.max_history, 0).requests[:2]
    start = len(acl.CALLS)
    monkeypatch.setenv("ACL_DOUBLE_FAIL", fault)
    with pytest.raises(AclError) as e:
        recommend(be, reqs, 5)
    code = int(fault.split(":")[1])
    assert e.value.code == code and e.value.call == call
    assert f"acl.{call} returned {code}" in str(e.value) and "injected failure" in str(e.value)
    assert "released its device resources" in str(e.value)
    assert_documented_order(release_calls(acl.CALLS[start:]))
    monkeypatch.delenv("ACL_DOUBLE_FAIL")
    with pytest.raises(ConfigError, match="used after close"):
        recommend(be, reqs, 5)
    be.close()  # closing again is harmless


def test_a_failed_load_releases_what_was_made(converted, acl, monkeypatch):
    from genrec.runtimes.acl_util import AclError
    from genrec.runtimes.ascend import AscendBackend

    path = converted("gpt")
    models, blocks = set(acl._core.S.models), set(acl._core.S.blocks)
    start = len(acl.CALLS)
    monkeypatch.setenv("ACL_DOUBLE_FAIL", "load_from_file:545001:2")  # the second graph's OM
    with pytest.raises(AclError, match=r"acl.mdl.load_from_file returned 545001 \(ACL_ERROR_GE_LOAD_MODEL\)"):
        AscendBackend(path)
    names = release_calls(acl.CALLS[start:])
    assert names[-3:] == ["destroy_stream", "destroy_context", "reset_device"], names
    assert set(acl._core.S.models) == models and set(acl._core.S.blocks) == blocks  # nothing left behind


def test_close_releases_in_the_documented_order_and_leaks_nothing(converted, tmp_path):
    path = converted("sasrec")
    trace = tmp_path / "trace.txt"
    code = (f"from genrec.runtimes.registry import get_backend\n"
            f"be = get_backend('ascend', {str(path)!r})\nbe.close()\n")
    p = subprocess.run([sys.executable, "-c", code], env=acl_env(ACL_DOUBLE_TRACE=str(trace)), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = trace.read_text().splitlines()
    names = [ln.split()[0] for ln in lines]
    assert all(ln.endswith(" 0") for ln in lines), [ln for ln in lines if not ln.endswith(" 0")]
    assert_documented_order([n for n in names if n in RELEASE])
    assert names[-1] == "finalize" and not any(n == "leak" for n in names)  # finalize last, at exit


def test_a_corrupted_om_fails_the_gate_naming_graph_and_step(converted, acl, capsys, tmp_path):
    """Weights nudged in the step OM's embedded graph, its sha256 updated in the manifest so that
    verification passes: only parity can catch it, and names the step graph's calls."""
    from genrec.runtimes.parity_cli import parity_command

    path = tmp_path / "corrupt"
    shutil.copytree(converted("hstu"), path)
    b = load_bundle(path)
    om = path / b.manifest.targets["ascend"][0].graphs["step"]
    data = om.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data[len(MAGIC):])) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    model = onnx.load_from_string(members["model.onnx"])
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2]
    table = max(floats, key=lambda t: t.dims[0] * t.dims[1])
    w = next(t for t in sorted(floats, key=lambda t: -t.dims[0] * t.dims[1]) if t is not table)
    nudged = numpy_helper.to_array(w) * 1.02 + 0.01
    w.CopyFrom(numpy_helper.from_array(nudged.astype(np.float32), w.name))
    members["model.onnx"] = model.SerializeToString()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for n, blob in members.items():
            zf.writestr(n, blob)
    om.write_bytes(MAGIC + buf.getvalue())
    with pytest.raises(BundleError):
        load_bundle(path)  # the sha256 no longer matches...
    write_manifest(path, load_bundle(path, verify=False).manifest)
    load_bundle(path)  # ...until the manifest is updated: verification passes
    code = invoke(parity_command, [str(path), "--candidate", "ascend", "--data", str(SLICE), "--users", "12",
                                   "--generate", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "FAILED parity torch vs ascend" in err
    breaches = [ln for ln in err.splitlines() if ln.startswith("breach: ")]
    assert breaches and breaches[0].startswith("breach: step 1: ") and "max abs error" in breaches[0]
    assert not any(ln.startswith("breach: prefill") or ln.startswith("breach: rank") for ln in breaches)


def test_fp16_build_parity_uses_the_fp16_thresholds(converted, acl, capsys, tmp_path):
    """``ascend:fp16`` opens the fp16 OM build and is judged by the fp16 thresholds. The double
    runs the fp32 graph embedded in it, so this checks the plumbing, not fp16 numerics."""
    from genrec.runtimes.parity_cli import parity_command

    path = converted("sasrec", "fp16")
    report = tmp_path / "p.json"
    code = invoke(parity_command, [str(path), "--candidate", "ascend:fp16", "--data", str(SLICE), "--users", "8",
                                   "--generate", "2", "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    r = json.loads(report.read_text())
    assert r["thresholds"]["cosine_min"] == 0.999 and r["thresholds"]["user_emb_max_abs"] is None


def test_inplace_cache_is_opt_in_and_matches_ping_pong(converted, acl, monkeypatch):
    from genrec.runtimes.acl_util import AclError
    from genrec.runtimes.ascend import AscendBackend
    from genrec.runtimes.decoding import SearchParams, generate
    from genrec.runtimes.parity import requests_from_data

    path = converted("sasrec", cache_write="scatter")  # ScatterElements writes: aliasable per the graph
    with AscendBackend(path) as be:
        assert be.inplace_cache == []  # off by default
        reqs = requests_from_data(SLICE, be.item_map.to_list(), 4, be.dims.max_history, 0).requests[:4]
        want = [r.items for r in generate(be, reqs, 3, SearchParams("greedy"))]
    with AscendBackend(path, inplace_cache=True) as be:
        assert be.inplace_cache  # the cache tensors the step graph may write in place
        assert [r.items for r in generate(be, reqs, 3, SearchParams("greedy"))] == want
    monkeypatch.setenv("ACL_DOUBLE_ALIAS", "forbid")  # a runtime that refuses aliased buffers
    with AscendBackend(path, inplace_cache=True) as be, pytest.raises(AclError, match="overlaps an input"):
        generate(be, reqs, 3, SearchParams("greedy"))


# --------------------------------------------------------------------------------------------
# the double's own surface (a fresh process: init state is process-wide)


def test_the_acl_double_follows_the_documented_surface(converted):
    om = next(converted("sasrec").glob("om/Ascend310P3/fp32/step*.om"))
    code = f"""
import acl, numpy as np
assert acl.rt.malloc(8, 0) == (0, 100001)                      # before init
assert acl.init() == 0 and acl.init() == 100002                 # a second init
assert acl.rt.malloc(8, 0)[1] == 107002                         # no context on this thread yet
assert acl.rt.set_device(0) == 0
ctx, ret = acl.rt.create_context(0); assert ret == 0 and isinstance(ctx, int)
dev, ret = acl.rt.malloc(64, 0); assert ret == 0
host, ret = acl.rt.malloc_host(64); assert ret == 0 and host < dev  # separate address spaces
src = np.arange(16, dtype=np.int32).tobytes(); p = acl.util.bytes_to_ptr(src)
assert acl.rt.memcpy(dev, 64, p, 64, 2) == 100000               # D2H from a host pointer: wrong kind
assert acl.rt.memcpy(dev, 32, p, 64, 1) == 100000               # count > dst_max
assert acl.rt.memcpy(dev, 64, p, 64, 1) == 0 and acl.rt.memcpy(host, 64, dev, 64, 2) == 0
assert np.frombuffer(acl.util.ptr_to_bytes(host, 64), np.int32).tolist() == list(range(16))
try:
    acl.rt.memcpy(dev, 64, src, 64, 1); raise SystemExit("bytes accepted")
except TypeError as e:
    assert "acl.rt.memcpy args parse failed" in str(e)
mid, ret = acl.mdl.load_from_file({str(om)!r}); assert ret == 0
desc = acl.mdl.create_desc(); assert acl.mdl.get_desc(desc, mid) == 0
n = acl.mdl.get_num_inputs(desc)
idx, ret = acl.mdl.get_input_index_by_name(desc, "ascend_mbatch_shape_data"); assert ret == 0 and idx == n - 1
assert acl.mdl.get_dynamic_batch(desc) == ({{"batchCount": 3, "batch": [1, 4, 8]}}, 0)
dims, ret = acl.mdl.get_input_dims(desc, 0); assert ret == 0 and dims["dims"][0] == -1
size0 = acl.mdl.get_input_size_by_index(desc, 0)
assert size0 == 8 * int(np.prod(dims["dims"][1:])) * 4          # the max gear's bytes
names = [acl.mdl.get_output_name_by_index(desc, i) for i in range(acl.mdl.get_num_outputs(desc))]
assert all(nm.count(":") == 2 for nm in names)                  # node:idx:onnx_name
ds = acl.mdl.create_dataset(); out = acl.mdl.create_dataset()
for i in range(n):
    ptr, _ = acl.rt.malloc(acl.mdl.get_input_size_by_index(desc, i), 0)
    assert acl.mdl.add_dataset_buffer(ds, acl.create_data_buffer(ptr, acl.mdl.get_input_size_by_index(desc, i)))[1] == 0
for i in range(len(names)):
    ptr, _ = acl.rt.malloc(acl.mdl.get_output_size_by_index(desc, i), 0)
    _, ret = acl.mdl.add_dataset_buffer(out, acl.create_data_buffer(ptr, acl.mdl.get_output_size_by_index(desc, i)))
assert acl.mdl.set_dynamic_batch_size(mid, ds, idx, 3) == 145013
assert acl.mdl.execute(mid, ds, out) == 0                       # no gear set: the largest runs
assert acl.mdl.get_cur_output_dims(desc, 0)[0]["dims"][0] == 8
assert acl.mdl.set_dynamic_batch_size(mid, ds, idx, 4) == 0
assert acl.mdl.execute(mid, ds, out) == 0 and acl.mdl.get_cur_output_dims(desc, 0)[0]["dims"][0] == 4
t = threading = __import__("threading")
res = []
th = t.Thread(target=lambda: res.append(acl.mdl.execute(mid, ds, out))); th.start(); th.join()
assert res == [107002]                                          # the context is per thread
"""
    p = subprocess.run([sys.executable, "-c", code], env=acl_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


# --------------------------------------------------------------------------------------------
# the hardware acceptance command, run here through both doubles


def test_doctor_selftest_converts_serves_gates_and_reports(bundles, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(bundles["sasrec"], bundle)
    out = tmp_path / "selftest"
    p = subprocess.run([sys.executable, "-m", "genrec", "doctor", "--selftest", str(out), "--bundle", str(bundle),
                        "--data", str(SLICE), "--users", "8"], capture_output=True, text=True, env=acl_env(),
                       timeout=600)
    assert p.returncode == 0, p.stderr
    assert "selftest passed on Ascend310P3" in p.stdout
    r = json.loads((out / "selftest.json").read_text())
    assert r["passed"] and r["parity"]["passed"] and r["build"]["om_producer"] == "double"
    assert set(r["latency_ms_per_call"]) == {"prefill", "step", "rank"} and r["cann"] == "0.0.0.double"
    assert r["traffic"]["per_step"]["d2d"] == 0
    # a bundle that cannot convert: one error line, the report says why
    p = subprocess.run([sys.executable, "-m", "genrec", "doctor", "--selftest", str(out), "--bundle", str(bundle),
                        "--data", str(SLICE), "--soc-version", "Ascend999"], capture_output=True, text=True,
                       env=acl_env(), timeout=600)
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith("error: selftest failed: ")
    assert "E10001" in p.stderr and "Traceback" not in p.stderr
