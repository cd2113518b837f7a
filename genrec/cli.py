"""The ``genrec`` command line: a thin click layer over the Python API.

Each command body is a handful of API calls a user could copy into Python. Commands that
need heavy stages (export, run, parity, bench) are imported lazily, so ``genrec --help``
works on a machine without onnxruntime, torch-npu or CANN. Expected failures
(``GenrecError``) become one line on stderr and a non-zero exit, never a traceback.

Exit codes: 0 success; 1 a check ran and failed (export check, parity breach) or bad input;
2 usage error (click); 3 an internal error (a bug: please report it).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from .errors import GenrecError

# command name -> "module:attribute"; loaded on first use
LAZY_COMMANDS = {
    "train": "genrec.commands.train:train_command",
    "evaluate": "genrec.commands.train:evaluate_command",
    "export": "genrec.exporter.cli:export_command",
    "inspect": "genrec.exporter.cli:inspect_command",
    "run": "genrec.runtimes.cli:run_command",
    "parity": "genrec.runtimes.parity_cli:parity_command",
    "bench": "genrec.runtimes.bench_cli:bench_command",
    "convert": "genrec.exporter.cli:convert_command",
    "doctor": "genrec.doctor:doctor_command",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when invoked (or listed in --help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[name].split(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except ImportError as e:  # a stage's dependency is missing
                return _unavailable(name, e)
        return super().get_command(ctx, name)


def _unavailable(name: str, err: ImportError) -> click.Command:
    @click.command(name, short_help=f"(unavailable: {err.name or err})")
    def cmd() -> None:
        raise GenrecError(f"`genrec {name}` needs a package that is not installed ({err}); "
                          "reinstall genrec-deploy with its dependencies")
    return cmd


def parse_sets(values: tuple[str, ...]) -> dict[str, Any]:
    """``--set key=value`` pairs -> dict; values parsed as JSON when they look like it."""
    out: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--set")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def echo_err(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)


def run_cli(cmd: click.Command, args: list[str] | None = None, prog_name: str | None = None) -> None:
    """Invoke ``cmd`` with GenrecError -> one line + exit code; other exceptions -> exit 3."""
    try:
        rv = cmd.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        echo_err("interrupted")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except GenrecError as e:
        echo_err(str(e))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        echo_err("interrupted")
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="genrec-deploy")
def cli() -> None:
    """genrec-deploy: train, export, run and compare generative recommenders.

    \b
    genrec train --data data/beauty-slice --arch hstu -o model.pt
    genrec export model.pt -o bundle/
    genrec run bundle/ --backend onnxruntime --input requests.jsonl
    genrec parity bundle/ --reference torch --candidate onnxruntime --data data/beauty-slice
    """


def main() -> None:
    run_cli(cli, prog_name="genrec")


def export_main() -> None:
    """``genrec-export``: the same command as ``genrec export``."""
    run_cli(cli.get_command(click.Context(cli), "export"), prog_name="genrec-export")


def run_main() -> None:
    """``genrec-run``: the same command as ``genrec run``."""
    run_cli(cli.get_command(click.Context(cli), "run"), prog_name="genrec-run")
