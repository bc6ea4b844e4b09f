"""Budgets as the limiter worker enforces them: periods, spend, reservations, crossings.

The limiter (limiter/authority/budget_gate.py) is the single authority: it holds a
`BudgetBook`, the budgets and, for each one in its current calendar period, what was
`spent` and what is `reserved` by calls in flight, and checks it on every ACQUIRE without
touching the database. The book is seeded from the usage rollups when the worker loads a budget it
does not track yet (its start, a new budget), and a period that turns over starts with
nothing spent.

**Reserve at admission, settle on report.** Learning a call's spend only from a report
sent after it ends leaves a gap: the caller's next call (from another web process, or
overtaking the report on Redis) can be admitted before the report lands. So the spend
of a call is counted from the moment it is admitted:
- A ticket a budget covers *reserves* its estimate against every covering budget when
  the worker accepts it (`admit`): the ticket's token estimate (prompt + max_tokens, the
  one admission computes for token limits) for a token budget, the cost the web process
  estimated at the price it holds (0 when it knows none) for a dollar budget. A ticket
  is accepted only while `spent + reserved < limit`.
- The web process's usage report names the reservation (the ticket id) and *settles*
  it: the estimate leaves `reserved`, the actual usage joins `spent` (`settle`).
- A ticket refused or cancelled before its grant reserves nothing (`drop`); a granted
  call that never went upstream (refused by its key's revocation, Together unreachable,
  its grant come too late) is settled at 0 by its web process.
- A reservation whose report never comes (its web process died) expires after
  SLUICE_BUDGET_RESERVATION_TTL (default SLUICE_LEASE_TTL) and is settled at its
  estimate. A report that comes after that (a stream longer than the TTL) corrects the
  spend by the difference, if it comes within another TTL.
- A call is charged to the period in which it is settled (where its usage rollup lands
  too); a reservation open when a period turns over is carried into the new one.

**Jobs** (batches and fine-tunes) hold their estimate the same way, but for their whole
life and only when it fits: a job is accepted, and later started, only while
`spent + reserved + its estimate <= limit` (`hold_jobs`; its own hold is not counted
twice when it is checked again at its start). The hold never expires: it is settled by
the job's usage when the poller records it, or let go at 0 when the job ends without
running (cancelled while queued, refused by Together) or its usage can no longer be read.
A limiter that starts takes the holds of the jobs stored with one (`load`).

**The bound.** Write S for a budget's spend and R for its reservations, and e_i, a_i
for call i's estimate and actual usage (a_i = e_i for one that expired). Within a
period S only grows by settlements and the check admits a call only while S + R < L.
Let k be the last call admitted in the period, at time t. Every call settled after t
was either k or held a reservation at t (nothing else is admitted after t), so, with F
the calls in flight at t,

    final S = S(t) + sum_F a_i + a_k
            = S(t) + R(t) + sum_F (a_i - e_i) + a_k
            < L + sum_F max(0, a_i - e_i) + a_k.

So **overshoot < the usage of one call (the last admitted) plus, over the calls in
flight when it was admitted, what each used beyond its estimate.** A job held in F adds
only its own excess a_i - e_i to the sum; and since a job is admitted only when
S + R + e <= L, a job is never the "one call" term: with only jobs, the overshoot is
the sum term alone. With estimates that
include max_tokens, a call uses no more than its estimate, and the overshoot is less
than one call's usage, however many calls are in flight and however many web processes
there are: the one worker sees every admission and every settlement one message at a
time, and the order in which reports reach it no longer matters. A period that turns
over with calls in flight only moves their charge to the new period, whose R holds them
from its first instant. A budget created or edited mid-period counts the open
reservations of the calls it covers from its first check.

Where an estimate can be below the actual: a chat or completions call without
max_tokens is estimated at DEFAULT_COMPLETION_TOKENS (256) of completion; prompts are
estimated at 4 characters a token; a dollar estimate is 0 while the web process knows no
price for the model. Those calls' excess is the sum term above.

What the bound does not cover: usage reported to a limiter that then restarted (its
successor seeds from the rollups, which lag by one flush interval of each web process,
and holds no reservation for the calls in flight across the restart: they are charged
when they report, unchecked by their estimate); a call longer than the reservation TTL
(its estimate is charged at the expiry and the difference when it reports, both after
the calls admitted meanwhile); a stream cut before Together's last chunk, which carries
the usage (its web process reports an estimate, as its usage record counts: the prompt as
estimated at admission and the completion text relayed, 4 characters or an event a
token, whichever is more); and calls
admitted with the limiter down in failure mode "open".

`tests/usage/test_budget_book.py` checks the arithmetic with time passed in (and the bound
over any interleaving of calls and reports), and `tests/scaleout/test_budget_cluster.py`
checks it over four web processes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

logger = logging.getLogger(__name__)

BUDGET_EXCEEDED = "budget_exceeded"
SOFT, HARD = "soft", "hard"

# Endpoint kinds whose tickets are only the per-key request rate: they use no tokens and
# are not checked against budgets (a job's estimate is held by `hold_jobs` instead; a
# team whose budget a held job fills can still upload files and cancel that job).
# (A code interpreter call is budgeted: a session it starts costs dollars,
# limiter/gateway/tci.py reports them.)
NOT_BUDGETED = frozenset({"files", "fine_tunes", "batches", "videos", "evaluations"})

MSG_BUDGET_EXCEEDED = (
    "Budget exceeded: {owner} has used {spent} of its {limit} {unit} budget per {period}"
    " on {models}. Calls are refused until the budget resets at {reset} ({zone})."
)
MSG_RESERVED = " (and {reserved} held by its calls in flight)"
MSG_JOB_OVER_BUDGET = (
    "Budget exceeded: this {job} is estimated at {estimate} {unit}s, and {owner} has {left}"
    " left of its {limit} {unit} budget per {period} on {models} ({spent} used). It is not"
    " {action} until it fits: the budget resets at {reset} ({zone})."
)
MSG_JOB_OVER_LIMIT = (
    "Budget exceeded: this {job} is estimated at {estimate} {unit}s, more than the whole"
    " {limit} {unit} budget per {period} of {owner} on {models}: it can never run within it."
    " Send a smaller job or ask for a larger budget."
)


def period_bounds(period: str, now: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The calendar day, week (from Monday) or month holding `now`, in `zone`: its start
    and its end (the next period's start), both aware."""
    local = now.astimezone(zone)
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        start -= timedelta(days=start.weekday())
    elif period == "month":
        start = start.replace(day=1)
    if period == "day":
        end = start + timedelta(days=1)
    elif period == "week":
        end = start + timedelta(days=7)
    else:
        end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    # Rebuilt from the wall time in the zone: a DST change inside the period shifts the
    # offset, and the next midnight is midnight local time, not 24 hours on.
    return (
        start.replace(tzinfo=None).replace(tzinfo=zone),
        end.replace(tzinfo=None).replace(tzinfo=zone),
    )


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """One budget as the worker holds it (limiter/usage/models.py Budget)."""

    id: int
    team_id: int
    team_name: str
    key_id: str  # "" for every key of the team
    key_prefix: str
    model: str  # "" for all models
    unit: str  # "tokens" | "dollars"
    period: str  # "day" | "week" | "month"
    limit: float
    soft_threshold: float
    # Shadow: never refuses; a call over it is admitted and recorded as a would-be refusal.
    shadow: bool = False

    def applies(self, key_id: str, model: str) -> bool:
        return (not self.key_id or self.key_id == key_id) and (
            not self.model or self.model == model
        )

    @property
    def owner(self) -> str:
        return f"key {self.key_prefix}…" if self.key_id else f"team '{self.team_name}'"


@dataclass(slots=True)
class BudgetState:
    rule: BudgetRule
    start: datetime
    end: datetime
    spent: float = 0.0
    # The estimates of the calls in flight this budget covers (see the module docstring).
    reserved: float = 0.0
    crossed: set[str] = field(default_factory=set)  # levels already crossed this period

    def level(self) -> str:
        if self.spent >= self.rule.limit:
            return HARD
        if self.spent >= self.rule.limit * self.rule.soft_threshold:
            return SOFT
        return ""

    def full(self) -> bool:
        """No call is admitted: what is spent and what calls in flight may spend is the limit."""
        return self.spent + self.reserved >= self.rule.limit


@dataclass(slots=True)
class Reservation:
    """A call in flight, held at its estimate until its report settles it."""

    id: str  # the ticket id
    key_id: str
    model: str
    tokens: float
    cost: float
    expires: datetime

    def amount(self, unit: str) -> float:
        return self.tokens if unit == "tokens" else self.cost


@dataclass(frozen=True, slots=True)
class Crossing:
    """A threshold crossed, for the worker to record (services.threshold_crossed)."""

    rule: BudgetRule
    level: str
    period_start: datetime
    spent: float


@dataclass(frozen=True, slots=True)
class Exceeded:
    """Why a ticket is refused: the budget used up, and seconds until it resets."""

    rule: BudgetRule
    spent: float
    reset: datetime
    retry_after: float
    zone: str
    reserved: float = 0.0  # held by calls in flight (the spend they may still add)

    def message(self) -> str:
        unit = "token" if self.rule.unit == "tokens" else "US dollar"
        fmt = "{:,.0f}" if self.rule.unit == "tokens" else "${:,.4f}"
        spent = fmt.format(self.spent)
        if self.reserved > 0 and self.spent < self.rule.limit:
            spent += MSG_RESERVED.format(reserved=fmt.format(self.reserved))
        return MSG_BUDGET_EXCEEDED.format(
            owner=self.rule.owner,
            spent=spent,
            limit=fmt.format(self.rule.limit),
            unit=unit,
            period=self.rule.period,
            models=f"model {self.rule.model}" if self.rule.model else "all models",
            reset=self.reset.isoformat(),
            zone=self.zone,
        )


@dataclass(frozen=True, slots=True)
class JobHold:
    """One model's share of a job's estimate (a batch names several models)."""

    job: str  # the job's public id: what its usage report names as the reservation
    model: str
    tokens: float
    cost: float


@dataclass(frozen=True, slots=True)
class JobRefused:
    """Why a job is not accepted or started: the budget it does not fit, and its estimate."""

    exceeded: Exceeded
    estimate: float  # in the budget's unit
    over_limit: bool  # more than the budget's whole limit: it never fits

    def message(self, job: str, action: str) -> str:
        rule = self.exceeded.rule
        unit = "token" if rule.unit == "tokens" else "US dollar"
        fmt = "{:,.0f}" if rule.unit == "tokens" else "${:,.4f}"
        spent = self.exceeded.spent
        used = fmt.format(spent)
        if self.exceeded.reserved > 0:
            used += MSG_RESERVED.format(reserved=fmt.format(self.exceeded.reserved))
        return (MSG_JOB_OVER_LIMIT if self.over_limit else MSG_JOB_OVER_BUDGET).format(
            job=job,
            estimate=fmt.format(self.estimate),
            unit=unit,
            owner=rule.owner,
            left=fmt.format(max(0.0, rule.limit - spent - self.exceeded.reserved)),
            limit=fmt.format(rule.limit),
            period=rule.period,
            models=f"model {rule.model}" if rule.model else "all models",
            spent=used,
            action=action,
            reset=self.exceeded.reset.isoformat(),
            zone=self.exceeded.zone,
        )


class BudgetBook:
    """The worker's budgets, their spend this period and the reservations of the calls in
    flight. Pure: time is passed in."""

    def __init__(self, zone: ZoneInfo, reservation_ttl: float = 600.0) -> None:
        self.zone = zone
        self.ttl = timedelta(seconds=reservation_ttl)
        self.states: dict[int, BudgetState] = {}
        self.key_teams: dict[str, int] = {}  # ApiKey pk -> team id
        self._by_team: dict[int, list[BudgetState]] = {}
        # Open reservations by ticket id, in the order they were made: with one TTL for
        # all, that is the order they expire in (`expire` looks at the front only).
        self.reservations: dict[str, Reservation] = {}
        # Expired ones, settled at their estimate, kept one more TTL for a late report.
        self._expired: dict[str, Reservation] = {}
        # Jobs' holds by job id (one reservation per model): never expire (`hold_jobs`).
        self.jobs: dict[str, list[Reservation]] = {}
        self.jobs_restored = False

    def load(
        self,
        rules: list[BudgetRule],
        key_teams: dict[str, int],
        seed: dict[int, float],
        now: datetime,
        job_holds: list[tuple[str, list[JobHold]]] | None = None,
    ) -> None:
        """Take the budgets as they are now. A budget already tracked keeps its spend
        (the rollups lag behind what the worker has been told); a new one starts from
        `seed` (its spend this period in the rollups). Every budget's reservations are
        counted again from the open ones, so a budget new or changed mid-period holds the
        calls in flight it covers from its first check. `job_holds` (key id, holds): the
        jobs stored with a hold, taken once, when the book has none yet (a limiter that
        starts); afterwards the book is told of every change itself."""
        states: dict[int, BudgetState] = {}
        for rule in rules:
            old = self.states.get(rule.id)
            start, end = period_bounds(rule.period, now, self.zone)
            if old is not None and old.start == start and old.rule.period == rule.period:
                state = BudgetState(rule, start, end, old.spent, crossed=old.crossed)
            else:
                state = BudgetState(rule, start, end, seed.get(rule.id, 0.0))
                # Thresholds already behind it were announced when they were crossed.
                state.crossed = {lvl for lvl in (SOFT, HARD) if _at_least(state, lvl)}
            states[rule.id] = state
        self.states = states
        self.key_teams = key_teams
        self._by_team = {}
        for state in states.values():
            self._by_team.setdefault(state.rule.team_id, []).append(state)
        if job_holds is not None and not self.jobs_restored:
            self.jobs_restored = True
            for key_id, holds in job_holds:
                for hold in holds:
                    self.jobs.setdefault(hold.job, []).append(_held(key_id, hold, now))
        for reservation in self._open():
            for state in self._applying(reservation.key_id, reservation.model):
                state.reserved += reservation.amount(state.rule.unit)

    def _open(self) -> list[Reservation]:
        """Every reservation held: the calls' and the jobs'."""
        held = list(self.reservations.values())
        for parts in self.jobs.values():
            held.extend(parts)
        return held

    def untracked(self, rules: list[BudgetRule], now: datetime) -> list[BudgetRule]:
        """The rules `load` would seed: not tracked yet in their current period."""
        out = []
        for rule in rules:
            old = self.states.get(rule.id)
            start, _end = period_bounds(rule.period, now, self.zone)
            if old is None or old.start != start or old.rule.period != rule.period:
                out.append(rule)
        return out

    def covers(self, key_id: str) -> bool:
        """Whether any budget counts this key's calls (its grants ask for a report)."""
        team = self.key_teams.get(key_id)
        return team is not None and any(
            not s.rule.key_id or s.rule.key_id == key_id for s in self._by_team.get(team, ())
        )

    def _applying(self, key_id: str, model: str) -> list[BudgetState]:
        team = self.key_teams.get(key_id)
        if team is None:
            return []
        return [s for s in self._by_team.get(team, ()) if s.rule.applies(key_id, model)]

    def _states(self, key_id: str, model: str, now: datetime) -> list[BudgetState]:
        found = self._applying(key_id, model)
        for state in found:
            if now >= state.end:  # a new period: nothing spent in it yet
                state.start, state.end = period_bounds(state.rule.period, now, self.zone)
                # Its reservations stay: those calls are charged to the period they end in.
                state.spent, state.crossed = 0.0, set()
        return found

    def check(
        self, key_id: str, model: str, now: datetime, *, shadow: bool = False
    ) -> Exceeded | None:
        """The budget that refuses this call, if any: the one that resets last. `shadow`:
        the shadow budget that would have refused it, if any."""
        worst: Exceeded | None = None
        for state in self._states(key_id, model, now):
            if state.rule.shadow == shadow and state.full():
                wait = (state.end - now).total_seconds()
                if worst is None or wait > worst.retry_after:
                    worst = Exceeded(
                        state.rule, state.spent, state.end, wait, str(self.zone), state.reserved
                    )
        return worst

    def admit(
        self, ticket: str, key_id: str, model: str, tokens: float, cost: float, now: datetime
    ) -> Exceeded | None:
        """THE budget step of an ACQUIRE: refuse it (`check`), or reserve its estimate
        against every budget that covers it, until `settle` or `drop`. A call no budget
        covers reserves nothing."""
        exceeded = self.check(key_id, model, now)
        if exceeded is not None:
            return exceeded
        states = self._applying(key_id, model)
        if states:
            reservation = Reservation(
                ticket, key_id, model, max(tokens, 0.0), max(cost, 0.0), now + self.ttl
            )
            self.reservations.pop(ticket, None)  # a ticket is asked once; never held twice
            self.reservations[ticket] = reservation
            for state in states:
                state.reserved += reservation.amount(state.rule.unit)
        return None

    def hold_jobs(self, key_id: str, holds: list[JobHold], now: datetime) -> JobRefused | None:
        """THE budget step of a job's create and of its start: hold its estimate (every
        model's share, for one job or the parts of a split batch) against every budget
        that covers it, only if it fits, `spent + reserved + estimate <= limit` in each
        (what these jobs hold already is not counted twice), and the budget is not full.
        Refused: nothing changes, and the answer names the budget (one it can never fit
        first, else the one that resets last)."""
        ids = {hold.job for hold in holds}
        need: dict[int, float] = {}
        states: dict[int, BudgetState] = {}
        for hold in holds:
            for state in self._states(key_id, hold.model, now):
                if state.rule.shadow:
                    continue  # a shadow budget holds no job back
                states[state.rule.id] = state
                amount = hold.tokens if state.rule.unit == "tokens" else hold.cost
                need[state.rule.id] = need.get(state.rule.id, 0.0) + max(amount, 0.0)
        own: dict[int, float] = {}
        for job in ids:
            for reservation in self.jobs.get(job, ()):
                for state in self._applying(reservation.key_id, reservation.model):
                    amount = reservation.amount(state.rule.unit)
                    own[state.rule.id] = own.get(state.rule.id, 0.0) + amount
        worst: JobRefused | None = None
        for rule_id, state in states.items():
            others = max(0.0, state.reserved - own.get(rule_id, 0.0))
            limit, estimate = state.rule.limit, need[rule_id]
            if state.spent + others < limit and state.spent + others + estimate <= limit:
                continue
            wait = (state.end - now).total_seconds()
            refused = JobRefused(
                Exceeded(state.rule, state.spent, state.end, wait, str(self.zone), others),
                estimate,
                over_limit=estimate > limit,
            )
            if (
                worst is None
                or (refused.over_limit and not worst.over_limit)
                or (refused.over_limit == worst.over_limit and wait > worst.exceeded.retry_after)
            ):
                worst = refused
        if worst is not None:
            return worst
        for job in ids:
            self.release_job(job)
        for hold in holds:
            reservation = _held(key_id, hold, now)
            self.jobs.setdefault(hold.job, []).append(reservation)
            for state in self._applying(key_id, hold.model):
                state.reserved += reservation.amount(state.rule.unit)
        return None

    def release_job(self, job: str) -> None:
        """A job's hold let go at 0 (it ended without running, or its usage is settled)."""
        for reservation in self.jobs.pop(job, ()):
            self._unreserve(reservation)

    def reserved(self, ticket: str) -> bool:
        return ticket in self.reservations

    def _unreserve(self, reservation: Reservation) -> None:
        for state in self._applying(reservation.key_id, reservation.model):
            state.reserved = max(0.0, state.reserved - reservation.amount(state.rule.unit))

    def drop(self, ticket: str) -> None:
        """The ticket was refused or cancelled before its grant: it holds nothing."""
        reservation = self.reservations.pop(ticket, None)
        if reservation is not None:
            self._unreserve(reservation)

    def settle(
        self,
        ticket: str,
        key_id: str,
        model: str,
        tokens: float,
        cost: float,
        now: datetime,
    ) -> list[Crossing]:
        """A call's report: its reservation (if it still holds one) gives way to what it
        actually used. A report for a reservation that expired corrects the spend by the
        difference from the estimate charged then; one naming no reservation the book
        knows (a job's usage, a call admitted by a limiter since restarted) is charged
        as it stands."""
        crossings = self.expire(now)
        if ticket and ticket in self.jobs:
            # A job's usage (one report a model it used; the first names its hold):
            # charged as reported, where it was used.
            self.release_job(ticket)
            return crossings + self.charge(key_id, model, tokens, cost, now)
        reservation = self.reservations.pop(ticket, None) if ticket else None
        if reservation is not None:  # charged where it was reserved
            self._unreserve(reservation)
            return crossings + self.charge(reservation.key_id, reservation.model, tokens, cost, now)
        late = self._expired.pop(ticket, None) if ticket else None
        if late is not None:
            key_id, model = late.key_id, late.model
            tokens, cost = tokens - late.tokens, cost - late.cost
        return crossings + self.charge(key_id, model, tokens, cost, now)

    def expire(self, now: datetime) -> list[Crossing]:
        """Reservations past their TTL (their web process died, or never said): charged
        at their estimate. Returns the thresholds that crossed."""
        while self._expired:
            first = next(iter(self._expired.values()))
            if first.expires + self.ttl > now:
                break
            del self._expired[first.id]
        crossings: list[Crossing] = []
        while self.reservations:
            first = next(iter(self.reservations.values()))
            if first.expires > now:
                break
            del self.reservations[first.id]
            self._unreserve(first)
            logger.warning(
                "budget reservation %s of key %s expired unreported: charged its estimate"
                " (%.6g tokens, $%.6g)",
                first.id,
                first.key_id,
                first.tokens,
                first.cost,
            )
            crossings += self.charge(first.key_id, first.model, first.tokens, first.cost, now)
            self._expired[first.id] = first
        return crossings

    def charge(
        self, key_id: str, model: str, tokens: float, cost: float, now: datetime
    ) -> list[Crossing]:
        """Charge usage to the budgets covering it; returns the thresholds it crossed."""
        crossings = []
        for state in self._states(key_id, model, now):
            state.spent += tokens if state.rule.unit == "tokens" else cost
            for level in (SOFT, HARD):
                if level not in state.crossed and _at_least(state, level):
                    state.crossed.add(level)
                    crossings.append(Crossing(state.rule, level, state.start, state.spent))
        return crossings


def _held(key_id: str, hold: JobHold, now: datetime) -> Reservation:
    # A job's hold never expires (its usage or its end lets it go): no expiry is read.
    return Reservation(
        hold.job, key_id, hold.model, max(hold.tokens, 0.0), max(hold.cost, 0.0), now
    )


def _at_least(state: BudgetState, level: str) -> bool:
    limit = state.rule.limit
    return state.spent >= (limit if level == HARD else limit * state.rule.soft_threshold)
