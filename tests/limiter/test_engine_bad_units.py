"""A ticket whose tokens no bucket can hold is refused alone (issue 18, item 1).

`max_tokens` = 10**400 once reached the engine as a ticket's tokens: draining the queue
raised OverflowError, and every later acquire (which polls first) failed with it, for
every team. The gateway bounds the field now; the engine refuses such a ticket itself,
before it is queued or charged. Time is passed in, nothing sleeps.
"""

import math

import pytest

from limiter.authority.engine import INVALID_UNITS, MAX_UNITS, Engine, Limit

KEY_A = ("key", "a", "chat", "")
KEY_B = ("key", "b", "chat", "")
ACCOUNT = ("account", "1", "chat", "m")
OTHER_ACCOUNT = ("account", "1", "chat", "other")
# 100 tokens a second, one second of burst; one request a second at the account.
TOKENS = Limit(per_minute=600, burst=10, tokens_per_minute=6000, queue_depth=10, max_wait=30)
PACED = Limit(per_minute=60, burst=1, tokens_per_minute=6000, queue_depth=10, max_wait=30)

ABSURD = [10**400, -(10**400), 2**1030, 1e308, math.inf, -math.inf, math.nan, -1, MAX_UNITS * 2]


def acquire(engine, ticket, key, account=ACCOUNT, tokens=0, now=0.0, account_limit=PACED):
    return engine.acquire(ticket, (key, TOKENS), (account, account_limit), tokens, now)


def mine(decisions, ticket):
    return next(d for d in decisions if d.ticket.id == ticket)


@pytest.mark.parametrize("units", ABSURD, ids=[repr(u)[:12] for u in ABSURD])
def test_an_absurd_ticket_is_refused_alone_and_the_queue_goes_on(units):
    engine = Engine()
    assert mine(acquire(engine, "first", KEY_B, tokens=10), "first").kind == "grant"
    # Queued behind the account's pace (one request a second).
    assert mine(acquire(engine, "waiting", KEY_B, tokens=10), "waiting").kind == "queued"

    bad = mine(acquire(engine, "bad", KEY_A, tokens=units, now=0.1), "bad")
    assert (bad.kind, bad.reason, bad.scope) == ("refuse", INVALID_UNITS, "key")
    assert "bad" not in engine.tickets  # never queued

    # Every scope's arithmetic is intact: the queued ticket goes when due, and others too.
    granted = engine.poll(1.0)
    assert [d.ticket.id for d in granted] == ["waiting"]
    assert mine(acquire(engine, "other", KEY_A, OTHER_ACCOUNT, 10, 1.0), "other").kind == "grant"
    assert mine(acquire(engine, "later", KEY_A, tokens=10, now=2.0), "later").kind == "grant"
    for scope in engine.scopes.values():
        for bucket in (scope.requests, scope.tokens):
            assert bucket is None or not math.isnan(bucket.tat) and bucket.tat < math.inf


@pytest.mark.parametrize("units", ABSURD, ids=[repr(u)[:12] for u in ABSURD])
def test_a_retry_with_absurd_units_is_refused_and_its_old_lease_settled(units):
    engine = Engine()
    lease = mine(acquire(engine, "first", KEY_A, tokens=10), "first").lease
    assert lease
    decisions = engine.reacquire(lease, "retry", (KEY_A, TOKENS), (ACCOUNT, PACED), units, 1.0)
    assert (mine(decisions, "retry").kind, mine(decisions, "retry").reason) == (
        "refuse",
        INVALID_UNITS,
    )
    assert engine.leases == {} and engine.tickets == {}


@pytest.mark.parametrize("units", ABSURD, ids=[repr(u)[:12] for u in ABSURD])
def test_an_absurd_usage_report_settles_as_unknown(units):
    engine = Engine()
    lease = mine(acquire(engine, "first", KEY_A, tokens=50), "first").lease
    engine.release(lease, units, 0.5)  # must not raise, nor leave a bucket full forever
    tokens = engine.scopes[KEY_A].tokens
    assert tokens is not None and tokens.tat < 1.0  # the 50 reserved, nothing more
    assert mine(acquire(engine, "next", KEY_A, tokens=50, now=1.5), "next").kind == "grant"


@pytest.mark.parametrize("units", ABSURD, ids=[repr(u)[:12] for u in ABSURD])
def test_an_adopted_lease_with_absurd_units_settles(units):
    engine = Engine(unknown_before=0.0, adopt_until=1.0)
    engine.adopt("old", (KEY_A, TOKENS), (ACCOUNT, PACED), units, 0.0)
    engine.release("old", 20, 5.0)
    assert mine(acquire(engine, "next", KEY_A, tokens=10, now=10.0), "next").kind == "grant"
