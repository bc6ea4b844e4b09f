"""The admission arithmetic: GCRA buckets, leases and a shared queue. Pure and synchronous.

Nothing here does I/O or reads the clock: every call takes `now` (seconds, monotonic),
so the tests control time instead of sleeping. The limiter's consumer
(`limiter/authority/consumer.py`) owns one `Engine`, and it and its parts are the only
things that call it, one message at a time, which is what makes each decision atomic: a
request is checked against every scope it touches and charged to all of them, or to none.

Scopes
  A scope is one bucket of capacity: a team key x endpoint, or an upstream account x
  endpoint (the ceiling every team routed to that account shares). A request names its
  key scope and its upstream scope and must conform to both.

Buckets (GCRA)
  One number per bucket, the theoretical arrival time `tat`: the moment the bucket
  would be empty again. At time t the bucket holds `(tat - t) * rate` units of debt;
  a request of n units conforms when that debt plus n fits in `capacity` (the burst).
  This paces requests at `rate` with at most `capacity` at once, never "a minute's
  allowance in one second", because Together enforces per second. A request larger
  than the capacity (a long prompt against a token bucket) is paced, not refused: it
  goes once the bucket has been empty for the time its excess takes to refill, and is
  charged from then, so it too leaves the bucket at most full.

Leases and settling
  A grant that holds a concurrency slot or a token estimate returns a lease. Releasing
  it settles the estimate against what the request used: an overrun (used more than
  estimated) is charged from now on; an underrun is refunded only from the part of the
  reservation that has not drained yet (capacity that went by while the reservation
  held it was capacity nobody else could use). `renew` keeps a long stream's lease;
  a lease not renewed within `lease_ttl` belongs to a dead process and is reaped.
  A lease granted `refundable` and released `unused` (its request never went upstream: a
  merged embeddings caller whose merged request was refused at the account) gives back
  its request charges too, by the same rule: only what has not drained yet. So a key is charged
  for a merged call all or nothing, as for a call alone. A ticket asked `refundable`
  always gets a lease, so that it can be handed back so.

Queue
  A request that cannot go at once waits in the queue of its upstream scope, in a FIFO
  per key. Its ticket brings its class (sharing.py: a team, or a key given a share of
  its own; a ticket with none is its key's own class), its priority (critical, standard,
  background) and its class's weight. The heads are served in this order (HTB-like):
  (a) a head whose class has been served less than its guaranteed share of the ceiling
  (measured over a decaying window, in seconds of the account's capacity, so it follows
  the ceiling as it moves) goes first: a class that comes back takes the next grant,
  never waiting for the borrowers' queues; (b) then the highest priority with a head
  waiting (background only when nobody else waits); (c) within one priority, weighted
  start-time fair queuing by cost per flow (class x priority): each waiting flow has a
  tag, the account capacity it has been served since it started waiting over its weight
  (in seconds of that capacity: the larger of one request and its tokens), and the
  least-served flow's earliest head goes next. A flow that starts waiting joins at the
  highest tag its priority's flows have been served to (no credit for idle time, no
  catching up on service another flow got alone, none from a flow held back by its own
  key and served at last with a low tag); a grant within a share does not advance the
  tag, but raises a tag left behind to the least-served other flow's. That head holds
  its turn while it waits for the account: nobody behind it overtakes, however small.
  Only a head held back by its own key's limit is passed over (it delays no one else's
  share of the account), so no priority or share lets a key exceed its own limits.
  Work-conserving: whoever waits alone gets the whole ceiling. A retry after an
  upstream 429 (`reacquire`) takes the head of its key's queue. `reclassify` applies new
  classes to queued tickets at once.
  A request whose projected wait in that order already exceeds its max wait is refused
  at once, with the wait as its Retry-After. The max wait is its key's, unless the
  ticket brings its own (a merged embeddings request waits as long as its most patient
  caller allows), which `extend` may raise while it waits (a more patient caller joined).

Shadow scopes
  A scope whose limit is `shadow` holds no one back: it never delays, queues or refuses.
  At each grant it is evaluated as its enforced twin would be (`Scope.shadow_refusal`);
  the grant's decision lists the shadow scopes that would have refused it, and charges
  each shadow scope only with what its twin would have admitted, so over any history a
  shadow scope's would-be refusals are the refusals of an enforced twin on its own
  (`tests/limiter/test_engine_shadow.py`). Turned enforced, it keeps its buckets.
  The guarantees below are about enforced scopes.

Guarantees (`tests/limiter/test_engine_invariants.py` checks each after every step of
generated histories of acquires under generated classes (shares, priorities, weights,
changed mid-history), releases with actual usage, renewals, cancels, limit changes,
upstream pauses, restarts with adoption and time passing)
  1. Rate. For every bucket, between two changes of its limit, and for every run of
     charges ending with an admission: units charged <= max(capacity, n) + rate x d,
     where d is the run's duration and n the size of its first request (larger than
     the capacity only for an over-burst request, which prepaid its excess). Refunds
     count as lowering the refunded grant; overruns count where they were charged.
     Hence requests admitted <= burst + rate x d, and tokens used up to the estimates
     likewise; tokens used beyond an estimate are charged when the lease is settled
     (they were spent upstream before anyone could refuse them) and delay what follows.
  2. Concurrency. A grant never leaves a scope with more leases than its
     max_concurrent. Across a restart this holds when every lease still held is
     adopted before `adopt_until`: until then, capped scopes grant nothing. A lease
     adopted later is counted at once, so the cap can be exceeded by late adoptions.
  3. Deadlines. Every queued ticket is answered (granted or refused) by its deadline,
     provided the caller polls at `next_wakeup`.
  4. Fairness, shares and priorities. (a) A grant beyond its class's guaranteed share
     never goes while a head of a class below its share waits; (b) nor, unless within
     the grantee's share, while a head of a higher priority waits (heads held back by
     their own key's limit excepted). (c) While two flows of one priority, neither with
     a share, are both waiting on one account, and neither is held back by its own
     key's limit, the account capacity each is served from when both wait, over its
     weight, is within one maximum-size request (of that window's, over its flow's
     weight) of the other's: |s_i / w_i - s_j / w_j| <= max c / w. (With weights 1, as
     before: neither gets more than the other plus one maximum-size request.)
  5. Restart. Every admission leaves a bucket at most full, so a restarted engine that
     assumes every bucket full at `unknown_before` never admits more than the old one
     could have, as long as `unknown_before` is no earlier than the old instance's last
     decision and its `fullness_bound()` then (an overrun settled before the restart can
     leave a bucket more than full; `fullness_bound` says how far).
  6. Memory. Heaps and maps stay within a constant factor of live tickets and leases
     (plus the scopes seen recently; `forget_idle` drops the rest).
  7. Bad tickets. A ticket whose tokens are not a number from 0 to MAX_UNITS (NaN,
     infinite, negative, 10**400) is refused alone (INVALID_UNITS) before it is queued or
     charged; a release reporting such usage settles as unknown. No value a ticket
     brings stops the queue or touches another scope.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

# The order of service between classes: shares, priorities, weights.
from limiter.authority.sharing import DEFAULT_CLASS, FORGET_BELOW, Klass, Usage, below_share

# The reasons it decides with are the protocol's words (`error.code`, the 429 record);
# INVALID_UNITS: a ticket whose units no bucket can hold (NaN, infinite, negative, over
# MAX_UNITS), a bug upstream of the engine, refused alone.
from limiter.protocol.events import (
    ACCOUNT_RATE_LIMITED,
    CONCURRENCY_LIMITED,
    INVALID_UNITS,
    PRIORITY_WAITING,
    QUEUE_FULL,
    QUEUE_TIMEOUT,
    RATE_LIMITED,
    SHARE_USED_UP,
    TOKEN_RATE_LIMITED,
    UPSTREAM_PAUSED,
)

# A flow of an upstream scope's queue: (class id, priority). Fair tags are kept per flow.
Flow = tuple[str, int]

# ("key" | "account", object id, endpoint, model). A key's scope is per endpoint kind
# (model ""); an account's is per model, as Together limits each model on its own.
ScopeId = tuple[str, ...]


# The most tokens one ticket may reserve, or one release report: far above any call (the
# gateway bounds a body's size and its max_tokens), small enough that every bucket's time
# stays a finite float. 10**400 tokens once raised OverflowError while draining a queue,
# and every later acquire, which polls first, failed with it.
MAX_UNITS = 1e12

# Retry-After for waits the engine cannot compute (a concurrency slot frees when a
# request ends, which nobody can predict).
UNKNOWN_WAIT = 1.0

# A wait this short is no wait: float error must not leave the worker's timer firing
# over and over a hair before a request conforms.
EPSILON = 1e-9

# How much earlier than the engine's own arithmetic a promise of refusal ends
# (Engine.refused_for): float error, and a bucket's EPSILON, must never stretch it.
REFUSAL_MARGIN = 1e-3

# Stale heap entries (released leases, answered tickets) are dropped lazily; the heap is
# rebuilt once they outnumber the live ones by this factor (plus some slack).
COMPACT_FACTOR = 2
COMPACT_SLACK = 64


def units_valid(units: object) -> bool:
    """Whether `units` can be charged to a bucket: a number from 0 to MAX_UNITS. NaN and
    infinities fail the comparison, and an integer too large for a float is out of range."""
    return isinstance(units, int | float) and 0 <= units <= MAX_UNITS


@dataclass(frozen=True, slots=True)
class Limit:
    """One scope's limits, as the database holds them (see EndpointLimit)."""

    per_minute: float  # the rate the bucket refills at
    burst: int = 1
    tokens_per_minute: float | None = None
    max_concurrent: int | None = None
    queue_depth: int = 0
    max_wait: float = 0.0
    # Shadow: never refuses or delays; each grant says if it would have (`Scope.shadow_refusal`).
    shadow: bool = False


class Bucket:
    """A GCRA bucket of `capacity` units refilling at `rate` units a second.

    A `tat` in the past says since when the bucket has been empty; a bucket nobody has
    used has been empty forever.
    """

    __slots__ = ("rate", "capacity", "tat", "_drained", "_drained_at")

    def __init__(
        self, rate: float, capacity: float, tat: float = -math.inf, now: float = 0.0
    ) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tat = tat
        # The drain clock: units the bucket could have drained since it was made (rate x
        # time, across rate changes). Settling reads it to tell how much of a
        # reservation has drained already.
        self._drained = 0.0
        self._drained_at = now

    def copy(self) -> Bucket:
        # Built directly: copy.copy goes through __reduce_ex__, and a queue's projection
        # copies two buckets per scope for every ticket that cannot go at once.
        twin = Bucket(self.rate, self.capacity, self.tat, self._drained_at)
        twin._drained = self._drained
        return twin

    def drained(self, now: float) -> float:
        return self._drained + (now - self._drained_at) * self.rate

    def debt(self, now: float) -> float:
        """Units in use now: what the limiter enforces, and what the dashboard shows."""
        return max(0.0, self.tat - now) * self.rate

    def wait(self, units: float, now: float) -> float:
        """Seconds until `units` conform: until charging them leaves at most `capacity`.

        A request larger than the whole burst conforms once the bucket has been empty
        for (units - capacity) / rate seconds: it is paced rather than refused forever,
        and prepays its excess instead of leaving the bucket more than full.
        """
        wait = self.tat + (units - self.capacity) / self.rate - now
        return wait if wait > EPSILON else 0.0

    def charge(self, units: float, now: float) -> float:
        """Charge `units` that conform now. Returns the drain clock's reading when they
        began to drain (earlier than now by an over-burst request's prepaid excess)."""
        excess = max(0.0, units - self.capacity)
        self.tat = max(self.tat, now - excess / self.rate) + units / self.rate
        return self.drained(now) - excess

    def overdraw(self, units: float, now: float) -> None:
        """Charge units already spent (an overrun): from now on, conforming or not."""
        self.tat = max(self.tat, now) + units / self.rate

    def refund(self, units: float, now: float) -> None:
        units = min(units, self.debt(now))
        if units > 0:
            self.tat -= units / self.rate

    def remaining(self, now: float) -> int:
        return max(0, math.floor(self.capacity - self.debt(now) + 1e-9))

    def reset_after(self, now: float) -> float:
        """Seconds until the bucket is empty (fully replenished)."""
        return max(0.0, self.tat - now)

    def full_at(self) -> float:
        """The moment at which a full bucket would hold this bucket's debt."""
        return self.tat - self.capacity / self.rate

    def resize(self, rate: float, capacity: float, now: float) -> None:
        # Keep the units in use when a limit changes, so a raised limit frees room at
        # once and a lowered one does not forgive what was already admitted. (Time the
        # bucket spent empty is forgotten: an over-burst request prepays again.)
        debt = self.debt(now)
        self._drained, self._drained_at = self.drained(now), now
        self.rate, self.capacity = rate, capacity
        self.tat = now + debt / rate


class Scope:
    """The state of one scope: its buckets and its leases."""

    __slots__ = (
        "id",
        "limit",
        "requests",
        "tokens",
        "leases",
        "paused_until",
        "last_seen",
        "own_class",
    )

    def __init__(
        self, scope_id: ScopeId, limit: Limit, now: float, empty_since: float = -math.inf
    ) -> None:
        self.id = scope_id
        self.limit = limit
        self.requests = Bucket(limit.per_minute / 60.0, float(limit.burst), empty_since, now)
        self.tokens = self._token_bucket(limit, now, empty_since)
        self.leases: set[str] = set()
        self.paused_until = 0.0
        self.last_seen = now
        # A key's tickets with no class of their own are its class (Ticket.cls), named once.
        self.own_class = "key:" + "/".join(scope_id)

    @staticmethod
    def _token_bucket(limit: Limit, now: float, empty_since: float) -> Bucket | None:
        if not limit.tokens_per_minute:
            return None
        rate = limit.tokens_per_minute / 60.0
        # The token burst is the same number of seconds' worth as the request burst,
        # and at least one second's worth.
        seconds = max(1.0, limit.burst / (limit.per_minute / 60.0))
        return Bucket(rate, rate * seconds, empty_since, now)

    def update(self, limit: Limit, now: float) -> None:
        if limit is self.limit or limit == self.limit:  # every ticket brings its limits
            return
        self.requests.resize(limit.per_minute / 60.0, float(limit.burst), now)
        fresh = self._token_bucket(limit, now, empty_since=now)
        if fresh is None or self.tokens is None:
            self.tokens = fresh
        else:
            self.tokens.resize(fresh.rate, fresh.capacity, now)
        self.limit = limit

    @property
    def capped(self) -> bool:
        """Whether a grant must find a free slot here (a shadow scope's cap holds no one)."""
        return self.limit.max_concurrent is not None and not self.limit.shadow

    def rate_wait(self, tokens: float, now: float) -> tuple[float, str]:
        """Seconds until a request conforms to this scope's rates, and the reason if > 0."""
        if self.limit.shadow:  # holds no one back (an upstream pause still does)
            return max(0.0, self.paused_until - now), UPSTREAM_PAUSED
        return self._rate_wait(tokens, now)

    def _rate_wait(self, tokens: float, now: float) -> tuple[float, str]:
        wait, reason = self.requests.wait(1, now), RATE_LIMITED
        if self.tokens is not None and tokens:
            token_wait = self.tokens.wait(tokens, now)
            if token_wait > wait:
                wait, reason = token_wait, TOKEN_RATE_LIMITED
        pause = self.paused_until - now
        if pause > wait:
            wait, reason = pause, UPSTREAM_PAUSED
        return wait, reason

    def charge(self, tokens: float, now: float) -> tuple[_Charge, _Charge | None]:
        """Charge one request of `tokens` that conforms now; returns the request's charge
        (to refund, should the request never go) and the token charge to settle."""
        request = _Charge(self.requests, 1.0, self.requests.charge(1, now))
        if self.tokens is None:
            return request, None
        # A request with no estimate charges no tokens, but may still overrun.
        mark = self.tokens.charge(tokens, now) if tokens else self.tokens.drained(now)
        return request, _Charge(self.tokens, tokens, mark)

    def project(self, tokens: float, now: float) -> None:
        """Charge the buckets as `charge` does, keeping nothing to settle: a queue's
        projection charges a clone once per ticket ahead."""
        self.requests.charge(1, now)
        if self.tokens is not None and tokens:
            self.tokens.charge(tokens, now)

    def assume_full_at(self, moment: float) -> None:
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.tat = max(bucket.tat, moment + bucket.capacity / bucket.rate)

    def has_slot(self) -> bool:
        return not self.capped or len(self.leases) < (self.limit.max_concurrent or 0)

    def shadow_refusal(self, tokens: float, now: float) -> str:
        """A shadow scope at a grant: the reason an enforced twin would have refused this
        request ("" for none), as `Engine._refuse_at_once` decides on a key's own queue.
        The grant then charges a request the twin would have let go (at once, or after a
        wait within its max wait: GCRA charges that as it would at its turn), and nothing
        for a would-be refusal, so the would-refuse rate over time is the twin's."""
        limit = self.limit
        if limit.max_concurrent is not None and len(self.leases) >= limit.max_concurrent:
            return CONCURRENCY_LIMITED
        wait, reason = self._rate_wait(tokens, now)
        if wait <= 0:
            return ""
        if wait > limit.max_wait or limit.max_wait <= 0:
            return reason
        # The twin's requests queued before this one: its debt beyond the burst.
        if self.requests.debt(now) - self.requests.capacity >= limit.queue_depth:
            return QUEUE_FULL if limit.queue_depth else reason
        return ""

    def idle(self, now: float) -> bool:
        return (
            not self.leases
            and self.requests.tat <= now
            and (self.tokens is None or self.tokens.tat <= now)
        )

    def clone(self) -> Scope:
        """A copy of the buckets to project a queue on (leases are not copied)."""
        twin = Scope.__new__(Scope)
        twin.id, twin.limit, twin.leases = self.id, self.limit, self.leases
        twin.paused_until, twin.last_seen = self.paused_until, self.last_seen
        twin.own_class = self.own_class
        twin.requests = self.requests.copy()
        twin.tokens = None if self.tokens is None else self.tokens.copy()
        return twin


@dataclass(slots=True)
class _Charge:
    """What one grant charged one token bucket, kept to settle it on release."""

    bucket: Bucket
    units: float  # 0 for an adopted lease: the previous instance charged it
    drain_mark: float  # the bucket's drain clock when these units began to drain

    def settle(self, reserved: float, used: float, now: float) -> None:
        if used > reserved:
            # Spent upstream already: nothing to refuse, so charge it from now on.
            self.bucket.overdraw(used - reserved, now)
            return
        # Only the part not drained yet comes back: capacity that went by while this
        # reservation held it was capacity nobody else could use.
        undrained = self.units - (self.bucket.drained(now) - self.drain_mark)
        self.bucket.refund(min(self.units - used, undrained), now)

    def refund(self, now: float) -> None:
        """The charge was never used (its request did not go): what has not drained
        yet comes back."""
        self.settle(self.units, 0.0, now)


@dataclass(slots=True)
class Ticket:
    """One request asking to be admitted."""

    id: str
    key: Scope
    account: Scope
    tokens: float
    arrived: float
    deadline: float
    reply_to: str = ""
    request_id: str = ""
    seq: int = 0  # arrival order: breaks ties in the fair order
    # How long it may queue: its key's max wait, or its own (a merged embeddings request's).
    max_wait: float = 0.0
    refundable: bool = False  # always a lease, so that an unused grant can be handed back
    klass: Klass = DEFAULT_CLASS  # its class on the account: share, weight, priority
    rule: str = ""  # queued: the rule it waited on (the reason its wait was projected with)

    @property
    def scopes(self) -> tuple[Scope, Scope]:
        return (self.key, self.account)

    @property
    def cls(self) -> str:
        """Its class's id: the class's own, or its key's (a key with no class is one)."""
        return self.klass.id or self.key.own_class

    @property
    def flow(self) -> Flow:
        return (self.cls, self.klass.priority)


@dataclass(slots=True)
class _Lease:
    scopes: tuple[Scope, Scope]
    expiry: float
    tokens: float  # the estimate reserved
    charges: list[_Charge]  # its token charges, settled on release
    requests: list[_Charge] = field(default_factory=list)  # refunded if released unused
    # Granted `refundable`: only such a lease gives its request charges back when released
    # unused (a plain grant's request went upstream; Engine.refused_for counts on it).
    refundable: bool = False


@dataclass(frozen=True, slots=True)
class Quota:
    """What the caller is told about its own key's request limit (the x-ratelimit-* headers)."""

    limit_per_minute: int
    remaining: int
    reset_after: float


@dataclass(frozen=True, slots=True)
class Decision:
    kind: Literal["grant", "queued", "refuse"]
    ticket: Ticket
    quota: Quota
    lease: str = ""  # grant: the lease to hand back on release
    waited: float = 0.0  # grant: seconds spent queued
    reason: str = ""  # refuse: a reason code; queued: the rule it waits on
    retry_after: float = 0.0  # refuse: seconds; queued: projected wait
    scope: str = ""  # refuse: "key" or "account", whose limit refused
    # grant: the shadow limits that would have refused it, as ("key" | "account", reason)
    shadow: tuple[tuple[str, str], ...] = ()
    # refuse: seconds from the decision during which every call of this ticket's key to
    # this ticket's scopes (at its key's max wait) is refused too (Engine.refused_for); 0: no
    # such promise. `refused_scope` says whose state proves it ("key" or "account").
    refused_for: float = 0.0
    refused_scope: str = ""
    # queue_timeout, or a grant that queued: the rule it waited on (a reason code: its
    # key's rate, the account's ceiling, its class's share used up, a higher priority)
    rule: str = ""


@dataclass(slots=True)
class _Group:
    """The queue of one upstream scope: a FIFO per waiting key; each waiting flow's tag
    (the account capacity it has been served since it started waiting, over its weight);
    and each class's recent service, against its guaranteed share."""

    by_key: dict[ScopeId, deque[Ticket]] = field(default_factory=dict)
    served: dict[Flow, float] = field(default_factory=dict)
    waiting: dict[Flow, int] = field(default_factory=dict)  # queued tickets per flow
    usage: dict[str, Usage] = field(default_factory=dict)  # class id -> recent service
    classes: dict[str, Klass] = field(default_factory=dict)  # class id -> as last granted
    size: int = 0
    # Per priority, the highest tag a flow served has reached: where a flow that starts
    # waiting joins.
    vtime: dict[int, float] = field(default_factory=dict)

    def below_share(self, ticket: Ticket, now: float) -> bool:
        return below_share(self.usage.get(ticket.cls), ticket.klass.share, now)

    def rank(self, ticket: Ticket, now: float) -> tuple[int, int, float, int]:
        """Where a head stands in the order of service: below its class's share first,
        then the highest priority, then the least served (by weight), earliest on a tie."""
        under = 0 if self.below_share(ticket, now) else 1
        return (under, -ticket.klass.priority, self.served[ticket.flow], ticket.seq)

    def heads(self, now: float) -> list[Ticket]:
        """The heads in the order of service."""
        if len(self.by_key) == 1:  # one key waiting: nothing to rank
            return [q[0] for q in self.by_key.values()]
        return sorted((q[0] for q in self.by_key.values()), key=lambda t: self.rank(t, now))

    def record(self, ticket: Ticket, cost: float, now: float) -> None:
        """Count a grant's cost as its class's service (only named classes are measured:
        a key with no class has no share to measure against)."""
        if ticket.klass.id:
            self.usage.setdefault(ticket.klass.id, Usage()).add(cost, now)
            self.classes[ticket.klass.id] = ticket.klass


class Engine:
    """The single authority over admission for every scope it has seen."""

    def __init__(
        self,
        lease_ttl: float = 600.0,
        unknown_before: float | None = None,
        adopt_until: float | None = None,
    ) -> None:
        self.lease_ttl = lease_ttl
        # After a restart, another instance may have admitted requests up to this
        # (monotonic) time. Every scope then starts as if its burst had been used at that
        # moment: no admission leaves a bucket fuller, so limits hold across the restart.
        self.unknown_before = unknown_before
        # After a restart, web processes hand back the leases they hold until this time;
        # capped scopes grant nothing before it, or the cap could be exceeded.
        self.adopt_until = adopt_until
        self.scopes: dict[ScopeId, Scope] = {}
        self.groups: dict[ScopeId, _Group] = {}
        self.tickets: dict[str, Ticket] = {}  # queued tickets by id
        self.leases: dict[str, _Lease] = {}
        self._deadlines: list[tuple[float, str]] = []  # heap of queued tickets' deadlines
        self._lease_expiries: list[tuple[float, str]] = []  # heap of lease expiries
        self._seq = 0
        # The latest moment a forgotten scope's buckets emptied: a scope seen (again)
        # counts as empty since then, not forever, so forgetting grants no credit.
        self._forgotten_tat = -math.inf

    # --- scopes -----------------------------------------------------------------------
    def scope(self, scope_id: ScopeId, limit: Limit, now: float) -> Scope:
        scope = self.scopes.get(scope_id)
        if scope is None:
            scope = self.scopes[scope_id] = Scope(
                scope_id, limit, now, empty_since=self._forgotten_tat
            )
            if self.unknown_before is not None:
                scope.assume_full_at(self.unknown_before)
        else:
            scope.update(limit, now)
        scope.last_seen = now
        return scope

    def quota(self, scope: Scope, now: float) -> Quota:
        bucket = scope.requests
        return Quota(round(scope.limit.per_minute), bucket.remaining(now), bucket.reset_after(now))

    # --- the requests' side ------------------------------------------------------------
    def acquire(
        self,
        ticket_id: str,
        key: tuple[ScopeId, Limit],
        account: tuple[ScopeId, Limit],
        tokens: float,
        now: float,
        reply_to: str = "",
        request_id: str = "",
        *,
        max_wait: float | None = None,
        refundable: bool = False,
        klass: Klass = DEFAULT_CLASS,
    ) -> list[Decision]:
        """Admit, queue or refuse one request. Returns every decision this call made
        (granting may also serve others), the caller's own among them.

        `max_wait`: how long it may queue, instead of its key's max wait (a merged
        embeddings request: as long as its most patient caller allows). `refundable`:
        its grant always has a lease, which `release(unused=True)` can hand back whole.
        `klass`: its class on the account (share, weight, priority; sharing.py)."""
        # Serve anyone already due first (a timer firing late must not let this
        # request jump ahead of them); whoever is still queued after that cannot go now.
        decisions = self.poll(now)
        ticket = self._ticket(
            ticket_id, key, account, tokens, now, reply_to, request_id, max_wait, refundable
        )
        ticket.klass = klass.bounded()
        decisions.extend(self._admit(ticket, now, front=False))
        return decisions

    def reacquire(
        self,
        lease_id: str,
        ticket_id: str,
        key: tuple[ScopeId, Limit],
        account: tuple[ScopeId, Limit],
        tokens: float,
        now: float,
        tokens_used: float | None = 0.0,
        reply_to: str = "",
        request_id: str = "",
        *,
        max_wait: float | None = None,
        refundable: bool = False,
        klass: Klass = DEFAULT_CLASS,
    ) -> list[Decision]:
        """Ask again for a request that holds `lease_id` (Together answered 429): hand
        the lease back and queue the new ticket in one step.

        Asking while holding the lease deadlocks a capped scope (every retry waits for a
        slot its own holder keeps); releasing first and then asking lets a newcomer take
        the slot in between. Here the slot frees and the ticket takes the head of its
        key's queue before anyone else is served. The old lease's tokens are settled as
        `tokens_used` (none by default: the upstream refused the call).
        """
        decisions = self.poll(now)
        self._settle(lease_id, tokens_used, now)
        ticket = self._ticket(
            ticket_id, key, account, tokens, now, reply_to, request_id, max_wait, refundable
        )
        ticket.klass = klass.bounded()
        decisions.extend(self._admit(ticket, now, front=True))
        return decisions

    def release(
        self, lease_id: str, tokens_used: float | None, now: float, *, unused: bool = False
    ) -> list[Decision]:
        """Hand a lease back, settle its token estimate, and serve whoever waited for it.

        `unused`: its request never went upstream (a merged embeddings caller whose merged
        request was refused at the account), so its request charges come back as well as
        its token reservation, as far as they have not drained: all or nothing, as for a
        request refused outright. (What drained was capacity nobody else could use.)"""
        if not self._settle(lease_id, 0.0 if unused else tokens_used, now, unused=unused):
            return []  # released twice or reaped already: harmless
        return self.poll(now)

    def extend(self, ticket_id: str, max_wait: float, now: float) -> bool:
        """Let a queued ticket wait longer: up to `max_wait` from its arrival (a merged
        embeddings request that a more patient caller joined). Never shortens a wait.
        False when the ticket is no longer queued (granted, refused or cancelled)."""
        ticket = self.tickets.get(ticket_id)
        if ticket is None:
            return False
        deadline = ticket.arrived + max_wait
        if deadline > ticket.deadline:
            ticket.max_wait, ticket.deadline = max_wait, deadline
            self._push(self._deadlines, deadline, ticket_id)  # the old entry goes stale
        return True

    def still_queued(self, ticket_id: str, now: float) -> Decision | None:
        """A "queued" decision again for a ticket still waiting here (asked again by a web
        process whose answer may have been lost), with its projected wait from its place
        now; None when it is not queued. Nothing is charged or queued."""
        ticket = self.tickets.get(ticket_id)
        if ticket is None:
            return None
        projected = self._projected(ticket, self.groups[ticket.account.id], now)
        return Decision(
            "queued",
            ticket,
            self.quota(ticket.key, now),
            reason=projected[1],
            retry_after=projected[0],
        )

    def renew(self, lease_id: str, now: float) -> bool:
        """Keep a lease whose request is still running (a long stream) for another
        `lease_ttl`. False when it is gone (expired, released): its slot is no longer held."""
        lease = self.leases.get(lease_id)
        if lease is None or lease.expiry <= now:
            return False  # the next poll reaps an expired one
        if now + self.lease_ttl > lease.expiry:  # the heap holds one live entry per lease
            lease.expiry = now + self.lease_ttl
            self._push(self._lease_expiries, lease.expiry, lease_id)
        return True

    def cancel(self, ticket_id: str, now: float) -> list[Decision]:
        """A caller that went away while queued gives its place back."""
        ticket = self.tickets.get(ticket_id)
        if ticket is not None:
            self._dequeue(ticket)
        return self.poll(now)

    def adopt(
        self,
        lease_id: str,
        key: tuple[ScopeId, Limit],
        account: tuple[ScopeId, Limit],
        tokens: float,
        now: float,
    ) -> None:
        """Count a lease granted by a previous instance (its holder told us after a restart).

        Counted even over the cap: the request is running. Its tokens were charged by
        the previous instance (the restart assumes every bucket full), so settling it
        refunds nothing here and charges only an overrun.
        """
        if lease_id in self.leases:
            return
        if not units_valid(tokens):
            tokens = 0.0  # only settling reads it: an overrun is then charged from 0
        scopes = (self.scope(key[0], key[1], now), self.scope(account[0], account[1], now))
        charges = []
        for scope in scopes:
            scope.leases.add(lease_id)
            if scope.tokens is not None:
                charges.append(_Charge(scope.tokens, 0.0, scope.tokens.drained(now)))
        # The previous instance charged its request too: an unused release refunds nothing.
        requests = [_Charge(scope.requests, 0.0, scope.requests.drained(now)) for scope in scopes]
        lease = self.leases[lease_id] = _Lease(
            scopes, now + self.lease_ttl, tokens, charges, requests
        )
        self._push(self._lease_expiries, lease.expiry, lease_id)

    def pause(self, account: tuple[ScopeId, Limit], seconds: float, now: float) -> None:
        """Together said 429: nobody routed to this account and endpoint goes for `seconds`."""
        scope = self.scope(account[0], account[1], now)
        scope.paused_until = max(scope.paused_until, now + seconds)

    # --- the clock's side ---------------------------------------------------------------
    def poll(self, now: float) -> list[Decision]:
        """Reap expired leases, refuse timed-out tickets, and grant whatever conforms now."""
        self._reap_leases(now)
        decisions = self._drain_all(now)
        timed_out = False
        while (
            deadline := self._top(self._deadlines, self._ticket_live)
        ) is not None and deadline <= now:
            _deadline, ticket_id = heapq.heappop(self._deadlines)
            ticket = self.tickets[ticket_id]
            decisions.append(self._timeout(ticket, now))
            self._dequeue(ticket)
            timed_out = True
        if timed_out:
            decisions.extend(self._drain_all(now))  # a head that held its turn is gone
        return decisions

    def next_wakeup(self, now: float) -> float | None:
        """When `poll` next has something to do, or None when only a release can help."""
        times: list[float] = []
        for heap, live in (
            (self._deadlines, self._ticket_live),
            (self._lease_expiries, self._lease_live),
        ):
            top = self._top(heap, live)
            if top is not None:
                times.append(top)
        for group in self.groups.values():
            for head in group.heads(now):
                # Mirrors _turn: a head held back by its own key is passed over, so
                # wake when its key lets it go; the first other head holds the turn.
                key_wait = self._wait(head.key, head.tokens, now)
                if key_wait is None:
                    continue
                if key_wait > 0:
                    times.append(now + key_wait)
                    continue
                account_wait = self._wait(head.account, head.tokens, now)
                if account_wait is not None:
                    times.append(now + account_wait)
                break
        return min(times) if times else None

    def fullness_bound(self, now: float) -> float:
        """The moment a restarted engine must assume every bucket full at (its
        `unknown_before`) for limits to hold: now, unless a settled overrun left some
        bucket more than full. A heartbeat should record this rather than the bare time."""
        bound = now
        for scope in self.scopes.values():
            for bucket in (scope.requests, scope.tokens):
                if bucket is not None:
                    bound = max(bound, bucket.full_at())
        return bound

    def forget_idle(self, now: float, older_than: float = 120.0) -> list[ScopeId]:
        """Drop scopes nobody used for a while, so memory follows the active keys.
        Returns the ids dropped (the worker drops its statistics for them too)."""
        busy = {t.key.id for t in self.tickets.values()} | {
            t.account.id for t in self.tickets.values()
        }
        stale = [
            sid
            for sid, s in self.scopes.items()
            if sid not in busy
            and s.idle(now)
            and now - s.last_seen > older_than
            and s.paused_until <= now
        ]
        for sid in stale:
            scope = self.scopes.pop(sid)
            for bucket in (scope.requests, scope.tokens):
                if bucket is not None:
                    self._forgotten_tat = max(self._forgotten_tat, bucket.tat)
            self.groups.pop(sid, None)
        for group in self.groups.values():  # classes served long ago: nothing to measure
            for cls in [c for c, u in group.usage.items() if u.read(now) < FORGET_BELOW]:
                del group.usage[cls], group.classes[cls]
        return stale

    # --- admission ------------------------------------------------------------------------
    def _ticket(
        self,
        ticket_id: str,
        key: tuple[ScopeId, Limit],
        account: tuple[ScopeId, Limit],
        tokens: float,
        now: float,
        reply_to: str,
        request_id: str,
        max_wait: float | None = None,
        refundable: bool = False,
    ) -> Ticket:
        self._seq += 1
        key_scope = self.scope(key[0], key[1], now)
        account_scope = self.scope(account[0], account[1], now)
        return Ticket(
            ticket_id,
            key_scope,
            account_scope,
            tokens,
            now,
            now,
            reply_to,
            request_id,
            self._seq,
            key_scope.limit.max_wait if max_wait is None else max(0.0, max_wait),
            refundable,
        )

    def _admit(self, ticket: Ticket, now: float, front: bool) -> list[Decision]:
        if not units_valid(ticket.tokens):
            # Refused alone, before it is queued or charged: a bucket holding it would
            # fail (or never empty) for everyone on the scope, and a queue with it in
            # would fail every poll.
            return [self._refuse(ticket, INVALID_UNITS, 0.0, ticket.key, now)]
        group = self.groups.setdefault(ticket.account.id, _Group())
        if not group.size and self._admissible(ticket, now):
            group.record(ticket, self._cost(ticket), now)
            return [self._grant(ticket, now)]
        # Others wait: take a place in the fair order and see whether it is this
        # ticket's turn (it may be, when those ahead are held back by their own keys).
        self._enqueue(group, ticket, front)
        decisions = self._drain(group, now)
        if ticket.id not in self.tickets:
            return decisions
        projected = self._projected(ticket, group, now)
        refusal = self._refuse_at_once(ticket, group, projected, now)
        if refusal is not None:
            self._dequeue(ticket)
            decisions.append(refusal)
            return decisions
        ticket.deadline = now + ticket.max_wait
        ticket.rule = projected[1]
        self._push(self._deadlines, ticket.deadline, ticket.id)
        decisions.append(
            Decision(
                "queued",
                ticket,
                self.quota(ticket.key, now),
                reason=projected[1],
                retry_after=projected[0],
            )
        )
        return decisions

    def _wait(self, scope: Scope, tokens: float, now: float) -> float | None:
        """Seconds until `scope` lets a request of `tokens` go, or None while it has no
        free concurrency slot (nobody can say when one frees)."""
        if not scope.has_slot():
            return None
        wait = scope.rate_wait(tokens, now)[0]
        if scope.capped and self.adopt_until is not None and self.adopt_until - now > wait:
            wait = self.adopt_until - now
        return wait

    def _admissible(self, ticket: Ticket, now: float) -> bool:
        return all(self._wait(scope, ticket.tokens, now) == 0 for scope in ticket.scopes)

    def _grant(self, ticket: Ticket, now: float) -> Decision:
        requests: list[_Charge] = []
        charges: list[_Charge] = []
        charged: list[Scope] = []
        shadow: list[tuple[str, str]] = []
        for scope in ticket.scopes:
            if scope.limit.shadow and (reason := scope.shadow_refusal(ticket.tokens, now)):
                shadow.append(("key" if scope is ticket.key else "account", reason))
                continue  # would have been refused: charged nothing, holds no slot
            charged.append(scope)
            request, tokens = scope.charge(ticket.tokens, now)
            requests.append(request)
            if tokens is not None:
                charges.append(tokens)
        # A lease only where something must be handed back: a concurrency slot, a
        # token estimate to settle, or a refundable grant. Otherwise the grant is complete
        # as it stands, and the caller sends no release (one channel-layer message fewer).
        needs_lease = ticket.refundable or any(
            s.limit.max_concurrent is not None or (s.tokens is not None and ticket.tokens)
            for s in ticket.scopes
        )
        lease = ""
        if needs_lease:
            lease = ticket.id
            for scope in charged:
                scope.leases.add(lease)
            self.leases[lease] = _Lease(
                ticket.scopes,
                now + self.lease_ttl,
                ticket.tokens,
                charges,
                requests,
                refundable=ticket.refundable,
            )
            self._push(self._lease_expiries, now + self.lease_ttl, lease)
        return Decision(
            "grant",
            ticket,
            self.quota(ticket.key, now),
            lease=lease,
            waited=now - ticket.arrived,
            shadow=tuple(shadow),
            rule=ticket.rule,
        )

    def _settle(
        self, lease_id: str, tokens_used: float | None, now: float, *, unused: bool = False
    ) -> bool:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return False
        for scope in lease.scopes:
            scope.leases.discard(lease_id)
        self._compact(self._lease_expiries)
        if tokens_used is not None and not units_valid(tokens_used):
            tokens_used = None  # a report no bucket can hold: the estimate stands
        if tokens_used is not None:
            for charge in lease.charges:
                charge.settle(lease.tokens, tokens_used, now)
        if unused and lease.refundable:
            for charge in lease.requests:
                charge.refund(now)
        return True

    # --- refusals -------------------------------------------------------------------------
    def _refuse(
        self,
        ticket: Ticket,
        reason: str,
        retry_after: float,
        scope: Scope,
        now: float,
        rule: str = "",
    ) -> Decision:
        who = "key" if scope is ticket.key else "account"
        refused_for, proven_by = self.refused_for(ticket, now)
        return Decision(
            "refuse",
            ticket,
            self.quota(ticket.key, now),
            reason=reason,
            retry_after=retry_after,
            scope=who,
            refused_for=refused_for,
            refused_scope=proven_by,
            rule=rule,
        )

    def refused_for(self, ticket: Ticket, now: float) -> tuple[float, str]:
        """How long from `now` every plain ticket like this one (same key scope and account
        scope, at its key's own max wait) is refused whatever else happens, unless a limit
        changes or the engine restarts, and whose state proves it; (0.0, "") when nothing
        is proven.

        A ticket is granted only once its key's request bucket conforms (at C, one unit
        of room) and its account is not paused (until P): before max(C, P) it cannot go
        at once, nor be served from the queue, and its projected wait is at least
        max(C, P) - t. Without a queue (queue depth 0, or no wait allowed) it is then
        refused outright; with one, as long as that wait exceeds its max wait. Nothing but
        a limit change (a broadcast) moves C earlier, except a refundable lease released
        `unused`, which refunds at most one request: each such lease of the key counts
        as one (a plain grant's lease refunds no request). A
        pause only grows (a restarted engine forgets it: the web process forgets too).
        Token buckets, concurrency slots and the account's rate are left out: they
        depend on the ticket's size, on when requests end, or on what Together says. So is
        a key row in shadow, which holds no one back.
        """
        key, account = ticket.key, ticket.account
        bucket = key.requests
        # A shadow row holds no one back, so its bucket proves nothing.
        if key.limit.shadow or bucket.rate <= 0 or not math.isfinite(bucket.tat):
            conforms = -math.inf
        else:
            refunds = sum(1 for held in key.leases if self._refundable(held))
            conforms = bucket.tat + (1 - bucket.capacity - refunds) / bucket.rate
        until, proven_by = conforms - REFUSAL_MARGIN, "key"
        if account.paused_until - REFUSAL_MARGIN > until:
            until, proven_by = account.paused_until - REFUSAL_MARGIN, "account"
        # What a plain call may queue for is its key's max wait: the promise is about those
        # (this ticket may bring its own: a merged request, or one asked again with what
        # was left of its wait), and a wait a call could queue for would be served.
        if key.limit.queue_depth > 0 and key.limit.max_wait > 0:
            until -= key.limit.max_wait
        if until - now <= 0:
            return 0.0, ""
        return until - now, proven_by

    def _refundable(self, lease_id: str) -> bool:
        lease = self.leases.get(lease_id)
        return lease is not None and lease.refundable

    def _timeout(self, ticket: Ticket, now: float) -> Decision:
        # Say why it could not go: still over a rate, or waiting for a concurrency slot.
        for scope in ticket.scopes:
            if not scope.has_slot():
                return self._refuse(ticket, CONCURRENCY_LIMITED, UNKNOWN_WAIT, scope, now)
        group = self.groups[ticket.account.id]
        wait, rule, _scope = self._projected(ticket, group, now)
        return self._refuse(
            ticket,
            QUEUE_TIMEOUT,
            max(wait, 1.0 / ticket.key.requests.rate),
            ticket.key,
            now,
            rule,
        )

    def _refuse_at_once(
        self, ticket: Ticket, group: _Group, projected: tuple[float, str, Scope], now: float
    ) -> Decision | None:
        """Refuse now what the queue could not serve in time. Called with the ticket in
        its place in the queue, when it could not go at once."""
        key = ticket.key
        wait, reason, scope = projected
        if wait > ticket.max_wait:
            # Retry when the wait will have shrunk to what this ticket may queue for.
            return self._refuse(ticket, reason, wait - ticket.max_wait, scope, now)
        blocked = next(
            (s for s in ticket.scopes if self._wait(s, ticket.tokens, now) is None), None
        )
        ahead_in_key = next(i for i, t in enumerate(group.by_key[key.id]) if t is ticket)
        if ahead_in_key >= key.limit.queue_depth or ticket.max_wait <= 0:
            if blocked is not None and (wait <= 0 or not key.limit.queue_depth):
                return self._refuse(ticket, CONCURRENCY_LIMITED, UNKNOWN_WAIT, blocked, now)
            reason = QUEUE_FULL if key.limit.queue_depth else reason
            return self._refuse(ticket, reason, max(wait, 1.0 / key.requests.rate), key, now)
        return None

    # --- the fair queue -------------------------------------------------------------------
    @staticmethod
    def _cost(ticket: Ticket) -> float:
        """What a ticket takes of its account, in seconds of the account's capacity: the
        larger of one request and its tokens. Fairness counts this, not requests."""
        account = ticket.account
        cost = 1.0 / account.requests.rate
        if account.tokens is not None and ticket.tokens:
            cost = max(cost, ticket.tokens / account.tokens.rate)
        return cost

    def _enqueue(self, group: _Group, ticket: Ticket, front: bool) -> None:
        queue = group.by_key.get(ticket.key.id)
        if queue is None:
            queue = group.by_key[ticket.key.id] = deque()
        self._join(group, ticket.flow)
        if front:
            queue.appendleft(ticket)
        else:
            queue.append(ticket)
        group.size += 1
        self.tickets[ticket.id] = ticket

    def _dequeue(self, ticket: Ticket) -> None:
        del self.tickets[ticket.id]
        group = self.groups[ticket.account.id]
        queue = group.by_key[ticket.key.id]
        queue.remove(ticket)
        group.size -= 1
        if not queue:
            del group.by_key[ticket.key.id]
        self._leave(group, ticket.flow)
        if not group.size:
            group.vtime.clear()
        self._compact(self._deadlines)

    @staticmethod
    def _join(group: _Group, flow: Flow) -> None:
        if flow not in group.waiting:
            # Starts waiting: level with the furthest served of its priority, so idle time
            # earns no credit (and a flow held back by its key lends its low tag to nobody).
            group.served[flow] = group.vtime.get(flow[1], 0.0)
            group.waiting[flow] = 0
        group.waiting[flow] += 1

    @staticmethod
    def _leave(group: _Group, flow: Flow) -> None:
        group.waiting[flow] -= 1
        if not group.waiting[flow]:
            del group.waiting[flow], group.served[flow]

    def reclassify(self, classify: Callable[[Ticket], Klass]) -> None:
        """The classes changed (a new configuration): every queued ticket takes its new
        class, priority and weight at once (the next `poll` serves in the new order)."""
        for ticket in self.tickets.values():
            klass = classify(ticket).bounded()
            if klass == ticket.klass:
                continue
            group = self.groups[ticket.account.id]
            self._leave(group, ticket.flow)
            ticket.klass = klass
            self._join(group, ticket.flow)

    def _turn(self, group: _Group, now: float) -> Ticket | None:
        """The head whose turn it is, in the order of service (_Group.rank), passing over
        heads held back only by their own key (they delay nobody else's share)."""
        for head in group.heads(now):
            if self._wait(head.key, head.tokens, now) == 0:
                return head
        return None

    def _drain(self, group: _Group, now: float) -> list[Decision]:
        """Grant heads in the fair order while they conform. A head waiting for the
        account holds its turn: nobody behind it goes first, however small."""
        granted: list[Decision] = []
        while group.size:
            head = self._turn(group, now)
            if head is None or self._wait(head.account, head.tokens, now) != 0:
                break
            self._serve(group, head, now)
            self._dequeue(head)
            granted.append(self._grant(head, now))
        return granted

    def _serve(self, group: _Group, head: Ticket, now: float) -> None:
        """Advance the tag of the flow served. Within its class's guaranteed share a grant
        is not borrowing: it does not advance the flow's tag (no penalty), but a tag left
        behind is raised to the least-served other flow of its priority (no credit: a
        class served by its share does not catch up on borrowing afterwards)."""
        cost = self._cost(head)
        flow, priority = head.flow, head.klass.priority
        vtime = group.vtime.get(priority, 0.0)
        if group.below_share(head, now):
            others = [tag for f, tag in group.served.items() if f[1] == priority and f != flow]
            group.served[flow] = max(group.served[flow], min(others, default=vtime))
        else:
            group.served[flow] += cost / head.klass.weight
            # The highest tag served so far: a flow held back by its own key and served at
            # last with a low tag must not set where a newcomer joins (it would get that
            # flow's credit over everyone who waited unheld).
            group.vtime[priority] = max(vtime, group.served[flow])
        group.record(head, cost, now)

    def _drain_all(self, now: float) -> list[Decision]:
        decisions: list[Decision] = []
        for group in self.groups.values():
            if group.size:
                decisions.extend(self._drain(group, now))
        return decisions

    def _ahead(self, ticket: Ticket, group: _Group, now: float) -> list[Ticket]:
        """The queued tickets served before `ticket` in the order of service, in that order.

        A ticket's tag is its flow's tag plus the cost (over the weight) of its flow's
        tickets before it; a flow's tickets go in their keys' FIFO order, the earliest
        head first. Tickets go by (below their class's share now, priority, tag, arrival).
        A projection: a class crossing its share while the queue drains is not foreseen.
        """
        ranked: list[tuple[tuple[int, int, float, int], Ticket]] = []
        flows: dict[Flow, list[deque[Ticket]]] = {}
        for queue in group.by_key.values():
            flows.setdefault(queue[0].flow, []).append(queue)
        for flow, queues in flows.items():
            tag = group.served.get(flow, 0.0)
            for queued in self._merged(queues):
                under = 0 if group.below_share(queued, now) else 1
                ranked.append(((under, -queued.klass.priority, tag, queued.seq), queued))
                tag += self._cost(queued) / queued.klass.weight
        mine = next((rank for rank, t in ranked if t is ticket), None)
        assert mine is not None, "only a queued ticket has a place in the order"
        own = group.by_key[ticket.key.id]
        before = {id(t) for t in itertools.takewhile(lambda t: t is not ticket, own)}
        return [
            t
            for rank, t in sorted(ranked, key=lambda e: e[0])
            if id(t) in before or (t.key is not ticket.key and rank < mine)
        ]

    @staticmethod
    def _merged(queues: list[deque[Ticket]]) -> list[Ticket]:
        """One flow's tickets in the order it serves them: each key's in its FIFO order,
        the earliest-arrived head first."""
        if len(queues) == 1:
            return list(queues[0])
        cursors = [0] * len(queues)
        merged: list[Ticket] = []
        while True:
            live = [i for i, q in enumerate(queues) if cursors[i] < len(q)]
            if not live:
                return merged
            i = min(live, key=lambda i: queues[i][cursors[i]].seq)
            merged.append(queues[i][cursors[i]])
            cursors[i] += 1

    def _projected(self, ticket: Ticket, group: _Group, now: float) -> tuple[float, str, Scope]:
        """How long `ticket` would wait in its place in the fair order if nobody else
        came, why, and whose limit that is.

        Every ticket ahead of it is charged to the account as soon as the account lets
        it go, its own key's earlier tickets to its key as well; a concurrency slot that
        is closed now is not predicted (it frees when a request ends).
        """
        account, key = ticket.account.clone(), ticket.key.clone()
        at_account = at_key = now
        account_reason, key_reason = ACCOUNT_RATE_LIMITED, RATE_LIMITED
        ahead = self._ahead(ticket, group, now)
        for queued in [*ahead, ticket]:
            at_account, account_reason = self._ready(
                account, queued.tokens, at_account, account_reason
            )
            account.project(queued.tokens, at_account)
            if queued.key is ticket.key:
                at_key, key_reason = self._ready(key, queued.tokens, at_key, key_reason)
                key.project(queued.tokens, at_key)
        if at_account > at_key:
            reason = account_reason
            if reason in (RATE_LIMITED, ACCOUNT_RATE_LIMITED):
                reason = self._account_rule(ticket, group, ahead, now)
            return at_account - now, reason, ticket.account
        return at_key - now, key_reason, ticket.key

    @staticmethod
    def _account_rule(ticket: Ticket, group: _Group, ahead: list[Ticket], now: float) -> str:
        """Which rule holds a ticket waiting on its account's ceiling: a call of a higher
        priority before it, its class's guaranteed share used up, or the ceiling alone."""
        if any(t.klass.priority > ticket.klass.priority for t in ahead):
            return PRIORITY_WAITING
        if ticket.klass.share > 0 and not group.below_share(ticket, now):
            return SHARE_USED_UP
        return ACCOUNT_RATE_LIMITED

    def _ready(self, scope: Scope, tokens: float, at: float, reason: str) -> tuple[float, str]:
        """When (not before `at`) `scope`'s rates let a request go, and why it waits."""
        wait, why = scope.rate_wait(tokens, at)
        if scope.capped and self.adopt_until is not None and self.adopt_until - at > wait:
            wait, why = self.adopt_until - at, CONCURRENCY_LIMITED
        return (at + wait, why) if wait > 0 else (at, reason)

    # --- expiry -------------------------------------------------------------------------
    def _reap_leases(self, now: float) -> None:
        # A lease whose holder vanished (a killed web process) frees its slot at expiry.
        while (
            expiry := self._top(self._lease_expiries, self._lease_live)
        ) is not None and expiry <= now:
            _expiry, lease_id = heapq.heappop(self._lease_expiries)
            for scope in self.leases.pop(lease_id).scopes:
                scope.leases.discard(lease_id)
        self._compact(self._lease_expiries)

    def _ticket_live(self, entry: tuple[float, str]) -> bool:
        ticket = self.tickets.get(entry[1])
        return ticket is not None and ticket.deadline == entry[0]

    def _lease_live(self, entry: tuple[float, str]) -> bool:
        lease = self.leases.get(entry[1])
        return lease is not None and lease.expiry == entry[0]

    @staticmethod
    def _top(
        heap: list[tuple[float, str]], live: Callable[[tuple[float, str]], bool]
    ) -> float | None:
        """The earliest live time in `heap`, dropping stale entries on the way."""
        while heap and not live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _push(self, heap: list[tuple[float, str]], at: float, item: str) -> None:
        heapq.heappush(heap, (at, item))
        self._compact(heap)

    def _compact(self, heap: list[tuple[float, str]]) -> None:
        # Answered tickets and released (or renewed) leases leave stale entries behind;
        # rebuild once they outnumber the live ones, so memory follows live work. Each
        # rebuild follows at least half as many removals or pushes: O(1) amortised.
        deadlines = heap is self._deadlines
        live_count = len(self.tickets) if deadlines else len(self.leases)
        if len(heap) > COMPACT_FACTOR * live_count + COMPACT_SLACK:
            live = self._ticket_live if deadlines else self._lease_live
            heap[:] = [entry for entry in heap if live(entry)]
            heapq.heapify(heap)
