"""``genrec train`` and ``genrec evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..cli import parse_sets
from ..errors import ConfigError, DataError

FORMAT_CHOICE = click.Choice(["auto", "beauty", "pairs", "table"])


def _load_split(data: str, fmt: str, sep: str | None, item_map=None):
    from ..data import leave_one_out, read_sequences

    seqs = read_sequences(data, fmt=fmt, sep=sep, item_map=item_map)
    if seqs.dropped_users:
        click.echo(f"dropped {seqs.dropped_users} user(s) with fewer than 3 interactions", err=True)
    return leave_one_out(seqs)


_AT_LEAST_ONE = {"d_model", "num_layers", "num_heads", "max_len", "num_buckets"}


def _check_model_settings(config) -> None:
    """Types and ranges of a model config built from user settings (ConfigError, not a crash later)."""
    import dataclasses

    for f in dataclasses.fields(config):
        v, want = getattr(config, f.name), type(f.default)
        if want is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif want is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, want)
        if not ok:
            raise ConfigError(f"{config.arch} setting {f.name}={v!r}: expected {want.__name__}")
        if want in (int, float) and (v < 0 or (f.name in _AT_LEAST_ONE and v < 1)):
            raise ConfigError(f"{config.arch} setting {f.name}={v!r}: out of range")
    if not config.dropout < 1 or not getattr(config, "linear_dropout", 0) < 1:
        raise ConfigError(f"{config.arch}: dropout must be below 1")
    if not config.temperature > 0:
        raise ConfigError(f"{config.arch}: temperature must be > 0")


def _split_settings(settings: dict, train_fields: set[str]) -> tuple[dict, dict]:
    model = {k: v for k, v in settings.items() if k not in train_fields}
    train = {k: v for k, v in settings.items() if k in train_fields}
    if isinstance(train.get("betas"), list):
        train["betas"] = tuple(train["betas"])
    return model, train


@click.command("train", short_help="Train a backbone on interaction data.")
@click.option("--data", required=True, type=click.Path(exists=True), help="Interaction data (file or directory).")
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="auto", show_default=True)
@click.option("--sep", default=None, help="Field separator for --format table (auto-detected).")
@click.option("--arch", type=click.Choice(["hstu", "llama", "gpt", "sasrec"]), required=True)
@click.option("--preset", default="small", show_default=True, help="Model shape: small, beauty, ml-1m, ml-1m-large, ml-20m, ml-20m-large.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="JSON file of model/training settings.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one setting (repeatable).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_command(data, fmt, sep, arch, preset, config_file, sets, output, quiet):
    """Sampled-softmax training; writes model.pt.

    \b
    By default early stopping on the validation item (second-to-last) chooses the number of
    epochs, then the model is trained again from the same start for that many epochs on all
    but the last item (selection=refit). The default, selection=auto, refits only where that
    item adds 5% or more to the training targets (short histories such as Beauty's), and
    otherwise keeps the early-stopped weights (selection=best_valid, half the cost).
    --set protocol=meta trains as Meta does (MODELS.md §1.5-1.6): per-position negatives,
    train on all but the last item, a fixed budget of 101 epochs, the final epoch kept.
    Each part can be set alone: negatives=shared|per_position, holdout=valid|last,
    selection=auto|refit|best_valid|last, epochs=N. The test item is never used for selection."""
    import dataclasses

    from ..atomic import check_writable
    from ..checkpoint import save_checkpoint
    from ..models import make_config
    from ..progress import TrainProgress
    from ..training import TrainConfig, init_model, train

    check_writable(output)  # before the training, not after it
    settings = {}
    if config_file:
        try:
            loaded = json.loads(Path(config_file).read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{config_file}: not valid JSON ({e})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_file}: expected a JSON object of settings")
        settings.update(loaded)
    settings.update(parse_sets(sets))
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model_settings, train_settings = _split_settings(settings, train_fields)
    if "num_items" in model_settings or "arch" in model_settings:
        raise ConfigError("arch and num_items come from --arch and the data, not from settings")
    tcfg = TrainConfig(**train_settings)  # bad settings fail before the data is read
    _check_model_settings(make_config(arch, 1, preset, **model_settings))
    split = _load_split(data, fmt, sep)
    config = make_config(arch, split.num_items, preset, **model_settings)
    model = init_model(config, tcfg.seed)
    click.echo(f"{arch}: {model.num_params():,} parameters, {len(split):,} users, "
               f"{split.num_items:,} items", err=True)
    with TrainProgress(enabled=not quiet) as bar:
        def progress(event: dict) -> None:
            if event.get("valid", True) is not None:  # holdout=last: no validation line to draw
                bar.update(event)

        history = train(model, split, tcfg, progress=progress)
    from ..evaluation import evaluate

    test = evaluate(model, split.examples("test"))
    selection = history["protocol"]["selection"]  # what selection=auto chose
    save_checkpoint(output, model, split.item_map.to_list(), {
        "dataset": str(data), "split": "leave-one-out", "train": {**tcfg.to_dict(), "selection": selection},
        "metrics": {"valid_ndcg10": history["best_valid_ndcg10"], "test": test},
        "best_epoch": history["best_epoch"], "wall_s": round(history["wall_s"], 1),
    })
    valid = history["best_valid_ndcg10"]
    shown = "n/a (trained on)" if valid is None else f"{valid:.4f}"
    kept = {"best_valid": f"best epoch {history['best_epoch']}, valid NDCG@10 {shown}",
            "refit": f"{history['best_epoch']} epochs (chosen at valid NDCG@10 {shown}) refit on all "
                     "but the last item",
            "last": f"final epoch {history['best_epoch']}, valid NDCG@10 {shown}"}[selection]
    click.echo(f"wrote {output}: {kept}, test NDCG@10 {test['NDCG@10']:.4f}, HR@10 {test['HR@10']:.4f} "
               f"({history['wall_s']:.0f} s)")


@click.command("evaluate", short_help="Full-catalogue HR@K / NDCG@K / MRR of a checkpoint.")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True))
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="auto", show_default=True)
@click.option("--sep", default=None)
@click.option("--split", "which", type=click.Choice(["test", "valid"]), default="test", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the metrics as JSON.")
@click.option("--baseline", is_flag=True, help="Add a most-popular baseline row.")
def evaluate_command(checkpoint, data, fmt, sep, which, json_out, baseline):
    """Rank each user's held-out item against the whole catalogue, history excluded."""
    from rich.console import Console

    from ..atomic import atomic_file
    from ..checkpoint import load_checkpoint
    from ..data import ItemMap
    from ..evaluation import evaluate
    from ..metrics import format_metrics_table, most_popular_ranks, ranking_metrics

    if json_out:
        from ..atomic import check_writable

        check_writable(json_out)

    ckpt = load_checkpoint(checkpoint)
    split = _load_split(data, fmt, sep, item_map=ItemMap.from_list(ckpt.id_map))
    rows = {ckpt.config.arch: evaluate(ckpt.model, split.examples(which))}
    if baseline:
        rows["most-popular"] = ranking_metrics(most_popular_ranks(split, which))
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=160)
    console.print(format_metrics_table(rows, title=f"{which} split, {len(split):,} users"))
    if json_out:
        with atomic_file(Path(json_out)) as f:
            json.dump(rows, f, indent=2)
