"""``genrec-run --engine ray``: real Ray (a 2-CPU local cluster this module starts once), real
onnxruntime sessions on real bundles, real Beauty requests; compared with the single-process
run, with an actor killed mid-job, with bad rows.

Ray's start-up is the cost (a few seconds for the cluster, a few per actor pool), so the
cluster is shared by the module and each test is one job.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_run_cli import as_json, genrec_run, read_jsonl, write_jsonl

from genrec.cli import invoke
from genrec.runtimes.cli import run_command

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for the module; yields its address (for subprocesses)."""
    import logging

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def many(requests, copies: int) -> list[dict]:
    """``copies`` of the real requests, each with its own user id (so rows can be told apart)."""
    rows = as_json(requests)
    return [{**r, "user_id": f"{r['user_id']}-{c}"} for c in range(copies) for r in rows]


def single_process(bundle, src, out, *args) -> list[dict]:
    code = invoke(run_command, [str(bundle), "--input", str(src), "--output", str(out), "--threads", "1", *args])
    assert code == 0
    return read_jsonl(out)


def on_ray(bundle, src, out, *args) -> int:
    return invoke(run_command, [str(bundle), "--engine", "ray", "--input", str(src), "--output", str(out), *args])


def test_a_cluster_job_equals_the_single_process_run(cluster, tmp_path, bundles, requests):
    """The real CLI in a subprocess joins the cluster by address; JSONL in, Parquet out, in
    input order: every row equals genrec-run's (user_id, items, scores to the bit)."""
    src = tmp_path / "requests.jsonl"
    write_jsonl(src, many(requests, 4))  # 40 requests, 5 batches of the largest gear (8)
    want = single_process(bundles["hstu"], src, tmp_path / "single.jsonl", "--k", "5")
    out = tmp_path / "recs.parquet"
    proc = genrec_run(bundles["hstu"], "--engine", "ray", "--ray-address", cluster, "--actors", 2,
                      "--preserve-order", "--input", src, "--output", out, "--k", 5)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    got = pq.read_table(out).to_pylist()
    assert got == want
    lines = proc.stderr.strip().splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("40 requests in 5 batches on "))
    assert "requests/s overall" in lines[head]
    actors = lines[head + 1:]
    assert actors and all(a.startswith("  actor ") and "requests/s while busy" in a for a in actors)
    assert sum(int(a.split(": ")[1].split()[0]) for a in actors) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs.parquet", "requests.jsonl", "single.jsonl"]


def test_sampled_slates_from_parquet_parts_equal_one_generate_call(cluster, tmp_path, bundles, requests, capsys):
    """A directory of two Parquet parts, no --preserve-order: the same slates (seeded by each
    request's place in the whole input) as genrec-run on the concatenated input."""
    import pyarrow as pa

    rows = many(requests, 2)
    src = tmp_path / "requests.jsonl"
    write_jsonl(src, rows)
    args = ("--generate", "3", "--strategy", "sample", "--seed", "7")
    want = single_process(bundles["sasrec"], src, tmp_path / "single.jsonl", *args)
    parts = tmp_path / "parts"
    parts.mkdir()
    cols = ("user_id", "items", "timestamps", "request_time", "exclude", "candidates")
    for i, chunk in enumerate((rows[:7], rows[7:])):  # parts of unequal size: offsets matter
        table = pa.table({c: [r.get(c) for r in chunk] for c in cols},
                         schema=pa.schema([("user_id", pa.string()), *[(c, pa.list_(pa.int64())) for c in
                                           ("items", "timestamps")], ("request_time", pa.int64()),
                                           *[(c, pa.list_(pa.int64())) for c in ("exclude", "candidates")]]))
        pq.write_table(table, parts / f"part-{i:05d}.parquet")
    (parts / "_SUCCESS").write_text("")
    out = tmp_path / "slates.jsonl"
    assert on_ray(bundles["sasrec"], parts, out, *args) == 0, capsys.readouterr().err
    got = sorted(read_jsonl(out), key=lambda r: r["user_id"])
    want = sorted(want, key=lambda r: r["user_id"])
    assert [(g["user_id"], g["items"]) for g in got] == [(w["user_id"], w["items"]) for w in want]
    for g, w in zip(got, want):  # batches cut elsewhere (parts of 7 and 13): float32 rounding only
        assert g["scores"] == pytest.approx(w["scores"], abs=1e-5)
        assert g["score"] == pytest.approx(w["score"], abs=1e-4)


def test_an_actor_that_dies_is_restarted_and_no_row_is_lost_or_doubled(cluster, tmp_path, bundles, requests,
                                                                       capsys, monkeypatch):
    """GENREC_RAY_FAIL_AFTER=2: the first actor to finish its 2nd batch exits hard (os._exit)
    holding it; Ray restarts it and retries the task; every request appears exactly once."""
    src = tmp_path / "requests.jsonl"
    write_jsonl(src, many(requests, 4))
    want = single_process(bundles["hstu"], src, tmp_path / "single.jsonl", "--batch-size", "4")
    monkeypatch.setenv("GENREC_RAY_FAIL_AFTER", "2")
    out = tmp_path / "recs.jsonl"
    code = on_ray(bundles["hstu"], src, out, "--batch-size", "4", "--actors", "2")
    err = capsys.readouterr().err
    assert code == 0, err
    assert "note: GENREC_RAY_FAIL_AFTER=2: an actor exited after its batch 2; Ray restarted it" in err
    assert "came back twice" not in err  # Ray redid the task whole: the driver's guard had nothing to drop
    got = read_jsonl(out)
    assert len(got) == len(want) == 40
    assert sorted(got, key=lambda r: r["user_id"]) == sorted(want, key=lambda r: r["user_id"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs.jsonl", "requests.jsonl", "single.jsonl"]


def test_bad_rows_follow_genrec_runs_rules(cluster, tmp_path, bundles, requests, capsys):
    """Without --skip-invalid: exit 1, one error line naming the row, nothing written. With it:
    each bad row listed, the rest written (the same rows as genrec-run's)."""
    good = as_json(requests[:4])
    rows = [good[0], '{"user_id": "x", "items": [1,', good[1], {**good[3], "items": [0]}, good[2], good[3]]
    src = tmp_path / "requests.jsonl"
    write_jsonl(src, rows)
    out = tmp_path / "recs.parquet"
    assert on_ray(bundles["hstu"], src, out, "--preserve-order") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: {src} line 2: not valid JSON (Expecting value at column 30) "
                       "(1 more bad line(s) in its batch); nothing was written (--skip-invalid runs the "
                       "valid lines)")
    assert [line for line in err if line.startswith("error:")] == [err[-1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["requests.jsonl"]

    assert on_ray(bundles["hstu"], src, out, "--preserve-order", "--skip-invalid") == 0
    err = capsys.readouterr().err.splitlines()
    skipped = [line for line in err if line.startswith("skipped ")]
    assert [s.split(":")[0] for s in skipped] == [f"skipped {src} line {n}" for n in (2, 4)]
    assert "unknown item id 0" in skipped[1]
    assert next(line for line in err if " requests, 2 skipped in " in line).startswith("4 requests, 2 skipped")
    want = single_process(bundles["hstu"], src, tmp_path / "single.jsonl", "--skip-invalid")
    assert pq.read_table(out).to_pylist() == want


def test_without_ray_the_engine_is_one_error_line_with_the_install_command(tmp_path, bundles):
    """Ray made unimportable in the child (as on a machine without the extra)."""
    src = tmp_path / "requests.jsonl"
    src.write_text("")
    code = ("import sys; sys.modules['ray'] = None; from genrec.cli import run_main; "
            "sys.argv = ['genrec-run'] + sys.argv[1:]; run_main()")
    proc = subprocess.run([sys.executable, "-c", code, str(bundles["sasrec"]), "--engine", "ray", "--input",
                           str(src), "--output", str(tmp_path / "out.parquet")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "GENREC_DEBUG": ""})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --engine ray needs Ray Data")
    assert lines[0].endswith("pip install genrec-deploy[ray]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["requests.jsonl"]


@pytest.mark.parametrize("args, message", [
    (["--actors", "2"], "--actors require --engine ray"),
    (["--preserve-order"], "--preserve-order require --engine ray"),
    (["--engine", "ray"], "not stdin or stdout"),
])
def test_ray_usage_errors(bundles, args, message, capsys):
    assert invoke(run_command, [str(bundles["sasrec"]), *args]) == 2
    assert message in capsys.readouterr().err


def test_an_output_of_another_format_is_refused_before_any_work(tmp_path, bundles, capsys):
    src = tmp_path / "requests.jsonl"
    src.write_text("")
    assert on_ray(bundles["sasrec"], src, tmp_path / "out.csv") == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --output {tmp_path / 'out.csv'}: the format follows the extension; end it in .parquet or .jsonl"]
