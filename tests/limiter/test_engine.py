"""The limiter's arithmetic, with time passed in: nothing here sleeps."""

import pytest

from limiter.authority.engine import (
    ACCOUNT_RATE_LIMITED,
    CONCURRENCY_LIMITED,
    QUEUE_FULL,
    QUEUE_TIMEOUT,
    RATE_LIMITED,
    TOKEN_RATE_LIMITED,
    UPSTREAM_PAUSED,
    Bucket,
    Engine,
    Limit,
)

KEY_A = ("key", "a", "chat")
KEY_B = ("key", "b", "chat")
ACCOUNT = ("account", "1", "chat")
WIDE = Limit(per_minute=6000, burst=100, queue_depth=100, max_wait=60)


def ask(engine, ticket, key=KEY_A, key_limit=WIDE, account_limit=WIDE, tokens=0, now=0.0):
    decisions = engine.acquire(ticket, (key, key_limit), (ACCOUNT, account_limit), tokens, now)
    return next(d for d in decisions if d.ticket.id == ticket)


class TestBucket:
    def test_paces_after_the_burst(self):
        bucket = Bucket(rate=1.0, capacity=2.0)
        assert bucket.wait(1, now=0.0) == 0
        bucket.charge(1, 0.0)
        bucket.charge(1, 0.0)
        assert bucket.wait(1, now=0.0) == pytest.approx(1.0)
        assert bucket.wait(1, now=0.4) == pytest.approx(0.6)
        assert bucket.remaining(0.0) == 0
        assert bucket.remaining(1.0) == 1

    def test_request_larger_than_the_burst_goes_when_empty(self):
        bucket = Bucket(rate=10.0, capacity=5.0)
        assert bucket.wait(50, now=0.0) == 0
        bucket.charge(50, 0.0)
        assert bucket.wait(50, now=0.0) == pytest.approx(5.0)

    def test_resize_keeps_units_in_use(self):
        bucket = Bucket(rate=1.0, capacity=10.0)
        bucket.charge(4, 0.0)
        bucket.resize(rate=2.0, capacity=10.0, now=0.0)
        assert bucket.debt(0.0) == pytest.approx(4.0)
        assert bucket.reset_after(0.0) == pytest.approx(2.0)


class TestAdmission:
    def test_burst_then_refusal_with_exact_retry_after(self):
        engine = Engine()
        limit = Limit(per_minute=60, burst=2, queue_depth=0, max_wait=0)
        assert ask(engine, "1", key_limit=limit).kind == "grant"
        assert ask(engine, "2", key_limit=limit).kind == "grant"
        refused = ask(engine, "3", key_limit=limit, now=0.25)
        assert refused.kind == "refuse"
        assert refused.reason == RATE_LIMITED
        assert refused.scope == "key"
        assert refused.retry_after == pytest.approx(0.75)
        assert refused.quota.limit_per_minute == 60
        assert refused.quota.remaining == 0
        assert ask(engine, "4", key_limit=limit, now=1.0).kind == "grant"

    def test_the_account_ceiling_binds_every_key(self):
        engine = Engine()
        account = Limit(per_minute=60, burst=1, queue_depth=0, max_wait=0)
        assert ask(engine, "1", key=KEY_A, account_limit=account).kind == "grant"
        refused = ask(engine, "2", key=KEY_B, account_limit=account, key_limit=Limit(6000, 100))
        assert (refused.kind, refused.reason, refused.scope) == (
            "refuse",
            ACCOUNT_RATE_LIMITED,
            "account",
        )

    def test_refused_requests_charge_no_scope(self):
        engine = Engine()
        tight_key = Limit(per_minute=60, burst=1)
        ask(engine, "1", key_limit=tight_key)
        before = engine.scopes[ACCOUNT].requests.tat
        assert ask(engine, "2", key_limit=tight_key).kind == "refuse"
        assert engine.scopes[ACCOUNT].requests.tat == before  # all or nothing

    def test_queue_then_grant_in_time(self):
        engine = Engine()
        limit = Limit(per_minute=60, burst=1, queue_depth=5, max_wait=10)
        ask(engine, "1", key_limit=limit)
        queued = ask(engine, "2", key_limit=limit, now=0.1)
        assert queued.kind == "queued"
        assert queued.retry_after == pytest.approx(0.9)
        assert engine.poll(0.5) == []
        assert engine.next_wakeup(0.5) == pytest.approx(1.0)
        [grant] = engine.poll(1.0)
        assert (grant.kind, grant.ticket.id, grant.waited) == ("grant", "2", pytest.approx(0.9))

    def test_projected_wait_over_max_wait_is_refused_at_once(self):
        engine = Engine()
        limit = Limit(per_minute=60, burst=1, queue_depth=100, max_wait=2.5)
        ask(engine, "0", key_limit=limit)
        for i in range(1, 3):
            assert ask(engine, str(i), key_limit=limit).kind == "queued"
        refused = ask(engine, "3", key_limit=limit)
        assert refused.reason == RATE_LIMITED
        # Three ahead at one a second: the wait is 3 s, the key may queue 2.5 s.
        assert refused.retry_after == pytest.approx(0.5)

    def test_queue_full(self):
        engine = Engine()
        limit = Limit(per_minute=60, burst=1, queue_depth=1, max_wait=100)
        ask(engine, "0", key_limit=limit)
        assert ask(engine, "1", key_limit=limit).kind == "queued"
        refused = ask(engine, "2", key_limit=limit)
        assert (refused.reason, refused.retry_after) == (QUEUE_FULL, pytest.approx(2.0))

    def test_queue_timeout(self):
        engine = Engine()
        limit = Limit(per_minute=60, burst=1, max_concurrent=1, queue_depth=5, max_wait=3)
        ask(engine, "0", key_limit=limit)
        assert ask(engine, "1", key_limit=limit).kind == "queued"
        [timeout] = engine.poll(3.0)
        assert (timeout.kind, timeout.reason) == ("refuse", CONCURRENCY_LIMITED)

    def test_queue_timeout_when_the_wait_grows(self):
        engine = Engine()
        key = Limit(per_minute=60, burst=1, queue_depth=5, max_wait=1.5)
        ask(engine, "0", key_limit=key)
        assert ask(engine, "1", key_limit=key).kind == "queued"
        # Together pauses the account after "1" was queued with a 1 s projection.
        engine.pause((ACCOUNT, WIDE), 5.0, now=0.2)
        assert engine.poll(1.0) == []
        [timeout] = engine.poll(1.5)
        assert (timeout.kind, timeout.reason) == ("refuse", QUEUE_TIMEOUT)
        assert timeout.retry_after == pytest.approx(3.7)

    def test_cancel_gives_the_place_back(self):
        engine = Engine()
        limit = Limit(per_minute=60, burst=1, queue_depth=5, max_wait=10)
        ask(engine, "0", key_limit=limit)
        ask(engine, "1", key_limit=limit)
        ask(engine, "2", key_limit=limit)
        engine.cancel("1", 0.5)
        [grant] = engine.poll(1.0)
        assert grant.ticket.id == "2"
        assert engine.tickets == {}


class TestFairness:
    def test_one_keys_flood_does_not_starve_anothers_trickle(self):
        engine = Engine()
        account = Limit(per_minute=60, burst=1, queue_depth=100, max_wait=600)
        flood = [ask(engine, f"a{i}", key=KEY_A, account_limit=account) for i in range(20)]
        assert flood[0].kind == "grant"
        trickle = ask(engine, "b0", key=KEY_B, account_limit=account, now=0.5)
        assert trickle.kind == "queued"
        # Round-robin: b0 goes on the first turn after it arrived, not after a's 19.
        order = [d.ticket.id for t in range(1, 5) for d in engine.poll(float(t))]
        assert order[:2] in (["b0", "a1"], ["a1", "b0"])
        assert "b0" in order[:2]


class TestLeases:
    def test_concurrency_cap_and_release(self):
        engine = Engine()
        limit = Limit(per_minute=6000, burst=100, max_concurrent=2, queue_depth=5, max_wait=10)
        g1, g2 = ask(engine, "1", key_limit=limit), ask(engine, "2", key_limit=limit)
        assert ask(engine, "3", key_limit=limit).kind == "queued"
        [grant] = engine.release(g1.lease, None, 0.1)
        assert grant.ticket.id == "3"
        engine.release(g2.lease, None, 0.2)
        engine.release(grant.lease, None, 0.3)
        assert engine.leases == {}
        assert all(not s.leases for s in engine.scopes.values())

    def test_release_twice_is_harmless(self):
        engine = Engine()
        grant = ask(engine, "1")
        engine.release(grant.lease, None, 0.0)
        assert engine.release(grant.lease, None, 0.0) == []

    def test_expired_leases_are_reaped(self):
        engine = Engine(lease_ttl=5)
        limit = Limit(per_minute=6000, burst=100, max_concurrent=1, queue_depth=5, max_wait=10)
        ask(engine, "1", key_limit=limit)
        assert ask(engine, "2", key_limit=limit).kind == "queued"
        [grant] = engine.poll(5.0)
        assert grant.ticket.id == "2"


class TestTokens:
    def test_tokens_reserved_then_settled(self):
        engine = Engine()
        limit = Limit(per_minute=600, burst=10, tokens_per_minute=6000, queue_depth=0, max_wait=0)
        # 100 tokens a second, 1 s of burst: 100 tokens.
        grant = ask(engine, "1", key_limit=limit, tokens=100)
        refused = ask(engine, "2", key_limit=limit, tokens=50)
        assert (refused.reason, refused.retry_after) == (TOKEN_RATE_LIMITED, pytest.approx(0.5))
        engine.release(grant.lease, 20, 0.0)  # used 20 of the 100 reserved
        assert ask(engine, "3", key_limit=limit, tokens=50).kind == "grant"


class TestUpstreamPause:
    def test_pause_holds_every_caller_of_the_account(self):
        engine = Engine()
        engine.pause((ACCOUNT, WIDE), 2.0, now=0.0)
        no_queue = Limit(per_minute=6000, burst=100, queue_depth=0, max_wait=0)
        refused = ask(engine, "1", key=KEY_B, key_limit=no_queue, now=0.5)
        assert (refused.reason, refused.scope, refused.retry_after) == (
            UPSTREAM_PAUSED,
            "account",
            pytest.approx(1.5),
        )
        assert ask(engine, "2", key=KEY_A, now=0.5).kind == "queued"
        [grant] = engine.poll(2.0)
        assert grant.ticket.id == "2"


def test_limit_change_applies_on_next_request():
    engine = Engine()
    tight = Limit(per_minute=60, burst=1, queue_depth=0, max_wait=0)
    ask(engine, "1", key_limit=tight)
    assert ask(engine, "2", key_limit=tight).kind == "refuse"
    assert (
        ask(engine, "3", key_limit=Limit(per_minute=60, burst=3, queue_depth=0, max_wait=0)).kind
        == "grant"
    )


def test_idle_scopes_are_forgotten():
    engine = Engine()
    grant = ask(engine, "1")
    engine.release(grant.lease, None, 0.0)
    assert sorted(engine.forget_idle(now=1000.0)) == sorted([KEY_A, ACCOUNT])
    assert engine.scopes == {}


def test_grants_without_a_cap_or_tokens_need_no_lease():
    engine = Engine()
    grant = ask(engine, "1")
    assert grant.lease == ""
    assert engine.leases == {}
    capped = ask(engine, "2", key_limit=Limit(per_minute=6000, burst=100, max_concurrent=5))
    assert capped.lease == "2"


class TestMergedRequests:
    """What a merged embeddings request needs (limiter/gateway/coalesce.py): a key's
    charge handed back whole when the caller's work never went upstream, and a queue wait
    of the request's own, raised while it waits as more patient callers join."""

    KEY_ONLY = Limit(per_minute=60, burst=1, tokens_per_minute=600, queue_depth=0, max_wait=0)

    def test_an_unused_grant_gives_its_request_and_tokens_back(self):
        engine = Engine()
        first = engine.acquire(
            "1", (KEY_A, self.KEY_ONLY), (ACCOUNT, WIDE), 5, 0.0, refundable=True
        )
        assert first[0].kind == "grant" and first[0].lease == "1"  # refundable: always a lease
        assert ask(engine, "2", key_limit=self.KEY_ONLY, now=0.25).reason == RATE_LIMITED
        key = engine.scopes[KEY_A]
        assert key.tokens is not None and key.tokens.debt(0.25) == pytest.approx(5 - 2.5)

        engine.release("1", None, 0.25, unused=True)  # its merged request was refused
        # Only what had not drained comes back: the bucket is as if it had been empty.
        assert key.requests.debt(0.25) == pytest.approx(0.0)
        assert key.tokens.debt(0.25) == pytest.approx(0.0)
        assert ask(engine, "3", key_limit=self.KEY_ONLY, now=0.25).kind == "grant"

    def test_a_used_grant_keeps_its_request_charge(self):
        engine = Engine()
        engine.acquire("1", (KEY_A, self.KEY_ONLY), (ACCOUNT, WIDE), 0, 0.0, refundable=True)
        engine.release("1", 0.0, 0.25)  # it went upstream
        assert ask(engine, "2", key_limit=self.KEY_ONLY, now=0.25).reason == RATE_LIMITED

    def test_an_unused_refund_is_only_what_has_not_drained(self):
        engine = Engine()
        engine.acquire("1", (KEY_A, self.KEY_ONLY), (ACCOUNT, WIDE), 0, 0.0, refundable=True)
        engine.release("1", None, 0.75, unused=True)
        # 0.25 of the request had not drained: the bucket is empty from now, not since 0.
        assert engine.scopes[KEY_A].requests.tat == pytest.approx(0.75)
        engine.release("1", None, 0.75, unused=True)  # twice: nothing more comes back
        assert engine.scopes[KEY_A].requests.tat == pytest.approx(0.75)

    def test_a_plain_grant_released_unused_refunds_no_request(self):
        """Only a refundable grant's request can come back: a refusal's promise
        (Engine.refused_for) counts on a plain grant's staying charged."""
        engine = Engine()
        capped = Limit(per_minute=60, burst=1, max_concurrent=5)  # a lease for every grant
        engine.acquire("1", (KEY_A, capped), (ACCOUNT, WIDE), 0, 0.0)
        (refused,) = engine.acquire("2", (KEY_A, capped), (ACCOUNT, WIDE), 0, 0.25)
        assert refused.refused_for == pytest.approx(0.75 - 1e-3)  # the plain lease: no refund
        engine.release("1", None, 0.25, unused=True)
        assert engine.scopes[KEY_A].requests.debt(0.25) == pytest.approx(0.75)

    def test_a_refundable_lease_shortens_the_promise_by_its_request(self):
        engine = Engine()
        capped = Limit(per_minute=60, burst=2, max_concurrent=5)
        engine.acquire("1", (KEY_A, capped), (ACCOUNT, WIDE), 0, 0.0, refundable=True)
        engine.acquire("2", (KEY_A, capped), (ACCOUNT, WIDE), 0, 0.0)
        (refused,) = engine.acquire("3", (KEY_A, capped), (ACCOUNT, WIDE), 0, 0.25)
        # The bucket has room at 1.0; "1" handed back unused would give it room at once.
        assert refused.kind == "refuse" and refused.refused_for == 0.0

    def test_an_adopted_lease_released_unused_refunds_nothing(self):
        engine = Engine(unknown_before=0.0)
        engine.adopt("old", (KEY_A, self.KEY_ONLY), (ACCOUNT, WIDE), 0, 0.5)
        engine.release("old", None, 0.5, unused=True)  # the previous instance charged it
        assert engine.scopes[KEY_A].requests.debt(0.5) == pytest.approx(0.5)

    def test_a_ticket_waits_its_own_max_wait_not_its_keys(self):
        engine = Engine()
        slot = Limit(per_minute=6000, burst=100, max_concurrent=1)
        held = engine.acquire("hold", (KEY_B, WIDE), (ACCOUNT, slot), 0, 0.0)[0]
        assert held.kind == "grant"
        # The key may wait 60 s; the merged request only as long as its callers allow.
        queued = engine.acquire("m", (KEY_A, WIDE), (ACCOUNT, slot), 0, 0.0, max_wait=2.0)
        assert queued[-1].kind == "queued" and queued[-1].ticket.deadline == 2.0
        assert engine.next_wakeup(0.0) == 2.0
        timed_out = engine.poll(2.0)
        assert [(d.ticket.id, d.kind, d.reason) for d in timed_out] == [
            ("m", "refuse", CONCURRENCY_LIMITED)
        ]

    def test_a_projected_wait_over_its_own_max_wait_is_refused_at_once(self):
        engine = Engine()
        account = Limit(per_minute=6, burst=1)
        assert ask(engine, "1", account_limit=account).kind == "grant"
        refused = engine.acquire("m", (KEY_A, WIDE), (ACCOUNT, account), 0, 0.0, max_wait=4.0)
        assert refused[-1].kind == "refuse" and refused[-1].reason == ACCOUNT_RATE_LIMITED
        assert refused[-1].retry_after == pytest.approx(10.0 - 4.0)
        patient = engine.acquire("p", (KEY_A, WIDE), (ACCOUNT, account), 0, 0.0, max_wait=12.0)
        assert patient[-1].kind == "queued"

    def test_extend_raises_a_queued_tickets_deadline_never_lowers_it(self):
        engine = Engine()
        slot = Limit(per_minute=6000, burst=100, max_concurrent=1)
        engine.acquire("hold", (KEY_B, WIDE), (ACCOUNT, slot), 0, 0.0)
        engine.acquire("m", (KEY_A, WIDE), (ACCOUNT, slot), 0, 1.0, max_wait=2.0)
        assert engine.extend("m", 5.0, now=2.5)  # a caller that may wait longer joined
        assert engine.extend("m", 1.0, now=2.6)  # a less patient one changes nothing
        assert engine.tickets["m"].deadline == 6.0
        assert engine.poll(3.0) == []  # its first deadline passed: still queued
        assert engine.next_wakeup(3.0) == 6.0
        assert [d.kind for d in engine.poll(6.0)] == ["refuse"]
        assert not engine.extend("m", 60.0, now=6.0)  # answered: nothing to extend
