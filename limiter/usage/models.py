"""Usage accounting, Together's prices and budgets: the schema.

UsageRollup: one row per (writer, minute, team, key prefix, upstream account, endpoint
  kind, model, status class, source, prices in force). Counts: `requests`, `units`
  (embedding inputs, images; 0 elsewhere), `prompt_tokens`, `completion_tokens`,
  `total_tokens`, `estimated_tokens` (the part of the tokens Sluice estimated because
  Together reported none), `cost` in US dollars, computed when the row's usage was
  recorded from the prices copied into the row (`input_price`, `output_price`,
  `image_price`). Each web process writes only its own rows (`writer` is unique per
  process start), adding to them with F() increments, so rows from several processes
  for the same minute never race: a query sums over writers (selectors.py).
  `source` is "online" (the /v1 inference calls), "batch" or "fine_tune".

ModelPrice: one row per model. `together_input` / `together_output` (US dollars per
  million tokens) are refreshed from Together's model list; `override_*` are staff's
  negotiated rates and win when set; `image_price` (dollars per image) is staff-set only
  (Together's list states no per-image price we can rely on).

Budget: a ceiling per team (optionally one key) on tokens or dollars per calendar day,
  week (Monday first) or month in SLUICE_USAGE_TIME_ZONE, for one model or all ("").
  `soft_threshold` (a fraction, 0.8 by default) raises an alert; `limit` refuses
  further calls with 429 `budget_exceeded` until the period resets. Enforced by the
  limiter worker from its own copy (limiter/usage/budgets.py).

BudgetCrossing: each threshold a budget crossed, once per (budget, level, period):
  the record `services.threshold_crossed` writes, and what alerts will read.

JobUsage: a fine-tune's or batch's usage, recorded once per job (the one-to-one) in the
  same transaction as its rollup rows, so any number of pollers record it exactly once.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from django.utils.deconstruct import deconstructible

from limiter.models import VISIBLE_PREFIX_LENGTH, ApiKey, EndpointKind, Team

# SQLite keeps a decimal column as a double, and Django reads it back rounded to 15
# significant digits: an amount with more comes back changed, or, rounded up past the
# field's digits, not at all (a limit of 99999999999999.9999999 would stop the limiter's
# reload). So staff's amounts keep to 15 digits, on every database alike.
EXACT_DIGITS = 15
MSG_AMOUNT = (
    "Enter an amount with at most {whole} digits before the point, {places} after it "
    "and {digits} in all."
)


@deconstructible
class ExactAmountValidator:
    """An amount its DecimalField stores and reads back exactly on SQLite and
    PostgreSQL: at most `decimal_places` after the point (trailing zeros aside), the
    field's whole digits before it, and EXACT_DIGITS in all. The model field carries it
    (so forms and the admin check it), and the ops API's schema asks `allows`."""

    def __init__(self, max_digits: int, decimal_places: int) -> None:
        self.max_digits, self.decimal_places = max_digits, decimal_places
        self.message = MSG_AMOUNT.format(
            whole=max_digits - decimal_places,
            places=decimal_places,
            digits=min(max_digits, EXACT_DIGITS),
        )

    def allows(self, value: Decimal) -> bool:
        if not value.is_finite():
            return False
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)  # finite
        if not -64 <= exponent <= self.max_digits:  # far too many places or digits
            return False
        whole_text, _, fraction = f"{abs(value):f}".partition(".")
        # Zeros at the end of the fraction change nothing (a form shows 25.500000).
        places = len(fraction.rstrip("0"))
        whole = len(whole_text.lstrip("0"))
        return (
            places <= self.decimal_places
            and whole <= self.max_digits - self.decimal_places
            and whole + places <= min(self.max_digits, EXACT_DIGITS)
        )

    def __call__(self, value: Decimal) -> None:
        if not self.allows(value):
            raise ValidationError(self.message, code="amount")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExactAmountValidator) and (
            self.max_digits,
            self.decimal_places,
        ) == (other.max_digits, other.decimal_places)


def amount_field(*, max_digits: int, decimal_places: int, **options: Any) -> models.DecimalField:
    """A DecimalField for an amount staff set: it takes only what it keeps exactly."""
    validators = [*options.pop("validators", []), ExactAmountValidator(max_digits, decimal_places)]
    return models.DecimalField(
        max_digits=max_digits, decimal_places=decimal_places, validators=validators, **options
    )


class UsageSource(models.TextChoices):
    ONLINE = "online", "Online inference"
    BATCH = "batch", "Batch inference"
    FINE_TUNE = "fine_tune", "Fine-tuning"
    VIDEO = "video", "Video generation"


class UsageRollup(models.Model):
    """A minute of one writer's usage for one combination of dimensions (see above)."""

    writer = models.CharField(max_length=64)
    minute = models.DateTimeField()  # the minute's start, UTC
    team = models.ForeignKey(
        Team, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    team_name = models.CharField(max_length=80, blank=True)  # kept if the team is deleted
    key_prefix = models.CharField(max_length=VISIBLE_PREFIX_LENGTH, blank=True)
    upstream = models.CharField(max_length=80, blank=True)
    endpoint = models.CharField(max_length=20, choices=EndpointKind.choices)
    model = models.CharField(max_length=200, blank=True)
    status_class = models.CharField(max_length=3)  # "2xx", "4xx", "5xx"
    source = models.CharField(
        max_length=10, choices=UsageSource.choices, default=UsageSource.ONLINE
    )
    input_price = models.DecimalField(
        max_digits=16, decimal_places=6, null=True, blank=True
    )  # $ / 1M prompt tokens
    output_price = models.DecimalField(
        max_digits=16, decimal_places=6, null=True, blank=True
    )  # $ / 1M completion
    image_price = models.DecimalField(
        max_digits=16, decimal_places=6, null=True, blank=True
    )  # $ / image
    requests = models.PositiveBigIntegerField(default=0)
    units = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    total_tokens = models.PositiveBigIntegerField(default=0)
    estimated_tokens = models.PositiveBigIntegerField(default=0)
    # Dollars to 1e-10: one embedding token at $0.008 per million tokens is 8e-9 dollars.
    cost = models.DecimalField(max_digits=24, decimal_places=10, default=Decimal(0))

    class Meta:
        ordering = ["-minute", "-id"]
        indexes = [
            # The usage page's time range, then per team / model within it.
            models.Index(fields=["minute"], name="usage_minute"),
            models.Index(fields=["team", "minute"], name="usage_team_minute"),
            models.Index(fields=["model", "minute"], name="usage_model_minute"),
        ]

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M} {self.team_name} {self.endpoint} {self.model}"


class ModelPrice(models.Model):
    """A model's price: Together's list price, unless staff set an override."""

    model = models.CharField(max_length=200, unique=True)
    together_input = models.DecimalField(max_digits=16, decimal_places=6, null=True, blank=True)
    together_output = models.DecimalField(max_digits=16, decimal_places=6, null=True, blank=True)
    override_input = amount_field(
        max_digits=16,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
    )
    override_output = amount_field(
        max_digits=16,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
    )
    image_price = amount_field(
        max_digits=16,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
    )
    refreshed_at = models.DateTimeField(null=True, blank=True)  # last seen in Together's list
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]

    def __str__(self) -> str:
        return self.model

    # The price in force: staff's negotiated rate wins over Together's list price.
    @property
    def input_price(self) -> Decimal | None:
        return self.override_input if self.override_input is not None else self.together_input

    @property
    def output_price(self) -> Decimal | None:
        return self.override_output if self.override_output is not None else self.together_output


class BudgetUnit(models.TextChoices):
    TOKENS = "tokens", "Tokens"
    DOLLARS = "dollars", "US dollars"


class BudgetPeriod(models.TextChoices):
    DAY = "day", "Day"
    WEEK = "week", "Week (from Monday)"
    MONTH = "month", "Month"


class Budget(models.Model):
    """A ceiling on what a team (or one of its keys) may use per calendar period."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="budgets")
    key = models.ForeignKey(
        ApiKey,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="budgets",
        help_text="Empty: every key of the team.",
    )
    model = models.CharField(max_length=200, blank=True, help_text="Empty: all models.")
    unit = models.CharField(max_length=10, choices=BudgetUnit.choices)
    period = models.CharField(max_length=10, choices=BudgetPeriod.choices)
    limit = amount_field(
        max_digits=20, decimal_places=6, validators=[MinValueValidator(Decimal("0.000001"))]
    )
    soft_threshold = models.FloatField(
        default=0.8,
        validators=[MinValueValidator(0.01), MaxValueValidator(1.0)],
        help_text="Fraction of the limit that raises an alert.",
    )
    enabled = models.BooleanField(default=True)
    # Shadow: a call over it is admitted, and recorded as the refusal it would have been.
    shadow = models.BooleanField(
        default=False,
        help_text="Shadow: record what this budget would refuse, but admit every call.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["team__name", "period", "model", "id"]

    def __str__(self) -> str:
        scope = self.key.prefix if self.key_id and self.key else self.team.name
        return f"{scope}: {self.limit} {self.unit}/{self.period} on {self.model or 'all models'}"

    def clean(self) -> None:
        # A key budget names one of the team's own keys.
        if self.key_id and self.team_id and self.key and self.key.team_id != self.team_id:
            raise ValidationError({"key": "The key must belong to the budget's team."})


class BudgetLevel(models.TextChoices):
    SOFT = "soft", "Soft threshold"
    HARD = "hard", "Hard limit"


class BudgetCrossing(models.Model):
    """A budget crossed a threshold in a period: recorded once (the unique constraint)."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="crossings")
    level = models.CharField(max_length=4, choices=BudgetLevel.choices)
    period_start = models.DateTimeField()
    spent = models.DecimalField(max_digits=24, decimal_places=10)
    limit = models.DecimalField(max_digits=20, decimal_places=6)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["budget", "level", "period_start"], name="one_crossing_per_period"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.budget} {self.level} at {self.created_at:%Y-%m-%d %H:%M}"


class JobUsage(models.Model):
    """What an ended fine-tune or batch used, as Together reported it: written once, with
    the job's rollup rows (limiter/usage/job_reports.py)."""

    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="usage")
    total_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=24, decimal_places=10, default=Decimal(0))
    # Why nothing was counted, when nothing was ("no token count reported"...).
    note = models.CharField(max_length=200, blank=True)
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-recorded_at", "-id"]

    def __str__(self) -> str:
        return f"{self.job_id}: {self.total_tokens} tokens, ${self.cost}"
