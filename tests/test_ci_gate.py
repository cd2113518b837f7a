"""The CI gate: for every backbone, train a small model on the shipped slice, export it, and
run `genrec parity` torch vs onnxruntime through the real command line. A parity breach
(exit 1) fails CI. This is the same one-command gate the README tells users to add. (``selection=best_valid``:
the refit would double the training here and is not what the gate checks.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support import ARCHS, SLICE


def genrec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genrec", *args], capture_output=True, text=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_train_export_parity_gate(arch, tmp_path):
    model, bundle, report = tmp_path / "model.pt", tmp_path / "bundle", tmp_path / "parity.json"
    res = genrec("train", "--data", str(SLICE), "--arch", arch, "--preset", "small", "--quiet",
                 "--set", "epochs=2", "--set", "selection=best_valid", "--set", "max_len=20", "--set", "max_new_items=6", "-o", str(model))
    assert res.returncode == 0, res.stderr
    res = genrec("export", str(model), "-o", str(bundle), "--batch-gears", "1,8,32", "--topk", "60")
    assert res.returncode == 0, res.stderr
    res = genrec("parity", str(bundle), "--reference", "torch", "--candidate", "onnxruntime",
                 "--data", str(SLICE), "--users", "150", "--generate", "5", "--report", str(report))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASSED parity torch vs onnxruntime" in res.stdout
    data = json.loads(report.read_text())
    assert data["passed"] and data["list"]["exact_match"] >= 0.99
    assert data["tensor"]["step 5"]["user_emb"]["max_abs"] < 1e-4
    assert data["task"]["users"] == 150
    assert data["task"]["reference"] == data["task"]["candidate"]
