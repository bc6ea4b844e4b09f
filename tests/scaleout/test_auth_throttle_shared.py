"""The auth-failure throttle holds across web processes: the failures are counted in
Redis, per client address, so a guesser gains nothing by spreading over processes."""

from __future__ import annotations

import pytest
import redis

from limiter.gateway.app import AUTH_FAILURES_PER_MINUTE
from limiter.gateway.throttle import AuthThrottle
from tests.fuzz.raw import raw_request
from tests.gateway.test_auth_throttle import assert_throttled
from tests.servers import SluiceServer

pytestmark = pytest.mark.services


def test_failures_are_counted_across_web_processes(
    tmp_path, private_redis, postgres_database
) -> None:
    env = {"REDIS_URL": private_redis.url, "DATABASE_URL": postgres_database}
    with SluiceServer(tmp_path, web_processes=2, limiter_worker=True, env=env) as server:
        good = server.issue_key("shared-throttle")
        first, second = server.urls
        source = "127.0.0.24"

        def call(url: str, key: str):
            return raw_request(
                url,
                "GET",
                "/v1/models",
                headers=[("authorization", f"Bearer {key}".encode())],
                source=source,
            )

        for i in range(AUTH_FAILURES_PER_MINUTE):
            response = call(first if i % 2 else second, f"sk-sluice-wrong-{i}")
            assert response.status == 401, f"failure {i + 1}: {response}"
        assert_throttled(call(first, "sk-sluice-wrong"))
        assert_throttled(call(second, "sk-sluice-wrong"))
        for url in (first, second):
            assert call(url, good).status == 200
        counters = redis.Redis.from_url(private_redis.url).keys("sluice:authfail:*")
        assert len(counters) == 1 and counters[0].endswith(source.encode())


async def test_waiting_reads_the_shared_count_without_adding_to_it(private_redis) -> None:
    """The login throttle asks before checking a password (dashboard/auth_throttle.py):
    two processes see one count, and asking counts nothing."""
    first, second = (AuthThrottle(3, redis_url=private_redis.url) for _ in range(2))
    for _ in range(3):
        assert await second.waiting("login-account:ops") == 0
        await first.failed("login-account:ops")
    assert 0 < await second.waiting("login-account:ops") <= 60
    assert await second.waiting("login-account:other") == 0
    assert await first.failed("login-account:ops") > 0  # the fourth failure: only three asked
