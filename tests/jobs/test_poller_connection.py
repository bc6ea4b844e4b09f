"""The job poller keeps its database connection from pass to pass (limiter/jobs/poller.py
`_connected_and_pending`), on PostgreSQL, seen by the backend that serves it: two passes
are served by the same backend; a backend the database ends (as a restart would) is
replaced by the next pass, which does not fail.

The passes run in the deployment's own Django shell (`SluiceServer.python`), as the poller
runs them in `serve`: one after another in one thread. Counting the database's new
backends from outside cannot tell the poller's apart from the other background loops'."""

from __future__ import annotations

import pytest

from tests.conftest import POSTGRES_URL, need, reachable
from tests.databases import postgres_database
from tests.servers import SluiceServer

pytestmark = pytest.mark.services

BACKEND = "connection.connection.info.backend_pid"


@pytest.fixture(scope="module")
def server_on_postgres(tmp_path_factory):
    need(reachable(POSTGRES_URL), f"PostgreSQL is not reachable at {POSTGRES_URL}")
    with postgres_database(POSTGRES_URL, prefix="sluice_poller") as url:
        env = {"DATABASE_URL": url}
        with SluiceServer(tmp_path_factory.mktemp("poller-connection"), env=env) as server:
            yield server


def backends(server: SluiceServer, between: str) -> tuple[int, int]:
    """The backends that served a pass, then another after `between` ran."""
    first, second = server.python(
        "from django.db import connection\n"
        "from limiter.jobs.poller import _connected_and_pending\n"
        f"_connected_and_pending(); first = {BACKEND}\n"
        f"{between}\n"
        f"_connected_and_pending(); print(first, {BACKEND})"
    ).split()
    return int(first), int(second)


def test_passes_keep_one_backend(server_on_postgres):
    first, second = backends(server_on_postgres, "pass")
    assert first == second


def test_a_backend_the_database_ends_is_replaced_by_the_next_pass(server_on_postgres):
    # Ended from another connection; the pass then finds its own dead, and must not fail.
    end = (
        "import psycopg\n"
        f"with psycopg.connect({POSTGRES_URL!r}, autocommit=True) as other:\n"
        "    other.execute('SELECT pg_terminate_backend(%s)', (first,))"
    )
    first, second = backends(server_on_postgres, end)
    assert first != second
