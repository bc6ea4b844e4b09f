"""Budgets as the limiter worker enforces them: periods, spend, and threshold crossings.

The worker (limiter/worker.py) is the single authority: it holds a `BudgetBook`, the
budgets and each one's spend in its current calendar period, and checks it on every
ACQUIRE without touching the database. Spend is charged from each call's actual usage,
which the web process reports when the call ends (events.USAGE, sent only for calls
the worker marked `budgeted` in their grant). The book is seeded from the usage
rollups when the worker loads a budget it does not track yet (its start, a new
budget) and starts from zero when a period turns over.

**The bound.** A budget refuses a ticket once its spend has reached its limit; spend
only grows within a period. So every call charged to a period was admitted while the
spend was below the limit. Let t be the moment the worker charges the report that
takes the spend to the limit or above. Calls admitted after t are refused; the calls
charged after t were all admitted before t and had not reported yet: they were in
flight at t. The spend before that report was below the limit, hence

    final spend < limit + (usage of the call whose report crossed it)
                        + (usage of the calls in flight when it crossed),

that is, at most the usage of the calls in flight when the budget crossed, however
many web processes there are (the worker sees every admission and every report, one
message at a time). A call already admitted is never cut off. With c calls in flight
at most (the key's or account's `max_concurrent`, or the callers' own concurrency), each
using at most m tokens (prompt + max_tokens), the overshoot is below c x m tokens (for a
dollar budget, c x m at the model's price). `tests/scaleout/test_budget_cluster.py`
checks it over four web processes.

What the bound does not cover: usage reported to a limiter that then crashed (a new
one seeds from the rollups, which lag by one flush interval of each web process:
undercounted, by at most that much), calls of a web process that died before
reporting them (never charged), and calls admitted with the limiter down in failure
mode "open".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

logger = logging.getLogger(__name__)

BUDGET_EXCEEDED = "budget_exceeded"
SOFT, HARD = "soft", "hard"

MSG_BUDGET_EXCEEDED = (
    "Budget exceeded: {owner} has used {spent} of its {limit} {unit} budget per {period}"
    " on {models}. Calls are refused until the budget resets at {reset} ({zone})."
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
    crossed: set[str] = field(default_factory=set)  # levels already crossed this period

    def level(self) -> str:
        if self.spent >= self.rule.limit:
            return HARD
        if self.spent >= self.rule.limit * self.rule.soft_threshold:
            return SOFT
        return ""


@dataclass(frozen=True, slots=True)
class Crossing:
    """A threshold crossed, for `threshold_crossed`."""

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

    def message(self) -> str:
        unit = "token" if self.rule.unit == "tokens" else "US dollar"
        fmt = "{:,.0f}" if self.rule.unit == "tokens" else "${:,.4f}"
        return MSG_BUDGET_EXCEEDED.format(
            owner=self.rule.owner,
            spent=fmt.format(self.spent),
            limit=fmt.format(self.rule.limit),
            unit=unit,
            period=self.rule.period,
            models=f"model {self.rule.model}" if self.rule.model else "all models",
            reset=self.reset.isoformat(),
            zone=self.zone,
        )


class BudgetBook:
    """The worker's budgets and their spend this period. Pure: time is passed in."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self.states: dict[int, BudgetState] = {}
        self.key_teams: dict[str, int] = {}  # ApiKey pk -> team id
        self._by_team: dict[int, list[BudgetState]] = {}

    def load(
        self,
        rules: list[BudgetRule],
        key_teams: dict[str, int],
        seed: dict[int, float],
        now: datetime,
    ) -> None:
        """Take the budgets as they are now. A budget already tracked keeps its spend
        (the rollups lag behind what the worker has been told); a new one starts from
        `seed` (its spend this period in the rollups)."""
        states: dict[int, BudgetState] = {}
        for rule in rules:
            old = self.states.get(rule.id)
            start, end = period_bounds(rule.period, now, self.zone)
            if old is not None and old.start == start and old.rule.period == rule.period:
                state = BudgetState(rule, start, end, old.spent, old.crossed)
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

    def _states(self, key_id: str, model: str, now: datetime) -> list[BudgetState]:
        team = self.key_teams.get(key_id)
        if team is None:
            return []
        found = []
        for state in self._by_team.get(team, ()):
            if not state.rule.applies(key_id, model):
                continue
            if now >= state.end:  # a new period: nothing spent in it yet
                state.start, state.end = period_bounds(state.rule.period, now, self.zone)
                state.spent, state.crossed = 0.0, set()
            found.append(state)
        return found

    def check(self, key_id: str, model: str, now: datetime) -> Exceeded | None:
        """The budget that refuses this call, if any: the one that resets last."""
        worst: Exceeded | None = None
        for state in self._states(key_id, model, now):
            if state.spent >= state.rule.limit:
                wait = (state.end - now).total_seconds()
                if worst is None or wait > worst.retry_after:
                    worst = Exceeded(state.rule, state.spent, state.end, wait, str(self.zone))
        return worst

    def charge(
        self, key_id: str, model: str, tokens: float, cost: float, now: datetime
    ) -> list[Crossing]:
        """Charge one call's actual usage; returns the thresholds it crossed."""
        crossings = []
        for state in self._states(key_id, model, now):
            state.spent += tokens if state.rule.unit == "tokens" else cost
            for level in (SOFT, HARD):
                if level not in state.crossed and _at_least(state, level):
                    state.crossed.add(level)
                    crossings.append(Crossing(state.rule, level, state.start, state.spent))
        return crossings


def _at_least(state: BudgetState, level: str) -> bool:
    limit = state.rule.limit
    return state.spent >= (limit if level == HARD else limit * state.rule.soft_threshold)


def threshold_crossed(budget: BudgetRule, level: str, spent: float, period_start: datetime) -> None:
    """THE place a budget's threshold crossing goes: logged, and recorded once per
    (budget, level, period) in BudgetCrossing, and an alert to the webhooks (budget_alert).
    Runs off the limiter's event loop (it writes to the database)."""
    from limiter.usage.services import budget_crossing_record

    logger.warning(
        "budget %d (%s, %s %s per %s on %s) crossed its %s threshold: %.6g spent",
        budget.id,
        budget.owner,
        budget.limit,
        budget.unit,
        budget.period,
        budget.model or "all models",
        level,
        spent,
    )
    budget_crossing_record(
        budget_id=budget.id,
        level=level,
        period_start=period_start,
        spent=Decimal(str(spent)),
        limit=Decimal(str(budget.limit)),
    )
    budget_alert(budget, level, spent, period_start)


PER = {"day": "daily", "week": "weekly", "month": "monthly"}


def budget_alert(budget: BudgetRule, level: str, spent: float, period_start: datetime) -> None:
    """The webhooks' word on it: one alert per budget, level and period (the alerts
    table dedupes, so a restarted limiter that crosses again in the period stays quiet).
    Only queued here: every web process's alerts loop delivers it."""
    from limiter.alerts.services import notify
    from limiter.models import Team

    unit = "$" if budget.unit == "dollars" else ""
    amount = f"{unit}{spent:,.2f}" if unit else f"{spent:,.0f} tokens"
    limit = f"{unit}{budget.limit:,.2f}" if unit else f"{budget.limit:,.0f} tokens"
    what = "reached its limit: calls are refused" if level == HARD else "passed its soft threshold"
    notify(
        f"budget_{level}:{budget.id}",
        period_key=period_start.isoformat(timespec="minutes"),
        text=(
            f"The {PER[budget.period]} budget of {budget.owner} on "
            f"{budget.model or 'all models'} {what}: {amount} of {limit} used."
        ),
        team=Team.objects.filter(pk=budget.team_id).first(),
        fields={
            "budget": budget.id,
            "level": level,
            "spent": round(spent, 6),
            "limit": budget.limit,
            "unit": budget.unit,
            "period_start": period_start.isoformat(),
        },
    )
