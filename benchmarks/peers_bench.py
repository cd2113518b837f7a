"""Our onnxruntime backend against what a user would pick instead, in one process.

    python benchmarks/peers_bench.py --threads 1 [--json peers-1t.json]
    python benchmarks/peers_bench.py --threads 2 [--json peers-2t.json]
    python benchmarks/peers_bench.py --threads 1 --lengths 200,512,1024,2048 --batches 1,16 --curve

Model: HSTU at the ``ml-1m`` preset (T=200, d=50, 2 layers, 1 head, N=3706), random
weights, exported to a temporary bundle (``--lengths`` exports one per T). Work timed:

- ``prefill``: the user embedding plus the top-K' over the catalogue for full-length
  histories, at batch 1 (latency) and batch 64 (throughput);
- ``slate``: a 10-item greedy slate at batch 64 (``--slate-batches``), one prefill and then
  a step per item with the KV cache, through the same greedy loop (``generate``).

Contenders, all in this process, taking turns in ``--rounds`` alternating rounds (each round
times every contender ``--repeat`` times and keeps the median; a ratio is the median over
rounds of the per-round ratio, so drift in machine speed hits everyone alike):

- ``ours``: ``get_backend("onnxruntime", bundle).prefill(batch)`` / ``generate``;
- ``bare-ort``: a plain ``onnxruntime.InferenceSession`` on ``prefill.onnx`` (default
  options but the thread count), ``session.run`` with numpy feeds;
- ``torch.compile``: inductor, default mode, ``dynamic=False``, of the model's ``prefill``
  + ``score`` (slates: ``step`` + ``score`` as well, driven by ``generate`` through
  ``get_backend("torch", bundle, compile=True)``); compile time excluded (warm-up);
- ``openvino``: OpenVINO CPU on ``prefill.onnx``, ``INFERENCE_PRECISION_HINT=f32`` (its
  default is bf16 on CPUs that have it, where its top-k agrees with fp32 on a fraction of
  ids only); slates through ``get_backend("openvino", bundle)``;
- ``eager``: the torch backend.

``--curve``: latency and peak memory of prefill and of the slate at every T in ``--lengths``
and batch in ``--batches`` (memory: VmHWM above the resident set just before one call, taken
before any timing, see ``peak_mb``), e.g. ``--contenders ours,torch.compile``. Optional dependencies: ``pip install openvino`` (skipped when absent, said so).
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for every contender")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=10, help="timed runs per contender per round (batch 1: x5)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--contenders", default="ours,bare-ort,torch.compile,openvino,eager")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--slate-batches", default="64")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lengths", default="200", help="history lengths T (one bundle each)")
    p.add_argument("--curve", action="store_true", help="also peak memory per (T, batch); slates at every batch")
    p.add_argument("--json", default=None)
    p.add_argument("--workdir", default=None)
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from serving_bench import prefill_batch  # noqa: E402,F401  (full-length histories as the loop sends them)

NUM_ITEMS, PRESET = 3706, "ml-1m"


def make_bundle(root: Path, t: int, gears: tuple[int, ...]) -> Path:
    import torch

    from genrec.checkpoint import save_checkpoint
    from genrec.exporter import export_bundle
    from genrec.models import build_model, make_config

    torch.manual_seed(0)
    model = build_model(make_config("hstu", NUM_ITEMS, PRESET, max_len=t)).eval()
    ckpt = save_checkpoint(root / f"hstu-T{t}.pt", model, list(range(1, NUM_ITEMS + 1)), {})
    out = root / f"bundle-T{t}"
    export_bundle(ckpt, out, batch_gears=gears, data=None, force=True)
    return out


# --------------------------------------------------------------------------------------------
# contenders: each a factory (bundle, threads) -> {"prefill": fn(batch), "slate": fn(requests)}


def ours(bundle, threads, **options):
    from genrec.runtimes import generate, get_backend

    be = get_backend("onnxruntime", bundle, threads=threads, **options)
    return {"prefill": be.prefill, "slate": lambda reqs, n: generate(be, reqs, n), "close": be.close}


def ours_1t(bundle, threads):
    """Ours on one intra-op thread whatever ``--threads`` says (the small-batch lever)."""
    return ours(bundle, 1)


def ours_dynamic1(bundle, threads):
    """Ours without the batch-1 session of fixed shapes (``static_batch1=False``)."""
    return ours(bundle, threads, static_batch1=False)


def ours_log(bundle, threads):
    """Ours on the graphs as exported, the time-bucket Log kept (``bitcast_buckets=False``)."""
    return ours(bundle, threads, bitcast_buckets=False)


def ours_nospin(bundle, threads):
    """Ours with spinning off (``spinning=False``, the setting for a busy host)."""
    return ours(bundle, threads, spinning=False)


def bare_ort(bundle, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(Path(bundle) / "prefill.onnx"), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(batch):
        feeds = {n: getattr(batch, n) for n in names}
        return sess.run(None, feeds)

    return {"prefill": run}


def torch_compile(bundle, threads, compile=True):
    from genrec.runtimes import generate, get_backend

    be = get_backend("torch.compile" if compile else "torch", bundle, threads=threads)
    return {"prefill": be.prefill, "slate": lambda reqs, n: generate(be, reqs, n), "close": be.close}


def eager(bundle, threads):
    return torch_compile(bundle, threads, compile=False)


def openvino(bundle, threads):
    from genrec.runtimes import generate, get_backend

    be = get_backend("openvino", bundle, threads=threads)
    return {"prefill": be.prefill, "slate": lambda reqs, n: generate(be, reqs, n), "close": be.close}


CONTENDERS = {"ours": ours, "ours-1t": ours_1t, "ours-nospin": ours_nospin, "ours-dynamic1": ours_dynamic1,
              "ours-log": ours_log, "bare-ort": bare_ort, "torch.compile": torch_compile, "openvino": openvino,
              "eager": eager}


# --------------------------------------------------------------------------------------------
# timing


def med(xs) -> float:
    return float(np.median(xs))


SETTLE_S = 0.05  # idle before each contender's turn


def in_rounds(fns: dict, rounds: int, repeat: int, warmup: int) -> dict[str, list[float]]:
    """Per contender the median seconds of ``repeat`` calls in each round; contenders alternate.

    The order rotates every round and each turn starts after ``SETTLE_S`` of idle: threads
    that spin on after their call (OpenMP's, TBB's, onnxruntime's default pools) would
    otherwise take a core from whichever contender runs next, always the same one."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(SETTLE_S)
            fn, ts = fns[k], []
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            out[k].append(med(ts))
    return out


def ratio(num, den) -> float:
    return med([a / b for a, b in zip(num, den)])


COMPILING = ("torch.compile", "openvino")  # compile on their first call of each shape


def peak_mb(fns: dict) -> dict[str, float]:
    """Peak resident-set growth (MiB, VmHWM reset first) of one call per contender, before any
    timing: onnxruntime's arena grows on a configuration's first call and keeps it, so that
    call is the one measured; contenders that compile get one unmeasured call first (their
    compilation is not the call's memory; torch frees its large tensors to the OS)."""
    from genrec.runtimes.bench import _PeakRSS

    out = {}
    for name, fn in fns.items():
        if name in COMPILING:
            fn()
        with _PeakRSS() as m:
            fn()
        out[name] = m.mb
    return out


def main(args) -> dict:
    from genrec.runtimes.bench import synthetic_requests

    names = [c for c in args.contenders.split(",") if c]
    batches = [int(x) for x in args.batches.split(",")]
    slate_batches = batches if args.curve else [int(x) for x in args.slate_batches.split(",") if x.strip()]
    report = {"threads": args.threads, "rounds": args.rounds, "repeat": args.repeat,
              "load_before": list(os.getloadavg()), "cpu": os.cpu_count(), "rows": [], "skipped": {}}
    tmp = tempfile.TemporaryDirectory(prefix="peers-bench-")
    root = Path(args.workdir or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    for t in [int(x) for x in args.lengths.split(",")]:
        gears = tuple(sorted(set(batches) | set(slate_batches)))
        bundle = make_bundle(root, t, gears)
        made = {}
        for name in names:
            try:
                made[name] = CONTENDERS[name](bundle, args.threads)
            except Exception as e:  # noqa: BLE001 - an optional peer that is not installed
                report["skipped"][name] = f"{type(e).__name__}: {e}"
                print(f"skipping {name}: {e}", file=sys.stderr)
        from genrec.runtimes import get_backend

        with get_backend("onnxruntime", bundle, threads=1) as probe:
            dims = probe.dims
        for b in batches:
            batch = prefill_batch(b, dims)
            fns = {n: (lambda f=c["prefill"]: f(batch)) for n, c in made.items()}
            memory = peak_mb(fns) if args.curve else None
            r = in_rounds(fns, args.rounds, args.repeat * (5 if b == 1 else 1), args.warmup)
            row = {"T": t, "batch": b, "work": "prefill",
                   "ms": {n: med(v) * 1e3 for n, v in r.items()},
                   "rounds_ms": {n: [x * 1e3 for x in v] for n, v in r.items()},
                   "speedup_vs": {n: ratio(v, r["ours"]) for n, v in r.items() if "ours" in r}}
            if memory is not None:
                row["peak_mb"] = memory
            report["rows"].append(row)
            print(json.dumps({k: row[k] for k in ("T", "batch", "work", "ms", "speedup_vs", "peak_mb") if k in row}),
                  flush=True)
        for b in slate_batches:
            reqs = synthetic_requests(range(1, NUM_ITEMS + 1), b, t - args.steps, seed=1)[0]
            fns = {n: (lambda f=c["slate"]: f(reqs, args.steps)) for n, c in made.items() if "slate" in c}
            memory = peak_mb(fns) if args.curve else None
            slates = {n: [s.items for s in f()] for n, f in fns.items()}
            same = {n: float(np.mean([a == o for a, o in zip(s, slates["ours"])])) for n, s in slates.items()} \
                if "ours" in slates else {}
            r = in_rounds(fns, args.rounds, max(1, args.repeat // 2), 1)
            row = {"T": t, "batch": b, "work": f"slate{args.steps}",
                   "ms": {n: med(v) * 1e3 for n, v in r.items()},
                   "rounds_ms": {n: [x * 1e3 for x in v] for n, v in r.items()},
                   "speedup_vs": {n: ratio(v, r["ours"]) for n, v in r.items() if "ours" in r},
                   "same_slates_as_ours": same}
            if memory is not None:
                row["peak_mb"] = memory
            report["rows"].append(row)
            print(json.dumps({k: row[k] for k in ("T", "batch", "work", "ms", "speedup_vs", "same_slates_as_ours",
                                                  "peak_mb") if k in row}), flush=True)
        for c in made.values():
            if "close" in c:
                c["close"]()
    report["load_after"] = list(os.getloadavg())
    tmp.cleanup()
    return report


def print_table(report: dict) -> None:
    names = list(report["rows"][0]["ms"])
    print(f"\nthreads {report['threads']}, {report['rounds']} rounds, load {report['load_before'][0]:.2f} -> "
          f"{report['load_after'][0]:.2f}; medians in ms, (x) = contender's time / ours")
    print(f"{'T':>5} {'batch':>5} {'work':8} " + " ".join(f"{n:>22}" for n in names))
    for r in report["rows"]:
        cells = [f"{r['ms'][n]:10.3f} ({r['speedup_vs'].get(n, float('nan')):5.2f}x)" if n in r["ms"] else "-"
                 for n in names]
        print(f"{r['T']:>5} {r['batch']:>5} {r['work']:8} " + " ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    result = main(ARGS)
    print_table(result)
    if ARGS.json:
        Path(ARGS.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {ARGS.json}", file=sys.stderr)
