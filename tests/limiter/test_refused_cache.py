"""The web process's cache of promised refusals (limiter/protocol/refused.py)."""

from __future__ import annotations

import pytest

from limiter.protocol import events
from limiter.protocol.events import DecisionMessage
from limiter.protocol.refused import (
    ASK,
    HERD_PER_KEY,
    HERD_WAIT,
    HERD_WINDOW,
    HOLD_AFTER,
    HOLD_PER_KEY,
    HOLD_PER_PROCESS,
    PROMISED,
    WAIT,
    KnownRefusals,
    LocalRefusal,
    Turn,
)

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
    local = cache.refuse(WHERE)
    assert local is not None
    answer = local.decision
    assert (answer["reason"], answer["limit"], answer["remaining"]) == ("rate_limited", 60, 0)
    assert answer["retry_after"] == pytest.approx(1.5)  # counted down
    assert answer["reset"] == pytest.approx(2.0)
    clock.now = sent + 2.0
    assert cache.refuse(WHERE) is None  # ended: ask the limiter
    assert len(cache) == 0 and cache.answered == 1


def test_retry_after_is_never_shorter_than_what_is_left_of_the_promise(clock):
    cache = KnownRefusals(clock)
    message = refusal(5.0)
    message["retry_after"] = 1.0
    cache.learn(WHERE, message, clock.now, cache.generation)
    clock.now += 2.0
    local = cache.refuse(WHERE)
    assert local is not None and local.decision["retry_after"] == pytest.approx(3.0)


def test_other_calls_are_not_covered(clock):
    cache = KnownRefusals(clock)
    cache.learn(WHERE, refusal(), clock.now, cache.generation)
    assert cache.refuse(("key-1", "chat", "other-model")) is None
    assert cache.refuse(("key-2", "chat", "m")) is None
    assert cache.refuse(("key-1", "completions", "m")) is None


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
    assert cache.refuse(WHERE) is None


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
    assert cache.refuse(WHERE) is None
    cache.learn(WHERE, refusal(), sent, generation)  # decided under the old configuration
    assert cache.refuse(WHERE) is None
    cache.learn(WHERE, refusal(), clock.now, cache.generation)
    assert cache.refuse(WHERE) is not None


def test_the_cache_is_bounded_expired_first_then_oldest(clock):
    cache = KnownRefusals(clock, max_entries=3)
    cache.learn(("a", "chat", "m"), refusal(1.0), clock.now, 0)
    cache.learn(("b", "chat", "m"), refusal(10.0), clock.now, 0)
    cache.learn(("c", "chat", "m"), refusal(10.0), clock.now, 0)
    clock.now += 2.0  # a's promise is over
    cache.learn(("d", "chat", "m"), refusal(10.0), clock.now, 0)
    assert len(cache) == 3 and cache.refuse(("b", "chat", "m")) is not None
    cache.learn(("e", "chat", "m"), refusal(10.0), clock.now, 0)  # none expired: b goes
    assert len(cache) == 3
    assert cache.refuse(("b", "chat", "m")) is None
    assert all(cache.refuse((k, "chat", "m")) is not None for k in "cde")


# --- holding a key that keeps coming back (SLUICE_REFUSAL_HOLD) ---------------------------
HOLD = 1.0


def answered_at_once(cache: KnownRefusals, n: int, where=WHERE) -> list[float]:
    holds = []
    for _ in range(n):
        local = cache.refuse(where, HOLD)
        assert local is not None
        holds.append(local.hold)
    return holds


def test_a_key_is_held_only_once_it_keeps_coming_back(clock):
    cache = KnownRefusals(clock)
    cache.learn(WHERE, refusal(5.0), clock.now, cache.generation)
    # The calls a client had in flight when it was told: answered at once.
    assert answered_at_once(cache, HOLD_AFTER) == [0.0] * HOLD_AFTER
    held = cache.refuse(WHERE, HOLD)
    assert held is not None and held.hold == HOLD and cache.held == 1


def test_a_key_that_honours_retry_after_is_never_held(clock):
    cache = KnownRefusals(clock)
    for _ in range(5):  # refused by the limiter, back only once the promise is over
        cache.learn(WHERE, refusal(2.0), clock.now, cache.generation)
        clock.now += 2.0
        assert cache.refuse(WHERE, HOLD) is None  # asks the limiter
    # A new promise counts its own answers: the next ones go at once again.
    cache.learn(WHERE, refusal(2.0), clock.now, cache.generation)
    assert answered_at_once(cache, HOLD_AFTER) == [0.0] * HOLD_AFTER
    assert cache.held == 0


def test_a_hold_never_outlasts_the_promise_and_zero_turns_it_off(clock):
    cache = KnownRefusals(clock)
    cache.learn(WHERE, refusal(2.0), clock.now, cache.generation)
    answered_at_once(cache, HOLD_AFTER)
    clock.now += 1.7
    local = cache.refuse(WHERE, HOLD)
    assert local is not None and local.hold == pytest.approx(0.3)  # what is left of it
    off = cache.refuse(WHERE, 0.0)
    assert off is not None and off.hold == 0.0


def test_a_held_answer_is_counted_down_to_when_it_is_sent(clock):
    cache = KnownRefusals(clock)
    cache.learn(WHERE, refusal(5.0), clock.now, cache.generation)
    answered_at_once(cache, HOLD_AFTER)
    local = cache.refuse(WHERE, HOLD)
    assert local is not None and local.decision["retry_after"] == pytest.approx(5.0)
    clock.now += local.hold
    assert cache.released(local)
    sent = local.answer(clock.now)
    # The same refusal, its figures as true when it goes as when it was decided.
    assert {k: v for k, v in sent.items() if k not in ("retry_after", "reset")} == {
        k: v for k, v in local.decision.items() if k not in ("retry_after", "reset")
    }
    assert sent["retry_after"] == pytest.approx(4.0)
    assert sent["reset"] == pytest.approx(2.0)
    assert cache.held == 0


def test_holds_are_bounded_per_key_and_per_process(clock):
    cache = KnownRefusals(clock)
    keys = [(f"key-{i}", "chat", "m") for i in range(HOLD_PER_PROCESS // HOLD_PER_KEY + 1)]
    for where in keys:
        cache.learn(where, refusal(5.0), clock.now, cache.generation)
        answered_at_once(cache, HOLD_AFTER, where)
    first = [cache.refuse(keys[0], HOLD) for _ in range(HOLD_PER_KEY + 1)]
    assert [r.hold for r in first if r] == [HOLD] * HOLD_PER_KEY + [0.0]  # the key's bound
    for where in keys[1:-1]:
        answered = [cache.refuse(where, HOLD) for _ in range(HOLD_PER_KEY)]
        assert all(r is not None and r.hold == HOLD for r in answered)
    assert cache.held == HOLD_PER_PROCESS
    last = cache.refuse(keys[-1], HOLD)
    assert last is not None and last.hold == 0.0  # the process's bound
    assert first[0] is not None and cache.released(first[0])
    again = cache.refuse(keys[-1], HOLD)
    assert again is not None and again.hold == HOLD  # a slot freed is used again


def held_and_watched(cache: KnownRefusals, clock) -> tuple[LocalRefusal, list[str]]:
    """A call held on a 5 s promise, and the list its wake-ups are written to."""
    cache.learn(WHERE, refusal(5.0), clock.now, cache.generation)
    answered_at_once(cache, HOLD_AFTER)
    local = cache.refuse(WHERE, HOLD)
    assert local is not None
    woken: list[str] = []
    local.wake = lambda: woken.append("woken")
    return local, woken


def test_a_clear_wakes_held_calls_to_ask_again(clock):
    cache = KnownRefusals(clock)
    local, woken = held_and_watched(cache, clock)
    answered = cache.answered
    cache.clear()
    assert woken == ["woken"]
    assert not cache.released(local)  # its promise is void: the limiter decides
    assert cache.answered == answered - 1 and cache.held == 0


def test_a_drain_wakes_held_calls_to_be_answered_and_holds_no_more(clock):
    cache = KnownRefusals(clock)
    local, woken = held_and_watched(cache, clock)
    cache.stop_holding()
    assert woken == ["woken"]
    assert cache.released(local)  # its refusal stands: answered now
    after = cache.refuse(WHERE, HOLD)
    assert after is not None and after.hold == 0.0


# --- a flooding key's herd: one ask at a time ------------------------------------------
def flooding(clock: Clock, where=WHERE) -> KnownRefusals:
    """A cache whose key was held (it flooded), its promise now ended."""
    cache = KnownRefusals(clock)
    cache.learn(where, refusal(0.5), clock.now, cache.generation)
    answered_at_once(cache, HOLD_AFTER, where)
    held = cache.refuse(where, HOLD)
    assert held is not None and held.hold > 0
    assert cache.released(held)
    clock.now += 0.5  # the promise ends: every held call was answered, and comes back
    assert cache.refuse(where, HOLD) is None
    return cache


def woken_log(turns: list[Turn]) -> list[str]:
    log: list[str] = []
    for i, turn in enumerate(turns):
        turn.wake = lambda i=i: log.append(f"w{i}")
    return log


def test_a_key_never_held_never_waits_on_another_call(clock):
    """A team's parallel calls within its limits (and a key refused, even promised,
    but never held) each ask the limiter at once."""
    cache = KnownRefusals(clock)
    assert [cache.turn(WHERE, HERD_WAIT) for _ in range(16)] == [None] * 16
    cache.learn(WHERE, refusal(0.5), clock.now, cache.generation)
    answered_at_once(cache, HOLD_AFTER)  # refused locally, at once: not held
    clock.now += 0.5
    assert [cache.turn(WHERE, HERD_WAIT) for _ in range(16)] == [None] * 16
    assert cache.waits == 0


def test_a_flooding_keys_herd_waits_on_one_ask_and_is_refused_from_its_promise(clock):
    cache = flooding(clock)
    asker = cache.turn(WHERE, HERD_WAIT)
    assert asker is not None and (asker.state, asker.owner) == (ASK, True)
    waiters = [cache.turn(WHERE, HERD_WAIT) for _ in range(47)]
    assert all(w is not None and w.state == WAIT for w in waiters)
    assert cache.waits == 47
    log = woken_log([w for w in waiters if w])
    # Another key, and another model of this key, ask beside it.
    assert cache.turn(("key-2", "chat", "m"), HERD_WAIT) is None
    assert cache.turn(("key-1", "chat", "other"), HERD_WAIT) is None

    sent = clock.now
    clock.now += 0.002  # the limiter refuses, with a promise
    cache.learn(WHERE, refusal(1.0), sent, cache.generation)
    cache.leave(asker)
    assert len(log) == 47
    answers = []
    for waiter in waiters:
        assert waiter is not None and cache.waited(waiter) == PROMISED
        local = cache.refuse(WHERE, HOLD)
        assert local is not None  # the limiter's own refusal, counted toward the hold
        answers.append(local.hold)
        cache.leave(waiter)
    assert answers[:HOLD_AFTER] == [0.0] * HOLD_AFTER
    assert answers[HOLD_AFTER:] == pytest.approx([HOLD - 0.002] * (47 - HOLD_AFTER))
    # The next call finds the promise: no turn is taken (it is refused before asking).
    assert cache.refuse(WHERE, HOLD) is not None


def test_a_call_that_comes_to_ask_once_the_herd_has_its_promise_is_refused_from_it(clock):
    """A flooding key's call checked for a promise before the ask's answer came, and
    reaches its own ask after it (its body read and checked meanwhile): it does not ask."""
    cache = flooding(clock)
    asker = cache.turn(WHERE, HERD_WAIT)
    assert asker is not None
    cache.learn(WHERE, refusal(1.0), clock.now, cache.generation)
    cache.leave(asker)
    late = cache.turn(WHERE, HERD_WAIT)
    assert late is not None and cache.waited(late) == PROMISED
    assert cache.refuse(WHERE, HOLD) is not None
    cache.leave(late)
    clock.now += 1.0  # that promise over: the next call takes the turn
    again = cache.turn(WHERE, HERD_WAIT)
    assert again is not None and again.owner


def test_without_a_promise_the_next_waiter_asks_one_at_a_time(clock):
    cache = flooding(clock)
    asker = cache.turn(WHERE, HERD_WAIT)
    waiters = [cache.turn(WHERE, HERD_WAIT) for _ in range(3)]
    assert asker is not None and all(w is not None for w in waiters)
    log = woken_log([w for w in waiters if w])
    cache.leave(asker)  # granted (or refused without a promise, or gone): no promise
    assert log == ["w0"]
    first = waiters[0]
    assert first is not None and cache.waited(first) == ASK and first.owner
    # A newcomer still waits: the turn is the woken waiter's.
    late = cache.turn(WHERE, HERD_WAIT)
    assert late is not None and late.state == WAIT
    cache.leave(first)
    assert log == ["w0", "w1"]
    second = waiters[1]
    assert second is not None and second.owner
    # The second ask is refused with the next promise: the rest are refused from it.
    cache.learn(WHERE, refusal(1.0), clock.now, cache.generation)
    cache.leave(second)
    assert log == ["w0", "w1", "w2"]
    assert waiters[2] is not None and cache.waited(waiters[2]) == PROMISED
    assert cache.waited(late) == PROMISED


def test_a_waiter_past_its_wait_asks_beside_and_one_that_goes_away_leaves(clock):
    cache = flooding(clock)
    asker = cache.turn(WHERE, HERD_WAIT)
    slow, gone, last = (cache.turn(WHERE, HERD_WAIT) for _ in range(3))
    assert asker and slow and gone and last
    assert slow.deadline == clock.now + HERD_WAIT
    log = woken_log([slow, gone, last])
    clock.now += HERD_WAIT  # its timer fired: not woken
    assert cache.waited(slow) == ASK and not slow.owner  # asks, holding no turn
    cache.leave(slow)  # its own ask's end hands nothing on
    cache.leave(gone)  # its caller went away while it waited
    assert log == []
    cache.leave(asker)
    assert log == ["w2"] and last.owner
    cache.leave(last)
    # The herd is over: the next call takes the turn afresh.
    again = cache.turn(WHERE, HERD_WAIT)
    assert again is not None and again.owner


def test_an_owner_that_goes_away_hands_its_turn_on(clock):
    cache = flooding(clock)
    asker = cache.turn(WHERE, HERD_WAIT)
    heir, next_ = cache.turn(WHERE, HERD_WAIT), cache.turn(WHERE, HERD_WAIT)
    assert asker and heir and next_
    log = woken_log([heir, next_])
    cache.leave(asker)
    cache.leave(heir)  # woken to ask, but its caller went away first
    assert log == ["w0", "w1"] and next_.owner


def test_a_clear_releases_every_waiter_to_ask_and_forgets_the_flood(clock):
    cache = flooding(clock)
    asker = cache.turn(WHERE, HERD_WAIT)
    waiters = [cache.turn(WHERE, HERD_WAIT) for _ in range(3)]
    log = woken_log([w for w in waiters if w])
    cache.clear()
    assert log == ["w0", "w1", "w2"]
    assert all(w is not None and cache.waited(w) == ASK and not w.owner for w in waiters)
    assert asker is not None
    cache.learn(WHERE, refusal(1.0), clock.now, cache.generation - 1)  # decided before
    cache.leave(asker)  # its herd is gone: nothing to hand on
    assert cache.turn(WHERE, HERD_WAIT) is None  # the new configuration decides


def test_a_drain_releases_waiters_and_a_calm_key_stops_waiting(clock):
    cache = flooding(clock)
    assert cache.turn(WHERE, HERD_WAIT) is not None
    waiter = cache.turn(WHERE, HERD_WAIT)
    assert waiter is not None
    log = woken_log([waiter])
    cache.stop_holding()
    assert log == ["w0"] and cache.waited(waiter) == ASK
    assert cache.turn(WHERE, HERD_WAIT) is None

    calm = flooding(clock)
    assert calm.turn(WHERE, 0.0) is None  # no wait allowed (the hold is off)
    clock.now += HERD_WINDOW + 0.1  # no call held for a while: not flooding any more
    assert calm.turn(WHERE, HERD_WAIT) is None


def test_a_herd_is_bounded(clock):
    cache = flooding(clock)
    assert cache.turn(WHERE, HERD_WAIT) is not None
    waiters = [cache.turn(WHERE, HERD_WAIT) for _ in range(HERD_PER_KEY + 1)]
    assert sum(w is not None for w in waiters) == HERD_PER_KEY
    assert waiters[-1] is None  # asks
