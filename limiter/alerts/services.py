"""Raising alerts and managing webhooks.

`notify` is the one way in for every condition: the budgets code calls it for its soft
and hard thresholds, the alerts loop for the rates and the limiter's outages, the
dashboard's "send test" button for a test. It never sends anything itself.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, TypedDict

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from limiter.alerts import wakeup
from limiter.alerts.models import Alert, Delivery, Webhook
from limiter.models import Team

logger = logging.getLogger(__name__)

TEST_CONDITION = "test"


class Rates(TypedDict, total=False):
    """A webhook's own per-minute thresholds (models.RATE_FIELDS); None: the setting."""

    team_429_per_minute: int | None
    upstream_429_per_minute: int | None
    upstream_503_per_minute: int | None


def notify(
    condition: str,
    *,
    period_key: str,
    text: str,
    team: Team | None = None,
    fields: dict[str, Any] | None = None,
    webhooks: list[Webhook] | None = None,
) -> Alert | None:
    """Raise `condition` for `period_key`, once: the first caller (in any process) inserts
    the alert and queues a delivery to each enabled webhook of the organisation and of
    `team`; every later caller for the same condition and period gets None.

    `condition` names what and whom ("budget_soft:12", "team_429:7"); `period_key` the
    period it holds for (a budget's period, or the hour for a rate). Delivery happens
    in the background (delivery.py, woken through wakeup.py), never in the caller.
    """
    if webhooks is None:
        scope = Q(team__isnull=True) | (Q(team=team) if team is not None else Q(pk__in=[]))
        webhooks = list(Webhook.objects.filter(scope, enabled=True))
    try:
        # A savepoint, so a caller's own transaction survives the duplicate.
        with transaction.atomic():
            alert = Alert.objects.create(
                condition=condition[:120],
                period_key=period_key[:40],
                team=team,
                text=text[:1000],
                fields=fields or {},
            )
            Delivery.objects.bulk_create(
                [Delivery(alert=alert, webhook=webhook) for webhook in webhooks]
            )
    except IntegrityError:
        return None  # raised already, by this process or another
    logger.warning("alert raised: %s (%s): %s", condition, period_key, text)
    wakeup.wake()
    return alert


def webhook_test(*, webhook: Webhook) -> Alert:
    """A test alert to this one webhook (the dashboard's button): never deduplicated."""
    alert = notify(
        f"{TEST_CONDITION}:{webhook.pk}",
        period_key=uuid.uuid4().hex,
        text=f"Test alert from Sluice to webhook '{webhook.name}'.",
        team=webhook.team,
        fields={"sent_at": timezone.now().isoformat(timespec="seconds")},
        webhooks=[webhook],
    )
    assert alert is not None  # a fresh period key cannot collide
    return alert


def webhook_create(
    *, name: str, url: str, team: Team | None = None, rates: Rates | None = None
) -> Webhook:
    webhook = Webhook(name=name, url=url, team=team, **(rates or {}))
    webhook.full_clean()
    webhook.save()
    return webhook


def webhook_set_rates(*, webhook: Webhook, rates: Rates) -> Webhook:
    """This webhook's own thresholds (None: the global setting), checked by the model."""
    for name, value in rates.items():
        setattr(webhook, name, value)
    # Only what changes is checked: the URL was checked when it was saved and is checked
    # again at every send (alerts/destinations.py), and resolving it here would make a
    # rate change fail while DNS is down.
    webhook.full_clean(exclude=["url"])
    webhook.save(update_fields=list(rates))
    return webhook


def webhook_set_enabled(*, webhook: Webhook, enabled: bool) -> Webhook:
    webhook.enabled = enabled
    webhook.save(update_fields=["enabled"])
    return webhook
