"""The auth-failure throttle slows guessers and never refuses a valid key.

Behind a load balancer every caller shares one address: 30 bad keys from anyone there
must not lock the other teams out. X-Forwarded-For counts only from proxies named in
SLUICE_TRUSTED_PROXIES. Each test sends from its own loopback address, so its failures
throttle nobody else.
"""

from __future__ import annotations

import json
import logging

import pytest

from limiter.gateway import errors
from limiter.gateway.app import AUTH_FAILURES_PER_MINUTE
from limiter.gateway.throttle import AuthThrottle, client_address, trusted_networks
from tests.fuzz.raw import RawResponse, raw_request
from tests.servers import SluiceServer, free_port

MODELS = "/v1/models"


def call(
    server: SluiceServer, key: str, source: str, forwarded_for: str | None = None
) -> RawResponse:
    headers = [("authorization", f"Bearer {key}".encode())]
    if forwarded_for is not None:
        headers.append(("x-forwarded-for", forwarded_for.encode()))
    return raw_request(server.url, "GET", MODELS, headers=headers, source=source)


def assert_throttled(response: RawResponse) -> None:
    assert response.status == 429, str(response)
    error = json.loads(response.body)["error"]
    assert error["code"] == "auth_rate_limited"
    assert error["message"] == errors.MSG_TOO_MANY_AUTH_FAILURES


def fail_up_to_the_limit(server: SluiceServer, source: str, forwarded_for=lambda i: None) -> None:
    for i in range(AUTH_FAILURES_PER_MINUTE):
        response = call(server, f"sk-sluice-wrong-{i}", source, forwarded_for(i))
        assert response.status == 401, f"failure {i + 1}: {response}"


def test_a_valid_key_goes_through_an_address_over_the_limit(shared_server: SluiceServer) -> None:
    source = "127.0.0.21"
    good = shared_server.issue_key("throttle-neighbour")
    fail_up_to_the_limit(shared_server, source)
    assert_throttled(call(shared_server, "sk-sluice-wrong-again", source))
    answer = call(shared_server, good, source)
    assert answer.status == 200, str(answer)
    assert_throttled(call(shared_server, "sk-sluice-still-wrong", source))  # failures stay slowed


@pytest.fixture(scope="module")
def proxied_server(tmp_path_factory: pytest.TempPathFactory):
    env = {"SLUICE_TRUSTED_PROXIES": "127.0.0.22,10.9.0.0/16"}
    with SluiceServer(tmp_path_factory.mktemp("proxied"), env=env) as server:
        yield server


def test_forwarded_for_from_a_trusted_proxy_names_the_caller(proxied_server: SluiceServer) -> None:
    proxy = "127.0.0.22"
    # The left part of the chain is the caller's to forge; the right-most hop that is not
    # a trusted proxy was written by our proxy, and that is who is counted.
    fail_up_to_the_limit(proxied_server, proxy, lambda i: f"192.0.2.{i}, 198.51.100.7")
    assert_throttled(call(proxied_server, "sk-sluice-wrong", proxy, "203.0.113.1, 198.51.100.7"))
    # Through a second trusted hop, the same caller is still the same caller.
    assert_throttled(call(proxied_server, "sk-sluice-wrong", proxy, "198.51.100.7, 10.9.3.4"))
    # Everyone else behind the same proxy is not throttled.
    assert call(proxied_server, "sk-sluice-wrong", proxy, "198.51.100.8").status == 401
    good = proxied_server.issue_key("behind-the-proxy")
    assert call(proxied_server, good, proxy, "198.51.100.7").status == 200


def test_forwarded_for_from_anyone_else_is_ignored(proxied_server: SluiceServer) -> None:
    source = "127.0.0.23"
    fail_up_to_the_limit(proxied_server, source, lambda i: f"198.51.100.{100 + i}")
    assert_throttled(call(proxied_server, "sk-sluice-wrong", source, "198.51.100.250"))


@pytest.mark.parametrize(
    ("peer", "chain", "expected"),
    [
        ("127.0.0.9", "1.2.3.4", "127.0.0.9"),  # not a trusted proxy: its header is ignored
        ("10.0.0.1", None, "10.0.0.1"),
        ("10.0.0.1", "1.2.3.4", "1.2.3.4"),
        ("10.0.0.1", "6.6.6.6, 1.2.3.4", "1.2.3.4"),
        ("10.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.7", "1.2.3.4"),  # skips trusted hops from the right
        ("10.0.0.1", "10.0.0.8, 10.0.0.7", "10.0.0.8"),  # all proxies: the furthest one
        ("10.0.0.1", " , ", "10.0.0.1"),
        ("10.0.0.1", "2001:db8::1", "2001:db8::1"),
        ("10.0.0.1", "not-an-address", "not-an-address"),
    ],
)
def test_client_address(peer: str, chain: str | None, expected: str) -> None:
    assert client_address(peer, chain, trusted_networks(["10.0.0.0/8"])) == expected


async def test_a_redis_error_falls_back_to_counting_in_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    throttle = AuthThrottle(
        3, redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="limiter.gateway.throttle"):
        waits = [await throttle.failed("192.0.2.1") for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0] and 0 < waits[3] <= 60
    warnings = [r for r in caplog.records if "Redis" in r.getMessage()]
    assert len(warnings) == 1  # said once, not once per failure


async def test_the_in_process_counter_is_bounded() -> None:
    throttle = AuthThrottle(3, max_addresses=100)
    for i in range(1000):
        await throttle.failed(f"192.0.2.{i}")
    assert len(throttle.memory) <= 100


async def test_waiting_counts_nothing_in_process() -> None:
    throttle = AuthThrottle(2)
    assert await throttle.waiting("10.1.2.3") == 0
    await throttle.failed("10.1.2.3")
    assert await throttle.waiting("10.1.2.3") == 0
    await throttle.failed("10.1.2.3")
    assert 0 < await throttle.waiting("10.1.2.3") <= 60
    assert await throttle.waiting("10.1.2.4") == 0
