"""One fresh fuzzing Sluice per test module (see tests/fuzz/server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.server import fuzz_sluice
from tests.servers import SluiceServer


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SluiceServer]:
    with fuzz_sluice(tmp_path_factory.mktemp("fuzz")) as server:
        yield server
