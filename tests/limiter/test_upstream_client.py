"""The upstream client's pieces that need no server: header parsing, and the jar that
keeps no cookies (set through a private httpx attribute, so pinned and checked here)."""

from __future__ import annotations

import httpx
import pytest
from django.conf import settings

from limiter.upstream import (
    Target,
    UpstreamClient,
    parse_seconds,
    rate_headers,
    requested_wait,
    without_cookies,
)


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
    # A Retry-After that is the reset rounded up to whole seconds: the reset, exactly.
    assert requested_wait({"retry-after": "1", "x-ratelimit-reset": "0.052"}) == 0.052
    assert requested_wait({"retry-after": "2", "x-ratelimit-reset": "1.200"}) == 1.2
    # One that says more than the reset's rounding is its own answer.
    assert requested_wait({"retry-after": "30", "x-ratelimit-reset": "0.5"}) == 30.0
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


@pytest.mark.parametrize(
    ("path", "params", "headers", "stream"),
    [
        (
            "/chat/completions",
            None,
            {"content-type": "application/json", "x-request-id": "r1"},
            False,
        ),
        ("/files", b"purpose=fine-tune&after=f%201", {"Accept": "text/plain"}, False),
        ("/v2/videos", None, {}, True),
    ],
)
async def test_a_request_is_the_one_build_request_would_make(path, params, headers, stream) -> None:
    """The request is built without `client.build_request` (its merges were a tenth of a
    call's CPU); what goes on the wire must not change: URL, headers (each name once, the
    client's own ones kept, ours winning), body and timeouts."""
    upstream = UpstreamClient()
    target = Target("acct", "a", "https://api.together.xyz/v1/", "sk-secret")
    try:
        url, send_headers = upstream._prepare(target, path, headers, params)
        built = upstream._request("POST", url, b'{"a": 1}', send_headers, 7.5, stream)
        expected = upstream.client.build_request(
            "POST",
            str(url),
            content=b'{"a": 1}',
            headers={**headers, "accept-encoding": "identity", "authorization": "Bearer sk-secret"},
            timeout=httpx.Timeout(
                connect=min(settings.SLUICE_UPSTREAM_CONNECT_TIMEOUT, 7.5),
                read=settings.SLUICE_UPSTREAM_READ_TIMEOUT if stream else 7.5,
                write=7.5,
                pool=min(settings.SLUICE_UPSTREAM_CONNECT_TIMEOUT, 7.5),
            ),
        )
    finally:
        await upstream.aclose()
    assert built.url == expected.url
    assert str(built.url).startswith("https://api.together.xyz/v")
    assert sorted((k.lower(), v) for k, v in built.headers.multi_items()) == sorted(
        (k.lower(), v) for k, v in expected.headers.multi_items()
    )
    assert built.headers["user-agent"].startswith("python-httpx/")
    assert built.headers["accept-encoding"] == "identity"
    assert built.read() == expected.read() == b'{"a": 1}'
    assert built.extensions == expected.extensions
