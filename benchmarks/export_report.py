"""Export every backbone at a preset shape and report what the closing notes need: export
time, graph sizes, the numeric check's max errors, and which exporter produced each graph.

    python benchmarks/export_report.py [--preset ml-1m] [--items 3706] [--json out.json]

Random weights and random valid histories (the ML-1M data is not shipped): the point is the
export path and the numbers torch vs onnxruntime, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from genrec.checkpoint import save_checkpoint
from genrec.exporter import export_bundle
from genrec.models import ARCHS, build_model, make_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ml-1m")
    ap.add_argument("--items", type=int, default=3706)
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            torch.manual_seed(0)
            model = build_model(make_config(arch, args.items, args.preset)).eval()
            ckpt = save_checkpoint(Path(tmp) / f"{arch}.pt", model, list(range(1, args.items + 1)))
            t0 = time.perf_counter()
            bundle = export_bundle(ckpt, Path(tmp) / arch)
            seconds = time.perf_counter() - t0
            m = bundle.manifest
            num = next(c for c in m.checks if c["check"] == "numerics")
            row = {"arch": arch, "params": model.num_params(), "export_s": round(seconds, 1),
                   "exporters": {g: v.exporter for g, v in m.graphs.items()},
                   "sizes_mb": {g: round(bundle.graph_path(g).stat().st_size / 1e6, 2) for g in m.graphs},
                   "max_abs": {g: {k: v["max_abs"] for k, v in e.items() if isinstance(v, dict)}
                               for g, e in num["graphs"].items()},
                   "lint_errors": sum(c.get("errors", 0) for c in m.checks if c["check"] == "atc_lint")}
            rows.append(row)
            print(json.dumps(row))
    print()
    print("| arch | params | export s | exporter (prefill/step/rank) | MB (prefill/step/rank) | "
          "max abs user_emb (prefill/step) | max abs topk_scores | rank scores | ATC lint errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        e, s, a = r["exporters"], r["sizes_mb"], r["max_abs"]
        print(f"| {r['arch']} | {r['params']:,} | {r['export_s']} | {e['prefill']}/{e['step']}/{e['rank']} | "
              f"{s['prefill']}/{s['step']}/{s['rank']} | {a['prefill']['user_emb']:.1e}/{a['step']['user_emb']:.1e} | "
              f"{max(a['prefill']['topk_scores'], a['step']['topk_scores']):.1e} | {a['rank']['scores']:.1e} | "
              f"{r['lint_errors']} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
