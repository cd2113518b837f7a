"""The checkpoint format: round trip, and refusal of pickled code and foreign files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genrec.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from genrec.errors import CheckpointError
from genrec.models import ARCHS, make_config
from genrec.training import init_model

NUM_ITEMS = 60


def _inputs(model):
    torch.manual_seed(1)
    lengths = torch.tensor([3, 7, 10])
    ids = torch.randint(1, NUM_ITEMS + 1, (3, 10))
    ids[torch.arange(10)[None, :] >= lengths[:, None]] = 0
    ts = torch.cumsum(torch.randint(0, 90_000, (3, 10)), 1) * (ids != 0)
    req = ts.max(1).values + 3600
    return ids, lengths, ts, req


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_gives_identical_outputs(tmp_path: Path, arch: str):
    model = init_model(make_config(arch, NUM_ITEMS, "small", max_len=10, max_new_items=3), seed=3).eval()
    id_map = [1000 + i for i in range(NUM_ITEMS)]
    path = save_checkpoint(tmp_path / "m.pt", model, id_map, {"note": "round trip"})
    ckpt = load_checkpoint(path)
    assert ckpt.config == model.config
    assert ckpt.id_map == id_map and ckpt.metadata["note"] == "round trip"
    assert not ckpt.model.training
    ids, lengths, ts, req = _inputs(model)
    with torch.no_grad():
        u0, c0 = model.prefill(ids, lengths, ts, req)
        u1, c1 = ckpt.model.prefill(ids, lengths, ts, req)
        cand = torch.randint(1, NUM_ITEMS + 1, (3, 4))
        r0 = model.rank(cand, lengths, req, c0)
        r1 = ckpt.model.rank(cand, lengths, req, c1)
    assert torch.equal(u0, u1) and torch.equal(r0, r1)
    assert all(torch.equal(a, b) for a, b in zip(c0, c1))
    for name, t in model.state_dict().items():
        assert torch.equal(t, ckpt.model.state_dict()[name]), name


class _RunsCode:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_not_run(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    model = init_model(make_config("sasrec", NUM_ITEMS, "small", max_len=10), seed=0)
    torch.save({"format": FORMAT, "version": 1, "arch": "sasrec", "config": model.config.to_dict(),
                "state_dict": model.state_dict(), "num_items": NUM_ITEMS,
                "id_map": list(range(1, NUM_ITEMS + 1)), "metadata": {"x": _RunsCode(marker)}}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_plain_state_dict_is_not_a_genrec_checkpoint(tmp_path: Path):
    path = tmp_path / "other.pt"
    model = init_model(make_config("gpt", NUM_ITEMS, "small", max_len=10), seed=0)
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="not a genrec checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"user item\n1 2\n", b"", b"PK\x03\x04 truncated zip"])
def test_non_torch_file_is_refused(tmp_path: Path, content: bytes):
    path = tmp_path / "data.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(path)


def test_truncated_checkpoint_is_refused(tmp_path: Path):
    model = init_model(make_config("llama", NUM_ITEMS, "small", max_len=10), seed=0)
    path = save_checkpoint(tmp_path / "m.pt", model, list(range(1, NUM_ITEMS + 1)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def test_weights_that_do_not_match_the_config(tmp_path: Path):
    model = init_model(make_config("hstu", NUM_ITEMS, "small", max_len=10), seed=0)
    path = save_checkpoint(tmp_path / "m.pt", model, list(range(1, NUM_ITEMS + 1)))
    blob = torch.load(path, weights_only=True)
    blob["config"]["d_model"] = 64  # weights are 32 wide
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(path)


def _with_weight(tmp_path: Path, name: str, value: float) -> tuple[Path, int]:
    """A saved HSTU checkpoint whose weight ``name`` holds ``value`` at one place; its size."""
    model = init_model(make_config("hstu", NUM_ITEMS, "small", max_len=10), seed=0)
    path = save_checkpoint(tmp_path / "m.pt", model, list(range(1, NUM_ITEMS + 1)))
    blob = torch.load(path, weights_only=True)
    blob["state_dict"][name].view(-1)[7] = value
    torch.save(blob, path)
    return path, blob["state_dict"][name].numel()


@pytest.mark.parametrize("name, value, counts", [
    ("layers.1.w_ts", float("nan"), "1 NaN, 0 Inf"),
    ("item_emb.weight", float("-inf"), "0 NaN, 1 Inf"),
])
def test_non_finite_weights_are_refused_by_name(tmp_path: Path, name: str, value: float, counts: str):
    """NaN scores drop every item from top-k: such a model served ``"items": []`` with exit 0."""
    path, size = _with_weight(tmp_path, name, value)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"{path}: weight {name} ({counts} of {size} values) is not finite; "
                              "a model with NaN or Inf weights scores every item NaN and recommends nothing")


def test_export_refuses_non_finite_weights(tmp_path: Path):
    """The exporter loads through load_checkpoint: one error line naming the tensor, no bundle."""
    path, _ = _with_weight(tmp_path, "layers.0.uvqk.weight", float("nan"))
    out = tmp_path / "bundle"
    proc = subprocess.run([sys.executable, "-m", "genrec", "export", str(path), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [f"error: {path}: weight layers.0.uvqk.weight (1 NaN, 0 Inf of "
                                        f"{32 * 2 * 2 * 32} values) is not finite; a model with NaN or Inf "
                                        "weights scores every item NaN and recommends nothing"], proc.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_non_finite_weights_are_not_saved(tmp_path: Path):
    model = init_model(make_config("sasrec", NUM_ITEMS, "small", max_len=10), seed=0)
    with torch.no_grad():
        model.item_emb.weight[3, 1] = float("nan")
    with pytest.raises(CheckpointError, match=r"m\.pt: refusing to save: weight item_emb\.weight \(1 NaN"):
        save_checkpoint(tmp_path / "m.pt", model, list(range(1, NUM_ITEMS + 1)))
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left behind
