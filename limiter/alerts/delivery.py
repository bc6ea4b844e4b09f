"""The alerts loop: every web process runs one, in the background, never on a request.

Each round (`run_alerts`):
  1. `signals_flush` (rates.py): every SLUICE_ALERT_CHECK_INTERVAL, add this process's
     counters to the shared per-minute rows and raise the rate conditions that reached
     their threshold.
  2. `deliveries_send`: claim the deliveries that are due (a compare-and-swap UPDATE, so
     no two processes send the same attempt), POST each, record the attempt, and on a
     failure schedule the next one after SLUICE_ALERT_RETRY_BACKOFF × 2^(attempt-1).
  3. Wait until the next check or the next due retry, or until the doorbell rings
     (wakeup.py: services.notify queued a new alert).

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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Min, Q
from django.utils import timezone

from limiter.alerts import destinations, wakeup
from limiter.alerts.models import Attempt, Delivery
from limiter.alerts.payload import alert_payload, redact_url, scrub
from limiter.alerts.rates import signals_flush
from limiter.loops import LoopBound

logger = logging.getLogger(__name__)

MAX_BACKOFF = 600.0
CLAIM_MARGIN = 30.0  # seconds beyond the send timeout before a claim lapses
BATCH = 20
FAILED = "failed"  # what the attempt history says of any failure


@dataclass(frozen=True)
class _Running:
    """The running alerts loop's events (of the event loop it runs on)."""

    stop: asyncio.Event
    stopped: asyncio.Event


_running: LoopBound[_Running] = LoopBound()


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
    wakeup.wake()
    try:
        await asyncio.wait_for(running.stopped.wait(), settings.SLUICE_ALERT_TIMEOUT + 1)
    except TimeoutError:
        logger.warning("alerts: the loop did not stop in time; its claims will lapse")


def backoff(attempts: int) -> float:
    """Seconds before the next attempt, after `attempts` failed ones."""
    return float(min(MAX_BACKOFF, settings.SLUICE_ALERT_RETRY_BACKOFF * 2 ** (attempts - 1)))


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


async def deliveries_send(client: Callable[[], httpx.AsyncClient]) -> int:
    """Send every due delivery this process can claim; how many it tried. `client` is
    asked for the HTTP client only when there is one to send."""
    claimed = await sync_to_async(deliveries_claim, thread_sensitive=True)()
    if claimed:
        await asyncio.gather(*(deliver(client(), d) for d in claimed))
    return len(claimed)


# --- the loop ----------------------------------------------------------------------------
async def run_alerts(stop: asyncio.Event | None = None) -> None:
    """Steps 1-3 above until `stop` is set; a failing database is logged and retried."""
    running = _running.set(_Running(stop or asyncio.Event(), asyncio.Event()))
    try:
        await _rounds(running.stop, wakeup.listen())
    finally:
        running.stopped.set()


class _LazyClient:
    """The loop's HTTP client, built when the first delivery is sent: most processes
    never send one, and building it loads the certificate authorities (about 22 ms of
    CPU at every process's start)."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    def __call__(self) -> httpx.AsyncClient:
        if self._client is None:
            # No connection kept: each POST connects to the address just checked, and a
            # TLS connection made for one name is never reused for another on the same
            # address.
            self._client = httpx.AsyncClient(
                timeout=settings.SLUICE_ALERT_TIMEOUT,
                follow_redirects=False,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return self._client

    async def __aenter__(self) -> _LazyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()


async def _rounds(stop: asyncio.Event, wakeup: asyncio.Event) -> None:
    interval = settings.SLUICE_ALERT_CHECK_INTERVAL
    next_check = 0.0
    async with _LazyClient() as client:
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
