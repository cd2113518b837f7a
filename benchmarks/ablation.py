"""Ablation of Meta's training protocol (MODELS.md §1.5-1.6), each difference on its own.

Variants, per backbone (every other setting as the ``default`` protocol):

- ``default``: 512 negatives shared by the batch, train on items[:-2], keep the best
  validation-NDCG@10 epoch, patience 5, at most 40 epochs (``selection=best_valid``: the
  training default until the split row below made ``selection=refit`` the default);
- ``negatives``: per-position independent negatives (``negatives=per_position``);
- ``split``: Meta's split, train on items[:-1] (``holdout=last``), so no validation item is
  left: a fixed budget of as many epochs as ``default`` selected on validation, final epoch
  kept (nothing here looks at the test item). This is exactly what ``selection=refit`` does
  in one call;
- ``epochs``: Meta's budget, 101 epochs without early stopping, final epoch kept;
- ``meta``: all three (``protocol=meta``).

Every run has the same wall-clock cap (``--minutes``); a run cut by it says so in the table
(``epochs_run`` < planned). Results are appended to ``--out`` (JSON lines) one run at a time,
and a rerun skips what is there, so the study resumes after an interruption.

    nice -n 10 python benchmarks/ablation.py --data /work/shared/data/amazon-beauty \\
        --archs hstu,sasrec --minutes 6 --out benchmarks/results/ablation_beauty.jsonl
    python benchmarks/ablation.py --table benchmarks/results/ablation_beauty.jsonl
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from genrec.data import leave_one_out, read_sequences
from genrec.evaluation import evaluate
from genrec.models import make_config
from genrec.training import TrainConfig, init_model, train

VARIANTS: dict[str, dict[str, Any]] = {
    "default": dict(selection="best_valid"),
    "negatives": dict(negatives="per_position", selection="best_valid"),
    "split": dict(holdout="last", selection="last"),  # epochs: default's selected epoch
    "epochs": dict(selection="last", epochs=101),
    "meta": dict(protocol="meta"),
}


def load(out: Path) -> list[dict[str, Any]]:
    """Rows already written (a torn last line from a kill is ignored)."""
    rows = []
    if out.exists():
        for line in out.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: test HR@10 / NDCG@10 per arch and variant, with the change from default."""
    base = {r["arch"]: r for r in rows if r["variant"] == "default"}
    lines = ["| arch | variant | settings | epochs run (kept) | capped | valid NDCG@10 | test HR@10 | "
             "test NDCG@10 | Δ NDCG@10 vs default | s/epoch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, b = r["test"], base.get(r["arch"])
        delta = (f"{100 * (t['NDCG@10'] / b['test']['NDCG@10'] - 1):+.1f}%"
                 if b and r is not b else "")
        valid = "n/a" if r["valid_ndcg10"] is None else f"{r['valid_ndcg10']:.4f}"
        lines.append(f"| {r['arch']} | {r['variant']} | {r['settings']} | {r['epochs_run']} "
                     f"({r['kept_epoch']}) | {'yes' if r['capped'] else 'no'} | {valid} | "
                     f"{t['HR@10']:.4f} | {t['NDCG@10']:.4f} | {delta} | "
                     f"{r['wall_s'] / max(r['epochs_run'], 1):.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="interaction data (e.g. the full Beauty directory)")
    ap.add_argument("--archs", default="hstu,sasrec")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--preset", default="beauty")
    ap.add_argument("--minutes", type=float, default=6.0, help="wall-clock cap per run")
    ap.add_argument("--eval-users", type=int, default=2000, help="validation sample (test: all users)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ablation_beauty.jsonl"))
    ap.add_argument("--table", type=Path, help="print the table of an existing results file and exit")
    args = ap.parse_args()
    if args.table:
        print(table(load(args.table)))
        return
    if not args.data:
        raise SystemExit("error: --data is required")
    torch.set_num_threads(args.threads)
    split = leave_one_out(read_sequences(args.data))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for arch in args.archs.split(","):
        for variant in args.variants.split(","):
            rows = load(args.out)
            if any(r["arch"] == arch and r["variant"] == variant for r in rows):
                continue
            settings = dict(VARIANTS[variant])
            if variant == "split":
                base = [r for r in rows if r["arch"] == arch and r["variant"] == "default"]
                if not base:
                    print(f"{arch}/split: needs the default run first (its selected epoch); skipped")
                    continue
                settings["epochs"] = base[0]["kept_epoch"]
            cfg = TrainConfig(max_minutes=args.minutes, eval_users=args.eval_users, seed=args.seed, **settings)
            model = init_model(make_config(arch, split.num_items, args.preset), cfg.seed)
            print(f"{arch}/{variant}: {settings} ...", flush=True)
            t0 = time.perf_counter()
            hist = train(model, split, cfg)
            test = evaluate(model, split.examples("test"))
            row = {"arch": arch, "variant": variant, "settings": settings or "-", "preset": args.preset,
                   "params": model.num_params(), "train": cfg.to_dict(), "epochs_run": hist["epochs_run"],
                   "kept_epoch": hist["best_epoch"], "capped": hist["epochs_run"] < cfg.epochs
                   and (cfg.selection == "last" or len(hist["epochs"]) - hist["best_epoch"] < cfg.patience),
                   "valid_ndcg10": hist["best_valid_ndcg10"], "test": test,
                   "wall_s": round(time.perf_counter() - t0, 1), "data": str(args.data),
                   "users": len(split), "threads": args.threads, "torch": torch.__version__,
                   "cpu": platform.machine()}
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"  test HR@10 {test['HR@10']:.4f} NDCG@10 {test['NDCG@10']:.4f}, "
                  f"{hist['epochs_run']} epochs, {row['wall_s']:.0f} s", flush=True)
    print(table(load(args.out)))


if __name__ == "__main__":
    main()
