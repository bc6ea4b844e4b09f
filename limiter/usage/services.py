"""Writes of the usage app: Together's list prices, budgets, their crossings (recorded
and alerted), fine-tunes' and batches' usage, and the alert for an amount that cannot
be read. Staff's price overrides are written with the process's copy of the prices
(prices.py), which they reload."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from limiter.alerts.services import notify
from limiter.batching import UNSTORABLE
from limiter.models import ApiKey, Team
from limiter.usage.budgets import HARD, BudgetRule
from limiter.usage.job_reports import EndedJob, JobUsageReport, minute_of
from limiter.usage.models import Budget, BudgetCrossing, JobUsage, ModelPrice, UsageRollup

# The endpoint kind a job's usage rows are counted under, by the job's source.
JOB_ENDPOINTS = {"fine_tune": "fine_tunes", "batch": "batches", "video": "videos"}

logger = logging.getLogger(__name__)

MSG_USAGE_UNSTORABLE = "Usage as reported is out of range: not recorded."
MSG_UNREADABLE = {
    "budget": (
        "Budget {id} of team '{team}' holds a limit that cannot be read back, so it is not "
        "enforced: remove it on the team page and add it again."
    ),
    "price": (
        "The price of model '{model}' (row {id}) holds an amount that cannot be read back, "
        "so it is not used: set its override again (POST /api/prices)."
    ),
}


def prices_record(*, found: dict[str, tuple[Decimal | None, Decimal | None]]) -> int:
    """Store Together's list prices (overrides untouched). Returns the rows written.
    Update-or-insert per model: the list is a few hundred rows, refreshed every few
    minutes at most."""
    now = timezone.now()
    existing = set(ModelPrice.objects.filter(model__in=list(found)).values_list("model", flat=True))
    with transaction.atomic():
        for model, (inp, out) in found.items():
            if model in existing:
                ModelPrice.objects.filter(model=model).update(
                    together_input=inp, together_output=out, refreshed_at=now
                )
        ModelPrice.objects.bulk_create(
            [
                ModelPrice(model=m, together_input=i, together_output=o, refreshed_at=now)
                for m, (i, o) in found.items()
                if m not in existing
            ],
            ignore_conflicts=True,  # another process inserted it meanwhile: its price is as new
        )
    return len(found)


def amount_unreadable(*, kind: str, row_id: int, team: Team | None = None, model: str = "") -> None:
    """A budget or price row whose stored amount cannot be read (written around the
    checks): its readers skip it; this logs it and raises an alert on the Alerts page,
    once a day while it stays. Never raises."""
    logger.error(
        "%s %d cannot be read (a stored amount does not fit its field): skipped", kind, row_id
    )
    try:
        notify(
            f"amount_unreadable:{kind}:{row_id}",
            period_key=datetime.now(UTC).date().isoformat(),
            text=MSG_UNREADABLE[kind].format(
                id=row_id, team=team.name if team else "", model=model
            ),
            team=team,
            fields={kind: row_id},
        )
    except Exception:  # its readers go on without it: the log line stands
        logger.exception("could not raise the alert of %s %d", kind, row_id)


def budget_create(
    *,
    team: Team,
    key: ApiKey | None,
    model: str,
    unit: str,
    period: str,
    limit: Decimal,
    soft_threshold: float = 0.8,
    enabled: bool = True,
    shadow: bool = False,
) -> Budget:
    budget = Budget(
        team=team,
        key=key,
        model=model,
        unit=unit,
        period=period,
        limit=limit,
        soft_threshold=soft_threshold,
        enabled=enabled,
        shadow=shadow,
    )
    budget.full_clean()
    budget.save()  # the save broadcasts: the limiter reloads its budgets (signals.py)
    return budget


def budget_update(*, budget: Budget, **fields: object) -> Budget:
    for name, value in fields.items():
        setattr(budget, name, value)
    budget.full_clean()
    budget.save()
    return budget


def budget_delete(*, budget: Budget) -> None:
    budget.delete()


def budget_crossing_record(
    *, budget_id: int, level: str, period_start: datetime, spent: Decimal, limit: Decimal
) -> bool:
    """Record a crossing once per (budget, level, period); False when already recorded
    (or the budget is gone)."""
    try:
        with transaction.atomic():
            _row, created = BudgetCrossing.objects.get_or_create(
                budget_id=budget_id,
                level=level,
                period_start=period_start,
                defaults={"spent": spent, "limit": limit},
            )
    except IntegrityError:
        return False
    return created


def threshold_crossed(budget: BudgetRule, level: str, spent: float, period_start: datetime) -> None:
    """THE place a budget's threshold crossing goes: logged, and recorded once per
    (budget, level, period) in BudgetCrossing, and an alert to the webhooks (budget_alert).
    Runs off the limiter's event loop (it writes to the database)."""
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


def job_usage_record(*, job: EndedJob, report: JobUsageReport, source: str) -> bool:
    """Record an ended job's usage once: its JobUsage row and its rollup rows in one
    transaction. False when it was already recorded (another poller, a second sight)."""
    finished = job.finished_at or timezone.now()
    try:
        with transaction.atomic():
            JobUsage.objects.create(
                job_id=job.id, total_tokens=report.total_tokens, cost=report.cost, note=report.note
            )
            UsageRollup.objects.bulk_create(
                [
                    UsageRollup(
                        writer=f"job:{job.public_id}"[:64],
                        minute=minute_of(finished),
                        team_id=job.team_id,
                        team_name=job.team_name,
                        key_prefix=job.key_prefix,
                        upstream=job.account_name,
                        endpoint=JOB_ENDPOINTS.get(source, "batches"),
                        model=line.model,
                        status_class=line.status_class,
                        source=source,
                        input_price=line.price[0],
                        output_price=line.price[1],
                        image_price=line.price[2],
                        requests=line.requests,
                        units=1 if source in ("fine_tune", "video") else 0,
                        prompt_tokens=line.prompt,
                        completion_tokens=line.completion,
                        total_tokens=line.total,
                        cost=line.cost,
                    )
                    for line in report.lines
                ]
            )
    except IntegrityError:
        return False  # the one-to-one: recorded already
    except UNSTORABLE as exc:
        # Numbers no column holds (a fine-tune with n_epochs=1e308 reports so many
        # tokens): noted as unrecordable, so that this job stops failing every pass of
        # the poller, and with it every later job's usage, for every team.
        logger.error(
            "job %s: its usage cannot be stored (%s); noted as such",
            job.public_id,
            type(exc).__name__,
        )
        with transaction.atomic():
            JobUsage.objects.get_or_create(job_id=job.id, defaults={"note": MSG_USAGE_UNSTORABLE})
        return False
    return True
