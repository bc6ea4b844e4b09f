"""The alerts as the dashboard shows them: webhooks with their URLs redacted, and the
alert history with each delivery's attempts."""

from __future__ import annotations

from collections.abc import Collection
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


def alert_history(
    *, limit: int = HISTORY_ROWS, teams: Collection[int] | None = None
) -> list[Alert]:
    """The latest alerts, each with its deliveries (webhook redacted) and their attempts.
    With `teams` (a team user's, dashboard.policy.team_rows), only alerts about those
    teams: an alert about no team (Together's 429s, the limiter down, an unreadable row)
    is the organisation's, and its text may name other teams' settings."""
    qs = Alert.objects.all() if teams is None else Alert.objects.filter(team_id__in=teams)
    alerts = list(
        qs.select_related("team").prefetch_related(
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
