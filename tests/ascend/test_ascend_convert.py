"""``genrec convert`` through the ATC double: every backbone converts and verifies; every
documented failure is one clear error and leaves the bundle byte for byte as it was."""

from __future__ import annotations

import dataclasses
import io
import json
import shlex
import signal
import zipfile
from pathlib import Path

import onnx
import pytest

from ascend_support import DOUBLE_BIN, double_env, genrec, no_atc_env, siblings, snapshot
from support import ARCHS

from genrec.bundle import load_bundle, write_manifest
from genrec.errors import BundleError, ExportError, MissingBackend
from genrec.manifest import Manifest
from genrec.exporter.atc import AtcError, build_command, command_line
from genrec.exporter.convert import convert_bundle, verify_target_builds

MAGIC = b"GENREC-ATC-DOUBLE-OM\n"


@pytest.fixture
def on_path(monkeypatch):
    """In-process conversions find the double as ``atc`` (and python3 with onnx for its shebang)."""
    monkeypatch.setenv("PATH", double_env()["PATH"])
    for var in ("GENREC_ATC_DOUBLE_FAULT", "GENREC_ATC_DOUBLE_PLAIN_NAME"):
        monkeypatch.delenv(var, raising=False)


def om_meta(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    with zipfile.ZipFile(io.BytesIO(data[len(MAGIC):])) as zf:
        return json.loads(zf.read("meta.json")), zf.read("model.onnx")


def one_error_line(p) -> str:
    """The failure is one ``error:`` line, the last on stderr (above it: ATC's progress), no traceback."""
    lines = p.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert errors == lines[-1:], p.stderr
    assert "Traceback" not in p.stderr
    return errors[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_backbone_converts_and_verifies(arch, bundle_copy, on_path, tmp_path):
    path = bundle_copy(arch)
    before = load_bundle(path).manifest
    b = convert_bundle(path, "Ascend310P3", log_dir=tmp_path / "logs")
    verify_target_builds(b)
    m = b.manifest
    (tb,) = m.targets["ascend"]
    assert (tb.soc, tb.precision, tb.gears) == ("Ascend310P3", "fp32", m.dims.batch_gears)
    assert tb.tool_version == "0.0.0.double" and tb.info["om_producer"] == "double"
    assert set(tb.graphs) == set(m.graphs) == {"prefill", "step", "rank"}
    for graph, rel in tb.graphs.items():
        assert rel == f"om/Ascend310P3/fp32/{graph}_linux_x86_64.om" and rel in m.files
        # the command recorded is the one built from the manifest, and the one ATC received
        variant = tb.info["atc_graphs"].get(graph)
        model_rel = variant["file"] if variant else m.graphs[graph].file
        argv = build_command(m, graph, "Ascend310P3", "fp32", model=variant and variant["file"])
        assert tb.commands[graph] == command_line(argv)
        flags = dict(a[2:].split("=", 1) for a in shlex.split(tb.commands[graph])[1:])
        spec = m.graphs[graph]
        assert flags["input_shape"] == ";".join(f"{s.name}:" + ",".join(["-1", *map(str, s.shape[1:])])
                                                for s in spec.inputs)
        assert flags["dynamic_batch_size"] == "1,4,8" and flags["log"] == "error"
        assert flags["precision_mode"] == "must_keep_origin_dtype" and flags["input_format"] == "ND"
        assert flags["output"] == f"om/Ascend310P3/fp32/{graph}" and flags["model"] == model_rel
        meta, embedded = om_meta(path / rel)
        assert meta["flags"] == flags and embedded == (path / model_rel).read_bytes()
        assert {o["name"].rsplit(":", 1)[1] for o in meta["outputs"]} == {s.name for s in spec.outputs}
        assert tb.info["built_from"][graph] == m.files[spec.file]
        assert (path / tb.info["sidecars"][graph]).is_file() and (path / tb.info["logs"][graph]).is_file()
    # the step's cache writes reach ATC as Equal + Where (AI Core), checked bitwise in onnxruntime;
    # prefill and rank write no cache with ScatterElements, so ATC reads them as exported
    assert set(tb.info["atc_graphs"]) == {"step"}
    step = tb.info["atc_graphs"]["step"]
    assert step["file"] == "om/Ascend310P3/fp32/step.atc.onnx" and step["parity"]["batches"] == [1, 4, 8]
    ops = [n.op_type for n in onnx.load(str(path / "step.onnx")).graph.node]
    ops_atc = [n.op_type for n in onnx.load(str(path / step["file"])).graph.node]
    assert len(step["nodes"]) == len(m.cache) and ops.count("ScatterElements") - ops_atc.count("ScatterElements") \
        == len(m.cache) == ops_atc.count("Where") - ops.count("Where")
    # the manifest round-trips exactly with its new build
    assert Manifest.from_dict(json.loads((path / "manifest.json").read_text())) == m
    assert Manifest.from_dict(m.to_dict()).to_dict() == m.to_dict()
    # everything else is what it was: same graphs, same checkpoint, same dims
    assert {k: v for k, v in m.files.items() if not k.startswith("om/")} == before.files
    assert m.dims == before.dims and m.graphs == before.graphs


def test_builds_sit_side_by_side_and_verification_covers_them(bundle_copy, on_path, tmp_path):
    path = bundle_copy("gpt")
    convert_bundle(path, "Ascend310P3", "fp32", log_dir=tmp_path / "l1")
    b = convert_bundle(path, "Ascend910B4", "fp16", jobs=3, log_dir=tmp_path / "l2")
    builds = {(t.soc, t.precision): t for t in b.manifest.targets["ascend"]}
    assert set(builds) == {("Ascend310P3", "fp32"), ("Ascend910B4", "fp16")}
    fp16 = builds[("Ascend910B4", "fp16")]
    step = shlex.split(fp16.commands["step"])
    assert "--precision_mode=force_fp16" in step and "--keep_dtype=om/Ascend910B4/fp16/step.keep_dtype.cfg" in step
    keep = (path / "om/Ascend910B4/fp16/step.keep_dtype.cfg").read_text().split()
    model = onnx.load(str(path / "step.onnx"), load_external_data=False)
    kinds = {n.name: n.op_type for n in model.graph.node}
    assert {"TopK", "LayerNormalization"} <= {kinds[k] for k in keep}
    assert any(kinds[k] == "MatMul" for k in keep)  # the scoring MatMul against the item table
    assert not all(kinds[k] != "MatMul" or k in keep for k in kinds)  # ...but not every MatMul
    # rebuilding needs --force and replaces only that build
    with pytest.raises(ExportError, match="already has an Ascend build for Ascend310P3 fp32"):
        convert_bundle(path, "Ascend310P3", "fp32")
    other = snapshot(path / "om/Ascend910B4")
    b = convert_bundle(path, "Ascend310P3", "fp32", force=True, log_dir=tmp_path / "l4")
    assert snapshot(path / "om/Ascend910B4") == other and len(b.manifest.targets["ascend"]) == 2
    # an OM altered after the fact is refused by name
    om = path / builds[("Ascend910B4", "fp16")].graphs["prefill"]
    om.write_bytes(om.read_bytes() + b"x")
    with pytest.raises(BundleError, match="prefill_linux_x86_64.om' sha256 mismatch"):
        load_bundle(path)


def test_cli_bad_soc_is_one_error_with_the_e_code_and_log(bundle_copy, tmp_path):
    path = bundle_copy("hstu")
    before = snapshot(path)
    p = genrec("convert", str(path), "--soc-version", "Ascend999", "--log-dir", str(tmp_path / "logs"))
    assert p.returncode == 1
    line = one_error_line(p)
    assert ("ATC failed on prefill (exit 255): E10001: Value Ascend999 for parameter --soc_version is invalid. "
            "Reason: The current value is not within the valid range.") in line
    log = tmp_path / "logs" / "prefill.atc.log"
    assert f"log: {log}" in line and "E10001" in log.read_text()
    assert snapshot(path) == before and siblings(path) == []


def test_cli_interrupted_conversion_leaves_the_bundle_as_it_was(bundle_copy, tmp_path):
    path = bundle_copy("llama")
    before = snapshot(path)
    # the double SIGTERMs genrec while it converts step (after prefill and rank succeeded)
    p = genrec("convert", str(path), "--soc-version", "Ascend910B4", "--log-dir", str(tmp_path / "logs"),
               env=double_env(GENREC_ATC_DOUBLE_FAULT="step:kill-parent"))
    assert p.returncode == 128 + signal.SIGTERM
    assert one_error_line(p) == "error: interrupted by SIGTERM"
    assert snapshot(path) == before and siblings(path) == []


def test_cli_without_atc_says_what_to_do(bundle_copy):
    path = bundle_copy("sasrec")
    before = snapshot(path)
    p = genrec("convert", str(path), "--soc-version", "Ascend310P3", env=no_atc_env())
    assert p.returncode == 1
    line = one_error_line(p)
    assert "atc is not on PATH" in line and "set_env.sh" in line and "--emit-script" in line
    assert snapshot(path) == before


@pytest.mark.parametrize("fault,match", [
    ("step:crash", r"ATC failed on step \(exit 134\): no E-code in its output"),
    ("rank:no-om", r"ATC failed on rank: ATC reported success but wrote no om/Ascend310P3/fp32/rank\*\.om"),
])
def test_nonzero_exit_and_missing_om_leave_the_bundle_unchanged(fault, match, bundle_copy, on_path, monkeypatch,
                                                                tmp_path):
    path = bundle_copy("hstu")
    before = snapshot(path)
    monkeypatch.setenv("GENREC_ATC_DOUBLE_FAULT", fault)
    with pytest.raises(AtcError, match=match) as e:
        convert_bundle(path, "Ascend310P3", log_dir=tmp_path / "logs")
    assert "the bundle is unchanged" in str(e.value) and str(tmp_path / "logs") in str(e.value)
    assert snapshot(path) == before and siblings(path) == []


def test_gear_errors_come_from_atc_and_change_nothing(bundle_copy, on_path, tmp_path):
    path = bundle_copy("hstu")
    m = load_bundle(path).manifest
    write_manifest(path, m.replace(dims=dataclasses.replace(m.dims, batch_gears=tuple(range(1, 102)))))
    before = snapshot(path)
    with pytest.raises(AtcError, match="E10036: --dynamic_batch_size, --dynamic_image_size, or --dynamic_dims has "
                                       "101 profiles, which is greater than the maximum 100."):
        convert_bundle(path, "Ascend310P3", log_dir=tmp_path / "logs")
    assert snapshot(path) == before and siblings(path) == []


def test_cache_write_scatter_converts_the_graphs_as_exported(bundle_copy, on_path, tmp_path):
    path = bundle_copy("sasrec")
    b = convert_bundle(path, "Ascend910B4", cache_write="scatter", log_dir=tmp_path / "logs")
    tb = b.manifest.targets["ascend"][0]
    assert tb.info["atc_graphs"] == {} and "--model=step.onnx " in tb.commands["step"]
    assert not list(path.glob("om/*/*/*.atc.onnx"))


def test_an_atc_variant_that_differs_is_refused(bundle_copy, on_path, monkeypatch, tmp_path):
    """The parity gate has teeth: a rewrite that swapped Where's branches is caught before ATC runs."""
    from genrec.exporter import atc_variant

    real = atc_variant.rewrite_cache_writes

    def broken(model):
        out, done = real(model)
        for n in out.graph.node:
            if n.op_type == "Where":
                n.input[1], n.input[2] = n.input[2], n.input[1]
        return out, done

    monkeypatch.setattr(atc_variant, "rewrite_cache_writes", broken)
    path = bundle_copy("gpt")
    before = snapshot(path)
    with pytest.raises(ExportError, match=r"step: the ATC variant \(cache writes as Where\) differs from step.onnx"):
        convert_bundle(path, "Ascend310P3", log_dir=tmp_path / "logs")
    assert snapshot(path) == before and siblings(path) == [] and not list((tmp_path / "logs").iterdir())


def test_one_gear_is_a_static_shape(bundle_copy, on_path, tmp_path):
    path = bundle_copy("sasrec")
    m = load_bundle(path).manifest
    write_manifest(path, m.replace(dims=dataclasses.replace(m.dims, batch_gears=(4,))))
    b = convert_bundle(path, "Ascend310P3", log_dir=tmp_path / "logs")
    cmd = b.manifest.targets["ascend"][0].commands["prefill"]
    assert "--dynamic_batch_size" not in cmd and "item_ids:4,20" in cmd and "-1" not in cmd


def test_an_op_the_parser_does_not_register_is_refused_before_atc(bundle_copy, on_path, tmp_path):
    path = bundle_copy("gpt")
    # ATC registers LayerNormalization at opsets 17-18 only (exact key match, no fallback)
    for g in ("prefill", "step", "rank"):
        model = onnx.load(str(path / f"{g}.onnx"))
        model.opset_import[0].version = 16
        onnx.save(model, str(path / f"{g}.onnx"))
    m = load_bundle(path, verify=False).manifest
    with pytest.raises(BundleError):
        load_bundle(path)  # the manifest still says 18: a bundle that disagrees with itself
    write_manifest(path, m.replace(opset=16))
    before = snapshot(path)
    with pytest.raises(ExportError, match=r"prefill.onnx fails the ATC lint .*ai\.onnx::16::LayerNormalization is not registered"):
        convert_bundle(path, "Ascend310P3", log_dir=tmp_path / "logs")
    assert snapshot(path) == before and not list((tmp_path / "logs").glob("*"))


def test_external_data_graphs_convert(bundle_copy, on_path, tmp_path):
    """Graphs past the external-data threshold (2 GB in production, lowered here) convert too:
    ATC reads <graph>.onnx.data next to the graph, and the OM embeds it."""
    from genrec.exporter.export import save_graph

    path = bundle_copy("llama")
    for g in ("prefill", "step", "rank"):
        save_graph(onnx.load(str(path / f"{g}.onnx")), path / f"{g}.onnx", external_threshold=0)
    write_manifest(path, load_bundle(path, verify=False).manifest)
    assert (path / "prefill.onnx.data").is_file()
    b = convert_bundle(path, "Ascend910B4", log_dir=tmp_path / "logs")
    rel = b.manifest.targets["ascend"][0].graphs["prefill"]
    data = (path / rel).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data[len(MAGIC):])) as zf:
        assert zf.read("prefill.onnx.data") == (path / "prefill.onnx.data").read_bytes()


def test_missing_atc_in_process_is_a_missing_backend(bundle_copy, monkeypatch):
    path = bundle_copy("hstu")
    monkeypatch.setenv("PATH", no_atc_env()["PATH"])
    with pytest.raises(MissingBackend, match="atc is not on PATH"):
        convert_bundle(path, "Ascend310P3")
    with pytest.raises(MissingBackend, match="not an executable file"):
        convert_bundle(path, "Ascend310P3", atc=DOUBLE_BIN / "nope")
    with pytest.raises(ExportError, match="expected an Ascend SoC name"):
        convert_bundle(path, "../etc")


def test_a_failure_with_parallel_jobs_stops_the_others_and_changes_nothing(bundle_copy, on_path, monkeypatch,
                                                                          tmp_path):
    path = bundle_copy("gpt")
    before = snapshot(path)
    monkeypatch.setenv("GENREC_ATC_DOUBLE_FAULT", "rank:crash")
    with pytest.raises(AtcError, match=r"ATC failed on rank \(exit 134\)"):
        convert_bundle(path, "Ascend910B4", jobs=3, log_dir=tmp_path / "logs")
    assert snapshot(path) == before and siblings(path) == []


def test_a_bundle_changed_meanwhile_is_not_replaced(bundle_copy, on_path, monkeypatch, tmp_path):
    """Two writers: another conversion finishes while this one runs. Replacing the bundle would
    drop that build, so this conversion refuses instead."""
    from genrec.exporter import convert as conv

    path = bundle_copy("sasrec")
    real = conv.verify_target_builds

    def other_writer_finishes(b):
        m = load_bundle(path).manifest
        write_manifest(path, m.replace(extra={**m.extra, "note": "written by another run"}))
        return real(b)

    monkeypatch.setattr(conv, "verify_target_builds", other_writer_finishes)
    with pytest.raises(ExportError, match="changed while this conversion ran"):
        convert_bundle(path, "Ascend310P3", log_dir=tmp_path / "logs")
    m = load_bundle(path).manifest
    assert m.extra["note"] == "written by another run" and not m.targets and siblings(path) == []
