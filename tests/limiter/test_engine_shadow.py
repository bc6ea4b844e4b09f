"""Shadow scopes in the engine: evaluated beside the enforced ones, never refusing or
delaying, and recording exactly what an enforced twin would have refused."""

import random
from dataclasses import replace

import pytest

from limiter.authority.engine import (
    CONCURRENCY_LIMITED,
    QUEUE_FULL,
    RATE_LIMITED,
    TOKEN_RATE_LIMITED,
    Engine,
    Limit,
)

ACCOUNT = ("account", "1", "chat", "")
WIDE = Limit(per_minute=60000, burst=1000, queue_depth=1000, max_wait=60)


def key(name):
    return ("key", name, "chat", "")


def ask(engine, ticket, limit, *, name="a", tokens=0.0, now=0.0, account=WIDE):
    decisions = engine.acquire(ticket, (key(name), limit), (ACCOUNT, account), tokens, now)
    return next(d for d in decisions if d.ticket.id == ticket)


def test_a_shadow_row_never_refuses_or_delays_and_records_what_it_would_refuse():
    engine = Engine()
    shadow = Limit(per_minute=10, burst=1, queue_depth=0, max_wait=0, shadow=True)
    decisions = [ask(engine, str(i), shadow, now=float(i)) for i in range(600)]  # 60/min
    assert {d.kind for d in decisions} == {"grant"}
    assert all(d.waited == 0 for d in decisions)
    recorded = [d for d in decisions if d.shadow]
    # 10/min of 60/min offered: one in six goes, the other five would be refused.
    assert len(recorded) == 500
    assert {d.shadow for d in recorded} == {(("key", RATE_LIMITED),)}


def test_the_same_row_enforced_refuses_what_the_shadow_recorded():
    shadow_engine, enforced_engine = Engine(), Engine()
    shadow = Limit(per_minute=10, burst=2, queue_depth=0, max_wait=0, shadow=True)
    enforced = replace(shadow, shadow=False)
    for i in range(120):
        now = i * 0.5
        s = ask(shadow_engine, str(i), shadow, now=now)
        e = ask(enforced_engine, str(i), enforced, now=now)
        assert s.kind == "grant"
        assert bool(s.shadow) == (e.kind == "refuse"), i


def advance(engine, since, now):
    """Time passes from `since` to `now`, the limiter's timer firing at each wake-up."""
    while (wake := engine.next_wakeup(since)) is not None and since < wake <= now:
        engine.poll(wake)
        since = wake
    engine.poll(now)


def _history(seed):
    rng = random.Random(seed)
    now, history = 0.0, []
    for i in range(400):
        now += rng.expovariate(2.0)  # about 120/min offered across the keys
        history.append((str(i), rng.choice("abc"), now, rng.choice([0.0, 50.0, 400.0])))
    return history


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    "limit",
    [
        Limit(per_minute=20, burst=3, queue_depth=0, max_wait=0),
        Limit(per_minute=30, burst=1, tokens_per_minute=3000, queue_depth=0, max_wait=0),
        Limit(per_minute=20, burst=2, queue_depth=1000, max_wait=5.0),
    ],
)
def test_shadow_records_match_an_enforced_twins_refusals_on_the_same_history(seed, limit):
    """Several keys on one (wide) account: per ticket, a shadow record exactly where the
    enforced twin refused, for immediate refusals and for waits beyond the max wait."""
    shadow_engine, enforced_engine = Engine(), Engine()
    shadow = replace(limit, shadow=True)
    refused = recorded = 0
    last = 0.0
    for ticket, name, now, tokens in _history(seed):
        advance(enforced_engine, last, now)
        last = now
        e = ask(enforced_engine, ticket, limit, name=name, tokens=tokens, now=now)
        s = ask(shadow_engine, ticket, shadow, name=name, tokens=tokens, now=now)
        assert s.kind == "grant" and s.waited == 0
        assert e.kind in ("grant", "refuse", "queued")
        assert bool(s.shadow) == (e.kind == "refuse"), ticket
        if e.kind == "refuse":
            assert s.shadow == (("key", e.reason),)
        refused += e.kind == "refuse"
        recorded += bool(s.shadow)
    assert refused == recorded > 0


def test_a_token_limit_in_shadow_says_so():
    engine = Engine()
    shadow = Limit(per_minute=600, burst=10, tokens_per_minute=600, shadow=True)
    assert not ask(engine, "1", shadow, tokens=10.0).shadow
    assert ask(engine, "2", shadow, tokens=10.0).shadow == (("key", TOKEN_RATE_LIMITED),)


def test_a_shadow_concurrency_cap_counts_leases_but_holds_nobody():
    engine = Engine()
    shadow = Limit(per_minute=600, burst=10, max_concurrent=1, shadow=True)
    first = ask(engine, "1", shadow)
    second = ask(engine, "2", shadow)
    assert first.kind == second.kind == "grant"
    assert not first.shadow
    assert second.shadow == (("key", CONCURRENCY_LIMITED),)
    engine.release(first.lease, None, 1.0)
    engine.release(second.lease, None, 1.0)
    assert not ask(engine, "3", shadow, now=1.0).shadow


def test_a_shadow_queue_depth_is_the_twins():
    engine = Engine()
    shadow = Limit(per_minute=60, burst=1, queue_depth=2, max_wait=30, shadow=True)
    records = [ask(engine, str(i), shadow).shadow for i in range(5)]
    # One goes at once, two would have queued, the rest found the queue full.
    assert records == [(), (), (), (("key", QUEUE_FULL),), (("key", QUEUE_FULL),)]


def test_switched_to_enforced_a_row_keeps_its_buckets_and_refuses_at_once():
    engine = Engine()
    shadow = Limit(per_minute=10, burst=1, queue_depth=0, max_wait=0, shadow=True)
    for i in range(10):
        ask(engine, str(i), shadow, now=i * 0.1)
    refused = ask(engine, "next", replace(shadow, shadow=False), now=1.0)
    assert refused.kind == "refuse" and refused.reason == RATE_LIMITED


def test_a_shadow_account_ceiling_records_against_the_account():
    engine = Engine()
    account = Limit(per_minute=60, burst=1, shadow=True)
    decisions = [ask(engine, str(i), WIDE, account=account, now=0.0) for i in range(3)]
    assert [d.kind for d in decisions] == ["grant"] * 3
    assert decisions[0].shadow == ()
    assert decisions[1].shadow[0][0] == "account"
