"""``genrec export`` (= ``genrec-export``) and ``genrec inspect``."""

from __future__ import annotations

from collections import Counter

import click
from genrec.progress import console as make_console
from rich.table import Table

from .checks import DEFAULT_ATOL, DEFAULT_RTOL


def _gears(ctx, param, value: str) -> list[int]:
    try:
        gears = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if not gears or gears[0] < 1:
        raise click.BadParameter("batch gears must be positive integers")
    return gears


def _atc_options(f):
    """--atc, --jobs and --cache-write: how ATC runs, shared by export and convert."""
    for option in reversed((
        click.option("--atc", "atc_path", type=click.Path(), default=None,
                     help="The atc to run (default: atc on PATH)."),
        click.option("--jobs", type=click.IntRange(1, 16), default=1, show_default=True, help="ATC calls at once."),
        click.option("--cache-write", type=click.Choice(["where", "scatter"]), default="where", show_default=True,
                     help="How ATC's graphs write the KV cache: where = Equal + Where on AI Core (an ATC-only "
                          "variant, checked bitwise against the exported graph); scatter = ScatterElements as "
                          "exported (AI CPU on 310P/910/910B)."),
    )):
        f = option(f)
    return f


@click.command("export", short_help="Export a checkpoint to a verified ONNX bundle.")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Bundle directory to write.")
@click.option("--opset", type=click.IntRange(14, 18), default=18, show_default=True)
@click.option("--max-history", type=int, default=None, help="History length T (default: the model's max_len).")
@click.option("--max-new-items", type=int, default=None, help="Generated slots; capacity C = T + this (default: config).")
@click.option("--topk", type=int, default=100, show_default=True, help="K': ids/scores returned per prefill (recommend).")
@click.option("--step-topk", type=int, default=None,
              help="K of the step graph (generate: beams, sampling top-k) [default: min(K', 32)].")
@click.option("--max-exclude", type=int, default=None, help="X: excluded ids per row in the graph (default: max(C, 4T, 256)).")
@click.option("--rank-candidates", type=int, default=32, show_default=True, help="M: candidates per rank call.")
@click.option("--batch-gears", default="1,4,16,64", show_default=True, callback=_gears)
@click.option("--target", type=click.Choice(["onnxruntime", "ascend"]), default="onnxruntime", show_default=True,
              help="ascend makes the ATC-compatibility lint blocking; with --soc-version it also converts.")
@click.option("--soc-version", default=None,
              help="With --target ascend: also run ATC for this SoC (e.g. Ascend310P3) and add the OM files.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "mixed"]), default="fp32", show_default=True,
              help="ATC precision with --soc-version (fp32 is the parity build; see `genrec convert --help`).")
@_atc_options
@click.option("--data", type=click.Path(exists=True), default=None,
              help="Histories for the numeric check (default: the checkpoint's training data).")
@click.option("--steps", type=int, default=5, show_default=True, help="Incremental steps checked after prefill.")
@click.option("--atol", type=float, default=DEFAULT_ATOL, show_default=True, help="Numeric check absolute tolerance.")
@click.option("--rtol", type=float, default=DEFAULT_RTOL, show_default=True, help="Numeric check relative tolerance.")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
def export_command(checkpoint, output, opset, max_history, max_new_items, topk, step_topk, max_exclude,
                   rank_candidates,
                   batch_gears, target, soc_version, precision, atc_path, jobs, cache_write, data, steps, atol, rtol,
                   force):
    """Export CHECKPOINT to prefill/step/rank ONNX graphs, check them, and write the bundle.

    No bundle is written unless every check passes (onnx checker, onnxruntime load,
    numerics against torch on real histories, and with --target ascend the ATC lint).
    With --target ascend --soc-version the bundle is also converted with ATC (as `genrec
    convert`); export and conversion succeed together or leave nothing.
    """
    from .export import export_bundle

    if soc_version is not None and target != "ascend":
        raise click.UsageError("--soc-version needs --target ascend")
    console = make_console(stderr=True)
    kwargs = dict(opset=opset, max_history=max_history, max_new_items=max_new_items, topk=topk,
                  step_topk=step_topk, max_exclude=max_exclude, rank_candidates=rank_candidates,
                  batch_gears=batch_gears, data=data, force=force, steps=steps, atol=atol, rtol=rtol)
    if soc_version is not None:
        from .convert import export_and_convert

        with ConvertDisplay(console) as display:
            bundle = export_and_convert(checkpoint, output, soc_version, precision, atc=atc_path, jobs=jobs,
                                        on_event=display.event, cache_write=cache_write, progress=display.say,
                                        **kwargs)
    else:
        with console.status("exporting") as status:
            def say(msg: str) -> None:
                console.print(f"[green]✓[/] {msg}")
                status.update(msg)

            bundle = export_bundle(checkpoint, output, target=target, progress=say, **kwargs)
    make_console().print(checks_table(bundle.manifest.checks))
    for tb in bundle.manifest.targets.get("ascend", ()):
        click.echo(f"ascend {tb.soc} {tb.precision}: {', '.join(tb.graphs.values())}")
    click.echo(f"wrote {output} ({bundle.arch}, {bundle.dims}, opset {bundle.manifest.opset})")
    click.echo(f"digest {bundle.digest}")


def checks_table(checks) -> Table:
    """The export checks as a table: one row per graph and compared output."""
    table = Table(title="export checks")
    for col in ("graph", "check", "max abs", "max rel", "worst input"):
        table.add_column(col)
    for c in checks:
        if c["check"] == "numerics":
            for g, entry in c["graphs"].items():
                for field, v in entry.items():
                    if isinstance(v, dict):
                        table.add_row(g, field, f"{v['max_abs']:.2e}", f"{v['max_rel']:.2e}", v["worst_input"])
                    elif field == "topk_ids_mismatch_rows":
                        table.add_row(g, "topk_ids", f"{v}/{entry['topk_ids_rows']} rows differ", "", "beyond ties")
        else:
            status = "passed" if c.get("passed") else ("failed" if c.get("blocking", True) else "advisory")
            detail = f"{c.get('errors', 0)} errors, {c.get('warnings', 0)} warnings" if c["check"] == "atc_lint" else ""
            table.add_row(c.get("graph", ""), c["check"], status, detail, "")
    return table


@click.command("inspect", short_help="Summarise a bundle: manifest, IO, op histogram, ATC lint.")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--target", type=click.Choice(["onnxruntime", "ascend"]), default=None,
              help="ascend: also run the ATC-compatibility lint and list its findings.")
@click.option("--soc-version", default=None,
              help="With --target ascend: list the ops that run on AI CPU on this SoC (default: each SoC the "
                   "bundle has OM files for, else Ascend310P3 and Ascend910B4).")
def inspect_command(bundle, target, soc_version):
    """Verify BUNDLE (checksums, IO contract) and print what it holds."""
    import onnx

    from genrec.bundle import load_bundle

    from . import atc_lint

    b = load_bundle(bundle)
    m = b.manifest
    console = make_console()
    console.print(f"[bold]{bundle}[/]: {b.arch}, {b.dims.num_items:,} items, {b.dims}, opset {m.opset}, "
                  f"precisions {', '.join(b.precisions)}", highlight=False)
    console.print(f"digest {b.digest}", highlight=False)
    console.print(f"created {m.created_at} with genrec {m.versions.get('genrec')}, torch {m.versions.get('torch')}; "
                  f"sha256 verified for {len(m.files)} files; graphs, dims and model.pt cross-checked",
                  highlight=False)
    for tname, builds in m.targets.items():
        for tb in builds:
            console.print(f"target {tname}: {tb.soc} {tb.precision}, gears {list(tb.gears)}, "
                          f"{', '.join(tb.graphs.values())}", highlight=False)
    failed = False
    for name, spec in m.graphs.items():
        path = b.graph_path(name)
        table = Table(title=f"{name}.onnx ({spec.exporter}, {path.stat().st_size / 1e6:.2f} MB)")
        table.add_column("io")
        table.add_column("name")
        table.add_column("dtype")
        table.add_column("shape")
        for io, specs in (("input", spec.inputs), ("output", spec.outputs)):
            for v in specs:
                table.add_row(io, v.name, v.dtype, str(list(v.shape)))
        console.print(table)
        model = onnx.load(str(path), load_external_data=False)
        ops = Counter(n.op_type for n in model.graph.node)
        console.print("ops: " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))
        if target == "ascend":
            findings = atc_lint.lint_model(model)
            console.print(atc_lint.lint_summary(findings))
            for f in findings:
                console.print(f"  {f.format()}")
            failed |= atc_lint.has_errors(findings)
    if m.targets:
        from .convert import verify_target_builds

        verify_target_builds(b)
    if target == "ascend":
        console.print(engines_table(b, soc_version))
    if failed:
        raise SystemExit(1)


def engines_table(b, soc_version: str | None) -> Table:
    """Per graph and SoC, the ops ASCEND.md's table puts on AI CPU and what they cost; where the
    bundle has a build with `atc --mode=1` sidecars, the engines that build really uses."""
    import onnx

    from .atc_variant import rewrite_cache_writes
    from .om_sidecar import engine_counts, read_sidecar
    from .op_engines import aicpu_ops, soc_family

    m = b.manifest
    builds = m.targets.get("ascend", ())
    socs = [soc_version] if soc_version else sorted({tb.soc for tb in builds}) or ["Ascend310P3", "Ascend910B4"]
    table = Table(title="ops off AI Core (ASCEND.md §1.5 table; confirm with a real build's atc --mode=1 JSON)")
    for col in ("soc", "graph", "op", "count", "engine", "cost", "MB/call at max gear"):
        table.add_column(col)
    batch = max(m.dims.batch_gears)
    for soc in socs:
        if soc_family(soc) is None:
            table.add_row(soc, "", "", "", "not in the table", "run atc --mode=1 on a real build", "")
            continue
        for name, spec in m.graphs.items():
            model = onnx.load(str(b.path / spec.file), load_external_data=False)
            found = aicpu_ops(model, soc, "fp32", batch)
            # what ATC reads by default: the graph with its cache writes as Where (atc_variant)
            variant = {f.op_type: f for f in aicpu_ops(rewrite_cache_writes(model)[0], soc, "fp32", batch)}
            for f in found:
                v = variant.get(f.op_type)
                mb = f"{f.bytes_per_call / 1e6:.1f}" if f.bytes_per_call else "?"
                count = str(f.count)
                if v is None or v.count != f.count:
                    count += f" ({v.count if v else 0} in the ATC variant)"
                    mb += f" ({v.bytes_per_call / 1e6:.1f})" if v and v.bytes_per_call else " (0)"
                table.add_row(soc, name, f.op_type, count, f.engine, f.cost, mb)
            if not found:
                table.add_row(soc, name, "-", "0", "all ops on AI Core", "", "")
    for tb in builds:
        for graph, rel in (tb.info.get("sidecars") or {}).items():
            counts = engine_counts(read_sidecar(b.path / rel))
            for engine, ops in sorted(counts.items()):
                if "aicore" in engine.lower():
                    continue
                table.add_row(tb.soc, graph, ", ".join(f"{o} {n}" for o, n in ops.most_common()),
                              str(sum(ops.values())), f"{engine} (from {rel}"
                              + (", test double)" if tb.info.get("om_producer") == "double" else ")"), "", "")
    return table


class ConvertDisplay:
    """Progress of the ATC calls on stderr: one line per graph with its state and ATC's latest
    output line (rich), plus the export's own steps when exporting first."""

    def __init__(self, console):
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                 TextColumn("{task.fields[last]}"), console=console, transient=False)
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "ConvertDisplay":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def say(self, msg: str) -> None:
        self.progress.console.print(f"[green]✓[/] {msg}", highlight=False)

    def event(self, graph: str, kind: str, text: str) -> None:
        if kind == "start":
            self.tasks[graph] = self.progress.add_task(f"atc {graph}", total=1, last="")
            self.progress.console.print(f"$ {text}", highlight=False, markup=False, soft_wrap=True)
            return
        task = self.tasks.get(graph)
        if task is None:
            return
        if kind == "line" and text.strip():
            self.progress.update(task, last=text.strip()[:80])
        elif kind == "done":
            self.progress.update(task, completed=1, last=f"wrote {text}")
        elif kind == "failed":
            self.progress.update(task, completed=1, last="failed")


@click.command("convert", short_help="Convert a bundle's graphs to Ascend OM files with ATC.")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--soc-version", required=True, help="ATC --soc_version: Ascend + the Name column of `npu-smi info` "
              "(e.g. Ascend310P3, Ascend910B4).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "mixed"]), default="fp32", show_default=True,
              help="fp32: must_keep_origin_dtype, the parity build; fp16: force_fp16 with the scoring head, TopK, "
                   "log_z and norms kept fp32 (--keep_dtype); mixed: allow_mix_precision with --modify_mixlist.")
@_atc_options
@click.option("--emit-script", type=click.Path(dir_okay=False), default=None,
              help="Write a shell script doing this conversion on a CANN host instead of running ATC here.")
@click.option("--import", "import_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Attach the OM files and JSON sidecars an emitted script produced (its om/<soc>/<precision>).")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None,
              help="Where ATC's output is logged while it runs (default: a new temporary directory; kept on failure).")
@click.option("--force", is_flag=True, help="Rebuild (or re-import) an existing build for this SoC and precision.")
def convert_command(bundle, soc_version, precision, atc_path, jobs, cache_write, emit_script, import_dir, log_dir,
                    force):
    """Run ATC on every graph of BUNDLE (one call per graph) and add the OM files to it.

    \b
    The ATC lint runs first and blocks. OM files go to om/<soc>/<precision>/ in the bundle;
    the manifest records them with their sha256, soc, precision, gears, the exact ATC command
    lines and the CANN version. All or nothing: a failed or interrupted conversion leaves
    the bundle exactly as it was, and names ATC's E-codes and the log.
    """
    if emit_script and import_dir:
        raise click.UsageError("--emit-script and --import are two halves of one flow: use one at a time")
    console = make_console(stderr=True)
    if emit_script:
        from .om_import import emit_script as write_script

        path = write_script(bundle, soc_version, precision, emit_script, cache_write=cache_write)
        click.echo(f"wrote {path}: run `bash {path.name} BUNDLE_DIR` on a CANN host, then "
                   f"`genrec convert {bundle} --soc-version {soc_version} --precision {precision} --import "
                   f"BUNDLE_DIR/om/{soc_version}/{precision}`")
        return
    if import_dir:
        from .om_import import import_build

        b = import_build(bundle, soc_version, precision, import_dir, force=force, cache_write=cache_write)
    else:
        from .convert import convert_bundle

        with ConvertDisplay(console) as display:
            b = convert_bundle(bundle, soc_version, precision, atc=atc_path, jobs=jobs, force=force,
                               log_dir=log_dir, on_event=display.event, cache_write=cache_write)
    tb = next(t for t in b.manifest.targets["ascend"] if (t.soc, t.precision) == (soc_version, precision))
    for graph, rel in tb.graphs.items():
        click.echo(f"{graph}: {rel} sha256 {b.manifest.files[rel][:16]}")
    producer = tb.info.get("om_producer")
    click.echo(f"ascend {tb.soc} {tb.precision}, gears {','.join(map(str, tb.gears))}, CANN {tb.tool_version}"
               + (" (OM files made by the test double, not a real ATC)" if producer == "double" else ""))
    click.echo(f"digest {b.digest}")
