"""Every command that writes a file refuses a bad output path before doing its work.

The proof that the refusal comes first: each command is also given an input that would fail
(or take minutes), and the one error line is about the output path."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support import SLICE


def _genrec(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genrec", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def blocked(tmp_path):
    """An output whose parent is a file: nothing can ever be written there."""
    f = tmp_path / "a-file"
    f.write_text("x")
    return f / "out"


def _one_error_about(res, path):
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path.parent) in lines[0], res.stderr


def test_export_refuses_the_output_before_reading_the_checkpoint(tmp_path, blocked):
    not_a_checkpoint = tmp_path / "model.pt"
    not_a_checkpoint.write_bytes(b"garbage")
    _one_error_about(_genrec("export", not_a_checkpoint, "-o", blocked), blocked)


def test_train_refuses_the_output_before_training(blocked):
    _one_error_about(_genrec("train", "--data", SLICE, "--arch", "sasrec", "-o", blocked), blocked)


def test_evaluate_and_parity_refuse_their_reports_first(tmp_path, blocked):
    not_a_checkpoint = tmp_path / "model.pt"
    not_a_checkpoint.write_bytes(b"garbage")
    _one_error_about(_genrec("evaluate", not_a_checkpoint, "--data", SLICE, "--json", blocked), blocked)
    bad_bundle = tmp_path / "empty-bundle"
    bad_bundle.mkdir()
    _one_error_about(_genrec("parity", bad_bundle, "--data", SLICE, "--report", blocked), blocked)
