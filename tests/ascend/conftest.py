"""Fixtures for the Ascend tests: private copies of the session bundles to convert."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def bundle_copy(bundles, tmp_path):
    """A private copy of a session bundle (``bundle_copy("hstu")``), safe to convert."""
    def make(arch: str, name: str = "bundle") -> Path:
        dst = tmp_path / "work" / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(bundles[arch], dst)
        return dst
    return make
