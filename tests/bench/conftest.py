"""The benchmark's servers in its tests start on the test run's migrated databases
(tests/databases.py) instead of migrating their own: none of these tests is about migrating."""

from __future__ import annotations

import pytest

from bench.servers import SQLITE_TEMPLATE
from tests import databases


@pytest.fixture
def migrated_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SQLITE_TEMPLATE, str(databases.sqlite_template()))
