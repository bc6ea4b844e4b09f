"""Regressions for the engine faults of issue 10, one named test (or two) per fault.

Each test failed on the engine before the fix; time is passed in, nothing sleeps.
"""

import pytest

from limiter.authority.engine import CONCURRENCY_LIMITED, Engine, Limit

KEY_A = ("key", "a", "chat")
KEY_B = ("key", "b", "chat")
ACCOUNT = ("account", "1", "chat")
WIDE = Limit(per_minute=60000, burst=1000, queue_depth=1000, max_wait=60)
# 100 tokens a second, one second of burst: 100 tokens.
TOKENS = Limit(per_minute=600, burst=10, tokens_per_minute=6000, queue_depth=10, max_wait=30)


def ask(engine, ticket, key=KEY_A, key_limit=WIDE, account_limit=WIDE, tokens=0, now=0.0):
    decisions = engine.acquire(ticket, (key, key_limit), (ACCOUNT, account_limit), tokens, now)
    return next(d for d in decisions if d.ticket.id == ticket)


def drive(engine, arrivals, until):
    """Play `arrivals` ((time, ticket, key, tokens, account limit), in time order) as
    the worker would: polling whenever `next_wakeup` says. Returns {ticket: decision}."""
    answers = {}
    now = 0.0
    pending = list(arrivals)
    while True:
        wake = engine.next_wakeup(now)
        next_arrival = pending[0][0] if pending else None
        candidates = [t for t in (wake, next_arrival) if t is not None and t <= until]
        if not candidates:
            return answers
        now = max(now, min(candidates))
        if pending and pending[0][0] <= now:
            _t, ticket, key, tokens, limit = pending.pop(0)
            decisions = engine.acquire(ticket, (key, WIDE), (ACCOUNT, limit), tokens, now)
        else:
            decisions = engine.poll(now)
        for decision in decisions:
            if decision.kind != "queued":
                answers[decision.ticket.id] = (decision, now)
                if decision.lease:
                    engine.release(decision.lease, decision.ticket.tokens, now)


# --- 1. retry after a Together 429 under a concurrency cap ---------------------------------
def test_reacquire_after_upstream_429_does_not_deadlock_the_cap():
    engine = Engine()
    capped = Limit(per_minute=6000, burst=100, max_concurrent=3, queue_depth=10, max_wait=60)
    leases = [ask(engine, f"g{i}", account_limit=capped, now=0.0).lease for i in range(3)]
    # Together answers 429 to all three; the account pauses and each asks again.
    engine.pause((ACCOUNT, capped), 2.0, now=30.0)
    for i, lease in enumerate(leases):
        decisions = engine.reacquire(lease, f"r{i}", (KEY_A, WIDE), (ACCOUNT, capped), 0, now=30.0)
        assert [d.kind for d in decisions] == ["queued"]
    assert engine.leases == {}  # the old slots went back with the retries
    granted = engine.poll(32.0)
    assert sorted(d.ticket.id for d in granted) == ["r0", "r1", "r2"]
    assert all(d.kind == "grant" for d in granted)


def test_reacquired_ticket_goes_before_its_keys_later_tickets():
    engine = Engine()
    capped = Limit(per_minute=6000, burst=100, max_concurrent=1, queue_depth=10, max_wait=60)
    lease = ask(engine, "g", account_limit=capped, now=0.0).lease
    engine.pause((ACCOUNT, capped), 2.0, now=1.0)
    # A newcomer of the same key arrives first; the slot is still held, so it queues.
    assert ask(engine, "late", account_limit=capped, now=1.0).kind == "queued"
    engine.reacquire(lease, "retry", (KEY_A, WIDE), (ACCOUNT, capped), 0, now=1.5)
    [grant] = engine.poll(3.0)
    assert grant.ticket.id == "retry"


# --- 2. token settling -----------------------------------------------------------------------
def test_release_refunds_only_the_undrained_reservation():
    engine = Engine()
    a = ask(engine, "a", key_limit=TOKENS, tokens=100, now=0.0)
    b = ask(engine, "b", key=KEY_A, key_limit=TOKENS, tokens=100, now=5.0)
    assert (a.kind, b.kind) == ("grant", "grant")
    engine.release(a.lease, 0, now=5.0)  # a's reservation drained long ago
    c = ask(engine, "c", key_limit=TOKENS, tokens=100, now=5.0)
    assert c.kind != "grant"  # else 200 tokens in one instant on a 100-token burst
    assert engine.scopes[KEY_A].tokens.debt(5.0) == pytest.approx(100)


def test_release_refunds_the_part_still_held():
    engine = Engine()
    a = ask(engine, "a", key_limit=TOKENS, tokens=100, now=0.0)
    engine.release(a.lease, 0, now=0.25)  # a quarter has drained: 75 tokens come back
    assert engine.scopes[KEY_A].tokens.debt(0.25) == pytest.approx(0)
    a2 = ask(engine, "a2", key_limit=TOKENS, tokens=100, now=0.5)
    engine.release(a2.lease, 40, now=0.5)  # used 40 of 100, none drained yet
    assert engine.scopes[KEY_A].tokens.debt(0.5) == pytest.approx(40)


def test_overrun_is_charged_on_a_drained_bucket():
    engine = Engine()
    grant = ask(engine, "a", key_limit=TOKENS, tokens=10, now=0.0)
    engine.release(grant.lease, 5000, now=100.0)  # estimated 10, used 5,000
    assert engine.scopes[KEY_A].tokens.debt(100.0) == pytest.approx(4990)


def test_adopted_lease_settles_without_refunding_what_was_never_charged():
    engine = Engine(unknown_before=0.0)
    engine.adopt("old", (KEY_A, TOKENS), (ACCOUNT, WIDE), 100, now=10.0)
    assert ask(engine, "b", key_limit=TOKENS, tokens=100, now=10.0).kind == "grant"
    engine.release("old", 0, now=10.0)
    assert ask(engine, "c", key_limit=TOKENS, tokens=100, now=10.0).kind != "grant"


def test_adopted_lease_overrun_is_charged():
    engine = Engine(unknown_before=0.0)
    engine.adopt("old", (KEY_A, TOKENS), (ACCOUNT, WIDE), 100, now=10.0)
    engine.release("old", 300, now=10.0)
    assert engine.scopes[KEY_A].tokens.debt(10.0) == pytest.approx(200)


# --- 3. fairness by cost ----------------------------------------------------------------------
# 1,000 tokens a second with a one-second burst; requests never bind.
TOKEN_ACCOUNT = Limit(
    per_minute=6000, burst=100, tokens_per_minute=60000, queue_depth=1000, max_wait=30
)


def test_fair_by_cost_a_big_request_is_not_starved_by_small_ones():
    engine = Engine()
    # Key B sends 150-token calls at 1.5x the account's token rate; key A one 1,000-token call.
    arrivals = [(i * 0.1, f"b{i}", KEY_B, 150, TOKEN_ACCOUNT) for i in range(300)]
    arrivals.append((0.05, "a", KEY_A, 1000, TOKEN_ACCOUNT))
    arrivals.sort(key=lambda a: a[0])
    answers = drive(engine, arrivals, until=40.0)
    assert "a" in answers, "the big call was never answered"
    decision, at = answers["a"]
    assert decision.kind == "grant"
    assert at <= 2.0  # its fair turn: the burst B had already taken, then a second of tokens


def test_head_waiting_for_capacity_is_not_overtaken():
    engine = Engine()
    assert ask(engine, "a0", account_limit=TOKEN_ACCOUNT, tokens=1000, now=0.0).kind == "grant"
    assert ask(engine, "a1", account_limit=TOKEN_ACCOUNT, tokens=1000, now=0.0).kind == "queued"
    # At 0.5 there is room for 150 tokens but not for a1's 1,000: b must not overtake it.
    assert (
        ask(engine, "b", key=KEY_B, account_limit=TOKEN_ACCOUNT, tokens=150, now=0.5).kind
        == "queued"
    )
    [first] = engine.poll(1.0)
    assert first.ticket.id == "a1"


def test_projected_wait_counts_the_fair_order_and_real_sizes():
    engine = Engine()
    account = Limit(per_minute=600, burst=10, tokens_per_minute=6000, queue_depth=10, max_wait=30)
    ask(engine, "a0", account_limit=account, tokens=100, now=0.0)
    assert ask(engine, "a1", account_limit=account, tokens=100, now=0.0).kind == "queued"
    queued = ask(engine, "b", key=KEY_B, account_limit=account, tokens=10, now=0.0)
    # a1 goes at 1.0 and fills the bucket; b's 10 tokens fit again at 1.1.
    assert queued.retry_after == pytest.approx(1.1)
    granted = [(d.ticket.id, t) for t in (1.0, 1.1) for d in engine.poll(t)]
    assert granted == [("a1", 1.0), ("b", 1.1)]


# --- 6. the restart guarantee ------------------------------------------------------------------
def test_capped_scope_grants_nothing_during_the_adoption_window():
    capped = Limit(per_minute=6000, burst=100, max_concurrent=2, queue_depth=10, max_wait=60)
    engine = Engine(unknown_before=0.0, adopt_until=2.0)
    queued = ask(engine, "new", account_limit=capped, now=0.5)
    assert queued.kind == "queued"
    assert engine.next_wakeup(0.5) == pytest.approx(2.0)
    engine.adopt("old1", (KEY_A, WIDE), (ACCOUNT, capped), 0, now=1.0)
    engine.adopt("old2", (KEY_B, WIDE), (ACCOUNT, capped), 0, now=1.0)
    assert engine.poll(2.0) == []  # both slots are held by adopted leases
    [grant] = engine.release("old1", None, now=3.0)
    assert grant.ticket.id == "new"
    assert len(engine.scopes[ACCOUNT].leases) == 2


def test_refusal_during_the_adoption_window_says_when():
    capped = Limit(per_minute=6000, burst=100, max_concurrent=2)
    engine = Engine(unknown_before=0.0, adopt_until=2.0)
    refused = ask(
        engine, "new", key_limit=Limit(6000, 100), account_limit=capped, now=0.5
    )  # no queue
    assert (refused.kind, refused.reason, refused.retry_after) == (
        "refuse",
        CONCURRENCY_LIMITED,
        pytest.approx(1.5),
    )


def test_an_over_burst_request_leaves_the_bucket_at_most_full():
    engine = Engine()
    grant = ask(engine, "big", key_limit=TOKENS, tokens=500, now=10.0)
    assert grant.kind == "grant"  # a fresh bucket has been empty long enough
    bucket = engine.scopes[KEY_A].tokens
    assert bucket.debt(10.0) == pytest.approx(bucket.capacity)
    assert engine.fullness_bound(10.0) == pytest.approx(10.0)
    # Paced at the rate all the same: the next 500 wait for 500 tokens' worth.
    refused = ask(engine, "big2", key_limit=Limit(600, 10, 6000), tokens=500, now=10.0)
    assert refused.retry_after == pytest.approx(5.0)


def test_restart_assuming_full_at_the_fullness_bound_covers_an_overrun():
    old = Engine()
    grant = ask(old, "a", key_limit=TOKENS, tokens=10, now=0.0)
    old.release(grant.lease, 1010, now=0.0)  # 1,000 tokens over: ten seconds of debt
    bound = old.fullness_bound(0.0)
    assert bound == pytest.approx(9.1)  # full (one second) would hold until 10.1
    new = Engine(unknown_before=bound)
    ask(new, "b", key_limit=TOKENS, tokens=10, now=0.0)
    assert new.scopes[KEY_A].tokens.tat >= old.scopes[KEY_A].tokens.tat


# --- 7. memory ------------------------------------------------------------------------------------
def test_expiry_heaps_stay_proportional_to_live_work():
    engine = Engine()
    capped = Limit(per_minute=600000, burst=1000, max_concurrent=1, queue_depth=10, max_wait=60)
    now = 0.0
    for i in range(50_000):  # 100,000 acquires at 500 a second, each released
        first = ask(engine, f"{i}a", account_limit=capped, now=now)
        assert ask(engine, f"{i}b", account_limit=capped, now=now).kind == "queued"
        [second] = engine.release(first.lease, None, now)
        engine.release(second.lease, None, now)
        now += 0.004
    live = len(engine.tickets) + len(engine.leases)
    assert live == 0
    assert len(engine._deadlines) <= 2 * live + 64
    assert len(engine._lease_expiries) <= 2 * live + 64
    assert engine.next_wakeup(now) is None  # no wakeups for what is already answered


# --- 8. long streams ------------------------------------------------------------------------------
def test_renew_keeps_a_long_streams_slot():
    engine = Engine(lease_ttl=5.0)
    capped = Limit(per_minute=6000, burst=100, max_concurrent=1, queue_depth=10, max_wait=60)
    stream = ask(engine, "stream", account_limit=capped, now=0.0)
    assert engine.renew(stream.lease, 4.0)
    assert engine.renew(stream.lease, 8.0)
    assert ask(engine, "next", account_limit=capped, now=9.0).kind == "queued"
    assert engine.poll(12.0) == []  # past the first expiry: the stream still holds it
    [grant] = engine.release(stream.lease, None, 12.5)
    assert grant.ticket.id == "next"


def test_renew_after_expiry_says_the_slot_is_gone():
    engine = Engine(lease_ttl=5.0)
    capped = Limit(per_minute=6000, burst=100, max_concurrent=1)
    stream = ask(engine, "stream", account_limit=capped, now=0.0)
    assert not engine.renew(stream.lease, 5.0)
    engine.poll(5.0)
    assert engine.leases == {}
