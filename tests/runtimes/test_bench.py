"""``genrec bench``: the report's structure and sanity (never timing thresholds), rounds and
their ratios, plot, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from genrec.errors import ConfigError
from genrec.runtimes.bench import BenchSpec, parse_sizes, run_bench, synthetic_requests
from genrec.runtimes.bench_cli import bench_command

FAST = ["--repeat", "2", "--warmup", "1", "--rounds", "2", "--threads", "1"]
PNG = b"\x89PNG\r\n\x1a\n"


def genrec(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genrec", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def report(bundles, tmp_path_factory):
    """One CLI run on the sasrec bundle (T=20, gears 1/4/8): two backends, 2x2 grid, --generate."""
    out = tmp_path_factory.mktemp("bench")
    js, png = out / "bench.json", out / "bench.png"
    result = CliRunner().invoke(bench_command, [
        str(bundles["sasrec"]), "--backends", "onnxruntime,torch", "--batch-sizes", "1,5",
        "--history-lengths", "3,30", "--generate", "3", "--json", str(js), "--plot", str(png), *FAST])
    assert result.exit_code == 0, result.output
    return json.loads(js.read_text()), png, result.output


def test_report_structure_and_sane_values(report, bundles):
    data, _, _ = report
    assert data["arch"] == "sasrec" and data["dims"]["T"] == 20
    assert data["settings"]["backends"] == ["onnxruntime", "torch"] and data["settings"]["rounds"] == 2
    assert set(data["backends"]) == {"onnxruntime", "torch"}
    assert all(b["threads"] == 1 and b["load_s"] > 0 for b in data["backends"].values())
    [entry] = data["bundles"]
    assert entry["path"] == data["bundle"] == str(bundles["sasrec"]) and entry["dims"] == data["dims"]
    assert entry["digest"] == data["dims"]["digest"] and entry["backends"] == data["backends"]
    rows = data["results"]
    assert [(r["backend"], r["history"], r["batch"]) for r in rows] == [
        (b, h, n) for b in ("onnxruntime", "torch") for h in (3, 30) for n in (1, 5)]
    for r in rows:
        assert r["T"] == 20 and r["bundle"] == str(bundles["sasrec"])
        for key in ("prefill_ms", "step_ms"):
            s = r[key]
            assert 0 < s["min"] <= s["p50"] <= s["p99"] and s["mean"] > 0 and s["n"] >= 4  # 2 rounds x 2
        assert r["recommend"]["requests_per_s"] > 0 and 0 <= r["recommend"]["loop_share"] < 1
        assert r["recommend"]["call_ms"]["n"] == r["generate"]["call_ms"]["n"] == r["step_ms"]["n"] == 4
        assert r["generate"]["steps"] == 3 and r["generate"]["slates_per_s"] > 0
        assert r["generate"]["items_per_s"] == pytest.approx(3 * r["generate"]["slates_per_s"])
        assert r["memory"]["peak_rss_delta_mb"] >= 0
        assert r["gears"] == ([1] if r["batch"] == 1 else [8])  # 5 requests pad to gear 8
        assert r["synthetic_requests"] == r["batch"]
    assert "resident set" in data["memory_method"]


def test_rounds_are_recorded_per_backend_and_row(report):
    """Two rounds: one median per round for every measurement; rates from the median round."""
    for r in report[0]["results"]:
        rounds = {key: r[part]["rounds_ms"] for key, part in (
            ("prefill", "prefill_ms"), ("step", "step_ms"), ("recommend", "recommend"), ("generate", "generate"))}
        assert all(len(v) == 2 and min(v) > 0 for v in rounds.values()), rounds
        assert r["prefill_ms"]["min"] <= min(rounds["prefill"])  # a round's median: of its own calls
        assert r["recommend"]["call_ms"]["min"] <= min(rounds["recommend"])
        assert r["recommend"]["requests_per_s"] == pytest.approx(r["batch"] / (np.median(rounds["recommend"]) / 1e3))
        assert r["generate"]["slates_per_s"] == pytest.approx(r["batch"] / (np.median(rounds["generate"]) / 1e3))


def test_speedups_are_median_per_round_ratios_vs_the_first_backend(report):
    rows = report[0]["results"]
    parts = {"prefill_p50": "prefill_ms", "step_p50": "step_ms", "recommend_rps": "recommend",
             "generate_rps": "generate"}
    for r in rows:
        s, per_round = r["speedup_vs_first"], r["speedup_rounds"]
        assert set(s) == {"prefill_p50", "prefill_p99", "step_p50", "recommend_rps", "generate_rps"}
        assert set(per_round) == set(parts)
        if r["backend"] == "onnxruntime":
            assert all(v == 1.0 for v in s.values())  # exactly
            assert all(v == [1.0, 1.0] for v in per_round.values())
            continue
        first = next(f for f in rows if f["backend"] == "onnxruntime"
                     and (f["batch"], f["history"]) == (r["batch"], r["history"]))
        for key, part in parts.items():
            want = [a / b for a, b in zip(first[part]["rounds_ms"], r[part]["rounds_ms"])]
            assert per_round[key] == pytest.approx(want)
            assert s[key] == pytest.approx(float(np.median(want)))
        assert s["prefill_p99"] == pytest.approx(first["prefill_ms"]["p99"] / r["prefill_ms"]["p99"])
        assert all(v > 0 for v in s.values())


def test_table_and_plot(report):
    _, png, output = report
    assert "genrec bench: sasrec" in output and "onnxruntime" in output and "torch" in output
    assert "2 rounds" in output
    assert png.read_bytes()[:8] == PNG


@pytest.fixture(scope="module")
def short_bundle(checkpoints, tmp_path_factory):
    """The sasrec checkpoint exported again at T=10 (the session bundle is T=20)."""
    from support import TEST_GEARS

    from genrec.exporter import export_bundle

    out = tmp_path_factory.mktemp("bench-T10") / "bundle-T10"
    export_bundle(checkpoints["sasrec"], out, max_history=10, topk=40, max_exclude=28, rank_candidates=6,
                  batch_gears=TEST_GEARS)
    return out


def test_several_bundles_draw_the_curve_against_T(bundles, short_bundle, tmp_path):
    """Two bundles of one model at T=20 and T=10: each measured at its own T, the curve plotted."""
    js, png = tmp_path / "curve.json", tmp_path / "curve.png"
    result = CliRunner().invoke(bench_command, [
        str(bundles["sasrec"]), str(short_bundle), "--backends", "onnxruntime,torch", "--batch-sizes", "1,2",
        "--generate", "2", "--json", str(js), "--plot", str(png),
        "--repeat", "1", "--warmup", "1", "--rounds", "2", "--threads", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert [(b["path"], b["dims"]["T"]) for b in data["bundles"]] == [(str(bundles["sasrec"]), 20),
                                                                       (str(short_bundle), 10)]
    assert data["dims"]["T"] == 20 and data["settings"]["history_lengths"] is None  # the first bundle's
    assert all(set(b["backends"]) == {"onnxruntime", "torch"} for b in data["bundles"])
    rows = data["results"]
    assert [(r["T"], r["backend"], r["history"], r["batch"]) for r in rows] == [
        (t, b, t, n) for t in (20, 10) for b in ("onnxruntime", "torch") for n in (1, 2)]
    by_t = {b["dims"]["T"]: b["path"] for b in data["bundles"]}
    assert all(r["bundle"] == by_t[r["T"]] for r in rows)
    assert all(len(r["recommend"]["rounds_ms"]) == 2 and r["generate"]["slates_per_s"] > 0 for r in rows)
    assert all(r["speedup_vs_first"]["recommend_rps"] == 1.0 for r in rows if r["backend"] == "onnxruntime")
    assert "T=20,10" in result.output
    assert png.read_bytes()[:8] == PNG


def test_explicit_history_lengths_apply_to_every_bundle(bundles, short_bundle):
    spec = BenchSpec(backends=("onnxruntime",), batch_sizes=(1,), history_lengths=(5, 15), repeat=1, warmup=0,
                     rounds=1, threads=1)
    data = run_bench([bundles["sasrec"], short_bundle], spec)
    assert [(r["T"], r["history"]) for r in data["results"]] == [(20, 5), (20, 15), (10, 5), (10, 15)]
    assert all(len(r["prefill_ms"]["rounds_ms"]) == 1 for r in data["results"])


def test_synthetic_histories_have_exactly_the_asked_length(bundles):
    from genrec.bundle import load_bundle

    id_map = load_bundle(bundles["sasrec"]).id_map
    reqs, synthetic = synthetic_requests(id_map, 3, 30)
    assert synthetic == 3
    for r in reqs:
        assert len(r.items) == len(r.timestamps) == 30
        assert set(np.asarray(r.items).tolist()) <= set(id_map)
        assert np.all(np.diff(r.timestamps) > 0) and r.request_time > r.timestamps[-1]


def test_real_histories_are_used_first(bundles, slice_dir):
    spec = BenchSpec(backends=("onnxruntime",), batch_sizes=(2,), history_lengths=(4,), repeat=1,
                     warmup=0, rounds=1, threads=1, data=str(slice_dir))
    data = run_bench(bundles["sasrec"], spec)
    assert data["results"][0]["synthetic_requests"] == 0
    assert data["results"][0]["speedup_vs_first"]["prefill_p50"] == 1.0


def test_parse_sizes():
    assert parse_sizes("1, 8,64,8", "--batch-sizes") == (1, 8, 64)
    for bad in ("", "1,x", "0", "-2", "1,,2"):
        with pytest.raises(ConfigError, match="--batch-sizes"):
            parse_sizes(bad, "--batch-sizes")


def test_compiling_backends_need_a_warmup(bundles):
    """torch.compile (a name with a dot) compiles on its first call per batch size: never timed."""
    from genrec.bundle import load_bundle

    dims = load_bundle(bundles["sasrec"]).dims
    for names, options in ((("onnxruntime", "torch.compile"), {}), (("openvino",), {}),
                           (("torch",), {"torch": {"compile": True}})):
        with pytest.raises(ConfigError, match="warmup must be >= 1 with"):
            BenchSpec(backends=names, warmup=0, options=options).check(dims)
        BenchSpec(backends=names, warmup=1, options=options).check(dims)
    BenchSpec(backends=("onnxruntime", "torch"), warmup=0).check(dims)


@pytest.mark.parametrize("args, message", [
    (["--backends", "torch,nope"], "unknown backend 'nope'"),
    (["--backends", "torch,torch"], "each may appear once"),
    (["--batch-sizes", "1,0"], "--batch-sizes"),
    (["--history-lengths", "ten"], "--history-lengths"),
    (["--generate", "50"], "generate=50 must be in 1..8"),
    (["--repeat", "0"], "repeat must be >= 1"),
    (["--rounds", "0"], "rounds must be >= 1, got 0"),
    (["--backends", "onnxruntime,torch.compile", "--warmup", "0"], "warmup must be >= 1 with torch.compile"),
    (["--plot", "out.xyz"], "unsupported image type '.xyz'"),
])
def test_bad_input_is_one_error_line(bundles, tmp_path, args, message):
    proc = genrec("bench", bundles["sasrec"], *args, "--json", tmp_path / "x.json")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_a_missing_backend_package_is_one_error_line_and_closes_the_opened(bundles, tmp_path, monkeypatch,
                                                                          capsys):
    """openvino not installed (hidden here): MissingBackend when it opens, after onnxruntime did;
    the CLI's one error line, and onnxruntime closed on the way out."""
    from genrec.cli import cli, invoke
    from genrec.runtimes.onnxrt import OrtBackend

    closed = []
    close = OrtBackend.close
    monkeypatch.setattr(OrtBackend, "close", lambda self: (closed.append(self), close(self))[1])
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    code = invoke(cli, ["bench", str(bundles["sasrec"]), "--backends", "onnxruntime,openvino",
                        "--batch-sizes", "1", "--history-lengths", "3", "--json", str(tmp_path / "x.json"), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: openvino backend:") and "pip install openvino" in err[-1]
    assert not any(line.startswith(("Traceback", "error:")) for line in err[:-1])
    assert len(closed) == 1 and not (tmp_path / "x.json").exists()


def test_an_unloadable_dotted_backend_is_refused_before_loading(bundles, monkeypatch, capsys):
    from genrec.cli import cli, invoke
    from genrec.runtimes import registry

    monkeypatch.setitem(registry._REGISTRY, "vendor.fast", "genrec_no_such_module:Backend")
    code = invoke(cli, ["bench", str(bundles["sasrec"]), "--backends", "onnxruntime,vendor.fast", *FAST])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: backend 'vendor.fast' could not be loaded")
    assert len(err.strip().splitlines()) == 1  # nothing loaded, so no progress line either


def test_not_a_bundle(tmp_path):
    proc = genrec("bench", tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
