"""Latency, throughput and memory of backends on one bundle, measured in one process.

    from genrec.runtimes.bench import BenchSpec, run_bench
    report = run_bench("bundle/", BenchSpec(backends=("torch", "onnxruntime"), generate=10))

For every backend (in the order given), history length and batch size:

- ``recommend`` runs ``warmup`` times, then ``repeat`` timed times over ``batch`` requests;
  every ``backend.prefill`` call inside is timed on its own (``prefill_ms``), the whole call
  gives requests/s and the share of wall time spent outside the backend (the loop's own
  Python: validation, padding, exclusions, results);
- ``step_ms``: after one prefill, ``backend.step`` is called ``warmup + repeat`` times at the
  first free cache slot (each call rewrites that slot: the same work as a decoding step);
- with ``generate=N``: greedy slates of N items through ``generate``, slates/s;
- ``memory``: the resident-set high-water mark during that configuration minus the resident
  set just before it (Linux: VmHWM, reset through /proc/self/clear_refs; elsewhere the growth
  of ``ru_maxrss``, which only shows new process-wide peaks). It covers everything the
  process touches: numpy, torch and onnxruntime allocations alike.

Each backend is opened, measured and closed before the next, so thread pools never compete;
``speedup_vs_first`` divides the first backend's figures by each backend's (latencies) or
each backend's by the first's (throughputs), per (batch, history) row: > 1 is faster.

Requests: histories of exactly the asked length, raw ids drawn from the bundle's id map
(distinct items when the catalogue allows), increasing timestamps and a request time an
hour after the last one. With ``data``, real histories at least that long are used first
(their most recent items), synthetic ones fill the rest. Histories are numpy arrays, the fast
path of request validation; JSON lists cost extra validation time that is not measured here.
Histories longer than the bundle's T are cut to the most recent T by the loop, as in serving.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genrec.errors import ConfigError

from .base import open_bundle
from .batching import chunks, exclusions, gear, history_exclusions, pad, prefill_rows

__all__ = ["BenchSpec", "MEMORY_METHOD", "check_plot_path", "parse_sizes", "plot_report", "report_table",
           "run_bench", "synthetic_requests", "variant_info", "variant_summary", "variant_table"]

T0 = 1_600_000_000  # synthetic timestamps start here (unix seconds)


@dataclass
class BenchSpec:
    """What to measure; ``check`` raises ConfigError for anything that cannot run."""

    backends: tuple[str, ...] = ("torch", "onnxruntime")
    batch_sizes: tuple[int, ...] = (1, 8, 64)
    history_lengths: tuple[int, ...] = (50, 200)
    generate: int | None = None  # slate length for the generation measurement (None: skip)
    repeat: int = 10  # timed runs per measurement
    warmup: int = 2  # untimed runs before them
    threads: int | None = None  # CPU threads for every backend (None: each backend's default)
    k: int = 10  # items per recommendation
    seed: int = 0
    data: str | None = None  # real histories to use where long enough
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-backend keyword options

    def check(self, dims) -> None:
        from .registry import available_backends, split_backend

        if not self.backends:
            raise ConfigError("no backends to benchmark")
        if len(set(self.backends)) != len(self.backends):
            raise ConfigError(f"backends {', '.join(self.backends)}: each may appear once")
        unknown = [b for b in self.backends if split_backend(b)[0] not in available_backends()]
        if unknown:
            raise ConfigError(f"unknown backend {unknown[0]!r}; available: {', '.join(available_backends())}")
        for what, values in (("batch sizes", self.batch_sizes), ("history lengths", self.history_lengths)):
            if not values or min(values) < 1:
                raise ConfigError(f"{what} must be positive integers, got {list(values)}")
        if self.repeat < 1 or self.warmup < 0:
            raise ConfigError(f"repeat must be >= 1 and warmup >= 0, got {self.repeat} and {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if not 1 <= self.k <= dims.topk:
            raise ConfigError(f"k={self.k} must be in 1..{dims.topk} (the bundle's top K')")
        room = dims.capacity - dims.max_history
        if self.generate is not None and not 1 <= self.generate <= room:
            raise ConfigError(f"generate={self.generate} must be in 1..{room}: the bundle's cache holds "
                              f"{room} generated items after T={dims.max_history}")


def parse_sizes(text: str, what: str) -> tuple[int, ...]:
    """``"1,8,64"`` -> (1, 8, 64); ConfigError naming ``what`` for anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a comma-separated list of integers") from None
    if min(values) < 1:
        raise ConfigError(f"{what}: {text!r} must hold positive integers")
    return tuple(dict.fromkeys(values))


# --------------------------------------------------------------------------------------------
# requests


def synthetic_requests(id_map: Sequence[int], n: int, length: int, seed: int = 0,
                       real: list[tuple[np.ndarray, np.ndarray]] | None = None) -> tuple[list, int]:
    """``n`` requests with histories of exactly ``length`` raw ids; (requests, how many synthetic).

    ``real`` holds (raw items, timestamps) histories of at least ``length`` items, used first.
    """
    from .requests import Request

    rng = np.random.default_rng([seed, n, length])
    pool = np.asarray(id_map, dtype=np.int64)
    out = []
    for items, times in (real or [])[:n]:
        items, times = items[-length:], times[-length:]
        out.append(Request(f"user{len(out)}", items, times, int(times[-1]) + 3600))
    synthetic = n - len(out)
    for _ in range(synthetic):
        items = rng.choice(pool, size=length, replace=length > pool.size)
        times = T0 + np.cumsum(rng.integers(1, 86_400, size=length))
        out.append(Request(f"user{len(out)}", items, times, int(times[-1]) + 3600))
    return out, synthetic


def _real_histories(data: str, item_map, min_length: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from genrec.data import read_sequences

    seqs = read_sequences(data)
    raw = seqs.item_map.to_raw
    out = []
    for u in range(len(seqs)):
        items = raw(seqs.items[u])
        if items.size >= min_length and item_map.known(items).all():
            times = np.asarray(seqs.times[u], np.int64) if seqs.times is not None else \
                T0 + 60 * np.arange(items.size, dtype=np.int64)
            out.append((items, times))
    return out


# --------------------------------------------------------------------------------------------
# measuring


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _can_reset_peak() -> bool:
    try:
        _reset_peak()
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


_RESET_PEAK = _can_reset_peak()
MEMORY_METHOD = (
    "peak resident set (VmHWM, reset through /proc/self/clear_refs before each measurement) minus the "
    "resident set just before it: host memory of the whole process (numpy, torch, onnxruntime)"
    if _RESET_PEAK else
    "growth of the process's peak resident set (getrusage ru_maxrss) during each measurement: "
    "host memory of the whole process; only new process-wide peaks show, so later rows may read 0")


class _PeakRSS:
    """``with _PeakRSS() as m: ...`` then ``m.mb``: peak resident set growth over the block, MiB."""

    def __enter__(self):
        if _RESET_PEAK:
            _reset_peak()
            self.base = _status_kb("VmRSS") or 0
        else:
            self.base = self._maxrss_kb()
        self.mb = 0.0
        return self

    @staticmethod
    def _maxrss_kb() -> int:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss // 1024 if platform.system() == "Darwin" else rss  # bytes on macOS

    def __exit__(self, *exc) -> None:
        peak = (_status_kb("VmHWM") or 0) if _RESET_PEAK else self._maxrss_kb()
        self.mb = max(0, peak - self.base) / 1024


class BackendTimer:
    """Times every call of the wrapped backend methods (instance attributes shadow the class's)."""

    def __init__(self, backend, methods: Sequence[str] = ("prefill", "step")):
        self.backend, self.times = backend, {m: [] for m in methods}
        for m in methods:
            setattr(backend, m, self._wrap(getattr(backend, m), self.times[m]))

    @staticmethod
    def _wrap(fn: Callable, sink: list[float]) -> Callable:
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sink.append(time.perf_counter() - t0)
        return timed

    def clear(self) -> None:
        for v in self.times.values():
            v.clear()

    def total(self) -> float:
        return sum(sum(v) for v in self.times.values())

    def remove(self) -> None:
        for m in self.times:
            self.backend.__dict__.pop(m, None)


def _stats(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p99 = np.percentile(ms, [50, 99])
    return {"p50": float(p50), "p99": float(max(p99, p50)), "mean": float(ms.mean()),
            "min": float(ms.min()), "n": int(ms.size)}


def time_runs(fn: Callable[[], Any], warmup: int, repeat: int, timer: BackendTimer | None = None
            ) -> tuple[list[float], float]:
    """(wall seconds of each timed run, seconds spent inside the backend during them)."""
    for _ in range(warmup):
        fn()
    if timer:
        timer.clear()
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    return walls, (timer.total() if timer else 0.0)


def _step_probe(backend, requests, spec: BenchSpec, timer: BackendTimer) -> list[float]:
    """Seconds of ``warmup + repeat`` step calls (the warm-up ones dropped) on one prefilled batch."""
    from .decoding import prepare

    rows = prepare(backend, requests[:max(backend.batch_gears)])
    excl, _ = exclusions(backend, history_exclusions(rows))
    b = prefill_rows(backend, rows, excl)
    g = b.state.batch
    new_item = pad(np.maximum(b.out.topk_ids[:len(rows), 0], 1), g)  # any valid id
    position, req_time, excl = pad(b.lengths, g), pad(b.request_time, g), pad(excl, g)
    timer.clear()
    for _ in range(spec.warmup + spec.repeat):
        backend.step(b.state, new_item, position, req_time, excl)
    return timer.times["step"][spec.warmup:]


def _measure(backend, requests: list, batch: int, spec: BenchSpec, timer: BackendTimer) -> dict[str, Any]:
    from .decoding import SearchParams, generate, recommend

    row: dict[str, Any] = {}
    with _PeakRSS() as mem:
        walls, inside = time_runs(lambda: recommend(backend, requests, spec.k, batch_size=batch),
                                spec.warmup, spec.repeat, timer)
        row["prefill_ms"] = _stats(timer.times["prefill"])
        row["recommend"] = {"requests_per_s": batch * spec.repeat / sum(walls),
                            "call_ms": _stats(walls),
                            "loop_share": max(0.0, 1 - inside / sum(walls))}
        row["step_ms"] = _stats(_step_probe(backend, requests, spec, timer))
        if spec.generate:
            params = SearchParams("greedy")
            walls, inside = time_runs(lambda: generate(backend, requests, spec.generate, params,
                                                     batch_size=batch), spec.warmup, spec.repeat, timer)
            row["generate"] = {"steps": spec.generate,
                               "slates_per_s": batch * spec.repeat / sum(walls),
                               "items_per_s": batch * spec.generate * spec.repeat / sum(walls),
                               "call_ms": _stats(walls),
                               "loop_share": max(0.0, 1 - inside / sum(walls))}
    row["memory"] = {"peak_rss_delta_mb": mem.mb}
    return row


def variant_info(bundle, precision: str | None) -> dict[str, Any]:
    """What a backend's graphs are: the precision, their bytes on disk (``model_bytes``), and
    for a ``genrec quantize`` variant the accuracy its gate measured against fp32 on held-out
    users (NDCG@10 and HR@10 deltas, relative NDCG@10 loss, excluded node groups), read from
    the manifest: the figures the variant was admitted with, not re-measured here."""
    m = bundle.manifest
    prec = precision or m.precision
    size = 0
    for g in m.graphs:
        path = bundle.graph_path(g, prec)
        size += sum(f.stat().st_size for f in [path, *path.parent.glob(path.name + ".data")] if f.exists())
    out: dict[str, Any] = {"precision": prec, "model_bytes": size}
    v = m.variants.get(prec)
    if v is not None and "deltas" in v.info:
        d = v.info["deltas"]
        out["accuracy_vs_fp32"] = {
            "NDCG@10_delta": d["metrics"]["NDCG@10"]["delta"], "HR@10_delta": d["metrics"]["HR@10"]["delta"],
            "ndcg_relative_loss": d["ndcg_relative_loss"]["value"],
            "ndcg_relative_loss_ci95": d["ndcg_relative_loss"]["ci95"], "judging_users": d["users"],
            "excluded_groups": v.info.get("excluded", {}).get("groups", [])}
    return out


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _speedups(results: list[dict[str, Any]], first: str) -> None:
    """Add ``speedup_vs_first`` to every row: first/this for latencies, this/first for rates."""
    base = {(r["batch"], r["history"]): r for r in results if r["backend"] == first}
    for r in results:
        b = base.get((r["batch"], r["history"]))
        if b is None:
            continue
        s = {"prefill_p50": _ratio(b["prefill_ms"]["p50"], r["prefill_ms"]["p50"]),
             "prefill_p99": _ratio(b["prefill_ms"]["p99"], r["prefill_ms"]["p99"]),
             "step_p50": _ratio(b["step_ms"]["p50"], r["step_ms"]["p50"]),
             "recommend_rps": _ratio(r["recommend"]["requests_per_s"], b["recommend"]["requests_per_s"])}
        if "generate" in r and "generate" in b:
            s["generate_rps"] = _ratio(r["generate"]["slates_per_s"], b["generate"]["slates_per_s"])
        r["speedup_vs_first"] = s


def _environment() -> dict[str, Any]:
    from importlib import metadata

    from .onnxrt import physical_cores

    versions = {}
    for pkg in ("genrec-deploy", "numpy", "torch", "onnxruntime"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "physical_cores": physical_cores(), "load_average": list(os.getloadavg()),
            "versions": versions}


def run_bench(bundle, spec: BenchSpec | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure ``spec`` on ``bundle`` (a Bundle or a bundle directory); the report as a dict."""
    from .registry import get_backend, precision_option, resolve_backend_variant, split_backend

    spec = spec or BenchSpec()
    say = progress or (lambda msg: None)
    bundle = open_bundle(bundle)
    dims = bundle.dims
    spec.check(dims)
    for name in spec.backends:  # an unknown or ambiguous variant fails before any measuring
        resolve_backend_variant(split_backend(name)[0], bundle, split_backend(name)[1])
    real = None
    if spec.data:
        from genrec.data import ItemMap

        real = _real_histories(spec.data, ItemMap.from_list(bundle.id_map), min(spec.history_lengths))
    env = _environment()
    report: dict[str, Any] = {
        "bundle": str(bundle.path), "arch": dims.arch,
        "dims": {"T": dims.max_history, "C": dims.capacity, "topk": dims.topk,
                 "max_exclude": dims.max_exclude, "batch_gears": list(dims.batch_gears),
                 "num_items": dims.num_items, "precision": bundle.precisions[0], "digest": bundle.digest},
        "settings": {k: v for k, v in asdict(spec).items() if k != "options"},
        "environment": env, "memory_method": MEMORY_METHOD, "backends": {}, "results": []}
    sets = {}
    for length in spec.history_lengths:
        for batch in spec.batch_sizes:
            usable = [h for h in real if h[0].size >= length] if real else None
            sets[length, batch] = synthetic_requests(bundle.id_map, batch, length, spec.seed, usable)
    for name in spec.backends:  # BACKEND[:VARIANT]; rows keep the spec as their "backend"
        kind, variant = split_backend(name)
        precision = resolve_backend_variant(kind, bundle, variant)
        options = {**spec.options.get(name, {}), **precision_option(kind, bundle, precision)}
        if spec.threads:
            options.setdefault("threads", spec.threads)
        say(f"loading {name}")
        with _PeakRSS() as mem:
            t0 = time.perf_counter()
            backend = get_backend(kind, bundle, **options)
            load_s = time.perf_counter() - t0
        info = {"load_s": load_s, "load_rss_mb": mem.mb, "options": options,
                **variant_info(bundle, precision)}
        if getattr(backend, "intra_op_threads", None):
            info["threads"] = backend.intra_op_threads
        elif name == "torch":
            import torch

            info["threads"] = torch.get_num_threads()
        report["backends"][name] = info
        timer = BackendTimer(backend)
        try:
            for length in spec.history_lengths:
                for batch in spec.batch_sizes:
                    say(f"{name}: batch {batch}, history {length}")
                    requests, synthetic = sets[length, batch]
                    row = {"backend": name, "batch": batch, "history": length,
                           "gears": sorted({gear(backend, len(c)) for _, c in chunks(backend, requests, batch)}),
                           "synthetic_requests": synthetic}
                    row.update(_measure(backend, requests, batch, spec, timer))
                    report["results"].append(row)
        finally:
            timer.remove()
            backend.close()
    report["environment"]["load_average_after"] = list(os.getloadavg())
    _speedups(report["results"], spec.backends[0])
    return report


# --------------------------------------------------------------------------------------------
# output


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}f}" if abs(x) < 1000 else f"{x:,.0f}"


def report_table(report: dict[str, Any]):
    """A rich Table of the report's rows."""
    from rich.table import Table

    gen = any("generate" in r for r in report["results"])
    first = report["settings"]["backends"][0]
    t = Table(title=f"genrec bench: {report['arch']} T={report['dims']['T']} "
                    f"gears={report['dims']['batch_gears']} (speedups vs {first})")
    for col in ("backend", "batch", "hist", "prefill p50/p99 ms", "step p50/p99 ms", "rec/s",
                *(["slates/s"] if gen else []), "loop %", "peak MB", "prefill ×", "rec/s ×",
                *(["slates/s ×"] if gen else [])):
        t.add_column(col, justify="left" if col == "backend" else "right")
    for r in report["results"]:
        s = r.get("speedup_vs_first", {})
        cells = [r["backend"], str(r["batch"]), str(r["history"]),
                 f"{_fmt(r['prefill_ms']['p50'])} / {_fmt(r['prefill_ms']['p99'])}",
                 f"{_fmt(r['step_ms']['p50'])} / {_fmt(r['step_ms']['p99'])}",
                 _fmt(r["recommend"]["requests_per_s"], 1)]
        if gen:
            cells.append(_fmt(r["generate"]["slates_per_s"], 1) if "generate" in r else "-")
        cells += [_fmt(100 * r["recommend"]["loop_share"], 1), _fmt(r["memory"]["peak_rss_delta_mb"], 1),
                  _fmt(s.get("prefill_p50")), _fmt(s.get("recommend_rps"))]
        if gen:
            cells.append(_fmt(s.get("generate_rps")))
        t.add_row(*cells)
    return t


def variant_summary(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per backend spec: size, and against the first spec at the largest and smallest
    batch (longest history) the recommend throughput ratio and the batch latency ratio
    (first's p50 / this p50: > 1 is faster), plus the gate's accuracy deltas where recorded."""
    rows = report["results"]
    if not rows:
        return []
    hist = max(r["history"] for r in rows)
    big, small = max(r["batch"] for r in rows), min(r["batch"] for r in rows)
    first = report["settings"]["backends"][0]
    base = report["backends"][first]["model_bytes"] if "model_bytes" in report["backends"][first] else None
    out = []
    for name, info in report["backends"].items():
        mine = {r["batch"]: r for r in rows if r["backend"] == name and r["history"] == hist}
        ref = {r["batch"]: r for r in rows if r["backend"] == first and r["history"] == hist}
        lat = (_ratio(ref[small]["recommend"]["call_ms"]["p50"], mine[small]["recommend"]["call_ms"]["p50"])
               if small in mine and small in ref else None)
        acc = info.get("accuracy_vs_fp32", {})
        out.append({"backend": name, "precision": info.get("precision"), "model_bytes": info.get("model_bytes"),
                    "size_ratio": _ratio(info.get("model_bytes") or 0, base) if base else None,
                    f"throughput_ratio_b{big}": mine.get(big, {}).get("speedup_vs_first", {}).get("recommend_rps"),
                    f"latency_ratio_b{small}": lat,
                    "NDCG@10_delta": acc.get("NDCG@10_delta"), "HR@10_delta": acc.get("HR@10_delta"),
                    "ndcg_relative_loss": acc.get("ndcg_relative_loss"),
                    "excluded_groups": acc.get("excluded_groups")})
    return out


def variant_table(report: dict[str, Any]):
    """The variants side by side (``variant_summary``) as a rich Table."""
    from rich.table import Table

    rows = variant_summary(report)
    t = Table(title=f"variants vs {report['settings']['backends'][0]}")
    if not rows:
        return t
    keys = [k for k in rows[0] if k != "backend"]
    t.add_column("backend")
    for k in keys:
        t.add_column(k, justify="right")
    for r in rows:
        cells = []
        for k in keys:
            v = r[k]
            cells.append("-" if v is None else ", ".join(v) if isinstance(v, list) else
                         f"{v / 1e6:.2f} MB" if k == "model_bytes" else
                         f"{v:+.4f}" if k.endswith("delta") else f"{v:+.2%}" if k.endswith("loss") else
                         _fmt(v) if isinstance(v, float) else str(v))
        t.add_row(r["backend"], *cells)
    return t


def check_plot_path(path: str | os.PathLike[str]) -> str:
    """The image format of ``path`` (its suffix); ConfigError when matplotlib cannot write it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    types = FigureCanvasBase.get_supported_filetypes()
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in types:
        raise ConfigError(f"plot {path}: unsupported image type {path.suffix or '(none)'!r}; "
                          f"use one of {', '.join('.' + t for t in sorted(types))}")
    return fmt


def plot_report(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Recommendations/s against batch size and prefill p50 against history length, per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genrec.atomic import atomic_file

    path = Path(path)
    fmt = check_plot_path(path)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    try:
        rows = report["results"]
        lengths = sorted({r["history"] for r in rows})
        batches = sorted({r["batch"] for r in rows})
        for name in report["settings"]["backends"]:
            mine = [r for r in rows if r["backend"] == name]
            for length in lengths:
                pts = sorted((r["batch"], r["recommend"]["requests_per_s"]) for r in mine if r["history"] == length)
                left.plot(*zip(*pts), marker="o", label=f"{name}, history {length}")
            for batch in batches:
                pts = sorted((r["history"], r["prefill_ms"]["p50"]) for r in mine if r["batch"] == batch)
                right.plot(*zip(*pts), marker="o", label=f"{name}, batch {batch}")
        left.set(xscale="log", yscale="log", xlabel="batch size", ylabel="recommendations / s",
                 title="recommend throughput")
        left.set_xticks(batches, [str(b) for b in batches])
        right.set(yscale="log", xlabel="history length", ylabel="prefill p50 (ms)", title="prefill latency")
        for ax in (left, right):
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{report['arch']} T={report['dims']['T']}: {', '.join(report['settings']['backends'])}")
        fig.tight_layout()
        with atomic_file(path, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=100)
    finally:
        plt.close(fig)
