"""The ``onnxruntime`` backend: a bundle's prefill/step/rank graphs on any execution provider.

The cache never leaves the provider's memory. Every run goes through IO binding: ``past_*``
inputs are bound to the state's OrtValues and only the small outputs (top-K' ids/scores,
log_z, user_emb) are bound to host numpy arrays. A step writes its cache in place where the
graph allows it (``genrec.onnx_graph.writable_in_place``: the ``past_*`` input is read only
by the ScatterElements that makes ``present_*``): ``present_*`` is bound to the same OrtValue,
the scatter kernel sees one address and writes one row per batch entry instead of copying
the cache. That is how onnxruntime-genai shares past and present buffers, and it took the
cache write from about a third of a batch-64 HSTU step to almost nothing. Any other cache
tensor is double-buffered: ``present_*`` goes to a second set of OrtValues and the sets swap.
In-place writing is on by default for the CPU provider (where it is tested); pass
``inplace_cache=True`` to use it on CUDA or CANN as well, ``False`` to turn it off.

Beam reordering (``reorder``) runs a tiny ONNX graph, one ``Gather(axis=0)`` per cache
tensor, built at load time from the step graph's cache inputs and run on the same provider
with the same binding scheme: the index goes in as a small host array, the cache rows are
gathered device-side into the spare set. This works unchanged on CPU, CUDA and CANN, and
never maps a cache buffer into numpy (the alternative for CPU only, ``numpy.take`` on views
of preallocated buffers, was rejected because it would not carry over to device memory).

Speed (see ``benchmarks/serving_bench.py`` and ``benchmarks/peers_bench.py``): sessions use
every graph optimisation (``ORT_ENABLE_ALL``), sequential execution and, unless told
otherwise, one intra-op thread per physical core the process may run on. Each session has its
own thread pool whose threads spin while its graph runs and for at most ``spin_after_us``
(500 µs) after it returns, then sleep (``spin_window``): threads that spin on after their graph
ends (onnxruntime's default) steal the cores from the next graph's pool, threads stopped at once
wake up on every call of the loop, and threads that never spin pay a wake-up for every parallel
op (2 threads, idle machine: batch-1 HSTU prefill 11% and batch-64 6% slower without spinning).
On a host whose cores are already busy, spinning threads fight the
other work for them (measured under load 3 on 2 cores: 1.4-5x slower): pass
``spinning=False`` there (``--backend-option spinning=false``). ``shared_threads=True`` puts
every session on onnxruntime's process-wide pool instead, but then every other onnxruntime
session in the process must use it too.

A state's cache buffers go back to a small pool when the state dies and serve the next
prefill of that batch size (``_lease``), and the small outputs are bound to host arrays once
per (graph, batch) and copied out after each run (``_binding``): per-call buffers and bindings
cost 5-15% of a prefill (page faults at batch 64, wrappers at batch 1). A cache set that is
already bound is not bound again: a batch-1 prefill that reuses the last state's buffers, or
a step writing its cache in place, binds its inputs only.

Where 1 is a batch gear, batch 1 runs on a prefill session of its own whose batch axis is
fixed (``static_batch1``, ``add_free_dimension_override_by_name``): onnxruntime folds the
graph's shape plumbing at load time and a batch-1 HSTU prefill runs 5% faster, with the same
outputs bit for bit. It holds a second copy of the prefill's weights, so prefill graphs over
64 MiB or stored with external data (large catalogues) do not get one.

On the CPU, HSTU graphs run with their time-bucket Log replaced by a lookup of the float's
bit cell (``bitcast_buckets``, ``genrec.bucket_table``; onnxruntime with ONNX opset 26's
BitCast): the same buckets and outputs bit for bit, batch-64 prefill 6% faster on 1 and 2
threads. Bundles keep the standard graph (ATC takes no opset 26); only the loaded copy changes.

Before a graph is loaded, ``CastLike(x, like)`` nodes
whose ``like`` has a known element type become ``Cast(x, to=...)`` (the same op by
definition): the CPU provider has no CastLike kernel, so onnxruntime cannot constant-fold
through one, and torch's exporter puts them on batch-independent subgraphs (the normalised
item table, the (T, T) position bias and causal mask), which then ran on every call.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from genrec.bucket_table import OPSET as BITCAST_OPSET
from genrec.bucket_table import bitcast_time_buckets
from genrec.bundle import Bundle
from genrec.errors import BundleError, ConfigError, MissingBackend
from genrec.onnx_graph import castlike_to_cast, writable_in_place

from .base import BackendBase, PrefillBatch, State, StepOutput, open_bundle

PROVIDERS = {  # --provider -> (execution provider, OrtValue device type)
    "cpu": ("CPUExecutionProvider", "cpu"),
    "cuda": ("CUDAExecutionProvider", "cuda"),
    "cann": ("CANNExecutionProvider", "cann"),
}
_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
       "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


SPIN_AFTER_US = 500  # default of ``spin_after_us``
SPIN_WINDOW_FROM = (1, 26)  # the first onnxruntime that bounds spinning in time


def spin_window(version: str, spin_after_us: int) -> dict[str, str]:
    """Session settings that let a pool's threads spin for ``spin_after_us`` µs after a run
    before they sleep (``session.intra_op.spin_duration_us``), or stop them the moment it
    returns (``session.force_spinning_stop``) where that is 0 or this onnxruntime predates
    the time bound (an unbounded spin after every run is what ``force_spinning_stop`` is for).

    Why a window: in the decoding loop a graph's calls come with host work between them; a
    pool stopped at once pays a wake-up of its threads (of an idle vCPU) on every call, a pool
    that spins on steals the cores of the next session's pool. 2 threads, HSTU T=512, idle VM,
    against stopping at once: 500 µs made ``recommend`` at batch 1 7% faster and 10-item slates
    10% (batch 1) and 3% (batch 16) faster; 2000 µs made the batch-16 slate 5% slower than
    stopping at once, and an unbounded spin 1.8x slower."""
    try:
        have = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        have = (0, 0)
    if spin_after_us < 0:
        raise ConfigError(f"onnxruntime backend: spin_after_us must be >= 0, got {spin_after_us}")
    if spin_after_us == 0 or have < SPIN_WINDOW_FROM:
        return {"session.force_spinning_stop": "1"}
    return {"session.force_spinning_stop": "0", "session.intra_op.spin_duration_us": str(spin_after_us)}


_SHARED: list[int] = []  # size of the process-wide pool, once this module created it


def shared_pool(ort, threads: int, asked: int | None) -> int:
    """The size of onnxruntime's process-wide intra-op pool (``shared_threads``), creating it
    with ``threads`` threads on first use; ConfigError if it can't be created or a different
    size was ``asked`` for (it can be sized once per process).

    Once it exists, *every* session in the process must opt into it (onnxruntime refuses
    sessions with their own pools), which is why it is opt-in."""
    if not _SHARED:
        try:
            ort.set_global_thread_pool_sizes(threads, 1)
        except Exception as e:  # noqa: BLE001 - AttributeError on old builds, Fail when already set
            raise ConfigError(f"onnxruntime backend: cannot create a shared pool of {threads} threads "
                              f"({str(e).splitlines()[0][:120]}); it can be created once per process") from None
        _SHARED.append(threads)
    elif asked and asked != _SHARED[0]:
        raise ConfigError(f"onnxruntime backend: the shared pool has {_SHARED[0]} threads, "
                          f"not {asked}; it can be sized once per process")
    return _SHARED[0]


def fold_castlike(path: str | os.PathLike[str], model=None) -> bytes | None:
    """The model at ``path`` with CastLike rewritten as Cast (``genrec.onnx_graph``), serialised;
    None when there is nothing to rewrite (or weights are external). Bundles from
    ``genrec export`` have no CastLike; this keeps older or hand-made graphs fast too.
    ``model``: the graph already loaded from ``path`` (without external data), to save a load."""
    import onnx

    model = model if model is not None else onnx.load(str(path), load_external_data=False)
    if _external(model):
        return None  # bytes would lose the path external data is resolved against
    return model.SerializeToString() if castlike_to_cast(model) else None


def _external(model) -> bool:
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


STATIC1 = "prefill@1"  # the batch-1 prefill session with a fixed batch axis (``static_batch1``)
STATIC_MAX_BYTES = 64 << 20  # larger prefill graphs get no second session (its weights would be a copy)


def batch_dim(model) -> str | None:
    """The symbolic name of the graph's batch axis (its first input's first dimension)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else []
    return dims[0].dim_param or None if dims else None


def graph_bytes(model: bytes | str) -> float:
    """Size of a graph as ``load_graph`` hands it over: its bytes; a path means external data,
    i.e. a graph too large to hold twice (infinite)."""
    return len(model) if isinstance(model, bytes) else float("inf")


def load_graph(path: Path, *, bitcast_buckets: bool = False) -> tuple[bytes | str, object]:
    """(what to hand ``InferenceSession``, the graph without external data) for the graph file
    at ``path``, read from disk once: its bytes (CastLike folded, ``castlike_to_cast``; with
    ``bitcast_buckets``, HSTU's time-bucket Log replaced by a bit-cell lookup, see
    ``genrec.bucket_table``), or its path when weights are external (they resolve against it,
    and the graph runs as it is)."""
    import onnx

    data = Path(path).read_bytes()
    proto = onnx.load_from_string(data)
    if _external(proto):
        return str(path), proto
    changed = castlike_to_cast(proto)
    if bitcast_buckets:
        changed = bitcast_time_buckets(proto) > 0 or changed
    return (proto.SerializeToString() if changed else data), proto


_BITCAST: dict[str, bool] = {}


def bitcast_supported(ort) -> bool:
    """Whether this onnxruntime runs ONNX opset 26's BitCast on the CPU (a one-node session,
    tried once per process): ``bitcast_time_buckets`` needs it, onnxruntime 1.18 has none."""
    if ort.__version__ not in _BITCAST:
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("BitCast", ["x"], ["y"], to=TensorProto.UINT32)], "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.UINT32, [1])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", BITCAST_OPSET)], ir_version=10)
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        try:
            ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            _BITCAST[ort.__version__] = True
        except Exception:  # noqa: BLE001 - any refusal means: not supported here
            _BITCAST[ort.__version__] = False
    return _BITCAST[ort.__version__]


def gather_rows_model(specs: list[tuple[str, list, str]]):
    """ONNX model ``y.i = Gather(x.i, index, axis=0)`` for each (name, shape, ort type) cache input."""
    from onnx import TensorProto, helper

    etype = {"tensor(float)": TensorProto.FLOAT, "tensor(float16)": TensorProto.FLOAT16,
             "tensor(int32)": TensorProto.INT32, "tensor(int64)": TensorProto.INT64}
    nodes, inputs, outputs = [], [helper.make_tensor_value_info("index", TensorProto.INT64, ["n"])], []
    for i, (_, shape, ort_type) in enumerate(specs):
        inputs.append(helper.make_tensor_value_info(f"x.{i}", etype[ort_type], ["batch", *shape[1:]]))
        outputs.append(helper.make_tensor_value_info(f"y.{i}", etype[ort_type], ["n", *shape[1:]]))
        nodes.append(helper.make_node("Gather", [f"x.{i}", "index"], [f"y.{i}"], axis=0))
    graph = helper.make_graph(nodes, "reorder", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


class _Bound:
    """One (graph, batch)'s IOBinding, its host output arrays, and the cache lists bound to it
    as input and as output (rebound only when another list comes)."""

    __slots__ = ("binding", "host", "cache_in", "cache_out")

    def __init__(self, binding, host: dict[str, np.ndarray]):
        self.binding, self.host, self.cache_in, self.cache_out = binding, host, None, None


class _Lease:
    """The cache buffers of one live state: ``cache`` (C-level OrtValues the next run reads as
    ``past_*``) and ``spare`` (the same shapes, a run may write into; None until needed). Lists
    are replaced, never changed in place: a run skips rebinding a list it bound last time."""

    def __init__(self, batch: int, cache: list, spare: list | None = None):
        self.batch, self.cache, self.spare = batch, cache, spare  # batch: the rows both sets hold


class OrtState(State):
    """A prefill's cache buffers (``lease``); when the state dies, ``give_back(lease)`` hands
    them to the next prefill of the same batch size.

    ``__del__``, not ``weakref.finalize``: a finalizer's registration cost a batch-1 HSTU
    prefill on 2 threads 2% (10 us per call, most of it the run after it finding its code
    evicted from the caches). The state holds the backend's method, as the finalizer did."""

    def __init__(self, lease: _Lease, give_back=None):
        self.lease, self._give_back = lease, give_back

    def __del__(self) -> None:
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            try:
                give_back(self.lease)
            except Exception:  # noqa: BLE001 - never raise from a finalizer (interpreter exit)
                pass

    @property
    def batch(self) -> int:  # the base sets it after prefill and reorder; the lease keeps it
        return self.lease.batch

    @batch.setter
    def batch(self, value: int) -> None:
        self.lease.batch = value

    @property
    def cache(self) -> list:
        return self.lease.cache

    @cache.setter
    def cache(self, value: list) -> None:
        self.lease.cache = value

    @property
    def spare(self) -> list | None:
        return self.lease.spare

    @spare.setter
    def spare(self, value: list | None) -> None:
        self.lease.spare = value


class OrtBackend(BackendBase):
    """A bundle's graphs in onnxruntime sessions with the cache held in bound OrtValues."""

    name = "onnxruntime"

    def __init__(self, source: Bundle | str | os.PathLike[str], *, precision: str | None = None,
                 provider: str = "cpu", provider_options: dict | None = None, device_id: int = 0,
                 intra_op_threads: int | None = None, inter_op_threads: int | None = None,
                 threads: int | None = None, inplace_cache: bool | None = None,
                 shared_threads: bool = False, spinning: bool = True, spin_after_us: int = SPIN_AFTER_US,
                 static_batch1: bool = True, bitcast_buckets: bool | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise MissingBackend(f"onnxruntime backend: {e}; pip install onnxruntime") from None
        bundle = open_bundle(source)
        super().__init__(bundle.dims, bundle.id_map, bundle.checkpoint_path)
        self.bundle = bundle
        bundle.release_checkpoint()  # verified; the graphs hold the weights this backend runs
        if provider not in PROVIDERS:
            raise ConfigError(f"onnxruntime provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
        ep, self._device = PROVIDERS[provider]
        if ep not in ort.get_available_providers():
            raise MissingBackend(
                f"onnxruntime provider {provider!r} needs {ep}, which this onnxruntime build lacks "
                f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu "
                "for cuda, or an onnxruntime built with CANN (and source CANN's set_env.sh) for cann")
        self._ort, self._device_id = ort, device_id
        asked = intra_op_threads or threads
        self.intra_op_threads = asked or (physical_cores() if provider == "cpu" else 0)
        if shared_threads:
            self.intra_op_threads = shared_pool(ort, self.intra_op_threads, asked)

        def options(fixed: dict[str, int] | None = None):
            opts = ort.SessionOptions()
            opts.log_severity_level = 3  # errors only: graph-optimizer notes are not for users
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one chain of ops: no inter-op pool
            for dim, size in (fixed or {}).items():
                opts.add_free_dimension_override_by_name(dim, size)
            if shared_threads:
                opts.use_per_session_threads = False  # the process-wide pool: one set of threads for all graphs
                return opts
            opts.intra_op_num_threads = self.intra_op_threads
            opts.inter_op_num_threads = inter_op_threads or 0
            # each session has its own pool and the graphs run one after another: threads that
            # spin on after their graph ends (onnxruntime's default) steal the cores from the
            # next graph's pool (on 2 cores that made a batch-64 HSTU step after a prefill 2x
            # slower); threads that never spin pay a wake-up for every parallel op instead (a
            # batch-1 HSTU prefill 1.8x slower on 2 threads). So: spin while a graph runs, then
            # for at most spin_after_us (``spin_window``), unless spinning=False.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
            for key, value in spin_window(ort.__version__, spin_after_us).items():
                opts.add_session_config_entry(key, value)
            return opts

        opts = options()
        ep_opts = dict(provider_options or {})
        if provider != "cpu":
            ep_opts.setdefault("device_id", device_id)
        providers = [(ep, ep_opts)] + ([] if provider == "cpu" else ["CPUExecutionProvider"])
        from .registry import resolve_variant

        # a variant by name (``int8`` too, while the bundle has exactly one int8 variant)
        precision = resolve_variant(bundle, precision) or bundle.precisions[0]

        def session(model):
            return ort.InferenceSession(model, sess_options=opts, providers=providers)

        if bitcast_buckets and not bitcast_supported(ort):
            raise ConfigError(f"onnxruntime {ort.__version__} has no BitCast (ONNX opset {BITCAST_OPSET}): "
                              "bitcast_buckets needs a newer onnxruntime; leave the option unset")
        if bitcast_buckets is None:  # on where it is measured (CPU) and runs
            bitcast_buckets = provider == "cpu" and bitcast_supported(ort)
        self.bitcast_buckets = bitcast_buckets
        protos, models = {}, {}

        def graph(name):
            models[name], protos[name] = load_graph(bundle.graph_path(name, precision), bitcast_buckets=bitcast_buckets)
            return session(models[name])

        self.precision = precision
        self._sess = {g: graph(g) for g in ("prefill", "step", "rank")}
        dim = batch_dim(protos["prefill"])
        if static_batch1 and 1 in bundle.dims.batch_gears and dim and graph_bytes(models["prefill"]) <= STATIC_MAX_BYTES:
            # batch 1 on its own session, the batch axis fixed: onnxruntime then folds the
            # graph's shape plumbing (Shape, Expand, ConstantOfShape, Concat of shapes) at load
            # time. Batch-1 HSTU prefill 5% faster on 1 and 2 threads; same outputs bit for bit.
            self._sess[STATIC1] = ort.InferenceSession(models["prefill"], sess_options=options({dim: 1}),
                                                       providers=providers)
        # host outputs per graph: (name, shape with None for the batch axis, dtype), read once
        self._host_outputs = {
            g: [(o.name, [None if isinstance(d, str) or d is None else d for d in o.shape], _NP[o.type])
                for o in sess.get_outputs() if not o.name.startswith("present_")]
            for g, sess in self._sess.items()}
        past = [i for i in self._sess["step"].get_inputs() if i.name.startswith("past_")]
        if not past:
            raise BundleError(f"bundle {bundle.path}: step graph has no past_* inputs")
        self._past = [i.name for i in past]
        self._present = ["present_" + n[len("past_"):] for n in self._past]
        self._cache_specs = [(i.name, i.shape, i.type) for i in past]
        self._gather = session(gather_rows_model(self._cache_specs).SerializeToString())
        self._bindings: dict[tuple[str, int], _Bound] = {}
        self._free: dict[int, list[list]] = {}  # batch -> cache sets no live state holds
        if inplace_cache is None:
            inplace_cache = provider == "cpu"
        safe = writable_in_place(protos["step"], dict(zip(self._past, self._present))) if inplace_cache else set()
        self._inplace = [name in safe for name in self._past]  # per cache tensor, in cache order

    # -- buffers and runs --------------------------------------------------------------------
    def _alloc_cache(self, b: int) -> list:
        new = self._ort.OrtValue.ortvalue_from_shape_and_type
        return [new([b, *shape[1:]], _NP[t], self._device, self._device_id)._ortvalue
                for _, shape, t in self._cache_specs]

    def _binding(self, graph: str, b: int) -> _Bound:
        """The binding record of ``graph`` at batch ``b``, made on first use.

        The small outputs stay bound to the same host arrays from call to call and are copied
        out after each run (a few hundred bytes), instead of wrapping fresh arrays in OrtValues
        and binding them every time: at batch 1 that binding was about a tenth of an HSTU
        prefill. Inputs are rebound per call (binding a name again replaces it); cache lists
        only when another list comes (``_Lease``). One backend serves one caller at a time, as
        every backend here."""
        key = (graph, b)
        made = self._bindings.get(key)
        if made is None:
            binding = self._sess[graph].io_binding()._iobinding  # the C++ object: no wrapper per call
            host = {}
            for name, shape, dtype in self._host_outputs[graph]:
                host[name] = arr = np.empty([b if d is None else d for d in shape], dtype=dtype)
                binding.bind_ortvalue_output(name, self._ort.OrtValue.ortvalue_from_numpy(arr)._ortvalue)
            made = self._bindings[key] = _Bound(binding, host)
        return made

    def _lease(self, b: int) -> _Lease:
        """Cache buffers for a new state of batch ``b``: a set a dead state gave back, else new.

        Reused sets spare a prefill fresh pages (at batch 64 their page faults were 5-7% of an
        HSTU prefill) and, being the very list bound last time, the binding calls as well."""
        return _Lease(b, self._take(b))

    def _take(self, b: int) -> list:
        free = self._free.get(b)
        return free.pop() if free else self._alloc_cache(b)

    POOL = 2  # cache sets kept per batch size for the next states

    def _give_back(self, lease: _Lease) -> None:
        """A state died: its sets serve the next prefills (``OrtState.__del__`` calls this)."""
        free = self._free.setdefault(lease.batch, []) if not self._closed else []
        for bufs in (lease.cache, lease.spare):
            if bufs is not None and len(free) < self.POOL:
                free.append(bufs)

    def _run(self, graph: str, feeds: dict[str, np.ndarray], b: int, cache_in: list | None = None,
             cache_out: list | None = None) -> dict[str, np.ndarray]:
        """Run one graph: host feeds in, cache bound in/out, small outputs copied to new host
        arrays."""
        made = self._binding(graph, b)
        binding = made.binding
        for name, arr in feeds.items():
            binding.bind_input(name, arr)
        if cache_in is not None and cache_in is not made.cache_in:
            for name, value in zip(self._past, cache_in):
                binding.bind_ortvalue_input(name, value)
            made.cache_in = cache_in
        if cache_out is not None and cache_out is not made.cache_out:
            for name, value in zip(self._present, cache_out):
                binding.bind_ortvalue_output(name, value)
            made.cache_out = cache_out
        self._sess[graph]._sess.run_with_iobinding(binding, None)
        return {name: arr.copy() for name, arr in made.host.items()}

    def _output(self, host: dict[str, np.ndarray]) -> StepOutput:
        return StepOutput(host["topk_ids"], host["topk_scores"], host["log_z"], host.get("user_emb"))

    @property
    def inplace_cache(self) -> list[str]:
        """Names of the cache inputs a step writes in place (the rest are double-buffered)."""
        return [n for n, ip in zip(self._past, self._inplace) if ip]

    # -- the impls ---------------------------------------------------------------------------
    def _prefill(self, batch: PrefillBatch) -> tuple[StepOutput, State]:
        b = batch.batch
        feeds = {"item_ids": batch.item_ids, "lengths": batch.lengths}
        if self.dims.needs_timestamps:
            feeds |= {"timestamps": batch.timestamps, "request_time": batch.request_time}
        feeds["exclude_ids"] = batch.exclude_ids
        lease = self._lease(b)
        host = self._run(STATIC1 if b == 1 and STATIC1 in self._sess else "prefill", feeds, b, cache_out=lease.cache)
        return self._output(host), OrtState(lease, self._give_back)

    def _step(self, state: OrtState, new_item, position, timestamp, exclude_ids) -> StepOutput:
        b = state.batch
        feeds = {"new_item": new_item, "position": position}
        if timestamp is not None:
            feeds["timestamp"] = timestamp
        feeds["exclude_ids"] = exclude_ids
        if all(self._inplace):
            return self._output(self._run("step", feeds, b, cache_in=state.cache, cache_out=state.cache))
        if state.spare is None:
            state.spare = self._alloc_cache(b)
        # in place where the graph allows it, into the spare buffer (then swapped) elsewhere
        out = [c if ip else s for c, s, ip in zip(state.cache, state.spare, self._inplace)]
        host = self._run("step", feeds, b, cache_in=state.cache, cache_out=out)
        state.spare = [s if ip else c for c, s, ip in zip(state.cache, state.spare, self._inplace)]
        state.cache = out
        return self._output(host)

    def _reorder(self, state: OrtState, index: np.ndarray) -> None:
        n = index.size
        out = state.spare if state.spare is not None and state.batch == n else self._take(n)
        binding = self._gather.io_binding()._iobinding
        binding.bind_input("index", index)
        for i, value in enumerate(state.cache):
            binding.bind_ortvalue_input(f"x.{i}", value)
            binding.bind_ortvalue_output(f"y.{i}", out[i])
        self._gather._sess.run_with_iobinding(binding, None)
        # the gathered rows become the cache; the old set is the next spare if its batch fits
        state.cache, state.spare = out, state.cache if state.batch == n else None

    def _rank(self, state: OrtState, candidates, position, timestamp) -> np.ndarray:
        feeds = {"candidates": candidates, "position": position}
        if timestamp is not None:
            feeds["timestamp"] = timestamp
        return self._run("rank", feeds, state.batch, cache_in=state.cache)["scores"]

    def _close(self) -> None:
        self._sess, self._gather, self._bindings, self._free = {}, None, {}, {}
