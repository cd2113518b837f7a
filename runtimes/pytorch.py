"""The ``torch`` backend: the bundle's source checkpoint run eagerly, the parity reference.

It computes exactly what the exported graphs compute (``model.prefill``/``step``/``rank``
plus the shared head ``model.score``) on the same int32 inputs, with the bundle's T, C, K'
and X, so any difference against another backend is the other backend's. The state is the
tuple of cache tensors, kept on the chosen device (``cpu``, ``cuda`` or ``npu`` through
torch_npu).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from genrec.bundle import Bundle
from genrec.errors import ConfigError, MissingBackend
from genrec.manifest import DEFAULT_STEP_TOPK

from .base import BackendBase, Dims, PrefillBatch, State, StepOutput, open_bundle

# dims used when running a bare checkpoint (no bundle); the exporter's defaults
DEFAULT_TOPK = 100
DEFAULT_RANK_CANDIDATES = 32
DEFAULT_GEARS = (1, 4, 16, 64)


def torch_device(device: str):
    """``cpu``, ``cuda[:i]`` or ``npu[:i]`` as a torch.device; MissingBackend says what to install."""
    import torch

    kind = device.split(":")[0]
    if kind == "npu":
        try:
            import torch_npu  # noqa: F401  (registers the npu device with torch)
        except ImportError as e:
            raise MissingBackend(
                f"torch device 'npu' needs torch_npu ({e}): pip install torch-npu matching torch "
                f"{torch.__version__}, then source CANN's set_env.sh "
                "(e.g. source /usr/local/Ascend/ascend-toolkit/set_env.sh)") from None
    elif kind == "cuda" and not torch.cuda.is_available():
        raise MissingBackend("torch device 'cuda': this torch build sees no CUDA device "
                             "(torch.cuda.is_available() is False); install a CUDA build of torch "
                             "or use --device cpu")
    elif kind not in ("cpu", "cuda"):
        raise ConfigError(f"torch device {device!r}: choose cpu, cuda or npu")
    return torch.device(device)


def _check_cpp_compiler() -> None:
    """MissingBackend now, rather than an InductorError on the first request, when torch.compile
    on CPU finds no C++ compiler (inductor builds its kernels with one: g++, or $CXX)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # a private helper; if it moves, the first compile says it instead
        return
    try:
        get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - InvalidCxxCompiler, whose module moves between releases
        raise MissingBackend(f"torch.compile on CPU needs a C++ compiler ({type(e).__name__}: {e}); "
                             "install g++ (apt-get install g++) or point $CXX at one") from None


class TorchState(State):
    def __init__(self, cache):
        self.cache = cache  # tuple of (B, ...) tensors on the backend's device


class TorchBackend(BackendBase):
    """Eager reference backend over a bundle (its source checkpoint) or a checkpoint file."""

    name = "torch"
    _compiled_gears = 0  # batch gears of every compiled backend in this process (``_compile``)

    def __init__(self, source: Bundle | str | os.PathLike[str], *, device: str = "cpu",
                 threads: int | None = None, topk: int | None = None, step_topk: int | None = None,
                 max_exclude: int | None = None,
                 rank_candidates: int | None = None, batch_gears: tuple[int, ...] | None = None,
                 compile: bool = False):
        import torch

        from genrec.checkpoint import load_checkpoint

        self._torch = torch
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model thread pool
        overrides = dict(topk=topk, step_topk=step_topk, max_exclude=max_exclude, rank_candidates=rank_candidates,
                         batch_gears=batch_gears)
        if isinstance(source, Bundle) or Path(source).is_dir():
            bundle = open_bundle(source)
            given = [k for k, v in overrides.items() if v is not None]
            if given:
                raise ConfigError(f"torch backend: {', '.join(given)} come from the bundle; "
                                  "pass a checkpoint file to choose them")
            # the checkpoint was cross-checked against the manifest when the bundle was opened;
            # its own id map is the reference's (parity compares the candidate's against it)
            ckpt = bundle.checkpoint()
            cfg = ckpt.config  # what the model is comes from model.pt; export sizes from the bundle
            dims = replace(bundle.dims, arch=cfg.arch, num_items=cfg.num_items, d_model=cfg.d_model,
                           temperature=float(cfg.temperature), needs_timestamps=ckpt.model.needs_timestamps)
            id_map = ckpt.id_map
        else:
            ckpt = load_checkpoint(source)
            cfg = ckpt.config
            k = topk or min(DEFAULT_TOPK, cfg.num_items)
            dims = Dims(
                arch=cfg.arch, num_items=cfg.num_items, max_history=cfg.max_len,
                capacity=cfg.capacity, topk=k, step_topk=step_topk or min(k, DEFAULT_STEP_TOPK),
                max_exclude=max_exclude or cfg.capacity,
                rank_candidates=rank_candidates or DEFAULT_RANK_CANDIDATES,
                batch_gears=tuple(sorted(batch_gears or DEFAULT_GEARS)),
                needs_timestamps=ckpt.model.needs_timestamps, temperature=cfg.temperature,
                d_model=cfg.d_model).check()
            id_map = ckpt.id_map
        super().__init__(dims, id_map, ckpt.path)
        self.device = torch_device(device)
        self.model = ckpt.model.to(self.device).eval()
        # compile=True: the model's prefill + head and step + head through torch.compile
        # (inductor, default mode, static shapes: one compilation per batch gear, on first use).
        # The contender a user would pick instead of an exported graph; benchmarks compare
        # against it (benchmarks/peers_bench.py, genrec bench --backends torch.compile).
        self.compiled = bool(compile)
        self._prefill_fn, self._step_fn = self._prefill_head, self._step_head
        if compile:
            self._prefill_fn, self._step_fn = self._compile(self._prefill_head, self._step_head)

    def _compile(self, *fns):
        """``torch.compile(fn, dynamic=False)`` of each of ``fns``, after making sure it can
        compile and that one version per batch gear does not run into dynamo's recompile limit.

        Dynamo keeps at most ``cache_size_limit`` (8) compiled versions of a function and runs
        it eagerly past that, with only a logged warning: the yardstick would quietly become
        eager torch. The versions are counted per code object for the whole process, not per
        backend (the guards check the model's type, not its identity, so two backends with
        equal shapes share versions), and with static shapes each batch gear of each bundle
        shape is one version. One bundle with the default gears needs 4; a benchmark opening
        a bundle per history length (``peers_bench.py --lengths``) needs 4 per bundle. So the
        limit is raised, never lowered, to the gears of every compiled backend created so far:
        an upper bound (shared versions are counted twice), and a bound all the same."""
        torch = self._torch
        if self.device.type == "cpu":
            _check_cpp_compiler()
        TorchBackend._compiled_gears += len(self.dims.batch_gears)
        config = torch._dynamo.config
        config.cache_size_limit = max(config.cache_size_limit, TorchBackend._compiled_gears)
        return tuple(torch.compile(fn, dynamic=False) for fn in fns)

    def item_vectors(self) -> np.ndarray:
        """The loaded model's own item vectors (no second read of the checkpoint)."""
        if self._item_vectors is None:
            with self._torch.inference_mode():
                self._item_vectors = np.ascontiguousarray(self.model.item_vectors().float().cpu().numpy())
        return self._item_vectors

    def _t(self, a: np.ndarray | None):
        return None if a is None else self._torch.from_numpy(a).to(self.device, self._torch.long)

    @staticmethod
    def _output(ids, scores, log_z, user) -> StepOutput:
        return StepOutput(ids.cpu().numpy(), scores.float().cpu().numpy(),
                          log_z.float().cpu().numpy(), user.float().cpu().numpy())

    def _prefill_head(self, item_ids, lengths, timestamps, request_time, exclude_ids):
        user, cache = self.model.prefill(item_ids, lengths, timestamps, request_time, capacity=self.dims.capacity)
        return (*self.model.score(user, exclude_ids, self.dims.topk), user, cache)

    def _step_head(self, new_item, position, timestamp, cache, exclude_ids):
        user, cache = self.model.step(new_item, position, timestamp, cache)
        return (*self.model.score(user, exclude_ids, self.dims.step_topk), user, cache)

    def _prefill(self, batch: PrefillBatch) -> tuple[StepOutput, State]:
        with self._torch.inference_mode():
            *out, cache = self._prefill_fn(
                self._t(batch.item_ids), self._t(batch.lengths), self._t(batch.timestamps),
                self._t(batch.request_time), self._t(batch.exclude_ids))
            return self._output(*out), TorchState(cache)

    def _step(self, state: TorchState, new_item, position, timestamp, exclude_ids) -> StepOutput:
        with self._torch.inference_mode():
            *out, state.cache = self._step_fn(self._t(new_item), self._t(position), self._t(timestamp),
                                              state.cache, self._t(exclude_ids))
            return self._output(*out)

    def _reorder(self, state: TorchState, index: np.ndarray) -> None:
        idx = self._t(index)
        # inference tensors like the ones prefill and step return (same values either way):
        # a compiled step guards on that, and would compile each gear again after a beam reorder
        with self._torch.inference_mode():
            state.cache = tuple(c.index_select(0, idx) for c in state.cache)

    def _rank(self, state: TorchState, candidates, position, timestamp) -> np.ndarray:
        with self._torch.inference_mode():
            scores = self.model.rank(self._t(candidates), self._t(position), self._t(timestamp),
                                     state.cache)
        return scores.float().cpu().numpy()

    def _close(self) -> None:
        self.model = None


class CompiledTorchBackend(TorchBackend):
    """``torch.compile`` (inductor, default mode, ``dynamic=False``) of the model's prefill + head
    and step + head: what a user would run instead of exporting, and so the yardstick of our
    benchmarks (``genrec bench --backends onnxruntime,torch.compile``). Compilation happens on
    the first call of each batch size (tens of seconds); benchmarks warm up first."""

    name = "torch.compile"

    def __init__(self, source: Bundle | str | os.PathLike[str], *, device: str = "cpu",
                 threads: int | None = None):
        super().__init__(source, device=device, threads=threads, compile=True)
