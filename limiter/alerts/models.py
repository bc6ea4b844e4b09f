"""Webhooks, the alerts raised, their deliveries and each delivery attempt.

`Alert` is unique on (condition, period_key): that constraint, not a lock, makes one
alert per condition per period across every web process. `Signal` holds the request
path's counts per minute, summed over processes when a rate condition is checked.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from limiter.alerts.destinations import webhook_url_validate
from limiter.alerts.monitor import TEAM_429, UPSTREAM_429, UPSTREAM_503
from limiter.models import Team

# The rate conditions a webhook may set its own threshold for, and the field holding it.
RATE_FIELDS = {
    TEAM_429: "team_429_per_minute",
    UPSTREAM_429: "upstream_429_per_minute",
    UPSTREAM_503: "upstream_503_per_minute",
}
MAX_RATE = 1_000_000
MSG_UPSTREAM_ON_TEAM = (
    "Together's 429s and 503s are told to the organisation's webhooks only: "
    "leave this empty on a team's webhook."
)


def _rate_field(label: str) -> models.PositiveIntegerField:
    return models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_RATE)],
        help_text=f"{label} in one minute; empty: the global setting.",
    )


class Webhook(models.Model):
    """Where alerts go: the whole organisation's (team empty) or one team's.

    The URL usually carries a secret (Slack's path is one): it is shown redacted
    (`payload.redact_url`) and never logged. It must resolve to public addresses only
    (`destinations.py`), checked on save and again on every send."""

    name = models.CharField(max_length=80)
    url = models.URLField(max_length=500, validators=[webhook_url_validate])
    team = models.ForeignKey(
        Team, on_delete=models.CASCADE, null=True, blank=True, related_name="webhooks"
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    # This webhook's own thresholds, over the SLUICE_ALERT_*_PER_MINUTE settings.
    team_429_per_minute = _rate_field("A team's 429s from Sluice")
    upstream_429_per_minute = _rate_field("Together's 429s")
    upstream_503_per_minute = _rate_field("Together's 503s")

    class Meta:
        ordering = ["team__name", "name", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.team.name if self.team else 'organisation'})"

    def clean(self) -> None:
        # A team's webhook never hears of Together's errors (they are no team's): an
        # override there would promise an alert that never comes.
        if self.team_id is not None:
            errors = {
                name: MSG_UPSTREAM_ON_TEAM
                for name in ("upstream_429_per_minute", "upstream_503_per_minute")
                if getattr(self, name) is not None
            }
            if errors:
                raise ValidationError(errors)

    def hears(self, team_id: int | None) -> bool:
        """An organisation's webhook hears every alert; a team's, only its team's."""
        return self.team_id is None or self.team_id == team_id

    def threshold(self, kind: str, default: int) -> int:
        """How many of `kind` in a minute this webhook is told about: its own number if
        it set one, else the global setting (`default`)."""
        field = RATE_FIELDS.get(kind)
        override = getattr(self, field) if field else None
        return default if override is None else override


class Alert(models.Model):
    condition = models.CharField(max_length=120)  # e.g. "team_429:7", "limiter_unavailable"
    period_key = models.CharField(max_length=40)  # e.g. "2026-11-29T10:00" or a budget period
    team = models.ForeignKey(
        Team, on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts"
    )
    text = models.CharField(max_length=1000)
    fields = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["condition", "period_key"], name="alert_once_per_period"
            )
        ]

    def __str__(self) -> str:
        return f"{self.condition} {self.period_key}"


class Delivery(models.Model):
    """One alert to one webhook, retried until delivered or out of attempts."""

    PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
    STATES = [(PENDING, PENDING), (DELIVERED, DELIVERED), (FAILED, FAILED)]

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    state = models.CharField(max_length=10, choices=STATES, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # A sender claims a delivery by moving this forward (a compare-and-swap UPDATE), so
    # two processes never send the same attempt; a sender that died lets it lapse.
    claimed_until = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        # The sender's query: pending deliveries that are due.
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="delivery_due")]

    def __str__(self) -> str:
        return f"alert {self.alert_id} to webhook {self.webhook_id}: {self.state}"


class Attempt(models.Model):
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    at = models.DateTimeField(default=timezone.now)
    # The receiver's status when it took the alert. A failure is "failed", nothing more:
    # the status or connection error of a destination would map what listens where.
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.status_code or self.error}"

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Signal(models.Model):
    """How many times something happened in one minute, summed over web processes
    (each adds its own counts every check): what rate conditions are judged on."""

    minute = models.DateTimeField()
    kind = models.CharField(max_length=20)  # monitor.TEAM_429, UPSTREAM_429, ...
    subject = models.CharField(max_length=120, blank=True)  # a team id, an account name
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["minute", "kind", "subject"], name="signal_per_minute")
        ]

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M} {self.kind} {self.subject}: {self.count}"
