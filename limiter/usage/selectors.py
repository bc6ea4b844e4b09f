"""Reads of the usage app: usage summed over writers, budgets as the limiter holds them,
and each budget's spend in its current period.

Rollup rows are per writer (each web process writes its own), so every query here
sums: a minute's usage is the sum of its rows, whoever wrote them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import close_old_connections
from django.db.models import QuerySet, Sum
from django.utils import timezone

from limiter.models import ApiKey
from limiter.usage.budgets import BudgetRule, period_bounds
from limiter.usage.models import Budget, ModelPrice, UsageRollup
from limiter.usage.prices import NO_PRICE, Price

SUMMED = ("requests", "units", "prompt_tokens", "completion_tokens", "total_tokens", "cost")
GROUPS = {
    "team": "team_name",
    "model": "model",
    "endpoint": "endpoint",
    "key": "key_prefix",
    "day": "day",  # annotated by the caller (TruncDay in the usage time zone)
}


def usage_zone() -> ZoneInfo:
    return ZoneInfo(settings.SLUICE_USAGE_TIME_ZONE)


def usage_rows(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    team_id: int | None = None,
    model: str = "",
    endpoint: str = "",
    key_prefix: str = "",
) -> QuerySet[UsageRollup]:
    rows = UsageRollup.objects.all()
    if since is not None:
        rows = rows.filter(minute__gte=since)
    if until is not None:
        rows = rows.filter(minute__lt=until)
    if team_id is not None:
        rows = rows.filter(team_id=team_id)
    if model:
        rows = rows.filter(model=model)
    if endpoint:
        rows = rows.filter(endpoint=endpoint)
    if key_prefix:
        rows = rows.filter(key_prefix=key_prefix)
    return rows


def usage_totals(rows: QuerySet[UsageRollup], group_by: Sequence[str]) -> list[dict[str, object]]:
    """Sums of `rows` per the named groups (team, model, endpoint, key), biggest cost first."""
    fields = [GROUPS[name] for name in group_by]
    sums = {name: Sum(name) for name in SUMMED}
    out = []
    for row in rows.values(*fields).annotate(**sums).order_by("-cost", *fields):
        out.append(
            {
                **{name: row[GROUPS[name]] for name in group_by},
                **{name: row[name] or 0 for name in SUMMED},
            }
        )
    return out


def _spent(rule: BudgetRule, since: datetime) -> float:
    rows = UsageRollup.objects.filter(team_id=rule.team_id, minute__gte=since)
    if rule.key_prefix:
        rows = rows.filter(key_prefix=rule.key_prefix)
    if rule.model:
        rows = rows.filter(model=rule.model)
    field = "total_tokens" if rule.unit == "tokens" else "cost"
    return float(rows.aggregate(spent=Sum(field))["spent"] or 0)


def budget_rules() -> tuple[list[BudgetRule], dict[str, int]]:
    """Every enabled budget, and the team of every usable key whose team has one (sync:
    the limiter calls it off its event loop)."""
    close_old_connections()
    rules = [
        BudgetRule(
            id=b.pk,
            team_id=b.team_id,
            team_name=b.team.name,
            key_id=str(b.key_id) if b.key_id else "",
            key_prefix=b.key.prefix if b.key else "",
            model=b.model,
            unit=b.unit,
            period=b.period,
            limit=float(b.limit),
            soft_threshold=b.soft_threshold,
        )
        for b in Budget.objects.filter(enabled=True).select_related("team", "key")
    ]
    teams = {rule.team_id for rule in rules}
    key_teams = {
        str(pk): team
        for pk, team in ApiKey.objects.usable()
        .filter(team_id__in=teams)
        .values_list("pk", "team_id")
    }
    return rules, key_teams


def budget_seed(rules: list[BudgetRule], now: datetime, zone: ZoneInfo) -> dict[int, float]:
    """Each rule's spend so far in its current period, from the rollups."""
    return {rule.id: _spent(rule, period_bounds(rule.period, now, zone)[0]) for rule in rules}


@dataclass(frozen=True)
class BudgetStatus:
    budget: Budget
    period_start: datetime
    resets_at: datetime
    spent: Decimal
    left: Decimal
    used_fraction: float


def budget_statuses(*, team_id: int) -> list[BudgetStatus]:
    """A team's budgets with their spend this period, as recorded in the rollups (the
    limiter's own count may be up to a flush interval ahead)."""
    zone, now = usage_zone(), timezone.now()
    out = []
    for budget in Budget.objects.filter(team_id=team_id).select_related("team", "key"):
        rule = BudgetRule(
            id=budget.pk,
            team_id=budget.team_id,
            team_name=budget.team.name,
            key_id=str(budget.key_id or ""),
            key_prefix=budget.key.prefix if budget.key else "",
            model=budget.model,
            unit=budget.unit,
            period=budget.period,
            limit=float(budget.limit),
            soft_threshold=budget.soft_threshold,
        )
        start, end = period_bounds(budget.period, now, zone)
        spent = Decimal(str(_spent(rule, start)))
        out.append(
            BudgetStatus(
                budget=budget,
                period_start=start,
                resets_at=end,
                spent=spent,
                left=max(Decimal(0), budget.limit - spent),
                used_fraction=float(spent / budget.limit) if budget.limit else 0.0,
            )
        )
    return out


def model_prices() -> QuerySet[ModelPrice]:
    return ModelPrice.objects.all()


def team_budgets(*, team_id: int) -> QuerySet[Budget]:
    return Budget.objects.filter(team_id=team_id).select_related("key")


def price_in_force(model: str) -> Price:
    """A model's price from the database (processes without the in-memory copy: the job
    poller): staff's override, else Together's list price."""
    row = ModelPrice.objects.filter(model=model).first()
    if row is None:
        return NO_PRICE
    return (row.input_price, row.output_price, row.image_price)
