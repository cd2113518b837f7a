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


def ray_checks() -> list[Check]:
    """Whether ``genrec-run --engine ray`` can run: Ray with Ray Data's pyarrow and pandas
    (package metadata only: importing Ray takes a second). Optional, so it gates no target."""
    found = {d: _version(d) for d in ("ray", "pyarrow", "pandas")}
    missing = [d for d, v in found.items() if not v]
    return [Check("Ray", "ray[data]", None if missing else True,
                  (f"ray {found['ray']}, pyarrow {found['pyarrow']}: genrec-run --engine ray works" if not missing
                   else f"not installed ({', '.join(missing)}): genrec-run --engine ray is unavailable (optional)"),
                  "" if not missing else "pip install genrec-deploy[ray]")]


def run_checks(target: str | None = None) -> list[Check]:
    """The checks a target needs (all of them without one)."""
    checks = ort_checks()
    if target in (None, "atc", "ascend"):
        checks += cann_checks()
    if target in (None, "ascend"):
        checks += acl_checks() + device_checks()
    if target in (None, "ascend"):
        checks += torch_npu_checks()
    return checks + ray_checks()


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
@click.option("--selftest", "selftest_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Hardware acceptance: export the demo model (or --bundle), convert it for this NPU, serve it "
                   "through the ascend backend, run parity against torch, and write DIR/selftest.json with "
                   "per-graph latency and host/device traffic (attach it to a bug report).")
@click.option("--bundle", "st_bundle", type=click.Path(exists=True, file_okay=False), default=None,
              help="--selftest: convert and test this bundle instead of the demo model.")
@click.option("--checkpoint", "st_checkpoint", type=click.Path(exists=True, dir_okay=False), default=None,
              help="--selftest: export this checkpoint instead of the demo model's seeded weights.")
@click.option("--soc-version", "st_soc", default=None, help="--selftest: ATC --soc_version [default: the NPU's].")
@click.option("--data", "st_data", default="data/beauty-slice", show_default=True,
              help="--selftest: interaction data for the demo model and the parity requests.")
@click.option("--device-id", "st_device", type=click.IntRange(min=0), default=0, show_default=True,
              help="--selftest: the NPU to run on.")
@click.option("--users", "st_users", type=click.IntRange(min=1), default=64, show_default=True,
              help="--selftest: held-out users for serving and parity.")
def doctor_command(target, as_json, selftest_dir, st_bundle, st_checkpoint, st_soc, st_data, st_device, st_users):
    """Check the host: CANN toolkit and atc, pyACL, NPU devices, torch_npu, onnxruntime providers.
    With --selftest DIR: the hardware acceptance run (exit 0 when parity passes on the NPU)."""
    from rich.table import Table

    from genrec.progress import console as make_console

    if selftest_dir is None and any(v is not None for v in (st_bundle, st_checkpoint, st_soc)):
        raise click.UsageError("--bundle, --checkpoint and --soc-version apply to --selftest DIR")
    if selftest_dir is not None:
        from genrec.errors import GenrecError

        if not Path(st_data).exists():
            raise GenrecError(f"--data {st_data}: no such interaction data (the shipped slice is data/beauty-slice "
                              "in the source tree)")
        rc, report = run_selftest(Path(selftest_dir), st_soc, st_bundle, st_checkpoint, st_data, "hstu", st_users,
                                  st_device)
        where = Path(selftest_dir) / "selftest.json"
        if report.get("passed"):
            lat = ", ".join(f"{g} {ms:.2f} ms" for g, ms in report.get("latency_ms_per_call", {}).items())
            click.echo(f"selftest passed on {report.get('soc')}: parity vs torch within the fp32 thresholds; "
                       f"execute per call: {lat}; report: {where}")
            return
        why = report.get("error") or "; ".join(report.get("parity", {}).get("breaches", [])[:3])
        raise GenrecError(f"selftest failed: {why}; report: {where}")
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


# --------------------------------------------------------------------------------------------
# --selftest: the hardware acceptance run (convert, serve on the NPU, parity vs torch, report)

SELFTEST_TIMEOUT = 3 * 3600


def _demo_checkpoint(out: Path, arch: str, data: Path) -> Path:
    """The demo's small model (``--preset small``) over the shipped slice, seeded weights: the
    selftest checks the device against torch, not the model's quality, so it needs no training."""
    import torch

    from genrec.checkpoint import save_checkpoint
    from genrec.data import read_sequences
    from genrec.models import build_model, make_config

    seqs = read_sequences(data)
    torch.manual_seed(0)
    model = build_model(make_config(arch, seqs.num_items, "small")).eval()
    return save_checkpoint(out / "model.pt", model, seqs.item_map.to_list(), {"dataset": str(data)})


def selftest(out: Path, soc: str | None, bundle: Path | None, checkpoint: Path | None, data: Path, arch: str,
             users: int, device_id: int, say=print) -> dict:
    """Export (unless given a bundle), convert for ``soc`` (the NPU's own by default), serve
    every mode through the ascend backend, run parity against torch, and return the report.
    Runs in the process that calls it: ``doctor --selftest`` calls it in a child process."""
    import dataclasses
    import platform as _platform
    import time

    from genrec.exporter.atc import cann_version
    from genrec.exporter.convert import convert_bundle
    from genrec.runtimes.ascend import AscendBackend
    from genrec.runtimes.decoding import SearchParams, generate, rank, recommend
    from genrec.runtimes.parity import Thresholds, requests_from_data, run_parity
    from genrec.runtimes.registry import get_backend

    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"host": f"{_platform.system()} {_platform.machine()}", "python": _platform.python_version(),
                    "cann": cann_version(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if soc is None:
        import acl

        acl.init()
        soc = acl.get_soc_name()
    report["soc"] = soc
    if bundle is None:
        from genrec.exporter import export_bundle

        checkpoint = checkpoint or _demo_checkpoint(out, arch, data)
        say(f"exporting {checkpoint} ...")
        bundle = out / "bundle"
        export_bundle(checkpoint, bundle, data=data, force=True, target="ascend")
    say(f"converting {bundle} for {soc} (fp32, must_keep_origin_dtype) ...")
    t0 = time.perf_counter()
    b = convert_bundle(bundle, soc, "fp32", force=True, log_dir=out / "atc-logs")
    report["convert_seconds"] = round(time.perf_counter() - t0, 1)
    build = next(tb for tb in b.manifest.targets["ascend"] if (tb.soc, tb.precision) == (soc, "fp32"))
    report["cann"] = build.tool_version or report["cann"]
    report["build"] = {"soc": build.soc, "precision": build.precision, "gears": list(build.gears),
                       "graphs": build.graphs, "tool_version": build.tool_version,
                       "om_producer": build.info.get("om_producer")}
    with AscendBackend(b, device_id=device_id) as be, get_backend("torch", b) as ref:
        reqs = requests_from_data(data, ref.item_map.to_list(), users, ref.dims.max_history, 0)
        say(f"serving {len(reqs.requests)} requests on {soc} device {device_id} ...")
        timings = {}
        for mode, fn in {"recommend": lambda: recommend(be, reqs.requests, 10),
                         "generate greedy": lambda: generate(be, reqs.requests, 5, SearchParams("greedy")),
                         "generate beam": lambda: generate(be, reqs.requests, 5, SearchParams("beam", num_beams=4)),
                         "rank": lambda: rank(be, [dataclasses.replace(r, candidates=r.items[:8])
                                                   for r in reqs.requests])}.items():
            t0 = time.perf_counter()
            fn()
            timings[mode] = round(time.perf_counter() - t0, 4)
        report["serve_seconds"] = timings
        st = be.stats()
        report["traffic"] = st
        report["latency_ms_per_call"] = {g: round(v["execute_ms_per_call"], 3) for g, v in st.items()
                                         if isinstance(v, dict) and "execute_ms_per_call" in v}
        say("parity against torch (fp32 thresholds) ...")
        p = run_parity(ref, be, reqs, steps=5, beams=1, thresholds=Thresholds.for_precision("fp32"))
    report["parity"] = {"passed": p["passed"], "breaches": p["breaches"], "list": p.get("list"),
                        "tensor_max_abs": {c: {n: s["max_abs"] for n, s in per.items()}
                                           for c, per in p.get("tensor", {}).items()}}
    report["passed"] = bool(p["passed"])
    return report


def _selftest_child(args_json: str) -> None:
    """Entry point of the child process (``python -c``): runs ``selftest``, writes the report."""
    a = json.loads(args_json)
    out = Path(a["out"])
    try:
        report = selftest(out, a["soc"], a["bundle"] and Path(a["bundle"]), a["checkpoint"] and Path(a["checkpoint"]),
                          Path(a["data"]), a["arch"], a["users"], a["device_id"],
                          say=lambda line: print(line, file=sys.stderr, flush=True))
    except Exception as e:  # noqa: BLE001 - the report says what failed, for the bug report
        report = {"passed": False, "error": f"{type(e).__name__}: {e}"}
    (out / "selftest.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    sys.exit(0 if report.get("passed") else 1)


def run_selftest(out: Path, soc: str | None, bundle: str | None, checkpoint: str | None, data: str, arch: str,
                 users: int, device_id: int) -> tuple[int, dict]:
    """``selftest`` in a child process (a broken CANN cannot take this one down); (exit, report)."""
    args = {"out": str(out), "soc": soc, "bundle": bundle and str(Path(bundle).resolve()),
            "checkpoint": checkpoint and str(Path(checkpoint).resolve()), "data": str(Path(data).resolve()),
            "arch": arch, "users": users, "device_id": device_id}
    out.mkdir(parents=True, exist_ok=True)
    code = f"from genrec.doctor import _selftest_child; _selftest_child({json.dumps(json.dumps(args))})"
    try:
        p = subprocess.run([sys.executable, "-c", code], timeout=SELFTEST_TIMEOUT)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        return 124, {"passed": False, "error": f"timed out after {SELFTEST_TIMEOUT} s"}
    try:
        return rc, json.loads((out / "selftest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return rc or 1, {"passed": False, "error": f"the selftest process exited {rc} without a report"}
