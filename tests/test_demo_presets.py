"""The demo's per-backbone settings (genrec/presets/demo/ARCH.json, read by examples/end_to_end.sh).

They were chosen on the validation item of the shipped slice (benchmarks/demo_sweep.py, rows in
benchmarks/results/demo_sweep*.jsonl). Training the HSTU demo takes ~1-3 minutes on one core,
too long for the suite: its comparison with most-popular is printed by end_to_end.sh itself.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from genrec.models import ARCHS, make_config
from genrec.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "genrec" / "presets" / "demo"


def _settings(arch: str) -> tuple[dict, dict]:
    settings = json.loads((DEMO / f"{arch}.json").read_text())
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return ({k: v for k, v in settings.items() if k not in fields},
            {k: v for k, v in settings.items() if k in fields})


@pytest.mark.parametrize("arch", ARCHS)
def test_every_backbone_has_valid_demo_settings(arch):
    model, train_settings = _settings(arch)
    TrainConfig(**train_settings)
    make_config(arch, 100, "small", **model)  # unknown keys would be a ConfigError
