"""``genrec run`` / ``genrec-run``: JSONL requests through a backend and the shared loop.

The command is a thin layer over the API: ``get_backend`` + ``recommend`` / ``generate`` /
``rank``, fed in batches as the input is read, so memory is bounded by one batch (plus one
input line) whatever the size of the input:

    read lines -> parse + validate a batch -> run it -> write its results -> next batch

- The output path is checked before anything is loaded (``genrec.atomic.check_writable``):
  a directory that cannot be written, a parent that is a file, a device or FIFO, the input
  file itself, a symlink loop are each one ``error:`` line. A symlinked output is written
  through (the file it points to is replaced, the link kept).
- A file output is written to a hidden temporary sibling, renamed into place only when every
  line has run: the file appears complete or not at all, whatever stops the run (a bad line,
  Ctrl-C, SIGTERM; a SIGKILL leaves a temporary named after genrec and the pid, which the next
  run on that path removes). ``--output -`` streams each batch's results as they come.
- A bad line (not UTF-8, not JSON, a field of the wrong type, an unknown id, ...) stops the
  run with exit 1, naming the line; the rest of the input is still read and checked (not run)
  so that the message can say how many more are bad. With ``--skip-invalid`` bad lines, and
  requests the loop cannot answer (``RequestError``, e.g. no item left), are listed on stderr
  as ``skipped ...`` and the rest of their batch runs.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import json
import math
import os
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import click

from genrec.errors import DataError, RequestError

STRATEGIES = ("greedy", "beam", "sample")
MAX_LINE_BYTES = 16 * 2**20  # a longer request line is refused (it would only be memory)


def _parse_kv(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--provider-option")
        out[key.strip()] = value.strip()
    return out


def display_name(path: str) -> str:
    """A path as an error line shows it: as given, or quoted if it holds a newline or other
    control character (which would otherwise break the one-line rule)."""
    return path if path.isprintable() else ascii(path)


# --------------------------------------------------------------------------------------------
# input: numbered lines -> Requests


class _JSONConstant(ValueError):
    """NaN / Infinity: Python's json reads them, JSON does not have them."""


def _no_constant(name: str) -> Any:
    raise _JSONConstant(name)


def open_requests(path: str) -> tuple[IO[bytes], str, bool]:
    """(binary stream, name for messages, whether to close it); DataError if it cannot be opened.

    Read as bytes and decoded line by line, so that a bad byte names its line.
    """
    if path == "-":
        return click.get_binary_stream("stdin"), "<stdin>", False
    name = display_name(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed by the caller)
    except OSError as e:
        raise DataError(f"{name}: cannot read requests ({(e.strerror or str(e)).lower()})") from None
    return fh, name, True


TOO_LONG = b"\0too long"  # read_lines' marker for a line past MAX_LINE_BYTES (never valid JSON)


def _readline(fh: IO[bytes], name: str, limit: int) -> bytes:
    try:
        return fh.readline(limit)
    except OSError as e:
        raise DataError(f"{name}: cannot read requests ({(e.strerror or str(e)).lower()})") from None


def read_lines(fh: IO[bytes], name: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, bytes) for each line, a UTF-8 BOM dropped from the first.

    Lines are split on ``\\n`` only (``str.splitlines`` also splits inside a JSON string at
    U+2028 and friends); a line longer than ``MAX_LINE_BYTES`` is skipped without being held
    and yielded as ``TOO_LONG``, so memory stays bounded by one (sane) line.
    """
    n = 0
    while raw := _readline(fh, name, MAX_LINE_BYTES + 1):
        n += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # the rest of the line, a chunk at a time
                raw = _readline(fh, name, MAX_LINE_BYTES)
            yield n, TOO_LONG
            continue
        if n == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        yield n, raw


def parse_line(raw: bytes, where: str) -> Any:
    """One line -> the Request it holds, None for a blank line; DataError naming ``where``."""
    from .requests import request_from_json

    if raw is TOO_LONG:
        raise DataError(f"{where}: longer than {MAX_LINE_BYTES // 2**20} MiB; split the history "
                        "(only the last T items are used)")
    try:
        text = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")  # columns within the line
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
    if not text.strip():
        return None
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except _JSONConstant as e:
        raise DataError(f"{where}: not valid JSON ({e} is not a JSON number)") from None
    except RecursionError:
        raise DataError(f"{where}: not valid JSON here (nested too deeply)") from None
    except ValueError as e:  # an integer of more than 4300 digits (sys.get_int_max_str_digits)
        raise DataError(f"{where}: not valid JSON here (a number too long to read: "
                        f"{str(e).split(':')[0].lower()})") from None
    return request_from_json(obj, where)


# --------------------------------------------------------------------------------------------
# the streaming run


@dataclasses.dataclass
class _Tally:
    """What the summary line and the final error need; O(1) per batch (8 bytes of latency)."""

    done: int = 0
    skipped: int = 0
    first_error: str | None = None
    more_errors: int = 0
    latencies: array = dataclasses.field(default_factory=lambda: array("d"))


class _Stream:
    """Batches of (line number, Request) -> validated -> run -> written.

    One batch is one chunk of the loop (requests per call = what the loop runs at once), so
    that a request the loop refuses (``RequestError``) costs a rerun of one chunk only.
    """

    def __init__(self, backend, run: Callable[..., list], name: str, out: IO[str], stream_out: bool,
                 size: int, need_candidates: bool, skip_invalid: bool, say: Callable[[str], None],
                 params=None):
        self.be, self.run_fn, self.name, self.out = backend, run, name, out
        self.stream_out, self.size, self.need_candidates = stream_out, size, need_candidates
        self.skip, self.say, self.params = skip_invalid, say, params
        self.tally = _Tally()
        self.pending: list[tuple[int, Any]] = []

    # -- bad requests
    def bad(self, message: str) -> None:
        if self.skip:
            self.tally.skipped += 1
            self.say(f"skipped {message}")
        elif self.tally.first_error is None:
            self.tally.first_error = message
        else:
            self.tally.more_errors += 1

    @property
    def failed(self) -> bool:
        return self.tally.first_error is not None

    # -- feeding
    def add(self, n: int, raw: bytes) -> None:
        """Line ``n``; a batch is ``size`` non-blank lines, bad ones included, so that what is
        held stays bounded and bad lines are reported in line order with their batch's."""
        where = f"{self.name} line {n}"
        try:
            req = parse_line(raw, where)
        except DataError as e:
            self.pending.append((n, str(e)))
        else:
            if req is None:
                return
            self.pending.append((n, req))
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        parsed = [i for i, (_, r) in enumerate(batch) if not isinstance(r, str)]
        nums = [batch[i][0] for i in parsed]
        reqs = [batch[i][1] for i in parsed]
        errors = {parsed[i]: e for i, e in self._validate(nums, reqs).items()}
        ok = []
        for i, (n, r) in enumerate(batch):
            if isinstance(r, str) or i in errors:
                self.bad(r if isinstance(r, str) else errors[i])
            else:
                ok.append(i)
        if self.failed:  # a bad line and no --skip-invalid: check the rest, run nothing more
            return
        self._run([batch[i][0] for i in ok], [batch[i][1] for i in ok])

    def _validate(self, nums: list[int], reqs: list) -> dict[int, str]:
        """{index: message} of the requests that fail validation. The batch check first (fast);
        one by one only when it finds something, to name every bad line."""
        from .requests import validate_request, validate_requests

        d, im = self.be.dims, self.be.item_map
        where = lambda i: f"{self.name} line {nums[i]}"  # noqa: E731
        try:
            validate_requests(reqs, im, d.needs_timestamps, where, d.max_history, self.need_candidates)
            return {}
        except DataError:
            pass
        errors = {}
        for i, r in enumerate(reqs):
            try:
                validate_request(r, im, d.needs_timestamps, where(i), d.max_history, self.need_candidates)
            except DataError as e:
                errors[i] = str(e)
        return errors

    def _run(self, nums: list[int], reqs: list) -> None:
        while reqs:
            where = lambda i: f"{self.name} line {nums[i]}"  # noqa: E731
            try:
                # sampling seeds request i by its index: pass this batch's place in the input
                results = self.run_fn(reqs, where=where, params=self.params, on_batch=self._timed,
                                      first_index=self.tally.done)
            except RequestError as e:
                if not 0 <= e.index < len(reqs):
                    raise
                self.bad(str(e))
                if not self.skip:
                    return
                del nums[e.index], reqs[e.index]
                continue
            self._write(results)
            return

    def _timed(self, n: int, seconds: float) -> None:
        self.tally.latencies.append(seconds)

    def _write(self, results: list) -> None:
        lines = [json.dumps({"user_id": r.user_id, "items": r.items, "scores": r.scores,
                             **({"score": r.score} if r.score is not None else {})}) + "\n" for r in results]
        self.out.write("".join(lines))
        if self.stream_out:
            self.out.flush()  # as they come; EPIPE here ends the run quietly (exit 141)
        self.tally.done += len(results)


def _summary(n: int, skipped: int, latencies) -> str:
    import numpy as np

    total = sum(latencies)
    if not latencies:
        return f"{n} requests" + (f", {skipped} skipped" if skipped else "")
    p50, p99 = np.percentile(np.asarray(latencies), [50, 99]) * 1e3
    return (f"{n} requests" + (f", {skipped} skipped" if skipped else "")
            + f" in {len(latencies)} batch{'es' if len(latencies) > 1 else ''}: "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms per batch, "
            f"{n / total if total > 0 else math.inf:.1f} requests/s")


def check_output(output_path: str, input_path: str) -> Path:
    """The output preflight, before any compute: ``check_writable`` plus "not the input"."""
    from genrec.atomic import OutputPathError, check_writable

    target = check_writable(output_path, note=lambda line: click.echo(f"note: {line}", err=True))
    if input_path != "-":
        try:
            same = os.path.exists(target) and os.path.samefile(input_path, target)
        except OSError:
            same = False
        if same:
            raise OutputPathError(f"--output {display_name(output_path)} is the input file; "
                                  "write the results elsewhere")
    return target


@click.command("run", short_help="Recommend, generate or rank JSONL requests with a bundle.")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--backend", default="onnxruntime", show_default=True, metavar="BACKEND[:VARIANT]",
              help="Backend name: onnxruntime, torch, or one installed through the genrec.backends entry point.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "cann"]), default=None,
              help="onnxruntime execution provider. [default: cpu]")
@click.option("--provider-option", "provider_options", multiple=True, metavar="KEY=VALUE",
              help="onnxruntime provider option, passed through (repeatable).")
@click.option("--device", default=None, help="torch device: cpu, cuda or npu. [default: cpu]")
@click.option("--precision", default=None, help="onnxruntime graph variant: fp32, fp16, int8. [default: the bundle's]")
@click.option("--backend-option", "backend_options", multiple=True, metavar="KEY=VALUE",
              help="A keyword option of the backend, checked by it (repeatable): device_id=1, soc=Ascend910B4, "
                   "precision=fp16, inplace_cache=true (ascend); provider=cuda, threads=4 (onnxruntime). "
                   "--provider/--device/--precision/--threads are aliases.")
@click.option("--stats", "show_stats", is_flag=True,
              help="Print bytes moved per call between host and device (H2D, D2H, D2D) for backends that can "
                   "tell (ascend).")
@click.option("--threads", type=click.IntRange(min=1, max=1024), default=None,
              help="CPU threads (onnxruntime intra-op, torch).")
@click.option("--input", "input_path", default="-", show_default=True, metavar="PATH",
              help="Requests, one JSON object per line (UTF-8, a BOM is fine).")
@click.option("--output", "output_path", default="-", show_default=True, metavar="PATH",
              help="Results, one JSON line per request; a file appears only when complete "
                   "(a symlink is written through); - streams to stdout.")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True, help="Items per request (recommend).")
@click.option("--generate", "steps", type=click.IntRange(min=1), default=None, metavar="N",
              help="Generate slates of N items instead of one-shot top-k.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=None,
              help="How --generate picks items. [default: greedy]")
@click.option("--beams", type=click.IntRange(min=1), default=None, help="Beam width (--strategy beam). [default: 4]")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Sampling temperature (--strategy sample). [default: 1.0]")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Sample among the k most likely items.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None, help="Nucleus sampling mass.")
@click.option("--seed", type=int, default=None,
              help="Sampling seed (the same input gives the same slates, as one generate() call).")
@click.option("--allow-repeats", is_flag=True, help="Allow history items and repeats in a slate.")
@click.option("--rank", "rank_mode", is_flag=True, help="Score each request's candidates (M-FALCON).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Requests per batch; memory is bounded by one batch. [default: the largest batch gear]")
@click.option("--skip-invalid", is_flag=True,
              help="Skip bad lines and requests that cannot be answered (listed on stderr) instead of stopping.")
@click.option("--expect-digest", metavar="SHA256",
              help="Refuse any bundle whose digest (printed by `genrec inspect`) is not this one.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: a Ray Data actor pool (pip install genrec-deploy[ray]), "
                   "JSONL or Parquet in and out (a file or a directory of parts).")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="--engine ray: actors, each with one backend and --threads CPUs. [default: 1]")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="--engine ray: the cluster to join. [default: $RAY_ADDRESS, else a local instance]")
@click.option("--preserve-order", is_flag=True,
              help="--engine ray: write results in input order (else in the order batches finish).")
def run_command(bundle, backend, provider, provider_options, device, precision, threads, input_path,
                output_path, k, steps, strategy, beams, temperature, top_k, top_p, seed, allow_repeats,
                rank_mode, batch_size, skip_invalid, expect_digest, engine="local", actors=None,
                ray_address=None, preserve_order=False, backend_options=(), show_stats=False):
    """Run JSONL requests through BUNDLE (a bundle directory; for --backend torch also a
    checkpoint file) and write one JSON line per request: user_id, items, scores.

    \b
    A request: {"user_id": "u1", "items": [12, 7, 40], "timestamps": [...],
                "request_time": 1700000000, "exclude": [...], "candidates": [...]}
    (timestamps and request_time are required by hstu bundles; candidates by --rank)

    \b
    Requests are read, run and written a batch at a time (memory bounded by the batch). A bad
    line stops the run (exit 1, no output file); --skip-invalid lists it and goes on.
    Exit codes: 0 ok, 1 bad input, 2 usage, 3 internal error, 130 SIGINT, 143 SIGTERM,
    141 stdout closed (e.g. by `| head`).

    \b
    genrec-run bundle/ --input requests.jsonl --output recs.jsonl --k 10
    genrec-run bundle/ --generate 5 --strategy beam --beams 4 < requests.jsonl
    genrec-run bundle/ --backend torch --rank --input requests.jsonl
    """
    from genrec.atomic import atomic_file
    from genrec.bundle import load_bundle

    from . import decoding
    from .registry import get_backend

    if steps is not None and rank_mode:
        raise click.UsageError("--generate and --rank are different modes; choose one")
    given = {"--strategy": strategy is not None, "--beams": beams is not None,
             "--temperature": temperature is not None, "--top-k": top_k is not None,
             "--top-p": top_p is not None, "--seed": seed is not None, "--allow-repeats": allow_repeats}
    if steps is None and any(given.values()):
        raise click.UsageError(f"{', '.join(f for f, g in given.items() if g)} require --generate N")
    strategy = strategy or "greedy"
    wrong = [f for f in ("--temperature", "--top-k", "--top-p", "--seed") if given[f] and strategy != "sample"]
    wrong += ["--beams"] if given["--beams"] and strategy != "beam" else []
    if wrong:
        raise click.UsageError(f"{', '.join(wrong)} do not apply to --strategy {strategy}")
    params = None
    if steps is not None:
        params = decoding.SearchParams(strategy=strategy, num_beams=beams or 4,
                                       temperature=temperature or 1.0, top_k=top_k, top_p=top_p,
                                       seed=seed, allow_repeats=allow_repeats)
    if expect_digest is not None and not Path(bundle).is_dir():
        raise click.UsageError("--expect-digest pins a bundle directory; BUNDLE is a checkpoint file")
    backend, precision = _variant(backend, bundle, precision)
    ray_only = {"--actors": actors is not None, "--ray-address": ray_address is not None,
                "--preserve-order": preserve_order}
    if engine != "ray" and any(ray_only.values()):
        raise click.UsageError(f"{', '.join(f for f, g in ray_only.items() if g)} require --engine ray")
    if engine == "ray" and show_stats:
        raise click.UsageError("--stats does not apply to --engine ray yet")
    if engine == "ray":
        _run_on_ray(bundle, backend, provider, provider_options, device, precision, threads, input_path,
                    output_path, k, steps, params, rank_mode, batch_size, skip_invalid, expect_digest,
                    actors or 1, ray_address, preserve_order, backend_options)
        return
    to_stdout = output_path == "-"
    target = None if to_stdout else check_output(output_path, input_path)  # before any compute
    if expect_digest is not None:  # refuse another bundle before any request is read
        bundle = load_bundle(bundle, expect_digest=expect_digest)
    fh, name, close = open_requests(input_path)
    options = {"provider": provider, "device": device, "precision": precision, "threads": threads,
               "provider_options": _parse_kv(provider_options) or None}
    options = _with_backend_options(backend, options, backend_options)
    with contextlib.ExitStack() as stack:
        if close:
            stack.enter_context(fh)
        be = stack.enter_context(get_backend(backend, bundle, **{k_: v for k_, v in options.items()
                                                                 if v is not None}))
        if rank_mode:
            def run(reqs, params=None, first_index=0, **kw):
                return decoding.rank(be, reqs, batch_size=batch_size, **kw)
        elif steps is not None:
            def run(reqs, params=params, first_index=0, **kw):
                return decoding.generate(be, reqs, steps, params, batch_size=batch_size,
                                         first_index=first_index, **kw)
        else:
            def run(reqs, params=None, first_index=0, **kw):
                return decoding.recommend(be, reqs, k, batch_size=batch_size, **kw)
        run([])  # the loop checks --k, --generate N and --beams against the bundle: before any input
        per_request = params.num_beams if params is not None and params.strategy == "beam" else 1
        largest = max(be.batch_gears)
        size = max(1, min(batch_size or largest, largest // per_request))
        out = (click.get_text_stream("stdout") if to_stdout
               else stack.enter_context(atomic_file(target, "w")))
        progress = stack.enter_context(_progress(fh, enabled=not to_stdout and close))
        stream = _Stream(be, run, name, out, to_stdout, size, rank_mode, skip_invalid, progress.say, params)
        for n, raw in read_lines(fh, name):
            stream.add(n, raw)
            progress.advance(len(raw))
        stream.flush()
        t = stream.tally
        if t.first_error is not None:  # raised inside the stack: the temporary output goes
            more = f" ({t.more_errors} more bad line(s))" if t.more_errors else ""
            done = (f"stopped after {t.done} result(s) on stdout" if to_stdout and t.done
                    else "nothing was written")
            raise DataError(f"{t.first_error}{more}; {done} (--skip-invalid runs the valid lines)")
    click.echo(_summary(t.done, t.skipped, t.latencies), err=True)
    if show_stats:
        _print_stats(be)


def _run_on_ray(bundle, backend, provider, provider_options, device, precision, threads, input_path,
                output_path, k, steps, params, rank_mode, batch_size, skip_invalid, expect_digest,
                actors, ray_address, preserve_order, backend_options=()) -> None:
    """``--engine ray``: the same checks as the local path, then ``ray_engine.run_on_ray``.

    The output must be a file (the driver writes it, atomically), the input a file or a
    directory of parts (read by Ray tasks, so not stdin), BUNDLE a bundle directory (every
    actor opens it by path)."""
    from .ray_engine import RaySpec, import_ray, run_on_ray
    from .tables import output_format

    if not Path(bundle).is_dir():
        raise click.UsageError("--engine ray serves a bundle directory; BUNDLE is a checkpoint file")
    if input_path == "-" or output_path == "-":
        raise click.UsageError("--engine ray reads --input PATH and writes --output PATH "
                               "(a .jsonl or .parquet file); not stdin or stdout")
    import_ray()  # the install hint before anything else
    output_format(output_path)
    target = check_output(output_path, input_path)  # before any compute
    options = {"provider": provider, "device": device, "precision": precision, "threads": threads,
               "provider_options": _parse_kv(provider_options) or None}
    options = {k_: v for k_, v in _with_backend_options(backend, options, backend_options).items()
               if v is not None}
    options.setdefault("threads", 1)  # an actor's threads = the CPUs it reserves
    mode = "rank" if rank_mode else "generate" if steps is not None else "recommend"
    spec = RaySpec(bundle=str(Path(bundle).resolve()), backend=backend, options=options, mode=mode, k=k,
                   steps=steps, params=params, batch_size=batch_size, skip_invalid=skip_invalid,
                   expect_digest=expect_digest)
    say = lambda line: click.echo(line, err=True)  # noqa: E731
    summary = run_on_ray(spec, input_path, target, output_path, actors, ray_address, preserve_order,
                         cpus=float(options["threads"]), say=say)
    click.echo(summary, err=True)


def _variant(spec: str, bundle: str, precision: str | None) -> tuple[str, str | None]:
    """``--backend BACKEND[:VARIANT]`` -> (backend, precision option): the grammar parity, bench
    and Ray use too (``registry.split_backend``); the variant is resolved against the bundle
    (``int8`` -> its one int8 variant; ascend's are its OM build precisions)."""
    from genrec.bundle import load_bundle

    from .registry import resolve_backend_variant, split_backend

    name, variant = split_backend(spec)
    if variant is None:
        return name, precision
    if precision is not None:
        raise click.UsageError(f"--backend {spec} names a variant; --precision {precision} names another")
    if not Path(bundle).is_dir():
        raise click.UsageError(f"--backend {spec}: variants belong to bundles; BUNDLE is a checkpoint file")
    return name, resolve_backend_variant(name, load_bundle(bundle, verify=False), variant)


def _with_backend_options(backend: str, aliases: dict[str, Any], pairs: tuple[str, ...]) -> dict[str, Any]:
    """The old per-backend flags (aliases, when given) plus ``--backend-option KEY=VALUE``,
    parsed and checked against the backend's own options (``registry.parse_backend_options``)."""
    from .registry import parse_backend_options

    raw: dict[str, str] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--backend-option")
        raw[key.strip()] = value.strip()
    given = {k_: v for k_, v in aliases.items() if v is not None}
    both = sorted(set(given) & set(raw))
    if both:
        raise click.UsageError(f"{', '.join(both)} given both as a flag and as --backend-option; give it once")
    return {**given, **parse_backend_options(backend, raw)} if raw else given


def _print_stats(backend) -> None:
    """``--stats``: bytes per call of each kind and direction, one line per kind, step first."""
    stats = getattr(backend, "stats", None)
    if not callable(stats):
        click.echo(f"stats: the {backend.name} backend does not report host/device traffic", err=True)
        return
    s = stats()
    for kind in ("step", "prefill", "rank", "reorder"):
        if kind not in s:
            continue
        per, n = s[kind]["bytes_per_call"], s[kind]["calls"]
        ms = f", execute {s[kind]['execute_ms_per_call']:.2f} ms" if "execute_ms_per_call" in s[kind] else ""
        click.echo(f"stats {kind}: {n} call(s), bytes per call H2D {per['h2d']:.0f}, D2H {per['d2h']:.0f}, "
                   f"D2D {per['d2d']:.0f}{ms}", err=True)


class _progress:
    """A rich progress bar on stderr (bytes of a file input read) when stderr is a terminal;
    ``say`` prints a line above it (or plainly when there is no bar)."""

    def __init__(self, fh: IO[bytes], enabled: bool):
        self.fh, self.enabled, self._bar, self._task = fh, enabled, None, None

    def __enter__(self) -> "_progress":
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        try:
            total = os.fstat(self.fh.fileno()).st_size
        except (OSError, AttributeError, ValueError):
            total = 0
        if not (console.is_terminal and total > 0):  # keep piped stderr to the summary line
            return self
        self._bar = Progress(TextColumn("requests"), BarColumn(), DownloadColumn(),
                             TimeElapsedColumn(), console=console, transient=True)
        self._bar.__enter__()
        self._task = self._bar.add_task("", total=total)
        return self

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def say(self, line: str) -> None:
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            click.echo(line, err=True)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


__all__ = ["check_output", "open_requests", "parse_line", "read_lines", "run_command"]
