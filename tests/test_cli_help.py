"""Every module imports and every command answers --help (a broken lazy import would
otherwise surface only when a user runs that command)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import genrec
from genrec.cli import LAZY_COMMANDS


def all_modules() -> list[str]:
    names = []
    for pkg in ("genrec", "genrec.exporter", "genrec.runtimes", "genrec.calibration"):
        mod = importlib.import_module(pkg)
        names.append(pkg)
        names += [f"{pkg}.{m.name}" for m in pkgutil.iter_modules(mod.__path__) if m.name != "__main__"]
    return names


@pytest.mark.parametrize("name", all_modules())
def test_module_imports(name):
    importlib.import_module(name)


@pytest.mark.parametrize("command", sorted(LAZY_COMMANDS))
def test_every_command_has_help(command):
    res = subprocess.run([sys.executable, "-m", "genrec", command, "--help"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "Usage:" in res.stdout and "unavailable" not in res.stdout


def test_console_scripts_and_group_help():
    res = subprocess.run([sys.executable, "-m", "genrec", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for command in LAZY_COMMANDS:
        assert command in res.stdout
    assert "unavailable" not in res.stdout
    assert genrec.__version__


def test_import_genrec_does_not_load_onnxruntime():
    code = "import sys, genrec, genrec.cli, genrec.runtimes; print('onnxruntime' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip() == "False", res.stderr
