"""``genrec study scaling`` on the shipped slice: every combination, resume after a stop, refusals.

The interruption is deterministic: ``--stop-after N`` ends the run after N combinations,
exactly where a kill between two combinations would (the results file is rewritten after each).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genrec.cli import cli, run_cli

SLICE = Path(__file__).resolve().parents[1] / "data" / "beauty-slice"
QUICK = ["--data", str(SLICE), "--users", "200", "--set", "epochs=1", "--set", "d_model=16",
         "--set", "num_negatives=32", "--set", "threads=1", "--quiet"]


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _genrec(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        run_cli(cli, args, prog_name="genrec")
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_scaling_resumes_after_a_stop_without_retraining(tmp_path: Path, capsys):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "scaling.json", tmp_path / "scaling.png"
    args = ["study", "scaling", *QUICK, "--archs", "sasrec,llama", "--layers", "1,2",
            "--json", str(out), "--plot", str(png)]
    code, stdout, err = _genrec([*args, "--stop-after", "3"], capsys)
    assert code == 0, err
    first = json.loads(out.read_text())
    assert not first["complete"] and len(first["rows"]) == 3
    assert "3 of 4 combination(s)" in stdout and "rerun the same command to resume" in stdout
    assert "[1/4] sasrec x 1 layer(s)" in err and "[2/4] llama x 1 layer(s)" in err
    assert "[3/4] sasrec x 2 layer(s)" in err  # depth-major: every backbone at a depth first

    code, stdout, err = _genrec(args, capsys)
    assert code == 0, err
    assert "resuming" in err and "[4/4] llama x 2 layer(s)" in err and "[1/4]" not in err
    final = json.loads(out.read_text())
    assert final["complete"] and len(final["rows"]) == 4
    assert final["rows"][:3] == first["rows"]  # read back, not retrained (wall_s equal too)
    assert {(r["arch"], r["layers"]) for r in final["rows"]} == {(a, n) for a in ("sasrec", "llama") for n in (1, 2)}
    for r in final["rows"]:
        assert r["params"] > 0 and r["epochs_run"] == 1
        assert 0 <= r["test"]["NDCG@10"] <= r["test"]["HR@10"] <= 1 and "NDCG@10" in r["valid"]
    by = {(r["arch"], r["layers"]): r["params"] for r in final["rows"]}
    assert by[("llama", 2)] > by[("llama", 1)] and by[("sasrec", 2)] > by[("sasrec", 1)]
    assert "llama" in stdout and "test NDCG@10" in stdout  # the printed table
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same file with other settings is refused, not mixed; --restart starts over
    code, _, err = _genrec([*args, "--set", "lr=0.01"], capsys)
    assert code == 1 and err.strip().startswith("error:") and "other settings (train)" in err
    code, _, err = _genrec([*args, "--set", "lr=0.01", "--restart", "--archs", "gpt", "--layers", "1"], capsys)
    assert code == 0, err
    assert [(r["arch"], r["layers"]) for r in json.loads(out.read_text())["rows"]] == [("gpt", 1)]


@pytest.mark.parametrize("extra, message", [
    (["--layers", "2,x"], "--layers '2,x'"),
    (["--layers", "0"], "--layers '0'"),
    (["--archs", "hstu,bert"], "--archs 'hstu,bert'"),
    (["--width", "0"], "--width 0"),
    (["--set", "num_layers=3"], "num_layers comes from --archs/--layers"),
    (["--set", "protocol=fast"], "protocol='fast'"),
])
def test_scaling_bad_input_is_one_line(tmp_path: Path, capsys, extra, message):
    out = tmp_path / "s.json"
    code, _, err = _genrec(["study", "scaling", *QUICK, "--json", str(out), *extra], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert not out.exists()


def test_scaling_refuses_a_file_that_is_not_a_study(tmp_path: Path, capsys):
    out = tmp_path / "s.json"
    out.write_text('{"something": "else"}')
    code, _, err = _genrec(["study", "scaling", *QUICK, "--json", str(out)], capsys)
    assert code == 1 and "not a scaling-study file" in err and len(err.strip().splitlines()) == 1
