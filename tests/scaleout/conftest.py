"""Scale-out fixtures: a private redis-server (tests/servers.py, so that a test may restart
it) and a fresh, migrated PostgreSQL database, both real, on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests import databases
from tests.conftest import POSTGRES_URL, need, need_redis_server, reachable
from tests.servers import private_redis_server


@contextmanager
def _postgres_database() -> Iterator[str]:
    """A migrated PostgreSQL database of the test's own (tests/databases.py)."""
    need(reachable(POSTGRES_URL), f"PostgreSQL is not reachable at {POSTGRES_URL}")
    with databases.postgres_database(POSTGRES_URL) as url:
        yield url


@pytest.fixture
def private_redis():
    need_redis_server()
    with private_redis_server() as server:
        yield server


@pytest.fixture
def postgres_database():
    with _postgres_database() as url:
        yield url


# One cluster for a module whose tests run in order on it (it costs seconds to start).
@pytest.fixture(scope="module")
def module_redis():
    need_redis_server()
    with private_redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def module_postgres():
    with _postgres_database() as url:
        yield url
