"""Everything genrec knows about driving Huawei's ``atc`` (ONNX -> .om), and nothing else.

ATC is a closed binary that exists only on CANN hosts, so this module keeps to its documented
surface (ASCEND.md §1.2-1.3): one command line per graph built from the manifest, run as a
subprocess whose output streams to a log and a progress display, and judged by the three
things ATC documents: exit status 0, the line ``ATC run success``, and a ``<output>*.om`` file
(ATC may insert ``_<os>_<arch>`` into the name). A failure is one ``AtcError`` carrying ATC's
own E-code lines and the log's location.

Command lines are built relative to the bundle directory (``--model=step.onnx
--output=om/<soc>/<precision>/step``) and run with the bundle as working directory, so the
command recorded in the manifest is exactly the one that ran, and re-runs anywhere.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from genrec.errors import ExportError, MissingBackend
from genrec.manifest import GraphSpec, Manifest

__all__ = ["AtcError", "AtcResult", "AtcRun", "PRECISIONS", "PRECISION_MEANING", "SUCCESS_LINE", "build_command",
           "cann_version", "check_soc", "find_atc", "keep_dtype_nodes", "mixlist", "om_dir", "parse_errors",
           "precision_files", "run_atc"]

PRECISIONS = ("fp32", "fp16", "mixed")
SUCCESS_LINE = "ATC run success"
FAILED_LINE = "ATC run failed"
# GE's error-manager lines, with or without the "[PID: n] <time>" prefix of CANN 8.x (ASCEND.md §1.3)
_ECODE = re.compile(r"^(E[0-9A-Z]{5}): (?:\[PID: \d+\] \S+ )?(.*)$")
_SOC = re.compile(r"^Ascend[A-Za-z0-9_]+$")
# the CANN roots ASCEND.md §1.1 / §8 names, newest layout first
CANN_ROOTS = ("/usr/local/Ascend/cann", "/usr/local/Ascend/ascend-toolkit/latest")

# What each --precision means on the device, and what parity to expect (README, --help).
PRECISION_MEANING = {
    "fp32": "--precision_mode=must_keep_origin_dtype: every op keeps the ONNX dtype (fp32); an op with only "
            "an fp16 AI Core kernel falls back to its fp32 AI CPU kernel. The parity build: gate it with the "
            "same thresholds as onnxruntime.",
    "fp16": "--precision_mode=force_fp16 with --keep_dtype: the transformer runs in fp16, while the scoring "
            "head (item-table MatMul to TopK and log_z), TopK and every normalisation stay fp32. Expect "
            "~1e-3 relative differences in user_emb and scores and top-k order changes between near ties: "
            "gate on task metrics, not exact ids.",
    "mixed": "--precision_mode=allow_mix_precision with --modify_mixlist: CANN's mixed-precision lists decide "
             "per op type (MatMul in fp16); TopK, normalisation, Softmax, Exp/Log and reductions are "
             "black-listed to fp32. The scoring MatMul itself may run in fp16, so parity is as for fp16 or "
             "looser: gate on task metrics.",
}
_PRECISION_FLAGS = {"fp32": ["--precision_mode=must_keep_origin_dtype"], "fp16": ["--precision_mode=force_fp16"],
                    "mixed": ["--precision_mode=allow_mix_precision"]}
# Ascend IR op types kept in fp32 under the mixed mode (entries are IR types, ASCEND.md §1.2)
MIXLIST_FP32 = ("TopK", "TopKV2", "TopKD", "LayerNorm", "LayerNormV3", "LayerNormV4", "SoftmaxV2", "ReduceSum",
                "ReduceSumD", "ReduceMax", "ReduceMaxD", "ReduceMean", "ReduceMeanD", "Exp", "Log", "Sqrt",
                "Rsqrt")
# ONNX op types kept in fp32 under fp16 wherever they are (normalisation, TopK, log-sum-exp)
_KEEP_OPS = {"TopK", "LayerNormalization", "ReduceMean", "ReduceSum", "ReduceMax", "Sqrt", "Exp", "Log",
             "Softmax", "LogSoftmax"}
_HEAD_OUTPUTS = ("topk_scores", "topk_ids", "log_z", "scores")


class AtcError(ExportError):
    """ATC failed on a graph; the message carries its E-code lines and the log's path."""


def check_soc(soc: str) -> str:
    """A ``--soc_version`` value as ATC spells it (``Ascend310P3``, ``Ascend910B4``...).

    Only the form is checked here (it becomes a directory name, ``om/<soc>/``); whether ATC
    knows the SoC is ATC's call, so a new chip works without a genrec release."""
    if not _SOC.match(soc or ""):
        raise ExportError(f"--soc-version {soc!r}: expected an Ascend SoC name as `npu-smi info` shows it with "
                          "'Ascend' in front (e.g. Ascend310P3, Ascend910B4)")
    return soc


def om_dir(soc: str, precision: str) -> str:
    """Bundle-relative directory of one build: builds for several SoCs and precisions coexist."""
    return f"om/{soc}/{precision}"


# --------------------------------------------------------------------------------------------
# command lines


def input_shape(spec: GraphSpec, batch: int = -1) -> str:
    """``--input_shape``: every graph input, batch (axis 0) as -1 (gears) or ``batch``, the rest static."""
    parts = []
    for s in spec.inputs:
        dims = [str(batch), *(str(d) for d in s.shape[1:])]
        if any(not isinstance(d, int) for d in s.shape[1:]):
            raise ExportError(f"{spec.file}: input {s.name} has a symbolic non-batch axis {list(s.shape)}; ATC "
                              "gears cover the batch axis only (re-export the bundle)")
        parts.append(f"{s.name}:{','.join(dims)}")
    return ";".join(parts)


def build_command(m: Manifest, graph: str, soc: str, precision: str, atc: str = "atc",
                  model: str | None = None) -> list[str]:
    """The argv of the ATC call for one graph, relative to the bundle directory; ``model`` is the
    ONNX file ATC reads when it is not the graph itself (the ATC variant, ``atc_variant``)."""
    if precision not in PRECISIONS:
        raise ExportError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    spec = m.graphs[graph]
    out = om_dir(soc, precision)
    gears = m.dims.batch_gears
    cmd = [atc, "--framework=5", f"--model={model or spec.file}", f"--output={out}/{graph}", f"--soc_version={soc}",
           "--input_format=ND", f"--input_shape={input_shape(spec, -1 if len(gears) > 1 else gears[0])}"]
    if len(gears) > 1:  # ATC wants 2..100 gears; one gear is a static shape
        cmd.append(f"--dynamic_batch_size={','.join(map(str, gears))}")
    cmd.append("--log=error")
    cmd += _PRECISION_FLAGS[precision]
    if precision == "fp16":
        cmd.append(f"--keep_dtype={out}/{graph}.keep_dtype.cfg")
    elif precision == "mixed":
        cmd.append(f"--modify_mixlist={out}/mixlist.json")
    return cmd


def command_line(argv: Sequence[str]) -> str:
    """One shell-quoted line, as recorded in the manifest and written to the emitted script."""
    return shlex.join(argv)


def keep_dtype_nodes(model: onnx.ModelProto) -> list[str]:
    """Node names for ``--keep_dtype`` under fp16: the scoring head and the precision-critical ops.

    The head is every node that depends on a use of the item table (the largest 2-D float
    initializer) other than the input lookup (Gather) and feeds ``topk_scores``/``topk_ids``/``log_z``/``scores``; plus, anywhere,
    TopK, LayerNormalization and the ops of a decomposed norm or log-sum-exp. Nodes without a
    name cannot be listed by name and are skipped (genrec's exporters name every node)."""
    g = model.graph
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    tables = [t for t in g.initializer if len(t.dims) == 2 and t.data_type in floats]
    table = max(tables, key=lambda t: t.dims[0] * t.dims[1]).name if tables else None
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
        for o in n.output:
            producer[o] = n
    # the scoring head starts at every use of the table that is not the input lookup (a Gather):
    # the item-side normalisation if any, then the MatMul against the user embedding
    roots = [n for n in consumers.get(table, []) if n.op_type not in ("Gather", "GatherND", "GatherElements")] \
        if table else []
    down: set[str] = set()
    stack = roots
    while stack:
        n = stack.pop()
        if n.name in down:
            continue
        down.add(n.name)
        for o in n.output:
            stack.extend(consumers.get(o, []))
    up: set[str] = set()
    stack = [producer[o.name] for o in g.output if o.name in _HEAD_OUTPUTS and o.name in producer]
    while stack:
        n = stack.pop()
        if n.name in up:
            continue
        up.add(n.name)
        stack.extend(producer[i] for i in n.input if i in producer)
    head = down & up
    # the item lookup (Gather of the table) is not arithmetic; keeping it fp32 costs nothing
    names = [n.name for n in g.node if n.name and (n.name in head or n.op_type in _KEEP_OPS)
             and n.op_type != "Constant"]
    return names


def mixlist() -> dict:
    """``--modify_mixlist`` JSON for the mixed mode: the fp32 ops go to the black list."""
    return {"black-list": {"to-remove": [], "to-add": list(MIXLIST_FP32)}}


def precision_files(bundle_dir: Path, m: Manifest, soc: str, precision: str) -> dict[str, str]:
    """The config files a precision's command lines name (bundle-relative path -> text)."""
    out = om_dir(soc, precision)
    if precision == "fp16":
        files = {}
        for graph, spec in m.graphs.items():
            model = onnx.load(str(bundle_dir / spec.file), load_external_data=False)
            files[f"{out}/{graph}.keep_dtype.cfg"] = "\n".join(keep_dtype_nodes(model)) + "\n"
        return files
    if precision == "mixed":
        return {f"{out}/mixlist.json": json.dumps(mixlist(), indent=2) + "\n"}
    return {}


# --------------------------------------------------------------------------------------------
# finding atc and CANN


def find_atc(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--atc PATH`` or ``atc`` on PATH; MissingBackend saying what to source otherwise."""
    if explicit is not None:
        p = Path(explicit)
        if p.is_dir():
            p = p / "atc"
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise MissingBackend(f"--atc {explicit}: not an executable file")
        return p.resolve()
    found = shutil.which("atc")
    if found:
        return Path(found).resolve()
    hint = next((f"source {r}/set_env.sh" for r in CANN_ROOTS if Path(r, "set_env.sh").is_file()), None)
    raise MissingBackend("atc is not on PATH: " + (f"{hint} first" if hint else
                         "install the CANN toolkit and source its set_env.sh "
                         "(/usr/local/Ascend/cann/set_env.sh, or ascend-toolkit/set_env.sh before CANN 8.5)")
                         + ", or pass --atc PATH; `genrec doctor --target atc` checks the host; "
                         "`genrec convert --emit-script` writes a script to run on a CANN host instead")


def read_install_info(path: Path) -> dict[str, str]:
    """``key=value`` lines of ``ascend_toolkit_install.info``."""
    out = {}
    try:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            k, eq, v = line.partition("=")
            if eq:
                out[k.strip()] = v.strip()
    except OSError:
        pass
    return out


def cann_version(atc: Path | None = None) -> str | None:
    """The CANN toolkit version that ``atc`` belongs to (``version=`` of
    ``<root>/<arch>-linux/ascend_toolkit_install.info``, root = the directory above ``bin/``),
    else that of ``$ASCEND_TOOLKIT_HOME`` / ``$ASCEND_HOME_PATH``; None when none is found."""
    roots: list[Path] = []
    if atc is not None:
        roots += [atc.parent.parent, atc.parent.parent.parent]
    roots += [Path(os.environ[v]) for v in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH") if os.environ.get(v)]
    for root in roots:
        for info in sorted(root.glob("*-linux/ascend_toolkit_install.info")):
            version = read_install_info(info).get("version")
            if version:
                return version
    return None


# --------------------------------------------------------------------------------------------
# running atc


@dataclass
class AtcRun:
    """One ATC call to make: which graph, its argv (argv[0] the atc to run), where to log."""

    graph: str
    argv: list[str]
    output: str  # bundle-relative --output prefix (no .om)
    log: Path


@dataclass
class AtcResult:
    graph: str
    returncode: int
    om: str  # bundle-relative path of the .om ATC wrote
    lines: list[str] = field(default_factory=list)


def parse_errors(lines: Sequence[str]) -> list[str]:
    """ATC's ``E.....: message`` lines (the [PID: n] <time> prefix dropped), in order."""
    out = []
    for line in lines:
        m = _ECODE.match(line.strip())
        if m:
            out.append(f"{m.group(1)}: {m.group(2)}")
    return out


def run_atc(run: AtcRun, cwd: Path, on_line: Callable[[str, str], None] | None = None,
            procs: list[subprocess.Popen] | None = None, lock: threading.Lock | None = None) -> AtcResult:
    """Run one ATC call in ``cwd``; stream its output to ``run.log`` and ``on_line(graph, line)``.

    Success is exit 0, ``ATC run success`` and exactly one ``<output>*.om``; anything else is an
    AtcError with ATC's E-code lines and the log path. ``procs`` collects the Popen so that a
    caller interrupted meanwhile can terminate it."""
    run.log.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    with open(run.log, "w", encoding="utf-8") as log:
        log.write(f"$ cd {cwd} && {command_line(run.argv)}\n")
        log.flush()
        try:
            proc = subprocess.Popen(run.argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1)
        except OSError as e:
            raise AtcError(f"cannot run {run.argv[0]}: {e.strerror or e}") from None
        if procs is not None:
            with lock or threading.Lock():
                procs.append(proc)
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            log.write(line + "\n")
            log.flush()
            if on_line is not None:
                on_line(run.graph, line)
        rc = proc.wait()
    return _judge(run, cwd, rc, lines)


def _judge(run: AtcRun, cwd: Path, rc: int, lines: list[str]) -> AtcResult:
    where = f"ATC failed on {run.graph}"
    errors = parse_errors(lines)
    if rc != 0:
        status = f"exit {rc}" if rc >= 0 else f"killed by signal {-rc}"
        detail = "; ".join(errors[:3]) if errors else (
            f"no E-code in its output (last line: {lines[-1].strip()[:200]!r})" if lines else "no output")
        raise AtcError(f"{where} ({status}): {detail}; log: {run.log}; the bundle is unchanged")
    if not any(SUCCESS_LINE in line for line in lines):
        raise AtcError(f"{where}: exit 0 but no {SUCCESS_LINE!r} line in its output"
                       + (f" ({'; '.join(errors[:3])})" if errors else "") + f"; log: {run.log}; the bundle is unchanged")
    out = cwd / run.output
    found = sorted(p for p in out.parent.glob(out.name + "*.om") if p.is_file())
    if not found:
        raise AtcError(f"{where}: ATC reported success but wrote no {run.output}*.om; log: {run.log}; "
                       "the bundle is unchanged")
    if len(found) > 1:
        raise AtcError(f"{where}: ATC wrote several files for one graph ({', '.join(p.name for p in found)}); "
                       f"log: {run.log}; the bundle is unchanged")
    return AtcResult(run.graph, rc, found[0].relative_to(cwd).as_posix(), lines)
