"""``genrec run`` / ``genrec-run``: JSONL requests through a backend and the shared loop.

The command is a thin layer over the API: ``get_backend`` + ``recommend`` / ``generate`` /
``rank``. Every input line is parsed and validated before anything runs; a bad line stops
the run (no output file is written) unless ``--skip-invalid`` is given, in which case the
valid lines run and the skipped ones are listed on stderr.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from genrec.errors import DataError

STRATEGIES = ("greedy", "beam", "sample")


def _parse_kv(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--provider-option")
        out[key.strip()] = value.strip()
    return out


def read_requests(path: str, backend, need_candidates: bool) -> tuple[list, list[str]]:
    """Parse and validate every line: (valid Requests, error messages naming their lines)."""
    from .requests import request_from_json, validate_request

    name = "<stdin>" if path == "-" else path
    try:
        stream = click.get_text_stream("stdin") if path == "-" else open(path, encoding="utf-8")
        with stream:
            lines = stream.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{name}: cannot read requests ({e})") from None
    d, valid, errors = backend.dims, [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name} line {n}"
        try:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            req = request_from_json(obj, where)
            validate_request(req, backend.item_map, d.needs_timestamps, where, d.max_history,
                             need_candidates)
            valid.append(req)
        except DataError as e:
            errors.append(str(e))
    return valid, errors


def _summary(n: int, skipped: int, latencies: list[float]) -> str:
    import numpy as np

    total = sum(latencies)
    if not latencies:
        return f"{n} requests" + (f", {skipped} skipped" if skipped else "")
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
    return (f"{n} requests" + (f", {skipped} skipped" if skipped else "")
            + f" in {len(latencies)} batch{'es' if len(latencies) > 1 else ''}: "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms per batch, "
            f"{n / total if total > 0 else math.inf:.1f} requests/s")


@click.command("run", short_help="Recommend, generate or rank JSONL requests with a bundle.")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--backend", default="onnxruntime", show_default=True,
              help="Backend name: onnxruntime, torch, or one installed through the genrec.backends entry point.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "cann"]), default=None,
              help="onnxruntime execution provider. [default: cpu]")
@click.option("--provider-option", "provider_options", multiple=True, metavar="KEY=VALUE",
              help="onnxruntime provider option, passed through (repeatable).")
@click.option("--device", default=None, help="torch device: cpu, cuda or npu. [default: cpu]")
@click.option("--precision", default=None, help="onnxruntime graph variant: fp32, fp16, int8. [default: the bundle's]")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (onnxruntime intra-op, torch).")
@click.option("--input", "input_path", default="-", show_default=True,
              type=click.Path(dir_okay=False, allow_dash=True), help="Requests, one JSON object per line.")
@click.option("--output", "output_path", default="-", show_default=True,
              type=click.Path(dir_okay=False, allow_dash=True), help="Results, one JSON line per request.")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True, help="Items per request (recommend).")
@click.option("--generate", "steps", type=click.IntRange(min=1), default=None, metavar="N",
              help="Generate slates of N items instead of one-shot top-k.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=None,
              help="How --generate picks items. [default: greedy]")
@click.option("--beams", type=click.IntRange(min=1), default=None, help="Beam width (--strategy beam). [default: 4]")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Sampling temperature (--strategy sample). [default: 1.0]")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Sample among the k most likely items.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None, help="Nucleus sampling mass.")
@click.option("--seed", type=int, default=None, help="Sampling seed (reproducible slates).")
@click.option("--allow-repeats", is_flag=True, help="Allow history items and repeats in a slate.")
@click.option("--rank", "rank_mode", is_flag=True, help="Score each request's candidates (M-FALCON).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Requests per batch. [default: the largest batch gear]")
@click.option("--skip-invalid", is_flag=True, help="Skip bad lines (listed on stderr) instead of stopping.")
def run_command(bundle, backend, provider, provider_options, device, precision, threads, input_path,
                output_path, k, steps, strategy, beams, temperature, top_k, top_p, seed, allow_repeats,
                rank_mode, batch_size, skip_invalid):
    """Run JSONL requests through BUNDLE (a bundle directory; for --backend torch also a
    checkpoint file) and write one JSON line per request: user_id, items, scores.

    \b
    A request: {"user_id": "u1", "items": [12, 7, 40], "timestamps": [...],
                "request_time": 1700000000, "exclude": [...], "candidates": [...]}
    (timestamps are required by hstu bundles; candidates by --rank)

    \b
    genrec-run bundle/ --input requests.jsonl --output recs.jsonl --k 10
    genrec-run bundle/ --generate 5 --strategy beam --beams 4 < requests.jsonl
    genrec-run bundle/ --backend torch --rank --input requests.jsonl
    """
    from genrec.atomic import atomic_file

    from . import decoding
    from .registry import get_backend

    if steps is not None and rank_mode:
        raise click.UsageError("--generate and --rank are different modes; choose one")
    given = {"--strategy": strategy is not None, "--beams": beams is not None,
             "--temperature": temperature is not None, "--top-k": top_k is not None,
             "--top-p": top_p is not None, "--seed": seed is not None, "--allow-repeats": allow_repeats}
    if steps is None and any(given.values()):
        raise click.UsageError(f"{', '.join(f for f, g in given.items() if g)} require --generate N")
    strategy = strategy or "greedy"
    wrong = [f for f in ("--temperature", "--top-k", "--top-p", "--seed") if given[f] and strategy != "sample"]
    wrong += ["--beams"] if given["--beams"] and strategy != "beam" else []
    if wrong:
        raise click.UsageError(f"{', '.join(wrong)} do not apply to --strategy {strategy}")
    params = None
    if steps is not None:
        params = decoding.SearchParams(strategy=strategy, num_beams=beams or 4,
                                       temperature=temperature or 1.0, top_k=top_k, top_p=top_p,
                                       seed=seed, allow_repeats=allow_repeats)
    options = {"provider": provider, "device": device, "precision": precision, "threads": threads,
               "provider_options": _parse_kv(provider_options) or None}
    with get_backend(backend, bundle, **{k_: v for k_, v in options.items() if v is not None}) as be:
        requests, errors = read_requests(input_path, be, rank_mode)
        if errors and not skip_invalid:
            more = f" ({len(errors) - 1} more bad line(s))" if len(errors) > 1 else ""
            raise DataError(f"{errors[0]}{more}; nothing was written (--skip-invalid runs the valid lines)")
        for e in errors:
            click.echo(f"skipped {e}", err=True)
        latencies: list[float] = []
        with _progress(len(requests), enabled=input_path != "-") as advance:
            def on_batch(n: int, seconds: float) -> None:
                latencies.append(seconds)
                advance(n)

            if rank_mode:
                results = decoding.rank(be, requests, batch_size=batch_size, on_batch=on_batch)
            elif steps is not None:
                results = decoding.generate(be, requests, steps, params, batch_size=batch_size,
                                            on_batch=on_batch)
            else:
                results = decoding.recommend(be, requests, k, batch_size=batch_size, on_batch=on_batch)
    lines = [json.dumps({"user_id": r.user_id, "items": r.items, "scores": r.scores,
                         **({"score": r.score} if r.score is not None else {})}) + "\n" for r in results]
    if output_path == "-":
        click.get_text_stream("stdout").writelines(lines)
    else:
        with atomic_file(Path(output_path), "w") as fh:
            fh.writelines(lines)
    click.echo(_summary(len(results), len(errors), latencies), err=True)


class _progress:
    """A rich progress bar on stderr for file inputs; a no-op otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self._bar = total, enabled and total > 0, None

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        if not (self.enabled and console.is_terminal):  # keep piped stderr to the summary line
            return lambda n: None
        self._bar = Progress(TextColumn("requests"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=console, transient=True)
        self._bar.__enter__()
        task = self._bar.add_task("", total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
