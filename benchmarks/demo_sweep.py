"""Choose the demo's backbone, preset and learning rate on the shipped slice, on the validation item.

Each candidate trains with the default protocol (best validation-NDCG@10 epoch, patience 5)
under a wall-clock cap; the choice is the highest validation NDCG@10. Test NDCG@10 and the
most-popular baseline are recorded beside it, for the report only: they never decide.
Rows go to ``--out`` (JSON lines) one at a time and a rerun skips what is there.

    nice -n 10 python benchmarks/demo_sweep.py --out benchmarks/results/demo_sweep.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from genrec.data import leave_one_out, read_sequences
from genrec.evaluation import evaluate
from genrec.metrics import most_popular_ranks, ranking_metrics
from genrec.models import make_config
from genrec.training import TrainConfig, init_model, train

SLICE = Path(__file__).resolve().parents[1] / "data" / "beauty-slice"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default="llama,hstu,sasrec,gpt")
    ap.add_argument("--presets", default="small,beauty")
    ap.add_argument("--lrs", default="0.002,0.001")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/demo_sweep.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    split = leave_one_out(read_sequences(SLICE))
    popular = {w: ranking_metrics(most_popular_ranks(split, w), (10,)) for w in ("valid", "test")}
    done = set()
    if args.out.exists():
        done = {(r["arch"], r["preset"], r["lr"]) for r in map(json.loads, args.out.read_text().splitlines())}
    for preset, lr, arch in itertools.product(args.presets.split(","), map(float, args.lrs.split(",")),
                                              args.archs.split(",")):
        if (arch, preset, lr) in done:
            continue
        cfg = TrainConfig(lr=lr, max_minutes=args.minutes, seed=42)
        model = init_model(make_config(arch, split.num_items, preset), cfg.seed)
        t0 = time.perf_counter()
        hist = train(model, split, cfg)
        test = evaluate(model, split.examples("test"), ks=(10,))
        row = {"arch": arch, "preset": preset, "lr": lr, "valid_ndcg10": hist["best_valid_ndcg10"],
               "best_epoch": hist["best_epoch"], "epochs_run": hist["epochs_run"], "test": test,
               "popular": popular, "test_vs_popular": test["NDCG@10"] / popular["test"]["NDCG@10"],
               "wall_s": round(time.perf_counter() - t0, 1), "params": model.num_params()}
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{arch:6s} {preset:6s} lr={lr:g}: valid {row['valid_ndcg10']:.4f} test {test['NDCG@10']:.4f} "
              f"({row['test_vs_popular']:.2f}x popular) epoch {row['best_epoch']}/{row['epochs_run']} "
              f"{row['wall_s']:.0f} s", flush=True)
    rows = [json.loads(x) for x in args.out.read_text().splitlines()]
    best = max(rows, key=lambda r: r["valid_ndcg10"])
    print(f"chosen on validation: {best['arch']} {best['preset']} lr={best['lr']:g} "
          f"(valid {best['valid_ndcg10']:.4f}; test {best['test']['NDCG@10']:.4f} = "
          f"{best['test_vs_popular']:.2f}x most-popular {best['popular']['test']['NDCG@10']:.4f})")


if __name__ == "__main__":
    main()
