"""The fp32 / fp16 / int8-dynamic / int8-static table per backbone (issue: calibration).

    nice -n 10 python benchmarks/quantize_table.py --bundle hstu=out/bundle-hstu \\
        --bundle llama=out/bundle-llama --data path/to/amazon-beauty --out benchmarks/results/quantize

For each bundle (trained with the beauty preset on the full Beauty data and exported):

1. ``genrec quantize`` for each precision (skipped when the bundle has the variant already;
   a refusal by the gate is a result too and is recorded with the loss it measured);
2. ``genrec bench`` of onnxruntime and every variant in one process, batch 1 and 64 at the
   bundle's T (recommend throughput ratio at 64, latency ratio at 1);
3. an onnxruntime profile of each precision's prefill, step and rank graphs at batch 64 on
   real inputs recorded from the fp32 graphs: time per op type, and the scoring head's share
   (the catalogue MatMul, TopK, log_z), to show where int8 time goes;
4. the same int8 recipes with the scoring head quantised too, in a scratch copy, gate opened:
   what keeping the head fp32 costs in throughput and what quantising it costs in NDCG@10.

Resumable: each stage writes its JSON under ``--out/<arch>/`` and is skipped when present.
``table.md`` is rebuilt from whatever JSON exists. Ratios are measured in one process; the
machine is shared, so rerun when it is idle for tighter numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

PRECISIONS = ("fp16", "int8-dynamic", "int8-static")


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def quantize_all(arch: str, bundle: Path, data: str, out: Path, args) -> None:
    from genrec.bundle import load_bundle
    from genrec.calibration import quantize_bundle
    from genrec.errors import GenrecError

    for prec in PRECISIONS:
        res = out / arch / f"quantize-{prec}.json"
        if res.exists():
            continue
        if prec in load_bundle(bundle, verify=False).manifest.variants and not args.force:
            _dump(res, {"precision": prec, "written": True, "info": load_bundle(bundle, verify=False)
                        .manifest.variants[prec].info})
            continue
        t0 = time.time()
        try:
            info = quantize_bundle(bundle, prec, data, calib_users=args.calib_users, judge_users=args.judge_users,
                                   threads=args.threads, force=args.force, say=lambda m: print(f"{arch} {m}", flush=True))
            _dump(res, {"precision": prec, "written": True, "wall_s": time.time() - t0, "info": info})
        except GenrecError as e:
            _dump(res, {"precision": prec, "written": False, "wall_s": time.time() - t0, "refused": str(e)})
            print(f"{arch} {prec}: {e}", flush=True)


def bench(arch: str, bundle: Path, out: Path, args) -> None:
    from genrec.bundle import load_bundle
    from genrec.runtimes.bench import BenchSpec, run_bench

    b = load_bundle(bundle)
    specs = ("onnxruntime", *(f"onnxruntime:{p}" for p in PRECISIONS if p in b.manifest.variants))
    spec = BenchSpec(backends=specs, batch_sizes=(1, 64), history_lengths=(b.dims.max_history,),
                     repeat=args.repeat, warmup=2, threads=args.threads, data=args.data, rounds=1)
    # this VM is shared and drifts: several rounds, each a full pass (one round of run_bench's
    # own alternation), and the table takes the median ratio over rounds
    for r in range(args.rounds):
        res = out / arch / f"bench-{r}.json"
        if not res.exists():
            _dump(res, run_bench(b, spec, progress=lambda m: print(f"{arch} bench {r}: {m}", flush=True)))


def profile(arch: str, bundle: Path, out: Path, args) -> None:
    """Time per op type of every precision's graphs at batch 64 (onnxruntime's profiler)."""
    import onnxruntime as ort

    from genrec.bundle import load_bundle
    from genrec.calibration.data import record_feeds, split_users
    res = out / arch / "profile.json"
    if res.exists():
        return
    b = load_bundle(bundle)
    users = split_users(args.data, None, b.id_map, 64, 2, seed=7)
    feeds = record_feeds(b, users, steps=2, batch_size=64, threads=args.threads)
    report = {}
    for prec in b.precisions:
        report[prec] = {}
        for g in ("prefill", "step", "rank"):
            call = max(feeds.graphs[g], key=lambda c: next(iter(c.values())).shape[0])  # batch 64 gear
            path = b.graph_path(g, prec)
            with tempfile.TemporaryDirectory() as tmp:
                opts = ort.SessionOptions()
                opts.enable_profiling, opts.profile_file_prefix = True, f"{tmp}/p"
                # the graph as onnxruntime runs it (fused, renamed), so profile names match
                opts.optimized_model_filepath = f"{tmp}/optimized.onnx"
                opts.intra_op_num_threads = args.threads or 2
                opts.log_severity_level = 3
                sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                head = scoring_nodes(f"{tmp}/optimized.onnx", b.dims.num_items + 1)
                names = {i.name for i in sess.get_inputs()}
                feed = {k: v for k, v in call.items() if k in names}
                for _ in range(2):
                    sess.run(None, feed)
                walls = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    sess.run(None, feed)
                    walls.append(time.perf_counter() - t0)
                events = json.loads(Path(sess.end_profiling()).read_text())
            per_op, head_us, total = defaultdict(float), 0.0, 0.0
            for e in events:
                if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                    continue
                op, node = e["args"].get("op_name", "?"), e["name"][: -len("_kernel_time")]
                per_op[op] += e["dur"]
                total += e["dur"]
                if node in head:
                    head_us += e["dur"]
            n = args.repeat + 2
            report[prec][g] = {"batch": int(next(iter(call.values())).shape[0]), "wall_ms_p50": float(np.median(walls) * 1e3),
                               "op_ms": {k: v / n / 1e3 for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
                               "scoring_head_ms": head_us / n / 1e3, "kernel_ms": total / n / 1e3}
            print(f"{arch} profile {prec} {g}: {report[prec][g]['wall_ms_p50']:.2f} ms", flush=True)
    _dump(res, report)


def scoring_nodes(path: str, rows: int) -> set[str]:
    """Names of the catalogue-scoring nodes of an (optimised) graph: the MatMul reading an
    item-table-sized initializer (N + 1 rows or columns; lookups aside) and everything
    downstream of it (the exclusion mask, TopK, log_z)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    tables = {t.name for t in model.graph.initializer if len(t.dims) == 2 and rows in t.dims}
    start = [n for n in model.graph.node if "Gather" not in n.op_type and any(i in tables for i in n.input)]
    out, todo = {n.name for n in start}, [o for n in start for o in n.output]
    while todo:
        t = todo.pop()
        for n in model.graph.node:
            if t in n.input and n.name not in out:
                out.add(n.name)
                todo.extend(n.output)
    return out


def head_experiment(arch: str, bundle: Path, out: Path, args) -> None:
    """int8 with the scoring head quantised too (not a shippable default: see the recipes'
    docstring), in a scratch copy: what fp32 scoring costs in throughput, and in NDCG@10."""
    import shutil

    from genrec.calibration import quantize_bundle
    from genrec.runtimes.bench import BenchSpec, run_bench

    res = out / arch / "head-int8.json"
    if res.exists():
        return
    scratch = Path(args.scratch) / f"{arch}-head"
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(bundle, scratch)
    report = {"note": "scoring head quantised too (--quantize-head), gate opened (max loss 0.99) to measure"}
    for prec in ("int8-dynamic", "int8-static"):
        info = quantize_bundle(scratch, prec, args.data, calib_users=args.calib_users, judge_users=args.judge_users,
                               threads=args.threads, force=True, quantize_head=True, max_ndcg_loss=0.99,
                               say=lambda m: print(f"{arch} head {m}", flush=True))
        report[prec] = {"deltas": info["deltas"], "excluded": info["excluded"]["groups"]}
    spec = BenchSpec(backends=("onnxruntime", "onnxruntime:int8-dynamic", "onnxruntime:int8-static"),
                     batch_sizes=(1, 64), history_lengths=(50,), repeat=args.repeat, warmup=2, threads=args.threads,
                     data=args.data, rounds=1)
    from genrec.runtimes.bench import variant_summary

    report["bench"] = variant_summary(run_bench(scratch, spec))
    _dump(res, report)


def head_interleaved(arch: str, out: Path, args) -> None:
    """``interleaved`` on the head experiment's scratch bundle (int8 head)."""
    scratch = Path(args.scratch) / f"{arch}-head"
    if scratch.exists():
        interleaved(arch, scratch, out, args, name="head-interleaved.json")


def interleaved(arch: str, bundle: Path, out: Path, args, name: str = "interleaved.json") -> None:
    """fp32 and every variant loaded side by side and timed in alternation (A B C D, then
    rotated), ``--rounds`` x 5 rounds: each round's ratio to fp32 is taken over calls made
    seconds apart, and the median over rounds is what the table shows. ``genrec bench``
    measures one backend after the other, which on this shared VM drifted by up to 2x
    between passes; this is the serving_bench.py method."""
    from genrec.bundle import load_bundle
    from genrec.runtimes import get_backend, recommend
    from genrec.runtimes.bench import synthetic_requests, _real_histories
    from genrec.runtimes.batching import exclusions as _exclude, history_exclusions as _history_exclusions
    from genrec.runtimes.batching import pad as _pad, prefill_rows as _prefill
    from genrec.runtimes.decoding import prepare
    from genrec.data import ItemMap

    res = out / arch / name
    if res.exists():
        return
    b = load_bundle(bundle)
    precs = b.precisions
    backends = {p: get_backend("onnxruntime", b, precision=p, threads=args.threads) for p in precs}
    real = _real_histories(args.data, ItemMap.from_list(b.id_map), 5)
    report = {"method": interleaved.__doc__.split("\n\n")[0], "threads": args.threads, "rounds": {}}
    try:
        for batch in (1, 64):
            reqs, _ = synthetic_requests(b.id_map, batch, b.dims.max_history, 0, real)
            states = {}
            for p, be in backends.items():  # one prefilled batch per backend for the step timing
                rows = prepare(be, reqs)
                excl, _ = _exclude(be, _history_exclusions(rows), 1, lambda i: str(i))
                pb = _prefill(be, rows, excl)
                g = pb.state.batch
                states[p] = (pb.state, _pad(np.maximum(pb.out.topk_ids[:len(rows), 0], 1), g),
                             _pad(pb.lengths, g), _pad(pb.request_time, g), _pad(excl, g))
            per = {p: {"recommend_s": [], "step_s": []} for p in precs}
            for r in range(args.rounds * 5):
                order = precs[r % len(precs):] + precs[:r % len(precs)]
                for p in order:
                    be = backends[p]
                    recommend(be, reqs, k=10, batch_size=batch)  # warm
                    t0 = time.perf_counter()
                    for _ in range(3):
                        recommend(be, reqs, k=10, batch_size=batch)
                    per[p]["recommend_s"].append((time.perf_counter() - t0) / 3)
                    st = states[p]
                    t0 = time.perf_counter()
                    for _ in range(3):
                        be.step(*st)
                    per[p]["step_s"].append((time.perf_counter() - t0) / 3)
            ratios = {}
            for p in precs:
                ratios[p] = {k: float(np.median(np.array(per[precs[0]][k]) / np.array(per[p][k])))
                             for k in ("recommend_s", "step_s")}
                ratios[p]["recommend_ms_median"] = float(np.median(per[p]["recommend_s"]) * 1e3)
                ratios[p]["step_ms_median"] = float(np.median(per[p]["step_s"]) * 1e3)
            report["rounds"][f"batch{batch}"] = ratios
            print(f"{arch} interleaved batch {batch}: " + ", ".join(
                f"{p} {v['recommend_s']:.2f}x" for p, v in ratios.items()), flush=True)
    finally:
        for be in backends.values():
            be.close()
    _dump(res, report)


def merged(files: list[Path]) -> dict | None:
    """The interleaved runs (one file each, taken at different times) as one: per batch,
    precision and figure, the median over runs; ``<figure>_runs`` keeps each run's value."""
    runs = [json.loads(f.read_text())["rounds"] for f in files]
    if not runs:
        return None
    out: dict = {}
    for batch, per in runs[0].items():
        out[batch] = {}
        for p in per:
            vals = {k: [r[batch][p][k] for r in runs if p in r.get(batch, {})] for k in per[p]}
            out[batch][p] = {k: float(np.median(v)) for k, v in vals.items()}
            out[batch][p].update({f"{k}_runs": v for k, v in vals.items()})
    return out


def head_micro(arch: str, bundle: Path, out: Path, args) -> None:
    """The catalogue scoring in isolation, fp32 vs int8 (onnxruntime's quantize_dynamic on the
    MatMul), at the bundle's d, N and K' and batch 64: the MatMul against the whole item table,
    then + TopK(K'), then + log_z (ReduceLogSumExp), timed interleaved; what the head costs in
    either precision, with nothing else in the graph."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from genrec.bundle import load_bundle

    res = out / arch / "head-micro.json"
    if res.exists():
        return
    d = load_bundle(bundle, verify=False).dims
    rng = np.random.default_rng(0)
    table = rng.standard_normal((d.d_model, d.num_items + 1)).astype(np.float32)
    user = rng.standard_normal((64, d.d_model)).astype(np.float32)

    def graph(parts: str):
        nodes = [helper.make_node("MatMul", ["u", "table"], ["scores"], name="score")]
        outs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [64, d.num_items + 1])]
        if "topk" in parts:
            nodes.append(helper.make_node("TopK", ["scores", "k"], ["v", "i"], name="topk"))
            outs = [helper.make_tensor_value_info("v", TensorProto.FLOAT, [64, d.topk]),
                    helper.make_tensor_value_info("i", TensorProto.INT64, [64, d.topk])]
        if "logz" in parts:
            nodes.append(helper.make_node("ReduceLogSumExp", ["scores", "axes"], ["logz"], keepdims=0, name="lse"))
            outs.append(helper.make_tensor_value_info("logz", TensorProto.FLOAT, [64]))
        inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([d.topk], np.int64), "k"),
                 numpy_helper.from_array(np.array([1], np.int64), "axes")]
        g = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("u", TensorProto.FLOAT, [64, d.d_model])],
                              outs, inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)

    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for parts in ("matmul", "matmul+topk", "matmul+topk+logz"):
            src = f"{tmp}/{parts}.onnx"
            import onnx

            onnx.save(graph(parts), src)
            quantize_dynamic(src, f"{tmp}/{parts}.int8.onnx", op_types_to_quantize=["MatMul"],
                             weight_type=QuantType.QInt8)
            for prec, path in (("fp32", src), ("int8", f"{tmp}/{parts}.int8.onnx")):
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = args.threads or 2
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                sessions[f"{prec} {parts}"] = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    times = {k: [] for k in sessions}
    names = list(sessions)
    for r in range(args.rounds * 10):
        for k in names[r % len(names):] + names[:r % len(names)]:
            sessions[k].run(None, {"u": user})
            t0 = time.perf_counter()
            for _ in range(5):
                sessions[k].run(None, {"u": user})
            times[k].append((time.perf_counter() - t0) / 5 * 1e3)
    report = {"shape": {"batch": 64, "d": d.d_model, "N+1": d.num_items + 1, "K'": d.topk},
              "ms_median": {k: float(np.median(v)) for k, v in times.items()}}
    print(f"{arch} head micro: " + ", ".join(f"{k} {v:.2f} ms" for k, v in report["ms_median"].items()), flush=True)
    _dump(res, report)


def median_rows(files: list[Path]) -> dict[str, dict]:
    """``variant_summary`` per precision, its ratios the median over the bench rounds."""
    from genrec.runtimes.bench import variant_summary

    rounds = [variant_summary(json.loads(f.read_text())) for f in files]
    out: dict[str, dict] = {}
    for rows in rounds:
        for r in rows:
            out.setdefault(r["precision"], {**r, "_ratios": defaultdict(list)})
            for k, v in r.items():
                if k.startswith(("throughput_ratio", "latency_ratio")) and v is not None:
                    out[r["precision"]]["_ratios"][k].append(v)
    for r in out.values():
        for k, vals in r.pop("_ratios").items():
            r[k] = float(np.median(vals))
            r[k + "_rounds"] = vals
    return out


def table(out: Path) -> str:
    """The markdown table (one per backbone) from the JSON files."""
    lines = []
    for arch_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        arch = arch_dir.name
        rows = median_rows(sorted(arch_dir.glob("bench-*.json")))
        it = merged(sorted(arch_dir.glob("interleaved*.json")))
        if it:  # alternating measurements replace genrec bench's sequential passes
            for p, r in rows.items():
                r["throughput_ratio_b64"] = it["batch64"][p]["recommend_s"]
                r["latency_ratio_b1"] = it["batch1"][p]["recommend_s"]
                r["step_ratio_b64"] = it["batch64"][p]["step_s"]
                r["throughput_ratio_b64_rounds"] = it["batch64"][p]["recommend_s_runs"]
                r["latency_ratio_b1_rounds"] = it["batch1"][p]["recommend_s_runs"]
                r["step_ratio_b64_rounds"] = it["batch64"][p]["step_s_runs"]
        q = {p: json.loads((arch_dir / f"quantize-{p}.json").read_text())
             for p in PRECISIONS if (arch_dir / f"quantize-{p}.json").exists()}
        cols = ["fp32", *PRECISIONS]
        lines += [f"### {arch}", "", "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]

        def cell(p, f):
            r = rows.get(p)
            if p in q and not q[p]["written"]:
                return "refused" if f != "excl" else q[p]["refused"][:120]
            return f(r, q.get(p)) if r is not None or p in q else "-"

        def num(x, fmt):
            return "-" if x is None else format(x, fmt)

        def rounds(r, key):
            if not r or r.get(key) is None:
                return "-"
            each = r.get(key + "_rounds", [])
            return f"{r[key]:.2f}" + (f" ({', '.join(f'{v:.2f}' for v in each)})" if len(each) > 1 else "")

        spec = [
            ("size (MB)", lambda r, _: num(r and r["model_bytes"] / 1e6, ".2f")),
            ("batch-64 recommend throughput ratio", lambda r, _: rounds(r, "throughput_ratio_b64")),
            ("batch-1 recommend latency ratio (fp32 / variant)", lambda r, _: rounds(r, "latency_ratio_b1")),
            ("batch-64 step throughput ratio", lambda r, _: rounds(r, "step_ratio_b64")),
            ("NDCG@10 delta", lambda r, i: "0" if i is None else
             num(i["info"]["deltas"]["metrics"]["NDCG@10"]["delta"], "+.4f")),
            ("relative NDCG@10 loss [95% CI]", lambda r, i: "0" if i is None else
             "{:+.2%} [{:+.2%}, {:+.2%}]".format(i["info"]["deltas"]["ndcg_relative_loss"]["value"],
                                                 *i["info"]["deltas"]["ndcg_relative_loss"]["ci95"])),
            ("HR@10 delta", lambda r, i: "0" if i is None else
             num(i["info"]["deltas"]["metrics"]["HR@10"]["delta"], "+.4f")),
            ("excluded node groups", lambda r, i: "-" if i is None else ", ".join(i["info"]["excluded"]["groups"])),
        ]
        for label, f in spec:
            lines.append(f"| {label} | " + " | ".join(cell(p, f) for p in cols) + " |")
        any_q = next((v for v in q.values() if v.get("written")), None)
        if any_q:
            d = any_q["info"]
            lines.append(f"\nCalibration users {d['calibration']['users']}, judging users {d['judging']['users']} "
                         f"(disjoint); fp32 NDCG@10 {d['deltas']['metrics']['NDCG@10']['fp32']:.4f}.")
        head = arch_dir / "head-int8.json"
        if head.exists():
            h = json.loads(head.read_text())
            lines.append("\nWith the scoring head quantised too (`--quantize-head`, not the default):\n")
            lines.append("| variant | batch-64 recommend throughput ratio | batch-1 latency ratio | "
                         "batch-64 step throughput ratio | relative NDCG@10 loss [95% CI] |")
            lines.append("|---|---|---|---|---|")
            it = merged(sorted(arch_dir.glob("head-interleaved*.json")))
            for r in h["bench"][1:]:
                p = r["precision"]
                d = h[p]["deltas"]["ndcg_relative_loss"]
                def runs(batch, key):
                    if not it:
                        return "-"
                    v = it[batch][p]
                    each = v.get(key + "_runs", [])
                    return f"{v[key]:.2f}" + (f" ({', '.join(f'{x:.2f}' for x in each)})" if len(each) > 1 else "")

                lines.append(f"| {p} + int8 head | {runs('batch64', 'recommend_s')} | {runs('batch1', 'recommend_s')} | "
                             f"{runs('batch64', 'step_s')} | {d['value']:+.2%} "
                             f"[{d['ci95'][0]:+.2%}, {d['ci95'][1]:+.2%}] |")
        micro = arch_dir / "head-micro.json"
        if micro.exists():
            mm = json.loads(micro.read_text())
            t, sh = mm["ms_median"], mm["shape"]
            kp = sh["K'"]
            lines.append(f"\nThe catalogue scoring alone (batch 64, d={sh['d']}, N+1={sh['N+1']}, K'={kp}; "
                         "median ms, interleaved):\n")
            lines.append("| | MatMul | + TopK | + log_z |")
            lines.append("|---|---|---|---|")
            for prec in ("fp32", "int8"):
                lines.append(f"| {prec} | {t[prec + ' matmul']:.2f} | {t[prec + ' matmul+topk']:.2f} | "
                             f"{t[prec + ' matmul+topk+logz']:.2f} |")
        prof = arch_dir / "profile.json"
        if prof.exists():
            p = json.loads(prof.read_text())
            lines.append("\nPer-graph time at batch 64 (ms, onnxruntime profile; top ops; scoring head = "
                         "catalogue MatMul + TopK + log_z):\n")
            lines.append("| precision | graph | wall p50 | scoring head | top ops |")
            lines.append("|---|---|---|---|---|")
            for prec, graphs in p.items():
                for g, r in graphs.items():
                    top = ", ".join(f"{k} {v:.2f}" for k, v in list(r["op_ms"].items())[:5])
                    lines.append(f"| {prec} | {g} | {r['wall_ms_p50']:.2f} | {r['scoring_head_ms']:.2f} | {top} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", required=True, help="ARCH=PATH (repeatable)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="benchmarks/results/quantize")
    ap.add_argument("--calib-users", type=int, default=512)
    ap.add_argument("--judge-users", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--force", action="store_true", help="re-quantize variants the bundles have already")
    ap.add_argument("--rounds", type=int, default=3, help="bench passes; the table takes the median ratio")
    ap.add_argument("--stages", default="quantize,bench,profile,head,micro,interleaved")
    ap.add_argument("--scratch", default="/tmp/genrec-quantize-table", help="where the head experiment copies bundles")
    args = ap.parse_args()
    out = Path(args.out)
    stages = args.stages.split(",")
    for item in args.bundle:
        arch, _, path = item.partition("=")
        if "quantize" in stages:
            quantize_all(arch, Path(path), args.data, out, args)
        if "bench" in stages:
            bench(arch, Path(path), out, args)
        if "profile" in stages:
            profile(arch, Path(path), out, args)
        if "head" in stages:
            head_experiment(arch, Path(path), out, args)
        if "micro" in stages:
            head_micro(arch, Path(path), out, args)
        if "interleaved" in stages:
            interleaved(arch, Path(path), out, args)
            head_interleaved(arch, out, args)
        (out / "table.md").write_text(table(out))
    print(table(out))


if __name__ == "__main__":
    main()
