"""Helpers shared by test modules (importable as ``support``; tests/ is on pytest's pythonpath)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT / "data" / "beauty-slice"
ARCHS = ("hstu", "sasrec", "gpt", "llama")
TEST_GEARS = (1, 4, 8)


def make_checkpoint(arch: str, path: Path, seed: int = 0, **overrides) -> Path:
    """A small model with seeded random weights over the slice's catalogue, saved as ours.

    Parity and export checks need real histories, not trained weights; ``dataset`` in the
    metadata points the exporter's numeric check at the shipped slice.
    """
    import torch

    from genrec.checkpoint import save_checkpoint
    from genrec.data import read_sequences
    from genrec.models import build_model, make_config

    data = read_sequences(SLICE)
    torch.manual_seed(seed)
    settings = dict(max_len=20, max_new_items=8)
    settings.update(overrides)
    model = build_model(make_config(arch, data.num_items, "small", **settings)).eval()
    return save_checkpoint(path, model, data.item_map.to_list(), {"dataset": str(SLICE)})
