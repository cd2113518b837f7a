"""``genrec study scaling``: the seed paper's question (arXiv 2412.00714, RQ1; MODELS.md §2),
do HSTU and Llama keep improving with depth while GPT and SASRec stall, as a command.

Every arch x depth combination is trained (``genrec.training.train``, any protocol) and
evaluated on the validation and the test item. The results file (``--json``) is rewritten
atomically after every combination and is also the resume state: a rerun with the same
settings skips the combinations already in it, so an interrupted study (Ctrl-C, a killed
job, ``--stop-after``) continues where it stopped. A file written with other settings is
refused rather than mixed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from ..cli import parse_sets
from ..errors import ConfigError
from .train import FORMAT_CHOICE, _check_model_settings, _load_split, _split_settings

STUDY_VERSION = 1


def _int_list(text: str, what: str) -> list[int]:
    """"1,2,4" -> [1, 2, 4]; anything else is a ConfigError (one line from the CLI)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"--{what} {text!r}: expected comma-separated integers >= 1")
    return list(dict.fromkeys(values))


def _arch_list(text: str) -> list[str]:
    from ..models import ARCHS

    archs = list(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
    bad = [a for a in archs if a not in ARCHS]
    if not archs or bad:
        raise ConfigError(f"--archs {text!r}: choose from {', '.join(ARCHS)}")
    return archs


def _load_state(path: Path, settings: dict[str, Any], restart: bool) -> list[dict[str, Any]]:
    """Rows of an earlier run of the same study in ``path`` (none if absent or ``restart``)."""
    if restart or not path.exists():
        return []
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot resume from it ({e}); pass --restart to overwrite it") from None
    if not isinstance(state, dict) or state.get("study") != "scaling":
        raise ConfigError(f"{path}: not a scaling-study file; pass --restart to overwrite it")
    if state.get("settings") != settings:
        changed = sorted(k for k in set(settings) | set(state.get("settings") or {})
                         if settings.get(k) != (state.get("settings") or {}).get(k))
        raise ConfigError(f"{path}: holds a study with other settings ({', '.join(changed)}); "
                          "pass --restart to overwrite it or choose another --json file")
    return list(state.get("rows", []))


def _write_state(path: Path, settings: dict[str, Any], rows: list[dict[str, Any]], wall_s: float,
                 complete: bool) -> None:
    from ..atomic import atomic_file

    with atomic_file(path) as f:
        json.dump({"study": "scaling", "version": STUDY_VERSION, "settings": settings, "complete": complete,
                   "wall_s": round(wall_s, 1), "rows": rows}, f, indent=1)


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    """The study as a table on stdout: one row per arch x depth."""
    from rich.table import Table

    from ..progress import console

    table = Table(title=title)
    for col in ("arch", "layers", "params", "epochs (kept)", "valid NDCG@10", "test HR@10",
                "test NDCG@10", "test MRR", "wall s"):
        table.add_column(col, justify="left" if col == "arch" else "right")
    for r in sorted(rows, key=lambda r: (r["arch"], r["layers"])):
        v = r["valid"]
        table.add_row(r["arch"], str(r["layers"]), f"{r['params']:,}", f"{r['epochs_run']} ({r['kept_epoch']})",
                      "n/a" if v is None else f"{v['NDCG@10']:.4f}", f"{r['test']['HR@10']:.4f}",
                      f"{r['test']['NDCG@10']:.4f}", f"{r['test']['MRR']:.4f}", f"{r['wall_s']:.0f}")
    console().print(table)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """NDCG@10 and HR@10 (test) against layers and against parameters, one line per backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_file

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for arch in sorted({r["arch"] for r in rows}):
        mine = sorted((r for r in rows if r["arch"] == arch), key=lambda r: r["layers"])
        for i, metric in enumerate(("NDCG@10", "HR@10")):
            for j, (key, label) in enumerate((("layers", "layers"), ("params", "parameters"))):
                ax = axes[i, j]
                ax.plot([r[key] for r in mine], [r["test"][metric] for r in mine], marker="o", label=arch)
                ax.set_xscale("log", base=2 if key == "layers" else 10)
                ax.set_xlabel(label)
                ax.set_ylabel(f"test {metric}")
                ax.grid(True, alpha=0.3)
    layers = sorted({r["layers"] for r in rows})
    for ax in axes[:, 0]:
        ax.set_xticks(layers, [str(n) for n in layers])
    axes[0, 0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)


@click.group("study", short_help="Studies that train many models (scaling).")
def study_group() -> None:
    """Studies that train and evaluate many models and tabulate them."""


@study_group.command("scaling", short_help="Every backbone at every depth: table and plot.")
@click.option("--data", required=True, type=click.Path(exists=True), help="Interaction data (file or directory).")
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="auto", show_default=True)
@click.option("--sep", default=None, help="Field separator for --format table (auto-detected).")
@click.option("--archs", default="hstu,llama,gpt,sasrec", show_default=True)
@click.option("--layers", default="1,2,4,8", show_default=True, help="Depths (comma-separated).")
@click.option("--width", type=int, default=None, help="d_model for every model (default: the preset's).")
@click.option("--preset", default="beauty", show_default=True, help="Shape other than depth and width.")
@click.option("--budget-minutes", type=float, default=0.0, show_default=True,
              help="Wall-clock cap per combination's selection run (0: none; early stopping / epochs "
                   "still apply); a refit (selection=auto on short histories) then repeats the epochs chosen.")
@click.option("--users", type=int, default=0, help="Train and evaluate on a seeded sample of this many users.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="A training or model setting for every combination (e.g. protocol=meta, lr=0.002).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default="scaling.json", show_default=True,
              help="Results, rewritten after every combination; also what a rerun resumes from.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), help="Plot file (.png, .svg, .pdf); needs the plot extra.")
@click.option("--restart", is_flag=True, help="Ignore the results already in --json and start over.")
@click.option("--stop-after", type=int, default=0,
              help="Train at most this many combinations in this run, then stop (resume by rerunning).")
@click.option("--quiet", is_flag=True, help="No per-epoch progress lines.")
def scaling_command(data, fmt, sep, archs, layers, width, preset, budget_minutes, users, sets, json_out,
                    plot_out, restart, stop_after, quiet):
    """Train and evaluate every ARCH x LAYERS combination; a table, a JSON file and a plot.

    \b
    Interrupted (Ctrl-C, a kill, --stop-after), it resumes on the next run with the same
    settings: finished combinations are read back from --json, not retrained.
    """
    import dataclasses

    from ..atomic import check_writable
    from ..evaluation import evaluate
    from ..models import make_config
    from ..progress import epoch_label
    from ..training import TrainConfig, init_model, train

    arch_list, depth_list = _arch_list(archs), _int_list(layers, "layers")
    if width is not None and width < 1:
        raise ConfigError(f"--width {width}: must be >= 1")
    if budget_minutes < 0 or users < 0 or stop_after < 0:
        raise ConfigError("--budget-minutes, --users and --stop-after must be >= 0")
    json_path = Path(json_out)
    check_writable(json_path)
    if plot_out:
        check_writable(plot_out)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install 'genrec-deploy[plot]'") from None
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model_settings, train_settings = _split_settings(parse_sets(sets), train_fields)
    for key in ("num_items", "arch", "num_layers"):
        if key in model_settings:
            raise ConfigError(f"{key} comes from --archs/--layers and the data, not from --set")
    if width is not None:
        model_settings["d_model"] = width
    if budget_minutes:
        train_settings["max_minutes"] = budget_minutes
    tcfg = TrainConfig(**train_settings)
    for arch in arch_list:
        for n in depth_list:
            _check_model_settings(make_config(arch, 1, preset, num_layers=n, **model_settings))
    settings = {"data": str(Path(data).resolve()), "format": fmt, "preset": preset, "width": width,
                "users": users, "model": model_settings, "train": tcfg.to_dict()}
    settings = json.loads(json.dumps(settings))  # as it reads back from the file (tuples -> lists)
    rows = _load_state(json_path, settings, restart)
    done = {(r["arch"], r["layers"]) for r in rows}
    # depth-major, so that a study stopped early (budget, --stop-after) compares every backbone
    todo = [(a, n) for n in depth_list for a in arch_list if (a, n) not in done]
    total = len(arch_list) * len(depth_list)
    if done:
        click.echo(f"resuming {json_path}: {total - len(todo)} of {total} combination(s) done", err=True)

    split = _load_split(data, fmt, sep)
    if users:
        split = split.sample(users, seed=tcfg.seed)
    start, wall_before = time.perf_counter(), sum(r["wall_s"] for r in rows)
    trained = 0
    for arch, n in todo:
        if stop_after and trained >= stop_after:
            break
        config = make_config(arch, split.num_items, preset, num_layers=n, **model_settings)
        model = init_model(config, tcfg.seed)
        index = total - len(todo) + trained + 1
        click.echo(f"[{index}/{total}] {arch} x {n} layer(s): {model.num_params():,} parameters", err=True)

        def progress(event: dict[str, Any]) -> None:
            if quiet or "valid" not in event:
                return
            v = event["valid"]
            click.echo(f"  {epoch_label(event)}" + ("" if v is None else f": valid NDCG@10 {v['NDCG@10']:.4f}"),
                       err=True)

        t0 = time.perf_counter()
        history = train(model, split, tcfg, progress=progress)
        test = evaluate(model, split.examples("test"))
        # after a refit the validation item has been trained on: report the selection run's figure
        valid = (history["best_valid"] if history["protocol"]["selection"] == "refit"
                 else evaluate(model, split.examples("valid")) if tcfg.holdout == "valid" else None)
        rows.append({"arch": arch, "layers": n, "params": model.num_params(), "d_model": config.d_model,
                     "valid": valid, "test": test, "kept_epoch": history["best_epoch"],
                     "epochs_run": history["epochs_run"], "wall_s": round(time.perf_counter() - t0, 1)})
        trained += 1
        _write_state(json_path, settings, rows, wall_before + time.perf_counter() - start, complete=False)
        click.echo(f"  test NDCG@10 {test['NDCG@10']:.4f} HR@10 {test['HR@10']:.4f} "
                   f"({rows[-1]['wall_s']:.0f} s)", err=True)
    complete = len(rows) == total
    wall = wall_before + time.perf_counter() - start
    _write_state(json_path, settings, rows, wall, complete)
    title = (f"scaling on {Path(data).name} ({len(split):,} users, preset {preset}"
             f"{'' if width is None else f', width {width}'}, protocol {tcfg.protocol})")
    if rows:
        print_table(rows, title)
        if plot_out:
            plot(rows, Path(plot_out), title)
    click.echo(f"wrote {json_path}: {len(rows)} of {total} combination(s), {wall:.0f} s of training"
               + ("" if complete else "; rerun the same command to resume"))
