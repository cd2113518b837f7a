#!/usr/bin/env bash
# The main job end to end on the shipped Beauty slice: train a small model, show it against the
# most-popular baseline, export a verified bundle, serve recommendations and slates with
# onnxruntime, and check parity against torch.
# Usage: bash examples/end_to_end.sh [ARCH] [OUTDIR]     (ARCH: hstu|llama|gpt|sasrec)
# Training settings per backbone: genrec/presets/demo/ARCH.json, chosen on the validation item
# of the slice (benchmarks/demo_sweep.py; results in benchmarks/results/demo_sweep*.jsonl).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ARCH=${1:-hstu}
OUT=${2:-out/demo-$ARCH}
DATA=data/beauty-slice
[ -d "$DATA" ] || DATA="$ROOT/data/beauty-slice"
CONFIG="$ROOT/genrec/presets/demo/$ARCH.json"
[ -f "$CONFIG" ] || { echo "error: unknown ARCH '$ARCH' (no $CONFIG); choose hstu, llama, gpt or sasrec" >&2; exit 1; }
mkdir -p "$OUT"

genrec train --data "$DATA" --arch "$ARCH" --config "$CONFIG" -o "$OUT/model.pt" --quiet
genrec evaluate "$OUT/model.pt" --data "$DATA" --baseline --json "$OUT/metrics.json"
python3 - "$OUT/metrics.json" "$ARCH" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
model, popular = rows[sys.argv[2]]["NDCG@10"], rows["most-popular"]["NDCG@10"]
print(f"test NDCG@10: {sys.argv[2]} {model:.4f} vs most-popular {popular:.4f} = {model / popular:.2f}x")
PY
genrec export "$OUT/model.pt" -o "$OUT/bundle" --force
genrec inspect "$OUT/bundle" --target ascend > "$OUT/inspect.txt"

# a few real requests from the slice: the last 10 items of the first users, with their times
python3 - "$DATA" "$OUT/requests.jsonl" <<'PY'
import json, sys
items = open(f"{sys.argv[1]}/items.txt").read().split("\n")[:20]
times = open(f"{sys.argv[1]}/times.txt").read().split("\n")[:20]
rows = [(a.split(), b.split()) for a, b in zip(items, times)]
with open(sys.argv[2], "w") as f:
    for n, ((u, *it), (_, *ts)) in enumerate(rows):
        other = rows[(n + 1) % len(rows)][0][1:]  # candidates: the held-out item + another user's items
        req = {"user_id": u, "items": [int(i) for i in it[:-1]], "timestamps": [int(t) for t in ts[:-1]],
               "request_time": int(ts[-1]), "candidates": [int(it[-1])] + [int(i) for i in other[:5]]}
        f.write(json.dumps(req) + "\n")
PY
genrec-run "$OUT/bundle" --backend onnxruntime --input "$OUT/requests.jsonl" --output "$OUT/recs.jsonl" --k 10
genrec-run "$OUT/bundle" --backend onnxruntime --input "$OUT/requests.jsonl" --output "$OUT/slates.jsonl" \
  --generate 5 --strategy beam --beams 4
genrec-run "$OUT/bundle" --backend onnxruntime --input "$OUT/requests.jsonl" --output "$OUT/ranked.jsonl" --rank
genrec parity "$OUT/bundle" --reference torch --candidate onnxruntime --data "$DATA" --users 200 \
  --generate 5 --report "$OUT/parity.json"
echo "done: $OUT"
