"""Every entry point (``genrec``, ``genrec-export``, ``genrec-run``) ends an unexpected error
with exit 3 and one line asking for a report, and prints no library warning before an
``error:`` line.

The unexpected error is real: a broken installation, simulated by a package on PYTHONPATH that
shadows onnx or onnxruntime and raises on import, which is no ImportError genrec expects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import click
import pytest

from genrec.cli import invoke
from genrec.errors import DataError

ENTRY = {"genrec": "main", "genrec-export": "export_main", "genrec-run": "run_main"}
REPORT = "this is a bug in genrec-deploy, please report it with the command you ran"


def entry_point(name: str, args: list, shadow: Path) -> subprocess.CompletedProcess:
    """The console script ``name`` (its function, run as the script would) with ``shadow`` first
    on the import path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")])}
    env.pop("GENREC_DEBUG", None)
    code = f"from genrec.cli import {ENTRY[name]}; {ENTRY[name]}()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def shadow_package(root: Path, name: str, body: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(body)
    return root


@pytest.fixture()
def request_file(tmp_path, requests_json) -> Path:
    src = tmp_path / "requests.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in requests_json))
    return src


@pytest.fixture(scope="module")
def requests_json() -> list[dict]:
    return [{"user_id": "u1", "items": [5522, 439], "timestamps": [1, 2], "request_time": 3}]


@pytest.mark.parametrize("name, args", [
    ("genrec-run", []),
    ("genrec", ["run"]),
])
def test_an_internal_error_in_run_is_exit_3_and_one_line(name, args, tmp_path, bundles, request_file):
    shadow = shadow_package(tmp_path / "shadow", "onnxruntime", "raise RuntimeError('simulated bug\\nsecond line')\n")
    out = tmp_path / "recs.jsonl"
    proc = entry_point(name, [*args, bundles["hstu"], "--input", request_file, "--output", out], shadow)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: internal error (RuntimeError: simulated bug second line); {REPORT} "
        "(GENREC_DEBUG=1 prints the traceback)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["requests.jsonl", "shadow"]


def test_an_internal_error_in_export_is_exit_3_and_one_line(tmp_path, checkpoints):
    shadow = shadow_package(tmp_path / "shadow", "onnx", "raise RuntimeError('simulated bug')\n")
    out = tmp_path / "bundle"
    proc = entry_point("genrec-export", [checkpoints["sasrec"], "-o", out], shadow)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: internal error (RuntimeError: simulated bug); {REPORT} (GENREC_DEBUG=1 prints the traceback)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shadow"]


def test_no_library_warning_comes_before_the_error_line(tmp_path, bundles, request_file):
    shadow = shadow_package(tmp_path / "shadow", "onnxruntime",
                            "import warnings\nwarnings.warn('a noisy library', UserWarning)\n"
                            "warnings.warn('deprecated!', FutureWarning)\n"
                            "raise ImportError('no onnxruntime in this test')\n")
    proc = entry_point("genrec", ["run", bundles["hstu"], "--input", request_file], shadow)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "error: onnxruntime backend: no onnxruntime in this test; pip install onnxruntime"]


def test_warnings_of_a_successful_command_come_after_it_one_line_each(capsys):
    @click.command()
    @click.option("--fail", is_flag=True)
    def noisy(fail: bool) -> None:
        warnings.warn("first\nof two lines", UserWarning)
        click.echo("done")
        if fail:
            raise DataError("bad input")

    assert invoke(noisy, []) == 0
    captured = capsys.readouterr()
    assert captured.out == "done\n" and captured.err == "warning: UserWarning: first of two lines\n"
    assert invoke(noisy, ["--fail"]) == 1
    assert capsys.readouterr().err == "error: bad input\n"


def test_genrec_debug_adds_the_traceback_of_an_internal_error(capsys, monkeypatch):
    @click.command()
    def buggy() -> None:
        {}["missing"]

    monkeypatch.delenv("GENREC_DEBUG", raising=False)
    assert invoke(buggy, []) == 3
    assert capsys.readouterr().err == f"error: internal error (KeyError: 'missing'); {REPORT} " \
                                      "(GENREC_DEBUG=1 prints the traceback)\n"
    monkeypatch.setenv("GENREC_DEBUG", "1")
    assert invoke(buggy, []) == 3
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "Traceback (most recent call last):" and 'KeyError: \'missing\'' in err
    assert err[-1].startswith("error: internal error (KeyError: 'missing')")
