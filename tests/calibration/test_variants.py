"""One grammar, BACKEND[:VARIANT], in the registry, the onnxruntime backend, parity and bench."""

from __future__ import annotations

import json
import shutil

import pytest

from support import SLICE

from genrec.bundle import load_bundle
from genrec.cli import cli, invoke
from genrec.errors import BundleError, ConfigError
from genrec.runtimes import get_backend
from genrec.runtimes.registry import resolve_variant, split_backend


def test_split_backend_grammar():
    assert split_backend("onnxruntime") == ("onnxruntime", None)
    assert split_backend("onnxruntime:int8-static") == ("onnxruntime", "int8-static")
    assert split_backend(" ascend:fp16 ") == ("ascend", "fp16")
    for bad in ("onnxruntime:", ":fp16", "a:b:c", ""):
        with pytest.raises(ConfigError, match="expected BACKEND\\[:VARIANT\\]"):
            split_backend(bad)


def test_variants_resolve_and_int8_is_an_alias_only_when_unique(quantized, tmp_path):
    path, _ = quantized
    b = load_bundle(path, verify=False)
    assert resolve_variant(b, None) is None and resolve_variant(b, "fp32") is None
    assert resolve_variant(b, "int8-static") == "int8-static"
    with pytest.raises(BundleError, match="'int8' is ambiguous: it has int8-dynamic and int8-static"):
        resolve_variant(b, "int8")
    with pytest.raises(BundleError, match=r"no 'int4' variant \(available: fp32, fp16, int8-dynamic, int8-static\)"):
        resolve_variant(b, "int4")
    # one int8 variant: the alias names it, in the backend too
    one = tmp_path / "one"
    shutil.copytree(path, one)
    m = json.loads((one / "manifest.json").read_text())
    del m["variants"]["int8-dynamic"]
    shutil.rmtree(one / "variants" / "int8-dynamic")
    from genrec.bundle import write_manifest

    write_manifest(one, m)
    with get_backend("onnxruntime", one, precision="int8", threads=1) as be:
        assert be.precision == "int8-static"


def test_parity_takes_a_variant_candidate(quantized, tmp_path, capsys):
    path, _ = quantized
    report = tmp_path / "parity.json"
    code = invoke(cli, ["parity", str(path), "--reference", "onnxruntime", "--candidate", "onnxruntime:int8-static",
                        "--data", str(SLICE), "--users", "40", "--generate", "2", "--report", str(report)])
    out = capsys.readouterr()
    r = json.loads(report.read_text())
    assert r["candidate"] == "onnxruntime:int8-static" and r["thresholds"]["overlap_min"] == 0.8  # int8 limits
    assert code == (0 if r["passed"] else 1), out.err
    code = invoke(cli, ["parity", str(path), "--candidate", "onnxruntime:int4", "--data", str(SLICE)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "no 'int4' variant (available: fp32, fp16, int8-dynamic, int8-static)" in err[-1]


def test_bench_compares_variants_in_one_run(quantized):
    from genrec.runtimes.bench import BenchSpec, run_bench, variant_summary

    path, infos = quantized
    specs = ("onnxruntime", "onnxruntime:int8-static")
    r = run_bench(path, BenchSpec(backends=specs, batch_sizes=(1, 4), history_lengths=(10,), repeat=1, warmup=0,
                                  threads=1))
    assert [row["backend"] for row in r["results"]] == [s for s in specs for _ in (1, 4)]
    assert all("recommend_rps" in row["speedup_vs_first"] for row in r["results"])  # the schema kept
    info = r["backends"]["onnxruntime:int8-static"]
    assert info["precision"] == "int8-static" and info["model_bytes"] > 0
    want = infos["int8-static"]["deltas"]["metrics"]["NDCG@10"]["delta"]
    assert info["accuracy_vs_fp32"]["NDCG@10_delta"] == pytest.approx(want)
    rows = {row["backend"]: row for row in variant_summary(r)}
    assert rows["onnxruntime"]["throughput_ratio_b4"] == pytest.approx(1.0)
    assert rows["onnxruntime:int8-static"]["latency_ratio_b1"] > 0
    with pytest.raises(BundleError, match="'int8' is ambiguous"):  # before anything is measured
        run_bench(path, BenchSpec(backends=("onnxruntime", "onnxruntime:int8"), batch_sizes=(1,),
                                  history_lengths=(5,), repeat=1, warmup=0))
