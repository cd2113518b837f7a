"""``genrec export`` (= ``genrec-export``) and ``genrec inspect``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

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
              help="ascend makes the ATC-compatibility lint blocking.")
@click.option("--data", type=click.Path(exists=True), default=None,
              help="Histories for the numeric check (default: the checkpoint's training data).")
@click.option("--steps", type=int, default=5, show_default=True, help="Incremental steps checked after prefill.")
@click.option("--atol", type=float, default=DEFAULT_ATOL, show_default=True, help="Numeric check absolute tolerance.")
@click.option("--rtol", type=float, default=DEFAULT_RTOL, show_default=True, help="Numeric check relative tolerance.")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
def export_command(checkpoint, output, opset, max_history, max_new_items, topk, step_topk, max_exclude,
                   rank_candidates,
                   batch_gears, target, data, steps, atol, rtol, force):
    """Export CHECKPOINT to prefill/step/rank ONNX graphs, check them, and write the bundle.

    No bundle is written unless every check passes (onnx checker, onnxruntime load,
    numerics against torch on real histories, and with --target ascend the ATC lint).
    """
    from .export import export_bundle

    console = make_console(stderr=True)
    with console.status("exporting") as status:
        def say(msg: str) -> None:
            console.print(f"[green]✓[/] {msg}")
            status.update(msg)

        bundle = export_bundle(checkpoint, output, opset=opset, max_history=max_history,
                               max_new_items=max_new_items, topk=topk, step_topk=step_topk,
                               max_exclude=max_exclude,
                               rank_candidates=rank_candidates, batch_gears=batch_gears, target=target,
                               data=data, force=force, steps=steps, atol=atol, rtol=rtol, progress=say)
    make_console().print(checks_table(bundle.manifest.checks))
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
def inspect_command(bundle, target):
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
    if failed:
        raise SystemExit(1)
