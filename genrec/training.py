"""Sampled-softmax training (MODELS.md §1.5) with validation and early stopping, or Meta's protocol.

Every position predicts the next item; the loss is a softmax over the positive and R
negatives drawn uniformly from the catalogue, at temperature τ on cosine scores (or dot
products when ``l2_norm`` is off). A negative equal to the positive gets logit -5e4: it is
masked, not redrawn, exactly as Meta does. AdamW; a fixed seed gives the same checkpoint
twice (build the model with ``init_model(config, seed)`` so the initial weights are seeded too).

Two protocols (``protocol=``), each of whose parts can be set on its own for an ablation:

===================  ==============================  ======================================
part                 ``default`` (fast on CPU)        ``meta`` (MODELS.md §1.5-1.6)
===================  ==============================  ======================================
``negatives``        ``shared``: R per batch, shared  ``per_position``: R per position,
                     by all positions (one matmul)    independent (Meta's LocalNegativesSampler)
``holdout``          ``valid``: train on items[:-2]   ``last``: train on items[:-1]
``selection``        ``auto``: ``refit`` where the    ``last``: the final epoch of a fixed
                     validation item adds >= 5% to    budget (epochs / max_minutes), since the
                     the training targets, else       validation item is a training target
                     ``best_valid``. ``refit``:
                     early stopping on the
                     validation item picks E epochs,
                     then the same initial weights
                     train E epochs on all but the
                     last item
``epochs``           40 (an upper bound)              101 (Meta's ML-1M budget)
===================  ==============================  ======================================

``selection=best_valid`` keeps the best validation epoch itself (patience ``patience``), with
no refit: half the cost. On full Beauty (short histories: the held-back item is ~17% of the
training targets) the refit is worth +13% test NDCG@10 for SASRec and +25% for HSTU
(``benchmarks/results/ablation_beauty_run2.md``, the ``split`` rows). On long histories such as
ML-1M's (~165 items a user, windows of 200) it adds under 1% of the targets for twice the
time, so ``auto`` skips it there. Neither protocol ever looks at the test item while training:
selection is on the validation item or on nothing at all.

For CPU speed, rows are grouped by length within windows of ``sort_window`` shuffled
batches and each batch is padded only to its longest row (``batch_order``); on Beauty
(mean training row ~6 items, T = 50) that is ~2-3x faster per epoch at the same accuracy.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .data import Split, pad_batch
from .errors import ConfigError, DataError
from .evaluation import evaluate, history_inputs
from .models import GenerativeRecommender, ModelConfig, build_model


PROTOCOLS: dict[str, dict[str, Any]] = {
    "default": dict(negatives="shared", holdout="valid", selection="auto", epochs=40),
    "meta": dict(negatives="per_position", holdout="last", selection="last", epochs=101),
}
CHOICES = {"protocol": tuple(PROTOCOLS), "negatives": ("shared", "per_position"),
           "holdout": ("valid", "last"), "selection": ("auto", "refit", "best_valid", "last")}
REFIT_MIN_GAIN = 0.05  # selection=auto refits when the validation item adds this share of training targets


@dataclass(frozen=True)
class TrainConfig:
    protocol: str = "default"  # "default" or "meta": fills in the four settings below left unset
    negatives: str = ""  # "shared" | "per_position" ("" = the protocol's)
    holdout: str = ""  # "valid" | "last": items held out of training ("" = the protocol's)
    selection: str = ""  # "auto" | "refit" | "best_valid" | "last": which weights are kept ("" = protocol's)
    epochs: int = 0  # 0 = the protocol's (40 as an upper bound with early stopping, or 101)
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    num_negatives: int = 512  # Meta: 128 for ML-1M/20M, 512 for Books; 512 is better on Beauty
    patience: int = 5  # epochs without a better validation NDCG@10 before stopping (best_valid)
    seed: int = 42
    max_minutes: float = 0.0  # wall-clock budget; 0 = none
    eval_users: int = 0  # validate on this many users (0 = all)
    threads: int = 0  # torch intra-op threads (0 = leave as is)
    sort_window: int = 16  # batches per length-sorted window (1 = plain shuffle)

    def __post_init__(self) -> None:
        """Reject wrong types and impossible values as ConfigError (one line from the CLI), and
        resolve the protocol's parts, so that ``to_dict`` records what actually ran."""
        def number(name: str, integer: bool, low: float, low_ok: bool = True) -> None:
            v = getattr(self, name)
            kinds = (int,) if integer else (int, float)
            if isinstance(v, bool) or not isinstance(v, kinds):
                raise ConfigError(f"train setting {name}={v!r}: expected {'an integer' if integer else 'a number'}")
            if v < low or (v == low and not low_ok):
                raise ConfigError(f"train setting {name}={v!r}: must be {'>=' if low_ok else '>'} {low}")

        for name in ("batch_size", "num_negatives", "patience", "sort_window"):
            number(name, True, 1)
        for name in ("epochs", "seed", "eval_users", "threads"):
            number(name, True, 0)
        number("lr", False, 0, low_ok=False)
        for name in ("weight_decay", "max_minutes"):
            number(name, False, 0)
        betas = self.betas
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
            raise ConfigError(f"train setting betas={betas!r}: expected two numbers in [0, 1)")
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))
        for name, allowed in CHOICES.items():
            v = getattr(self, name)
            if not (v in allowed or (v == "" and name != "protocol")):
                raise ConfigError(f"train setting {name}={v!r}: choose one of {', '.join(allowed)}")
        for name, v in PROTOCOLS[self.protocol].items():
            if not getattr(self, name):
                object.__setattr__(self, name, v)
        if self.selection != "last" and self.holdout == "last":
            raise ConfigError(f"train setting selection={self.selection} needs holdout=valid: with holdout=last "
                              "the validation item is a training target, so use selection=last")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def init_model(config: ModelConfig, seed: int) -> GenerativeRecommender:
    """Build the backbone with its initial weights drawn from ``seed`` (torch's global RNG),
    so that ``init_model`` + ``train`` with the same seed gives the same checkpoint twice."""
    torch.manual_seed(seed)
    return build_model(config)


def training_rows(split: Split, max_len: int, holdout: str = "valid"):
    """(inputs, targets, input times, target-of-last time) per user, most recent max_len+1 kept.
    ``holdout`` says how many items each user keeps out of training (``Split.train_sequences``)."""
    seqs, times = split.train_sequences(holdout), split.train_times(holdout)
    rows = []
    for i, seq in enumerate(seqs):
        if len(seq) < 2:
            continue
        seq = seq[-(max_len + 1):]
        ts = None if times is None else times[i][-(max_len + 1):]
        rows.append((seq[:-1], seq[1:], None if ts is None else ts[:-1], None if ts is None else ts[1:]))
    return rows


def batch_order(lengths: np.ndarray, batch_size: int, sort_window: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of every batch of one epoch: a seeded shuffle, then within each window of
    ``sort_window`` batches the rows are sorted by length and cut into batches, whose order is
    shuffled again. Batches are padded to their longest row, so grouping similar lengths cuts
    the padded work several-fold on short-sequence data (Beauty: mean 6, max 50)."""
    order = rng.permutation(len(lengths))
    if sort_window <= 1:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches = []
    span = batch_size * sort_window
    for start in range(0, len(order), span):
        win = order[start:start + span]
        win = win[np.argsort(lengths[win], kind="stable")]
        batches += [win[i:i + batch_size] for i in range(0, len(win), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _batch(rows, model: GenerativeRecommender):
    """Pad a list of training rows to their longest input; inputs built as for serving."""
    t = max(len(r[0]) for r in rows)
    timed = rows[0][2] is not None
    ids, lengths, ts, req = history_inputs(
        model, [r[0] for r in rows], [r[2] for r in rows] if timed else None,
        [r[3][-1] for r in rows] if timed else None, width=t)  # request time = last target's time
    tgt, _, _ = pad_batch([r[1] for r in rows], t)
    return ids, lengths, ts, req, torch.from_numpy(tgt)


def draw_negatives(rng: np.random.Generator, num_items: int, num_negatives: int,
                   positions: int | None = None) -> torch.Tensor:
    """Uniform item ids in 1..num_items, with replacement: ``(R,)`` shared by a batch, or
    ``(positions, R)``, independent for every position (Meta's ``LocalNegativesSampler``).
    The positive is not excluded here; the loss masks it, as Meta does."""
    shape = num_negatives if positions is None else (positions, num_negatives)
    return torch.from_numpy(rng.integers(1, num_items + 1, shape))


class _ScoresAt(torch.autograd.Function):
    """``(u @ table.T).gather(1, index)`` a block of rows at a time, forward and backward.

    The plain expression materialises the (P, N+1) score matrix and, in the backward, a dense
    gradient of the same size plus its zero-fill: several passes over ~50 MB at Beauty's
    shape (P ~1,000 positions, N 12,101 items). Here each block of ``BLOCK`` rows stays in
    cache; the numbers are the same up to float summation order (1.4-1.7x faster at Beauty's
    shape on one core)."""

    BLOCK = 128

    @staticmethod
    def forward(ctx, u: torch.Tensor, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        out = u.new_empty(index.shape)
        t = table.t()
        for s in range(0, len(u), _ScoresAt.BLOCK):
            e = s + _ScoresAt.BLOCK
            torch.gather(u[s:e] @ t, 1, index[s:e], out=out[s:e])
        ctx.save_for_backward(u, table, index)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        u, table, index = ctx.saved_tensors
        grad_u = torch.empty_like(u) if ctx.needs_input_grad[0] else None
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        dense = u.new_empty(min(_ScoresAt.BLOCK, len(u)), table.shape[0])
        for s in range(0, len(u), _ScoresAt.BLOCK):
            e = s + _ScoresAt.BLOCK
            g = dense[:len(index[s:e])].zero_().scatter_add_(1, index[s:e], grad[s:e])
            if grad_u is not None:
                torch.mm(g, table, out=grad_u[s:e])
            if grad_table is not None:
                grad_table.addmm_(g.t(), u[s:e])
        return grad_u, grad_table, None


def sampled_softmax_loss(model: GenerativeRecommender, h: torch.Tensor, targets: torch.Tensor,
                         negatives: torch.Tensor, via_scores: bool | None = None) -> torch.Tensor:
    """Mean over valid positions of -log softmax([pos, negs] / τ)[0]; negatives equal to the
    positive get logit -5e4 (Meta's convention).

    ``negatives`` is ``(R,)`` (shared by every position: one ``(P, d) x (d, R)`` matmul) or
    ``(P, R)`` with one row per valid position in row-major order (per position). Per
    position, the negative logits are either gathered from the full score matrix
    ``(P, d) x (d, N+1)`` (``via_scores``; cache-friendly BLAS calls a block of rows at a
    time, cheaper when the catalogue is small against R·d) or dot products with gathered item
    vectors ``(P, R, d)``;
    both give the same numbers. ``None`` picks the one that moves fewer floats.
    """
    valid = targets != 0
    u = model.output_vector(h[valid])  # (P, d)
    table = model.item_vectors()
    tgt = targets[valid]
    pos = (u * table[tgt]).sum(-1, keepdim=True)  # (P, 1)
    if negatives.dim() == 1:
        neg = u @ table[negatives].t()  # (P, R)
        same = negatives[None, :] == tgt[:, None]
    else:
        if negatives.shape[0] != len(tgt):
            raise ValueError(f"{negatives.shape[0]} rows of negatives for {len(tgt)} valid positions")
        if via_scores is None:
            via_scores = table.shape[0] <= negatives.shape[1] * table.shape[1]
        if via_scores:
            neg = _ScoresAt.apply(u, table, negatives)
        else:
            neg = torch.bmm(table[negatives], u[:, :, None]).squeeze(-1)
        same = negatives == tgt[:, None]
    neg = neg.masked_fill(same, -5e4 * model.config.temperature)
    logits = torch.cat([pos, neg], dim=1) / model.config.temperature
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))


def train(model: GenerativeRecommender, split: Split, cfg: TrainConfig,
          progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train in place; returns a history dict (per-epoch loss, validation metrics, the epoch
    whose weights are kept, wall time).

    ``selection="best_valid"`` keeps the best validation-NDCG@10 epoch and stops after
    ``patience`` epochs without progress; ``selection="last"`` trains the whole budget
    (``epochs`` or ``max_minutes``) and keeps the final epoch. With ``holdout="last"`` there is
    no validation item (it is trained on), so no validation metric is computed at all.
    ``selection="refit"`` runs ``best_valid`` to choose the epoch count E, then
    puts back the model's initial weights and trains E epochs on all but the last item, with
    the same seed: the kept weights have seen every user's second-to-last item, yet E was
    chosen on it before it was trained on. ``history["refit"]`` holds that second run;
    ``best_valid_ndcg10`` and ``best_valid`` remain the first run's (the refit has no
    validation item left to measure).

    ``progress`` is called after every batch with {epoch, step, steps, loss, seq_per_s} and
    after every epoch with {epoch, valid: metrics or None}; the refit's events carry
    ``phase="refit"`` and ``epochs`` (E). The CLI draws its progress bar from them.
    ``selection="auto"`` (the default) is ``refit`` when ``refit_gain`` is at least
    ``REFIT_MIN_GAIN``, else ``best_valid``; ``history["protocol"]["selection"]`` says which ran.
    """
    if cfg.selection == "auto":
        gain = refit_gain(split, model.config.max_len)
        history = train(model, split, dataclasses.replace(
            cfg, selection="refit" if gain >= REFIT_MIN_GAIN else "best_valid"), progress)
        history["refit_gain"] = gain
        return history
    if cfg.selection != "refit":
        return _train_once(model, split, cfg, progress)
    initial = copy.deepcopy(model.state_dict())
    history = _train_once(model, split, dataclasses.replace(cfg, selection="best_valid"), progress)
    model.load_state_dict(initial)
    epochs = history["best_epoch"]
    refit_cfg = dataclasses.replace(cfg, holdout="last", selection="last", epochs=epochs, max_minutes=0.0)

    def refit_progress(event: dict[str, Any]) -> None:
        progress({**event, "phase": "refit", "epochs": epochs})

    second = _train_once(model, split, refit_cfg, refit_progress if progress else None)
    history["refit"] = {k: second[k] for k in ("epochs", "train_rows", "epochs_run", "wall_s")}
    history["protocol"]["selection"] = "refit"
    history["wall_s"] += second["wall_s"]
    return history


def refit_gain(split: Split, max_len: int) -> float:
    """How many more training targets a refit on all but the last item has than the run that
    held the validation item back, as a share of the latter (0.17 on Beauty, ~0.006 on ML-1M)."""
    def targets(holdout: str) -> int:
        return sum(len(r[1]) for r in training_rows(split, max_len, holdout))

    base = targets("valid")
    return (targets("last") - base) / base if base else 1.0


def _train_once(model: GenerativeRecommender, split: Split, cfg: TrainConfig,
                progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """One training run with ``selection`` ``best_valid`` or ``last`` (see ``train``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    rows = training_rows(split, model.config.max_len, cfg.holdout)
    if not rows:
        raise DataError("no user has enough interactions to train on (leave-one-out holds out "
                        f"the last {2 if cfg.holdout == 'valid' else 1} item(s) of every user)")
    validate = cfg.holdout == "valid"
    if validate:
        valid_split = split.sample(cfg.eval_users, seed=cfg.seed) if cfg.eval_users else split
        valid_examples = valid_split.examples("valid")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    n_items = model.config.num_items
    per_position = cfg.negatives == "per_position"
    best, best_state, best_epoch, stale, best_metrics = -1.0, None, 0, 0, None
    history: dict[str, Any] = {"epochs": [], "train_rows": len(rows), "protocol": {
        k: getattr(cfg, k) for k in ("protocol", "negatives", "holdout", "selection", "epochs")}}
    start = time.perf_counter()
    row_lengths = np.array([len(r[0]) for r in rows])
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        batches = batch_order(row_lengths, cfg.batch_size, cfg.sort_window, rng)
        total, seen, t0 = 0.0, 0, time.perf_counter()
        for step, idx in enumerate(batches):
            chunk = [rows[i] for i in idx]
            ids, lengths, ts, req, tgt = _batch(chunk, model)
            positions = int((tgt != 0).sum()) if per_position else None
            negatives = draw_negatives(rng, n_items, cfg.num_negatives, positions)
            h, _ = model.encode(ids, lengths, ts, req)
            loss = sampled_softmax_loss(model, h, tgt, negatives)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.item_emb.weight[0].zero_()
            total += loss.item() * len(chunk)
            seen += len(chunk)
            if progress:
                progress({"epoch": epoch, "step": step + 1, "steps": len(batches), "loss": total / seen,
                          "seq_per_s": seen / max(time.perf_counter() - t0, 1e-9)})
        train_s = time.perf_counter() - t0
        metrics = evaluate(model, valid_examples, ks=(10,)) if validate else None
        history["epochs"].append({"epoch": epoch, "loss": total / seen, "valid": metrics,
                                  "seq_per_s": seen / train_s, "train_s": train_s})
        if progress:
            progress({"epoch": epoch, "valid": metrics})
        if cfg.selection == "last":
            best_epoch, best_metrics = epoch, metrics
            best = metrics["NDCG@10"] if metrics else None
        elif metrics["NDCG@10"] > best:
            best, best_epoch, stale, best_metrics = metrics["NDCG@10"], epoch, 0, metrics
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        out_of_time = cfg.max_minutes and (time.perf_counter() - start) > cfg.max_minutes * 60
        if stale >= cfg.patience or out_of_time:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history.update(best_epoch=best_epoch, best_valid_ndcg10=best, best_valid=best_metrics,
                   epochs_run=len(history["epochs"]),
                   wall_s=time.perf_counter() - start)
    return history
