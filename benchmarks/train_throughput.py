"""Training throughput of HSTU at the ``ml-1m`` preset on synthetic full-length sequences.

Shape of Meta's ML-1M config (MODELS.md §1.8): T = 200, d = 50, 2 layers, 1 head, 3,706 items,
128 sampled negatives, batch 128, dropout 0.2. Every sequence is 200 items long (no padding), so tokens/s =
sequences/s x 200. One step = forward, sampled-softmax loss, backward and AdamW update, exactly
as ``genrec.training.train`` runs it. Prints one JSON object.

``--mode`` measures the cost of Meta's per-position negatives (``per_position``: the negative
logits gathered from full scores, ``per_position_gather``: dot products with gathered vectors)
against one shared draw per batch (``shared``, the default protocol).

    python benchmarks/train_throughput.py --threads 1 --steps 20 --batch-size 128
    python benchmarks/train_throughput.py --threads 1 --steps 10 --mode per_position
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from genrec.models import make_config
from genrec.training import TrainConfig, draw_negatives, init_model, sampled_softmax_loss

NUM_ITEMS = 3706
SEQ_LEN = 200


def synthetic_batch(rng: np.random.Generator, batch: int, seq_len: int, num_items: int):
    """ids, lengths, timestamps, request time and next-item targets for ``batch`` full rows."""
    seq = rng.integers(1, num_items + 1, (batch, seq_len + 1))
    ts = np.cumsum(rng.integers(0, 86_400, (batch, seq_len + 1)), axis=1)
    ids, tgt = torch.from_numpy(seq[:, :-1]), torch.from_numpy(seq[:, 1:])
    return (ids, torch.full((batch,), seq_len, dtype=torch.int64), torch.from_numpy(ts[:, :-1]),
            torch.from_numpy(ts[:, -1]), tgt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--arch", default="hstu", choices=["hstu", "sasrec", "gpt", "llama"])
    ap.add_argument("--preset", default="ml-1m")
    ap.add_argument("--negatives", type=int, default=128, help="sampled negatives (Meta's ML-1M: 128)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seq-len", type=int, default=SEQ_LEN, help="length of every synthetic row")
    ap.add_argument("--num-items", type=int, default=NUM_ITEMS, help="catalogue size (Beauty: 12101)")
    ap.add_argument("--mode", default="shared", choices=["shared", "per_position", "per_position_gather"],
                    help="negatives: one draw shared by the batch, or one per position (Meta)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    cfg = TrainConfig(batch_size=args.batch_size, num_negatives=args.negatives, seed=args.seed)
    model = init_model(make_config(args.arch, args.num_items, args.preset), cfg.seed)
    if model.config.max_len < args.seq_len:
        raise SystemExit(f"preset {args.preset} has max_len {model.config.max_len} < {args.seq_len}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(args.seed)
    batches = [synthetic_batch(rng, args.batch_size, args.seq_len, args.num_items) for _ in range(4)]
    model.train()

    def step(i: int) -> float:
        ids, lengths, ts, req, tgt = batches[i % len(batches)]
        positions = None if args.mode == "shared" else int((tgt != 0).sum())
        negatives = draw_negatives(rng, args.num_items, cfg.num_negatives, positions)
        h, _ = model.encode(ids, lengths, ts if model.needs_timestamps else None,
                            req if model.needs_timestamps else None)
        loss = sampled_softmax_loss(model, h, tgt, negatives,
                                    via_scores=None if args.mode == "shared" else args.mode == "per_position")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for i in range(args.warmup):
        step(i)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        loss = step(i)
        times.append(time.perf_counter() - t0)
    total = sum(times)
    seqs = args.steps * args.batch_size
    print(json.dumps({
        "arch": args.arch, "preset": args.preset, "params": model.num_params(),
        "seq_len": args.seq_len, "num_items": args.num_items, "batch_size": args.batch_size,
        "num_negatives": cfg.num_negatives, "mode": args.mode, "threads": torch.get_num_threads(),
        "warmup_steps": args.warmup, "steps": args.steps,
        "step_ms_median": round(1000 * float(np.median(times)), 1),
        "sequences_per_s": round(seqs / total, 1), "tokens_per_s": round(seqs * args.seq_len / total, 0),
        "final_loss": round(loss, 4), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
    }, indent=2))


if __name__ == "__main__":
    main()
