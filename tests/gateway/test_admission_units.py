"""The admission step's arithmetic, without a server: the token estimate a grant
reserves, and the 429's headers."""

from __future__ import annotations

import pytest

from limiter.gateway.admission import quota_headers, rate_limited
from limiter.usage.sizing import DEFAULT_COMPLETION_TOKENS, estimate_tokens


def test_chat_estimate_is_a_quarter_of_the_text_plus_the_completion_asked_for() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "x" * 400},
            {"role": "assistant", "content": "y" * 4},
        ],
        "max_tokens": 50,
    }
    # "user", "assistant" and the contents: 417 characters of text, 105 tokens rounded up.
    assert estimate_tokens(body, "chat") == 105 + 50


@pytest.mark.parametrize("max_tokens", [None, 0, -5, "lots", 1.5])
def test_a_missing_or_odd_max_tokens_reserves_the_default(max_tokens) -> None:
    body = {"messages": [], "max_tokens": max_tokens}
    assert estimate_tokens(body, "completions") == DEFAULT_COMPLETION_TOKENS


def test_embeddings_and_rerank_reserve_no_completion() -> None:
    assert estimate_tokens({"input": ["abcd", "efgh"]}, "embeddings") == 2
    assert estimate_tokens({"query": "q", "documents": ["a" * 8]}, "rerank") == 2


def test_deeply_nested_bodies_are_counted_without_recursion() -> None:
    node: object = "abcd"
    for _ in range(10_000):  # far deeper than Python's recursion limit
        node = [node]
    assert estimate_tokens({"input": node}, "embeddings") == 1


def test_a_429_carries_whole_seconds_milliseconds_and_the_callers_quota() -> None:
    error = rate_limited(
        reason="rate_limited",
        retry_after=1.2,
        message="slow down",
        limited_by="gateway",
        scope="key",
        quota=quota_headers(60, 0, 0.25),
    )
    assert error.status == 429 and error.code == "rate_limited"
    assert error.headers["retry-after"] == "2" and error.headers["retry-after-ms"] == "1200"
    assert error.headers["x-ratelimit-limit-requests"] == "60"
    assert error.headers["x-ratelimit-reset-requests"] == "250ms"
    assert error.headers["x-sluice-limited-by"] == "gateway"
