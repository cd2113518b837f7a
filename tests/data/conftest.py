"""Shared fixtures for the data-layer tests: the shipped slice and a tiny file writer."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

SLICE = Path(__file__).resolve().parents[2] / "data" / "beauty-slice"


@pytest.fixture
def slice_dir() -> Path:
    assert (SLICE / "items.txt").is_file(), f"shipped slice missing at {SLICE}"
    return SLICE


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """write("a/items.txt", text) -> path under tmp_path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return _write
