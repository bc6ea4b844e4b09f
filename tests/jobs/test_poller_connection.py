"""The job poller keeps its database connection from pass to pass (limiter/jobs/poller.py
`_connected_and_pending`), seen from PostgreSQL's own view of its backends, under a real
`manage.py serve` (whose embedded poller passes once a second): idle, it starts no new
backend; a backend the database ends (as a restart would) is replaced by the next pass,
which does not fail."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.conftest import POSTGRES_URL, need, reachable
from tests.databases import postgres_database
from tests.servers import SluiceServer
from tests.waiting import wait_until

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def server_on_postgres(tmp_path_factory):
    need(reachable(POSTGRES_URL), f"PostgreSQL is not reachable at {POSTGRES_URL}")
    with postgres_database(POSTGRES_URL, prefix="sluice_poller") as url:
        env = {"DATABASE_URL": url}
        with SluiceServer(tmp_path_factory.mktemp("poller-connection"), env=env) as server:
            yield server, url.rsplit("/", 1)[1]


def backends_started_since(database: str, since: object, *, seconds: float = 0.0) -> set[int]:
    """The database's backends started after `since`, seen by looking every 0.1 s for
    `seconds` (a connection opened and closed in between is seen while it lives)."""
    seen: set[int] = set()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        until = time.monotonic() + seconds
        while True:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = %s AND backend_start > %s AND pid <> pg_backend_pid()",
                (database, since),
            ).fetchall()
            seen |= {pid for (pid,) in rows}
            if time.monotonic() >= until:
                return seen
            time.sleep(0.1)


def database_now() -> object:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]


def test_an_idle_poller_opens_no_connection(server_on_postgres):
    server, database = server_on_postgres
    time.sleep(2)  # past the start-up's own connections
    since = database_now()
    # Four passes or more; before, each one connected anew. At most the alerts loop's one
    # (every SLUICE_ALERT_CHECK_INTERVAL, 5 s, it still closes its connection first:
    # limiter/alerts/), not one a second.
    assert len(backends_started_since(database, since, seconds=4.5)) <= 1


def test_a_connection_the_database_ends_is_replaced_by_the_next_pass(server_on_postgres):
    server, database = server_on_postgres
    logged = len(server.log())
    since = database_now()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (database,),
        ).fetchall()
    assert ended and all(ok for (ok,) in ended)
    wait_until(
        lambda: backends_started_since(database, since),
        lambda pids: len(pids) >= 1,
        within=5,
        what="the poller connected again",
    )
    assert "job poller pass failed" not in server.log()[logged:]
