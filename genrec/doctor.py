"""``genrec doctor``: can this host export, convert for Ascend, or serve on an NPU? And if not,
exactly what to install or source.

Every probe that loads vendor code (``acl``, ``torch_npu``, onnxruntime's providers) runs in a
subprocess with a timeout: a broken CANN install can hang or crash the interpreter that imports
it, and installing torch_npu without CANN makes ``import torch`` itself fail (ASCEND.md §5), so
genrec never imports them in-process here. What is checked (ASCEND.md §8):

- the CANN toolkit: its root and version (``<root>/<arch>-linux/ascend_toolkit_install.info``),
  whether ``set_env.sh`` was sourced (``ASCEND_OPP_PATH``, ``LD_LIBRARY_PATH``, ``PYTHONPATH``),
  ``atc`` on PATH and ``atc --help``;
- pyACL: ``import acl``, the device count and ``acl.get_soc_name()``;
- NPU devices: ``/dev/davinci*`` and ``npu-smi info``;
- torch_npu: installed or not, its version against torch's, and whether ``import torch`` still
  works (the autoload trap and its ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` workaround);
- onnxruntime and its providers (CPU, CANN, CUDA).

Targets: ``onnxruntime`` (export and serve on CPU), ``atc`` (convert bundles: CANN + atc, no
NPU needed), ``ascend`` (serve on an NPU: atc, acl and a device). Exit 0 when the target asked
for can work, 1 otherwise.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import click

__all__ = ["Check", "TARGETS", "doctor_command", "run_checks", "verdicts"]

TARGETS = ("onnxruntime", "atc", "ascend")
TIMEOUT = 30
CANN_ROOTS = ("/usr/local/Ascend/cann", "/usr/local/Ascend/ascend-toolkit/latest")
SET_ENV = ("/usr/local/Ascend/cann/set_env.sh", "/usr/local/Ascend/ascend-toolkit/set_env.sh")


@dataclass(frozen=True)
class Check:
    """One row of the table: what was checked, whether it is fine, what was seen, what to do."""

    area: str
    name: str
    ok: bool | None  # None: informational / optional
    detail: str
    fix: str = ""
    needed_by: tuple[str, ...] = ()


def _probe(code: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``python -c code`` in a fresh interpreter; (exit status, stdout + stderr tail)."""
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT,
                           env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {TIMEOUT} s"
    except OSError as e:
        return 127, str(e)
    return p.returncode, (p.stdout + p.stderr).strip()


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip()[:200] if lines else ""


def cann_root() -> Path | None:
    for var in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"):
        if os.environ.get(var) and Path(os.environ[var]).is_dir():
            return Path(os.environ[var])
    for root in (*CANN_ROOTS, *sorted(glob.glob("/usr/local/Ascend/cann-*"), reverse=True)):
        if Path(root).is_dir():
            return Path(root)
    return None


def _install_info(root: Path, name: str) -> dict[str, str]:
    for info in sorted(root.glob(f"*-linux/{name}")):
        out = {}
        for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
            k, eq, v = line.partition("=")
            if eq:
                out[k.strip()] = v.strip()
        return out
    return {}


def cann_checks() -> list[Check]:
    out = []
    root = cann_root()
    src = next((s for s in SET_ENV if Path(s).is_file()), None)
    source = f"source {src}" if src else "source <CANN root>/set_env.sh"
    install = ("install the CANN toolkit (Ascend-cann-toolkit_<ver>_linux-<arch>.run --install) and the ops "
               "package for your SoC, then source /usr/local/Ascend/cann/set_env.sh "
               "(ascend-toolkit/set_env.sh before CANN 8.5)")
    if root is None:
        out.append(Check("CANN", "toolkit", False, "no CANN toolkit: $ASCEND_TOOLKIT_HOME / $ASCEND_HOME_PATH unset, "
                         f"none of {', '.join(CANN_ROOTS)} exists", install, ("atc", "ascend")))
    else:
        info = _install_info(root, "ascend_toolkit_install.info")
        ops = _install_info(root, "ascend_ops_install.info")
        out.append(Check("CANN", "toolkit", bool(info.get("version")),
                         f"{root}: version {info.get('version', '? (no <arch>-linux/ascend_toolkit_install.info)')}"
                         + (f", ops package {ops.get('version')}" if ops.get("version") else ", no ops package info"),
                         "" if info.get("version") else install, ("atc", "ascend")))
        opp = os.environ.get("ASCEND_OPP_PATH")
        ld = os.environ.get("LD_LIBRARY_PATH", "")
        sourced = bool(opp and Path(opp).is_dir()) and str(root) in ld
        out.append(Check("CANN", "set_env.sh sourced", sourced,
                         f"ASCEND_OPP_PATH={opp or '(unset)'}; LD_LIBRARY_PATH "
                         + ("has" if str(root) in ld else "lacks") + f" {root}", "" if sourced else source,
                         ("atc", "ascend")))
    atc = shutil.which("atc")
    if atc is None:
        out.append(Check("CANN", "atc", False, "atc is not on PATH",
                         source if root else install, ("atc", "ascend")))
    else:
        try:
            p = subprocess.run([atc, "--help"], capture_output=True, text=True, timeout=TIMEOUT)
            ok, detail = p.returncode == 0, f"{atc}: `atc --help` exit {p.returncode}"
        except (subprocess.TimeoutExpired, OSError) as e:
            ok, detail = False, f"{atc}: `atc --help` failed ({type(e).__name__})"
        from genrec.exporter.atc import cann_version

        version = cann_version(Path(atc).resolve())
        out.append(Check("CANN", "atc", ok, detail + f", CANN {version or 'version unknown'}",
                         "" if ok else f"{source}; check LD_LIBRARY_PATH", ("atc", "ascend")))
    return out


def acl_checks() -> list[Check]:
    code = ("import json, acl\nr = {'init': acl.init()}\ncount, ret = acl.rt.get_device_count()\n"
            "r.update(count=count, count_ret=ret, soc=acl.get_soc_name())\nacl.finalize()\nprint(json.dumps(r))")
    rc, text = _probe(code)
    if rc != 0:
        why = "not importable" if "ModuleNotFoundError" in text or "No module named" in text else _last_line(text)
        return [Check("pyACL", "import acl", False, f"acl: {why}",
                      "source the CANN set_env.sh (it puts <root>/python/site-packages on PYTHONPATH)", ("ascend",))]
    try:
        r = json.loads(text.splitlines()[-1])
    except (ValueError, IndexError):
        return [Check("pyACL", "import acl", False, f"unexpected output: {_last_line(text)}", "", ("ascend",))]
    ok = r.get("init") == 0 and r.get("count_ret") == 0 and (r.get("count") or 0) > 0
    return [Check("pyACL", "acl.init / devices / soc", ok,
                  f"acl.init {r.get('init')}, {r.get('count')} device(s), get_soc_name {r.get('soc')!r}",
                  "" if ok else "check the NPU driver (npu-smi info) and that this user may open /dev/davinci*",
                  ("ascend",))]


def device_checks() -> list[Check]:
    devices = sorted(glob.glob("/dev/davinci[0-9]*"))
    out = [Check("NPU", "/dev/davinci*", bool(devices), ", ".join(devices) or "no /dev/davinci* device",
                 "" if devices else "install the Ascend NPU driver and firmware (or run on a host with an NPU; "
                 "in a container, pass /dev/davinci*, /dev/davinci_manager, /dev/devmm_svm, /dev/hisi_hdc)",
                 ("ascend",))]
    smi = shutil.which("npu-smi")
    if smi is None:
        out.append(Check("NPU", "npu-smi", False, "npu-smi is not on PATH", "it comes with the NPU driver",
                         ("ascend",)))
    else:
        try:
            p = subprocess.run([smi, "info"], capture_output=True, text=True, timeout=TIMEOUT)
            out.append(Check("NPU", "npu-smi", p.returncode == 0, f"npu-smi info exit {p.returncode}: "
                             f"{_last_line(p.stdout) or _last_line(p.stderr)}", "", ("ascend",)))
        except (subprocess.TimeoutExpired, OSError) as e:
            out.append(Check("NPU", "npu-smi", False, f"npu-smi info failed ({type(e).__name__})", "", ("ascend",)))
    return out


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def torch_npu_checks() -> list[Check]:
    npu, torch = _version("torch-npu") or _version("torch_npu"), _version("torch")
    if npu is None:
        return [Check("torch_npu", "torch_npu", None, f"not installed (optional: only the torch_npu reference "
                      f"backend needs it; torch {torch})", "")]
    base = lambda v: (v or "").split("+")[0].split(".post")[0]  # noqa: E731
    match = base(npu) == base(torch)
    rc, text = _probe("import torch; print(torch.__version__)")
    out = [Check("torch_npu", "version", match, f"torch_npu {npu}, torch {torch}",
                 "" if match else f"install torch-npu=={base(torch)} (torch_npu's version must equal torch's)")]
    if rc != 0:
        rc2, _ = _probe("import torch", {"TORCH_DEVICE_BACKEND_AUTOLOAD": "0"})
        out.append(Check("torch_npu", "import torch", False, f"`import torch` fails with torch_npu installed: "
                         f"{_last_line(text)}", "source the CANN set_env.sh before Python starts, or set "
                         "TORCH_DEVICE_BACKEND_AUTOLOAD=0" + (" (which works here)" if rc2 == 0 else "")
                         + "; never install torch-npu on a host without CANN"))
    else:
        out.append(Check("torch_npu", "import torch", True, "torch imports with torch_npu installed"))
    return out


def ort_checks() -> list[Check]:
    rc, text = _probe("import json, onnxruntime as o; print(json.dumps([o.__version__, o.get_available_providers()]))")
    if rc != 0:
        return [Check("onnxruntime", "import", False, _last_line(text), "pip install onnxruntime",
                      ("onnxruntime",))]
    version, providers = json.loads(text.splitlines()[-1])
    out = [Check("onnxruntime", "providers", "CPUExecutionProvider" in providers,
                 f"onnxruntime {version}: {', '.join(providers)}", "", ("onnxruntime",))]
    cann = "CANNExecutionProvider" in providers
    wheels = [d for d in ("onnxruntime", "onnxruntime-cann", "onnxruntime-gpu") if _version(d)]
    out.append(Check("onnxruntime", "CANN provider", None if not cann else True,
                     ("CANNExecutionProvider available" if cann else "no CANNExecutionProvider (optional: "
                      "onnxruntime-cann, a reference/diagnostic path only)")
                     + (f"; several onnxruntime wheels installed ({', '.join(wheels)}): keep one" if len(wheels) > 1
                        else ""), ""))
    out.append(Check("onnxruntime", "CUDA provider", None,
                     "CUDAExecutionProvider available" if "CUDAExecutionProvider" in providers
                     else "no CUDAExecutionProvider (optional)", ""))
    return out


def run_checks(target: str | None = None) -> list[Check]:
    """The checks a target needs (all of them without one)."""
    checks = ort_checks()
    if target in (None, "atc", "ascend"):
        checks += cann_checks()
    if target in (None, "ascend"):
        checks += acl_checks() + device_checks()
    if target in (None, "ascend"):
        checks += torch_npu_checks()
    return checks


def verdicts(checks: list[Check]) -> dict[str, bool]:
    """Per target: every check it needs passed."""
    return {t: all(c.ok for c in checks if t in c.needed_by) and any(t in c.needed_by for c in checks)
            for t in TARGETS if any(t in c.needed_by for c in checks)}


_WHAT = {"onnxruntime": "export and serve on CPU (onnxruntime)",
         "atc": "convert bundles with ATC (genrec convert)",
         "ascend": "serve on an Ascend NPU (acl + a device)"}


@click.command("doctor", short_help="Check this host for each target; say what to install or source.")
@click.option("--target", type=click.Choice(TARGETS), default=None,
              help="Exit 0 only if this target can work here: onnxruntime, atc (convert; no NPU needed), "
                   "ascend (serve on an NPU). Default: report everything, exit as for onnxruntime.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON instead of a table.")
def doctor_command(target, as_json):
    """Check the host: CANN toolkit and atc, pyACL, NPU devices, torch_npu, onnxruntime providers."""
    from rich.table import Table

    from genrec.progress import console as make_console

    checks = run_checks(target)
    ready = verdicts(checks)
    if as_json:
        click.echo(json.dumps({"host": f"{platform.system()} {platform.machine()}", "ready": ready,
                               "checks": [c.__dict__ | {"needed_by": list(c.needed_by)} for c in checks]}, indent=2))
    else:
        table = Table(title=f"genrec doctor ({platform.system()} {platform.machine()}, Python "
                            f"{platform.python_version()})")
        for col in ("area", "check", "", "seen", "to do"):
            table.add_column(col, overflow="fold")
        mark = {True: "[green]ok[/]", False: "[red]missing[/]", None: "[dim]info[/]"}
        for c in checks:
            table.add_row(c.area, c.name, mark[c.ok], c.detail, c.fix)
        con = make_console()
        con.print(table)
        for t, ok in ready.items():
            con.print(f"{_WHAT[t]}: " + ("[green]ready[/]" if ok else "[red]not possible here[/]"))
        if not any(c.area == "CANN" and c.name == "toolkit" and c.ok for c in checks) and target != "onnxruntime":
            con.print("no CANN on this host: convert elsewhere with `genrec convert BUNDLE --soc-version SOC "
                      "--emit-script convert.sh`, then `--import` the OM files")
    want = target or "onnxruntime"
    raise SystemExit(0 if ready.get(want) else 1)
