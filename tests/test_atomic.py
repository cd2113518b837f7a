"""Tests for all-or-nothing directory and file writes."""

from __future__ import annotations

import pytest

from genrec.atomic import TargetExistsError, atomic_directory, atomic_file
from genrec.errors import GenrecError


def _siblings(parent):
    return sorted(p.name for p in parent.iterdir())


def test_directory_success_renames_into_place(tmp_path):
    final = tmp_path / "bundle"
    with atomic_directory(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".bundle.tmp-")
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
