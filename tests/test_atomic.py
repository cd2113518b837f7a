"""Tests for all-or-nothing directory and file writes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from genrec.atomic import (OutputPathError, TargetExistsError, atomic_directory, atomic_file, check_writable,
                           clean_leftovers, leftover_name)
from genrec.errors import GenrecError


def _siblings(parent):
    return sorted(p.name for p in parent.iterdir())


def test_directory_success_renames_into_place(tmp_path):
    final = tmp_path / "bundle"
    with atomic_directory(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".bundle.genrec-tmp-{os.getpid()}-")
        assert not final.exists()
        (tmp / "a.txt").write_text("hello")
    assert (final / "a.txt").read_text() == "hello"
    assert _siblings(tmp_path) == ["bundle"]


def test_directory_creates_missing_parent(tmp_path):
    final = tmp_path / "out" / "deep" / "bundle"
    with atomic_directory(final) as tmp:
        (tmp / "x").write_bytes(b"1")
    assert (final / "x").read_bytes() == b"1"


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_directory_exception_leaves_nothing(tmp_path, exc):
    final = tmp_path / "bundle"
    with pytest.raises(type(exc)):
        with atomic_directory(final) as tmp:
            (tmp / "half.onnx").write_bytes(b"partial")
            raise exc
    assert _siblings(tmp_path) == []


def test_directory_existing_target_untouched_without_force(tmp_path):
    final = tmp_path / "bundle"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(GenrecError, match="--force") as info:
        with atomic_directory(final):
            pytest.fail("block must not run")
    assert isinstance(info.value, (TargetExistsError, FileExistsError))
    assert (final / "old.txt").read_text() == "old"
    assert _siblings(tmp_path) == ["bundle"]


def test_directory_target_appearing_during_block_is_not_clobbered(tmp_path):
    final = tmp_path / "bundle"
    with pytest.raises(TargetExistsError):
        with atomic_directory(final) as tmp:
            (tmp / "new.txt").write_text("new")
            final.mkdir()
            (final / "other.txt").write_text("other")
    assert _siblings(final) == ["other.txt"]
    assert _siblings(tmp_path) == ["bundle"]


def test_directory_force_replaces(tmp_path):
    final = tmp_path / "bundle"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_directory(final, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _siblings(final) == ["new.txt"]
    assert _siblings(tmp_path) == ["bundle"]


def test_directory_force_with_failure_keeps_old(tmp_path):
    final = tmp_path / "bundle"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(final, force=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise KeyboardInterrupt
    assert _siblings(final) == ["old.txt"]
    assert _siblings(tmp_path) == ["bundle"]


def test_file_success_text_and_binary(tmp_path):
    p = tmp_path / "manifest.json"
    with atomic_file(p) as fh:
        fh.write("{}\n")
    assert p.read_text() == "{}\n"
    with atomic_file(p, "wb") as fh:
        fh.write(b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert _siblings(tmp_path) == ["manifest.json"]


@pytest.mark.parametrize("exc", [ValueError("bad"), KeyboardInterrupt()])
def test_file_failure_keeps_old_and_removes_temp(tmp_path, exc):
    p = tmp_path / "manifest.json"
    p.write_text("old")
    with pytest.raises(type(exc)):
        with atomic_file(p) as fh:
            fh.write("new, half written")
            raise exc
    assert p.read_text() == "old"
    assert _siblings(tmp_path) == ["manifest.json"]


def test_file_rejects_read_mode(tmp_path):
    with pytest.raises(ValueError):
        with atomic_file(tmp_path / "x", "r"):
            pass


# --------------------------------------------------------------------------------------------
# leftovers of killed runs, output preflight


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped): what a SIGKILLed run leaves."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(proc.stdout)


def test_leftovers_of_dead_runs_are_removed_and_live_ones_kept(tmp_path, dead_pid):
    final = tmp_path / "recs.jsonl"
    dead_file = tmp_path / leftover_name("recs.jsonl", "tmp", dead_pid)
    dead_file.write_text("half")
    dead_dir = tmp_path / leftover_name("recs.jsonl", "tmp", dead_pid)
    dead_dir.mkdir()
    (dead_dir / "x").write_text("y")
    live = tmp_path / leftover_name("recs.jsonl", "tmp", os.getpid())  # another run at work
    live.write_text("busy")
    other = tmp_path / leftover_name("other.jsonl", "tmp", dead_pid)  # not this path's
    other.write_text("x")
    mine = tmp_path / ".recs.jsonl.tmp-12345678"  # not genrec's pattern
    mine.write_text("x")
    with atomic_file(final) as fh:
        fh.write("new\n")
    assert final.read_text() == "new\n"
    assert _siblings(tmp_path) == sorted([live.name, other.name, mine.name, "recs.jsonl"])


def test_a_target_moved_aside_by_a_killed_force_is_put_back(tmp_path, dead_pid):
    """Killed between the two renames of a forced replace: the old bundle is the only copy."""
    final = tmp_path / "bundle"
    aside = tmp_path / leftover_name("bundle", "old", dead_pid)
    aside.mkdir()
    (aside / "manifest.json").write_text("old")
    notes = clean_leftovers(final)
    assert len(notes) == 1 and notes[0].startswith(f"restored {final}")
    assert (final / "manifest.json").read_text() == "old" and _siblings(tmp_path) == ["bundle"]
    aside.mkdir()  # killed after the second rename: the new bundle is in place, the old one goes
    clean_leftovers(final)
    assert _siblings(tmp_path) == ["bundle"]


def test_check_writable_refuses_bad_outputs_without_leaving_anything(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    os.symlink("loop-b", tmp_path / "loop-a")
    os.symlink("loop-a", tmp_path / "loop-b")
    os.mkfifo(tmp_path / "fifo")
    cases = {
        str(tmp_path / "afile" / "out.jsonl"): "is a file, not a directory",
        str(tmp_path / "afile" / "deeper" / "out.jsonl"): "is a file, not a directory",
        str(tmp_path / "adir"): "it is a directory",
        str(tmp_path / "loop-a"): "a loop of symlinks",
        str(tmp_path / "fifo"): "it is a named pipe, not a regular file",
        "/dev/null": "it is a character device, not a regular file",
        str(tmp_path / ("x" * 250)): "too long",
        "": "the output path is empty",
        str(tmp_path / "a\0b"): "cannot contain a NUL byte",
    }
    before = _siblings(tmp_path)
    for path, message in cases.items():
        with pytest.raises(OutputPathError, match=message):
            check_writable(path)
        with pytest.raises(OutputPathError, match=message):
            with atomic_file(path):
                pytest.fail("the block must not run")
    assert _siblings(tmp_path) == before
    with pytest.raises(OutputPathError, match="exists and is not a directory"):
        with atomic_directory(tmp_path / "afile", force=True):
            pytest.fail("the block must not run")
    assert check_writable(tmp_path / "new" / "deep" / "f.json") == tmp_path / "new" / "deep" / "f.json"
    assert _siblings(tmp_path) == before  # the check made no directories


def test_a_symlinked_output_is_written_through(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "recs.jsonl"
    target.write_text("old")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert check_writable(link) == target
    with atomic_file(link) as fh:
        fh.write("new")
    assert link.is_symlink() and target.read_text() == "new"
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "real" / "later.jsonl")
    with atomic_file(dangling) as fh:
        fh.write("made")
    assert dangling.is_symlink() and (tmp_path / "real" / "later.jsonl").read_text() == "made"
