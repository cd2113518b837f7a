"""Decode-loop benchmark: recommend / greedy / beam / rank throughput of backends on one bundle.

    python benchmarks/decode_bench.py bundle/ --backend onnxruntime --backend torch \\
        --data data/beauty-slice --requests 512 --steps 5 --beams 4

Requests are real histories (the last item held out as the request); each mode runs once to
warm up, then ``--repeat`` times; reported per mode: p50/p99 latency per batch and requests/s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from genrec.data import read_sequences
from genrec.runtimes import Request, SearchParams, generate, get_backend, rank, recommend


def load_requests(data: str, n: int, seed: int = 0) -> list[Request]:
    seqs = read_sequences(data)
    rng = np.random.default_rng(seed)
    raw = seqs.item_map.to_raw
    out = []
    for u in rng.choice(len(seqs), size=min(n, len(seqs)), replace=False):
        items, times = raw(seqs.items[u]).tolist(), seqs.times[u].tolist()
        cands = raw(rng.choice(seqs.num_items, 64, replace=False) + 1).tolist()
        out.append(Request(seqs.users[u], items[:-1], times[:-1], times[-1], candidates=cands))
    return out


def bench(fn, repeat: int) -> tuple[float, float, float]:
    fn(None)  # warm-up (session init, allocator)
    lat: list[float] = []
    t0 = time.perf_counter()
    n = 0
    for _ in range(repeat):
        n += len(fn(lambda k, s: lat.append(s)))
    wall = time.perf_counter() - t0
    p50, p99 = np.percentile(lat, [50, 99]) * 1e3
    return p50, p99, n / wall


def main(args: argparse.Namespace) -> None:
    requests = load_requests(args.data, args.requests)
    for name in args.backend:
        options = {"threads": args.threads} if args.threads else {}
        with get_backend(name, args.bundle, **options) as be:
            modes = {
                "recommend": lambda cb: recommend(be, requests, args.k, on_batch=cb),
                "greedy": lambda cb: generate(be, requests, args.steps, on_batch=cb),
                f"beam{args.beams}": lambda cb: generate(
                    be, requests, args.steps, SearchParams("beam", num_beams=args.beams), on_batch=cb),
                "rank64": lambda cb: rank(be, requests, on_batch=cb),
            }
            for mode, fn in modes.items():
                p50, p99, rps = bench(fn, args.repeat)
                print(f"{name:12s} {mode:10s} p50 {p50:8.2f} ms  p99 {p99:8.2f} ms  {rps:9.1f} req/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--backend", action="append", default=None, help="repeatable; default: onnxruntime")
    parser.add_argument("--data", default="data/beauty-slice")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    ns = parser.parse_args()
    ns.backend = ns.backend or ["onnxruntime"]
    main(ns)
