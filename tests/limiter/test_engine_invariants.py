"""The engine's guarantees (see its docstring), checked after every step of generated
histories under generated classes (guaranteed shares, priorities, weights; changed
mid-history as a new configuration would): acquires (some with a max wait of their own,
later extended, and refundable like a merged embeddings request's; some with tokens no
bucket can hold, refused alone), releases with actual usage (some absurd) or unused,
renewals, cancels, limit changes, upstream pauses, restarts with adoption, forgetting idle
scopes, and time passing.

The test plays the worker's part: time only moves forward, and it polls whenever
`next_wakeup` asks to. Nothing sleeps; the run is derandomized with no example database,
so CI sees the same histories every time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from limiter.authority import engine as engine_module
from limiter.authority.engine import COMPACT_FACTOR, INVALID_UNITS, Decision, Engine, Limit
from limiter.authority.sharing import SHARE_WINDOW, Klass

ENDPOINT = "chat"
LEASE_TTL = 10.0
ADOPT_WINDOW = 1.0
EPS = 1e-6
# The engine rebuilds a heap once stale entries outnumber live ones 2 to 1, plus a slack
# of 64; a history here holds a few dozen tickets, so it runs with a small slack.
SLACK = 2

# k0, k1 and k3 share account A with limits wider than any account's: only the account
# holds them back, so fairness between them is exactly checkable. k2 has tight limits
# of its own (its head is often held back by its key, and passed over).
# Classes: k0 and k3 are one class (a team of two keys), k1 and k2 one each.
WIDE_KEY = Limit(per_minute=60000, burst=1000, queue_depth=5, max_wait=20.0)
ACCOUNT_LIMITS = [
    Limit(per_minute=120, burst=3, tokens_per_minute=6000, max_concurrent=2),
    Limit(per_minute=60, burst=2),
    Limit(per_minute=240, burst=4, tokens_per_minute=12000, max_concurrent=3),
    Limit(per_minute=60, burst=1, tokens_per_minute=3000, max_concurrent=1),
]
TIGHT_KEY_LIMITS = [
    Limit(
        per_minute=60,
        burst=1,
        tokens_per_minute=3000,
        max_concurrent=1,
        queue_depth=3,
        max_wait=4.0,
    ),
    Limit(per_minute=120, burst=2, max_concurrent=2, queue_depth=2, max_wait=3.0),
    Limit(per_minute=30, burst=1, tokens_per_minute=1200, queue_depth=3, max_wait=6.0),
]
FAIR_PAIR = ("k0", "k1")
WIDE_KEYS = ("k0", "k1", "k3")
KEYS = ["k0", "k1", "k2", "k3"]
CLASS_OF = {"k0": "c0", "k3": "c0", "k1": "c1", "k2": "c2"}
CLASSES = ("c0", "c1", "c2")
# Shares of (c0, c1, c2), each set adding up to at most 100%; often none (fairness by
# weight alone is then checked between k0's and k1's flows).
SHARES = [(0, 0, 0), (0, 0, 0), (0.6, 0, 0), (0, 0.3, 0), (0.6, 0.3, 0), (0.3, 0.3, 0.4)]
WEIGHTS = st.tuples(*[st.sampled_from([1, 1, 2, 3])] * 3)  # per class
PRIORITIES = st.tuples(*[st.sampled_from([1, 1, 0, 2])] * 4)  # per key, k0..k3
# A class's service this close to its share is too close to call (float error).
SHARE_MARGIN = 1e-7
DISTURBANCES = [
    *[("restart",)] * 3,
    ("forget_idle",),
    *(("pause", account, seconds) for account in ("A", "B") for seconds in (0.5, 2.0)),
    *(("limit", account, limit) for account in ("A", "B") for limit in ACCOUNT_LIMITS),
    *(("limit", "k2", limit) for limit in TIGHT_KEY_LIMITS),
]


def scope_id(kind: str, name: str) -> tuple[str, str, str]:
    return (kind, name, ENDPOINT)


def token_bucket(limit: Limit) -> tuple[float, float] | None:
    """(rate, capacity) of a limit's token bucket, as the engine documents it: the same
    seconds' worth as the request burst, and at least one second's worth."""
    if not limit.tokens_per_minute:
        return None
    rate = limit.tokens_per_minute / 60.0
    return rate, rate * max(1.0, limit.burst / (limit.per_minute / 60.0))


def cost(account: Limit, tokens: float) -> float:
    """A grant's cost to its account, in seconds of the account's capacity."""
    seconds = 60.0 / account.per_minute
    if account.tokens_per_minute and tokens:
        seconds = max(seconds, tokens * 60.0 / account.tokens_per_minute)
    return seconds


@dataclass
class Entry:
    """One charge to a bucket: an admission (units may shrink when the lease settles
    below its estimate) or an overrun charged at settling."""

    at: float
    units: float
    estimate: float  # for an admission, what it asked: an over-burst one prepaid its excess
    admission: bool


@dataclass
class Log:
    """The charges to one bucket since its limit last changed.

    The rate invariant holds between limit changes: a changed limit keeps the debt but
    not the window arithmetic (a raised limit admits more than the old one would, a
    lowered one less than the new), so each change starts a fresh log.
    """

    rate: float
    capacity: float
    entries: list[Entry] = field(default_factory=list)
    checked: int = 0  # entries already checked as the end of a window


@dataclass
class Held:
    lease: str
    key: str
    account: str
    tokens: float
    expiry: float
    admissions: list[Entry]  # the token admissions it made, to lower on settling
    requests: list[Entry]  # its request admissions, void if it is released unused
    buckets: dict[str, object]  # scope name -> the engine's token bucket it charged


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.engine = Engine(lease_ttl=LEASE_TTL)
        self.counter = 0
        self.route: dict[str, str] = {}
        self.limits: dict[str, Limit] = {}
        self.logs: dict[tuple[str, str], Log] = {}
        self.held: dict[str, Held] = {}
        self.queued: dict[str, tuple[str, float]] = {}  # ticket -> (key, deadline)
        self.queued_tokens: dict[str, float] = {}  # ticket -> tokens, while it is queued
        self.backlog = {key: 0 for key in KEYS}
        # Since both of the fair pair's flows started waiting (one priority, no shares,
        # one configuration): each flow's service over its weight, and the largest
        # request granted to either in that window, over its flow's weight.
        self.fair_served = {key: 0.0 for key in FAIR_PAIR}
        self.fair_max = 0.0
        self.shares = dict.fromkeys(CLASSES, 0.0)
        self.weights = dict.fromkeys(CLASSES, 1.0)
        self.priority = dict.fromkeys(KEYS, 1)
        # Per (account, class): the decaying sum of its grants' costs, as sharing.Usage.
        self.usage: dict[tuple[str, str], tuple[float, float]] = {}
        self.to_adopt: list[Held] = []  # held across a restart, not handed back yet
        self.saved_slack = engine_module.COMPACT_SLACK
        engine_module.COMPACT_SLACK = SLACK

    def teardown(self) -> None:
        engine_module.COMPACT_SLACK = self.saved_slack

    @initialize(
        k2_account=st.sampled_from(["A", "B"]),
        a=st.sampled_from(ACCOUNT_LIMITS),
        b=st.sampled_from(ACCOUNT_LIMITS),
        k2=st.sampled_from(TIGHT_KEY_LIMITS),
        shares=st.sampled_from(SHARES),
        weights=WEIGHTS,
        priorities=PRIORITIES,
    )
    def setup(
        self,
        k2_account: str,
        a: Limit,
        b: Limit,
        k2: Limit,
        shares: tuple[float, ...],
        weights: tuple[int, ...],
        priorities: tuple[int, ...],
    ) -> None:
        self.route = {"k0": "A", "k1": "A", "k2": k2_account, "k3": "A"}
        wide = [(key, WIDE_KEY) for key in WIDE_KEYS]
        for name, limit in (("A", a), ("B", b), *wide, ("k2", k2)):
            self._set_limit(name, limit)
        self._classes(shares, weights, priorities)

    def _classes(
        self, shares: tuple[float, ...], weights: tuple[int, ...], priorities: tuple[int, ...]
    ) -> None:
        self.shares = dict(zip(CLASSES, shares, strict=True))
        self.weights = dict(zip(CLASSES, map(float, weights), strict=True))
        self.priority = dict(zip(KEYS, priorities, strict=True))
        self._fair_reset()

    def _klass(self, key: str) -> Klass:
        cls = CLASS_OF[key]
        return Klass(cls, self.shares[cls], self.weights[cls], self.priority[key])

    # --- bookkeeping -----------------------------------------------------------------
    def _kind(self, name: str) -> str:
        return "account" if name in ("A", "B") else "key"

    def _sid(self, name: str) -> tuple[str, str, str]:
        return scope_id(self._kind(name), name)

    def _pair(self, key: str) -> tuple[tuple, tuple]:
        account = self.route[key]
        return (self._sid(key), self.limits[key]), (self._sid(account), self.limits[account])

    def _set_limit(self, name: str, limit: Limit) -> None:
        self.limits[name] = limit
        self.logs[(name, "requests")] = Log(limit.per_minute / 60.0, float(limit.burst))
        tokens = token_bucket(limit)
        if tokens is None:
            self.logs.pop((name, "tokens"), None)
        else:
            self.logs[(name, "tokens")] = Log(*tokens)

    def _bucket(self, name: str) -> object:
        scope = self.engine.scopes.get(self._sid(name))
        return scope.tokens if scope is not None else None

    def _process(self, decisions: list[Decision]) -> None:
        """Record the engine's decisions in the order it made them, checking the
        concurrency cap at each grant and fairness as it goes."""
        self._bury_dead()
        for decision in decisions:
            ticket = decision.ticket
            key = ticket.key.id[1]
            account = ticket.account.id[1]
            if decision.kind == "queued":
                self.queued[ticket.id] = (key, ticket.deadline)
                self.queued_tokens[ticket.id] = ticket.tokens
                self._backlog(key, +1)
                continue
            was_queued = self.queued.pop(ticket.id, None) is not None
            if decision.kind == "grant":
                self._order_of_service(key, account)
                self._fair_grant(key, account, ticket.tokens)
                self._used(key, account, ticket.tokens)
                self._admit(key, account, ticket.tokens, decision.lease)
            if was_queued:
                self._backlog(key, -1)

    def _admit(self, key: str, account: str, tokens: float, lease: str) -> None:
        admissions = []
        requests = []
        for name in (key, account):
            request = Entry(self.now, 1.0, 1.0, True)
            self.logs[(name, "requests")].entries.append(request)
            requests.append(request)
            log = self.logs.get((name, "tokens"))
            if log is not None and tokens:
                entry = Entry(self.now, tokens, tokens, True)
                log.entries.append(entry)
                admissions.append(entry)
        if lease:
            self.held[lease] = Held(
                lease,
                key,
                account,
                tokens,
                self.now + LEASE_TTL,
                admissions,
                requests,
                {name: self._bucket(name) for name in (key, account)},
            )
            # Leases in use <= max_concurrent, checked as each grant is made.
            for name in (key, account):
                cap = self.limits[name].max_concurrent
                if cap is not None:
                    in_use = sum(1 for h in self.held.values() if name in (h.key, h.account))
                    assert in_use <= cap, f"{name}: {in_use} leases in use, cap {cap}"

    def _bury_dead(self) -> None:
        # A lease not renewed in time belongs to a process that died: nobody uses it.
        for lease in [lease for lease, h in self.held.items() if h.expiry <= self.now]:
            del self.held[lease]

    def _backlog(self, key: str, delta: int) -> None:
        self.backlog[key] += delta
        if not self._fair_pair_waiting():
            self._fair_reset()

    def _fair_reset(self) -> None:
        self.fair_served = {k: 0.0 for k in FAIR_PAIR}
        self.fair_max = 0.0

    def _flow_backlog(self, key: str) -> int:
        """Tickets queued in `key`'s flow (its class at its priority) on account A."""
        return sum(
            n
            for other, n in self.backlog.items()
            if self.route[other] == "A"
            and CLASS_OF[other] == CLASS_OF[key]
            and self.priority[other] == self.priority[key]
        )

    def _fair_pair_waiting(self) -> bool:
        """Whether k0's flow and k1's compete by weight alone: one priority, no shares,
        both waiting."""
        return (
            self.priority["k0"] == self.priority["k1"]
            and self.shares["c0"] == self.shares["c1"] == 0
            and all(self._flow_backlog(key) for key in FAIR_PAIR)
        )

    def _fair_grant(self, key: str, account: str, tokens: float) -> None:
        if account != "A" or not self._fair_pair_waiting():
            return
        mine = next((k for k in FAIR_PAIR if CLASS_OF[k] == CLASS_OF[key]), None)
        if mine is None or self.priority[key] != self.priority[mine]:
            return  # another flow's grant: it moves neither flow's service
        # Guarantee 4(c): from when both wait, each flow's service over its weight stays
        # within one maximum-size request (of the window's, over its flow's weight) of the
        # other's: |s_0 / w_0 - s_1 / w_1| <= max c / w.
        weight = self.weights[CLASS_OF[mine]]
        normalized = cost(self.limits[account], tokens) / weight
        self.fair_served[mine] += normalized
        self.fair_max = max(self.fair_max, normalized)
        gap = abs(self.fair_served["k0"] - self.fair_served["k1"])
        assert gap <= self.fair_max + EPS, (self.fair_served, self.weights, self.fair_max)

    # --- shares and priorities ------------------------------------------------------
    def _usage(self, account: str, cls: str) -> float:
        value, at = self.usage.get((account, cls), (0.0, self.now))
        return value * math.exp(-(self.now - at) / SHARE_WINDOW)

    def _used(self, key: str, account: str, tokens: float) -> None:
        cls = CLASS_OF[key]
        value = self._usage(account, cls) + cost(self.limits[account], tokens)
        self.usage[(account, cls)] = (value, self.now)

    def _below(self, account: str, cls: str, margin: float) -> bool:
        """Below its share by more than `margin` (a negative margin: possibly below)."""
        share = self.shares[cls]
        return share > 0 and self._usage(account, cls) < share * SHARE_WINDOW - margin

    def _waiting_heads(self, account: str) -> list[str]:
        """Wide keys with calls queued on `account` whose head their key lets go now: only
        the account holds them (a head held back by its own key is passed over)."""
        heads: dict[str, float] = {}
        for ticket_id, (key, _deadline) in self.queued.items():
            if key in WIDE_KEYS and self.route[key] == account and key not in heads:
                heads[key] = self.queued_tokens[ticket_id]
        scopes = self.engine.scopes
        return [
            key
            for key, tokens in heads.items()
            if scopes[self._sid(key)].rate_wait(tokens, self.now)[0] == 0
        ]

    def _order_of_service(self, key: str, account: str) -> None:
        """A grant on account A never goes (a) beyond the grantee's share while a class
        below its share waits, nor (b) to a lower priority than a call waiting, unless
        within the grantee's share."""
        if account != "A" or self._below(account, CLASS_OF[key], -SHARE_MARGIN):
            return  # within its share (or too close to call): it may go first
        for other in self._waiting_heads(account):
            if CLASS_OF[other] == CLASS_OF[key]:
                continue
            assert not self._below(account, CLASS_OF[other], SHARE_MARGIN), (
                f"{key} served beyond its share while {other}'s class waits below its share",
                {c: self._usage(account, c) for c in CLASSES},
                self.shares,
            )
            assert self.priority[other] <= self.priority[key], (
                f"{key} (priority {self.priority[key]}) served while {other} "
                f"(priority {self.priority[other]}) waits"
            )

    def _advance_to(self, target: float) -> None:
        """Let time pass as the worker does: poll at every wakeup up to `target`."""
        adopt_until = self.engine.adopt_until
        if adopt_until is not None and target >= adopt_until:
            # The web processes hand back what they hold within the adoption window.
            while self.to_adopt:
                self._adopt_one()
        for _ in range(10_000):
            wake = self.engine.next_wakeup(self.now)
            if wake is None or wake > target:
                break
            self.now = max(self.now, wake)
            decisions = self.engine.poll(self.now)
            if not decisions and (after := self.engine.next_wakeup(self.now)) is not None:
                assert after > self.now, "next_wakeup keeps asking for a poll that does nothing"
            self._process(decisions)
        else:
            raise AssertionError("the worker would spin")
        self.now = target
        self._process(self.engine.poll(self.now))

    # --- rules ---------------------------------------------------------------------------
    @rule(key=st.sampled_from(KEYS), tokens=st.sampled_from([0, 20, 80, 200, 500]))
    def acquire(self, key: str, tokens: int) -> None:
        self.counter += 1
        key_pair, account_pair = self._pair(key)
        self._process(
            self.engine.acquire(
                f"t{self.counter}", key_pair, account_pair, tokens, self.now, klass=self._klass(key)
            )
        )

    @rule(
        calls=st.lists(
            st.tuples(st.sampled_from(KEYS), st.sampled_from([0, 20, 80, 200, 500])),
            min_size=2,
            max_size=6,
        )
    )
    def burst(self, calls: list[tuple[str, int]]) -> None:
        # Several callers at one instant: what fills queues and makes keys compete.
        for key, tokens in calls:
            self.acquire(key, tokens)

    @rule(
        tokens=st.lists(st.sampled_from([0, 0, 20, 80, 200]), min_size=3, max_size=5),
        wait=st.sampled_from([1.0, 3.0]),
    )
    def contend(self, tokens: list[int], wait: float) -> None:
        # The fair pair both queue several calls at one instant and time passes: the
        # windows in which weights decide (fairness by weight is checked as they drain).
        for size in tokens:
            for key in FAIR_PAIR:
                self.acquire(key, size)
        self._advance_to(self.now + wait)

    @rule(
        key=st.sampled_from(KEYS),
        tokens=st.sampled_from([0, 20, 80, 200]),
        max_wait=st.sampled_from([0.0, 0.5, 2.0, 8.0]),
    )
    def acquire_merged(self, key: str, tokens: int, max_wait: float) -> None:
        # A merged embeddings request: a max wait of its own, and refundable.
        self.counter += 1
        key_pair, account_pair = self._pair(key)
        self._process(
            self.engine.acquire(
                f"t{self.counter}",
                key_pair,
                account_pair,
                tokens,
                self.now,
                max_wait=max_wait,
                refundable=True,
                klass=self._klass(key),
            )
        )

    @rule(
        key=st.sampled_from(KEYS),
        tokens=st.sampled_from([10**400, 1e308, float("inf"), float("nan"), -1, 2e12]),
    )
    def acquire_absurd(self, key: str, tokens: float) -> None:
        # Tokens no bucket can hold (issue 18: max_tokens = 10**400): refused alone, and
        # every guarantee below still holds for everyone else.
        self.counter += 1
        key_pair, account_pair = self._pair(key)
        ticket = f"t{self.counter}"
        decisions = self.engine.acquire(
            ticket, key_pair, account_pair, tokens, self.now, klass=self._klass(key)
        )
        own = [d for d in decisions if d.ticket.id == ticket]
        assert [(d.kind, d.reason) for d in own] == [("refuse", INVALID_UNITS)]
        self._process(decisions)

    @precondition(lambda self: self.queued)
    @rule(data=st.data(), max_wait=st.sampled_from([0.1, 1.0, 5.0, 25.0]))
    def extend(self, data: st.DataObject, max_wait: float) -> None:
        # A more patient caller joined a queued merged request: it may wait longer.
        ticket_id = data.draw(st.sampled_from(sorted(self.queued)))
        key, deadline = self.queued[ticket_id]
        ticket = self.engine.tickets[ticket_id]
        assert self.engine.extend(ticket_id, max_wait, self.now)
        assert ticket.deadline == max(deadline, ticket.arrived + max_wait)  # never shorter
        self.queued[ticket_id] = (key, ticket.deadline)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release_unused(self, data: st.DataObject) -> None:
        # Its request never went upstream: as if never admitted (the engine refunds only
        # what has not drained, so counting it as nothing is the strictest reading).
        held = self.held.pop(data.draw(st.sampled_from(sorted(self.held))))
        if held in self.to_adopt:
            self.to_adopt.remove(held)
        for entry in [*held.admissions, *held.requests]:
            entry.units = 0.0
        self._process(self.engine.release(held.lease, None, self.now, unused=True))

    @precondition(lambda self: self.held)
    @rule(
        data=st.data(),
        usage=st.sampled_from(["unknown", "none", "half", "all", "over", "absurd"]),
    )
    def release(self, data: st.DataObject, usage: str) -> None:
        held = self.held.pop(data.draw(st.sampled_from(sorted(self.held))))
        if held in self.to_adopt:  # released before its holder handed it back
            self.to_adopt.remove(held)
        used = {
            "unknown": None,
            "none": 0.0,
            "half": held.tokens / 2,
            "all": held.tokens,
            "over": held.tokens + 150.0,
            "absurd": float("inf"),
        }[usage]
        sent = used
        if usage == "absurd":
            used = None  # the engine settles a report no bucket can hold as unknown
        if used is not None:
            for entry in held.admissions:
                entry.units = min(entry.units, used)  # what it used of what it was admitted
            if used > held.tokens:
                for name in (held.key, held.account):
                    log = self.logs.get((name, "tokens"))
                    # Charged to the bucket it reserved on, if that bucket is still the one in use.
                    if log is not None and held.buckets[name] is self._bucket(name) is not None:
                        log.entries.append(Entry(self.now, used - held.tokens, 0.0, False))
        self._process(self.engine.release(held.lease, sent, self.now))

    @precondition(lambda self: len(self.held) > len(self.to_adopt))
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        pending = {h.lease for h in self.to_adopt}
        held = self.held[data.draw(st.sampled_from(sorted(set(self.held) - pending)))]
        assert self.engine.renew(held.lease, self.now)
        held.expiry = self.now + LEASE_TTL

    @precondition(lambda self: self.queued)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        ticket = data.draw(st.sampled_from(sorted(self.queued)))
        key, _deadline = self.queued.pop(ticket)
        self._backlog(key, -1)
        self._process(self.engine.cancel(ticket, self.now))

    @rule(dt=st.sampled_from([0.05, 0.3, 1.0, 3.0, 12.0]))
    def advance(self, dt: float) -> None:
        self._advance_to(self.now + dt)

    @precondition(lambda self: self.to_adopt)
    @rule()
    def adopt(self) -> None:
        self._adopt_one()

    def _adopt_one(self) -> None:
        held = self.to_adopt.pop(0)
        key_pair, account_pair = self._pair(held.key)
        self.engine.adopt(held.lease, key_pair, account_pair, held.tokens, self.now)
        held.expiry = self.now + LEASE_TTL
        held.buckets = {name: self._bucket(name) for name in (held.key, held.account)}

    @rule(shares=st.sampled_from(SHARES), weights=WEIGHTS, priorities=PRIORITIES)
    def reclass(
        self, shares: tuple[float, ...], weights: tuple[int, ...], priorities: tuple[int, ...]
    ) -> None:
        # A new configuration: queued calls take their new class, priority and weight.
        self._classes(shares, weights, priorities)
        self.engine.reclassify(lambda t: self._klass(t.key.id[1]))
        self._process(self.engine.poll(self.now))

    # The rarer events share one rule (and one draw), so they do not crowd out the
    # requests' side.
    @rule(event=st.sampled_from(DISTURBANCES))
    def disturb(self, event: tuple) -> None:
        match event:
            case ("restart",):
                self._restart()
            case ("forget_idle",):
                for sid in self.engine.forget_idle(self.now, older_than=2.0):
                    # An idle account's queue goes, and its classes' service with it.
                    self.usage = {k: v for k, v in self.usage.items() if k[0] != sid[1]}
            case ("pause", account, seconds):  # Together answered 429
                self.engine.pause((self._sid(account), self.limits[account]), seconds, self.now)
            case ("limit", name, limit):
                self._change(name, limit)

    def _change(self, name: str, limit: Limit) -> None:
        self._set_limit(name, limit)
        self.engine.scope(self._sid(name), limit, self.now)  # applies it now, grants nothing
        self._process(self.engine.poll(self.now))

    def _restart(self) -> None:
        """A new limiter takes over: it assumes every bucket full at the old one's
        fullness bound; the web processes hand back their leases within the window."""
        old = self.engine
        self.engine = Engine(
            lease_ttl=LEASE_TTL,
            unknown_before=old.fullness_bound(self.now),
            adopt_until=self.now + ADOPT_WINDOW,
        )
        self._bury_dead()
        self.usage.clear()  # a new limiter measures the classes' service afresh
        self.to_adopt = sorted(self.held.values(), key=lambda h: h.lease)
        for held in self.to_adopt:
            held.expiry = float("inf")  # its holder is alive, and will hand it back
        # Queued callers time out at their end (LimiterUnavailable): nothing to answer here.
        self.queued.clear()
        for key in KEYS:
            self.backlog[key] = 0
        self._backlog("k0", 0)

    # --- invariants ----------------------------------------------------------------------
    @invariant()
    def rate_windows_hold(self) -> None:
        # For every run of charges ending with an admission (windows ending at now):
        # units <= max(capacity, first request) + rate x duration.
        for (name, kind), log in self.logs.items():
            entries = log.entries
            for end in range(log.checked, len(entries)):
                if not entries[end].admission:
                    continue
                total = 0.0
                for start in range(end, -1, -1):
                    total += entries[start].units
                    first = entries[start]
                    burst = max(log.capacity, first.estimate) if first.admission else log.capacity
                    allowed = burst + log.rate * (entries[end].at - first.at)
                    assert total <= allowed + EPS * max(1.0, allowed), (
                        f"{name} {kind}: {total} units in [{first.at}, {entries[end].at}], "
                        f"allowed {allowed}"
                    )
            log.checked = len(entries)

    @invariant()
    def queued_tickets_answered_by_their_deadline(self) -> None:
        for ticket, (_key, deadline) in self.queued.items():
            assert deadline > self.now, f"{ticket} still queued at {self.now}, deadline {deadline}"
            assert ticket in self.engine.tickets

    @invariant()
    def engine_agrees_on_what_is_held(self) -> None:
        assert set(self.engine.tickets) == set(self.queued)
        adopted = set(self.held) - {h.lease for h in self.to_adopt}
        assert adopted <= set(self.engine.leases)

    @invariant()
    def memory_follows_live_work(self) -> None:
        engine = self.engine
        assert len(engine._deadlines) <= COMPACT_FACTOR * len(engine.tickets) + SLACK
        assert len(engine._lease_expiries) <= COMPACT_FACTOR * len(engine.leases) + SLACK
        for group in engine.groups.values():
            assert (
                set(group.served)
                == set(group.waiting)
                == {t.flow for q in group.by_key.values() for t in q}
            )
            assert group.size == sum(len(q) for q in group.by_key.values())
        assert sum(g.size for g in engine.groups.values()) == len(engine.tickets)
        assert len(engine.scopes) <= 6 and len(engine.groups) <= 2
        assert all(set(g.usage) <= set(CLASSES) for g in engine.groups.values())


TestEngineInvariants = EngineMachine.TestCase
TestEngineInvariants.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
