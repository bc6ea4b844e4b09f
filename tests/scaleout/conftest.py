"""Scale-out fixtures: a private redis-server (tests/servers.py, so that a test may restart
it) and a fresh PostgreSQL database, both real, on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from tests.conftest import POSTGRES_URL, need, need_redis_server, reachable
from tests.servers import private_redis_server


@contextmanager
def _postgres_database() -> Iterator[str]:
    need(reachable(POSTGRES_URL), f"PostgreSQL is not reachable at {POSTGRES_URL}")
    name = f"sluice_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
