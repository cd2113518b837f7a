"""Helpers of the Ascend tests (tests/ascend): the ATC double on PATH for subprocesses only,
and byte-level snapshots that prove a failed conversion left a bundle exactly as it was.

The double (tests/ascend_double/bin/atc) is a real executable found through PATH, as the real
``atc`` is on a CANN host; it is never imported. Its ``#!/usr/bin/env python3`` resolves to the
interpreter running the tests (its directory comes first on PATH), so that it has onnx.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

DOUBLE_ROOT = Path(__file__).resolve().parent / "ascend_double"
DOUBLE_BIN = DOUBLE_ROOT / "bin"


def double_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess that finds the double as ``atc`` (and no real CANN)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASCEND_", "GENREC_ATC_DOUBLE"))}
    env["PATH"] = os.pathsep.join([str(DOUBLE_BIN), str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


def no_atc_env() -> dict[str, str]:
    """PATH without any atc (only the interpreter's own directory and the system's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASCEND_", "GENREC_ATC_DOUBLE"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    return env


def genrec(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``genrec ARGS`` as a user runs it (a real process, its exit status and its output)."""
    return subprocess.run([sys.executable, "-m", "genrec", *args], capture_output=True, text=True,
                          env=env if env is not None else double_env(), timeout=timeout)


def atc(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The double itself, through PATH."""
    return subprocess.run(["atc", *args], capture_output=True, text=True, cwd=cwd,
                          env=env if env is not None else double_env(), timeout=120)


def snapshot(path: Path) -> dict[str, object]:
    """Every entry under ``path`` with its kind, mode and content hash: equal snapshots mean
    the directory is byte for byte what it was."""
    out: dict[str, object] = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            p = Path(root, d)
            out[p.relative_to(path).as_posix() + "/"] = oct(p.stat().st_mode)
        for f in files:
            p = Path(root, f)
            out[p.relative_to(path).as_posix()] = (oct(p.stat().st_mode), hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def siblings(path: Path) -> list[str]:
    """Names next to ``path`` other than itself: temporaries a conversion must not leave."""
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


