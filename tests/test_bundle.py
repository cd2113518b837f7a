"""The typed manifest and the loader that cross-checks it, on real exported bundles.

Each hostile edit below is one a user, a bad script or an attacker can make to manifest.json
(sometimes with the edited file re-hashed); every one must be refused when the bundle is
opened, by name, before a runtime computes anything.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from genrec.bundle import Bundle, build_files_index, io_spec_from_onnx, load_bundle, sha256_file, write_manifest
from genrec.errors import BundleError
from genrec.manifest import Manifest, canonical_json
from support import make_checkpoint


@pytest.fixture
def hstu_dir(tmp_path, bundles):
    d = tmp_path / "bundle"
    shutil.copytree(bundles["hstu"], d)
    return d


@pytest.fixture
def sasrec_dir(tmp_path, bundles):
    d = tmp_path / "bundle"
    shutil.copytree(bundles["sasrec"], d)
    return d


def _edit(bundle_dir, fn):
    """Edit manifest.json in place without re-hashing anything (a hand-edited manifest)."""
    p = bundle_dir / "manifest.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d, indent=2))


def _set(**changes):
    return lambda d: d.update(changes)


# --------------------------------------------------------------------------------------------
# the typed manifest


def test_manifest_round_trips_and_digest_is_canonical(hstu_dir):
    raw = json.loads((hstu_dir / "manifest.json").read_text())
    m = Manifest.from_dict(raw)
    assert m.to_dict() == raw  # nothing lost, nothing invented
    assert Manifest.from_dict(m.to_dict()) == m
    assert m.digest == hashlib.sha256(canonical_json(raw).encode()).hexdigest()
    # key order and whitespace are not content: the same manifest written differently
    (hstu_dir / "manifest.json").write_text(json.dumps(dict(reversed(list(raw.items())))))
    assert load_bundle(hstu_dir).digest == m.digest


def test_dims_are_defined_once_and_match_the_graphs(hstu_dir):
    b = load_bundle(hstu_dir)
    d = b.dims
    assert (d.arch, d.max_history, d.capacity, d.topk, d.step_topk, d.max_exclude, d.rank_candidates) == \
        ("hstu", 20, 28, 40, 32, 28, 6)
    assert d.batch_gears == (1, 4, 8) and d.needs_timestamps and d.d_model == b.config["d_model"]
    io = io_spec_from_onnx(b.graph_path("step"))
    widths = {o["name"]: o["shape"] for o in io["outputs"]}
    assert widths["topk_ids"] == ["batch", d.step_topk] and widths["user_emb"] == ["batch", d.d_model]
    assert b.graph_spec("prefill").input("exclude_ids").shape == ("batch", d.max_exclude)
    assert [c.name for c in b.manifest.cache][:2] == ["key.0", "value.0"]
    assert b.checkpoint_path == hstu_dir / "model.pt" and b.precisions == ["fp32"]
    with pytest.raises(BundleError, match="fp16"):
        b.graph_path("prefill", "fp16")


def test_unknown_keys_survive_and_target_builds_are_typed(hstu_dir):
    om = hstu_dir / "om" / "Ascend310P3" / "fp32"
    om.mkdir(parents=True)
    (om / "prefill.om").write_bytes(b"om file")
    d = json.loads((hstu_dir / "manifest.json").read_text())
    d["future_field"] = {"kept": True}
    d["targets"] = {"ascend": [{"soc": "Ascend310P3", "precision": "fp32", "gears": [1, 4, 8],
                                "graphs": {"prefill": "om/Ascend310P3/fp32/prefill.om"},
                                "commands": {"prefill": "atc --framework=5 ..."}, "tool_version": "8.0"}]}
    write_manifest(hstu_dir, d)
    b = load_bundle(hstu_dir)
    assert b.manifest.extra["future_field"] == {"kept": True}
    build = b.manifest.targets["ascend"][0]
    assert build.graphs["prefill"] == "om/Ascend310P3/fp32/prefill.om" and build.gears == (1, 4, 8)
    assert "om/Ascend310P3/fp32/prefill.om" in b.manifest.files
    (om / "prefill.om").write_bytes(b"other om")  # target files are hashed like any other
    with pytest.raises(BundleError, match=r"prefill\.om.*sha256"):
        load_bundle(hstu_dir)


# --------------------------------------------------------------------------------------------
# hostile manifests: every edit the issue lists, each refused by name


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["id_map"].reverse(), r"id_map differs from model\.pt"),
    (lambda d: d["config"].update(temperature=0.5), r"config\.temperature=0\.5.*model\.pt has 0\.05"),
    (_set(max_history=10), r"manifest says T=10, prefill\.onnx item_ids has 20"),
    (_set(max_history=50), r"capacity: 28 must exceed max_history 50"),
    (_set(max_exclude=256), r"manifest says X=256, (prefill|step)\.onnx exclude_ids has 28"),
    (_set(rank_candidates=5), r"manifest says M=5, rank\.onnx candidates has 6"),
    (_set(capacity=40), r"manifest says C=40, its cache key\.0 has shape \[2, 28, 16\]"),
    (_set(topk=35), r"manifest says K'=35, prefill\.onnx topk_ids has 40"),
    (_set(topk=30), r"step_topk: expected an int in 1\.\.topk \(30\), got 32"),
    (_set(step_topk=16), r"manifest says step K=16, step\.onnx topk_ids has 32"),
    (_set(d_model=16), r"manifest says d=16"),
    (_set(opset=17), r"manifest says opset 17, prefill\.onnx imports ai\.onnx opset 18"),
    (lambda d: d.update(num_items=d["num_items"] - 1, id_map=d["id_map"][:-1]),
     r"num_items=8876.*item table of shape \[8878"),
    (lambda d: d.update(arch="llama", config={**d["config"], "arch": "llama"}), r"timestamps|arch"),
    (_set(batch_gears=[0, 4]), r"batch_gears"),
    (lambda d: d["graphs"]["step"].update(file="../step.onnx"), "inside the bundle"),
    (_set(schema_version=1), "schema_version"),
])
def test_edited_manifest_is_refused(hstu_dir, edit, match):
    _edit(hstu_dir, edit)
    with pytest.raises(BundleError, match=match):
        load_bundle(hstu_dir)


def test_arch_swapped_between_same_shaped_backbones_is_refused(sasrec_dir):
    """gpt and sasrec graphs have identical IO: only model.pt can tell the arch was edited."""
    _edit(sasrec_dir, lambda d: d.update(arch="gpt", config={**d["config"], "arch": "gpt"}))
    with pytest.raises(BundleError, match=r"arch=gpt, model\.pt is sasrec"):
        load_bundle(sasrec_dir)


def test_swapped_checkpoint_with_updated_hash_is_refused(hstu_dir, tmp_path):
    """Another valid checkpoint of the same shape and id map, its sha256 put in the manifest."""
    other = make_checkpoint("hstu", tmp_path / "other.pt", seed=1)
    shutil.copyfile(other, hstu_dir / "model.pt")
    _edit(hstu_dir, lambda d: d["files"].update({"model.pt": sha256_file(hstu_dir / "model.pt")}))
    with pytest.raises(BundleError, match=r"item embeddings differ from prefill\.onnx"):
        load_bundle(hstu_dir)


def test_symlinked_manifest_is_refused(hstu_dir, tmp_path):
    outside = tmp_path / "elsewhere.json"
    shutil.move(hstu_dir / "manifest.json", outside)
    (hstu_dir / "manifest.json").symlink_to(outside)
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(hstu_dir)


def test_expect_digest_pins_the_bundle(hstu_dir):
    digest = load_bundle(hstu_dir).digest
    assert load_bundle(hstu_dir, expect_digest=digest).digest == digest
    assert load_bundle(hstu_dir, expect_digest="sha256:" + digest.upper()).digest == digest
    _edit(hstu_dir, lambda d: d["checks"].append({"check": "note"}))  # harmless, but another bundle
    with pytest.raises(BundleError, match="not the expected"):
        load_bundle(hstu_dir, expect_digest=digest)
    with pytest.raises(BundleError, match="64 hex digits"):
        load_bundle(hstu_dir, expect_digest="abc")


# --------------------------------------------------------------------------------------------
# files


def test_tampered_graph_is_refused(hstu_dir):
    p = hstu_dir / "step.onnx"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"step\.onnx.*sha256.*tampered"):
        load_bundle(hstu_dir)
    load_bundle(hstu_dir, verify=False)  # schema-only load still works


def test_missing_and_unexpected_files_are_refused(hstu_dir):
    (hstu_dir / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"unexpected file 'extra\.bin'"):
        load_bundle(hstu_dir)
    (hstu_dir / "extra.bin").unlink()
    (hstu_dir / "rank.onnx").unlink()
    with pytest.raises(BundleError, match=r"rank\.onnx.*missing"):
        load_bundle(hstu_dir)


def test_missing_manifest_and_malformed_json(tmp_path, hstu_dir):
    with pytest.raises(BundleError, match="manifest.json missing"):
        load_bundle(tmp_path)
    (hstu_dir / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(hstu_dir)


def test_io_contract_edit_is_refused(hstu_dir):
    _edit(hstu_dir, lambda d: d["graphs"]["prefill"]["inputs"][0].update(dtype="int64"))
    with pytest.raises(BundleError, match=r"prefill\.onnx.*item_ids.*int32.*int64"):
        load_bundle(hstu_dir)


def test_write_manifest_hashes_subfolders(hstu_dir):
    (hstu_dir / "variants" / "fp16").mkdir(parents=True)
    shutil.copyfile(hstu_dir / "prefill.onnx", hstu_dir / "variants" / "fp16" / "prefill.onnx")
    d = json.loads((hstu_dir / "manifest.json").read_text())
    d["variants"] = {"fp16": {"dir": "variants/fp16", "graphs": {"prefill": d["graphs"]["prefill"]},
                              "recipe": {"method": "copy"}}}
    write_manifest(hstu_dir, d)
    b = load_bundle(hstu_dir)
    assert b.precisions == ["fp32", "fp16"] and b.manifest.variants["fp16"].info["recipe"] == {"method": "copy"}
    assert b.graph_path("prefill", "fp16") == hstu_dir / "variants" / "fp16" / "prefill.onnx"
    assert "variants/fp16/prefill.onnx" in build_files_index(hstu_dir)


def test_sha256_file_streams(tmp_path):
    p = tmp_path / "big"
    data = np.random.bytes(3 * (1 << 20) + 17)
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()



@pytest.mark.parametrize("change, match", [
    ({"gears": [1, 4]}, r"built for gears \[1, 4\], the bundle has \[1, 4, 8\]"),
    ({"built_from": {"prefill": "0" * 64}}, r"was built from another prefill\.onnx"),
    ({"graphs": {"encoder": "om/x/fp32/prefill.om"}}, r"unknown graph 'encoder'"),
])
def test_target_builds_that_disagree_with_the_bundle_are_refused(hstu_dir, change, match):
    """An NPU host trusts the OM files only if they were built from this bundle's graphs."""
    om = hstu_dir / "om" / "x" / "fp32"
    om.mkdir(parents=True)
    (om / "prefill.om").write_bytes(b"om")
    d = json.loads((hstu_dir / "manifest.json").read_text())
    build = {"soc": "x", "precision": "fp32", "gears": [1, 4, 8], "graphs": {"prefill": "om/x/fp32/prefill.om"},
             "built_from": {"prefill": sha256_file(hstu_dir / "prefill.onnx")}}
    d["targets"] = {"ascend": [build]}
    write_manifest(hstu_dir, d)
    load_bundle(hstu_dir)  # consistent: opens
    build.update(change)
    write_manifest(hstu_dir, d)
    with pytest.raises(BundleError, match=match):
        load_bundle(hstu_dir)
