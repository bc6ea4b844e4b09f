"""Sharded limiters, simulated: an organisation's accounts split across several limiter
processes, each a real `Engine` driven by a simulated clock (no sleeping, no I/O).

What it models (docs/scaling.md explains the design it stands for):
  routing     every account belongs to one shard, by rendezvous hashing of its id (a
              stable hash, the same in every web process, with no table to share); a
              team's key goes with its account, so each ticket's two scopes live on one
              shard and stay atomic there.
  leases      a shard owns its accounts while it holds its lease (in Redis: `SET NX PX`,
              renewed every third of its TTL) and decides nothing once the lease may
              have expired. When a shard dies, a standby takes the lease at its expiry
              and starts a fresh Engine that assumes every bucket full at that moment
              (the engine's restart guarantee); calls routed there in between are
              refused as `limiter_unavailable`, and its queued tickets are lost.
  rebalancing a new shard joins: the accounts whose hash now picks it move (only those,
              a 1/(N+1) share); their old owners hand back their queued tickets (asked
              again at the new shard) and stop deciding for them; the new shard assumes
              their buckets full at the handover.

The offered load is open loop: Poisson arrivals at the organisation's rate, each from a
team picked by a Zipf-like weight (a few heavy teams over their keys' limits, many light
ones). Every admission is recorded per bucket and checked against the engine's first
guarantee: in every window, admissions <= burst + rate x d (`check`).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field

from limiter.authority.engine import Decision, Engine, Limit, ScopeId

ENDPOINT, MODEL = "chat", "model"
# Allowance for float error in the bound's check (an admission, not a fraction of one).
EPSILON = 1e-6


# A shard may own at most this many times its even share of the accounts. 1.0: the
# fewest and most accounts per shard differ by little, for a few more accounts moved
# when a shard joins (about 1.0-1.8 times the 1/(N+1) share, tests/bench/test_shards.py).
SLACK = 1.0


def _weight(shard: str, account: str) -> bytes:
    return hashlib.blake2b(f"{shard}\0{account}".encode(), digest_size=8).digest()


def rank(account: str, shards: list[str]) -> list[str]:
    """The shards in `account`'s order of preference: by a hash of (shard, account), the
    same in every process (not Python's salted `hash`). Rendezvous hashing: adding a
    shard changes no account's order among the others."""
    return sorted(shards, key=lambda shard: _weight(shard, account), reverse=True)


def placement(accounts: list[str], shards: list[str], slack: float = SLACK) -> dict[str, str]:
    """Which shard owns each account: its first choice that has room, each shard holding
    at most ceil(slack x accounts / shards) (consistent hashing with bounded loads).

    Every web process computes it from the accounts and shards it knows (both come with
    the configuration broadcast), so the routing table is never stored or sent. Taken in
    id order, so the answer depends on the sets only. A joining shard takes about
    1/(N+1) of the accounts: those that now rank it first, and a few displaced by the
    bound; a shard leaving hands on only its own accounts' places."""
    room = math.ceil(slack * len(accounts) / len(shards))
    held: Counter[str] = Counter()
    owner = {}
    for account in sorted(accounts):
        owner[account] = next(s for s in rank(account, shards) if held[s] < room)
        held[owner[account]] += 1
    return owner


@dataclass(frozen=True)
class Team:
    key: ScopeId
    account: ScopeId
    key_limit: Limit
    account_limit: Limit
    weight: float  # its share of the offered load


@dataclass(frozen=True)
class Organisation:
    teams: list[Team]
    accounts: dict[str, Limit]  # account id -> its ceiling (per model)
    offered: float  # requests a second, all teams together


def organisation(
    accounts: int = 50, teams: int = 500, offered: float = 20_000.0, seed: int = 22
) -> Organisation:
    """`accounts` upstream accounts of four sizes (100 to 1,000 requests/s), `teams` teams
    spread evenly over them, keys of three sizes (some queueing up to 2 s), and demand
    weighted 1/rank^0.9, so the heaviest teams send many times their keys' limits."""
    rng = random.Random(seed)
    ceilings = {}
    for a in range(accounts):
        per_second = (100, 200, 500, 1000)[a % 4]
        ceilings[f"acct-{a:03d}"] = Limit(per_minute=per_second * 60.0, burst=per_second // 5)
    weights = [1.0 / (rank + 1) ** 0.9 for rank in range(teams)]
    rng.shuffle(weights)
    names = sorted(ceilings)
    members = []
    for t in range(teams):
        account = names[t % accounts]
        per_second = (10, 30, 100)[t % 3]
        queue = t % 2 == 0  # half the keys queue for up to 2 s, half are refused at once
        key_limit = Limit(
            per_minute=per_second * 60.0,
            burst=10,
            queue_depth=5 if queue else 0,
            max_wait=2.0 if queue else 0.0,
        )
        members.append(
            Team(
                key=("key", f"key-{t:03d}", ENDPOINT, ""),
                account=("account", account, ENDPOINT, MODEL),
                key_limit=key_limit,
                account_limit=ceilings[account],
                weight=weights[t],
            )
        )
    return Organisation(members, ceilings, offered)


@dataclass
class Shard:
    """One limiter process: its engine, its accounts, what it decided."""

    name: str
    engine: Engine = field(default_factory=Engine)
    alive: bool = True
    wake: float | None = None  # when its timer next fires (Engine.next_wakeup)
    decisions: Counter[str] = field(default_factory=Counter)  # "grant", refusal reasons
    per_second: Counter[int] = field(default_factory=Counter)  # decisions in each second
    unavailable: int = 0  # calls routed here while it had no owner
    cpu: float = 0.0  # process time spent in its engine's calls

    def poll_until(self, now: float, log: Admissions) -> None:
        while self.alive and self.wake is not None and self.wake <= now:
            at = self.wake
            started = time.process_time()
            decided = self.engine.poll(at)
            self.wake = self.engine.next_wakeup(at)
            self.cpu += time.process_time() - started
            self.record(decided, at, log)

    def acquire(self, ticket: str, team: Team, now: float, log: Admissions) -> None:
        started = time.process_time()
        decided = self.engine.acquire(
            ticket, (team.key, team.key_limit), (team.account, team.account_limit), 0.0, now
        )
        if any(d.kind == "queued" for d in decided):
            wake = self.engine.next_wakeup(now)
            if wake is not None and (self.wake is None or wake < self.wake):
                self.wake = wake
        self.cpu += time.process_time() - started
        self.record(decided, now, log)

    def record(self, decided: list[Decision], now: float, log: Admissions) -> None:
        for d in decided:
            if d.kind == "queued":
                continue  # not an answer yet: counted when granted or refused
            self.decisions["grant" if d.kind == "grant" else d.reason] += 1
            self.per_second[int(now)] += 1
            if d.kind == "grant":
                log.admit(d.ticket.key.id, now)
                log.admit(d.ticket.account.id, now)


@dataclass
class Admissions:
    """Every admission's time, per bucket (key scope or account scope)."""

    times: dict[ScopeId, array] = field(default_factory=dict)

    def admit(self, scope: ScopeId, now: float) -> None:
        times = self.times.get(scope)
        if times is None:
            times = self.times[scope] = array("d")
        times.append(now)


def worst_excess(times: array, rate: float) -> float:
    """The most admissions beyond rate x d in any window [t_i, t_j] of `times` (sorted):
    max over i <= j of (j - i + 1) - rate (t_j - t_i). The engine's guarantee is that this
    never exceeds the bucket's burst. O(n): track the least i - rate t_i so far."""
    worst, least = 0.0, float("inf")
    for j, t in enumerate(times):
        least = min(least, j - rate * t)
        worst = max(worst, j - rate * t - least + 1)
    return worst


@dataclass(frozen=True)
class BucketCheck:
    scope: ScopeId
    admitted: int
    worst_excess: float  # the most admissions beyond rate x d in any window
    burst: float

    @property
    def holds(self) -> bool:
        return self.worst_excess <= self.burst + EPSILON


def check(org: Organisation, log: Admissions) -> list[BucketCheck]:
    """Each bucket's admissions against its limit (guarantee 1 of the engine)."""
    limits: dict[ScopeId, Limit] = {}
    for team in org.teams:
        limits[team.key], limits[team.account] = team.key_limit, team.account_limit
    checks = []
    for scope, times in log.times.items():
        limit = limits[scope]
        excess = worst_excess(times, limit.per_minute / 60.0)
        checks.append(BucketCheck(scope, len(times), excess, float(limit.burst)))
    return checks
