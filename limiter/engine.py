"""The admission arithmetic: GCRA buckets, leases and a fair queue. Pure and synchronous.

Nothing here does I/O or reads the clock: every call takes `now` (seconds, monotonic),
so the tests control time instead of sleeping. The worker (`limiter/worker.py`) owns
one `Engine` and is the only thing that calls it, which is what makes each decision
atomic: a request is checked against every scope it touches and charged to all of
them, or to none.

Scopes
  A scope is one bucket of capacity: a team key x endpoint, or an upstream account x
  endpoint (the ceiling every team routed to that account shares). A request names its
  key scope and its upstream scope and must conform to both.

Buckets (GCRA)
  One number per bucket, the theoretical arrival time `tat`: the moment the bucket
  would be empty again. At time t the bucket holds `(tat - t) * rate` units of debt;
  a request of n units conforms when that debt plus n fits in `capacity` (the burst).
  This paces requests at `rate` with at most `capacity` at once, never "a minute's
  allowance in one second", because Together enforces per second.

Queue
  A request that does not conform waits in the queue of its upstream scope, in a
  sub-queue of its key. Sub-queues are served round-robin, so one key's flood cannot
  starve another key's trickle. A request whose projected wait already exceeds its
  max wait is refused at once, with the wait as an exact Retry-After.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

ScopeId = tuple[str, str, str]  # ("key" | "account", object id, endpoint)

# Reason codes, as the API puts them in `error.code` and the 429 record keeps them.
RATE_LIMITED = "rate_limited"
ACCOUNT_RATE_LIMITED = "account_rate_limited"
TOKEN_RATE_LIMITED = "token_rate_limited"
QUEUE_FULL = "queue_full"
QUEUE_TIMEOUT = "queue_timeout"
CONCURRENCY_LIMITED = "concurrency_limited"
UPSTREAM_PAUSED = "upstream_paused"

# Retry-After for waits the engine cannot compute (a concurrency slot frees when a
# request ends, which nobody can predict).
UNKNOWN_WAIT = 1.0


@dataclass(frozen=True, slots=True)
class Limit:
    """One scope's limits, as the database holds them (see EndpointLimit)."""

    per_minute: float  # the rate the bucket refills at
    burst: int = 1
    tokens_per_minute: float | None = None
    max_concurrent: int | None = None
    queue_depth: int = 0
    max_wait: float = 0.0


class Bucket:
    """A GCRA bucket of `capacity` units refilling at `rate` units a second."""

    __slots__ = ("rate", "capacity", "tat")

    def __init__(self, rate: float, capacity: float, tat: float = 0.0) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tat = tat

    def debt(self, now: float) -> float:
        """Units in use now: what the limiter enforces, and what the dashboard shows."""
        return max(0.0, self.tat - now) * self.rate

    def wait(self, units: float, now: float, ahead: float = 0.0) -> float:
        """Seconds until `units` conform, after `ahead` units queued before them.

        A request larger than the whole burst (a long prompt against a token bucket)
        conforms once the bucket is empty, so it is paced rather than refused forever.
        """
        tat = max(self.tat, now) + ahead / self.rate
        room = max(0.0, self.capacity - units) / self.rate
        return max(0.0, tat - room - now)

    def charge(self, units: float, now: float) -> None:
        self.tat = max(self.tat, now) + units / self.rate

    def refund(self, units: float) -> None:
        # Settling a token estimate: a negative refund charges the difference.
        self.tat -= units / self.rate

    def remaining(self, now: float) -> int:
        return max(0, math.floor(self.capacity - self.debt(now) + 1e-9))

    def reset_after(self, now: float) -> float:
        """Seconds until the bucket is empty (fully replenished)."""
        return max(0.0, self.tat - now)

    def resize(self, rate: float, capacity: float, now: float) -> None:
        # Keep the units in use when a limit changes, so a raised limit frees room at
        # once and a lowered one does not forgive what was already admitted.
        debt = self.debt(now)
        self.rate, self.capacity = rate, capacity
        self.tat = now + debt / rate


class Scope:
    """The state of one scope: its buckets and its leases."""

    __slots__ = ("id", "limit", "requests", "tokens", "leases", "paused_until", "last_seen")

    def __init__(self, scope_id: ScopeId, limit: Limit, now: float) -> None:
        self.id = scope_id
        self.limit = limit
        self.requests = Bucket(limit.per_minute / 60.0, float(limit.burst), now)
        self.tokens = self._token_bucket(limit, now)
        self.leases: set[str] = set()
        self.paused_until = 0.0
        self.last_seen = now

    @staticmethod
    def _token_bucket(limit: Limit, now: float) -> Bucket | None:
        if not limit.tokens_per_minute:
            return None
        rate = limit.tokens_per_minute / 60.0
        # The token burst is the same number of seconds' worth as the request burst,
        # and at least one second's worth.
        seconds = max(1.0, limit.burst / (limit.per_minute / 60.0))
        return Bucket(rate, rate * seconds, now)

    def update(self, limit: Limit, now: float) -> None:
        if limit == self.limit:
            return
        self.requests.resize(limit.per_minute / 60.0, float(limit.burst), now)
        fresh = self._token_bucket(limit, now)
        if fresh is None or self.tokens is None:
            self.tokens = fresh
        else:
            self.tokens.resize(fresh.rate, fresh.capacity, now)
        self.limit = limit

    def rate_wait(
        self, tokens: float, now: float, ahead: int = 0, ahead_tokens: float = 0.0
    ) -> tuple[float, str]:
        """Seconds until a request conforms to this scope's rates, and the reason if > 0."""
        wait, reason = self.requests.wait(1, now, ahead), RATE_LIMITED
        if self.tokens is not None and tokens:
            token_wait = self.tokens.wait(tokens, now, ahead_tokens)
            if token_wait > wait:
                wait, reason = token_wait, TOKEN_RATE_LIMITED
        pause = self.paused_until - now
        if pause > wait:
            wait, reason = pause, UPSTREAM_PAUSED
        return wait, reason

    def assume_full_at(self, moment: float) -> None:
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.tat = max(bucket.tat, moment + bucket.capacity / bucket.rate)

    def has_slot(self) -> bool:
        return self.limit.max_concurrent is None or len(self.leases) < self.limit.max_concurrent

    def idle(self, now: float) -> bool:
        return (
            not self.leases
            and self.requests.tat <= now
            and (self.tokens is None or self.tokens.tat <= now)
        )


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

    @property
    def scopes(self) -> tuple[Scope, Scope]:
        return (self.key, self.account)


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
    reason: str = ""  # refuse: a reason code
    retry_after: float = 0.0  # refuse: seconds; queued: projected wait
    scope: str = ""  # refuse: "key" or "account", whose limit refused


@dataclass(slots=True)
class _Group:
    """The queue of one upstream scope: a FIFO per key, served round-robin."""

    by_key: OrderedDict[ScopeId, deque[Ticket]] = field(default_factory=OrderedDict)
    size: int = 0


class Engine:
    """The single authority over admission for every scope it has seen."""

    def __init__(self, lease_ttl: float = 600.0, unknown_before: float | None = None) -> None:
        self.lease_ttl = lease_ttl
        # After a restart, another instance may have admitted requests up to this
        # (monotonic) time. Every scope then starts as if its burst had been used at that
        # moment: its true state can be no fuller, so limits hold across the restart.
        self.unknown_before = unknown_before
        self.scopes: dict[ScopeId, Scope] = {}
        self.groups: dict[ScopeId, _Group] = {}
        self.tickets: dict[str, Ticket] = {}  # queued tickets by id
        # lease id -> (scopes holding it, expiry, tokens reserved)
        self.leases: dict[str, tuple[tuple[Scope, Scope], float, float]] = {}
        self._deadlines: list[tuple[float, str]] = []  # heap of queued tickets' deadlines
        self._lease_expiries: list[tuple[float, str]] = []  # heap of lease expiries

    # --- scopes -----------------------------------------------------------------------
    def scope(self, scope_id: ScopeId, limit: Limit, now: float) -> Scope:
        scope = self.scopes.get(scope_id)
        if scope is None:
            scope = self.scopes[scope_id] = Scope(scope_id, limit, now)
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
    ) -> list[Decision]:
        """Admit, queue or refuse one request. Returns every decision this call made
        (granting may also serve others), the caller's own among them."""
        # Serve anyone already due first (a timer firing late must not let this
        # request jump ahead of them); whoever is still queued after that cannot go now.
        decisions = self.poll(now)
        key_scope = self.scope(key[0], key[1], now)
        account_scope = self.scope(account[0], account[1], now)
        ticket = Ticket(ticket_id, key_scope, account_scope, tokens, now, now, reply_to, request_id)
        group = self.groups.setdefault(account_scope.id, _Group())
        mine = group.by_key.get(key_scope.id)

        if not mine and self._admissible(ticket, now):
            decisions.append(self._grant(ticket, now))
            return decisions

        refusal = self._refuse_at_once(ticket, group, mine, now)
        if refusal is not None:
            decisions.append(refusal)
            return decisions

        ticket.deadline = now + key_scope.limit.max_wait
        eta = self._projected_wait(ticket, group, now)
        self._enqueue(group, ticket)
        decisions.append(Decision("queued", ticket, self.quota(key_scope, now), retry_after=eta))
        return decisions

    def release(self, lease_id: str, tokens_used: float | None, now: float) -> list[Decision]:
        """Hand a lease back, settle its token estimate, and serve whoever waited for it."""
        held = self.leases.pop(lease_id, None)
        if held is None:
            return []  # released twice or reaped already: harmless
        scopes, _expiry, reserved = held
        for scope in scopes:
            scope.leases.discard(lease_id)
            if tokens_used is not None and scope.tokens is not None:
                scope.tokens.refund(reserved - tokens_used)
        return self.poll(now)

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
        """Count a lease granted by a previous instance (its holder told us after a restart)."""
        if lease_id in self.leases:
            return
        scopes = (self.scope(key[0], key[1], now), self.scope(account[0], account[1], now))
        for scope in scopes:
            scope.leases.add(lease_id)
        expiry = now + self.lease_ttl
        self.leases[lease_id] = (scopes, expiry, tokens)
        heapq.heappush(self._lease_expiries, (expiry, lease_id))

    def pause(self, account: tuple[ScopeId, Limit], seconds: float, now: float) -> None:
        """Together said 429: nobody routed to this account and endpoint goes for `seconds`."""
        scope = self.scope(account[0], account[1], now)
        scope.paused_until = max(scope.paused_until, now + seconds)

    # --- the clock's side ---------------------------------------------------------------
    def poll(self, now: float) -> list[Decision]:
        """Reap expired leases, refuse timed-out tickets, and grant whatever conforms now."""
        decisions: list[Decision] = []
        self._reap_leases(now)
        for group in self.groups.values():
            if group.size:
                decisions.extend(self._drain(group, now))
        while self._deadlines and self._deadlines[0][0] <= now:
            _deadline, ticket_id = heapq.heappop(self._deadlines)
            ticket = self.tickets.get(ticket_id)
            if ticket is not None and ticket.deadline <= now:
                self._dequeue(ticket)
                decisions.append(self._timeout(ticket, now))
        return decisions

    def next_wakeup(self, now: float) -> float | None:
        """When `poll` next has something to do, or None when only a release can help."""
        times: list[float] = []
        if self._deadlines:
            times.append(self._deadlines[0][0])
        if self._lease_expiries:
            times.append(self._lease_expiries[0][0])
        for group in self.groups.values():
            for queue in group.by_key.values():
                head = queue[0]
                if all(scope.has_slot() for scope in head.scopes):
                    times.append(now + max(s.rate_wait(head.tokens, now)[0] for s in head.scopes))
        return min(times) if times else None

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
            del self.scopes[sid]
            self.groups.pop(sid, None)
        return stale

    # --- internals ------------------------------------------------------------------------
    def _admissible(self, ticket: Ticket, now: float) -> bool:
        for scope in ticket.scopes:
            if not scope.has_slot() or scope.rate_wait(ticket.tokens, now)[0] > 0:
                return False
        return True

    def _grant(self, ticket: Ticket, now: float) -> Decision:
        for scope in ticket.scopes:
            scope.requests.charge(1, now)
            if scope.tokens is not None and ticket.tokens:
                scope.tokens.charge(ticket.tokens, now)
        # A lease only where something must be handed back: a concurrency slot, or a
        # token estimate to settle. Otherwise the grant is complete as it stands, and the
        # caller sends no release (one channel-layer message fewer per request).
        needs_lease = any(
            s.limit.max_concurrent is not None or (s.tokens is not None and ticket.tokens)
            for s in ticket.scopes
        )
        lease = ""
        if needs_lease:
            lease = ticket.id
            for scope in ticket.scopes:
                scope.leases.add(lease)
            expiry = now + self.lease_ttl
            self.leases[lease] = (ticket.scopes, expiry, ticket.tokens)
            heapq.heappush(self._lease_expiries, (expiry, lease))
        return Decision(
            "grant", ticket, self.quota(ticket.key, now), lease=lease, waited=now - ticket.arrived
        )

    def _refuse(
        self, ticket: Ticket, reason: str, retry_after: float, scope: Scope, now: float
    ) -> Decision:
        who = "key" if scope is ticket.key else "account"
        return Decision(
            "refuse",
            ticket,
            self.quota(ticket.key, now),
            reason=reason,
            retry_after=retry_after,
            scope=who,
        )

    def _timeout(self, ticket: Ticket, now: float) -> Decision:
        # Say why it could not go: still over a rate, or waiting for a concurrency slot.
        for scope in ticket.scopes:
            if not scope.has_slot():
                return self._refuse(ticket, CONCURRENCY_LIMITED, UNKNOWN_WAIT, scope, now)
        group = self.groups.get(ticket.account.id) or _Group()
        wait = self._projected_wait(ticket, group, now)
        return self._refuse(
            ticket, QUEUE_TIMEOUT, max(wait, 1.0 / ticket.key.requests.rate), ticket.key, now
        )

    def _refuse_at_once(
        self, ticket: Ticket, group: _Group, mine: deque[Ticket] | None, now: float
    ) -> Decision | None:
        """Refuse now what the queue could not serve in time. Called only when the
        request cannot go at once."""
        key = ticket.key
        wait = self._projected_wait(ticket, group, now)
        if wait > key.limit.max_wait:
            reason, scope = self._binding_reason(ticket, now)
            # Retry when the wait will have shrunk to what this key may queue for.
            return self._refuse(ticket, reason, wait - key.limit.max_wait, scope, now)
        blocked = next((s for s in ticket.scopes if not s.has_slot()), None)
        if len(mine or ()) >= key.limit.queue_depth or key.limit.max_wait <= 0:
            if blocked is not None and (wait <= 0 or not key.limit.queue_depth):
                return self._refuse(ticket, CONCURRENCY_LIMITED, UNKNOWN_WAIT, blocked, now)
            reason = QUEUE_FULL if key.limit.queue_depth else self._binding_reason(ticket, now)[0]
            return self._refuse(ticket, reason, max(wait, 1.0 / key.requests.rate), key, now)
        return None

    def _binding_reason(self, ticket: Ticket, now: float) -> tuple[str, Scope]:
        key_wait, key_reason = ticket.key.rate_wait(ticket.tokens, now)
        account_wait, account_reason = ticket.account.rate_wait(ticket.tokens, now)
        if account_wait > key_wait:
            return (
                ACCOUNT_RATE_LIMITED if account_reason == RATE_LIMITED else account_reason
            ), ticket.account
        return key_reason, ticket.key

    def _projected_wait(self, ticket: Ticket, group: _Group, now: float) -> float:
        """How long this ticket would wait if it joined (or holds its place in) the queue.

        Round-robin serves one ticket of every waiting key per turn, so ahead of this
        ticket on the shared account are its own key's earlier tickets plus, from each
        other key, at most as many as its own position.
        """
        mine = group.by_key.get(ticket.key.id, ())
        position = next((i for i, t in enumerate(mine) if t is ticket), len(mine))
        ahead_account = position + sum(
            min(len(q), position + 1) for sid, q in group.by_key.items() if sid != ticket.key.id
        )
        key_tokens = sum(t.tokens for t in list(mine)[:position])
        key_wait = ticket.key.rate_wait(ticket.tokens, now, position, key_tokens)[0]
        account_tokens = (
            ticket.tokens * ahead_account
        )  # other keys' sizes are unknown here: assume alike
        account_wait = ticket.account.rate_wait(ticket.tokens, now, ahead_account, account_tokens)[
            0
        ]
        return max(key_wait, account_wait)

    def _enqueue(self, group: _Group, ticket: Ticket) -> None:
        group.by_key.setdefault(ticket.key.id, deque()).append(ticket)
        group.size += 1
        self.tickets[ticket.id] = ticket
        heapq.heappush(self._deadlines, (ticket.deadline, ticket.id))

    def _dequeue(self, ticket: Ticket) -> None:
        del self.tickets[ticket.id]
        group = self.groups[ticket.account.id]
        queue = group.by_key[ticket.key.id]
        queue.remove(ticket)
        group.size -= 1
        if not queue:
            del group.by_key[ticket.key.id]

    def _drain(self, group: _Group, now: float) -> Iterable[Decision]:
        """Grant heads that conform, one key at a time in round-robin order."""
        granted: list[Decision] = []
        progress = True
        while progress and group.size:
            progress = False
            for key_id, queue in group.by_key.items():
                head = queue[0]
                if not self._admissible(head, now):
                    continue
                queue.popleft()
                group.size -= 1
                del self.tickets[head.id]
                if queue:
                    group.by_key.move_to_end(key_id)  # its next ticket waits for the others' turn
                else:
                    del group.by_key[key_id]
                granted.append(self._grant(head, now))
                progress = True
                break
        return granted

    def _reap_leases(self, now: float) -> None:
        # A lease whose holder vanished (a killed web process) frees its slot at expiry.
        while self._lease_expiries and self._lease_expiries[0][0] <= now:
            _expiry, lease = heapq.heappop(self._lease_expiries)
            held = self.leases.get(lease)
            if held is not None and held[1] <= now:
                del self.leases[lease]
                for scope in held[0]:
                    scope.leases.discard(lease)
