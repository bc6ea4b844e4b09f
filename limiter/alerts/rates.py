"""The alerts loop's first step: the rate conditions, judged across every web process.

Every SLUICE_ALERT_CHECK_INTERVAL the loop (delivery.py) takes this process's counters
(monitor.py), adds them to the shared per-minute `Signal` rows, and raises each rate
condition whose minute, summed over all processes, reached its threshold: the global
setting's and each webhook's own (services.notify, which dedupes across processes).
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import F
from django.utils import timezone

from limiter.alerts import monitor as signals
from limiter.alerts.models import Signal, Webhook
from limiter.alerts.services import notify
from limiter.models import Team

SIGNAL_RETENTION = timedelta(days=1)

_raised: set[tuple[str, str]] = set()  # (condition, period) this process saw raised
_pruned_at = 0.0


def thresholds() -> dict[str, int]:
    return {
        signals.TEAM_429: settings.SLUICE_ALERT_TEAM_429_PER_MINUTE,
        signals.UPSTREAM_429: settings.SLUICE_ALERT_UPSTREAM_429_PER_MINUTE,
        signals.UPSTREAM_503: settings.SLUICE_ALERT_UPSTREAM_503_PER_MINUTE,
        signals.LIMITER_UNAVAILABLE: 1,  # any: a call was refused (or let through unlimited)
    }


def period_key(now: datetime) -> str:
    """The rate conditions' period: one alert per condition per SLUICE_ALERT_PERIOD."""
    period = int(settings.SLUICE_ALERT_PERIOD)
    start = int(now.timestamp()) // period * period
    return datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%MZ")


def signals_add(counts: Counter[tuple[str, str]], minute: datetime) -> None:
    """Add counts to the shared rows: an UPDATE ... count + n, or the row's first INSERT."""
    for (kind, subject), n in counts.items():
        row = Signal.objects.filter(minute=minute, kind=kind, subject=subject)
        if row.update(count=F("count") + n):
            continue
        try:
            with transaction.atomic():
                Signal.objects.create(minute=minute, kind=kind, subject=subject, count=n)
        except IntegrityError:  # another process inserted it first
            row.update(count=F("count") + n)


def signals_check(counts: Counter[tuple[str, str]], now: datetime | None = None) -> int:
    """Write `counts`, then raise every rate condition over its threshold in this minute:
    the global setting's, and each webhook's own (`audiences`). Returns how many alerts
    this call raised."""
    global _pruned_at
    close_old_connections()
    now = now or timezone.now()
    minute = now.replace(second=0, microsecond=0)
    if counts:
        signals_add(counts, minute)
    limits = thresholds()
    period = period_key(now)
    raised = 0
    webhooks: list[Webhook] | None = None  # read once, if some row needs them
    for row in Signal.objects.filter(minute=minute):
        limit = limits.get(row.kind)
        if limit is None:
            continue
        if webhooks is None:
            webhooks = list(Webhook.objects.filter(enabled=True))
        base = f"{row.kind}:{row.subject}" if row.subject else row.kind
        for threshold, audience in audiences(row, limit, webhooks).items():
            # The global threshold's alert keeps the plain name; a webhook's own
            # threshold is another condition, deduplicated on its own.
            condition = base if threshold == limit else f"{base}@{threshold}"
            if row.count < threshold or (condition, period) in _raised:
                continue
            _raised.add((condition, period))
            team = _team(row)
            text, fields = _describe(row, team, threshold, minute)
            alert = notify(
                condition, period_key=period, text=text, team=team, fields=fields, webhooks=audience
            )
            raised += alert is not None
    if time.monotonic() - _pruned_at > 600:
        _pruned_at = time.monotonic()
        Signal.objects.filter(minute__lt=now - SIGNAL_RETENTION).delete()
        if len(_raised) > 10_000:
            _raised.clear()
    return raised


def audiences(row: Signal, limit: int, webhooks: list[Webhook]) -> dict[int, list[Webhook]]:
    """Who hears of this row's condition, by the threshold each listens at: the global
    setting (`limit`, always present, so the alert is recorded even with no webhook) or
    a webhook's own. A team's webhook hears only its team's alerts."""
    team_id = int(row.subject) if row.kind == signals.TEAM_429 else None
    groups: dict[int, list[Webhook]] = {limit: []}
    for webhook in webhooks:
        if webhook.hears(team_id):
            groups.setdefault(webhook.threshold(row.kind, limit), []).append(webhook)
    return groups


def _team(row: Signal) -> Team | None:
    if row.kind != signals.TEAM_429:
        return None
    return Team.objects.filter(pk=row.subject).first()


async def signals_flush() -> int:
    """Step 1 from the event loop: this process's counts written and judged, or kept for
    the next round if the database fails. Also the SIGTERM drain's last word (limiter/serving.py),
    so a graceful shutdown loses no count."""
    counts = signals.monitor.take()
    try:
        return await sync_to_async(signals_check, thread_sensitive=True)(counts)
    except Exception:
        signals.monitor.put_back(counts)
        raise


def _describe(row: Signal, team: Team | None, limit: int, minute: datetime) -> tuple[str, dict]:
    at = f"{minute:%H:%M} UTC"
    if row.kind == signals.TEAM_429:
        name = getattr(team, "name", f"#{row.subject}")
        text = f"Team '{name}' got {row.count} 429s from Sluice in the minute from {at}."
    elif row.kind == signals.LIMITER_UNAVAILABLE:
        text = (
            f"The limiter did not answer: {row.count} calls in the minute from {at} got "
            "503 limiter_unavailable (or, in failure mode 'open', went through unlimited)."
        )
    else:
        status = 429 if row.kind == signals.UPSTREAM_429 else 503
        text = (
            f"Together answered {status} {row.count} times on account '{row.subject}' "
            f"in the minute from {at}."
        )
    fields = {"count": row.count, "per_minute_threshold": limit, "minute": minute.isoformat()}
    if row.kind in (signals.UPSTREAM_429, signals.UPSTREAM_503):
        fields["account"] = row.subject
    return text, fields
