"""Where an onnxruntime prefill spends its time, per op type, at 1 thread and at 2.

    python benchmarks/ort_profile.py BUNDLE [--batch 64] [--runs 15] [--by op|node] [--as-exported] [--out profile.md]

onnxruntime's own profiler (``enable_profiling``) on the bundle's ``prefill.onnx`` with the
backend's graph rewrites, full-length synthetic histories (``peers_bench.prefill_batch``), the
kernel time of every node summed by op type and divided by the runs; the ``scale`` column is
the 1-thread time over the 2-thread time: an op near 1.0x runs on one thread whatever the
pool holds. That column is why torch.compile overtakes us at 2 threads on the HSTU
(B, T, T) pass: inductor fuses the bucket/bias/SiLU chain into one parallel loop, while
onnxruntime runs it op by op and its GatherElements and Cast kernels are single-threaded.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def profile(bundle: str, batch: int, threads: int, runs: int, prefix: str, by: str = "op",
            bitcast: bool = True) -> dict[str, float]:
    """ms per run by op type (``by="op"``) or by node (``"node"``: "name (op)"); ``bitcast``: the
    graph as the backend loads it on the CPU (``bitcast_buckets``), else as exported."""
    import onnxruntime as ort

    from genrec.runtimes import get_backend
    from genrec.runtimes.onnxrt import bitcast_supported, load_graph
    from peers_bench import prefill_batch

    with get_backend("onnxruntime", bundle, threads=1) as be:
        feeds_src = prefill_batch(batch, be.dims)
    model, _ = load_graph(Path(bundle) / "prefill.onnx", bitcast_buckets=bitcast and bitcast_supported(ort))
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.enable_profiling = True
    o.profile_file_prefix = prefix
    o.add_session_config_entry("session.intra_op.allow_spinning", "1")
    sess = ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])
    feeds = {i.name: getattr(feeds_src, i.name) for i in sess.get_inputs()}
    for _ in range(runs):
        sess.run(None, feeds)
    path = sess.end_profiling()
    events = json.loads(Path(path).read_text())
    Path(path).unlink()
    n = sum(e.get("name") == "model_run" for e in events)
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            key = op if by == "op" else f'{e["name"][:-len("_kernel_time")]} ({op})'
            by_op[key] += e["dur"] / n / 1000
    return dict(by_op)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--out", default=None, help="write the table here (markdown)")
    p.add_argument("--by", choices=("op", "node"), default="op", help="sum kernel time per op type or per node")
    p.add_argument("--top", type=int, default=20, help="rows in the table")
    p.add_argument("--as-exported", action="store_true", help="keep the time-bucket Log (bitcast_buckets=False)")
    args = p.parse_args()
    one = profile(args.bundle, args.batch, 1, args.runs, "/tmp/genrec-prof-1t", args.by, not args.as_exported)
    two = profile(args.bundle, args.batch, 2, args.runs, "/tmp/genrec-prof-2t", args.by, not args.as_exported)
    lines = [f"prefill kernel time by {'op type' if args.by == 'op' else 'node'}, batch {args.batch}, {args.runs} runs: "
             f"1 thread {sum(one.values()):.2f} ms, 2 threads {sum(two.values()):.2f} ms", "",
             f"| {args.by} | 1 thread (ms) | 2 threads (ms) | scale |", "|---|---|---|---|"]
    for op, ms in sorted(one.items(), key=lambda kv: -kv[1])[:args.top]:
        lines.append(f"| {op} | {ms:.2f} | {two.get(op, 0):.2f} | {ms / max(two.get(op, 0), 1e-9):.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
