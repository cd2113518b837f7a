"""``genrec bench``: a thin click layer over ``genrec.runtimes.bench.run_bench``."""

from __future__ import annotations

import json

import click


@click.command("bench", short_help="Latency, throughput and memory of backends on a bundle.")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--backends", default="torch,onnxruntime", show_default=True,
              help="Comma-separated BACKEND[:VARIANT] (onnxruntime,onnxruntime:int8-static,...); speedups "
                   "are relative to the first.")
@click.option("--batch-sizes", default="1,8,64", show_default=True, help="Comma-separated requests per batch.")
@click.option("--history-lengths", default="50,200", show_default=True,
              help="Comma-separated history lengths (synthetic histories of exactly that length).")
@click.option("--generate", "steps", type=int, default=None, metavar="N",
              help="Also measure greedy slates of N items.")
@click.option("--repeat", type=int, default=10, show_default=True, help="Timed runs per measurement.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed runs before them.")
@click.option("--threads", type=int, default=None,
              help="CPU threads for every backend. [default: physical cores]")
@click.option("--k", type=int, default=10, show_default=True, help="Items per recommendation.")
@click.option("--data", type=click.Path(exists=True), default=None,
              help="Use real histories from this dataset where they are long enough.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic requests.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the full report (every figure, settings, environment) here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Draw throughput vs batch size and latency vs history length (e.g. bench.png).")
def bench_command(bundle, backends, batch_sizes, history_lengths, steps, repeat, warmup, threads, k,
                  data, seed, json_path, plot_path):
    """Benchmark BUNDLE with each backend in one process: prefill and step latency (p50/p99),
    recommendations (and slates) per second, peak memory, and speedups vs the first backend.

    \b
    genrec bench bundle/ --backends torch,onnxruntime --batch-sizes 1,8,64 --generate 10
    genrec bench bundle/ --backends onnxruntime --json bench.json --plot bench.png
    """
    from pathlib import Path

    from genrec.atomic import atomic_file
    from genrec.progress import console

    from .bench import (BenchSpec, check_plot_path, parse_sizes, plot_report, report_table, run_bench,
                        variant_table)

    names = tuple(b.strip() for b in backends.split(",") if b.strip())
    spec = BenchSpec(backends=names, batch_sizes=parse_sizes(batch_sizes, "--batch-sizes"),
                     history_lengths=parse_sizes(history_lengths, "--history-lengths"),
                     generate=steps, repeat=repeat, warmup=warmup, threads=threads, k=k, seed=seed,
                     data=data)
    if plot_path:  # refuse a bad image type before minutes of measuring
        check_plot_path(plot_path)
    report = run_bench(bundle, spec, progress=lambda msg: click.echo(f"bench: {msg}", err=True))
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
