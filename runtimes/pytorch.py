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


class TorchState(State):
    def __init__(self, cache):
        self.cache = cache  # tuple of (B, ...) tensors on the backend's device


class TorchBackend(BackendBase):
    """Eager reference backend over a bundle (its source checkpoint) or a checkpoint file."""

    name = "torch"

    def __init__(self, source: Bundle | str | os.PathLike[str], *, device: str = "cpu",
                 threads: int | None = None, topk: int | None = None, step_topk: int | None = None,
                 max_exclude: int | None = None,
                 rank_candidates: int | None = None, batch_gears: tuple[int, ...] | None = None):
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

    def item_vectors(self) -> np.ndarray:
        """The loaded model's own item vectors (no second read of the checkpoint)."""
        if self._item_vectors is None:
            with self._torch.inference_mode():
                self._item_vectors = np.ascontiguousarray(self.model.item_vectors().float().cpu().numpy())
        return self._item_vectors

    def _t(self, a: np.ndarray | None):
        return None if a is None else self._torch.from_numpy(a).to(self.device, self._torch.long)

    def _head(self, user, exclude_ids: np.ndarray, k: int) -> StepOutput:
        ids, scores, log_z = self.model.score(user, self._t(exclude_ids), k)
        return StepOutput(ids.cpu().numpy(), scores.float().cpu().numpy(),
                          log_z.float().cpu().numpy(), user.float().cpu().numpy())

    def _prefill(self, batch: PrefillBatch) -> tuple[StepOutput, State]:
        with self._torch.inference_mode():
            user, cache = self.model.prefill(
                self._t(batch.item_ids), self._t(batch.lengths), self._t(batch.timestamps),
                self._t(batch.request_time), capacity=self.dims.capacity)
            return self._head(user, batch.exclude_ids, self.dims.topk), TorchState(cache)

    def _step(self, state: TorchState, new_item, position, timestamp, exclude_ids) -> StepOutput:
        with self._torch.inference_mode():
            user, state.cache = self.model.step(self._t(new_item), self._t(position),
                                                self._t(timestamp), state.cache)
            return self._head(user, exclude_ids, self.dims.step_topk)

    def _reorder(self, state: TorchState, index: np.ndarray) -> None:
        idx = self._t(index)
        state.cache = tuple(c.index_select(0, idx) for c in state.cache)

    def _rank(self, state: TorchState, candidates, position, timestamp) -> np.ndarray:
        with self._torch.inference_mode():
            scores = self.model.rank(self._t(candidates), self._t(position), self._t(timestamp),
                                     state.cache)
        return scores.float().cpu().numpy()

    def _close(self) -> None:
        self.model = None
