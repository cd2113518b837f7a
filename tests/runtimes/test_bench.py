"""``genrec bench``: the report's structure and sanity (never timing thresholds), plot, bad input."""

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

FAST = ["--repeat", "2", "--warmup", "1", "--threads", "1"]


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


def test_report_structure_and_sane_values(report):
    data, _, _ = report
    assert data["arch"] == "sasrec" and data["dims"]["T"] == 20
    assert data["settings"]["backends"] == ["onnxruntime", "torch"]
    assert set(data["backends"]) == {"onnxruntime", "torch"}
    assert all(b["threads"] == 1 and b["load_s"] > 0 for b in data["backends"].values())
    rows = data["results"]
    assert [(r["backend"], r["history"], r["batch"]) for r in rows] == [
        (b, h, n) for b in ("onnxruntime", "torch") for h in (3, 30) for n in (1, 5)]
    for r in rows:
        for key in ("prefill_ms", "step_ms"):
            s = r[key]
            assert 0 < s["min"] <= s["p50"] <= s["p99"] and s["mean"] > 0 and s["n"] >= 2
        assert r["recommend"]["requests_per_s"] > 0 and 0 <= r["recommend"]["loop_share"] < 1
        assert r["generate"]["steps"] == 3 and r["generate"]["slates_per_s"] > 0
        assert r["generate"]["items_per_s"] == pytest.approx(3 * r["generate"]["slates_per_s"])
        assert r["memory"]["peak_rss_delta_mb"] >= 0
        assert r["gears"] == ([1] if r["batch"] == 1 else [8])  # 5 requests pad to gear 8
        assert r["synthetic_requests"] == r["batch"]
    assert "resident set" in data["memory_method"]


def test_speedups_are_relative_to_the_first_backend(report):
    rows = report[0]["results"]
    for r in rows:
        s = r["speedup_vs_first"]
        assert set(s) == {"prefill_p50", "prefill_p99", "step_p50", "recommend_rps", "generate_rps"}
        if r["backend"] == "onnxruntime":
            assert all(v == 1.0 for v in s.values())
        else:
            first = next(f for f in rows if f["backend"] == "onnxruntime"
                         and (f["batch"], f["history"]) == (r["batch"], r["history"]))
            assert s["prefill_p50"] == pytest.approx(first["prefill_ms"]["p50"] / r["prefill_ms"]["p50"])
            assert s["recommend_rps"] == pytest.approx(
                r["recommend"]["requests_per_s"] / first["recommend"]["requests_per_s"])
            assert all(v > 0 for v in s.values())


def test_table_and_plot(report):
    _, png, output = report
    assert "genrec bench: sasrec" in output and "onnxruntime" in output and "torch" in output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
                     warmup=0, threads=1, data=str(slice_dir))
    data = run_bench(bundles["sasrec"], spec)
    assert data["results"][0]["synthetic_requests"] == 0
    assert data["results"][0]["speedup_vs_first"]["prefill_p50"] == 1.0


def test_parse_sizes():
    assert parse_sizes("1, 8,64,8", "--batch-sizes") == (1, 8, 64)
    for bad in ("", "1,x", "0", "-2", "1,,2"):
        with pytest.raises(ConfigError, match="--batch-sizes"):
            parse_sizes(bad, "--batch-sizes")


@pytest.mark.parametrize("args, message", [
    (["--backends", "torch,nope"], "unknown backend 'nope'"),
    (["--backends", "torch,torch"], "each may appear once"),
    (["--batch-sizes", "1,0"], "--batch-sizes"),
    (["--history-lengths", "ten"], "--history-lengths"),
    (["--generate", "50"], "generate=50 must be in 1..8"),
    (["--repeat", "0"], "repeat must be >= 1"),
    (["--plot", "out.xyz"], "unsupported image type '.xyz'"),
])
def test_bad_input_is_one_error_line(bundles, tmp_path, args, message):
    proc = genrec("bench", bundles["sasrec"], *args, "--json", tmp_path / "x.json")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_not_a_bundle(tmp_path):
    proc = genrec("bench", tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
