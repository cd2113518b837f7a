"""The ``genrec`` command line: a thin click layer over the Python API.

Each command body is a handful of API calls a user could copy into Python. Commands that
need heavy stages (export, run, parity, bench) are imported lazily, so ``genrec --help``
works on a machine without onnxruntime, torch-npu or CANN. Expected failures
(``GenrecError``) become one line on stderr and a non-zero exit, never a traceback.

Exit codes (``run_cli``, shared by ``genrec``, ``genrec-export`` and ``genrec-run``):

- 0 success; 1 a check ran and failed (export check, parity breach) or bad input (also an
  environment failure a user can fix: permission denied, disk full, out of memory);
- 2 usage error (click);
- 3 an internal error (a bug): one line asking for a report; ``GENREC_DEBUG=1`` adds the
  traceback;
- 130 interrupted by SIGINT, 143 by SIGTERM: both raise ``Interrupted`` in the main thread, so
  the same cleanup runs (temporaries removed, nothing half-written left behind), then one
  ``error: interrupted ...`` line. A second signal interrupts the cleanup itself; what it
  leaves carries genrec's name and the pid (``genrec.atomic``) and the next run on that path
  removes it;
- 141 stdout was closed by the reader (``genrec-run ... | head -1``): quiet, as shell tools
  are (128 + SIGPIPE).

Warnings raised by libraries while a command runs are held back: if the command fails they are
dropped, so the ``error:`` line is all a user sees; if it succeeds they are printed after it,
one ``warning:`` line each.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import select
import signal
import stat
import sys
import threading
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import click

from .errors import GenrecError

EXIT_INTERNAL = 3
EXIT_PIPE = 128 + signal.SIGPIPE  # 141
# OSErrors that say something about the machine, not about genrec: a user can fix them (exit 1)
ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO,
                      errno.EMFILE, errno.ENFILE}


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised in the main thread by ``run_cli``'s handler.

    A BaseException (like KeyboardInterrupt, which it replaces for SIGINT) so that ``except
    Exception`` does not swallow it and every ``with``/``finally`` cleanup runs; not a
    KeyboardInterrupt so that click does not turn it into its Abort (and an empty line).
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


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
    "quantize": "genrec.calibration.cli:quantize_command",
    "study": "genrec.commands.study:study_group",
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


def _on_signal(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise ``Interrupted`` (main thread only; a signal the parent set to
    be ignored, as ``nohup`` does, stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(sig) is default:
            signal.signal(sig, _on_signal)


def _stdout_gone() -> None:
    """After EPIPE on stdout: point fd 1 at /dev/null so that the interpreter's final flush of
    the buffered rest does not print 'Exception ignored ... BrokenPipeError'."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _stdout_id() -> tuple[int, int, bool] | None:
    """(device, inode, is a pipe) of fd 1, to notice later that a library replaced it."""
    try:
        st = os.fstat(1)
    except OSError:
        return None
    return st.st_dev, st.st_ino, stat.S_ISFIFO(st.st_mode)


def _reader_gone(before: tuple[int, int, bool] | None) -> bool:
    """Whether stdout was a pipe whose reader has closed it. click (``sys.exit(1)``) and rich
    (fd 1 pointed at /dev/null, then ``SystemExit(1)``) each answer EPIPE in their own way, so
    the pipe itself is asked: the write end of a pipe without readers polls POLLERR."""
    if before is None or not before[2]:
        return False
    now = _stdout_id()
    if now is None or now[:2] != before[:2]:
        return True
    try:
        poller = select.poll()
        poller.register(1, select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (OSError, AttributeError):
        return False


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _internal_error(e: BaseException) -> str:
    return (f"internal error ({type(e).__name__}: {_one_line(str(e))}); this is a bug in genrec-deploy, "
            "please report it with the command you ran (GENREC_DEBUG=1 prints the traceback)")


def _show_warnings(caught: list[warnings.WarningMessage]) -> None:
    seen = set()
    for w in caught:
        line = f"warning: {w.category.__name__}: {_one_line(str(w.message))}"
        if line not in seen:
            seen.add(line)
            click.echo(line, err=True)


def run_cli(cmd: click.Command | Callable[[], click.Command], args: list[str] | None = None,
            prog_name: str | None = None) -> None:
    """Invoke ``cmd`` (or the command ``cmd()`` returns, so that importing it happens inside
    this handling too) with the signal handlers installed, and exit with the code of the
    module docstring; never returns."""
    install_signal_handlers()
    try:
        code = invoke(cmd, args, prog_name)
    except Interrupted as e:  # between the command's end and the exit: nothing left to clean
        code = e.exit_code
    sys.exit(code)


def invoke(cmd: click.Command | Callable[[], click.Command], args: list[str] | None = None,
           prog_name: str | None = None) -> int:
    """``run_cli`` without the process-wide parts (signal handlers, exit): runs the command,
    prints what the user sees on stderr and returns the exit code. Tests call it in-process."""
    debug = bool(os.environ.get("GENREC_DEBUG"))
    stdout_before = _stdout_id()
    caught: list[warnings.WarningMessage] = []
    code, message = 0, None
    with warnings.catch_warnings(record=not debug) as record:
        if record is not None:  # the filters stay as they are: only where warnings go changes
            caught = record
        try:
            command = cmd if isinstance(cmd, click.Command) else cmd()
            rv = command.main(args=args, prog_name=prog_name, standalone_mode=False)
            code = rv if isinstance(rv, int) else 0
            sys.stdout.flush()
        except Interrupted as e:
            code, message = e.exit_code, f"interrupted by {signal.Signals(e.signum).name}"
        except (click.exceptions.Abort, KeyboardInterrupt):
            code, message = 130, "interrupted"
        except click.exceptions.Exit as e:
            code = e.exit_code
        except click.ClickException as e:
            e.show()
            code = e.exit_code
        except GenrecError as e:
            code, message = e.exit_code, str(e)
        except BrokenPipeError:
            _stdout_gone()
            code = EXIT_PIPE
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if code == 1 and _reader_gone(stdout_before):
                _stdout_gone()
                code = EXIT_PIPE
            if e.code is not None and not isinstance(e.code, int):
                message = str(e.code)
        except MemoryError:
            code, message = 1, "out of memory; try a smaller --batch-size or input"
        except OSError as e:
            if e.errno == errno.EPIPE:
                _stdout_gone()
                code = EXIT_PIPE
            elif e.errno in ENVIRONMENT_ERRNOS:
                where = f"{os.fsdecode(e.filename)}: " if e.filename else ""
                code, message = 1, f"{where}{(e.strerror or str(e)).lower()}"
            else:
                code, message = EXIT_INTERNAL, _internal_error(e)
                if debug:
                    traceback.print_exc()
        except Exception as e:  # a bug: say so in one line, exit 3
            code, message = EXIT_INTERNAL, _internal_error(e)
            if debug:
                traceback.print_exc()
    if message is not None:
        if code in (130, 143) and sys.stderr.isatty():
            click.echo("", err=True)  # after the terminal's ^C
        try:  # one line, whatever a message quotes (a path with a newline, say)
            echo_err(message.replace("\r", "\\r").replace("\n", "\\n"))
        except OSError:
            pass
    elif caught and code == 0:
        _show_warnings(caught)
    return code


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


def _subcommand(name: str) -> Callable[[], click.Command]:
    return lambda: cli.get_command(click.Context(cli), name)


def export_main() -> None:
    """``genrec-export``: the same command as ``genrec export``."""
    run_cli(_subcommand("export"), prog_name="genrec-export")


def run_main() -> None:
    """``genrec-run``: the same command as ``genrec run``."""
    run_cli(_subcommand("run"), prog_name="genrec-run")
