"""``convert_bundle``: run ATC on every graph of a bundle and add the OM files to it, atomically.

A conversion takes minutes per graph on a real CANN host and can fail on any graph, or be
interrupted. So it never writes into the bundle: the new bundle state is staged in a hidden
sibling directory (``genrec.atomic.atomic_directory``) whose existing files are hard links to
the bundle's (no copy, even for multi-GB ``.onnx.data``; nothing ever writes through them), ATC
writes its OM files there, the manifest gains a ``targets.ascend`` build (OM files and their
sha256, soc, precision, gears, the exact command lines, the CANN version) and is verified, and
only then does the staged directory replace the bundle by rename. A failure or an interrupt
removes the staging directory: the bundle is left byte for byte as it was.

The ATC lint runs first and blocks; ATC's own output streams to a log per graph (kept outside
the bundle while ATC runs, so a failure can name it; moved into ``om/<soc>/<precision>/`` on
success) and to the caller's ``on_event`` (the CLI's progress display).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from genrec.atomic import atomic_directory
from genrec.bundle import Bundle, load_bundle, write_manifest
from genrec.errors import BundleError, ExportError
from genrec.manifest import Manifest, TargetBuild

from . import atc_lint
from .atc import (PRECISIONS, AtcRun, build_command, cann_version, check_soc, command_line, find_atc, om_dir,
                  precision_files, run_atc)
from .atc_variant import CACHE_WRITES, variant_for_atc
from .om_sidecar import check_sidecar, read_sidecar

__all__ = ["OM_DOUBLE_MAGIC", "TARGET", "Event", "convert_bundle", "export_and_convert", "lint_for_atc",
           "om_producer", "replace_build", "stage_bundle", "verify_target_builds"]

TARGET = "ascend"
OM_DOUBLE_MAGIC = b"GENREC-ATC-DOUBLE-OM"  # what the test double's OM starts with (tests/ascend_double)
Event = Callable[[str, str, str], None]  # (graph, "start" | "line" | "done" | "failed", text)


def lint_for_atc(b: Bundle) -> None:
    """The ATC lint on every graph, blocking: an ExportError names the first error."""
    for name, spec in b.manifest.graphs.items():
        findings = atc_lint.lint_model(b.path / spec.file)
        errors = [f for f in findings if f.severity == "error"]
        if errors:
            raise ExportError(f"{spec.file} fails the ATC lint ({len(errors)} error(s)); first: {errors[0].format()}; "
                              "nothing was converted")


def om_producer(path: Path) -> str:
    """``double`` for an OM written by the test double, ``atc`` otherwise (ASCEND.md §7.1: a
    double-made OM is stamped so that no one runs it on a real host)."""
    with open(path, "rb") as fh:
        return "double" if fh.read(len(OM_DOUBLE_MAGIC)) == OM_DOUBLE_MAGIC else "atc"


def stage_bundle(src: Path, dst: Path, skip_prefix: str | None = None) -> None:
    """Fill ``dst`` with hard links to every file of ``src`` (copies where links fail), except
    manifest.json and, with ``skip_prefix``, the files of a build being replaced.

    External weights (``*.data``) are copied, not linked: onnx refuses to read external data
    from a file with several hard links (its guard against hard-link attacks), and the staged
    bundle is verified, and read by ATC, before it replaces the original."""
    for root, dirs, files in os.walk(src):
        dirs.sort()
        rel_root = Path(root).relative_to(src)
        for name in sorted(files):
            rel = (rel_root / name).as_posix()
            if rel == "manifest.json" or (skip_prefix and rel.startswith(skip_prefix + "/")):
                continue
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if name.endswith(".data"):
                shutil.copy2(src / rel, target)
                continue
            try:
                os.link(src / rel, target)
            except OSError:
                shutil.copy2(src / rel, target)


def manifest_sha(path: Path) -> str:
    """sha256 of the bundle's manifest.json as it is on disk now."""
    from genrec.bundle import sha256_file

    return sha256_file(path / "manifest.json")


def check_unchanged(path: Path, sha: str) -> None:
    """Refuse to replace a bundle that changed since the conversion read it (another conversion
    or export finished meanwhile): replacing it would silently drop that change."""
    if manifest_sha(path) != sha:
        raise ExportError(f"{path} changed while this conversion ran (another conversion or export?); nothing was "
                          "replaced: run it again")


def replace_build(m: Manifest, build: TargetBuild) -> Manifest:
    """The manifest with ``build`` added to ``targets.ascend`` (replacing the same soc+precision)."""
    builds = [b for b in m.targets.get(TARGET, ()) if (b.soc, b.precision) != (build.soc, build.precision)]
    builds.append(build)
    builds.sort(key=lambda b: (b.soc, b.precision))
    return m.replace(targets={**m.targets, TARGET: tuple(builds)})


def existing_build(m: Manifest, soc: str, precision: str) -> TargetBuild | None:
    return next((b for b in m.targets.get(TARGET, ()) if (b.soc, b.precision) == (soc, precision)), None)


def verify_target_builds(b: Bundle) -> None:
    """Each Ascend build agrees with the bundle (``Bundle.verify_targets``: gears, graphs,
    built from the ONNX held now), its files sit under ``om/<soc>/<precision>/`` and are
    listed, and so is the ATC input of each graph that has one."""
    b.verify_targets()
    m = b.manifest
    for tb in m.targets.get(TARGET, ()):
        where = f"bundle {b.path}: target ascend {tb.soc}/{tb.precision}"
        prefix = om_dir(tb.soc, tb.precision) + "/"
        for graph, rel in tb.graphs.items():
            if not rel.startswith(prefix) or rel not in m.files:
                raise BundleError(f"{where}: {rel} is not a listed file under {prefix}")
            variant = (tb.info.get("atc_graphs") or {}).get(graph)
            if variant is not None and variant.get("file") not in m.files:
                raise BundleError(f"{where}: the ATC input {variant.get('file')} of {graph} is not a listed file")


# --------------------------------------------------------------------------------------------
# conversion


def _default_log_dir(bundle: Path, soc: str, precision: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"genrec-atc-{bundle.name}-{soc}-{precision}-"))


def atc_inputs(bundle_dir: Path, m: Manifest, soc: str, precision: str, cache_write: str) -> dict[str, dict]:
    """Per graph that ATC should not read as exported: its ATC variant (``atc_variant``), written
    under ``om/<soc>/<precision>/``, linted and checked for exact parity."""
    if cache_write not in CACHE_WRITES:
        raise ExportError(f"--cache-write {cache_write!r}: choose one of {', '.join(CACHE_WRITES)}")
    out: dict[str, dict] = {}
    if cache_write == "scatter":
        return out
    for g in m.graphs:
        made = variant_for_atc(bundle_dir, m, g, om_dir(soc, precision))
        if made is None:
            continue
        rel, info = made
        errors = [f for f in atc_lint.lint_model(bundle_dir / rel) if f.severity == "error"]
        if errors:
            raise ExportError(f"{rel} fails the ATC lint; first: {errors[0].format()}; convert with --cache-write scatter")
        out[g] = info
    return out


def convert_bundle(bundle: str | os.PathLike[str], soc: str, precision: str = "fp32", *,
                   atc: str | os.PathLike[str] | None = None, jobs: int = 1, force: bool = False,
                   log_dir: str | os.PathLike[str] | None = None, on_event: Event | None = None,
                   cache_write: str = "where") -> Bundle:
    """Convert every graph of ``bundle`` with ATC for ``soc`` at ``precision``; returns the
    verified bundle. All or nothing: on any failure the bundle is unchanged and the error
    (an ``AtcError`` for ATC's own failures) names ATC's E-codes and the log.

    ``cache_write="where"`` (default) gives ATC a variant of graphs whose cache writes are
    ScatterElements (an AI CPU op on 310P/910/910B) with the writes as Equal + Where, checked
    bitwise against the exported graph; ``"scatter"`` converts the graphs as exported."""
    path = Path(bundle)
    soc = check_soc(soc)
    if precision not in PRECISIONS:
        raise ExportError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if jobs < 1:
        raise ExportError(f"--jobs {jobs}: need at least 1")
    sha = manifest_sha(path) if (path / "manifest.json").is_file() else ""
    b = load_bundle(path)
    m = b.manifest
    if existing_build(m, soc, precision) is not None and not force:
        raise ExportError(f"{path} already has an Ascend build for {soc} {precision} ({om_dir(soc, precision)}); "
                          "pass --force to rebuild it")
    lint_for_atc(b)
    atc_path = find_atc(atc)
    version = cann_version(atc_path)
    emit = on_event or (lambda graph, kind, text: None)
    own_logs = log_dir is None
    logs = _default_log_dir(path, soc, precision) if own_logs else Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    out = om_dir(soc, precision)
    with atomic_directory(path, force=True) as tmp:
        stage_bundle(path, tmp, skip_prefix=out)
        for rel, text in precision_files(tmp, m, soc, precision).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
        variants = atc_inputs(tmp, m, soc, precision, cache_write)
        commands = {g: build_command(m, g, soc, precision, model=variants.get(g, {}).get("file")) for g in m.graphs}
        runs = [AtcRun(g, [str(atc_path), *argv[1:]], f"{out}/{g}", logs / f"{g}.atc.log")
                for g, argv in commands.items()]
        results = _run_all(runs, tmp, jobs, emit)
        sidecars = {}
        for g, om in results.items():
            json_rel = om[:-len(".om")] + ".json"
            mode1 = AtcRun(g, [str(atc_path), "--mode=1", f"--om={om}", f"--json={json_rel}"], om[:-3],
                           logs / f"{g}.mode1.log")
            run_atc(mode1, tmp)  # the OM's JSON sidecar; an AtcError like a build's on failure
            check_sidecar(read_sidecar(tmp / json_rel), m.graphs[g], m.dims.batch_gears, soc, f"{om} ({json_rel})")
            sidecars[g] = json_rel
        for run in runs:
            shutil.copyfile(run.log, tmp / out / run.log.name)
        build = TargetBuild(
            soc=soc, precision=precision, gears=tuple(m.dims.batch_gears), graphs=dict(results),
            commands={g: command_line(c) for g, c in commands.items()}, tool_version=version,
            info={"om_dir": out, "om_producer": om_producer(tmp / next(iter(results.values()))),
                  "source": "convert", "sidecars": sidecars,
                  "logs": {r.graph: f"{out}/{r.log.name}" for r in runs},
                  "built_from": {g: m.files[m.graphs[g].file] for g in results},
                  "config_files": sorted(precision_files_names(m, soc, precision)),
                  "cache_write": cache_write, "atc_graphs": variants,
                  "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        write_manifest(tmp, replace_build(m, build))
        staged = load_bundle(tmp)
        verify_target_builds(staged)
        check_unchanged(path, sha)
    if own_logs:
        shutil.rmtree(logs, ignore_errors=True)
    return load_bundle(path, verify=False)  # verified in full as staged, just before the rename


def precision_files_names(m: Manifest, soc: str, precision: str) -> list[str]:
    out = om_dir(soc, precision)
    if precision == "fp16":
        return [f"{out}/{g}.keep_dtype.cfg" for g in m.graphs]
    if precision == "mixed":
        return [f"{out}/mixlist.json"]
    return []


def _run_all(runs: list[AtcRun], cwd: Path, jobs: int, emit: Event) -> dict[str, str]:
    """Run the ATC calls, ``jobs`` at a time; graph -> bundle-relative .om. On the first failure
    (or an interrupt) every ATC still running is terminated before the error propagates."""
    procs: list[subprocess.Popen] = []
    lock = threading.Lock()
    results: dict[str, str] = {}

    def one(run: AtcRun) -> None:
        emit(run.graph, "start", command_line(run.argv))
        try:
            res = run_atc(run, cwd, lambda g, line: emit(g, "line", line), procs, lock)
        except Exception as e:
            emit(run.graph, "failed", str(e))
            raise
        results[run.graph] = res.om
        emit(run.graph, "done", res.om)

    try:
        if jobs == 1:
            for run in runs:
                one(run)
        else:
            with ThreadPoolExecutor(max_workers=min(jobs, len(runs))) as pool:
                futures = [pool.submit(one, r) for r in runs]
                try:
                    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                    for f in futures:
                        if f.done() and f.exception() is not None:
                            raise f.exception()  # type: ignore[misc]
                    for f in futures:
                        f.result()
                finally:
                    for f in futures:
                        f.cancel()
                    _terminate(procs, lock)
    finally:
        _terminate(procs, lock)
    return {r.graph: results[r.graph] for r in runs}


def _terminate(procs: list[subprocess.Popen], lock: threading.Lock) -> None:
    with lock:
        alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.terminate()
    for p in alive:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# --------------------------------------------------------------------------------------------
# genrec-export --target ascend --soc-version


def export_and_convert(checkpoint: str | os.PathLike[str], output: str | os.PathLike[str], soc: str,
                       precision: str = "fp32", *, atc: str | os.PathLike[str] | None = None, jobs: int = 1,
                       force: bool = False, on_event: Event | None = None, cache_write: str = "where",
                       **export_kwargs: Any) -> Bundle:
    """Export and convert in one go, all or nothing: the bundle is exported into a staging
    directory, converted there, and renamed to ``output`` only when both succeeded."""
    from .export import export_bundle

    soc = check_soc(soc)
    if precision not in PRECISIONS:
        raise ExportError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    find_atc(atc)  # refuse before minutes of export when there is no atc
    out = Path(output)
    if out.exists() and not force:
        raise ExportError(f"{out} exists; pass --force to replace it")
    with atomic_directory(out, force=force) as staging:
        export_bundle(checkpoint, staging, target=TARGET, force=True, **export_kwargs)
        convert_bundle(staging, soc, precision, atc=atc, jobs=jobs, on_event=on_event, cache_write=cache_write)
    return load_bundle(out)
