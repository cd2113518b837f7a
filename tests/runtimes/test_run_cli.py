"""``genrec-run`` end to end: a real subprocess on a JSONL file, bad lines, --skip-invalid."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict

import pytest
from click.testing import CliRunner

from genrec.runtimes import SearchParams, generate, rank, recommend
from genrec.runtimes.cli import run_command


def genrec_run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("genrec-run")
    cmd = [exe] if exe else [sys.executable, "-c", "from genrec.cli import run_main; run_main()"]
    return subprocess.run(cmd + [str(a) for a in args], input=stdin, capture_output=True, text=True,
                          timeout=300)


def write_jsonl(path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def as_json(requests):
    return [{k: v for k, v in asdict(r).items() if v not in (None, [], ())} for r in requests]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_end_to_end_jsonl_in_a_subprocess(tmp_path, bundles, backends, requests):
    src, out = tmp_path / "requests.jsonl", tmp_path / "recs.jsonl"
    write_jsonl(src, as_json(requests))
    proc = genrec_run(bundles["hstu"], "--input", src, "--output", out, "--k", 5, "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    summary = proc.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"{len(requests)} requests in 2 batches: p50 ") and "requests/s" in summary
    expected = recommend(backends["hstu"][1], requests, 5)
    got = read_jsonl(out)
    assert [g["user_id"] for g in got] == [r.user_id for r in requests]
    assert [g["items"] for g in got] == [e.items for e in expected]
    for g, e in zip(got, expected):
        assert g["scores"] == pytest.approx(e.scores, abs=1e-5)


def test_bad_lines_stop_the_run_and_write_nothing(tmp_path, bundles, requests):
    good = as_json(requests[:3])
    src, out = tmp_path / "requests.jsonl", tmp_path / "recs.jsonl"
    write_jsonl(src, [good[0], '{"user_id": "x", "items": [1,', good[1], {"user_id": "y", "items": [5522]}])
    proc = genrec_run(bundles["hstu"], "--input", src, "--output", out)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {src} line 2: not valid JSON (Expecting value at column 30) (1 more bad line(s)); "
        "nothing was written (--skip-invalid runs the valid lines)"]
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_skip_invalid_writes_the_valid_lines_and_reports_the_rest(tmp_path, bundles, requests):
    good = as_json(requests[:4])
    backwards = {**good[2], "timestamps": good[2]["timestamps"][::-1]}
    rows = [good[0], "[1, 2]", good[1], {**good[3], "items": [0]}, "", backwards, good[3],
            {**good[0], "items": []}]
    src, out = tmp_path / "requests.jsonl", tmp_path / "recs.jsonl"
    write_jsonl(src, rows)
    result = CliRunner().invoke(run_command, [str(bundles["hstu"]), "--input", str(src), "--output",
                                              str(out), "--skip-invalid", "--k", "3"])
    assert result.exit_code == 0, result.output
    assert [r["user_id"] for r in read_jsonl(out)] == [good[i]["user_id"] for i in (0, 1, 3)]
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    assert [s.split(":")[0] for s in skipped] == [f"skipped {src} line {n}" for n in (2, 4, 6, 8)]
    assert "expected a JSON object" in skipped[0] and "unknown item id 0" in skipped[1]
    assert "timestamps go backwards" in skipped[2] and "empty history" in skipped[3]
    assert result.stderr.splitlines()[-1].startswith("3 requests, 4 skipped in 1 batch")


def test_generate_and_rank_modes_match_the_api(tmp_path, bundles, backends, requests):
    torch_backend = backends["gpt"][0]
    src = tmp_path / "requests.jsonl"
    write_jsonl(src, as_json(requests))
    runner = CliRunner()
    res = runner.invoke(run_command, [str(bundles["gpt"]), "--backend", "torch", "--input", str(src),
                                      "--generate", "3", "--strategy", "beam", "--beams", "2"])
    assert res.exit_code == 0, res.output
    expected = generate(torch_backend, requests, 3, SearchParams("beam", num_beams=2))
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["items"] for x in lines] == [e.items for e in expected]
    assert [x["score"] for x in lines] == pytest.approx([e.score for e in expected])
    res = runner.invoke(run_command, [str(bundles["gpt"]), "--input", str(src), "--rank", "--batch-size", "3"])
    assert res.exit_code == 0, res.output
    ranked = rank(torch_backend, requests)
    assert [json.loads(x)["items"] for x in res.stdout.splitlines()] == [r.items for r in ranked]


@pytest.mark.parametrize("args, message", [
    (["--seed", "3"], "--seed require --generate N"),
    (["--generate", "2", "--top-p", "0.5"], "--top-p do not apply to --strategy greedy"),
    (["--generate", "2", "--rank"], "--generate and --rank are different modes"),
    (["--threads", str(10**20)], "is not in the range 1<=x<=1024"),  # was a TypeError deep in onnxruntime
])
def test_usage_errors(bundles, args, message):
    res = CliRunner().invoke(run_command, [str(bundles["sasrec"]), *args], input="")
    assert res.exit_code == 2 and message in res.output


def test_sampled_slates_streamed_in_batches_equal_one_api_call(tmp_path, bundles, backends, requests):
    """Streaming cuts the input into batches; the seeds follow each request's place in the
    input, so the file's slates are those of one generate() call on all of it."""
    src, out = tmp_path / "requests.jsonl", tmp_path / "slates.jsonl"
    reqs = requests[:7]
    write_jsonl(src, as_json(reqs))
    proc = genrec_run(bundles["sasrec"], "--input", src, "--output", out, "--generate", 3, "--strategy",
                      "sample", "--seed", 7, "--batch-size", 2, "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    _, ort = backends["sasrec"]
    want = generate(ort, reqs, 3, SearchParams("sample", seed=7))
    assert [r["items"] for r in read_jsonl(out)] == [r.items for r in want]
