"""Throughput of ``genrec-run --engine ray`` with 1 and 2 actors against the single-process run.

    python benchmarks/ray_throughput.py [--requests 20000] [--rounds 3] [--json out.json]

A random-weight HSTU (``small`` preset, T=50, gears 1/16/64) is exported over the shipped
Beauty slice to a temporary bundle; the requests are the slice's real histories (with their
timestamps), repeated up to ``--requests`` with distinct user ids, in one JSONL file. One
local Ray instance (``num_cpus`` = the machine's cores) is started once, outside the timings.

Each round runs the same command three ways, in rotating order, through the CLI in this
process: ``genrec-run`` (``--threads 1``), then ``--engine ray --actors 1`` and ``--actors 2``
(one thread per actor). Two figures per contender:

- **job**: requests / wall time of the whole command, as a user sees it: for Ray that
  includes starting the actors (each opens the bundle: a few seconds) and the driver's
  reading and writing;
- **busy**: requests / time spent inside the backend's batches (genrec-run's own
  ``requests/s`` figure; for Ray the sum over actors of each actor's rate while busy), i.e.
  what the pool delivers once it is up.

A ratio is the median over rounds of the per-round ratio (this shared VM drifts: see
``serving_bench.py``). Results go to ``benchmarks/results/ray_throughput.json``. On a
2-core machine 2 actors are the most that can help, and anything else running on it
(another engineer's tests) takes from them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT / "data" / "beauty-slice"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "ray_throughput.json"))
    p.add_argument("--workdir", default=None, help="bundle and files here (default: a temp dir)")
    return p.parse_args(argv)


def make_bundle(work: Path) -> Path:
    import torch

    from genrec.checkpoint import save_checkpoint
    from genrec.data import read_sequences
    from genrec.exporter import export_bundle
    from genrec.models import build_model, make_config

    data = read_sequences(SLICE)
    torch.manual_seed(0)
    model = build_model(make_config("hstu", data.num_items, "small", max_len=50, max_new_items=8)).eval()
    ckpt = save_checkpoint(work / "hstu.pt", model, data.item_map.to_list(), {"dataset": str(SLICE)})
    export_bundle(ckpt, work / "bundle", batch_gears=(1, 16, 64), data=SLICE)
    return work / "bundle"


def make_requests(path: Path, n: int) -> None:
    from genrec.data import read_sequences

    data = read_sequences(SLICE)
    raw = data.item_map.to_raw
    users = [(raw(data.items[u]).tolist(), data.times[u].tolist()) for u in range(len(data))]
    with open(path, "w") as fh:
        for i in range(n):
            items, times = users[i % len(users)]
            fh.write(json.dumps({"user_id": f"u{i}", "items": items, "timestamps": times,
                                 "request_time": times[-1] + 3600}) + "\n")


def run(args: list[str]) -> tuple[float, str]:
    """(wall seconds, stderr) of one genrec-run in this process; exits on failure."""
    from genrec.cli import invoke
    from genrec.runtimes.cli import run_command

    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err):
        code = invoke(run_command, args)
    wall = time.perf_counter() - t0
    if code != 0:
        sys.exit(f"genrec-run {' '.join(args)} failed ({code}):\n{err.getvalue()}")
    return wall, err.getvalue()


def busy_rate(stderr: str) -> float:
    """genrec-run's requests/s (time in batches), or the sum of the actors' rates while busy."""
    actors = re.findall(r"^  actor .*?([0-9.]+) requests/s while busy$", stderr, re.M)
    if actors:
        return sum(map(float, actors))
    return float(re.search(r"([0-9.]+) requests/s$", stderr.strip().splitlines()[-1]).group(1))


def main(argv=None) -> None:
    a = parse_args(argv)
    import logging

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        bundle = make_bundle(work)
        src = work / "requests.jsonl"
        make_requests(src, a.requests)
        cores = os.cpu_count() or 1
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        contenders = {
            "single": [str(bundle), "--input", str(src), "--output", str(work / "single.jsonl"), "--threads", "1"],
            "ray-1": [str(bundle), "--engine", "ray", "--actors", "1", "--input", str(src),
                      "--output", str(work / "ray1.parquet")],
            "ray-2": [str(bundle), "--engine", "ray", "--actors", "2", "--input", str(src),
                      "--output", str(work / "ray2.parquet")],
        }
        rounds = []
        names = list(contenders)
        for r in range(a.rounds):
            order = names[r % 3:] + names[:r % 3]
            got = {}
            for name in order:
                wall, err = run(contenders[name])
                got[name] = {"job": a.requests / wall, "busy": busy_rate(err), "wall_s": wall}
                print(f"round {r + 1} {name:7s} job {got[name]['job']:8.1f} req/s ({wall:5.1f} s)  "
                      f"busy {got[name]['busy']:8.1f} req/s", flush=True)
            rounds.append(got)
        ray.shutdown()
    ratio = {f"{n}/single {kind}": statistics.median(g[n][kind] / g["single"][kind] for g in rounds)
             for n in ("ray-1", "ray-2") for kind in ("job", "busy")}
    result = {"requests": a.requests, "rounds": rounds, "ratios": ratio, "cores": os.cpu_count(),
              "loadavg": os.getloadavg(), "bundle": "hstu small, T=50, gears 1/16/64, random weights",
              "single": "genrec-run --threads 1", "ray": "local Ray, 1 thread per actor, start-up included in job"}
    print()
    for k, v in ratio.items():
        print(f"{k:22s} {v:5.2f}x")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
