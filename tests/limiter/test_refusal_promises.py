"""A promised refusal only ever refuses what the engine would refuse.

The engine's refusals carry "refused for s" (Engine.refused_for); a web process keeps
them (limiter/protocol/refused.py KnownRefusals) and refuses plain calls itself meanwhile.
The state machine replays generated histories against the engine with a cache beside it,
fed the way the limiter client feeds it: every plain ticket's refusal, counted from when
the ticket was sent, cleared by a limit change (the broadcast) and a restart. Whenever the
cache would refuse a plain call, the same call, asked of (a copy of) the engine at that
moment, is refused too.

The histories hold what could end a promise early: plain tickets and merged callers'
refundable tickets (with their own max wait) on keys with and without a queue, releases
(with usage, and `unused`, which refunds a request charge), cancels, upstream pauses of
the shared account, limit changes, restarts, and time passing in small and large steps.

A flooding key's herd (a key held, its calls waiting on one ask: `KnownRefusals.turn`)
is replayed too: its waiters are refused here only from the promise the asks brought,
and each such refusal is the engine's at that moment.
"""

from __future__ import annotations

import itertools
import pickle

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from limiter.authority.engine import Decision, Engine, Limit, ScopeId
from limiter.protocol import events
from limiter.protocol.refused import ASK, HERD_WAIT, PROMISED, KnownRefusals, Turn

ACCOUNT = ("account", "a", "chat", "m")
KEYS = {
    # no queue: refused whenever the bucket has no room
    "k0": Limit(per_minute=60, burst=2),
    # a queue and a max wait: refused while the wait exceeds it
    "k1": Limit(per_minute=30, burst=1, queue_depth=2, max_wait=1.5),
    # a queue but no wait allowed
    "k2": Limit(per_minute=120, burst=3, queue_depth=3, max_wait=0.0),
    # a shadow row: it refuses nothing, so it proves nothing (the account may refuse)
    "k3": Limit(per_minute=10, burst=1, shadow=True),
}
ACCOUNTS = [
    Limit(per_minute=6000, burst=50),
    # a token limit: every grant holds a lease (a refund the promise must allow for)
    Limit(per_minute=6000, burst=50, tokens_per_minute=60_000),
    Limit(per_minute=90, burst=2, queue_depth=5, max_wait=2.0),
    # no queue: the account itself refuses a call beyond its burst
    Limit(per_minute=60, burst=1),
]
CHANGED = {
    "k0": Limit(per_minute=600, burst=5),
    "k1": Limit(per_minute=30, burst=1, queue_depth=2, max_wait=20.0),
    "k2": Limit(per_minute=12, burst=1),
    "k3": Limit(per_minute=10, burst=1),  # the shadow row enforced
}

# (engine state pickled, key, now, the key's limit, the account's) whose probes the
# engine refused, across histories; about 1.5 kB each.
PROVEN: set[tuple[bytes, str, float, Limit, Limit]] = set()
PROVEN_MAX = 20_000


def scope(key: str) -> ScopeId:
    return ("key", key, "chat", "")


class PromiseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 100.0
        self.engine = Engine(lease_ttl=30.0)
        self.limits = dict(KEYS)
        self.account = ACCOUNTS[0]
        self.cache = KnownRefusals(lambda: self.now)
        self.ids = itertools.count()
        self.leases: list[str] = []
        self.queued: list[str] = []
        self.promised = 0  # probes the cache refused (so the run shows it was exercised)
        self.herd_refused = 0  # herd waiters refused from an ask's promise

    def _pair(self, key: str) -> tuple[tuple[ScopeId, Limit], tuple[ScopeId, Limit]]:
        return (scope(key), self.limits[key]), (ACCOUNT, self.account)

    def _take(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if d.kind == "grant" and d.lease:
                self.leases.append(d.lease)
            if d.kind == "queued":
                self.queued.append(d.ticket.id)
            elif d.ticket.id in self.queued:
                self.queued.remove(d.ticket.id)

    @rule(key=st.sampled_from(sorted(KEYS)), tokens=st.sampled_from([0, 50, 400]))
    def plain(self, key: str, tokens: int) -> None:
        """A plain call: asked of the cache first, as the gateway does."""
        if self.cache.refuse((key, "chat", "m")) is not None:
            return  # refused locally: the limiter hears nothing
        generation, ticket = self.cache.generation, f"t{next(self.ids)}"
        decisions = self.engine.acquire(ticket, *self._pair(key), tokens, self.now)
        self._take(decisions)
        mine = next(d for d in decisions if d.ticket.id == ticket)
        if mine.kind == "refuse":
            message = _message(mine)
            self.cache.learn((key, "chat", "m"), message, self.now, generation)

    def _ask(self, key: str) -> None:
        """A plain ticket asked of the engine, its refusal learned (as the client does)."""
        generation, ticket = self.cache.generation, f"t{next(self.ids)}"
        decisions = self.engine.acquire(ticket, *self._pair(key), 0, self.now)
        self._take(decisions)
        mine = next(d for d in decisions if d.ticket.id == ticket)
        if mine.kind == "refuse":
            self.cache.learn((key, "chat", "m"), _message(mine), self.now, generation)

    @rule(key=st.sampled_from(sorted(KEYS)), calls=st.sampled_from([1, 9, 12]))
    def comes_back(self, key: str, calls: int) -> None:
        """Plain calls asked of the cache with a hold: past HOLD_AFTER of one promise a
        key is held, and flooding (each held call answered at once here)."""
        for _ in range(calls):
            local = self.cache.refuse((key, "chat", "m"), 1.0)
            if local is None:
                self._ask(key)
            elif local.hold:
                self.cache.released(local)

    @rule(key=st.sampled_from(sorted(KEYS)), waiters=st.sampled_from([1, 3, 8]))
    def herd(self, key: str, waiters: int) -> None:
        """A flooding key's calls come back together: one asks, the others wait on it;
        each waiter is refused from a promise the asks brought, or asks in its turn (or,
        not woken yet when its turn comes here, past its wait)."""
        where = (key, "chat", "m")
        if self.cache.refuse(where, 1.0) is not None:
            return  # a promise still in place: refused before any turn
        turns = [self.cache.turn(where, HERD_WAIT) for _ in range(1 + waiters)]
        for turn in turns:
            if turn is None:
                self._ask(key)
            else:
                self._herd_call(key, turn)

    def _herd_call(self, key: str, turn: Turn) -> None:
        if self.cache.waited(turn) == PROMISED:
            local = self.cache.refuse((key, "chat", "m"), 1.0)
            if local is not None:
                self.herd_refused += 1
                self.cache.released(local)
                self._engine_refuses(key)
        else:
            assert turn.state == ASK
            self._ask(key)
        self.cache.leave(turn)

    def _engine_refuses(self, key: str) -> None:
        # Each probe asks its own copy of the engine. Pickling copies what deepcopy does
        # (shared references kept, floats exact) in C, at a fraction of deepcopy's CPU.
        state = pickle.dumps(self.engine, pickle.HIGHEST_PROTOCOL)
        # The engine is pure: the same state asked the same call at the same moment
        # answers the same. Most checks repeat one already made, in this history (a call
        # refused locally leaves the engine as it was) or in an earlier one (histories
        # share their beginnings), so a probe already refused for this very state is
        # not asked again. Only refusals are kept: a failure is met again on replay.
        asked = (state, key, self.now, self.limits[key], self.account)
        if asked in PROVEN:
            return
        for tokens in (0, 400):
            twin = pickle.loads(state)
            decisions = twin.acquire("probe", *self._pair(key), tokens, self.now)
            mine = next(d for d in decisions if d.ticket.id == "probe")
            assert mine.kind == "refuse", (key, tokens, self.now)
        if len(PROVEN) >= PROVEN_MAX:
            PROVEN.clear()
        PROVEN.add(asked)

    @rule(key=st.sampled_from(sorted(KEYS)), left=st.sampled_from([0.0, 0.3, 1.0]))
    def plain_asked_again(self, key: str, left: float) -> None:
        """A plain call asked again (its reply channel failed) with what was left of its
        wait: it brings a shorter max wait than its key's, and its refusal is learned."""
        generation, ticket = self.cache.generation, f"r{next(self.ids)}"
        decisions = self.engine.acquire(ticket, *self._pair(key), 0, self.now, max_wait=left)
        self._take(decisions)
        mine = next(d for d in decisions if d.ticket.id == ticket)
        if mine.kind == "refuse":
            self.cache.learn((key, "chat", "m"), _message(mine), self.now, generation)

    @rule(key=st.sampled_from(sorted(KEYS)), max_wait=st.sampled_from([0.0, 0.5, 5.0]))
    def merged_caller(self, key: str, max_wait: float) -> None:
        """A merged embeddings caller: refundable, its own max wait; it learns nothing."""
        ticket = f"m{next(self.ids)}"
        self._take(
            self.engine.acquire(
                ticket, *self._pair(key), 0, self.now, max_wait=max_wait, refundable=True
            )
        )

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), unused=st.booleans(), used=st.sampled_from([None, 0.0, 300.0]))
    def release(self, data: st.DataObject, unused: bool, used: float | None) -> None:
        lease = self.leases.pop(data.draw(st.integers(0, len(self.leases) - 1)))
        self._take(self.engine.release(lease, used, self.now, unused=unused))

    @precondition(lambda self: self.queued)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        ticket = self.queued.pop(data.draw(st.integers(0, len(self.queued) - 1)))
        self._take(self.engine.cancel(ticket, self.now))

    @rule(seconds=st.sampled_from([0.2, 1.0, 4.0]))
    def upstream_pause(self, seconds: float) -> None:
        self.engine.pause((ACCOUNT, self.account), seconds, self.now)

    @rule(dt=st.sampled_from([0.0005, 0.01, 0.1, 0.4, 1.0, 3.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        self._take(self.engine.poll(self.now))

    @rule(key=st.sampled_from(sorted(KEYS)), account=st.sampled_from(range(len(ACCOUNTS))))
    def change_limits(self, key: str, account: int) -> None:
        """Staff change a limit: the limiter applies it, the broadcast clears the cache."""
        self.limits[key] = CHANGED[key] if self.limits[key] == KEYS[key] else KEYS[key]
        self.account = ACCOUNTS[account]
        for name in KEYS:
            self.engine.scope(*self._pair(name)[0], self.now)
        self.engine.scope(ACCOUNT, self.account, self.now)
        self.cache.clear()
        self._take(self.engine.poll(self.now))

    @rule()
    def restart(self) -> None:
        """A new limiter (it announces itself: the cache is cleared); calls it never saw
        hold no leases here."""
        self.engine = Engine(lease_ttl=30.0, unknown_before=self.now)
        self.leases, self.queued = [], []
        self.cache.clear()

    @invariant()
    def a_promised_refusal_is_the_engines(self) -> None:
        for key in KEYS:
            promised = self.cache.refuse((key, "chat", "m"))
            if promised is None:
                continue
            self.promised += 1
            self._engine_refuses(key)


def _message(decision: Decision) -> events.DecisionMessage:
    message: events.DecisionMessage = {
        "type": events.DECISION,
        "ticket": decision.ticket.id,
        "kind": decision.kind,
        "lease": "",
        "reason": decision.reason,
        "scope": decision.scope,
        "retry_after": decision.retry_after,
        "waited": 0.0,
        "limit": decision.quota.limit_per_minute,
        "remaining": decision.quota.remaining,
        "reset": decision.quota.reset_after,
        "max_wait": 0.0,
        "at": 0.0,
        "limiter": "l",
    }
    if decision.refused_for:
        message["refused_for"] = decision.refused_for
        message["refused_scope"] = decision.refused_scope
    return message


PromiseMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRefusalPromises = PromiseMachine.TestCase


def test_the_histories_exercise_promises() -> None:
    """The proof is not vacuous: a plain flood on a key without a queue is promised."""
    machine = PromiseMachine()
    for _ in range(5):
        machine.plain("k0", 0)
    machine.a_promised_refusal_is_the_engines()
    assert machine.promised == 1 and machine.cache.answered >= 2


def test_the_histories_exercise_a_flooding_keys_herd() -> None:
    """The herd's proof is not vacuous either: k0 flooded (held), its promise ends, and
    its herd's waiters are refused from the promise the asks bring."""
    machine = PromiseMachine()
    machine.comes_back("k0", 12)  # granted twice (burst 2), promised, then held
    machine.advance(3.0)  # the promise is over, the bucket full again
    machine.herd("k0", 8)  # two asks granted, one at a time; the third's promise refuses the rest
    assert machine.herd_refused == 6
    assert machine.cache.waits == 8


def test_a_promise_allows_for_a_lease_handed_back_unused() -> None:
    """Two merged callers fill k0's bucket; a plain call is refused; one caller's merged
    request never went, so its request charge comes back: the key has room again at
    once, and the promise must have ended by then (it counted the key's leases)."""
    machine = PromiseMachine()
    machine.account = ACCOUNTS[1]  # a token limit: every grant holds a lease
    machine.merged_caller("k0", 0.0)
    machine.merged_caller("k0", 0.0)
    assert len(machine.leases) == 2
    machine.plain("k0", 0)
    machine.release(_Draw(0), unused=True, used=None)
    machine.a_promised_refusal_is_the_engines()


def test_a_shadow_key_limit_promises_nothing() -> None:
    """A key whose row is in shadow, refused by its account: its shadow bucket (charged as
    its enforced twin would be) must not make the refusal last, as the account has room
    again a second later and the shadow row holds no one back."""
    machine = PromiseMachine()
    machine.account = ACCOUNTS[3]  # 60 a minute, burst 1, no queue
    machine.plain("k3", 0)  # granted; the shadow bucket is charged 6 s
    machine.plain("k3", 0)  # refused by the account, for 1 s
    machine.advance(1.0)
    machine.a_promised_refusal_is_the_engines()


class _Draw:
    """A fixed draw for a rule's `data` argument."""

    def __init__(self, value: int) -> None:
        self.value = value

    def draw(self, strategy: object) -> int:
        return self.value
