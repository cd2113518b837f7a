"""``genrec-run --engine ray``: the same requests, loop and results, on a Ray Data actor pool.

    read parts (Ray read tasks, one per file)  ->  actor pool: parse + validate + run a batch
    (one backend per actor, opened once)  ->  driver: report bad rows, write the output file

- **Actors.** ``--actors N`` actors (``ActorPoolStrategy(size=N)``); each opens the bundle
  with its backend once (one set of onnxruntime sessions) and runs every batch it is handed
  through ``recommend`` / ``generate`` / ``rank``, exactly as ``genrec-run`` does. An actor
  reserves ``--threads`` CPUs (default 1, the backend's threads too); ``--backend ascend``
  also reserves one ``NPU`` (Ray's resource name for an Ascend device, which it detects on
  each node and hands out through ``ASCEND_RT_VISIBLE_DEVICES``).
- **Batches** are the bundle's largest gear (``--batch-size`` to lower it, divided by the
  beams for beam search), as in the single-process run. The read tasks cut their parts
  into blocks of ``BATCHES_PER_TASK`` (16) batches, and Ray's block size is set to match:
  one block is one actor task (Ray's per-task cost is paid per 16 batches; a retried task
  redoes at most 16). Read tasks reserve no CPU, so that a pool holding every CPU does
  not starve them.
- **Results** are those of the single-process run (``tests/runtimes/test_ray_engine.py``
  checks it): the same validation and messages, rows named ``<file> line <n>`` (Parquet:
  ``row <n>``), sampled slates seeded by a request's place in the whole input (request i of
  the input, counted from 0 over all its lines or rows, in part order: with no blank or
  skipped line this is ``genrec-run``'s seed). Output order is the order in which batches
  finish; ``--preserve-order`` keeps the input's (Ray Data's ``preserve_order``).
- **Bad rows** follow ``genrec-run``'s rules: without ``--skip-invalid`` a batch holding one
  runs nothing, the job stops at the first such batch the driver receives and writes
  nothing (exit 1, the first bad row of that batch named); with it, every bad row and every
  request the loop cannot answer is listed on stderr as ``skipped ...`` and the rest runs.
- **Crashes.** Ray Data restarts a dead actor and retries its task (``max_restarts=-1``,
  ``max_task_retries=-1``: Ray Data's defaults for actor pools): the task's output is lost
  with the actor and redone whole, so no row is lost or doubled (tested).
  ``GENREC_RAY_FAIL_AFTER=k`` (testing only) makes the first actor that finishes its k-th
  batch exit hard (``os._exit``) before returning it, once per run: the actor that claims
  a marker file (created next to the output, removed at the end) is the one that dies,
  so its restarted self and the others do not.
- **Output** is written by the driver into a temporary sibling of ``--output`` and renamed
  into place at the end (``genrec.atomic.atomic_file``): a failed or interrupted job leaves
  nothing half-written. The driver writes one file; workers write nothing, so only the
  bundle and the input must be readable on every node (a shared filesystem).
- **Progress** is a bar on a terminal, otherwise a ``progress:`` line every
  ``GENREC_RAY_PROGRESS_SECONDS`` seconds (default 30; 0 prints one per batch); at the end
  a summary: requests/s overall (wall time of the job, actor start-up included) and, per
  actor process, the requests it answered and its rate while busy.

Ray is an optional extra (``pip install genrec-deploy[ray]``); without it ``--engine ray`` is
one ``error:`` line saying so. A cluster is reached with ``--ray-address`` or ``RAY_ADDRESS``;
with neither, a local Ray instance is started for the run (and stopped after it). A process
that has already called ``ray.init`` (a test, a notebook) runs on that one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genrec.errors import ConfigError, DataError, GenrecError, RequestError

from .tables import InputFile, ResultWriter, input_files, output_format, read_blocks

__all__ = ["FAIL_AFTER_ENV", "PROGRESS_ENV", "RaySpec", "import_ray", "run_on_ray"]

FAIL_AFTER_ENV = "GENREC_RAY_FAIL_AFTER"
PROGRESS_ENV = "GENREC_RAY_PROGRESS_SECONDS"
INSTALL_HINT = "pip install genrec-deploy[ray]"
BATCHES_PER_TASK = 16  # batches in one read block, hence in one actor task


def import_ray() -> Any:
    """``ray`` with Ray Data loaded; GenrecError with the install line if it is missing."""
    try:
        import ray
        import ray.data  # noqa: F401 (needs the [data] extra: pyarrow, pandas)
    except ImportError as e:
        raise GenrecError(f"--engine ray needs Ray Data, which is not installed ({e.name or e}): "
                          f"{INSTALL_HINT}") from None
    return ray


@dataclasses.dataclass(frozen=True)
class RaySpec:
    """What every actor needs to score a batch; sent to each actor once, when it starts."""

    bundle: str  # an absolute bundle directory, readable on every node
    backend: str
    options: dict  # get_backend keyword arguments (threads, provider, precision, ...)
    mode: str  # recommend | generate | rank
    k: int = 10
    steps: int | None = None
    params: Any = None  # decoding.SearchParams for generate
    batch_size: int | None = None
    skip_invalid: bool = False
    expect_digest: str | None = None
    files: tuple[str, ...] = ()  # the parts' display names, by file number
    row_word: str = "line"  # "line" (JSONL) or "row" (Parquet)
    fail_after: int = 0  # GENREC_RAY_FAIL_AFTER (0: off)
    fail_marker: str | None = None


# --------------------------------------------------------------------------------------------
# the actor


class Scorer:
    """One backend, opened once per actor; ``__call__`` turns a block of request rows into
    result rows and error rows (``_error`` set), with the actor's name and busy time."""

    def __init__(self, spec: RaySpec):
        import ray

        from genrec.bundle import load_bundle

        from .registry import get_backend

        self.spec = spec
        bundle = load_bundle(spec.bundle, expect_digest=spec.expect_digest)
        self.be = get_backend(spec.backend, bundle, **spec.options)
        self.label = f"{ray.util.get_node_ip_address()} pid {os.getpid()}"
        self.calls = 0

    def _where(self, f: int, n: int) -> str:
        return f"{self.spec.files[f]} {self.spec.row_word} {n}"

    def __call__(self, batch: Any) -> Any:
        from .cli import TOO_LONG, parse_line

        t0 = time.perf_counter()
        files, rows = batch["_file"].to_pylist(), batch["_row"].to_pylist()
        index, raws = batch["_index"].to_pylist(), batch["_raw"].to_pylist()
        errors: list[tuple[int, int, str]] = []
        ok: list[tuple[int, int, int, Any]] = []  # (file, row, input index, Request)
        for f, n, i, raw in zip(files, rows, index, raws):
            try:
                req = parse_line(TOO_LONG if raw == TOO_LONG else raw, self._where(f, n))
            except DataError as e:
                errors.append((f, n, str(e)))
                continue
            if req is not None:
                ok.append((f, n, i, req))
        bad = self._validate(ok)
        errors += [(ok[j][0], ok[j][1], m) for j, m in bad.items()]
        ok = [r for j, r in enumerate(ok) if j not in bad]
        results: list[tuple[int, int, Any]] = []
        if not errors or self.spec.skip_invalid:  # like genrec-run: a bad batch runs nothing
            results = self._run(ok, errors)
        table = self._table(results, errors, time.perf_counter() - t0)
        self.calls += 1
        if self.spec.fail_after and self.calls == self.spec.fail_after and self._claim_failure():
            os._exit(1)  # fault injection (tests): die holding a finished batch
        return table

    def _claim_failure(self) -> bool:
        try:
            os.close(os.open(self.spec.fail_marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError:
            return False  # another actor (or this one before its restart) has failed already
        return True

    def _validate(self, ok: list) -> dict[int, str]:
        """{position in ``ok``: message}: the batch check, one by one only if it fails (as
        ``genrec-run``'s ``_Stream._validate``)."""
        from .requests import validate_request, validate_requests

        d, im, need = self.be.dims, self.be.item_map, self.spec.mode == "rank"
        reqs = [r[3] for r in ok]
        try:
            validate_requests(reqs, im, d.needs_timestamps, lambda j: self._where(*ok[j][:2]),
                              d.max_history, need)
            return {}
        except DataError:
            pass
        errors = {}
        for j, r in enumerate(reqs):
            try:
                validate_request(r, im, d.needs_timestamps, self._where(*ok[j][:2]), d.max_history, need)
            except DataError as e:
                errors[j] = str(e)
        return errors

    def _call(self, reqs: list, where: Callable[[int], str], first_index: int) -> list:
        from . import decoding

        s = self.spec
        if s.mode == "rank":
            return decoding.rank(self.be, reqs, batch_size=s.batch_size, where=where)
        if s.mode == "generate":
            return decoding.generate(self.be, reqs, s.steps, s.params, batch_size=s.batch_size,
                                     where=where, first_index=first_index)
        return decoding.recommend(self.be, reqs, s.k, batch_size=s.batch_size, where=where)

    def _run(self, ok: list, errors: list) -> list[tuple[int, int, Any]]:
        """Results of the valid rows; a request the loop refuses (``RequestError``) becomes an
        error row and, with --skip-invalid, the rest of its group runs again without it.

        Sampled slates seed request i with ``first_index + i``, so a batch is run as groups
        of consecutive input positions (one group unless blank or bad rows cut it)."""
        sample = self.spec.params is not None and self.spec.params.strategy == "sample"
        groups = _consecutive(ok) if sample else [ok]
        out: list[tuple[int, int, Any]] = []
        while groups:
            group = groups.pop(0)
            if not group:
                continue
            where = lambda j, g=group: self._where(g[j][0], g[j][1])  # noqa: E731
            try:
                results = self._call([r[3] for r in group], where, group[0][2])
            except RequestError as e:
                if not 0 <= e.index < len(group):
                    raise
                errors.append((group[e.index][0], group[e.index][1], str(e)))
                if not self.spec.skip_invalid:
                    return []
                rest = group[:e.index] + group[e.index + 1:]
                groups[:0] = _consecutive(rest) if sample else [rest]
                continue
            out += [(g[0], g[1], r) for g, r in zip(group, results)]
        return out

    def _table(self, results: list, errors: list, seconds: float) -> Any:
        import pyarrow as pa

        n, m = len(results), len(errors)
        rows = results + errors
        cols = {
            "_file": pa.array([r[0] for r in rows], pa.int32()),
            "_row": pa.array([r[1] for r in rows], pa.int64()),
            "user_id": pa.array([json.dumps(r.user_id) for _, _, r in results] + [None] * m, pa.string()),
            "items": pa.array([r.items for _, _, r in results] + [None] * m, pa.list_(pa.int64())),
            "scores": pa.array([r.scores for _, _, r in results] + [None] * m, pa.list_(pa.float64())),
            "score": pa.array([r.score for _, _, r in results] + [None] * m, pa.float64()),
            "_error": pa.array([None] * n + [e[2] for e in errors], pa.string()),
            # the batch's own numbers ride on its first row (a batch of blank lines has none)
            "_actor": pa.array([self.label] + [None] * (n + m - 1) if rows else [], pa.string()),
            "_busy": pa.array([seconds] + [0.0] * (n + m - 1) if rows else [], pa.float64()),
        }
        return pa.table(cols)


def _consecutive(rows: list) -> list[list]:
    """``rows`` cut where their input positions (``row[2]``) stop being consecutive."""
    groups: list[list] = []
    for r in rows:
        if groups and groups[-1][-1][2] + 1 == r[2]:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


# --------------------------------------------------------------------------------------------
# the driver


def _datasource(parts: list[InputFile], block_rows: int) -> Any:
    """A Ray Datasource with one read task per part, yielding blocks of ``block_rows`` rows."""
    import pyarrow as pa
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    schema = pa.schema([("_file", pa.int32()), ("_row", pa.int64()), ("_index", pa.int64()),
                        ("_raw", pa.binary())])

    class _Source(Datasource):
        def get_name(self) -> str:
            return "GenrecRequests"

        def estimate_inmemory_data_size(self) -> int:
            return sum(p.size for p in parts)

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list:
            return [ReadTask(functools.partial(read_blocks, p, i, block_rows),
                             BlockMetadata(num_rows=p.rows, size_bytes=p.size, exec_stats=None,
                                           input_files=[p.path]), schema=schema)
                    for i, p in enumerate(parts)]

    return _Source()


def check_mode(dims: Any, mode: str, k: int, steps: int | None, params: Any, batch_size: int | None) -> int:
    """The loop's own checks of --k, --generate N and --beams against the bundle (what
    ``genrec-run``'s ``run([])`` does with an open backend), on the driver before any actor
    starts; returns the requests per batch."""
    largest = max(dims.batch_gears)
    if mode == "recommend" and not 1 <= k <= dims.topk:
        raise ConfigError(f"k={k} must be in 1..{dims.topk} (the bundle's top K')")
    per_request = 1
    if mode == "generate":
        if not 1 <= steps <= dims.capacity - dims.max_history:
            raise ConfigError(f"steps={steps} must be in 1..{dims.capacity - dims.max_history}: the bundle's "
                              f"cache holds C={dims.capacity} = T={dims.max_history} history + "
                              f"{dims.capacity - dims.max_history} generated items; re-export with a larger "
                              "max_new_items")
        if params.strategy == "beam":
            if params.num_beams > dims.step_topk and dims.step_topk < dims.num_items:
                raise ConfigError(f"num_beams={params.num_beams} exceeds the bundle's step top-K="
                                  f"{dims.step_topk}; re-export with a larger --step-topk")
            per_request = params.num_beams
    if largest // per_request < 1:
        raise ConfigError(f"{per_request} rows per request do not fit the largest batch gear "
                          f"{largest}; use fewer beams or a bundle with larger gears")
    return max(1, min(batch_size or largest, largest // per_request))


@contextlib.contextmanager
def _ray_stderr_muted():
    """Point fd 2 at /dev/null while Ray runs, and ``sys.stderr`` at the real stderr.

    Ray's C++ side (the driver's core worker; raylet and GCS of a local instance, which
    inherit fd 2) writes log lines to stderr that no setting silences without printing one
    of its own (``RAY_BACKEND_LOG_LEVEL`` announces itself), e.g. an ``E`` line for every
    actor pool with restarts on. genrec's own lines (progress, ``skipped``, the summary, the
    final ``error:``) go through ``sys.stderr``, which keeps the original stderr (a
    terminal stays a terminal). ``GENREC_DEBUG=1`` leaves stderr alone.
    """
    try:
        on_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a test runner's buffer: fd 2 is not it
        on_fd2 = False
    if os.environ.get("GENREC_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    old = sys.stderr
    if on_fd2:
        sys.stderr = open(os.dup(saved), "w", buffering=1, encoding=old.encoding,  # noqa: SIM115
                          errors=old.errors)
    try:
        yield
    finally:
        if on_fd2:
            with contextlib.suppress(OSError):
                sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = old
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _connected(ray: Any, address: str | None, say: Callable[[str], None]):
    """A Ray connection for the run: the caller's if it has one, else ``address`` (or
    ``RAY_ADDRESS``), else a local instance; one we opened is closed afterwards."""
    # stderr keeps to genrec's lines: Ray's Python loggers to errors only (its C++ lines:
    # _ray_stderr_muted); Ray's log files under its session directory keep everything
    quiet = lambda: [logging.getLogger(n).setLevel(logging.ERROR) for n in ("ray", "ray.data")]  # noqa: E731
    quiet()
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise GenrecError(f"cannot start or reach {where} ({_first_line(e)})") from None
    quiet()
    try:
        yield
    finally:
        ray.shutdown()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _user_error(e: BaseException) -> GenrecError | None:
    """The GenrecError inside a Ray task failure (a bad bundle on a node, ...), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, GenrecError):
            return e
        e = getattr(e, "cause", None) or e.__cause__
    return None


class _Progress:
    """Requests done so far: a rich bar on a terminal, else a line every ``every`` seconds."""

    def __init__(self, total: int | None, every: float, say: Callable[[str], None]):
        self.total, self.every, self._say = total, every, say
        self.t0 = self.last = time.perf_counter()
        self.done = self.skipped = 0
        self._bar = self._task = None

    def __enter__(self) -> "_Progress":
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn)

            self._bar = Progress(TextColumn("requests"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                 console=console, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("", total=self.total, rate="")
        return self

    def say(self, line: str) -> None:
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            self._say(line)

    def advance(self, done: int, skipped: int) -> None:
        self.done += done
        self.skipped += skipped
        now = time.perf_counter()
        rate = self.done / max(now - self.t0, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done + self.skipped, rate=f"{rate:.1f} requests/s")
        elif now - self.last >= self.every:
            self.last = now
            of = f" of {self.total}" if self.total is not None else ""
            skipped_ = f", {self.skipped} skipped" if self.skipped else ""
            self._say(f"progress: {self.done + self.skipped}{of} requests{skipped_}, {rate:.1f} requests/s")

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def run_on_ray(spec: RaySpec, input_path: str, target: Path, output_path: str, actors: int,
               address: str | None, preserve_order: bool, cpus: float,
               say: Callable[[str], None]) -> str:
    """Run ``spec`` over the input on a Ray actor pool and write ``target``; returns the
    summary (one line, then one per actor). ``target`` has passed the output preflight."""
    from genrec.atomic import atomic_file, leftover_name
    from genrec.bundle import load_bundle

    ray = import_ray()
    out_fmt = output_format(output_path)
    parts = input_files(input_path)
    bundle = load_bundle(spec.bundle, expect_digest=spec.expect_digest)  # refused before any work
    size = check_mode(bundle.dims, spec.mode, spec.k, spec.steps, spec.params, spec.batch_size)
    fail_after = _fail_after()
    marker = str(target.parent / leftover_name(target.name, "probe")) if fail_after else None
    spec = dataclasses.replace(spec, files=tuple(p.name for p in parts),
                               row_word="row" if parts[0].fmt == "parquet" else "line",
                               fail_after=fail_after, fail_marker=marker)
    every = _progress_seconds()
    total = sum(p.rows for p in parts) if all(p.rows is not None for p in parts) else None
    uid_type = parts[0].uid_type if all(p.uid_type == parts[0].uid_type for p in parts) else "str"
    # Ray Data gives actor pools max_restarts=-1 and max_task_retries=-1 by default (a dead
    # actor is restarted and its task retried): the crash test relies on it
    resources = {"NPU": 1} if spec.backend == "ascend" else None
    t0 = time.perf_counter()
    per_actor: dict[str, list[float]] = {}  # label -> [requests, busy seconds, batches]
    seen = _Seen(parts)
    first_error: tuple[int, int, str] | None = None
    more = 0
    # planned from one read task per part, Ray Data warns that a pool of N actors gets 1
    # input; each part streams many blocks, which the whole pool shares
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
    with _ray_stderr_muted(), _connected(ray, address, say), contextlib.ExitStack() as stack0:
        ctx = ray.data.DataContext.get_current()
        # a caller's context (a notebook's, a test's) is theirs: what this run changes goes back
        saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars,
                 ctx.print_on_execution_start, ctx.target_max_block_size)
        stack0.callback(_restore_context, ctx, saved)
        ctx.execution_options.preserve_order = preserve_order
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        # A block is BATCHES_PER_TASK batches, one actor task: Ray's per-task cost is paid
        # once per block, and a retried task redoes one block. Ray merges the blocks a read
        # task yields up to target_max_block_size (128 MiB: a part of a million requests would
        # be one block, one actor task, one busy actor), so that is set to about one of ours.
        # Reads take no CPU from the pool: 2 actors on 2 CPUs would otherwise starve them.
        block_rows = size * BATCHES_PER_TASK
        ctx.target_max_block_size = int(0.8 * block_rows * max(p.row_bytes for p in parts))
        ds = ray.data.read_datasource(_datasource(parts, block_rows), num_cpus=0,
                                      override_num_blocks=len(parts))
        ds = ds.map_batches(Scorer, fn_constructor_kwargs={"spec": spec}, batch_size=size,
                            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
                            num_cpus=cpus, resources=resources)
        try:
            with contextlib.ExitStack() as stack:
                fh = stack.enter_context(atomic_file(target, "w" if out_fmt == "jsonl" else "wb"))
                writer = ResultWriter(fh, out_fmt, spec.mode == "generate", uid_type)
                progress = stack.enter_context(_Progress(total, every, say))
                for block in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                    errs, done = _consume(block, spec, writer, per_actor, seen)
                    if errs and not spec.skip_invalid:
                        first_error, more = errs[0], len(errs) - 1
                        break
                    for _, _, message in errs:
                        progress.say(f"skipped {message}")
                    progress.advance(done, len(errs))
                if first_error is not None:  # raised inside the stack: the temporary goes
                    more_ = f" ({more} more bad line(s) in its batch)" if more else ""
                    raise DataError(f"{first_error[2]}{more_}; nothing was written "
                                    "(--skip-invalid runs the valid lines)")
                writer.close()
                done, skipped = progress.done, progress.skipped
        except ray.exceptions.RayError as e:
            user = _user_error(e)
            if user is not None:
                raise type(user)(str(user)) from None
            raise GenrecError(f"the Ray job failed: {_first_line(e)}") from None
        finally:
            if marker is not None and os.path.exists(marker):
                os.unlink(marker)
                say(f"note: {FAIL_AFTER_ENV}={fail_after}: an actor exited after its batch {fail_after}; "
                    "Ray restarted it and retried its work")
            if seen.duplicates:
                say(f"note: {seen.duplicates} row(s) came back twice (a retried task) and were written once")
    return _summary(done, skipped, time.perf_counter() - t0, per_actor)


def _restore_context(ctx: Any, saved: tuple) -> None:
    (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start,
     ctx.target_max_block_size) = saved


def _progress_seconds() -> float:
    raw = os.environ.get(PROGRESS_ENV, "").strip() or "30"
    try:
        every = float(raw)
    except ValueError:
        every = -1.0
    if not every >= 0:
        raise ConfigError(f"{PROGRESS_ENV}={raw!r}: expected seconds between progress lines (>= 0)")
    return every


def _fail_after() -> int:
    raw = os.environ.get(FAIL_AFTER_ENV, "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{FAIL_AFTER_ENV}={raw!r}: expected a batch count >= 1 (a testing setting)")
    return int(raw)


class _Seen:
    """One bit per input row (1 MiB per 8M rows): a row the driver has already received is
    dropped if it comes again. Ray redoes a dead actor's task whole and only complete tasks
    deliver here, so this is a second line of defence, not the mechanism; it makes "each
    row once" hold whatever a Ray version does with a partly delivered task."""

    def __init__(self, parts: list[InputFile]):
        self.bits = [bytearray((p.rows or 0) // 8 + 1) for p in parts]
        self.duplicates = 0

    def first_time(self, f: int, n: int) -> bool:
        b, i = self.bits[f], n - 1
        if i >> 3 >= len(b):  # a part that grew since it was counted: no record, let it through
            return True
        if b[i >> 3] >> (i & 7) & 1:
            self.duplicates += 1
            return False
        b[i >> 3] |= 1 << (i & 7)
        return True


def _consume(block: Any, spec: RaySpec, writer: ResultWriter, per_actor: dict[str, list[float]],
             seen: _Seen) -> tuple[list[tuple[int, int, str]], int]:
    """One output block: results written, (file, row, message) of its error rows in input
    order returned with the number of results; the actors' numbers tallied; a row already
    received dropped."""
    err = block.column("_error").to_pylist()
    files, rows = block.column("_file").to_pylist(), block.column("_row").to_pylist()
    fresh = [seen.first_time(f, n) for f, n in zip(files, rows)]
    errors = sorted((f, n, e) for f, n, e, new in zip(files, rows, err, fresh) if e is not None and new)
    keep = [j for j, e in enumerate(err) if e is None and fresh[j]]
    actor, busy = block.column("_actor").to_pylist(), block.column("_busy").to_pylist()
    label = None
    for j, name in enumerate(actor):  # a batch's first row names its actor; its rows follow it
        if name is not None:
            label = name
            tally = per_actor.setdefault(name, [0, 0.0, 0])
            tally[1] += busy[j]
            tally[2] += 1
        if err[j] is None and fresh[j] and label is not None:
            per_actor[label][0] += 1
    if errors and not spec.skip_invalid:
        return errors, 0
    if keep:
        pick = lambda c: [c[j] for j in keep]  # noqa: E731
        uids = [json.loads(u) for u in pick(block.column("user_id").to_pylist())]
        writer.write(uids, pick(block.column("items").to_pylist()), pick(block.column("scores").to_pylist()),
                     pick(block.column("score").to_pylist()),
                     [f"{spec.files[files[j]]} {spec.row_word} {rows[j]}" for j in keep])
    return errors, len(keep)


def _summary(n: int, skipped: int, wall: float, per_actor: dict[str, list[float]]) -> str:
    batches = int(sum(t[2] for t in per_actor.values()))
    head = (f"{n} requests" + (f", {skipped} skipped" if skipped else "")
            + f" in {batches} batch{'es' if batches != 1 else ''} on {len(per_actor)} actor"
            f"{'s' if len(per_actor) != 1 else ''}: {n / wall if wall > 0 else 0:.1f} requests/s overall "
            f"({wall:.1f} s, start-up included)")
    lines = [head]
    for label, (reqs, busy, nb) in sorted(per_actor.items()):
        rate = f"{reqs / busy:.1f} requests/s while busy" if busy > 0 else "idle"
        lines.append(f"  actor {label}: {int(reqs)} requests in {int(nb)} batch{'es' if nb != 1 else ''}, {rate}")
    return "\n".join(lines)

