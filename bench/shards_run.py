"""The sharded organisation's timeline (bench/shards.py has the parts): open-loop load on N
shards, one shard killed a third of the way through (a standby takes its lease when it
expires), a new shard joining two thirds of the way (the accounts it wins move to it).
`simulate` returns what each shard decided and every bucket's check."""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench.shards import Admissions, BucketCheck, Organisation, Shard, Team, check, placement
from limiter.authority.engine import Engine

# How long after the load ends the shards' timers still run: every queued ticket is
# answered by its deadline (a key's max wait is at most 2 s).
DRAIN = 3.0


@dataclass(frozen=True)
class Scenario:
    seconds: float = 60.0
    shards: int = 4
    lease_ttl: float = 3.0  # a shard's lease in Redis; renewed every third of it
    fail: bool = True  # shard-1 dies at a third of the run
    join: bool = True  # shard-N joins at two thirds
    seed: int = 22

    @property
    def fail_at(self) -> float | None:
        return self.seconds / 3 if self.fail else None

    @property
    def join_at(self) -> float | None:
        return 2 * self.seconds / 3 if self.join else None


@dataclass
class Outcome:
    scenario: Scenario
    offered: int = 0
    shards: dict[str, Shard] = field(default_factory=dict)
    owned_before: Counter[str] = field(default_factory=Counter)  # accounts per shard
    owned_after: Counter[str] = field(default_factory=Counter)
    moved: int = 0  # accounts that moved to the joining shard
    handed_over: int = 0  # queued tickets asked again at their account's new shard
    lost: int = 0  # queued tickets on the shard that died (answered limiter_unavailable)
    admissions: Admissions = field(default_factory=Admissions)
    checks: list[BucketCheck] = field(default_factory=list)
    wall: float = 0.0  # seconds this run took
    cpu: float = 0.0  # process seconds this run took, engines and bookkeeping

    def decided(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for shard in self.shards.values():
            total.update(shard.decisions)
        return total


def arrivals(org: Organisation, seconds: float, rng: random.Random) -> Iterator[tuple[float, Team]]:
    """Poisson arrivals at `org.offered` a second, each from a team drawn by weight."""
    cumulative, total = [], 0.0
    for team in org.teams:
        total += team.weight
        cumulative.append(total)
    now = 0.0
    for second in range(math.ceil(seconds)):
        end, times = min(second + 1.0, seconds), []
        while (now := now + rng.expovariate(org.offered)) < end:
            times.append(now)
        # The arrival past the second is dropped and the clock restarts at its end: the
        # process has no memory, so this is the same Poisson process.
        now = end
        picked = rng.choices(org.teams, cum_weights=cumulative, k=len(times))
        yield from zip(times, picked, strict=True)


class Run:
    """The routing table and the shards as the load goes through them."""

    def __init__(self, org: Organisation, scenario: Scenario) -> None:
        self.org, self.scenario = org, scenario
        self.outcome = Outcome(scenario)
        self.log = Admissions()
        names = [f"shard-{i}" for i in range(scenario.shards)]
        self.shards = {name: Shard(name) for name in names}
        self.owner = placement(list(org.accounts), names)
        self.outcome.owned_before.update(self.owner.values())
        self.by_key = {team.key: team for team in org.teams}
        self.teams_of: dict[str, list[Team]] = {account: [] for account in org.accounts}
        for team in org.teams:
            self.teams_of[team.account[1]].append(team)
        self.down_until: dict[str, float] = {}  # dead shard -> when the standby takes over
        self.killed = False
        self.seq = 0

    def poll(self, now: float) -> None:
        for shard in self.shards.values():
            shard.poll_until(now, self.log)

    def call(self, team: Team, now: float) -> None:
        shard = self.shards[self.owner[team.account[1]]]
        self.outcome.offered += 1
        if not shard.alive:
            shard.unavailable += 1
            return
        self.seq += 1
        shard.acquire(f"t{self.seq}", team, now, self.log)

    def kill(self, name: str, now: float) -> None:
        """The shard's process dies: its queued callers get no answer (limiter_unavailable
        once their wait for it ends), and nobody owns its accounts until its lease expires."""
        shard = self.shards[name]
        self.outcome.lost += len(shard.engine.tickets)
        shard.unavailable += len(shard.engine.tickets)
        # Its state dies with it (a join meanwhile finds no queued tickets to hand over).
        shard.engine, shard.alive, shard.wake = Engine(), False, None
        # It may have renewed its lease just before dying: the standby waits a whole TTL.
        self.down_until[name] = now + self.scenario.lease_ttl

    def take_over(self, name: str, now: float) -> None:
        """A standby holds the lease now: a fresh engine that assumes every bucket full at
        this moment, which is no earlier than the dead owner's last decision."""
        shard = self.shards[name]
        shard.engine, shard.alive, shard.wake = Engine(unknown_before=now), True, None
        del self.down_until[name]

    def join(self, now: float) -> None:
        """A new shard: the accounts it wins move, their queued tickets asked again there."""
        name = f"shard-{len(self.shards)}"
        self.shards[name] = Shard(name)
        self.poll(now)
        after = placement(list(self.owner), list(self.shards))
        for account, old in list(self.owner.items()):
            if after[account] == old:
                continue
            self.owner[account] = after[account]
            self.outcome.moved += 1
            self.hand_over(account, self.shards[old], self.shards[after[account]], now)

    def hand_over(self, account: str, old: Shard, new: Shard, now: float) -> None:
        """The old owner stops deciding for `account` at `now`; the new one assumes its
        buckets (the account's and its keys') full from then, as a restarted engine
        does. The old owner answers its queued tickets "ask the new owner"; the web
        processes ask again there."""
        self.adopt(account, new, now)
        engine = old.engine
        for ticket in [t for t in engine.tickets.values() if t.account.id[1] == account]:
            old.record(engine.cancel(ticket.id, now), now, self.log)
            new.acquire(ticket.id, self.by_key[ticket.key.id], now, self.log)
            self.outcome.handed_over += 1

    def adopt(self, account: str, new: Shard, now: float) -> None:
        """`new` assumes the buckets of `account` and its keys full at `now`: the old owner
        may have filled them just before it let go."""
        for team in self.teams_of[account]:
            for scope, limit in ((team.key, team.key_limit), (team.account, team.account_limit)):
                new.engine.scope(scope, limit, now).assume_full_at(now)

    def events(self, now: float) -> None:
        for name, until in list(self.down_until.items()):
            if until <= now:
                self.poll(until)
                self.take_over(name, until)
        fail_at, join_at = self.scenario.fail_at, self.scenario.join_at
        if fail_at is not None and now >= fail_at and not self.killed:
            self.poll(fail_at)
            self.kill("shard-1", fail_at)
            self.killed = True
        if join_at is not None and now >= join_at and len(self.shards) == self.scenario.shards:
            self.join(join_at)


def simulate(org: Organisation, scenario: Scenario, run_type: type[Run] = Run) -> Outcome:
    """Run `scenario` on `org`. `run_type`: a Run that behaves otherwise (the tests'
    careless handover, which the checks must catch)."""
    started_wall, started_cpu = time.monotonic(), time.process_time()
    run = run_type(org, scenario)
    for now, team in arrivals(org, scenario.seconds, random.Random(scenario.seed)):
        run.events(now)
        run.poll(now)
        run.call(team, now)
    end = scenario.seconds + DRAIN
    run.events(end)
    run.poll(end)
    outcome = run.outcome
    outcome.shards = run.shards
    outcome.owned_after.update(run.owner.values())
    outcome.admissions = run.log
    outcome.checks = check(org, run.log)
    outcome.wall = time.monotonic() - started_wall
    outcome.cpu = time.process_time() - started_cpu
    return outcome
