"""The ``openvino`` backend: a bundle's ONNX graphs on OpenVINO's CPU plugin.

Mostly a yardstick: OpenVINO is what many CPU-serving users would pick instead of
onnxruntime, so ``benchmarks/peers_bench.py`` and ``genrec bench`` race it against ours
through the same decoding loop. It is a complete backend all the same (prefill, step,
reorder, rank), so ``genrec parity --candidate openvino`` gates it like any other.

Precision: ``INFERENCE_PRECISION_HINT=f32`` by default. OpenVINO's own default on a CPU
with bf16 units is bf16, where its top-k agreed with fp32 on 21-29% of ids only (measured on
the HSTU ml-1m shape): not a fair contender, and not what a bundle promises.

Shapes: each graph is compiled once per batch size it is called with, with every dimension
static (OpenVINO plans memory and picks kernels per shape; dynamic batch costs it more).
Feeds are shared with OpenVINO for the synchronous call, not copied in; the cache is plain
numpy, copied out of the request's output tensors after each call (OpenVINO overwrites them on
the next one), and so is everything returned (topk_ids as int64: the graphs emit int32).
Optional: ``pip install openvino`` (the ``bench`` extra).
"""

from __future__ import annotations

import os

import numpy as np

from genrec.bundle import Bundle
from genrec.errors import BundleError, ConfigError, MissingBackend

from .base import BackendBase, PrefillBatch, State, StepOutput, open_bundle
from .onnxrt import physical_cores

INFERENCE_PRECISIONS = ("f32", "f16", "bf16")  # INFERENCE_PRECISION_HINT values the CPU plugin takes


class OvState(State):
    def __init__(self, cache: list[np.ndarray]):
        self.cache = cache  # host arrays, owned (copied out of the request's output tensors)


class OpenVINOBackend(BackendBase):
    """A bundle's graphs compiled by OpenVINO (per batch size, static shapes), cache on the host."""

    name = "openvino"

    def __init__(self, source: Bundle | str | os.PathLike[str], *, precision: str | None = None,
                 threads: int | None = None, inference_precision: str = "f32", device: str = "CPU"):
        # checked before anything loads: a typo must not surface as a RuntimeError on the first
        # request, when the first graph is compiled
        if inference_precision not in INFERENCE_PRECISIONS:
            raise ConfigError(f"openvino backend: inference_precision {inference_precision!r}: "
                              f"choose {', '.join(INFERENCE_PRECISIONS)}")
        try:
            import openvino as ov
        except ImportError as e:
            raise MissingBackend(f"openvino backend: {e}; pip install openvino (or the bench extra)") from None
        core = ov.Core()
        device = device.upper()  # OpenVINO's names are upper case; genrec-run --device says cpu
        if device not in core.available_devices:
            raise ConfigError(f"openvino backend: device {device!r}: this OpenVINO has "
                              f"{', '.join(core.available_devices)}")
        bundle = open_bundle(source)
        super().__init__(bundle.dims, bundle.id_map, bundle.checkpoint_path)
        bundle.release_checkpoint()
        from .registry import resolve_variant

        self.precision = resolve_variant(bundle, precision) or bundle.precisions[0]
        self.bundle, self._core, self._device = bundle, core, device
        self.threads = threads or physical_cores()
        self._config = {"INFERENCE_PRECISION_HINT": inference_precision, "PERFORMANCE_HINT": "LATENCY",
                        "INFERENCE_NUM_THREADS": self.threads}
        self._models = {g: core.read_model(str(bundle.graph_path(g, self.precision)))
                        for g in ("prefill", "step", "rank")}
        self._past = [i.get_any_name() for i in self._models["step"].inputs
                      if i.get_any_name().startswith("past_")]
        if not self._past:
            raise BundleError(f"bundle {bundle.path}: step graph has no past_* inputs")
        self._requests: dict[tuple[str, int], object] = {}

    def _request(self, graph: str, b: int):
        """The infer request of ``graph`` compiled for batch ``b`` (compiled on first use)."""
        key = (graph, b)
        if key not in self._requests:
            model = self._models[graph].clone()
            shapes = {}
            for port in model.inputs:
                dims = [b if i == 0 else int(d.get_length()) for i, d in enumerate(port.get_partial_shape())]
                shapes[port.get_any_name()] = dims
            model.reshape(shapes)
            self._requests[key] = self._core.compile_model(model, self._device, self._config).create_infer_request()
        return self._requests[key]

    def _run(self, graph: str, b: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``graph`` at batch ``b``; its outputs by every name they carry, as views of the
        request's output tensors: valid only until the request runs again, so whatever is kept
        must be copied (``_output``, ``_cache``, ``_rank`` do)."""
        # the feeds are contiguous int32/float arrays alive for this synchronous call: shared,
        # not copied in (the cache would be copied on every step otherwise), and the outputs are
        # not copied into a result dict only to be copied again
        result = self._request(graph, b).infer(feeds, share_inputs=True, share_outputs=True)
        return {name: arr for port, arr in result.items() for name in port.get_names()}

    def _output(self, out: dict[str, np.ndarray]) -> StepOutput:
        # np.array copies: the arrays are views that the next infer call overwrites
        return StepOutput(np.array(out["topk_ids"], dtype=np.int64), np.array(out["topk_scores"], dtype=np.float32),
                          np.array(out["log_z"], dtype=np.float32),
                          np.array(out["user_emb"], dtype=np.float32) if "user_emb" in out else None)

    def _cache(self, out: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [out["present_" + n[len("past_"):]].copy() for n in self._past]

    def _prefill(self, batch: PrefillBatch) -> tuple[StepOutput, State]:
        feeds = {"item_ids": batch.item_ids, "lengths": batch.lengths, "exclude_ids": batch.exclude_ids}
        if self.dims.needs_timestamps:
            feeds |= {"timestamps": batch.timestamps, "request_time": batch.request_time}
        out = self._run("prefill", batch.batch, feeds)
        return self._output(out), OvState(self._cache(out))

    def _step(self, state: OvState, new_item, position, timestamp, exclude_ids) -> StepOutput:
        feeds = {"new_item": new_item, "position": position, "exclude_ids": exclude_ids,
                 **dict(zip(self._past, state.cache))}
        if timestamp is not None:
            feeds["timestamp"] = timestamp
        out = self._run("step", state.batch, feeds)
        state.cache = self._cache(out)
        return self._output(out)

    def _reorder(self, state: OvState, index: np.ndarray) -> None:
        state.cache = [np.take(c, index, axis=0) for c in state.cache]

    def _rank(self, state: OvState, candidates, position, timestamp) -> np.ndarray:
        feeds = {"candidates": candidates, "position": position, **dict(zip(self._past, state.cache))}
        if timestamp is not None:
            feeds["timestamp"] = timestamp
        return np.array(self._run("rank", state.batch, feeds)["scores"], dtype=np.float32)  # a copy

    def _close(self) -> None:
        self._requests, self._models = {}, {}
