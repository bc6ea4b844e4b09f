"""Reads of the usage app: usage summed over writers, budgets as the limiter holds them,
and each budget's spend in its current period.

Rollup rows are per writer (each web process writes its own), so every query here
sums: a minute's usage is the sum of its rows, whoever wrote them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Func, Model, QuerySet, Sum
from django.db.models.functions import Substr, TruncDay
from django.utils import timezone

from limiter.models import ApiKey
from limiter.usage.budgets import BudgetRule, period_bounds
from limiter.usage.models import Budget, ModelPrice, UsageRollup
from limiter.usage.pricing import NO_PRICE, Price

SUMMED = ("requests", "units", "prompt_tokens", "completion_tokens", "total_tokens", "cost")
GROUPS = {
    "team": "team_name",
    "model": "model",
    "endpoint": "endpoint",
    "key": "key_prefix",
    "status": "status_class",  # 2xx, 4xx, 5xx: Together's errors count requests, not tokens
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
    teams: Collection[int] | None = None,
) -> QuerySet[UsageRollup]:
    """The rollups matching the filters; `teams`, the reader's visible teams
    (dashboard.policy.team_rows), None for every row."""
    rows = UsageRollup.objects.all()
    if teams is not None:
        rows = rows.filter(team_id__in=teams)
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


@dataclass(frozen=True)
class UsageQuery:
    """What the Usage page and its CSV ask for: whole days in the usage time zone
    (`since` is the first day's start, `until` the day after the last), the filters,
    the groups of the table and what the chart counts ("cost" or "tokens")."""

    first_day: date
    last_day: date
    since: datetime
    until: datetime
    team_id: int | None = None
    model: str = ""
    endpoint: str = ""
    key_prefix: str = ""
    group_by: tuple[str, ...] = ("day", "team")
    metric: str = "cost"
    teams: frozenset[int] | None = None  # the reader's visible teams; None: every row

    def rows(self) -> QuerySet[UsageRollup]:
        return usage_rows(
            since=self.since,
            until=self.until,
            team_id=self.team_id,
            model=self.model,
            endpoint=self.endpoint,
            key_prefix=self.key_prefix,
            teams=self.teams,
        )

    @property
    def series_by(self) -> tuple[str, ...]:
        """The chart's series: the table's groups other than the day."""
        return tuple(name for name in self.group_by if name != "day")


def _day() -> Func:
    """The calendar day of a rollup's minute in the usage time zone, for GROUP BY.

    On SQLite, Django's TruncDay is a Python function called per row (2.4 s for 200,000
    rows, bench.usage_page); there datetimes are stored as UTC ISO text, so with the
    usage zone at UTC the text's first 10 characters are the day, computed by SQLite
    itself. Any other zone, or database, truncates in the database's own way."""
    zone = usage_zone()
    if connection.vendor == "sqlite" and zone.key in ("UTC", "Etc/UTC"):
        return Substr("minute", 1, 10)
    return TruncDay("minute", tzinfo=zone)


def _date(day: date | datetime | str) -> date:
    """A grouped day as a date, whichever way `_day` computed it."""
    if isinstance(day, str):
        return date.fromisoformat(day)
    if isinstance(day, datetime):
        return day.astimezone(usage_zone()).date()
    return day


def usage_grouped(rows: QuerySet[UsageRollup], group_by: Sequence[str]) -> QuerySet[Any]:
    """Sums of `rows` per the named groups, computed by the database (one GROUP BY, never
    a query per row), as a lazy queryset of dicts: the page slices it, the CSV streams it.

    "day" is the calendar day in SLUICE_USAGE_TIME_ZONE, the same days budgets count. The
    newest day comes first, then the biggest cost; the group values break ties, so the
    page's table and the CSV list the same rows in the same order."""
    if "day" in group_by:
        rows = rows.annotate(day=_day())
    fields = [GROUPS[name] for name in group_by]
    order = ["-day"] if "day" in group_by else []
    order += ["-cost", *(field for field in fields if field != "day")]
    sums = {name: Sum(name) for name in SUMMED}
    return rows.values(*fields).annotate(**sums).order_by(*order)


def usage_row_out(row: dict[str, Any], group_by: Sequence[str]) -> dict[str, Any]:
    """One grouped row under the group names (team, not team_name), the day as an ISO date
    in the usage time zone, and a missing sum as 0."""
    out: dict[str, Any] = {name: row[GROUPS[name]] for name in group_by}
    if out.get("day") is not None:
        out["day"] = _date(out["day"]).isoformat()
    for name in SUMMED:
        out[name] = row[name] or 0
    return out


def usage_totals(rows: QuerySet[UsageRollup], group_by: Sequence[str]) -> list[dict[str, Any]]:
    """Sums of `rows` per the named groups (team, model, endpoint, key, day)."""
    return [usage_row_out(row, group_by) for row in usage_grouped(rows, group_by)]


def usage_sum(rows: QuerySet[UsageRollup]) -> dict[str, Any]:
    """The filtered rows' grand total (the table's last line)."""
    sums = rows.aggregate(**{name: Sum(name) for name in SUMMED})
    return {name: sums[name] or 0 for name in SUMMED}


def usage_account_totals(
    *, since: datetime, until: datetime, accounts: Collection[str]
) -> list[dict[str, Any]]:
    """Each named upstream account's sums over every team routed to it, per account and
    never per team: what a team user sees of the account it shares beside its own rows."""
    rows = usage_rows(since=since, until=until).filter(upstream__in=accounts)
    grouped: QuerySet[Any] = rows.values("upstream").annotate(
        **{name: Sum(name) for name in SUMMED}
    )
    return [
        {"upstream": row["upstream"], **{name: row[name] or 0 for name in SUMMED}}
        for row in grouped.order_by("upstream")
    ]


@dataclass(frozen=True)
class UsageChart:
    """Per-day series for the usage page's chart: x in Unix seconds (each day's start in
    the usage time zone), one list of values per series, aligned with x."""

    zone: str
    metric: str
    x: list[int]
    series: list[dict[str, Any]]


CHART_SERIES = 8  # the biggest series are drawn; the rest are summed as "others"
METRICS = {"cost": "cost", "tokens": "total_tokens"}


def usage_chart(
    rows: QuerySet[UsageRollup],
    *,
    series_by: Sequence[str],
    metric: str,
    first_day: date,
    last_day: date,
) -> UsageChart:
    """Cost (or tokens) per day from `first_day` to `last_day`, one series per value of
    `series_by` (team, model, endpoint, key; none: one series, "all"). Every day of the
    range has a point, 0 where nothing was used, so the x range is the filter's, never
    the data's. One query, grouped by the database."""
    zone = usage_zone()
    field = METRICS[metric]
    fields = [GROUPS[name] for name in series_by]
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    index = {day: i for i, day in enumerate(days)}
    per_series: dict[str, list[float]] = {}
    grouped = rows.annotate(day=_day()).values("day", *fields).annotate(value=Sum(field)).order_by()
    for row in grouped:
        i = index.get(_date(row["day"]))
        if i is None:  # outside the range asked for (the filter's own bounds prevent it)
            continue
        label = " · ".join(str(row[f] or "—") for f in fields) if fields else "all"
        values = per_series.setdefault(label, [0.0] * len(days))
        values[i] += float(row["value"] or 0)
    ranked = sorted(per_series.items(), key=lambda item: (-sum(item[1]), item[0]))
    series = [{"label": label, "values": values} for label, values in ranked[:CHART_SERIES]]
    if len(ranked) > CHART_SERIES:
        others = [
            sum(column) for column in zip(*(v for _l, v in ranked[CHART_SERIES:]), strict=True)
        ]
        series.append({"label": f"{len(ranked) - CHART_SERIES} others", "values": others})
    x = [int(datetime.combine(day, time(), tzinfo=zone).timestamp()) for day in days]
    return UsageChart(zone=zone.key, metric=metric, x=x, series=series)


def _spent(rule: BudgetRule, since: datetime) -> float:
    rows = UsageRollup.objects.filter(team_id=rule.team_id, minute__gte=since)
    if rule.key_prefix:
        rows = rows.filter(key_prefix=rule.key_prefix)
    if rule.model:
        rows = rows.filter(model=rule.model)
    field = "total_tokens" if rule.unit == "tokens" else "cost"
    return float(rows.aggregate(spent=Sum(field))["spent"] or 0)


# What reading a row raises when a stored amount does not fit its field: SQLite keeps
# decimals as doubles, and an amount written around the checks (by hand, or by a version
# that did not check them) may not read back (decimal.InvalidOperation is an
# ArithmeticError).
_UNREADABLE = (ArithmeticError, TypeError, ValueError)
BUDGET_AMOUNTS = ("limit",)
M = TypeVar("M", bound=Model)
PRICE_AMOUNTS = (
    "together_input",
    "together_output",
    "override_input",
    "override_output",
    "image_price",
)


def readable(queryset: QuerySet[M], amounts: Sequence[str]) -> tuple[list[M], set[int]]:
    """Every row of `queryset`, and the ids of those whose `amounts` cannot be read back
    as finite decimals: those rows come with their amounts unread (deferred, or NaN on
    PostgreSQL), for their caller to skip or show as broken, never to use. One query;
    one a row when some row fails to read."""
    try:
        rows = list(queryset)
    except _UNREADABLE:
        rows = []
        for pk in queryset.values_list("pk", flat=True):
            try:
                rows.append(queryset.get(pk=pk))
            except _UNREADABLE:
                rows.append(queryset.defer(*amounts).get(pk=pk))
    broken = {
        row.pk
        for row in rows
        if any(
            name in row.get_deferred_fields()
            or (isinstance(getattr(row, name), Decimal) and not getattr(row, name).is_finite())
            for name in amounts
        )
    }
    return rows, broken


def budget_rules() -> tuple[list[BudgetRule], dict[str, int], list[Budget]]:
    """Every enabled budget, the team of every usable key whose team has one, and the
    enabled budgets whose limit cannot be read (left out of the rules: one such row never
    stops the others from being enforced). Sync: the limiter calls it off its event loop."""
    close_old_connections()
    budgets, broken = readable(
        Budget.objects.filter(enabled=True).select_related("team", "key"), BUDGET_AMOUNTS
    )
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
            shadow=b.shadow,
        )
        for b in budgets
        if b.pk not in broken
    ]
    teams = {rule.team_id for rule in rules}
    key_teams = {
        str(pk): team
        for pk, team in ApiKey.objects.usable()
        .filter(team_id__in=teams)
        .values_list("pk", "team_id")
    }
    return rules, key_teams, [b for b in budgets if b.pk in broken]


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
    budgets, broken = readable(
        Budget.objects.filter(team_id=team_id).select_related("team", "key"), BUDGET_AMOUNTS
    )
    for budget in budgets:
        if budget.pk in broken:
            continue  # its limit cannot be read: the team page's budget form shows it
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


def prices_readable() -> tuple[list[ModelPrice], set[int]]:
    """Every model's price, and the ids of the rows whose amounts cannot be read."""
    return readable(ModelPrice.objects.all(), PRICE_AMOUNTS)


def team_budgets(*, team_id: int) -> tuple[list[Budget], set[int]]:
    """A team's budgets, and the ids of those whose limit cannot be read."""
    return readable(Budget.objects.filter(team_id=team_id).select_related("key"), BUDGET_AMOUNTS)


def budget_get(*, pk: int) -> Budget | None:
    """A budget to change or remove; one whose limit cannot be read comes with None for
    it (so it can be removed, or given a new limit)."""
    rows, broken = readable(
        Budget.objects.filter(pk=pk).select_related("team", "key"), BUDGET_AMOUNTS
    )
    if not rows:
        return None
    if rows[0].pk in broken:
        rows[0].limit = None
    return rows[0]


def price_in_force(model: str) -> Price:
    """A model's price from the database (processes without the in-memory copy: the job
    poller): staff's override, else Together's list price; none while its row cannot be
    read."""
    rows, broken = readable(ModelPrice.objects.filter(model=model), PRICE_AMOUNTS)
    if not rows or rows[0].pk in broken:
        return NO_PRICE
    row = rows[0]
    return (row.input_price, row.output_price, row.image_price)
