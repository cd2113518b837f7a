"""Session-wide fixtures: the shipped Beauty slice, small checkpoints, exported bundles.

Exporting is the slow part of the suite (~20 s a backbone), so each backbone's bundle is
exported once per session and shared by the exporter, runtime and parity tests, which
must treat it as read-only (copy it to tmp_path before changing anything).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support import ARCHS, SLICE, TEST_GEARS, make_checkpoint


@pytest.fixture(scope="session")
def slice_dir() -> Path:
    return SLICE


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {arch: make_checkpoint(arch, root / f"{arch}.pt") for arch in ARCHS}


class _Bundles:
    """Lazily exported bundle per backbone, cached for the session."""

    def __init__(self, root: Path, checkpoints: dict[str, Path]):
        self.root, self.checkpoints, self.cache = root, checkpoints, {}

    def __getitem__(self, arch: str) -> Path:
        if arch not in self.cache:
            from genrec.exporter import export_bundle

            out = self.root / f"bundle-{arch}"
            export_bundle(self.checkpoints[arch], out, topk=40, max_exclude=28, rank_candidates=6,
                          batch_gears=TEST_GEARS, data=SLICE)
            self.cache[arch] = out
        return self.cache[arch]


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, checkpoints) -> _Bundles:
    return _Bundles(tmp_path_factory.mktemp("bundles"), checkpoints)
