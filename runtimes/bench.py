"""Latency, throughput and memory of backends on one or more bundles, measured in one process.

    from genrec.runtimes.bench import BenchSpec, run_bench
    report = run_bench("bundle/", BenchSpec(backends=("torch", "onnxruntime"), generate=10))
    curve = run_bench(["b200/", "b512/", "b1024/", "b2048/"],        # one model exported at 4 T
                      BenchSpec(backends=("onnxruntime", "torch.compile"), batch_sizes=(1, 16),
                                history_lengths=None))              # None: each bundle's own T

Why rounds: this kind of shared VM drifts (the same sgemm measured 120-280 GFLOP/s within
minutes), and timing backend A for a minute and then backend B measured the drift as much as
A/B: under load the rows of a one-after-the-other bench swung 10-100x. So the backends take
turns, as in ``benchmarks/serving_bench.py``. Per bundle, every backend of ``backends`` is
opened first (load time and the resident set it adds, one backend at a time), then for every
history length and batch size (a configuration) as below. Open side by side, they still run
one call at a time, and an idle pool takes no cores from the next: onnxruntime's threads stop
spinning the moment a graph returns (``onnxrt.py``).

1. warm-up, untimed, backend after backend: one prefill for the step measurement, then
   ``warmup`` runs (at least one) of each measurement below. torch.compile and openvino
   compile on the first call of each batch size (seconds to minutes), so with them
   ``warmup`` must be >= 1. Memory is measured here: the resident-set high-water mark over
   the warm-up minus the resident set just before it (Linux: VmHWM, reset through
   /proc/self/clear_refs; elsewhere the growth of ``ru_maxrss``, which only shows new
   process-wide peaks). It covers everything the process touches (numpy, torch, onnxruntime
   alike); it is taken on the configuration's first calls because an allocator that keeps
   what it freed (onnxruntime's arena) grows there and never again, and a backend that
   compiles per batch size includes its compilation on the first configuration of each;
2. ``rounds`` rounds: in each, every backend in turn runs every measurement ``repeat`` timed
   times, and the median of each round is kept (``rounds_ms``):

   - ``recommend`` over ``batch`` requests; every ``backend.prefill`` call inside is timed on
     its own (``prefill_ms``); the time outside the backend is the loop's own Python
     (validation, padding, exclusions, results): ``loop_share``;
   - ``step_ms``: ``backend.step`` on the prefilled batch at the first free cache slot (each
     call rewrites that slot: the same work as a decoding step);
   - with ``generate=N``: greedy slates of N items through ``generate``.

Figures: throughputs (requests/s, slates/s, items/s) are the batch over the median over
rounds of the per-round median call time; ``loop_share`` is the median over rounds;
latency distributions (``prefill_ms``, ``step_ms``, ``call_ms``: p50, p99, mean, min, n) are
over every timed call, with the per-round medians beside them. ``speedup_vs_first`` is, per
row, the median over rounds of the per-round ratio to the first backend (first/this for
latencies, this/first for rates: > 1 is faster), each round's ratio in ``speedup_rounds``;
the two were timed seconds apart, so drift cancels. The p99 ratio is of the overall p99s (a
round holds too few calls for a tail). The first backend's ratios are exactly 1.

Several bundles (typically one model exported at several T) draw the curve against history
length: each bundle is measured in turn (its backends opened, its configurations run in
rounds, its backends closed), by default at its own full history length T; every row
carries the bundle's ``T`` and path.

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
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genrec.errors import ConfigError

from .base import open_bundle
from .batching import chunks, exclusions, gear, history_exclusions, pad, prefill_rows

__all__ = ["BenchSpec", "COMPILE_ON_FIRST_CALL", "MEMORY_METHOD", "check_plot_path", "parse_sizes",
           "plot_report", "report_table", "run_bench", "synthetic_requests", "variant_info", "variant_summary",
           "variant_table"]

T0 = 1_600_000_000  # synthetic timestamps start here (unix seconds)


# backends that compile on the first call of each batch size: that call must never be timed
COMPILE_ON_FIRST_CALL = ("torch.compile", "openvino")


@dataclass
class BenchSpec:
    """What to measure; ``check`` raises ConfigError for anything that cannot run."""

    backends: tuple[str, ...] = ("torch", "onnxruntime")
    batch_sizes: tuple[int, ...] = (1, 8, 64)
    history_lengths: tuple[int, ...] | None = (50, 200)  # None: each bundle's own T
    generate: int | None = None  # slate length for the generation measurement (None: skip)
    repeat: int = 10  # timed runs per backend per round (the round keeps their median)
    warmup: int = 2  # untimed runs before the rounds
    rounds: int = 5  # rounds in which the backends take turns
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
        sizes = [("batch sizes", self.batch_sizes)]
        if self.history_lengths is not None:
            sizes.append(("history lengths", self.history_lengths))
        for what, values in sizes:
            if not values or min(values) < 1:
                raise ConfigError(f"{what} must be positive integers, got {list(values)}")
        for what, value, least in (("repeat", self.repeat, 1), ("rounds", self.rounds, 1),
                                   ("warmup", self.warmup, 0)):
            if value < least:
                raise ConfigError(f"{what} must be >= {least}, got {value}")
        lazy = [b for b in self.backends if self.compiles_on_first_call(b)]
        if lazy and self.warmup < 1:
            raise ConfigError(f"warmup must be >= 1 with {lazy[0]}: it compiles on the first call of each "
                              "batch size, which must not be timed")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if not 1 <= self.k <= dims.topk:
            raise ConfigError(f"k={self.k} must be in 1..{dims.topk} (the bundle's top K')")
        room = dims.capacity - dims.max_history
        if self.generate is not None and not 1 <= self.generate <= room:
            raise ConfigError(f"generate={self.generate} must be in 1..{room}: the bundle's cache holds "
                              f"{room} generated items after T={dims.max_history}")

    def compiles_on_first_call(self, name: str) -> bool:
        """Whether backend spec ``name`` (BACKEND[:VARIANT]) compiles per batch size on first use:
        torch.compile, openvino, or torch given ``compile=True``."""
        from .registry import split_backend

        kind = split_backend(name)[0]
        return kind in COMPILE_ON_FIRST_CALL or bool(self.options.get(name, {}).get("compile"))

    def lengths_for(self, dims) -> tuple[int, ...]:
        """The history lengths measured on a bundle: those asked, else the bundle's full T."""
        return tuple(self.history_lengths) if self.history_lengths is not None else (dims.max_history,)


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
_MEMORY_CALL = ("each backend's warm-up at that configuration, its first calls there, before any timing (an "
                "allocator that keeps what it freed, as onnxruntime's arena does, grows there and nowhere "
                "else; a backend that compiles per batch size, torch.compile or openvino, includes its "
                "compilation on the first configuration of each batch size)")
MEMORY_METHOD = (
    "peak resident set (VmHWM, reset through /proc/self/clear_refs before each measurement) minus the "
    "resident set just before it, over " + _MEMORY_CALL + ": host memory of the whole process (numpy, "
    "torch, onnxruntime)"
    if _RESET_PEAK else
    "growth of the process's peak resident set (getrusage ru_maxrss) over " + _MEMORY_CALL + ": host memory "
    "of the whole process; only new process-wide peaks show, so later rows may read 0")


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


def _med(xs: Sequence[float]) -> float:
    return float(np.median(xs))


def _step_inputs(backend, requests: list) -> tuple:
    """Arguments of ``backend.step`` after one prefill of ``requests`` (at most the largest gear):
    the first free cache slot, any valid item; every call rewrites that slot."""
    from .decoding import prepare

    rows = prepare(backend, requests[:max(backend.batch_gears)])
    excl, _ = exclusions(backend, history_exclusions(rows))
    b = prefill_rows(backend, rows, excl)
    g = b.state.batch
    new_item = pad(np.maximum(b.out.topk_ids[:len(rows), 0], 1), g)  # any valid id
    return b.state, new_item, pad(b.lengths, g), pad(b.request_time, g), pad(excl, g)


class _Probe:
    """One backend's runs at one configuration: warm-up, timed runs round by round (each call's
    seconds kept, the medians taken in ``row``); memory is measured over the warm-up."""

    def __init__(self, backend, timer: BackendTimer, requests: list, batch: int, spec: BenchSpec):
        self.backend, self.timer, self.requests, self.batch, self.spec = backend, timer, requests, batch, spec
        self.walls: dict[str, list[list[float]]] = {kind: [] for kind in _kinds(spec)}  # per round, per call
        self.inside: dict[str, list[float]] = {kind: [] for kind in _kinds(spec)}  # per round, in the backend
        self.prefill: list[list[float]] = []  # per round, every prefill call inside recommend
        self._step_args: tuple | None = None

    def _run(self, kind: str) -> None:
        from .decoding import SearchParams, generate, recommend

        if kind == "recommend":
            recommend(self.backend, self.requests, self.spec.k, batch_size=self.batch)
        elif kind == "step":
            self.backend.step(*self._step_args)
        else:
            generate(self.backend, self.requests, self.spec.generate, SearchParams("greedy"), batch_size=self.batch)

    def warm_up(self) -> float:
        """Untimed: the step measurement's prefill, then ``warmup`` runs of each kind (the first
        call of a batch size is where torch.compile and openvino compile); returns the peak
        resident-set growth over them, MiB. Memory is measured here, on the configuration's
        first calls, because an arena that grew there keeps what it took: a call after the
        timed rounds reads 0 MB for onnxruntime however large the configuration."""
        with _PeakRSS() as mem:
            self._step_args = _step_inputs(self.backend, self.requests)
            for kind in self.walls:
                for _ in range(max(1, self.spec.warmup)):
                    self._run(kind)
        return mem.mb

    def timed(self, kind: str) -> None:
        """This round's ``repeat`` timed runs of ``kind``."""
        walls, inside, prefill = [], 0.0, []
        for _ in range(self.spec.repeat):
            self.timer.clear()
            t0 = time.perf_counter()
            self._run(kind)
            walls.append(time.perf_counter() - t0)
            inside += self.timer.total()
            prefill += self.timer.times["prefill"]
        self.walls[kind].append(walls)
        self.inside[kind].append(inside)
        if kind == "recommend":
            self.prefill.append(prefill)

    def _rounds_s(self, kind: str) -> list[float]:
        return [_med(w) for w in self.walls[kind]]

    def _calls(self, kind: str) -> dict[str, Any]:
        """Every timed call's distribution, the median of each round (ms) and the loop's share."""
        flat = [x for w in self.walls[kind] for x in w]
        share = [max(0.0, 1 - i / sum(w)) for w, i in zip(self.walls[kind], self.inside[kind])]
        return {"call_ms": _stats(flat), "rounds_ms": [x * 1e3 for x in self._rounds_s(kind)],
                "loop_share": _med(share)}

    def row(self) -> dict[str, Any]:
        """The figures of this configuration (module docstring: medians over rounds)."""
        n, rec = self.batch, self._calls("recommend")
        row: dict[str, Any] = {
            "prefill_ms": {**_stats([x for p in self.prefill for x in p]),
                           "rounds_ms": [_med(p) * 1e3 for p in self.prefill]},
            "recommend": {"requests_per_s": n / _med(self._rounds_s("recommend")), **rec},
            "step_ms": {**_stats([x for w in self.walls["step"] for x in w]),
                        "rounds_ms": [x * 1e3 for x in self._rounds_s("step")]}}
        if self.spec.generate:
            slates = n / _med(self._rounds_s("generate"))
            row["generate"] = {"steps": self.spec.generate, "slates_per_s": slates,
                               "items_per_s": slates * self.spec.generate, **self._calls("generate")}
        return row


# idle before each backend's turn: threads that spin on after a call (OpenMP's, TBB's, an
# onnxruntime pool without force_spinning_stop) would otherwise take a core from whichever
# backend runs next
SETTLE_S = 0.05


def _kinds(spec: BenchSpec) -> tuple[str, ...]:
    return ("recommend", "step", *(("generate",) if spec.generate else ()))


def _measure_in_rounds(probes: dict[str, _Probe], spec: BenchSpec) -> dict[str, dict[str, Any]]:
    """Warm every backend up, then ``spec.rounds`` rounds in which the backends take turns at
    each kind of run (the order rotated every round, so that none always follows the same
    one); memory comes from the warm-ups; the rows of this configuration, by backend spec."""
    memory = {name: p.warm_up() for name, p in probes.items()}
    order = list(probes.values())
    for r in range(spec.rounds):
        turn = order[r % len(order):] + order[:r % len(order)]
        for kind in _kinds(spec):
            for p in turn:
                time.sleep(SETTLE_S)
                p.timed(kind)
    rows = {name: p.row() for name, p in probes.items()}
    for name in probes:
        rows[name]["memory"] = {"peak_rss_delta_mb": memory[name]}
    _speedups(rows, spec.backends[0])
    return rows


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


def _round_ratios(num: Sequence[float], den: Sequence[float]) -> list[float | None]:
    return [_ratio(a, b) for a, b in zip(num, den)]


def _median_ratio(ratios: Sequence[float | None]) -> float | None:
    return None if not ratios or any(r is None for r in ratios) else _med(ratios)


def _speedups(rows: dict[str, dict[str, Any]], first: str) -> None:
    """Add ``speedup_vs_first`` and ``speedup_rounds`` to the rows of one configuration: per
    round the first backend's time over this one's (first/this for latencies, this/first for
    rates: > 1 is faster), and the median over rounds; prefill p99 from the overall p99s."""
    base = rows[first]
    paired = {"prefill_p50": ("prefill_ms", "rounds_ms"), "step_p50": ("step_ms", "rounds_ms"),
              "recommend_rps": ("recommend", "rounds_ms"), "generate_rps": ("generate", "rounds_ms")}
    for r in rows.values():
        per_round = {key: _round_ratios(base[part][field_], r[part][field_])
                     for key, (part, field_) in paired.items() if part in r and part in base}
        s = {key: _median_ratio(v) for key, v in per_round.items()}
        s["prefill_p99"] = _ratio(base["prefill_ms"]["p99"], r["prefill_ms"]["p99"])
        r["speedup_vs_first"] = {key: s[key] for key in ("prefill_p50", "prefill_p99", "step_p50",
                                                          "recommend_rps", "generate_rps") if key in s}
        r["speedup_rounds"] = per_round


def _environment() -> dict[str, Any]:
    from importlib import metadata

    from .onnxrt import physical_cores

    versions = {}
    for pkg in ("genrec-deploy", "numpy", "torch", "onnxruntime", "openvino"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "physical_cores": physical_cores(), "load_average": list(os.getloadavg()),
            "versions": versions}


def _dims(bundle) -> dict[str, Any]:
    d = bundle.dims
    return {"T": d.max_history, "C": d.capacity, "topk": d.topk, "max_exclude": d.max_exclude,
            "batch_gears": list(d.batch_gears), "num_items": d.num_items, "precision": bundle.precisions[0],
            "digest": bundle.digest}


def _check(bundle, spec: BenchSpec) -> None:
    """Everything that can be refused on ``bundle`` (a bad size, an unknown, ambiguous or
    unloadable backend or variant), before anything is loaded or measured."""
    from .registry import resolve_backend_variant, split_backend

    spec.check(bundle.dims)
    for name in spec.backends:
        resolve_backend_variant(split_backend(name)[0], bundle, split_backend(name)[1])


def _request_sets(bundle, spec: BenchSpec, lengths: Sequence[int]) -> dict[tuple[int, int], tuple[list, int]]:
    """(history length, batch) -> (requests, how many synthetic), built once for every backend."""
    real = None
    if spec.data:
        from genrec.data import ItemMap

        real = _real_histories(spec.data, ItemMap.from_list(bundle.id_map), min(lengths))
    sets = {}
    for length in lengths:
        for batch in spec.batch_sizes:
            usable = [h for h in real if h[0].size >= length] if real else None
            sets[length, batch] = synthetic_requests(bundle.id_map, batch, length, spec.seed, usable)
    return sets


def _open_backends(bundle, spec: BenchSpec, stack: ExitStack, say: Callable[[str], None]
                   ) -> tuple[dict[str, tuple[Any, BackendTimer]], dict[str, dict[str, Any]]]:
    """Every backend of ``spec`` on ``bundle``, one after the other so that each one's load time
    and resident set are its own; closed (timers removed first) when ``stack`` unwinds, also
    when a later one fails to open. ({spec: (backend, timer)}, {spec: load info})."""
    from .registry import get_backend, precision_option, resolve_backend_variant, split_backend

    opened, infos = {}, {}
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
        stack.callback(backend.close)
        timer = BackendTimer(backend)
        stack.callback(timer.remove)
        info = {"load_s": load_s, "load_rss_mb": mem.mb, "options": options, **variant_info(bundle, precision)}
        threads = _threads(kind, backend)
        if threads:
            info["threads"] = threads
        opened[name], infos[name] = (backend, timer), info
    return opened, infos


def _threads(kind: str, backend) -> int | None:
    if getattr(backend, "intra_op_threads", None):
        return backend.intra_op_threads
    if kind in ("torch", "torch.compile"):
        import torch

        return torch.get_num_threads()
    return getattr(backend, "threads", None)


def _bench_bundle(bundle, spec: BenchSpec, say: Callable[[str], None]
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Open every backend on ``bundle``, measure each configuration in rounds, close them all;
    (the bundle's entry of ``report["bundles"]``, its rows: by backend, history, batch)."""
    t, lengths = bundle.dims.max_history, spec.lengths_for(bundle.dims)
    sets = _request_sets(bundle, spec, lengths)
    rows = []
    with ExitStack() as stack:
        opened, infos = _open_backends(bundle, spec, stack, say)
        for length in lengths:
            for batch in spec.batch_sizes:
                say(f"T={t}: batch {batch}, history {length}, {spec.rounds} rounds of {', '.join(spec.backends)}")
                requests, synthetic = sets[length, batch]
                probes = {name: _Probe(be, timer, requests, batch, spec) for name, (be, timer) in opened.items()}
                for name, row in _measure_in_rounds(probes, spec).items():
                    be = opened[name][0]
                    rows.append({"backend": name, "bundle": str(bundle.path), "T": t, "batch": batch,
                                 "history": length,
                                 "gears": sorted({gear(be, len(c)) for _, c in chunks(be, requests, batch)}),
                                 "synthetic_requests": synthetic, **row})
    order = {name: i for i, name in enumerate(spec.backends)}
    rows.sort(key=lambda r: order[r["backend"]])  # stable: history then batch within a backend
    entry = {"path": str(bundle.path), "digest": bundle.digest, "dims": _dims(bundle), "backends": infos}
    return entry, rows


def run_bench(bundle, spec: BenchSpec | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure ``spec`` on ``bundle``, the report as a dict. ``bundle``: a Bundle or a bundle
    directory, or a list or tuple of them (the curve against T: each measured in turn, by
    default at its own T). ``report["dims"]``, ``["arch"]``, ``["backends"]`` are the first
    bundle's; ``report["bundles"]`` has every bundle's path, digest, dims and backends."""
    spec = spec or BenchSpec()
    say = progress or (lambda msg: None)
    bundles = [open_bundle(b) for b in (bundle if isinstance(bundle, (list, tuple)) else [bundle])]
    if not bundles:
        raise ConfigError("no bundles to benchmark")
    for b in bundles:  # refuse anything before the first minute of measuring
        _check(b, spec)
    first = bundles[0]
    report: dict[str, Any] = {
        "bundle": str(first.path), "arch": first.dims.arch, "dims": _dims(first), "bundles": [],
        "settings": {k: v for k, v in asdict(spec).items() if k != "options"},
        "environment": _environment(), "memory_method": MEMORY_METHOD, "backends": {}, "results": []}
    for b in bundles:
        if len(bundles) > 1:
            say(f"bundle {b.path} (T={b.dims.max_history})")
        entry, rows = _bench_bundle(b, spec, say)
        report["bundles"].append(entry)
        report["results"] += rows
    report["backends"] = report["bundles"][0]["backends"]
    report["environment"]["load_average_after"] = list(os.getloadavg())
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
    ts = [b["dims"]["T"] for b in report.get("bundles", [])] or [report["dims"]["T"]]
    curve = len(ts) > 1
    t = Table(title=f"genrec bench: {report['arch']} T={','.join(map(str, ts))} "
                    f"gears={report['dims']['batch_gears']}, {report['settings'].get('rounds', 1)} rounds "
                    f"(speedups vs {first}: median of per-round ratios)")
    for col in ("backend", *(["T"] if curve else []), "batch", "hist", "prefill p50/p99 ms", "step p50/p99 ms",
                "rec/s", *(["slates/s"] if gen else []), "loop %", "peak MB", "prefill ×", "rec/s ×",
                *(["slates/s ×"] if gen else [])):
        t.add_column(col, justify="left" if col == "backend" else "right")
    for r in report["results"]:
        s = r.get("speedup_vs_first", {})
        cells = [r["backend"], *([str(r["T"])] if curve else []), str(r["batch"]), str(r["history"]),
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
    batch (longest history; of several bundles, the longest T) the recommend throughput ratio
    and the batch latency ratio (both the median over rounds of the first's call time over this
    one's: > 1 is faster), plus the gate's accuracy deltas where recorded."""
    rows = report["results"]
    if not rows:
        return []
    top = max((r.get("T", 0), r["history"]) for r in rows)  # several bundles: the longest T's rows
    rows = [r for r in rows if (r.get("T", 0), r["history"]) == top]
    backends = next((b["backends"] for b in report.get("bundles", []) if b["dims"]["T"] == top[0]),
                    report["backends"])
    big, small = max(r["batch"] for r in rows), min(r["batch"] for r in rows)
    first = report["settings"]["backends"][0]
    base = backends[first]["model_bytes"] if "model_bytes" in backends[first] else None
    out = []
    for name, info in backends.items():
        mine = {r["batch"]: r.get("speedup_vs_first", {}) for r in rows if r["backend"] == name}
        acc = info.get("accuracy_vs_fp32", {})
        out.append({"backend": name, "precision": info.get("precision"), "model_bytes": info.get("model_bytes"),
                    "size_ratio": _ratio(info.get("model_bytes") or 0, base) if base else None,
                    f"throughput_ratio_b{big}": mine.get(big, {}).get("recommend_rps"),
                    f"latency_ratio_b{small}": mine.get(small, {}).get("recommend_rps"),
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
    """One bundle: recommendations/s against batch size and prefill p50 against history length,
    per backend. Several bundles (the curve): prefill p50, slate latency (with ``generate``)
    and peak memory against the bundles' T, log-log, one line per backend and batch size.
    Written atomically: a failed plot leaves no partial image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genrec.atomic import atomic_file

    path = Path(path)
    fmt = check_plot_path(path)
    curve = len(report.get("bundles", [])) > 1
    gen = any("generate" in r for r in report["results"])
    panels = (3 if gen else 2) if curve else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5))
    try:
        (_draw_curve if curve else _draw_grid)(report, list(axes))
        for ax in axes:
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        ts = [b["dims"]["T"] for b in report.get("bundles", [])] or [report["dims"]["T"]]
        fig.suptitle(f"{report['arch']} T={','.join(map(str, ts))}: {', '.join(report['settings']['backends'])}")
        fig.tight_layout()
        with atomic_file(path, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=100)
    finally:
        plt.close(fig)


def _draw_grid(report: dict[str, Any], axes: list) -> None:
    """One bundle: throughput against batch size, prefill p50 against history length."""
    left, right = axes
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


def _curve_rows(rows: list[dict[str, Any]], backends: Sequence[str]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """(backend, batch) -> one row per T, by T: each bundle's longest measured history; keys in
    the order of ``backends``, then batch."""
    best: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in rows:
        key = (r["backend"], r["batch"], r["T"])
        if key not in best or r["history"] > best[key]["history"]:
            best[key] = r
    order = {name: i for i, name in enumerate(backends)}
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for (name, batch, _), r in sorted(best.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][1:])):
        out.setdefault((name, batch), []).append(r)
    return out


def _draw_curve(report: dict[str, Any], axes: list) -> None:
    """Several bundles: prefill p50, slate call time (batch / slates per s: the median over
    rounds) and peak memory against T, log-log. A memory point of 0 MB (nothing above the warm
    process's resident set) cannot sit on a log axis and is left out."""
    rows = report["results"]
    figures: list[tuple[str, str, Callable[[dict[str, Any]], float | None]]] = [
        ("prefill p50 (ms)", "prefill latency", lambda r: r["prefill_ms"]["p50"])]
    if len(axes) == 3:
        steps = next(r["generate"]["steps"] for r in rows if "generate" in r)
        figures.append(("slate call (ms)", f"greedy slates of {steps} items",
                        lambda r: 1e3 * r["batch"] / r["generate"]["slates_per_s"] if "generate" in r else None))
    figures.append(("peak resident-set growth (MB)", "peak memory", lambda r: r["memory"]["peak_rss_delta_mb"]))
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):  # 0.5, 2, 40 rather than 5x10^-1, 2x10^0, 4x10^1
        def _num_to_string(self, x, vmin, vmax):
            return f"{x:g}"

    ts = sorted({r["T"] for r in rows})
    for ax, (ylabel, title, value) in zip(axes, figures):
        drawn = False
        for (name, batch), line in _curve_rows(rows, report["settings"]["backends"]).items():
            pts = [(r["T"], v) for r in line if (v := value(r)) is not None and v > 0]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{name}, batch {batch}")
                drawn = True
        ax.set(xscale="log", xlabel="history length T (one bundle each)", ylabel=ylabel, title=title)
        ax.set_xlim(ts[0] / 1.2, ts[-1] * 1.2)
        ax.set_xticks(ts, [str(t) for t in ts])
        ax.set_xticks([], minor=True)
        if drawn:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(Plain())
            ax.yaxis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        else:
            ax.text(0.5, 0.5, "no growth measured (0 MB)", transform=ax.transAxes, ha="center", va="center")
