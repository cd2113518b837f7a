"""A small *trained* llama over the shipped slice, exported once, with its three variants.

The accuracy gate needs a model that ranks held-out items better than chance (a random one
has NDCG@10 ~ 0, and a relative loss of 0 is meaningless), so these tests train one: 10
epochs of the small preset at T=20 take a few seconds. The bundle is quantised once per
session (fp16, int8-dynamic, int8-static) and shared read-only; tests that change a bundle
copy it to tmp_path first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support import SLICE

CALIB, JUDGE = 48, 600  # users: few calibrate (fast), enough judge for a non-zero fp32 NDCG@10


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory) -> Path:
    """An exported llama trained on the slice, no variants (read-only)."""
    from genrec.checkpoint import save_checkpoint
    from genrec.data import leave_one_out, read_sequences
    from genrec.exporter import export_bundle
    from genrec.models import make_config
    from genrec.training import TrainConfig, init_model, train

    root = tmp_path_factory.mktemp("calib")
    split = leave_one_out(read_sequences(SLICE))
    model = init_model(make_config("llama", split.num_items, "small", max_len=20, max_new_items=8), 0)
    train(model, split, TrainConfig(epochs=10, threads=1, seed=0, eval_users=300))
    ckpt = save_checkpoint(root / "llama.pt", model.eval(), split.item_map.to_list(), {"dataset": str(SLICE)})
    out = root / "bundle"
    export_bundle(ckpt, out, topk=40, max_exclude=28, rank_candidates=6, batch_gears=(1, 4, 8), data=SLICE)
    return out


@pytest.fixture(scope="session")
def quantized(trained_bundle, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of ``trained_bundle`` with fp16, int8-dynamic and int8-static variants, and the
    info each ``quantize_bundle`` returned (read-only)."""
    from genrec.calibration import quantize_bundle

    out = tmp_path_factory.mktemp("quantized") / "bundle"
    shutil.copytree(trained_bundle, out)
    infos = {p: quantize_bundle(out, p, SLICE, calib_users=CALIB, judge_users=JUDGE, threads=1)
             for p in ("fp16", "int8-dynamic", "int8-static")}
    return out, infos

