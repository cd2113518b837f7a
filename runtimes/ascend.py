"""The ``ascend`` backend: a bundle's OM graphs (``genrec convert``) on an NPU through pyACL.

Follows ASCEND.md §2 (call sequence, return tuples, release order, error codes, gears, output
names) and the ping-pong scheme of §2.6. The decoding loop is the same as for every backend;
only the small per-call arrays cross the PCIe bus:

- **Lifecycle.** ``acl.init`` / ``rt.set_device`` / context / stream once per process and
  device, shared by reference count (``acl_util.AclRuntime``). Each graph's OM is loaded once;
  every input and output device buffer is allocated once, at the max gear, with
  ``get_input_size_by_index`` / ``get_output_size_by_index``, and wrapped in one data buffer
  and one dataset per direction. A call copies its rows in, sets ``ascend_mbatch_shape_data``
  with ``set_dynamic_batch_size`` (the gear = the batch, which the base class already checked
  is a gear), executes, and copies the rows of the small outputs out. Outputs are mapped by the
  last ``:`` field of their OM name (``node:idx:onnx_name``, §2.7) and checked against the
  manifest. On close, or on any failed pyACL call, everything is released in the documented
  order (§2.3): data buffers and memory, datasets, models, descs, then stream, context, device.
  The context is made current in whichever thread calls in; one lock serialises
  "point buffers -> execute" (one model must not run concurrently, §2.6).
- **The KV cache never leaves the device.** Each state holds two device sets of the cache
  (max gear each): prefill writes ``present_*`` into the current set; a step reads ``past_*``
  from it and writes ``present_*`` into the spare, then the two swap: the cached data
  buffers are re-pointed with ``acl.update_data_buffer``, no byte is copied. Beam reorder is a
  device-to-device copy per run of consecutive rows into the spare set, then a swap.
  ``inplace_cache=True`` points ``present_k`` at ``past_k`` itself where the graph allows it
  (``genrec.onnx_graph.writable_in_place``); off by default, because aliasing an input and an
  output buffer in one execute is not documented either way (§2.6): verify it on hardware.
- **exclude_ids stays on the device.** The step's exclusion list is a set (the head scatters
  -inf at each id), so each state keeps its own device copy, initialised from the prefill's
  by a D2D copy, and a step rewrites only the slots whose id changed (one 4-byte copy per
  changed run; typically one per row: the chosen item) or, when the changes are scattered
  over more runs than rows, the rows once. ``stats()`` counts those bytes like the rest.
- **Errors.** Every non-zero ``ret`` is an ``AclError`` naming the call, the code and
  ``acl.get_recent_err_msg()``; never a silently wrong result.

``acl`` is imported when the backend is created, never by ``import genrec``.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from genrec.bundle import Bundle
from genrec.errors import BundleError, ConfigError, MissingBackend
from genrec.manifest import TargetBuild

from .acl_util import MALLOC_HUGE_FIRST, MEMCPY_D2D, MEMCPY_D2H, MEMCPY_H2D, AclError, AclRuntime, Traffic, check
from .base import BackendBase, PrefillBatch, State, StepOutput, open_bundle

__all__ = ["AclError", "AscendBackend", "MBATCH_INPUT"]

MBATCH_INPUT = "ascend_mbatch_shape_data"  # ACL_DYNAMIC_TENSOR_NAME (ASCEND.md §2.5)
PRECISIONS = ("fp32", "fp16", "mixed")
_ACL_NP = {0: np.float32, 1: np.float16, 2: np.int8, 3: np.int32, 4: np.uint8, 6: np.int16, 7: np.uint16,
           8: np.uint32, 9: np.int64, 10: np.uint64, 11: np.float64, 12: np.bool_}
INSTALL_HINT = ("install the CANN toolkit and source its set_env.sh (/usr/local/Ascend/cann/set_env.sh, or "
                "/usr/local/Ascend/ascend-toolkit/set_env.sh before CANN 8.5), which puts pyACL on PYTHONPATH; "
                "`genrec doctor --target ascend` checks the host")


@dataclass
class _Buf:
    """One OM input or output: its index, device memory (max gear), data buffer, row size."""

    name: str
    index: int
    size: int
    dtype: Any
    tail: tuple[int, ...]  # dims after the batch axis
    ptr: int = 0  # device memory this graph owns (0 for cache tensors and the step's exclude_ids)
    data_buffer: int = 0
    points_at: int = 0  # the device address the data buffer holds now
    host: int = 0  # pinned host staging for outputs read back

    @property
    def row(self) -> int:
        return int(np.prod(self.tail, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass
class _Graph:
    name: str
    model_id: int = 0
    desc: int = 0
    in_ds: int = 0
    out_ds: int = 0
    inputs: dict[str, _Buf] = field(default_factory=dict)
    outputs: dict[str, _Buf] = field(default_factory=dict)
    mbatch: _Buf | None = None


class _Lease:
    """The device memory of one live state: the cache (current and spare set) and the step's
    exclude_ids (current and spare), all at the max gear, plus a host mirror of exclude_ids."""

    def __init__(self, cache: list[list[int]], excl: list[int], x: int, gear: int):
        self.cache = cache  # [current ptrs per cache tensor, spare ptrs]
        self.excl = excl  # [current, spare]
        self.mirror = np.zeros((gear, x), np.int32)


class AscendState(State):
    def __init__(self, lease: _Lease):
        self.lease = lease


def _rows_runs(flat: np.ndarray) -> list[tuple[int, int]]:
    """Sorted flat element indices -> (start, length) runs of consecutive ones."""
    if not flat.size:
        return []
    breaks = np.flatnonzero(np.diff(flat) != 1) + 1
    return [(int(run[0]), int(run.size)) for run in np.split(flat, breaks)]


def exclude_layout(device_rows: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The device rows rewritten to hold ``wanted``'s id sets, moving as few slots as possible:
    ids already held stay in their slot, new ids take freed slots, stale ones become 0.
    Returns (new rows, sorted flat indices of the slots that changed)."""
    rows = device_rows.copy()
    x = rows.shape[1]
    changed: list[np.ndarray] = []
    same = (np.sort(rows, axis=1) == np.sort(wanted, axis=1)).all(axis=1)
    for i in np.flatnonzero(~same):
        old, want = rows[i], wanted[i][wanted[i] != 0]
        first = np.zeros(x, bool)
        first[np.unique(old, return_index=True)[1]] = True
        keep = first & (old != 0) & np.isin(old, want)
        place = np.setdiff1d(want, old[keep])
        free = np.flatnonzero(~keep)
        new = old.copy()
        new[free] = 0
        new[free[:place.size]] = place
        diff = free[new[free] != old[free]]
        if diff.size:
            rows[i] = new
            changed.append(i * x + diff)
    return rows, (np.sort(np.concatenate(changed)) if changed else np.zeros(0, np.int64))


class AscendBackend(BackendBase):
    """A bundle's OM graphs through pyACL, the KV cache and exclusions kept on the device."""

    name = "ascend"

    @staticmethod
    def resolve_variant(bundle: Bundle, variant: str | None) -> str:
        """``ascend:VARIANT`` names an Ascend build precision (fp32, fp16, mixed), not an ONNX
        variant: what ``genrec parity --candidate ascend:fp16`` opens and judges with."""
        if variant is None:
            return "fp32"
        if variant not in PRECISIONS:
            raise ConfigError(f"ascend:{variant}: the ascend backend's variants are its build precisions "
                              f"({', '.join(PRECISIONS)})")
        return variant

    def __init__(self, source: Bundle | str | os.PathLike[str], *, device_id: int = 0, soc: str | None = None,
                 precision: str | None = None, inplace_cache: bool = False):
        try:
            import acl
        except ImportError as e:
            raise MissingBackend(f"ascend backend: cannot import pyACL ({e}); {INSTALL_HINT}") from None
        bundle = open_bundle(source)
        super().__init__(bundle.dims, bundle.id_map, bundle.checkpoint_path)
        self.bundle, self._acl = bundle, acl
        bundle.release_checkpoint()
        if precision is not None and precision not in PRECISIONS:
            raise ConfigError(f"ascend backend: precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        if device_id < 0:
            raise ConfigError(f"ascend backend: device_id {device_id} must be >= 0")
        builds = bundle.manifest.targets.get("ascend", ())
        if not builds:
            raise BundleError(f"bundle {bundle.path}: no Ascend build; convert it first: genrec convert "
                              f"{bundle.path} --soc-version <Ascend + the Name column of npu-smi info>")
        self.device_id = device_id
        self._lock = threading.RLock()
        self._traffic = Traffic()
        self._graphs: dict[str, _Graph] = {}
        self._res: dict[str, list[int]] = {k: [] for k in ("data_buffers", "dev", "host", "datasets", "models",
                                                             "descs")}
        self._free_leases: list[_Lease] = []
        self._released = False
        self._rt: AclRuntime | None = None
        try:
            self._rt = AclRuntime.acquire(acl, device_id)
            self._rt.bind()
            self.build = self._choose(builds, soc, precision)
            self.soc, self.precision = self.build.soc, self.build.precision
            hint = ("this build was made by the ATC test double (om_producer=double) and cannot run on a real "
                    "NPU; convert the bundle on a CANN host") if self.build.info.get("om_producer") == "double" else ""
            for g in ("prefill", "step", "rank"):
                self._graphs[g] = self._load(g, hint)
            self._cache_setup(inplace_cache)
            self._free_leases.append(self._new_lease())
            self._point_cache(self._free_leases[0])
        except BaseException:
            self._release()
            raise

    # -- choosing and loading ----------------------------------------------------------------
    def _choose(self, builds: tuple[TargetBuild, ...], soc: str | None, precision: str | None) -> TargetBuild:
        have = ", ".join(f"{b.soc}/{b.precision}" for b in builds)
        chip = self._acl.get_soc_name() or None
        soc = soc or chip
        if soc is None:
            if len({b.soc for b in builds}) > 1:
                raise ConfigError(f"ascend backend: the NPU does not name its SoC; pass --backend-option soc=... "
                                  f"(builds: {have})")
            soc = builds[0].soc
        if chip and soc != chip:
            raise ConfigError(f"ascend backend: soc={soc} but this NPU is {chip}; an OM runs only on the SoC it was "
                              f"built for (builds: {have})")
        mine = [b for b in builds if b.soc == soc]
        if not mine:
            raise BundleError(f"bundle {self.bundle.path}: no Ascend build for {soc} (builds: {have}); convert it: "
                              f"genrec convert {self.bundle.path} --soc-version {soc}")
        want = precision or ("fp32" if any(b.precision == "fp32" for b in mine) else mine[0].precision)
        chosen = next((b for b in mine if b.precision == want), None)
        if chosen is None:
            raise BundleError(f"bundle {self.bundle.path}: no {want} Ascend build for {soc} (builds: {have}); "
                              f"convert it: genrec convert {self.bundle.path} --soc-version {soc} --precision {want}")
        return chosen

    def _call(self, call: str, ret: int, hint: str = "") -> None:
        check(self._acl, call, ret, hint)

    def _malloc(self, size: int) -> int:
        ptr, ret = self._acl.rt.malloc(size, MALLOC_HUGE_FIRST)
        self._call("rt.malloc", ret)
        self._res["dev"].append(ptr)
        return ptr

    def _data_buffer(self, ptr: int, size: int) -> int:
        h = self._acl.create_data_buffer(ptr, size)
        if not h:
            raise AclError("create_data_buffer", 500000, "returned a null data buffer")
        self._res["data_buffers"].append(h)
        return h

    def _load(self, name: str, hint: str) -> _Graph:
        acl, mdl = self._acl, self._acl.mdl
        path = self.bundle.path / self.build.graphs[name]
        g = _Graph(name)
        g.model_id, ret = mdl.load_from_file(str(path))
        self._call("mdl.load_from_file", ret, hint or f"graph {name} ({path.name})")
        self._res["models"].append(g.model_id)
        g.desc = mdl.create_desc()
        self._res["descs"].append(g.desc)
        self._call("mdl.get_desc", mdl.get_desc(g.desc, g.model_id))
        spec = self.bundle.manifest.graphs[name]
        where = f"bundle {self.bundle.path}: {self.build.graphs[name]}"
        gears = tuple(sorted(self.build.gears))
        in_names = [mdl.get_input_name_by_index(g.desc, i) for i in range(mdl.get_num_inputs(g.desc))]
        expected = [s.name for s in spec.inputs] + ([MBATCH_INPUT] if len(gears) > 1 else [])
        if sorted(in_names) != sorted(expected):
            raise BundleError(f"{where}: OM inputs {in_names}, the manifest says {expected}")
        if len(gears) > 1:
            info, ret = mdl.get_dynamic_batch(g.desc)
            self._call("mdl.get_dynamic_batch", ret)
            if tuple(sorted(info.get("batch", []))) != gears:
                raise BundleError(f"{where}: OM gears {info.get('batch')}, the build says {list(gears)}")
        out_names = [mdl.get_output_name_by_index(g.desc, i) for i in range(mdl.get_num_outputs(g.desc))]
        short = [n.rsplit(":", 1)[-1] for n in out_names]  # node:idx:onnx_name (ASCEND.md §2.7)
        if sorted(short) != sorted(s.name for s in spec.outputs):
            raise BundleError(f"{where}: OM outputs {out_names} do not map onto the manifest's "
                              f"{[s.name for s in spec.outputs]} by their last ':' field")
        dtypes = {s.name: np.dtype(s.dtype) for s in (*spec.inputs, *spec.outputs)}
        g.in_ds, g.out_ds = mdl.create_dataset(), mdl.create_dataset()
        self._res["datasets"] += [g.in_ds, g.out_ds]
        for out, names in ((False, in_names), (True, short)):
            for i, n in enumerate(names):
                size = (mdl.get_output_size_by_index if out else mdl.get_input_size_by_index)(g.desc, i)
                dims, ret = (mdl.get_output_dims if out else mdl.get_input_dims)(g.desc, i)
                self._call("mdl.get_output_dims" if out else "mdl.get_input_dims", ret)
                dt = _ACL_NP.get((mdl.get_output_data_type if out else mdl.get_input_data_type)(g.desc, i))
                if n != MBATCH_INPUT and (dt is None or np.dtype(dt) != dtypes[n]):
                    raise BundleError(f"{where}: {n} is {dt} in the OM, {dtypes[n]} in the manifest")
                if size <= 0:
                    raise BundleError(f"{where}: {n} has size {size}: not a gear OM (range/-1 dynamic shapes are "
                                      "not supported)")
                b = _Buf(n, i, size, dt or np.int64, tuple(int(d) for d in dims["dims"][1:]))
                cache = n.startswith(("past_", "present_")) or (name == "step" and n == "exclude_ids")
                b.ptr = 0 if cache else self._malloc(size)
                if out and not cache:
                    b.host, ret = acl.rt.malloc_host(size)
                    self._call("rt.malloc_host", ret)
                    self._res["host"].append(b.host)
                b.data_buffer = self._data_buffer(b.ptr, size if b.ptr else 0)
                b.points_at = b.ptr
                _, ret = mdl.add_dataset_buffer(g.out_ds if out else g.in_ds, b.data_buffer)
                self._call("mdl.add_dataset_buffer", ret)
                if n == MBATCH_INPUT:
                    g.mbatch = b
                (g.outputs if out else g.inputs)[n] = b
        return g

    def _cache_setup(self, inplace: bool) -> None:
        step, prefill, rank = self._graphs["step"], self._graphs["prefill"], self._graphs["rank"]
        self._past = [n for n in step.inputs if n.startswith("past_")]
        if not self._past:
            raise BundleError(f"bundle {self.bundle.path}: the step OM has no past_* inputs")
        self._present = ["present_" + n[len("past_"):] for n in self._past]
        self._cache_sizes = [step.inputs[n].size for n in self._past]
        for n, p, size in zip(self._past, self._present, self._cache_sizes):
            sizes = {step.outputs[p].size, prefill.outputs[p].size, rank.inputs[n].size}
            if sizes != {size}:
                raise BundleError(f"bundle {self.bundle.path}: cache tensor {n} has sizes {sorted(sizes)} across "
                                  "the OM graphs")
        self._gear_max = max(self.build.gears)
        self._inplace = [False] * len(self._past)
        if inplace:
            import onnx

            from genrec.onnx_graph import writable_in_place

            atc_input = (self.build.info.get("atc_graphs") or {}).get("step")
            rel = atc_input["file"] if atc_input else self.bundle.manifest.graphs["step"].file
            proto = onnx.load(str(self.bundle.path / rel), load_external_data=False)
            safe = writable_in_place(proto, dict(zip(self._past, self._present)))
            self._inplace = [n in safe for n in self._past]

    @property
    def inplace_cache(self) -> list[str]:
        """Cache inputs a step writes in place (``inplace_cache=True`` where the graph allows)."""
        return [n for n, ip in zip(self._past, self._inplace) if ip]

    def _new_lease(self) -> _Lease:
        excl = self._graphs["step"].inputs["exclude_ids"]
        cache = [[self._malloc(s) for s in self._cache_sizes] for _ in range(2)]
        return _Lease(cache, [self._malloc(excl.size), self._malloc(excl.size)], self.dims.max_exclude,
                      self._gear_max)

    def _lease(self) -> _Lease:
        return self._free_leases.pop() if self._free_leases else self._new_lease()

    def _give_back(self, lease: _Lease) -> None:
        if not self._released:
            self._free_leases.append(lease)

    # -- one graph call ----------------------------------------------------------------------
    def _point(self, b: _Buf, ptr: int, size: int) -> None:
        if b.points_at != ptr:
            self._call("update_data_buffer", self._acl.update_data_buffer(b.data_buffer, ptr, size))
            b.points_at = ptr

    def _point_cache(self, lease: _Lease, step_out_spare: bool = True) -> None:
        g = self._graphs
        cur, spare = lease.cache
        for k, (n, p, size) in enumerate(zip(self._past, self._present, self._cache_sizes)):
            self._point(g["prefill"].outputs[p], cur[k], size)
            self._point(g["rank"].inputs[n], cur[k], size)
            self._point(g["step"].inputs[n], cur[k], size)
            out = cur[k] if self._inplace[k] or not step_out_spare else spare[k]
            self._point(g["step"].outputs[p], out, size)
        ex = g["step"].inputs["exclude_ids"]
        self._point(ex, lease.excl[0], ex.size)

    def _h2d(self, kind: str, b: _Buf, arr: np.ndarray) -> None:
        data = np.ascontiguousarray(arr, dtype=b.dtype).tobytes()
        ptr = self._acl.util.bytes_to_ptr(data)
        self._call("rt.memcpy", self._acl.rt.memcpy(b.ptr, b.size, ptr, len(data), MEMCPY_H2D))
        self._traffic.add(kind, "h2d", len(data))

    def _d2h(self, kind: str, g: _Graph, name: str, rows: int) -> np.ndarray:
        b = g.outputs[name]
        dims, ret = self._acl.mdl.get_cur_output_dims(g.desc, b.index)
        self._call("mdl.get_cur_output_dims", ret)
        if dims["dims"][:1] != [rows]:
            raise AclError("mdl.get_cur_output_dims", 500000, f"{g.name} output {name} has dims {dims['dims']} after "
                           f"executing at batch {rows}")
        n = rows * b.row
        self._call("rt.memcpy", self._acl.rt.memcpy(b.host, b.size, b.ptr, n, MEMCPY_D2H))
        self._traffic.add(kind, "d2h", n)
        return np.frombuffer(self._acl.util.ptr_to_bytes(b.host, n), dtype=b.dtype).reshape(rows, *b.tail)

    def _execute(self, kind: str, g: _Graph, rows: int) -> None:
        if g.mbatch is not None:
            self._call("mdl.set_dynamic_batch_size",
                       self._acl.mdl.set_dynamic_batch_size(g.model_id, g.in_ds, g.mbatch.index, rows))
            self._traffic.add(kind, "h2d", 8)  # the runtime writes the gear into ascend_mbatch_shape_data
        elif rows != self._gear_max:
            raise ConfigError(f"ascend backend: batch {rows}: this build has the single gear {self._gear_max}")
        t0 = time.perf_counter()
        self._call("mdl.execute", self._acl.mdl.execute(g.model_id, g.in_ds, g.out_ds), f"graph {g.name}")
        self._traffic.timed(g.name, time.perf_counter() - t0)

    def _outputs(self, kind: str, g: _Graph, rows: int) -> StepOutput:
        emb = self._d2h(kind, g, "user_emb", rows) if "user_emb" in g.outputs else None
        return StepOutput(self._d2h(kind, g, "topk_ids", rows), self._d2h(kind, g, "topk_scores", rows),
                          self._d2h(kind, g, "log_z", rows), emb)

    def _guarded(self, fn, *args):
        """Run an impl with the context bound in this thread and the lock held; a failed pyACL
        call releases everything (documented order) and closes the backend before it propagates."""
        with self._lock:
            try:
                self._rt.bind()
                return fn(*args)
            except AclError as e:
                problems = self._release()
                self._closed = True
                raise AclError(e.call, e.code, e.detail, "the ascend backend released its device resources and is "
                               "closed" + (f" ({'; '.join(problems)})" if problems else "")) from None

    # -- the impls ---------------------------------------------------------------------------
    def _prefill(self, batch: PrefillBatch) -> tuple[StepOutput, State]:
        return self._guarded(self._prefill_impl, batch)

    def _prefill_impl(self, batch: PrefillBatch) -> tuple[StepOutput, State]:
        g, b = self._graphs["prefill"], batch.batch
        self._traffic.call("prefill")
        feeds = {"item_ids": batch.item_ids, "lengths": batch.lengths, "exclude_ids": batch.exclude_ids}
        if self.dims.needs_timestamps:
            feeds |= {"timestamps": batch.timestamps, "request_time": batch.request_time}
        for n, arr in feeds.items():
            self._h2d("prefill", g.inputs[n], arr)
        lease = self._lease()
        state = AscendState(lease)
        weakref.finalize(state, self._give_back, lease)
        self._point_cache(lease)
        self._execute("prefill", g, b)
        out = self._outputs("prefill", g, b)
        # the step's exclusions start as the prefill's, copied on the device
        src, n = g.inputs["exclude_ids"], b * g.inputs["exclude_ids"].row
        self._call("rt.memcpy", self._acl.rt.memcpy(lease.excl[0], src.size, src.ptr, n, MEMCPY_D2D))
        self._traffic.add("prefill", "d2d", n)
        lease.mirror[:b] = batch.exclude_ids
        return out, state

    def _step(self, state: AscendState, new_item, position, timestamp, exclude_ids) -> StepOutput:
        return self._guarded(self._step_impl, state, new_item, position, timestamp, exclude_ids)

    def _step_impl(self, state: AscendState, new_item, position, timestamp, exclude_ids) -> StepOutput:
        g, b, lease = self._graphs["step"], state.batch, state.lease
        self._traffic.call("step")
        self._h2d("step", g.inputs["new_item"], new_item)
        self._h2d("step", g.inputs["position"], position)
        if timestamp is not None:
            self._h2d("step", g.inputs["timestamp"], timestamp)
        self._update_exclusions(lease, exclude_ids, b)
        self._point_cache(lease)
        self._execute("step", g, b)
        out = self._outputs("step", g, b)
        cur, spare = lease.cache
        for k, ip in enumerate(self._inplace):  # ping-pong: the spare set now holds the cache
            if not ip:
                cur[k], spare[k] = spare[k], cur[k]
        return out

    def _update_exclusions(self, lease: _Lease, wanted: np.ndarray, b: int) -> None:
        x = self.dims.max_exclude
        if not x:
            return
        rows, changed = exclude_layout(lease.mirror[:b], wanted)
        if not changed.size:
            return
        data = np.ascontiguousarray(rows, np.int32).tobytes()
        ptr, dev, item = self._acl.util.bytes_to_ptr(data), lease.excl[0], 4
        size = self._graphs["step"].inputs["exclude_ids"].size
        runs = _rows_runs(changed)
        if len(runs) > max(b, 8):  # scattered: one copy of the rows beats many tiny ones
            runs = [(0, b * x)]
        for start, length in runs:
            off = start * item
            self._call("rt.memcpy", self._acl.rt.memcpy(dev + off, size - off, ptr + off, length * item, MEMCPY_H2D))
            self._traffic.add("step", "h2d", length * item)
        lease.mirror[:b] = rows

    def _reorder(self, state: AscendState, index: np.ndarray) -> None:
        self._guarded(self._reorder_impl, state, index)

    def _reorder_impl(self, state: AscendState, index: np.ndarray) -> None:
        lease, n = state.lease, index.size
        self._traffic.call("reorder")
        # runs of consecutive source rows -> one copy each: (dst row, src row, rows)
        runs, r = [], 0
        while r < n:
            e = r + 1
            while e < n and index[e] == index[e - 1] + 1:
                e += 1
            runs.append((r, int(index[r]), e - r))
            r = e
        cur, spare = lease.cache
        excl = self._graphs["step"].inputs["exclude_ids"]
        pairs = [(cur[k], spare[k], size // self._gear_max, size) for k, size in enumerate(self._cache_sizes)]
        pairs.append((lease.excl[0], lease.excl[1], excl.row, excl.size))
        for src, dst, row, size in pairs:
            for d, s, count in runs:
                self._call("rt.memcpy", self._acl.rt.memcpy(dst + d * row, size - d * row, src + s * row, count * row,
                                                            MEMCPY_D2D))
                self._traffic.add("reorder", "d2d", count * row)
        for k in range(len(cur)):
            cur[k], spare[k] = spare[k], cur[k]
        lease.excl.reverse()
        lease.mirror[:n] = lease.mirror[index]

    def _rank(self, state: AscendState, candidates, position, timestamp) -> np.ndarray:
        return self._guarded(self._rank_impl, state, candidates, position, timestamp)

    def _rank_impl(self, state: AscendState, candidates, position, timestamp) -> np.ndarray:
        g, b = self._graphs["rank"], state.batch
        self._traffic.call("rank")
        self._h2d("rank", g.inputs["candidates"], candidates)
        self._h2d("rank", g.inputs["position"], position)
        if timestamp is not None:
            self._h2d("rank", g.inputs["timestamp"], timestamp)
        self._point_cache(state.lease)
        self._execute("rank", g, b)
        return self._d2h("rank", g, "scores", b)

    # -- stats and release -------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Bytes moved per call kind and direction (H2D, D2H, D2D), copies, execute time per
        graph; ``per_step`` is the step graph's bytes per call (what ``genrec-run --stats``
        prints)."""
        return self._traffic.summary()

    def _close(self) -> None:
        with self._lock:
            problems = self._release()
        if problems:
            raise AclError("release", 500000, "; ".join(problems))

    def _release(self) -> list[str]:
        """Everything this backend holds, in the documented order (ASCEND.md §2.3): data buffers
        and device/host memory, datasets, models, descs; then the shared runtime's reference.
        Goes on past failures and returns them."""
        if self._released:
            return []
        self._released = True
        acl, problems = self._acl, []
        if self._rt is not None:
            try:
                self._rt.bind()
            except AclError as e:
                problems.append(str(e))
        steps = ([("destroy_data_buffer", acl.destroy_data_buffer, h) for h in self._res["data_buffers"]]
                 + [("rt.free", acl.rt.free, p) for p in self._res["dev"]]
                 + [("rt.free_host", acl.rt.free_host, p) for p in self._res["host"]]
                 + [("mdl.destroy_dataset", acl.mdl.destroy_dataset, d) for d in self._res["datasets"]]
                 + [("mdl.unload", acl.mdl.unload, m) for m in self._res["models"]]
                 + [("mdl.destroy_desc", acl.mdl.destroy_desc, d) for d in self._res["descs"]])
        for call, fn, h in steps:
            try:
                check(acl, call, fn(h))
            except AclError as e:
                problems.append(str(e))
        for k in self._res:
            self._res[k].clear()
        self._free_leases.clear()
        if self._rt is not None:
            problems += self._rt.release()
            self._rt = None
        return problems

    def __del__(self) -> None:  # a backend dropped without close(): still give the device back
        try:
            if not getattr(self, "_released", True):
                self._release()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

