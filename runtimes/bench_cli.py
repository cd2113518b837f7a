"""``genrec bench``: a thin click layer over ``genrec.runtimes.bench.run_bench``."""

from __future__ import annotations

import json

import click


@click.command("bench", short_help="Latency, throughput and memory of backends on bundles.")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--backends", default="torch,onnxruntime", show_default=True,
              help="Comma-separated BACKEND[:VARIANT] (onnxruntime, onnxruntime:int8-static, torch, "
                   "torch.compile, openvino, ...); speedups are relative to the first.")
@click.option("--batch-sizes", default="1,8,64", show_default=True, help="Comma-separated requests per batch.")
@click.option("--history-lengths", default=None,
              help="Comma-separated history lengths (synthetic histories of exactly that length). "
                   "[default: 50,200 with one bundle; each bundle's own T with several]")
@click.option("--generate", "steps", type=int, default=None, metavar="N",
              help="Also measure greedy slates of N items.")
@click.option("--rounds", type=int, default=5, show_default=True,
              help="Rounds in which the backends take turns; figures are medians over rounds.")
@click.option("--repeat", type=int, default=10, show_default=True,
              help="Timed runs per backend per round (the round keeps their median).")
@click.option("--warmup", type=int, default=2, show_default=True,
              help="Untimed runs before the rounds (>= 1 with torch.compile or openvino: they compile "
                   "on the first call of each batch size).")
@click.option("--threads", type=int, default=None,
              help="CPU threads for every backend. [default: physical cores]")
@click.option("--k", type=int, default=10, show_default=True, help="Items per recommendation.")
@click.option("--data", type=click.Path(exists=True), default=None,
              help="Use real histories from this dataset where they are long enough.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic requests.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the full report (every figure, settings, environment) here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Draw throughput vs batch size and latency vs history length; with several bundles, "
                   "prefill latency, slate latency and peak memory vs T (e.g. bench.png).")
def bench_command(bundles, backends, batch_sizes, history_lengths, steps, rounds, repeat, warmup, threads, k,
                  data, seed, json_path, plot_path):
    """Benchmark each BUNDLE with every backend in one process: prefill and step latency
    (p50/p99), recommendations (and slates) per second, peak memory, and speedups vs the first
    backend. The backends take turns in --rounds rounds (a shared machine drifts; each ratio
    is the median of per-round ratios). Several bundles (one model exported at several T)
    draw the curve against T.

    \b
    genrec bench bundle/ --backends torch,onnxruntime --batch-sizes 1,8,64 --generate 10
    genrec bench bundle/ --backends onnxruntime --json bench.json --plot bench.png
    genrec bench b200/ b512/ b1024/ b2048/ --backends onnxruntime,torch.compile,openvino \\
        --batch-sizes 1,16 --generate 10 --plot curve.png
    """
    from pathlib import Path

    from genrec.atomic import atomic_file
    from genrec.progress import console

    from .bench import (BenchSpec, check_plot_path, parse_sizes, plot_report, report_table, run_bench,
                        variant_table)

    names = tuple(b.strip() for b in backends.split(",") if b.strip())
    if history_lengths is not None:
        lengths = parse_sizes(history_lengths, "--history-lengths")
    else:  # one bundle: today's grid; several: each at its own full T (the curve)
        lengths = (50, 200) if len(bundles) == 1 else None
    spec = BenchSpec(backends=names, batch_sizes=parse_sizes(batch_sizes, "--batch-sizes"),
                     history_lengths=lengths, generate=steps, repeat=repeat, warmup=warmup, rounds=rounds,
                     threads=threads, k=k, seed=seed, data=data)
    if plot_path:  # refuse a bad image type before minutes of measuring
        check_plot_path(plot_path)
    report = run_bench(list(bundles), spec, progress=lambda msg: click.echo(f"bench: {msg}", err=True))
    console().print(report_table(report))
    if len(report["backends"]) > 1 or any(i["precision"] != report["dims"]["precision"]
                                          for i in report["backends"].values()):
        console().print(variant_table(report))
    click.echo(f"memory: {report['memory_method']}")
    if json_path:
        with atomic_file(Path(json_path), "w") as fh:
            json.dump(report, fh, indent=2)
        click.echo(f"wrote {json_path}")
    if plot_path:
        plot_report(report, plot_path)
        click.echo(f"wrote {plot_path}")
