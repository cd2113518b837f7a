"""Exclusion benchmark: how often long histories take the exact slow path, and what it costs.

    python benchmarks/exclusion_bench.py --out /tmp/exclusion-bench [--checkpoint model.pt]
        [--requests 512] [--train-minutes 2] [--json report.json]

Held-out MovieLens-1M users have histories of 20 to ~2,300 items (heavy-tailed: median ~96,
mean ~165). A default bundle (T=50, X=256, K'=100, step K=32) masks X exclusions in the graph;
the loop handles the rest on the host (``genrec.runtimes.exact``): filtered from the graph's
top-K, generate's ``log_z`` corrected by their mass, and a row whose filtered top-K holds too
few items (or whose overflow held most of the mass) scored over the whole catalogue on the
host. Until that path existed such requests were refused when their exclusions exceeded
X + K - needed; this script reports both shares.

Data: request lengths drawn from a log-normal fitted to ML-1M's median and mean, clipped to
20..2,300; each history holds distinct real items of the shipped Beauty slice, made in two
ways, each measured: ``joined``, consecutive users' histories joined oldest first (real items
and time gaps, a day between users); ``popular``, items drawn without replacement in
proportion to their interaction counts, the way a heavy ML-1M user has seen most of the
popular catalogue, which is what a trained model ranks first (the harder case: Beauty's
8,877 items are a long tail, ML-1M's 3,706 are not). The model is a small
HSTU trained on the slice for ``--train-minutes`` (a random one would score history items like
any other, which understates how often the overflow covers the top-K), or ``--checkpoint``.

Measured on the onnxruntime backend, in one process, alternating in rounds (this kind of
shared VM drifts): requests/s over all requests, over the requests that never take the slow
path, and over those that do; host milliseconds per slow row (from ``exact.STATS``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from genrec.data import read_sequences
from genrec.runtimes import Request, generate, get_backend, recommend
from genrec.runtimes import exact

SLICE = Path(__file__).resolve().parents[1] / "data" / "beauty-slice"
ML1M_MEDIAN, ML1M_MEAN = 96.0, 165.0  # history lengths of ML-1M's users
MIN_LEN, MAX_LEN = 20, 2300
DAY = 86_400


def ml1m_lengths(n: int, rng: np.random.Generator) -> np.ndarray:
    """History lengths from the log-normal with ML-1M's median and mean, clipped to 20..2,300."""
    mu = math.log(ML1M_MEDIAN)
    sigma = math.sqrt(2 * math.log(ML1M_MEAN / ML1M_MEDIAN))  # mean = exp(mu + sigma^2 / 2)
    return np.clip(np.round(rng.lognormal(mu, sigma, n)), MIN_LEN, MAX_LEN).astype(int)


def long_requests(seqs, lengths: np.ndarray, rng: np.random.Generator) -> list[Request]:
    """One request per length: distinct real items of consecutive users from a random start."""
    raw = seqs.item_map.to_raw
    out = []
    for j, length in enumerate(lengths):
        items, gaps, seen = [], [], set()
        u = int(rng.integers(len(seqs)))
        while len(items) < length:
            ts = seqs.times[u % len(seqs)]
            for it, gap in zip(seqs.items[u % len(seqs)].tolist(), np.diff(ts, prepend=ts[0] - DAY).tolist()):
                if it not in seen and len(items) < length:
                    seen.add(it)
                    items.append(it)
                    gaps.append(gap)
            u += 1
        times = (1_300_000_000 + np.cumsum(gaps)).tolist()
        out.append(Request(f"u{j}", raw(np.asarray(items)).tolist(), times, times[-1] + 3600))
    return out


def popular_requests(seqs, lengths: np.ndarray, rng: np.random.Generator) -> list[Request]:
    """One request per length: distinct items drawn in proportion to their interaction counts,
    in random order, with a random user's real time gaps repeated."""
    raw = seqs.item_map.to_raw
    counts = np.bincount(np.concatenate(seqs.items), minlength=seqs.num_items + 1)[1:].astype(float)
    out = []
    for j, length in enumerate(lengths):
        items = rng.choice(seqs.num_items, size=length, replace=False, p=counts / counts.sum()) + 1
        ts = seqs.times[int(rng.integers(len(seqs)))]
        gaps = np.resize(np.maximum(np.diff(ts, prepend=ts[0] - DAY), 0), length).astype(float)
        gaps *= min(1.0, 2 ** 30 / gaps.sum())  # keep the span well inside int32 seconds
        times = (1_300_000_000 + np.cumsum(gaps).astype(np.int64)).tolist()
        out.append(Request(f"p{j}", raw(items).tolist(), times, times[-1] + 3600))
    return out


def trained_checkpoint(path: Path, minutes: float, threads: int) -> Path:
    """A small HSTU (T=50) trained on the shipped slice for about ``minutes``."""
    from genrec.checkpoint import save_checkpoint
    from genrec.data import leave_one_out
    from genrec.models import make_config
    from genrec.training import TrainConfig, init_model, train

    split = leave_one_out(read_sequences(SLICE))
    model = init_model(make_config("hstu", split.num_items, "small"), 0)
    cfg = TrainConfig(epochs=40, max_minutes=minutes, eval_users=300, threads=threads, patience=3)
    history = train(model, split, cfg)
    save_checkpoint(path, model.eval(), split.item_map.to_list(),
                    {"dataset": str(SLICE), "best_valid_ndcg10": history["best_valid_ndcg10"]})
    print(f"trained {len(history['epochs'])} epoch(s), valid NDCG@10 {history['best_valid_ndcg10']:.4f}")
    return path


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(name: str, run, requests: list[Request], x: int, rounds: int) -> dict[str, Any]:
    """Slow-path share of ``run`` over ``requests``; then, alternating in ``rounds`` (medians),
    requests/s of: all requests (``exact``), the same requests with their histories cut to the
    last X items (``cut_to_x``: the same graph work with nothing beyond X, what they cost before
    the exact path, answering a different question), and all but the slow ones (``fast_only``);
    the share of ``exact``'s wall time spent on overflowing rows (``exact.resolve``: filter,
    log_z correction, host scoring) and on host scoring alone, and host ms per row."""
    exact.STATS.reset()
    run(requests)  # also the warm-up (the first host row loads the item vectors)
    st = dataclasses.replace(exact.STATS, slow_requests=set(exact.STATS.slow_requests))
    slow = sorted(st.slow_requests)
    cut = [Request(r.user_id, r.items[-x:], r.timestamps[-x:], r.request_time) for r in requests]
    subsets = {"exact": requests, "cut_to_x": cut,
               "fast_only": [r for i, r in enumerate(requests) if i not in st.slow_requests]}
    rates: dict[str, list[float]] = {k: [] for k in subsets}
    host_share: list[float] = []
    resolve_share: list[float] = []
    host_ms: list[float] = []
    for _ in range(rounds):
        for key, reqs in subsets.items():
            exact.STATS.reset()
            wall = timed(lambda: run(reqs))
            rates[key].append(len(reqs) / wall)
            if key == "exact":
                host_share.append(exact.STATS.host_seconds / wall)
                resolve_share.append(exact.STATS.seconds / wall)
                if exact.STATS.host_rows:
                    host_ms.append(1e3 * exact.STATS.host_seconds / exact.STATS.host_rows)
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "mode": name, "requests": len(requests), "slow_requests": len(slow),
        "slow_share": len(slow) / len(requests), "rows_resolved": st.rows,
        "overflow_rows": st.overflow_rows, "corrected_rows": st.corrected_rows, "host_rows": st.host_rows,
        "host_ms_per_row": statistics.median(host_ms) if host_ms else None,
        "host_share_of_wall": statistics.median(host_share),
        "exact_path_share_of_wall": statistics.median(resolve_share), "req_per_s": med,
        "exact_vs_cut": med["exact"] / med["cut_to_x"],
        "slow_lengths": [len(requests[i].items) for i in slow],
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out or tempfile.mkdtemp(prefix="exclusion-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.checkpoint) if args.checkpoint else out / "model.pt"
    if not ckpt.exists():
        trained_checkpoint(ckpt, args.train_minutes, args.threads)
    bundle = out / "bundle"
    if not (bundle / "manifest.json").exists():
        from genrec.exporter import export_bundle

        export_bundle(ckpt, bundle, data=SLICE, force=True)  # the default dims
    rng = np.random.default_rng(args.seed)
    seqs = read_sequences(SLICE)
    lengths = ml1m_lengths(args.requests, rng)
    report: dict[str, Any] = {"lengths": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                                          "mean": float(lengths.mean()), "max": int(lengths.max())}}
    with get_backend("onnxruntime", bundle, threads=args.threads) as be:
        d = be.dims
        report["dims"] = {"T": d.max_history, "X": d.max_exclude, "K'": d.topk, "step_K": d.step_topk,
                          "N": d.num_items, "gears": list(d.batch_gears)}
        steps = min(args.steps, d.capacity - d.max_history)
        for kind, make in (("joined", long_requests), ("popular", popular_requests)):
            requests = make(seqs, lengths, rng)
            excluded = np.array([len(set(r.items)) for r in requests])
            # the rule that refused requests before the exact path: needed + overflow > K
            part: dict[str, Any] = {"refused_before": {
                "recommend": float(np.mean(excluded > d.max_exclude + d.topk - args.k)),
                "greedy": float(np.mean(excluded > d.max_exclude + d.step_topk - 1))},
                "overflow_share": float(np.mean(excluded > d.max_exclude))}
            part["recommend"] = measure(f"recommend k={args.k}", lambda rs: recommend(be, rs, args.k),
                                        requests, d.max_exclude, args.rounds)
            part["greedy"] = measure(f"greedy {steps} steps", lambda rs: generate(be, rs, steps),
                                     requests, d.max_exclude, args.rounds)
            # the hard case: k = K', so any overflow item in a row's top-K' sends it to the host
            part["recommend_all"] = measure(f"recommend k={d.topk}", lambda rs: recommend(be, rs, d.topk),
                                            requests, d.max_exclude, args.rounds)
            report[kind] = part
            print_report(report, kind)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def print_report(report: dict[str, Any], kind: str) -> None:
    ln, r = report["lengths"], report[kind]
    print(f"[{kind} histories] bundle {report['dims']}; lengths min {ln['min']} median "
          f"{ln['median']:.0f} mean {ln['mean']:.0f} max {ln['max']}")
    print(f"exclusions beyond X: {r['overflow_share']:.1%} of requests; refused before the exact path: "
          f"recommend {r['refused_before']['recommend']:.1%}, greedy {r['refused_before']['greedy']:.1%}")
    for key in ("recommend", "greedy", "recommend_all"):
        m = r[key]
        rate = m["req_per_s"]
        host = "-" if m["host_ms_per_row"] is None else f"{m['host_ms_per_row']:.2f}"
        print(f"{m['mode']}: slow path {m['slow_requests']}/{m['requests']} requests "
              f"({m['slow_share']:.1%}); rows: {m['overflow_rows']} overflowing of {m['rows_resolved']}, "
              f"{m['corrected_rows']} log_z-corrected, {m['host_rows']} host-scored ({host} ms each)")
        print(f"    req/s: exact {rate['exact']:.1f}, histories cut to X {rate['cut_to_x']:.1f} "
              f"(ratio {m['exact_vs_cut']:.3f}), without the slow requests {rate['fast_only']:.1f}")
        print(f"    share of the wall time: overflowing rows {m['exact_path_share_of_wall']:.2%}, "
              f"of which host scoring {m['host_share_of_wall']:.2%}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="work directory (model.pt, bundle/); default a new temp dir")
    p.add_argument("--checkpoint", help="use this checkpoint instead of training one")
    p.add_argument("--train-minutes", type=float, default=2.0)
    p.add_argument("--requests", type=int, default=512)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the report here")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
