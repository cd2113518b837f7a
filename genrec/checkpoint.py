"""The checkpoint format (ARCHITECTURE.md §3): a plain dict that loads with ``weights_only=True``.

``{"format": "genrec.checkpoint", "version": 1, "arch", "config", "state_dict", "num_items",
"id_map", "metadata"}``. Only tensors, numbers, strings, lists and dicts go in, so loading
never unpickles code: a checkpoint that would need it is refused, not executed. The raw-id
map travels with the weights so every later stage speaks the user's raw item ids.
"""

from __future__ import annotations

import contextlib
import threading

import datetime as _dt
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .atomic import atomic_file
from .errors import CheckpointError, ConfigError
from .models import GenerativeRecommender, ModelConfig, build_model, config_from_dict

FORMAT = "genrec.checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode), its config, the raw-id map and metadata."""

    model: GenerativeRecommender
    config: ModelConfig
    id_map: list[int]
    metadata: dict[str, Any]
    path: Path | None = None


def non_finite_weight(state_dict: dict[str, Any]) -> str | None:
    """``"<name> (<n> NaN, <m> Inf of <size> values)"`` for the first floating tensor that
    holds a NaN or an Inf, else None.

    A NaN weight does not crash anything downstream: every score turns NaN, top-k keeps
    nothing, and serving answers ``"items": []`` with exit 0. Refusing such weights by name,
    at save and at load (and so at export), is the only place the cause is still visible."""
    for name, t in state_dict.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            return f"{name} ({nan} NaN, {inf} Inf of {t.numel()} values)"
    return None


def save_checkpoint(path: str | Path, model: GenerativeRecommender, id_map: list[int],
                    metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` atomically; ``id_map[i]`` is the raw id of internal item ``i + 1``.
    Weights with NaN or Inf (a diverged run) are refused: ``load_checkpoint`` would refuse
    the file anyway, and better no file than one that cannot be used."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = non_finite_weight(state)
    if bad:
        raise CheckpointError(f"{path}: refusing to save: weight {bad} is not finite "
                              "(did training diverge?)")
    meta = {"created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "genrec_version": __version__, **(metadata or {})}
    blob = {
        "format": FORMAT,
        "version": VERSION,
        "arch": model.config.arch,
        "config": model.config.to_dict(),
        "state_dict": state,
        "num_items": model.config.num_items,
        "id_map": [int(i) for i in id_map],
        "metadata": meta,
    }
    path = Path(path)
    with atomic_file(path, mode="wb") as f:
        torch.save(blob, f)
    return path


_INIT_FNS = ("uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "xavier_normal_",
             "kaiming_uniform_", "kaiming_normal_", "orthogonal_")
_INIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_init():
    """Build modules without their random initialisation (``torch.nn.init`` fills made no-ops).

    Loading a checkpoint builds the model and then overwrites every weight; the init it skips
    (``trunc_normal_`` above all) was 0.19 s of the 0.33 s it took to open a small bundle,
    paid by every ``genrec-run``. Only the fills are skipped: buffers computed from the config
    (HSTU's bucket edges) are built as usual, and ``load_checkpoint`` refuses a state dict
    that does not cover every parameter, so nothing uninitialised survives."""
    with _INIT_LOCK:
        saved = {name: getattr(torch.nn.init, name) for name in _INIT_FNS}
        try:
            for name in _INIT_FNS:
                setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
            yield
        finally:
            for name, fn in saved.items():
                setattr(torch.nn.init, name, fn)


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> Checkpoint:
    """Load with ``weights_only=True``; refuse pickled code and files from other tools."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported object"
        raise CheckpointError(
            f"{path}: refused: the checkpoint needs arbitrary unpickling ({first[:160]}); "
            "genrec never executes code from a checkpoint"
        ) from None
    except Exception as e:  # torch raises RuntimeError/EOFError/zipfile errors for non-checkpoints
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a genrec checkpoint (no 'format': '{FORMAT}'); "
            "train with `genrec train` or convert the weights first"
        )
    if blob.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {blob.get('version')} is not supported (want {VERSION})")
    missing = [k for k in ("arch", "config", "state_dict", "num_items", "id_map") if k not in blob]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    try:
        config = config_from_dict(dict(blob["config"]))
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    with _no_init():  # every weight is overwritten below: random init was most of a load
        model = build_model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(blob["state_dict"]))
    unexpected = sorted(set(blob["state_dict"]) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the {config.arch} config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, t in blob["state_dict"].items():  # a key table with shape checks, before loading
        if tuple(t.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{path}: weight {name} has shape {tuple(t.shape)}, "
                                  f"the config expects {tuple(expected[name].shape)}")
    bad = non_finite_weight(blob["state_dict"])
    if bad:
        raise CheckpointError(f"{path}: weight {bad} is not finite; a model with NaN or Inf "
                              "weights scores every item NaN and recommends nothing")
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return Checkpoint(model, config, list(blob["id_map"]), dict(blob.get("metadata", {})), path)
