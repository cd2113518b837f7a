"""Converting on another host (--emit-script, then --import), export-and-convert in one go,
``genrec inspect --target ascend`` op engines, and ``genrec doctor`` on this (CANN-less) host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ascend_support import DOUBLE_ROOT, double_env, genrec, no_atc_env, siblings, snapshot

from genrec.bundle import load_bundle
from genrec.errors import BundleError
from genrec.exporter.atc import build_command, command_line
from genrec.exporter.om_import import emit_script, import_build


def run_script(script: Path, bundle: Path) -> subprocess.CompletedProcess:
    """The emitted script on a "CANN host": bash with the double as ``atc``."""
    return subprocess.run(["bash", str(script), str(bundle)], capture_output=True, text=True, env=double_env(),
                          timeout=300)


def test_emit_script_then_import(bundle_copy, tmp_path):
    path = bundle_copy("sasrec")
    before = snapshot(path)
    script = emit_script(path, "Ascend910B4", "mixed", tmp_path / "convert.sh")
    assert snapshot(path) == before  # emitting touches nothing
    m = load_bundle(path).manifest
    text = script.read_text()
    for g in m.graphs:  # the same command lines as a local conversion; step reads its ATC variant
        model = "om/Ascend910B4/mixed/step.atc.onnx" if g == "step" else None
        assert command_line(build_command(m, g, "Ascend910B4", "mixed", model=model)) in text
    # the "CANN host" has its own copy of the bundle; the script converts there
    remote = tmp_path / "remote" / "bundle"
    shutil.copytree(path, remote)
    p = run_script(script, remote)
    assert p.returncode == 0, p.stdout + p.stderr
    out = remote / "om/Ascend910B4/mixed"
    assert (out / "SHA256SUMS").is_file() and (out / "cann_version.txt").read_text().strip() == "0.0.0.double"
    assert sorted(f.name for f in out.glob("*.json") if f.name != "mixlist.json") == [
        f"{g}_linux_x86_64.json" for g in ("prefill", "rank", "step")]
    # attach the result to the original bundle
    b = import_build(path, "Ascend910B4", "mixed", out)
    (tb,) = b.manifest.targets["ascend"]
    assert tb.info["source"] == "import" and tb.info["om_sha256_checked"] and tb.tool_version == "0.0.0.double"
    assert tb.commands["rank"] == command_line(build_command(m, "rank", "Ascend910B4", "mixed"))
    assert "--model=om/Ascend910B4/mixed/step.atc.onnx " in tb.commands["step"]
    assert (path / "om/Ascend910B4/mixed/step.atc.onnx").read_bytes() == (out / "step.atc.onnx").read_bytes()
    for g, rel in tb.graphs.items():
        assert (path / rel).read_bytes() == (out / Path(rel).name).read_bytes()


def test_import_checks_names_sums_and_sidecars(bundle_copy, tmp_path):
    path = bundle_copy("hstu")
    script = emit_script(path, "Ascend310P3", "fp32", tmp_path / "convert.sh")
    remote = tmp_path / "remote" / "bundle"
    shutil.copytree(path, remote)
    assert run_script(script, remote).returncode == 0
    out = remote / "om/Ascend310P3/fp32"
    before = snapshot(path)

    def refused(match: str, soc: str = "Ascend310P3", src: Path = out) -> None:
        with pytest.raises(BundleError, match=match):
            import_build(path, soc, "fp32", src)
        assert snapshot(path) == before and siblings(path) == []

    refused("built for Ascend310P3, not Ascend910B4", soc="Ascend910B4")
    # a sidecar whose gears are not the manifest's
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    side = bad / "step_linux_x86_64.json"
    doc = json.loads(side.read_text())
    net = next(o for o in doc["graph"][0]["op"] if o["type"] == "NetOutput")
    net["attr"] = [{"key": "all_gears_info", "value": {"s": "1;4;16"}}]
    side.write_text(json.dumps(doc))
    (bad / "SHA256SUMS").unlink()
    refused(r"step_linux_x86_64.om: OM gears \[1, 4, 16\] differ from the manifest's \[1, 4, 8\]", src=bad)
    # an OM damaged in transfer
    shutil.rmtree(bad)
    shutil.copytree(out, bad)
    om = bad / "rank_linux_x86_64.om"
    om.write_bytes(om.read_bytes()[:-1])
    refused("rank_linux_x86_64.om sha256 differs from SHA256SUMS", src=bad)
    # a graph without an OM
    om.unlink()
    (bad / "SHA256SUMS").unlink()
    refused(r"expected one rank.om \(or rank_<os>_<arch>.om\), found none", src=bad)


def test_emitted_script_stops_on_an_atc_failure(bundle_copy, tmp_path):
    path = bundle_copy("hstu")
    script = emit_script(path, "Ascend310P3", "fp32", tmp_path / "convert.sh")
    env = double_env(GENREC_ATC_DOUBLE_FAULT="rank:crash")
    p = subprocess.run(["bash", str(script), str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 1 and "error: ATC failed on rank (exit 134)" in p.stderr


def test_export_and_convert_in_one_go(checkpoints, tmp_path):
    out = tmp_path / "bundle"
    p = genrec("export", str(checkpoints["sasrec"]), "-o", str(out), "--target", "ascend", "--soc-version",
               "Ascend310P3", "--batch-gears", "1,4", "--topk", "10", "--max-exclude", "8", "--rank-candidates", "4",
               "--steps", "2")
    assert p.returncode == 0, p.stderr
    b = load_bundle(out)
    (tb,) = b.manifest.targets["ascend"]
    assert b.manifest.target == "ascend" and tb.gears == (1, 4) and set(tb.graphs) == {"prefill", "step", "rank"}
    # a conversion failure leaves no bundle at all (export and conversion succeed together)
    bad = tmp_path / "bad"
    p = genrec("export", str(checkpoints["sasrec"]), "-o", str(bad), "--target", "ascend", "--soc-version",
               "Ascend310P3", "--batch-gears", "1,4", "--topk", "10", "--max-exclude", "8", "--rank-candidates", "4",
               "--steps", "2", env=double_env(GENREC_ATC_DOUBLE_FAULT="step:no-om"))
    assert p.returncode == 1 and "wrote no om/Ascend310P3/fp32/step*.om" in p.stderr.splitlines()[-1]
    assert sorted(os.listdir(tmp_path)) == ["bundle"]
    p = genrec("export", str(checkpoints["sasrec"]), "-o", str(bad), "--soc-version", "Ascend310P3")
    assert p.returncode == 2 and "--soc-version needs --target ascend" in p.stderr


def test_inspect_lists_ai_cpu_ops(bundle_copy, tmp_path):
    path = bundle_copy("llama")
    p = genrec("inspect", str(path), "--target", "ascend", "--soc-version", "Ascend310P3")
    assert p.returncode == 0, p.stderr
    table = p.stdout[p.stdout.index("ops off AI Core"):]
    step = [ln for ln in table.splitlines() if "│ step" in ln and "ScatterElements" in ln]
    assert step and "AI CPU only" in step[0], table
    assert "(1 in the ATC variant)" in step[0]  # only the exclusion scatter is left for ATC
    p = genrec("inspect", str(path), "--target", "ascend", "--soc-version", "Ascend950")
    table = p.stdout[p.stdout.index("ops off AI Core"):]
    assert p.returncode == 0 and "all ops on AI Core" in table and "ScatterElements" not in table


def test_doctor_on_this_host_says_there_is_no_cann():
    p = genrec("doctor", "--target", "ascend", env=no_atc_env())
    assert p.returncode == 1 and p.stderr == ""
    assert "no CANN toolkit" in p.stdout and "atc is not on PATH" in p.stdout and "not importable" in p.stdout
    assert "no /dev/davinci* device" in p.stdout
    assert "serve on an Ascend NPU (acl + a device): not possible here" in p.stdout
    p = genrec("doctor", "--json", env=no_atc_env())
    doc = json.loads(p.stdout)
    assert p.returncode == 0 and doc["ready"] == {"onnxruntime": True, "atc": False, "ascend": False}


def test_doctor_finds_a_sourced_toolkit_with_atc():
    """A host where set_env.sh was sourced (here: the double's tree stands in for a CANN root)."""
    env = double_env(ASCEND_TOOLKIT_HOME=str(DOUBLE_ROOT), ASCEND_OPP_PATH=str(DOUBLE_ROOT / "data"),
                     LD_LIBRARY_PATH=str(DOUBLE_ROOT / "lib64"))
    p = genrec("doctor", "--target", "atc", "--json", env=env)
    doc = json.loads(p.stdout)
    assert p.returncode == 0 and doc["ready"]["atc"] is True, p.stdout
    atc_row = next(c for c in doc["checks"] if c["name"] == "atc")
    assert "`atc --help` exit 0" in atc_row["detail"] and "CANN 0.0.0.double" in atc_row["detail"]
