"""The ATC double follows ASCEND.md: flags, gear rules, E-code templates, the parser's exact
key lookup, success/failure text, exit 255, output names, and the OM container.

If the double drifted from the documented behaviour, the converter tests that rely on it would
prove nothing; these pin it down on tiny hand-made graphs (fast) and one real one.
"""

from __future__ import annotations

import io
import json
import platform
import re
import zipfile
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from ascend_support import atc, double_env

FAILED = "ATC run failed, Please check the detail log, Try 'atc --help' for more information"
ECODE = re.compile(r"^(E[0-9A-Z]{5}): \[PID: \d+\] \S+ (.*)$", re.M)


def tiny(path: Path, op: str = "Relu", opset: int = 18, domain: str = "") -> Path:
    """x[batch, 4] (+ lengths[batch]) -> y: one node of ``op``."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    n = helper.make_tensor_value_info("lengths", TensorProto.INT32, ["batch"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    node = helper.make_node(op, ["x"], ["y"], name=f"{op.lower()}_0", domain=domain)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(helper.make_graph([node], "g", [x, n], [y]), opset_imports=imports)
    model.ir_version = 10
    onnx.save(model, path)
    return path


def base(model: Path, out: Path, *extra: str) -> list[str]:
    return ["--framework=5", f"--model={model}", f"--output={out}", "--soc_version=Ascend310P3",
            "--input_format=ND", "--input_shape=x:-1,4;lengths:-1", "--dynamic_batch_size=1,4,8", "--log=error",
            *extra]


def failed_with(p, code: str) -> str:
    """The run failed the documented way; returns the message of its first E-code line."""
    assert p.returncode == 255, p.stdout + p.stderr
    assert FAILED in p.stdout
    codes = ECODE.findall(p.stdout)
    assert codes and codes[0][0] == code, p.stdout
    return codes[0][1]


def test_success_text_exit_0_and_os_arch_name(tmp_path):
    p = atc(*base(tiny(tmp_path / "m.onnx"), tmp_path / "out" / "m"))
    assert p.returncode == 0, p.stdout
    lines = p.stdout.splitlines()
    assert lines[0] == "ATC start working now, please wait for a moment."
    assert "ATC run success, welcome to the next use." in lines
    assert [f.name for f in (tmp_path / "out").iterdir()] == [f"m_linux_{platform.machine()}.om"]


def test_plain_name_when_asked(tmp_path):
    p = atc(*base(tiny(tmp_path / "m.onnx"), tmp_path / "m"), env=double_env(GENREC_ATC_DOUBLE_PLAIN_NAME="1"))
    assert p.returncode == 0 and (tmp_path / "m.om").is_file()


def test_om_container_records_flags_and_embeds_the_onnx(tmp_path):
    model = tiny(tmp_path / "m.onnx")
    p = atc(*base(model, tmp_path / "m"), env=double_env(GENREC_ATC_DOUBLE_PLAIN_NAME="1"))
    assert p.returncode == 0
    data = (tmp_path / "m.om").read_bytes()
    assert data.startswith(b"GENREC-ATC-DOUBLE-OM\n")
    with zipfile.ZipFile(io.BytesIO(data[len(b"GENREC-ATC-DOUBLE-OM\n"):])) as zf:
        meta = json.loads(zf.read("meta.json"))
        assert zf.read("model.onnx") == model.read_bytes()
    assert meta["om_producer"] == "double" and meta["soc_version"] == "Ascend310P3"
    assert meta["flags"]["dynamic_batch_size"] == "1,4,8" and meta["gears"] == [[1], [4], [8]]
    assert meta["precision_mode"] == "force_fp16"  # ATC's default when no precision flag is given
    assert [i["name"] for i in meta["inputs"]] == ["x", "lengths", "ascend_mbatch_shape_data"]
    assert meta["inputs"][0]["dims"] == [-1, 4]
    assert meta["outputs"] == [{"name": "relu_0:0:y", "dtype": "DT_FLOAT", "dims": [-1, 4]}]


def test_mode_1_writes_ge_json_with_gears_and_engines(tmp_path):
    model = tiny(tmp_path / "m.onnx")
    assert atc(*base(model, tmp_path / "m"), env=double_env(GENREC_ATC_DOUBLE_PLAIN_NAME="1")).returncode == 0
    p = atc("--mode=1", f"--om={tmp_path / 'm.om'}", f"--json={tmp_path / 'm.json'}")
    assert p.returncode == 0 and "ATC run success" in p.stdout
    doc = json.loads((tmp_path / "m.json").read_text())
    ops = doc["graph"][0]["op"]
    assert [o["name"] for o in ops if o["type"] == "Data"] == ["x", "lengths", "ascend_mbatch_shape_data"]
    net = next(o for o in ops if o["type"] == "NetOutput")
    assert {"key": "all_gears_info", "value": {"s": "1;4;8"}} in net["attr"]
    relu = next(o for o in ops if o["type"] == "Relu")
    assert relu["attr"][0] == {"key": "_ge_attr_op_kernel_lib_name", "value": {"s": "AIcoreEngine"}}
    # a file that is not an OM this atc wrote is refused, as a real loader refuses ours
    bad = atc("--mode=1", f"--om={model}", f"--json={tmp_path / 'x.json'}")
    assert "--om is invalid" in failed_with(bad, "E10001")


def test_help_exits_0_and_unknown_flag_is_a_gflags_error(tmp_path):
    assert atc("--help").returncode == 0
    p = atc("--framework=5", "--no_such_flag=1")
    assert p.returncode == 255 and "ERROR: unknown command line flag 'no_such_flag'" in p.stderr


def test_gflags_space_separated_values(tmp_path):
    model = tiny(tmp_path / "m.onnx")
    args = ["--framework", "5", "--model", str(model), "--output", str(tmp_path / "m"), "--soc_version",
            "Ascend910B4", "--input_format", "ND", "--input_shape", "x:-1,4;lengths:-1", "--dynamic_batch_size",
            "2,4"]
    assert atc(*args).returncode == 0


@pytest.mark.parametrize("flag,code,needle", [
    (None, "E10004", "Value for --soc_version is empty."),
    ("--soc_version=Ascend999", "E10001",
     "Value Ascend999 for parameter --soc_version is invalid. Reason: The current value is not within the valid range."),
    ("--input_format=NHWC", "E10001", "Value NHWC for parameter --input_format is invalid."),
    ("--log=loud", "E10010", "Value loud for parameter --log is invalid."),
    ("--framework=3", "E10001", "Value 3 for parameter --framework is invalid."),
])
def test_flag_values_fail_with_the_documented_templates(tmp_path, flag, code, needle):
    args = base(tiny(tmp_path / "m.onnx"), tmp_path / "m")
    name = flag.split("=")[0] if flag else "--soc_version"
    args = [a for a in args if not a.startswith(name + "=")] + ([flag] if flag else [])
    p = atc(*args)
    assert needle in failed_with(p, code)


@pytest.mark.parametrize("shape,gears,code,needle", [
    ("x:-1,4;lengths:-1", "4", "E10035", "has 1 profiles, which is less than the minimum 2."),
    ("x:-1,4;lengths:-1", ",".join(map(str, range(1, 102))), "E10036",
     "has 101 profiles, which is greater than the maximum 100."),
    ("x:-1,4;lengths:-1", "1,4,4", "E10039", "argument has duplicate profiles."),
    ("x:-1,-1;lengths:-1", "1,4", "E10018",
     "Value -1 for shape x:-1,-1 is invalid. When --dynamic_batch_size is included, only batch size N can be -1"),
    ("x:2,4;lengths:2", "1,4", "E10031", "none of the nodes specified in --input_shape has a batch size equaling -1."),
    ("x:1~8,4;lengths:-1", "1,4", "E10040", "must have -1 axes and cannot have '~'."),
    ("x-1,4", "1,4", "E10002", "The value must be formatted as"),
    ("x:-1,4;nope:-1", "1,4", "E10016", "Op name nope specified in --input_shape is not found in the model."),
])
def test_gear_and_shape_rules(tmp_path, shape, gears, code, needle):
    args = [a for a in base(tiny(tmp_path / "m.onnx"), tmp_path / "m")
            if not a.startswith(("--input_shape", "--dynamic_batch_size"))]
    p = atc(*args, f"--input_shape={shape}", f"--dynamic_batch_size={gears}")
    assert needle in failed_with(p, code)
    assert not list(tmp_path.glob("m*.om"))


def test_mutually_exclusive_flags(tmp_path):
    p = atc(*base(tiny(tmp_path / "m.onnx"), tmp_path / "m", "--dynamic_dims=1;4"))
    assert "mutually exclusive" in failed_with(p, "E10009")
    p = atc(*base(tiny(tmp_path / "m.onnx"), tmp_path / "m", "--precision_mode=force_fp16",
                  "--precision_mode_v2=origin"))
    assert "cannot be used together" in failed_with(p, "E10001")


def test_mixlist_only_with_a_mixed_mode(tmp_path):
    mix = tmp_path / "mix.json"
    mix.write_text(json.dumps({"black-list": {"to-remove": [], "to-add": ["TopK"]}}))
    p = atc(*base(tiny(tmp_path / "m.onnx"), tmp_path / "m", "--precision_mode=force_fp16", f"--modify_mixlist={mix}"))
    assert "only valid with a mixed precision mode" in failed_with(p, "E10001")
    ok = atc(*base(tiny(tmp_path / "m.onnx"), tmp_path / "m", "--precision_mode=allow_mix_precision",
                   f"--modify_mixlist={mix}"))
    assert ok.returncode == 0


@pytest.mark.parametrize("op,opset,domain,key", [
    ("Gelu", 20, "", "ai.onnx::20::Gelu"),  # opset 20 is past ATC's registrations
    ("Relu", 19, "", "ai.onnx::19::Relu"),  # registered 8..18 only: exact match, no fallback
    ("Loop", 18, "", "ai.onnx::18::Loop"),  # no parser plugin at any version
    ("FusedGemm", 18, "com.microsoft", "com.microsoft::1::FusedGemm"),
])
def test_parser_looks_up_domain_opset_op_exactly(tmp_path, op, opset, domain, key):
    p = atc(*base(tiny(tmp_path / "m.onnx", op=op, opset=opset, domain=domain), tmp_path / "m"))
    assert failed_with(p, "E16002") == f"No ONNX parser is registered for optype {key}."


def test_parser_accepts_a_registered_key(tmp_path):
    # LayerNormalization is registered at 17..18 only; Relu at 18 is fine
    assert atc(*base(tiny(tmp_path / "m.onnx", op="Relu", opset=17), tmp_path / "m")).returncode == 0


def test_gear_models_need_fixed_intermediate_shapes(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    n = helper.make_tensor_value_info("lengths", TensorProto.INT32, ["batch"])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [2, "nz"])
    graph = helper.make_graph([helper.make_node("NonZero", ["x"], ["y"], name="nonzero_0")], "g", [x, n], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "m.onnx")
    p = atc(*base(tmp_path / "m.onnx", tmp_path / "m"))
    assert failed_with(p, "E19999") == "Unknown error occurred. Please check the log."
    assert "nonzero_0 (NonZero) has a data-dependent output shape" in p.stdout


def test_mode_6_displays_an_om(tmp_path):
    assert atc(*base(tiny(tmp_path / "m.onnx"), tmp_path / "m"), env=double_env(GENREC_ATC_DOUBLE_PLAIN_NAME="1")).returncode == 0
    p = atc("--mode=6", f"--om={tmp_path / 'm.om'}")
    assert p.returncode == 0 and "soc_version: Ascend310P3" in p.stdout and "gears: [[1], [4], [8]]" in p.stdout


def test_zero_sized_tensors_and_unknown_out_nodes_are_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 0])
    n = helper.make_tensor_value_info("lengths", TensorProto.INT32, ["batch"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 0])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu_0")], "g", [x, n], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "z.onnx")
    p = atc(*[a for a in base(tmp_path / "z.onnx", tmp_path / "z") if not a.startswith("--input_shape")],
            "--input_shape=x:-1,0;lengths:-1")
    assert failed_with(p, "E19999") and "zero-sized dim" in p.stdout
    p = atc(*base(tiny(tmp_path / "m.onnx"), tmp_path / "m", "--out_nodes=nowhere:0"))
    assert failed_with(p, "E10016").startswith("Op name nowhere specified in --out_nodes is not found in the model.")
