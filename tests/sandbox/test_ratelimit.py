"""The sliding-window limiter, driven by an explicit clock: no sleeping."""

from __future__ import annotations

from sandbox.config import KindLimits
from sandbox.ratelimit import SlidingWindowLimiter, max_in_any_window


def test_per_second_limit_admits_then_refuses_with_exact_reset() -> None:
    limiter = SlidingWindowLimiter()
    limits = KindLimits(requests_per_second=2)

    first = limiter.acquire("k", "chat", limits, now=10.0)
    second = limiter.acquire("k", "chat", limits, now=10.25)
    refused = limiter.acquire("k", "chat", limits, now=10.5)

    assert (first.allowed, first.limit, first.remaining) == (True, 2, 1)
    assert (second.allowed, second.remaining) == (True, 0)
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.reset == 0.5  # the 10.0 admission leaves the window at 11.0
    assert refused.retry_after == 1


def test_slot_frees_exactly_one_window_later() -> None:
    limiter = SlidingWindowLimiter()
    limits = KindLimits(requests_per_second=1)
    assert limiter.acquire("k", "chat", limits, now=5.0).allowed
    assert not limiter.acquire("k", "chat", limits, now=5.999).allowed
    assert limiter.acquire("k", "chat", limits, now=6.0).allowed


def test_refused_requests_are_not_recorded() -> None:
    limiter = SlidingWindowLimiter()
    limits = KindLimits(requests_per_second=1)
    limiter.acquire("k", "chat", limits, now=0.0)
    for step in range(9):
        limiter.acquire("k", "chat", limits, now=0.1 * (step + 1))
    # Had the refusals counted, the window would still be full at 1.0.
    assert limiter.acquire("k", "chat", limits, now=1.0).allowed


def test_minute_window_binds_with_its_own_reset() -> None:
    limiter = SlidingWindowLimiter()
    limits = KindLimits(requests_per_second=10, requests_per_minute=3)
    for t in (0.0, 2.0, 4.0):
        assert limiter.acquire("k", "embeddings", limits, now=t).allowed
    refused = limiter.acquire("k", "embeddings", limits, now=5.0)
    assert (refused.allowed, refused.limit, refused.reset, refused.retry_after) == (
        False,
        3,
        55.0,
        55,
    )


def test_keys_and_kinds_are_independent() -> None:
    limiter = SlidingWindowLimiter()
    limits = KindLimits(requests_per_second=1)
    assert limiter.acquire("a", "chat", limits, now=0.0).allowed
    assert limiter.acquire("b", "chat", limits, now=0.0).allowed
    assert limiter.acquire("a", "rerank", limits, now=0.0).allowed
    assert not limiter.acquire("a", "chat", limits, now=0.0).allowed


def test_unlimited_kind_always_admits() -> None:
    limiter = SlidingWindowLimiter()
    decisions = [limiter.acquire("k", "chat", KindLimits(), now=0.0) for _ in range(100)]
    assert all(d.allowed and d.limit is None for d in decisions)


def test_max_in_any_window_matches_the_limiters_half_open_window() -> None:
    assert max_in_any_window([], 1.0) == 0
    assert max_in_any_window([0.0, 0.5, 0.99, 1.0, 1.5], 1.0) == 3
    assert max_in_any_window([3.0, 0.0, 1.0, 2.0], 1.0) == 1  # unsorted input, 1 s apart


def test_admitted_stream_never_exceeds_limit_in_any_window() -> None:
    limiter = SlidingWindowLimiter()
    limits = KindLimits(requests_per_second=5)
    admitted = [
        t / 37 for t in range(400) if limiter.acquire("k", "chat", limits, now=t / 37).allowed
    ]
    assert max_in_any_window(admitted, 1.0) == 5
