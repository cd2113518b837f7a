"""``genrec-run`` as a hostile user meets it: bad lines, bad output paths, signals, a closed
pipe, a big input. Every failure is one ``error:`` line, the documented exit code, and no file
left behind.

Per-case checks go through ``genrec.cli.invoke`` (the handler every entry point runs, in this
process: 60 ms a case instead of 2 s of interpreter start); what needs a process of its own
(signals, exit codes, the pipe, memory) runs ``genrec-run`` in a real subprocess. Signals are
sent by the process to itself from a hook at a known stage (after the first batch has been
written to the temporary output), never by timing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from genrec.cli import invoke
from genrec.runtimes.cli import run_command
from test_run_cli import as_json, genrec_run, read_jsonl, write_jsonl

EXIT = {"SIGINT": 130, "SIGTERM": 143}


def run(*args, **kw) -> tuple[int, list[str]]:
    """``genrec-run ARGS`` in this process: (exit code, stderr lines)."""
    capsys = kw.pop("capsys")
    capsys.readouterr()
    code = invoke(run_command, [str(a) for a in args], "genrec-run")
    return code, capsys.readouterr().err.splitlines()


def files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.fixture()
def good(requests) -> list[dict]:
    return as_json(requests[:3])


# --------------------------------------------------------------------------------------------
# hostile request lines: each the 2nd of three lines


def _bad_lines(g: dict) -> dict[str, str]:
    """id -> a hostile line built from the good request ``g`` (HSTU: times and request_time)."""
    def mut(**kw) -> str:
        obj = {**g, **kw}
        return json.dumps({k: v for k, v in obj.items() if v is not DROP})

    t, items = g["timestamps"], g["items"]
    return {
        # not JSON / not an object
        "truncated": '{"user_id": "x", "items": [1,',
        "trailing-garbage": mut() + " x",
        "nan": mut()[:-1] + ', "request_time": NaN}',
        "infinity": mut(request_time=DROP)[:-1] + ', "request_time": Infinity}',
        "deep-nesting": "[" * 100_000 + "]" * 100_000,
        "5000-digit-int": '{"user_id": 1, "items": [' + "7" * 5000 + "]}",
        "bom-mid-file": "\ufeff" + mut(),
        "nul": mut()[:-1] + "\x00}",
        "not-utf8": '{"user_id": "a\udcff", "items": [1]}',  # byte 0xff (written with surrogateescape)
        "list": json.dumps([g]),
        "string": '"hello"',
        "number": "42",
        "null": "null",
        "true": "true",
        # fields
        "unknown-field": mut(itmes=[1]),
        "no-user-id": mut(user_id=DROP),
        "no-items": mut(items=DROP),
        "user-id-null": mut(user_id=None),
        "user-id-list": mut(user_id=[1, 2]),
        "user-id-object": mut(user_id={"id": 1}),
        "user-id-float": mut(user_id=1.5),
        "user-id-bool": mut(user_id=True),
        "user-id-huge": mut(user_id=10**30),
        "items-null": mut(items=None),
        "items-string": mut(items="5522 439"),
        "items-object": mut(items={"0": items[0]}),
        "items-number": mut(items=items[0]),
        "items-nested": mut(items=[items]),
        "items-float": mut(items=[float(items[0])]),
        "items-bool": mut(items=[True] * len(items)),
        "items-str-elem": mut(items=[str(i) for i in items]),
        "items-huge": mut(items=[2**70] * len(items)),
        "items-negative": mut(items=[-i for i in items]),
        "items-unknown": mut(items=[0] * len(items)),
        "items-empty": mut(items=[], timestamps=[]),
        "times-null": mut(timestamps=None),
        "times-string": mut(timestamps="yesterday"),
        "times-float": mut(timestamps=[x + 0.5 for x in t]),
        "times-short": mut(timestamps=[]),
        "times-backwards": mut(items=[items[0]] * 2, timestamps=[5, 4], request_time=6),
        "times-wrap": mut(items=[items[0]] * 2, timestamps=[-(2**63), 2**63 - 1], request_time=2**63 - 1),
        "times-huge": mut(timestamps=[10**25] * len(t)),
        "times-millis": mut(items=[items[0]] * 2, timestamps=[0, 10**12], request_time=10**12),
        "rt-missing": mut(request_time=DROP),
        "rt-null": mut(request_time=None),
        "rt-string": mut(request_time="now"),
        "rt-float": mut(request_time=1.5e9),
        "rt-bool": mut(request_time=False),
        "rt-list": mut(request_time=[t[-1]]),
        "rt-huge": mut(request_time=2**64),
        "rt-early": mut(request_time=t[-1] - 1),
        "exclude-string": mut(exclude="none"),
        "exclude-object": mut(exclude={}),
        "exclude-nested": mut(exclude=[[1]]),
        "exclude-float": mut(exclude=[1.0]),
        "exclude-unknown": mut(exclude=[2**40]),
        "candidates-number": mut(candidates=3),
        "candidates-unknown": mut(candidates=[-1]),
    }


DROP = object()

# what each hostile line's error says after "line 2: "
EXPECT = {
    "truncated": "not valid JSON (Expecting value at column 30)",
    "trailing-garbage": "not valid JSON (Extra data",
    "nan": "not valid JSON (NaN is not a JSON number)",
    "infinity": "not valid JSON (Infinity is not a JSON number)",
    "deep-nesting": "not valid JSON here (nested too deeply)",
    "5000-digit-int": "not valid JSON here (a number too long to read",
    "bom-mid-file": "not valid JSON (Unexpected UTF-8 BOM",
    "nul": "not valid JSON (",
    "not-utf8": "not valid UTF-8 (byte 0xff at column 15)",
    "list": "expected a JSON object, got list",
    "string": "expected a JSON object, got str",
    "number": "expected a JSON object, got int",
    "null": "expected a JSON object, got NoneType",
    "true": "expected a JSON object, got bool",
    "unknown-field": "unknown field(s) 'itmes'",
    "no-user-id": "missing 'user_id'",
    "no-items": "missing 'items'",
    "user-id-null": "user_id is null; send a string or an integer",
    "user-id-list": "user_id is a list",
    "user-id-object": "user_id is an object",
    "user-id-float": "user_id is a number",
    "user-id-bool": "user_id is a boolean",
    "user-id-huge": "user_id 1000000000000000000000000000000 is too large for int64",
    "items-null": "items is null; send a list of integers",
    "items-string": "items is a string",
    "items-object": "items is an object",
    "items-number": "items is an integer",
    "items-nested": "items[0] is [",
    "items-float": "items[0] is 5522.0, not an integer",
    "items-bool": "items[0] is True, not an integer",
    "items-str-elem": "items[0] is '5522', not an integer",
    "items-huge": "items holds an integer too large for int64",
    "items-negative": "items has a negative item id -5522",
    "items-unknown": "unknown item id 0 in items",
    "items-empty": "empty history",
    "times-null": "timestamps are required by this model (hstu)",
    "times-string": "timestamps is a string",
    "times-float": "timestamps[0] is ",
    "times-short": "1 items but 0 timestamps",
    "times-backwards": "timestamps go backwards at index 1 (4 after 5)",
    "times-wrap": "timestamps span 18446744073709551615 units, more than int32 holds",
    "times-huge": "timestamps holds an integer too large for int64",
    "times-millis": "timestamps span 1000000000000 units, more than int32 holds",
    "rt-missing": "request_time is required by this model (hstu)",
    "rt-null": "request_time is required by this model (hstu)",
    "rt-string": "request_time is a string 'now'",
    "rt-float": "request_time is a number 1500000000.0",
    "rt-bool": "request_time is a boolean False",
    "rt-list": "request_time is a list",
    "rt-huge": "request_time 18446744073709551616 is too large for int64",
    "rt-early": "request_time 1379116799 is before the last history timestamp 1379116800",
    "exclude-string": "exclude is a string",
    "exclude-object": "exclude is an object",
    "exclude-nested": "exclude[0] is [1], not an integer",
    "exclude-float": "exclude[0] is 1.0, not an integer",
    "exclude-unknown": "unknown item id 1099511627776 in exclude",
    "candidates-number": "candidates is an integer",
    "candidates-unknown": "candidates has a negative item id -1",
}


# one of each code path, run one by one (each start verifies the bundle, ~0.4 s); every line of
# EXPECT also runs in the one-subprocess test below, which checks each message
ONE_BY_ONE = ["truncated", "nan", "deep-nesting", "5000-digit-int", "not-utf8", "bom-mid-file", "list", "null",
              "unknown-field", "no-items", "user-id-null", "user-id-object", "user-id-huge", "items-null",
              "items-string", "items-nested", "items-float", "items-huge", "items-negative", "items-unknown",
              "items-empty", "times-null", "times-short", "times-backwards", "times-wrap", "times-millis",
              "rt-missing", "rt-string", "rt-huge", "rt-early", "exclude-object", "exclude-unknown",
              "candidates-unknown"]


@pytest.mark.parametrize("case", ONE_BY_ONE)
def test_a_hostile_line_is_one_error_naming_it_and_nothing_is_written(case, tmp_path, bundles, good, capsys):
    line = _bad_lines(good[0])[case]
    src, out = tmp_path / "requests.jsonl", tmp_path / "recs.jsonl"
    src.write_bytes("\n".join([json.dumps(good[1]), line, json.dumps(good[2])]).encode("utf-8", "surrogateescape"))
    code, err = run(bundles["hstu"], "--input", src, "--output", out, capsys=capsys)
    assert code == 1
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {src} line 2: " + EXPECT[case]), err[0]
    assert err[0].endswith("; nothing was written (--skip-invalid runs the valid lines)")
    assert len(err[0]) < 400  # a hostile value is quoted short
    assert files(tmp_path) == ["requests.jsonl"]


def test_every_hostile_line_is_skipped_by_name_in_one_subprocess(tmp_path, bundles, good):
    """The same lines in one file through the real ``genrec-run``: each reported once, in order,
    with its line number; the valid lines around them still run; a BOM on line 1 is fine."""
    cases = sorted(EXPECT)
    lines = [json.dumps(good[0]), *(_bad_lines(good[0])[c] for c in cases), json.dumps(good[1])]
    src, out = tmp_path / "requests.jsonl", tmp_path / "recs.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode("utf-8", "surrogateescape") + b"\n")
    proc = genrec_run(bundles["hstu"], "--input", src, "--output", out, "--skip-invalid")
    assert proc.returncode == 0, proc.stderr
    skipped = [x for x in proc.stderr.splitlines() if x.startswith("skipped ")]
    assert len(skipped) == len(lines) - 2 and "Traceback" not in proc.stderr
    for n, (case, msg) in enumerate(zip(cases, skipped), 2):
        assert msg.startswith(f"skipped {src} line {n}: {EXPECT[case]}"), (case, msg)
    assert [r["user_id"] for r in read_jsonl(out)] == [good[0]["user_id"], good[1]["user_id"]]
    assert proc.stderr.splitlines()[-1].startswith(f"2 requests, {len(lines) - 2} skipped in 2 batches")
    assert files(tmp_path) == ["recs.jsonl", "requests.jsonl"]


def test_rank_mode_needs_candidates_and_a_long_line_is_refused(tmp_path, bundles, good, capsys):
    src, out = tmp_path / "requests.jsonl", tmp_path / "recs.jsonl"
    no_cands = {k: v for k, v in good[1].items() if k != "candidates"}
    write_jsonl(src, [good[0], no_cands])
    code, err = run(bundles["hstu"], "--input", src, "--output", out, "--rank", capsys=capsys)
    assert code == 1 and err == [f"error: {src} line 2: no candidates to rank; add a \"candidates\" list "
                                 "of item ids; nothing was written (--skip-invalid runs the valid lines)"]
    # a 17 MiB line is skipped without being held, and named
    with src.open("w") as f:
        f.write(json.dumps(good[0]) + "\n")
        f.write('{"user_id": "big", "items": [' + "1," * (17 * 2**19) + "1]}\n")
        f.write(json.dumps(good[1]) + "\n")
    code, err = run(bundles["hstu"], "--input", src, "--output", out, "--skip-invalid", capsys=capsys)
    assert code == 0 and err[0] == f"skipped {src} line 2: longer than 16 MiB; split the history (only the " \
                                   "last T items are used)"
    assert len(read_jsonl(out)) == 2


def test_a_request_the_loop_cannot_answer_is_skipped_and_its_batch_runs(tmp_path, bundles, beauty, good, capsys):
    """A deny list of the whole catalogue leaves no item to generate: a RequestError for that
    line only. --skip-invalid reports it like a bad line and the rest of its batch still runs;
    without it the run stops, naming the line, and writes nothing."""
    everything = {**good[1], "user_id": "greedy", "exclude": beauty.item_map.to_list()}
    src, out = tmp_path / "requests.jsonl", tmp_path / "recs.jsonl"
    write_jsonl(src, [good[0], everything, good[2]])  # one batch
    args = [bundles["hstu"], "--input", src, "--output", out, "--generate", 2]
    code, err = run(*args, "--skip-invalid", capsys=capsys)
    assert code == 0, err
    assert err[0].startswith(f"skipped {src} line 2 (user_id 'greedy'): no item left to recommend at step 1")
    assert [r["user_id"] for r in read_jsonl(out)] == [good[0]["user_id"], good[2]["user_id"]]
    assert err[1].startswith("2 requests, 1 skipped in 1 batch")
    out.unlink()
    code, err = run(*args, capsys=capsys)
    assert code == 1 and len(err) == 1
    assert err[0].startswith(f"error: {src} line 2 (user_id 'greedy'): no item left to recommend")
    assert err[0].endswith("; nothing was written (--skip-invalid runs the valid lines)")
    assert files(tmp_path) == ["requests.jsonl"]


# --------------------------------------------------------------------------------------------
# output paths: refused before any compute (BUNDLE is an empty directory: loading it would fail
# with another message, so each error below proves the check came first)


@pytest.fixture()
def work(tmp_path, requests) -> Path:
    """A directory of things an output path can run into, and the requests file."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "afile").write_text("x")
    (work / "adir").mkdir()
    (work / "empty-bundle").mkdir()
    os.mkfifo(work / "fifo")
    src = work / "requests.jsonl"
    write_jsonl(src, as_json(requests[:2]))
    os.link(src, work / "hardlink.jsonl")
    (work / "link-to-input.jsonl").symlink_to(src)
    (work / "link-to-dir").symlink_to(work / "adir")
    (work / "loop-a").symlink_to("loop-b")
    (work / "loop-b").symlink_to("loop-a")
    return work


@pytest.fixture()
def readonly_dir(work):
    """A directory nobody may create files in: mode 0555, or for root (whom modes do not stop)
    the immutable attribute; skipped where neither holds."""
    d = work / "ro"
    d.mkdir()
    d.chmod(0o555)
    immutable = False
    try:
        (d / "probe").touch()
    except OSError:
        pass
    else:
        (d / "probe").unlink()
        immutable = subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0
        if not immutable:
            d.chmod(0o755)
            pytest.skip("cannot make a read-only directory here (root without chattr)")
    yield d
    if immutable:
        subprocess.run(["chattr", "-i", str(d)], check=True)
    d.chmod(0o755)


OUTPUTS = {
    # id: (output path, absolute or relative to the work directory; what the error says)
    "parent-is-file": ("afile/recs.jsonl", "{w}/afile is a file, not a directory"),
    "grandparent-is-file": ("afile/sub/recs.jsonl", "{w}/afile is a file, not a directory"),
    "read-only-dir": ("ro/recs.jsonl", "cannot create files in {w}/ro ("),
    "read-only-dir-missing-sub": ("ro/new/recs.jsonl", "cannot create files in {w}/ro ("),
    "proc": ("/proc/recs.jsonl", "cannot create files in /proc ("),
    "proc-file": ("/proc/version", "cannot create files in /proc ("),
    "sys": ("/sys/recs.jsonl", "cannot create files in /sys ("),
    "dev-null": ("/dev/null", "it is a character device, not a regular file"),
    "fifo": ("fifo", "it is a named pipe, not a regular file"),
    "a-directory": ("adir", "it is a directory"),
    "trailing-slash": ("adir/", "it is a directory"),
    "dot": (".", "it names a directory"),
    "dotdot": ("adir/..", "it names a directory"),
    "same-as-input": ("requests.jsonl", "is the input file; write the results elsewhere"),
    "hardlink-to-input": ("hardlink.jsonl", "is the input file"),
    "symlink-to-input": ("link-to-input.jsonl", "is the input file"),
    "symlink-loop": ("loop-a", "a loop of symlinks"),
    "symlink-to-dir": ("link-to-dir", "it is a directory"),
    "name-too-long": ("x" * 250, "the name is too long for its temporary sibling"),
    "name-way-too-long": ("x" * 300, "file name too long"),
    "empty": ("", "the output path is empty"),
    "nul-byte": ("a\0b", "a path cannot contain a NUL byte"),
    "newline-in-name": ("afile/new\nline.jsonl", "'{w}/afile/new\\nline.jsonl': {w}/afile is a file"),
}


@pytest.mark.parametrize("case", sorted(OUTPUTS))
def test_a_bad_output_path_is_one_error_before_any_work(case, work, capsys, request, monkeypatch):
    rel, message = OUTPUTS[case]
    if case.startswith("read-only"):
        request.getfixturevalue("readonly_dir")
    monkeypatch.chdir(work)
    out = rel if rel.startswith("/") or rel in ("", ".") else f"{work}/{rel}"
    before = {d: files(d) for d in (work, work / "adir")}
    code, err = run(work / "empty-bundle", "--input", work / "requests.jsonl", "--output", out, capsys=capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("error: ") and message.format(w=work) in err[0], err[0]
    assert {d: files(d) for d in before} == before
    if case.startswith("read-only"):
        assert files(work / "ro") == []


def test_a_symlinked_output_is_written_through_and_a_leftover_of_a_dead_run_goes(tmp_path, bundles,
                                                                               requests, capsys):
    from genrec.atomic import leftover_name

    src = tmp_path / "requests.jsonl"
    write_jsonl(src, as_json(requests[:3]))
    (tmp_path / "real").mkdir()
    link = tmp_path / "recs.jsonl"
    link.symlink_to(tmp_path / "real" / "recs.jsonl")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = tmp_path / "real" / leftover_name("recs.jsonl", "tmp", int(dead.stdout))
    stale.write_text("half of an old run")
    code, err = run(bundles["hstu"], "--input", src, "--output", link, "--k", 2, capsys=capsys)
    assert code == 0, err
    assert link.is_symlink() and len(read_jsonl(tmp_path / "real" / "recs.jsonl")) == 3
    assert files(tmp_path / "real") == ["recs.jsonl"]


# --------------------------------------------------------------------------------------------
# signals, SIGKILL leftovers, the closed pipe, streaming, memory: real subprocesses

SIGNAL_AFTER_FIRST_BATCH = r'''
import io, os, signal, sys, threading
# a test run from a background job inherits SIGINT ignored (no KeyboardInterrupt at all);
# an interactive user's process has Python's handler, which is what is tested here
signal.signal(signal.SIGINT, signal.default_int_handler)

from genrec.cli import run_main

src, limit, sig, out_dir = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3]), sys.argv[4]


class SignalAfter(io.RawIOBase):
    """The requests file as stdin. The first read past ``limit`` bytes (the first batch's
    lines) comes once that batch has run and been written: then the signal goes to this
    process's main thread, where pthread_kill runs its handler before returning."""

    def __init__(self):
        self.f, self.pos, self.sent = open(src, "rb"), 0, False

    def readable(self):
        return True

    def readinto(self, b):
        if self.pos >= limit and not self.sent:
            self.sent = True
            print("at signal:", os.getpid(), *sorted(os.listdir(out_dir)), file=sys.stderr, flush=True)
            signal.pthread_kill(threading.main_thread().ident, sig)
        data = self.f.read(min(len(b), limit - self.pos) if self.pos < limit else len(b))
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


sys.stdin = io.TextIOWrapper(io.BufferedReader(SignalAfter()))
sys.argv = ["genrec-run", *sys.argv[5:]]
run_main()
'''


def _signalled_run(tmp_path, bundle, requests, sig: str) -> tuple[subprocess.CompletedProcess, Path]:
    rows = as_json(requests)
    src, out = tmp_path / "requests.jsonl", tmp_path / "recs.jsonl"
    write_jsonl(src, rows)
    first_batch = sum(len(json.dumps(r)) + 1 for r in rows[:4])
    proc = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_FIRST_BATCH, str(src), str(first_batch), sig,
                           str(tmp_path), str(bundle), "--output", str(out), "--batch-size", "4",
                           "--threads", "1"], capture_output=True, text=True, timeout=300)
    return proc, out


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_mid_run_removes_the_temporary_output(sig, tmp_path, bundles, requests):
    proc, out = _signalled_run(tmp_path, bundles["sasrec"], requests, sig)
    at_signal, *rest = proc.stderr.splitlines()
    temp = re.fullmatch(r"at signal: (\d+) (\S+) requests\.jsonl", at_signal)
    assert temp and re.fullmatch(rf"\.recs\.jsonl\.genrec-tmp-{temp[1]}-[0-9a-f]{{8}}", temp[2]), at_signal
    assert rest == [f"error: interrupted by {sig}"]
    assert proc.returncode == EXIT[sig]
    assert files(tmp_path) == ["requests.jsonl"]


def test_a_sigkill_leftover_names_its_pid_and_the_next_run_removes_it(tmp_path, bundles, requests):
    proc, out = _signalled_run(tmp_path, bundles["sasrec"], requests, "SIGKILL")
    assert proc.returncode == -signal.SIGKILL
    pid = re.match(r"at signal: (\d+) ", proc.stderr)[1]
    left = [f for f in files(tmp_path) if f != "requests.jsonl"]
    assert len(left) == 1 and re.fullmatch(rf"\.recs\.jsonl\.genrec-tmp-{pid}-[0-9a-f]{{8}}", left[0])
    again = genrec_run(bundles["sasrec"], "--input", tmp_path / "requests.jsonl", "--output", out)
    assert again.returncode == 0, again.stderr
    assert again.stderr.splitlines()[0] == f"note: removed {tmp_path / left[0]}, left by process {pid} (gone) " \
                                           f"while writing {out}"
    assert files(tmp_path) == ["recs.jsonl", "requests.jsonl"] and len(read_jsonl(out)) == len(requests)


def test_a_closed_stdout_ends_quietly_with_141(tmp_path, bundles, requests):
    """``genrec-run ... | head -1``, made deterministic: the reader is gone before the first write."""
    src = tmp_path / "requests.jsonl"
    write_jsonl(src, as_json(requests))
    r, w = os.pipe()
    os.close(r)
    exe = [sys.executable, "-c", "from genrec.cli import run_main; run_main()"]
    try:
        proc = subprocess.run(exe + [str(bundles["sasrec"]), "--input", str(src)], stdout=w,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(w)
    assert proc.returncode == 141 and proc.stderr == ""


def test_results_stream_to_stdout_before_the_input_ends(bundles, requests):
    """The first batch's results come back while stdin is still open: were the input read whole
    first, the blocking readline below would never return (the test would time out)."""
    lines = [json.dumps(r) + "\n" for r in as_json(requests)]
    exe = [sys.executable, "-c", "from genrec.cli import run_main; run_main()"]
    proc = subprocess.Popen(exe + [str(bundles["sasrec"]), "--batch-size", "4", "--k", "3"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("".join(lines[:4]))
        proc.stdin.flush()
        first = [json.loads(proc.stdout.readline()) for _ in range(4)]
        assert [f["user_id"] for f in first] == [r.user_id for r in requests[:4]]
        proc.stdin.write("".join(lines[4:]))
        proc.stdin.close()
        rest = proc.stdout.read().splitlines()
        assert proc.wait(timeout=300) == 0 and len(rest) == len(requests) - 4
    finally:
        proc.kill() if proc.poll() is None else None
        proc.stderr.close()
        proc.stdout.close()


def _peak_rss_mib(args: list[str]) -> float:
    exe = [sys.executable, "-c", "from genrec.cli import run_main; run_main()"]
    proc = subprocess.Popen(exe + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err
    return usage.ru_maxrss / 1024


def test_memory_is_bounded_by_the_batch_not_the_input(tmp_path, bundles, beauty):
    """Ten times the input (long histories: ~60 MiB of Python lists if held) costs next to no
    extra peak memory."""
    raw = beauty.item_map.to_raw
    rows = []
    for u in range(len(beauty)):
        items = raw(beauty.items[u]).tolist()
        rows.append(json.dumps({"user_id": u, "items": (items * (200 // len(items) + 1))[:200]}))
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    small.write_text("\n".join(rows[:300]) + "\n")
    big.write_text("\n".join(rows * 1) + "\n")
    common = [str(bundles["sasrec"]), "--threads", "1", "--k", "1", "--output", str(tmp_path / "out.jsonl")]
    base = _peak_rss_mib(common + ["--input", str(small)])
    peak = _peak_rss_mib(common + ["--input", str(big)])
    assert peak - base < 15, (base, peak)
