"""Meta's training protocol (``--set protocol=meta``) and each of its parts, on the shipped slice.

What Meta does (MODELS.md §1.5-1.6): R negatives drawn uniformly with replacement from all
items, independently for every position; a negative equal to the positive is not redrawn but
masked (logit -5e4); training on all but the last item; a fixed epoch budget; evaluation on
the last item.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genrec.cli import cli, run_cli
from genrec.data import SequenceData, Split, leave_one_out, read_sequences
from genrec.errors import ConfigError
from genrec.models import make_config
from genrec.training import (TrainConfig, draw_negatives, init_model, refit_gain, sampled_softmax_loss,
                             train, training_rows)

SLICE = Path(__file__).resolve().parents[1] / "data" / "beauty-slice"


@pytest.fixture(scope="module")
def split() -> Split:
    return leave_one_out(read_sequences(SLICE))


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- negatives ----------------------------------------------------------------------------

def test_per_position_negatives_are_uniform_and_independent():
    n_items, positions, r = 20, 4000, 64
    neg = draw_negatives(np.random.default_rng(0), n_items, r, positions)
    assert neg.shape == (positions, r) and neg.dtype == torch.int64
    assert int(neg.min()) == 1 and int(neg.max()) == n_items  # never the padding id 0
    counts = np.bincount(neg.numpy().ravel(), minlength=n_items + 1)[1:]
    expected = positions * r / n_items
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 60, chi2  # 19 degrees of freedom: p < 1e-5 above ~50
    # independent rows: two positions agree in a slot with probability 1/N, not 1 (shared)
    a, b = neg[:-1].numpy(), neg[1:].numpy()
    agree = float((a == b).mean())
    assert abs(agree - 1 / n_items) < 0.01, agree
    # and a position's draw does not predict the next position's (no correlation)
    corr = np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1]
    assert abs(corr) < 0.02, corr
    shared = draw_negatives(np.random.default_rng(0), n_items, r)
    assert shared.shape == (r,)


def _toy(arch: str = "sasrec"):
    torch.manual_seed(0)
    model = init_model(make_config(arch, 50, "small", dropout=0.0), 0)
    h = torch.randn(3, 5, model.config.d_model)
    targets = torch.tensor([[3, 4, 5, 0, 0], [7, 8, 9, 10, 11], [12, 0, 0, 0, 0]])
    return model, h, targets


def test_blockwise_scores_have_the_plain_expressions_values_and_gradients():
    """The per-position path's blockwise ``(u @ table.T).gather`` (forward and backward a block
    of rows at a time) against autograd of the plain expression, across several blocks and a
    partial one, and against finite differences."""
    from genrec.training import _ScoresAt

    g = torch.Generator().manual_seed(0)
    rows = 2 * _ScoresAt.BLOCK + 44
    u = torch.randn(rows, 8, dtype=torch.float64, generator=g, requires_grad=True)
    table = torch.randn(51, 8, dtype=torch.float64, generator=g, requires_grad=True)
    index = torch.randint(0, 51, (rows, 6), generator=g)
    index[0, :3] = 7  # repeats within a row accumulate
    weights = torch.randn(rows, 6, dtype=torch.float64, generator=g)
    got = _ScoresAt.apply(u, table, index)
    (got * weights).sum().backward()
    grads = u.grad.clone(), table.grad.clone()
    u.grad = table.grad = None
    want = (u @ table.t()).gather(1, index)
    (want * weights).sum().backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grads, (u.grad, table.grad))
    small = (u[:5].detach().requires_grad_(), table[:9].detach().requires_grad_(), index[:5] % 9)
    assert torch.autograd.gradcheck(_ScoresAt.apply, small)


def test_per_position_loss_matches_the_shared_one_and_both_paths_agree():
    model, h, targets = _toy()
    shared = draw_negatives(np.random.default_rng(1), 50, 16)
    positions = int((targets != 0).sum())
    same_rows = shared[None, :].expand(positions, -1).contiguous()
    expected = sampled_softmax_loss(model, h, targets, shared)
    for via_scores in (True, False):
        got = sampled_softmax_loss(model, h, targets, same_rows, via_scores=via_scores)
        torch.testing.assert_close(got, expected)
    rows = draw_negatives(np.random.default_rng(2), 50, 16, positions)
    a = sampled_softmax_loss(model, h, targets, rows, via_scores=True)
    b = sampled_softmax_loss(model, h, targets, rows, via_scores=False)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, expected)  # other negatives, another loss
    with pytest.raises(ValueError, match="rows of negatives"):
        sampled_softmax_loss(model, h, targets, rows[:-1])


def test_a_negative_equal_to_the_positive_is_masked_per_position():
    model, h, targets = _toy()
    pos = targets[targets != 0]
    # every negative of every position is its own positive: all masked, the loss is ~0
    rows = pos[:, None].expand(-1, 8).contiguous()
    assert float(sampled_softmax_loss(model, h, targets, rows).detach()) < 1e-6
    # one position's negatives equal to the positive do not affect another's: only position 0
    # has real negatives (item 1), so the mean loss is its loss / P
    mixed = rows.clone()
    mixed[0] = 1
    with torch.no_grad():
        u = model.output_vector(h[targets != 0])[0]
        table = model.item_vectors()
        logits = torch.cat([(u @ table[pos[0]])[None], (u @ table[1]).repeat(8)]) / model.config.temperature
        expected = -torch.log_softmax(logits, 0)[0] / len(pos)
        torch.testing.assert_close(sampled_softmax_loss(model, h, targets, mixed), expected)


# -- split convention and selection -------------------------------------------------------

def test_holdout_last_trains_on_the_validation_item_never_on_the_test_item(split):
    for holdout, last_target in (("valid", -3), ("last", -2)):
        rows = training_rows(split, 50, holdout)
        seqs = [s for s in split.data.items if len(s) + last_target >= 1]
        assert len(rows) == len(seqs) == len(split)  # every slice user has >= 5 items
        for (inputs, targets, _, _), seq in zip(rows, seqs):
            assert targets[-1] == seq[last_target]
            assert inputs[-1] == seq[last_target - 1]
    assert [len(s) for s in split.train_sequences("last")][:5] == [len(s) - 1 for s in split.data.items[:5]]
    with pytest.raises(ValueError, match="holdout"):
        split.train_sequences("test")


def test_protocol_resolution_and_bad_settings():
    meta = TrainConfig(protocol="meta")
    assert (meta.negatives, meta.holdout, meta.selection, meta.epochs) == ("per_position", "last", "last", 101)
    default = TrainConfig()
    assert (default.negatives, default.holdout, default.selection, default.epochs) == ("shared", "valid", "auto", 40)
    mixed = TrainConfig(protocol="meta", negatives="shared", epochs=7)
    assert (mixed.negatives, mixed.holdout, mixed.epochs) == ("shared", "last", 7)
    assert TrainConfig(**meta.to_dict()) == meta  # a checkpoint's record rebuilds the same config
    for bad in (dict(protocol="fast"), dict(negatives="batch"), dict(holdout="test"),
                dict(protocol="meta", selection="best_valid"), dict(protocol="meta", selection="refit"),
                dict(holdout="last"), dict(selection="early"), dict(protocol=1)):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)


def _with_other_test_items(split: Split, seed: int) -> Split:
    """The same users with every test item (the last one) replaced by another random item."""
    rng = np.random.default_rng(seed)
    items = [np.concatenate([s[:-1], rng.integers(1, split.num_items + 1, 1)]) for s in split.data.items]
    d = split.data
    return Split(SequenceData(users=d.users, items=items, times=d.times, item_map=d.item_map,
                              source=d.source, dropped_users=0))


@pytest.mark.parametrize("protocol", ["default", "meta"])
def test_training_never_looks_at_the_test_item(split, one_thread, protocol):
    small = split.sample(300, seed=0)
    weights = []
    for data in (small, _with_other_test_items(small, 1)):
        cfg = TrainConfig(protocol=protocol, epochs=3, batch_size=64, num_negatives=64, seed=3)
        model = init_model(make_config("gpt", split.num_items, "small", d_model=16), cfg.seed)
        history = train(model, data, cfg)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    if protocol == "meta":
        assert history["best_valid_ndcg10"] is None and history["best_epoch"] == 3  # final epoch
        assert history["epochs"][0]["valid"] is None


def test_refit_is_the_chosen_epoch_count_trained_again_on_all_but_the_last_item(split, one_thread):
    """The default: early stopping on the validation item picks E, then the initial weights
    train E epochs on items[:-1] with the same seed: exactly what a fixed-budget run of E
    epochs with Meta's split gives, and not the early-stopped weights."""
    small = split.sample(400, seed=0)
    shape = make_config("sasrec", split.num_items, "small", d_model=16)
    events = []
    cfg = TrainConfig(epochs=6, patience=2, batch_size=64, num_negatives=64, lr=3e-3, seed=5)
    model = init_model(shape, cfg.seed)
    history = train(model, small, cfg, progress=events.append)
    chosen = history["best_epoch"]
    assert 1 <= chosen <= history["epochs_run"] <= 6
    assert history["refit"]["epochs_run"] == chosen and history["refit"]["train_rows"] > history["train_rows"] * 0.9
    assert history["best_valid"]["NDCG@10"] == history["best_valid_ndcg10"] > 0
    assert not model.training

    fixed = init_model(shape, cfg.seed)
    train(fixed, small, TrainConfig(holdout="last", selection="last", epochs=chosen, batch_size=64,
                                    num_negatives=64, lr=3e-3, seed=5))
    early = init_model(shape, cfg.seed)
    train(early, small, TrainConfig(selection="best_valid", epochs=6, patience=2, batch_size=64,
                                    num_negatives=64, lr=3e-3, seed=5))
    got, want, stopped = model.state_dict(), fixed.state_dict(), early.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in got)
    assert not all(torch.equal(got[k], stopped[k]) for k in got)
    refit_events = [e for e in events if e.get("phase") == "refit"]
    assert refit_events and all(e["epochs"] == chosen for e in refit_events)
    assert [e["epoch"] for e in refit_events if "valid" in e] == list(range(1, chosen + 1))
    assert all(e["valid"] is None for e in refit_events if "valid" in e)


def test_auto_refits_short_histories_and_not_long_ones(split, one_thread):
    """Beauty's users have ~9 items, so the validation item is a large share of what there is
    to learn from; with 60-item histories in a 50-item window it adds nothing."""
    shape = make_config("sasrec", split.num_items, "small", d_model=16)
    assert shape.max_len == 50
    short = split.sample(300, seed=0)
    lengths = np.array([len(s) for s in short.data.items])
    assert np.median(lengths) < 12
    gain = refit_gain(short, shape.max_len)
    assert 0.1 < gain < 0.5, gain  # one more target on top of len-3 for most users
    rng = np.random.default_rng(0)
    long = Split(SequenceData(users=[f"u{i}" for i in range(200)],
                              items=[rng.integers(1, split.num_items + 1, 60) for _ in range(200)],
                              times=None, item_map=split.data.item_map, source="synthetic", dropped_users=0))
    assert refit_gain(long, shape.max_len) == 0.0  # the window just slides by one item
    cfg = TrainConfig(epochs=1, batch_size=64, num_negatives=32, seed=1)
    assert cfg.selection == "auto"
    for data, ran in ((short, "refit"), (long, "best_valid")):
        history = train(init_model(shape, cfg.seed), data, cfg)
        assert history["protocol"]["selection"] == ran and ("refit" in history) == (ran == "refit")
        assert history["refit_gain"] == refit_gain(data, shape.max_len)


def test_meta_protocol_learns_on_the_slice(split, one_thread):
    from genrec.evaluation import evaluate
    from genrec.metrics import most_popular_ranks, ranking_metrics

    popular = ranking_metrics(most_popular_ranks(split, "test"), (10,))["NDCG@10"]
    cfg = TrainConfig(protocol="meta", epochs=8, lr=2e-3, num_negatives=128, seed=42)
    model = init_model(make_config("llama", split.num_items, "small"), cfg.seed)
    history = train(model, split, cfg)
    assert history["epochs_run"] == 8 and history["best_epoch"] == 8
    assert history["epochs"][-1]["loss"] < history["epochs"][0]["loss"]
    assert evaluate(model, split.examples("test"), ks=(10,))["NDCG@10"] > popular


# -- the command line ---------------------------------------------------------------------

def _genrec(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        run_cli(cli, args, prog_name="genrec")
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    out = tmp_path / "tiny"
    out.mkdir()
    for name in ("items.txt", "times.txt"):
        (out / name).write_text("\n".join((SLICE / name).read_text().splitlines()[:300]) + "\n")
    return out


def test_cli_protocol_meta(tmp_path: Path, tiny_data: Path, capsys, one_thread):
    from genrec.checkpoint import load_checkpoint

    ckpt = tmp_path / "m.pt"
    code, out, err = _genrec(["train", "--data", str(tiny_data), "--arch", "hstu", "-o", str(ckpt),
                              "--set", "protocol=meta", "--set", "epochs=2", "--set", "d_model=16"], capsys)
    assert code == 0, err
    assert "final epoch 2" in out and "valid NDCG@10 n/a" in out
    meta = load_checkpoint(ckpt).metadata
    assert meta["train"]["negatives"] == "per_position" and meta["train"]["holdout"] == "last"
    code, _, err = _genrec(["train", "--data", str(tiny_data), "--arch", "hstu", "-o", str(ckpt),
                            "--set", "protocol=fast", "--quiet"], capsys)
    assert code == 1 and err.strip().startswith("error:") and len(err.strip().splitlines()) == 1
    assert "protocol='fast'" in err
    code, out, err = _genrec(["train", "--data", str(tiny_data), "--arch", "sasrec", "-o", str(ckpt), "--quiet",
                              "--set", "epochs=2", "--set", "d_model=16"], capsys)
    assert code == 0, err
    assert "refit on all but the last item" in out and "epochs (chosen at valid NDCG@10 0." in out
    assert load_checkpoint(ckpt).metadata["train"]["selection"] == "refit"
