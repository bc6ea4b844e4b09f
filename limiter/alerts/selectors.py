"""The alerts as the dashboard shows them: webhooks with their URLs redacted, and the
alert history with each delivery's attempts."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Prefetch

from limiter.alerts.models import RATE_FIELDS, Alert, Delivery, Webhook
from limiter.alerts.monitor import TEAM_429, UPSTREAM_429, UPSTREAM_503
from limiter.alerts.payload import redact_url

HISTORY_ROWS = 100


OVERRIDE_NAMES = {
    TEAM_429: "team 429s",
    UPSTREAM_429: "Together 429s",
    UPSTREAM_503: "Together 503s",
}


@dataclass(frozen=True)
class WebhookRow:
    webhook: Webhook
    shown_url: str  # never the URL itself: it carries the receiver's secret
    overrides: list[str]  # its own thresholds, e.g. "team 429s ≥ 10"; empty: the settings


def webhook_list() -> list[WebhookRow]:
    return [
        WebhookRow(
            webhook,
            redact_url(webhook.url),
            [
                f"{OVERRIDE_NAMES[kind]} ≥ {getattr(webhook, field)}"
                for kind, field in RATE_FIELDS.items()
                if getattr(webhook, field) is not None
            ],
        )
        for webhook in Webhook.objects.select_related("team")
    ]


def alert_history(*, limit: int = HISTORY_ROWS) -> list[Alert]:
    """The latest alerts, each with its deliveries (webhook redacted) and their attempts."""
    alerts = list(
        Alert.objects.select_related("team").prefetch_related(
            Prefetch(
                "deliveries",
                queryset=Delivery.objects.select_related("webhook").prefetch_related("attempt_log"),
            )
        )[:limit]
    )
    for alert in alerts:
        for delivery in alert.deliveries.all():
            delivery.shown_url = redact_url(delivery.webhook.url)  # type: ignore[attr-defined]
    return alerts
