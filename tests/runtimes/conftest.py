"""Runtime fixtures: real requests from the shipped slice and one backend pair per backbone.

Bundles come from the session-wide ``bundles`` fixture (tests/conftest.py: T=20, C=28,
K'=40, X=28, M=6, gears 1/4/8), exported once per run; backends are opened once per
backbone and closed at the end of the session.
"""

from __future__ import annotations

import pytest

from rt_support import make_requests
from support import SLICE

from genrec.runtimes import Request, get_backend


@pytest.fixture(scope="session")
def beauty():
    from genrec.data import read_sequences

    return read_sequences(SLICE)


@pytest.fixture(scope="session")
def requests(beauty) -> list[Request]:
    return make_requests(beauty)


class _Backends:
    """``backends[arch]`` -> (torch backend, onnxruntime backend) over the same bundle, cached."""

    def __init__(self, bundles):
        self.bundles, self.cache = bundles, {}

    def __getitem__(self, arch: str):
        if arch not in self.cache:
            path = self.bundles[arch]
            self.cache[arch] = (get_backend("torch", path), get_backend("onnxruntime", path, threads=1))
        return self.cache[arch]

    def close(self) -> None:
        for pair in self.cache.values():
            for b in pair:
                b.close()


@pytest.fixture(scope="session")
def backends(bundles):
    b = _Backends(bundles)
    yield b
    b.close()
