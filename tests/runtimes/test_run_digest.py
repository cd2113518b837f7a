"""``genrec-run --expect-digest``: a pinned bundle runs, any other is refused before any request."""

from __future__ import annotations

import json
import shutil

from genrec.bundle import load_bundle
from test_run_cli import as_json, genrec_run, write_jsonl


def test_expect_digest_runs_the_pinned_bundle_and_refuses_others(tmp_path, bundles, requests):
    src, out = tmp_path / "requests.jsonl", tmp_path / "recs.jsonl"
    write_jsonl(src, as_json(requests[:4]))
    digest = load_bundle(bundles["sasrec"]).digest
    ok = genrec_run(bundles["sasrec"], "--input", src, "--output", out, "--expect-digest", digest)
    assert ok.returncode == 0, ok.stderr
    assert len(out.read_text().splitlines()) == 4

    edited = tmp_path / "edited"  # the same files, one harmless manifest edit: another bundle
    shutil.copytree(bundles["sasrec"], edited)
    m = json.loads((edited / "manifest.json").read_text())
    m["checks"].append({"check": "added later"})
    (edited / "manifest.json").write_text(json.dumps(m))
    out.unlink()
    bad = genrec_run(edited, "--input", src, "--output", out, "--expect-digest", digest)
    assert bad.returncode == 1 and not out.exists()
    assert bad.stderr.startswith("error: ") and f"is not the expected {digest}" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    pt = genrec_run(bundles["sasrec"] / "model.pt", "--backend", "torch", "--input", src,
                    "--expect-digest", digest)
    assert pt.returncode == 2 and "checkpoint file" in pt.stderr


def test_backend_variant_grammar(tmp_path, bundles, requests):
    """--backend BACKEND[:VARIANT] picks a bundle variant, as parity and bench do."""
    from genrec.bundle import write_manifest

    b = tmp_path / "b"
    shutil.copytree(bundles["sasrec"], b)
    (b / "variants" / "fp16").mkdir(parents=True)
    m = json.loads((b / "manifest.json").read_text())
    for g in ("prefill", "step", "rank"):  # a stand-in variant: the fp32 graphs under another name
        shutil.copyfile(b / f"{g}.onnx", b / "variants" / "fp16" / f"{g}.onnx")
    m["variants"] = {"fp16": {"dir": "variants/fp16", "graphs": m["graphs"]}}
    write_manifest(b, m)
    src = tmp_path / "requests.jsonl"
    write_jsonl(src, as_json(requests[:3]))
    base = genrec_run(b, "--input", src)
    var = genrec_run(b, "--input", src, "--backend", "onnxruntime:fp16")
    assert base.returncode == var.returncode == 0, var.stderr
    assert var.stdout == base.stdout and len(var.stdout.splitlines()) == 3
    bad = genrec_run(b, "--input", src, "--backend", "onnxruntime:int8")
    assert bad.returncode == 1 and "no 'int8' variant (available: fp32, fp16)" in bad.stderr
    both = genrec_run(b, "--input", src, "--backend", "onnxruntime:fp16", "--precision", "fp32")
    assert both.returncode == 2 and "names a variant" in both.stderr
