"""The upstream client's pieces that need no server: header parsing, and the jar that
keeps no cookies (set through a private httpx attribute, so pinned and checked here)."""

from __future__ import annotations

import httpx
import pytest

from limiter.upstream import parse_seconds, rate_headers, requested_wait, without_cookies


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2", 2.0),
        ("1.5", 1.5),
        ("250ms", 0.25),
        ("1m2.5s", 62.5),
        ("6m0s", 360.0),
        ("3s", 3.0),
        (" 4 ", 4.0),
        ("-3", 0.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("1m", None),
        ("ms", None),
    ],
)
def test_parse_seconds_is_lenient(value, seconds) -> None:
    assert parse_seconds(value) == seconds


def test_requested_wait_prefers_milliseconds_then_retry_after_then_reset() -> None:
    assert requested_wait({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert requested_wait({"retry-after-ms": "odd", "retry-after": "9"}) == 9.0
    assert requested_wait({"x-ratelimit-reset": "0.4"}) == 0.4
    assert (
        requested_wait({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}) is None
    )  # an HTTP date: not read
    assert requested_wait({}) is None


def test_rate_headers_keeps_only_togethers_limit_headers() -> None:
    headers = {
        "x-ratelimit-limit": "10",
        "x-tokenlimit-remaining": "5",
        "content-type": "json",
        "x-request-id": "r",
    }
    assert rate_headers(headers) == {"x-ratelimit-limit": "10", "x-tokenlimit-remaining": "5"}


async def test_no_cookie_set_by_one_answer_rides_on_the_next_call() -> None:
    seen: list[str | None] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"set-cookie": "session=team-a; Path=/"})

    async with without_cookies(
        httpx.AsyncClient(transport=httpx.MockTransport(upstream))
    ) as client:
        await client.get("http://upstream.test/v1/models")
        await client.get("http://upstream.test/v1/models")
        assert not client.cookies  # the attribute set is the jar httpx really uses
    assert seen == [None, None]
