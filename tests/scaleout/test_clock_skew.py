"""Issue 10, fault 5: hosts' clocks differ. A limiter whose wall clock runs 5 s ahead of
the web processes' must not make every grant look "stale" (each then asked for three
times, charged three times, and answered 503): lateness is measured on each web
process's own monotonic clock, and no wall time crosses hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scaleout.test_many_processes import ACCOUNT, SANDBOX, TEAM, assert_upstream_held, burst
from tests.servers import SluiceServer

pytestmark = [pytest.mark.services, pytest.mark.alone]

SKEWED_CLOCK = Path(__file__).parent / "skewed_clock"  # a sitecustomize moving time.time


async def test_a_limiter_5_seconds_ahead_changes_nothing(
    tmp_path, private_redis, postgres_database
):
    server = SluiceServer(
        tmp_path,
        sandbox=SANDBOX,
        web_processes=2,
        limiter_worker=True,
        env={"REDIS_URL": private_redis.url, "DATABASE_URL": postgres_database},
        worker_env={"PYTHONPATH": str(SKEWED_CLOCK), "SLUICE_TEST_CLOCK_OFFSET": "5"},
    )
    with server:
        server.make_profile("account", ACCOUNT, account=True)
        server.make_profile("team", TEAM)
        keys = [server.issue_key("skewed", profile="team")]
        statuses = await burst(server, keys, total=120, concurrency=16)
        assert statuses == [200] * 120, statuses  # no 503 "limiter did not answer", none refused
        assert_upstream_held(server)  # and the limit held: 0 upstream 429s, none over
        # Before, every grant was "stale" by the skew. A grant can still be genuinely late
        # on a loaded machine (and is asked for again): a few, not all.
        logs = "".join(server.log(f"serve-{port}.log") for port in server.ports)
        assert logs.count("late; asking again") < len(statuses) // 4, logs
        assert "Traceback" not in server.log("worker.log")
