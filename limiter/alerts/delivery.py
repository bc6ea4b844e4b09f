"""The alerts loop: every web process runs one, in the background, never on a request.

Each round (`run_alerts`):
  1. `signals_check`: every SLUICE_ALERT_CHECK_INTERVAL, add this process's counters
     (monitor.py) to the shared per-minute rows, and raise the rate conditions whose
     minute, summed over all processes, reached its threshold (services.notify).
  2. `deliveries_send`: claim the deliveries that are due (a compare-and-swap UPDATE, so
     no two processes send the same attempt), POST each, record the attempt, and on a
     failure schedule the next one after SLUICE_ALERT_RETRY_BACKOFF × 2^(attempt-1).
  3. Wait until the next check or the next due retry, or until `wake()` (a new alert).

On SIGTERM the drain ends the loop (`alerts_stop`), then writes the last counts
(`signals_flush`); an alert raised then is queued for the other processes, or this
one's next start.

Webhook URLs hold secrets: they are never logged. A destination is sent to only at an
address checked at send time (destinations.py). A failed attempt is recorded as "failed"
alone (the receiver's status or connection error would map internal ports for whoever
reads the history); the reason goes to the log, scrubbed of the URL's secret parts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import F, Min, Q
from django.utils import timezone

from limiter.alerts import destinations
from limiter.alerts import monitor as signals
from limiter.alerts.models import Attempt, Delivery, Signal, Webhook
from limiter.alerts.payload import alert_payload, redact_url, scrub
from limiter.loops import LoopBound
from limiter.models import Team

logger = logging.getLogger(__name__)

MAX_BACKOFF = 600.0
CLAIM_MARGIN = 30.0  # seconds beyond the send timeout before a claim lapses
BATCH = 20
SIGNAL_RETENTION = timedelta(days=1)
FAILED = "failed"  # what the attempt history says of any failure


@dataclass(frozen=True)
class _Running:
    """The running alerts loop's events (of the event loop it runs on)."""

    wakeup: asyncio.Event
    stop: asyncio.Event
    stopped: asyncio.Event


_running: LoopBound[_Running] = LoopBound()


def wake() -> None:
    """Make this process's loop look for due deliveries now (from any thread)."""
    bound = _running.bound()
    if bound is not None and not bound[0].is_closed():
        bound[0].call_soon_threadsafe(bound[1].wakeup.set)


async def alerts_stop() -> None:
    """End this process's loop after its current round (the SIGTERM drain, before its
    last `signals_flush`). Otherwise the alert that flush raises wakes the loop, which
    claims the delivery and dies with the process before sending it: no one else could
    send it until the claim lapsed. A round in the middle of a POST may take up to
    SLUICE_ALERT_TIMEOUT; the drain waits no longer than that."""
    running = _running.current()
    if running is None:
        return
    running.stop.set()
    wake()
    try:
        await asyncio.wait_for(running.stopped.wait(), settings.SLUICE_ALERT_TIMEOUT + 1)
    except TimeoutError:
        logger.warning("alerts: the loop did not stop in time; its claims will lapse")


def backoff(attempts: int) -> float:
    """Seconds before the next attempt, after `attempts` failed ones."""
    return float(min(MAX_BACKOFF, settings.SLUICE_ALERT_RETRY_BACKOFF * 2 ** (attempts - 1)))


# --- step 1: the rate conditions -------------------------------------------------------
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
    from limiter.alerts.services import notify

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
    the next round if the database fails. Also the SIGTERM drain's last word (process.py),
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


# --- step 2: deliveries ------------------------------------------------------------------
def _claimable(now: datetime) -> Q:
    return Q(state=Delivery.PENDING, next_attempt_at__lte=now) & (
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    )


def deliveries_claim(now: datetime | None = None) -> list[Delivery]:
    """The due deliveries this process won: each claimed by a conditional UPDATE that
    only one process can make succeed."""
    close_old_connections()
    now = now or timezone.now()
    until = now + timedelta(seconds=settings.SLUICE_ALERT_TIMEOUT + CLAIM_MARGIN)
    won = [
        pk
        for pk in Delivery.objects.filter(_claimable(now)).values_list("pk", flat=True)[:BATCH]
        if Delivery.objects.filter(_claimable(now), pk=pk).update(claimed_until=until)
    ]
    return list(Delivery.objects.filter(pk__in=won).select_related("alert__team", "webhook"))


def attempt_record(
    delivery: Delivery, *, status: int | None, error: str, duration_ms: int
) -> Delivery:
    """Keep the attempt; the delivery is done, failed for good, or due again later."""
    close_old_connections()
    now = timezone.now()
    with transaction.atomic():
        Attempt.objects.create(
            delivery=delivery, status_code=status, error=error[:300], duration_ms=duration_ms
        )
        delivery.attempts += 1
        delivery.claimed_until = None
        if status is not None and 200 <= status < 300:
            delivery.state, delivery.delivered_at = Delivery.DELIVERED, now
        elif delivery.attempts >= settings.SLUICE_ALERT_MAX_ATTEMPTS:
            delivery.state = Delivery.FAILED
        else:
            delivery.next_attempt_at = now + timedelta(seconds=backoff(delivery.attempts))
        delivery.save(
            update_fields=["attempts", "claimed_until", "state", "delivered_at", "next_attempt_at"]
        )
    return delivery


def next_due() -> datetime | None:
    close_old_connections()
    return Delivery.objects.filter(state=Delivery.PENDING).aggregate(at=Min("next_attempt_at"))[
        "at"
    ]


async def deliver(client: httpx.AsyncClient, delivery: Delivery) -> Delivery:
    """One attempt: POST the alert, then record what came of it."""
    url = delivery.webhook.url
    started = time.monotonic()
    status: int | None = None
    try:
        response = await destinations.post(client, url, json=alert_payload(delivery.alert))
        status = response.status_code
        reason = f"HTTP {status}"
    except destinations.Refused as exc:
        reason = str(exc)
    except httpx.HTTPError as exc:
        reason = scrub(f"{type(exc).__name__}: {exc}", url)
    duration_ms = round((time.monotonic() - started) * 1000)
    delivered = status is not None and 200 <= status < 300
    done = await sync_to_async(attempt_record, thread_sensitive=True)(
        delivery,
        status=status if delivered else None,
        error="" if delivered else FAILED,
        duration_ms=duration_ms,
    )
    if not delivered:
        logger.warning(
            "alert %s to webhook %s (%s): attempt %d failed: %s; %s",
            delivery.alert.pk,
            delivery.webhook.pk,
            redact_url(url),
            done.attempts,
            reason,
            "giving up" if done.state == Delivery.FAILED else "will retry",
        )
    return done


async def deliveries_send(client: httpx.AsyncClient) -> int:
    """Send every due delivery this process can claim; how many it tried."""
    claimed = await sync_to_async(deliveries_claim, thread_sensitive=True)()
    await asyncio.gather(*(deliver(client, d) for d in claimed))
    return len(claimed)


# --- the loop ----------------------------------------------------------------------------
async def run_alerts(stop: asyncio.Event | None = None) -> None:
    """Steps 1-3 above until `stop` is set; a failing database is logged and retried."""
    running = _running.set(_Running(asyncio.Event(), stop or asyncio.Event(), asyncio.Event()))
    try:
        await _rounds(running.stop, running.wakeup)
    finally:
        running.stopped.set()


async def _rounds(stop: asyncio.Event, wakeup: asyncio.Event) -> None:
    interval = settings.SLUICE_ALERT_CHECK_INTERVAL
    next_check = 0.0
    # No connection kept: each POST connects to the address just checked, and a TLS
    # connection made for one name is never reused for another on the same address.
    async with httpx.AsyncClient(
        timeout=settings.SLUICE_ALERT_TIMEOUT,
        follow_redirects=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    ) as client:
        while not stop.is_set():
            wakeup.clear()  # before reading: a wake during this round runs another
            wait = interval
            try:
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + interval
                    await signals_flush()
                if await deliveries_send(client):
                    continue  # more may be due
                due = await sync_to_async(next_due, thread_sensitive=True)()
                wait = next_check - time.monotonic()
                if due is not None:
                    wait = min(wait, (due - timezone.now()).total_seconds())
            except Exception:
                logger.exception("alerts: a round failed; trying again in %.0f s", interval)
            try:
                await asyncio.wait_for(wakeup.wait(), max(0.01, wait))
            except TimeoutError:
                pass
