"""The web process's cache of promised refusals (limiter/protocol/refused.py)."""

from __future__ import annotations

import pytest

from limiter.protocol import events
from limiter.protocol.events import DecisionMessage
from limiter.protocol.refused import KnownRefusals

WHERE = ("key-1", "chat", "m")


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def refusal(refused_for: float | None = 2.0, reason: str = events.RATE_LIMITED) -> DecisionMessage:
    message: DecisionMessage = {
        "type": events.DECISION,
        "ticket": "t",
        "kind": "refuse",
        "lease": "",
        "reason": reason,
        "scope": "key",
        "retry_after": 2.5,
        "waited": 0.0,
        "limit": 60,
        "remaining": 0,
        "reset": 3.0,
        "max_wait": 0.0,
        "at": 1234.0,
        "limiter": "l",
    }
    if refused_for is not None:
        message["refused_for"] = refused_for
        message["refused_scope"] = "key"
    return message


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_promise_refuses_until_it_ends_counted_from_the_send(clock):
    cache = KnownRefusals(clock)
    sent = clock.now
    clock.now += 0.5  # the answer took half a second: the promise still counts from the send
    cache.learn(WHERE, refusal(2.0), sent, cache.generation)
    clock.now = sent + 1.0
    answer = cache.check(WHERE)
    assert answer is not None
    assert (answer["reason"], answer["limit"], answer["remaining"]) == ("rate_limited", 60, 0)
    assert answer["retry_after"] == pytest.approx(1.5)  # counted down
    assert answer["reset"] == pytest.approx(2.0)
    clock.now = sent + 2.0
    assert cache.check(WHERE) is None  # ended: ask the limiter
    assert len(cache) == 0 and cache.answered == 1


def test_retry_after_is_never_shorter_than_what_is_left_of_the_promise(clock):
    cache = KnownRefusals(clock)
    message = refusal(5.0)
    message["retry_after"] = 1.0
    cache.learn(WHERE, message, clock.now, cache.generation)
    clock.now += 2.0
    answer = cache.check(WHERE)
    assert answer is not None and answer["retry_after"] == pytest.approx(3.0)


def test_other_calls_are_not_covered(clock):
    cache = KnownRefusals(clock)
    cache.learn(WHERE, refusal(), clock.now, cache.generation)
    assert cache.check(("key-1", "chat", "other-model")) is None
    assert cache.check(("key-2", "chat", "m")) is None
    assert cache.check(("key-1", "completions", "m")) is None


@pytest.mark.parametrize(
    "message",
    [
        refusal(None),  # no promise
        refusal(0.0),
        refusal(-1.0),
        refusal(float("nan")),
        refusal(2.0, reason=events.INVALID_UNITS),  # not a rate limit
    ],
)
def test_only_a_promise_is_kept(clock, message):
    cache = KnownRefusals(clock)
    cache.learn(WHERE, message, clock.now, cache.generation)
    assert cache.check(WHERE) is None


def test_a_promise_already_over_is_not_kept(clock):
    cache = KnownRefusals(clock)
    sent = clock.now
    clock.now += 3.0
    cache.learn(WHERE, refusal(2.0), sent, cache.generation)
    assert len(cache) == 0


def test_a_clear_drops_every_promise_and_any_decided_before_it(clock):
    cache = KnownRefusals(clock)
    cache.learn(WHERE, refusal(), clock.now, cache.generation)
    sent, generation = clock.now, cache.generation  # a ticket on its way...
    cache.clear()  # ...when the configuration changes
    assert cache.check(WHERE) is None
    cache.learn(WHERE, refusal(), sent, generation)  # decided under the old configuration
    assert cache.check(WHERE) is None
    cache.learn(WHERE, refusal(), clock.now, cache.generation)
    assert cache.check(WHERE) is not None


def test_the_cache_is_bounded_expired_first_then_oldest(clock):
    cache = KnownRefusals(clock, max_entries=3)
    cache.learn(("a", "chat", "m"), refusal(1.0), clock.now, 0)
    cache.learn(("b", "chat", "m"), refusal(10.0), clock.now, 0)
    cache.learn(("c", "chat", "m"), refusal(10.0), clock.now, 0)
    clock.now += 2.0  # a's promise is over
    cache.learn(("d", "chat", "m"), refusal(10.0), clock.now, 0)
    assert len(cache) == 3 and cache.check(("b", "chat", "m")) is not None
    cache.learn(("e", "chat", "m"), refusal(10.0), clock.now, 0)  # none expired: b goes
    assert len(cache) == 3
    assert cache.check(("b", "chat", "m")) is None
    assert all(cache.check((k, "chat", "m")) is not None for k in "cde")
