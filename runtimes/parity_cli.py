"""``genrec parity``: the same requests through two backends, judged; exit 1 on a breach."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from genrec.progress import console as make_console


def parse_backend(spec: str, bundle=None) -> tuple[str, str]:
    """``onnxruntime:int8-static`` -> ("onnxruntime", "int8-static"); no suffix = the base
    precision (fp32). With ``bundle``, the variant is resolved against it (``int8`` -> its one
    int8 variant; an unknown one is refused, listing those it has)."""
    from .registry import resolve_backend_variant, split_backend

    name, variant = split_backend(spec)
    if bundle is not None:  # ascend:fp16 names an OM build precision, not an ONNX variant
        return name, resolve_backend_variant(name, bundle, variant)
    return name, variant or "fp32"


def _open(name: str, precision: str, bundle):
    from .registry import get_backend, precision_option

    return get_backend(name, bundle, **precision_option(name, bundle, precision))


@click.command("parity", short_help="Compare two backends on held-out requests (exit 1 on a breach).")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--reference", default="torch", show_default=True, help="Reference BACKEND[:VARIANT].")
@click.option("--candidate", default="onnxruntime", show_default=True,
              help="Candidate BACKEND[:VARIANT]: onnxruntime:fp16, onnxruntime:int8-static (int8 while the bundle "
                   "has one int8 variant).")
@click.option("--data", required=True, type=click.Path(exists=True), help="Interaction data with held-out items.")
@click.option("--users", type=click.IntRange(1), default=500, show_default=True)
@click.option("--generate", "steps", type=click.IntRange(1), default=5, show_default=True, help="Slate length.")
@click.option("--beams", type=click.IntRange(1), default=1, show_default=True, help="1 = greedy slates.")
@click.option("--thresholds", type=click.Path(exists=True, dir_okay=False), help="JSON overrides of the defaults.")
@click.option("--report", type=click.Path(dir_okay=False), help="Write the full report (parity.json).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--expect-digest", metavar="SHA256",
              help="Refuse any bundle whose digest (printed by `genrec inspect`) is not this one.")
def parity_command(bundle, reference, candidate, data, users, steps, beams, thresholds, report, seed,
                   expect_digest):
    """Run held-out requests from --data through REFERENCE and CANDIDATE and compare them at
    tensor level (every graph and step), list level (top-k, slates) and task level
    (HR@10, NDCG@10, MRR). Exit 0 when every threshold holds, 1 on a breach."""
    from genrec.atomic import atomic_file
    from genrec.bundle import load_bundle

    from .parity import load_thresholds, requests_from_data, run_parity

    if report:
        from genrec.atomic import check_writable

        check_writable(report)  # before minutes of comparison, not after
    b = load_bundle(bundle, expect_digest=expect_digest)
    ref_name, ref_prec = parse_backend(reference, b)
    cand_name, cand_prec = parse_backend(candidate, b)
    th = load_thresholds(thresholds, cand_prec)
    with _open(ref_name, ref_prec, b) as ref, _open(cand_name, cand_prec, b) as cand:
        # held-out data is read through the reference's own id map, never the candidate's
        reqs = requests_from_data(data, ref.item_map.to_list(), users, ref.dims.max_history, seed)
        result = run_parity(ref, cand, reqs, steps=steps, beams=beams, thresholds=th, seed=seed)
    result["reference"], result["candidate"], result["digest"] = reference, candidate, b.digest
    if report:
        with atomic_file(Path(report)) as f:
            json.dump(result, f, indent=2, default=str)
    out = make_console()
    if "tensor" in result:  # absent when the backends disagree on the model before any request
        out.print(summary_table(result))
    if result["passed"]:
        out.print(f"PASSED parity {reference} vs {candidate} on {result['requests']} requests")
        return
    err = make_console(stderr=True)
    for line in result["breaches"]:
        err.print(f"breach: {line}", highlight=False)
    err.print(f"FAILED parity {reference} vs {candidate}: {len(result['breaches'])} breach(es)")
    raise SystemExit(1)


def summary_table(r: dict) -> Table:
    from .parity import LIST_LIMITS, TENSOR_LIMITS

    t = Table(title=f"parity {r['reference']} vs {r['candidate']} ({r['requests']} requests, {r['steps']} steps)")
    for col in ("level", "what", "value", "threshold"):
        t.add_column(col)
    th = r["thresholds"]
    lim = {name: th[attr] for name, attr in TENSOR_LIMITS.items()}
    for call, per in r["tensor"].items():
        for name, st in per.items():
            extra = f", cos {st['cosine_min']:.6f}" if name == "user_emb" else ""
            t.add_row("tensor", f"{call}: {name}", f"abs {st['max_abs']:.2e} rel {st['max_rel']:.2e}{extra}",
                      "-" if lim.get(name) is None else f"≤ {lim[name]:g}")
    lst = r["list"]
    for key, (attr, _) in LIST_LIMITS.items():
        limit = th[attr]
        t.add_row("list", key, f"{lst[key]:.4f}", "-" if limit is None else f"≥ {limit:g}")
    t.add_row("list", "first divergent step", str(lst["first_divergent_step"] or "none"), "")
    task = r["task"]
    for m, d in task["delta"].items():
        t.add_row("task", m, f"{task['reference'][m]:.4f} → {task['candidate'][m]:.4f} (Δ {d:+.4f})",
                  "-" if th["metric_delta_max"] is None else f"|Δ| ≤ {th['metric_delta_max']:g}")
    return t
