"""Cut the small Amazon Beauty slice shipped in data/beauty-slice from the full 5-core files.

Why: tests and quick runs need real sequences, but the repository must be self-contained and
small. This script makes the slice reproducible: a seeded random sample of users, original line
order and raw ids kept, so anyone with the source files can regenerate it byte for byte.

Usage: python data/make_slice.py SOURCE_DIR [--out data/beauty-slice] [--users 3000] [--seed 0]
SOURCE_DIR holds items.txt and times.txt (`user_id v_1 ... v_n`, one user per line, aligned).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="directory with items.txt and times.txt")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "beauty-slice")
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    items = (args.source / "items.txt").read_text().splitlines()
    times = (args.source / "times.txt").read_text().splitlines()
    if len(items) != len(times):
        raise SystemExit(f"items.txt has {len(items)} lines but times.txt has {len(times)}")
    for n, (a, b) in enumerate(zip(items, times), start=1):
        fa, fb = a.split(), b.split()
        if fa[0] != fb[0] or len(fa) != len(fb):
            raise SystemExit(f"line {n}: items.txt and times.txt are not aligned")

    rng = np.random.default_rng(args.seed)
    keep = np.sort(rng.choice(len(items), size=args.users, replace=False))  # original order

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "items.txt").write_text("".join(items[i] + "\n" for i in keep))
    (args.out / "times.txt").write_text("".join(times[i] + "\n" for i in keep))

    lengths = np.array([len(items[i].split()) - 1 for i in keep])
    unique = {tok for i in keep for tok in items[i].split()[1:]}
    print(f"users {len(keep)}  items {len(unique)}  interactions {int(lengths.sum())}  "
          f"length min {lengths.min()} mean {lengths.mean():.2f} max {lengths.max()}")


if __name__ == "__main__":
    main()
