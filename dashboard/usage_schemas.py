"""The ops API's shapes for usage, prices and budgets (dashboard/usage_api.py)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from ninja import Field, ModelSchema, Schema

from dashboard.api_types import IsoDateTime, Limit, Price
from limiter.models import EndpointKind
from limiter.usage.models import BudgetPeriod, BudgetUnit, ModelPrice

UsageGroup = Literal["team", "model", "endpoint", "key", "status", "day"]


class UsageFilterIn(Schema):
    start: IsoDateTime | None = Field(None, description="From this time (default: 30 days ago).")
    end: IsoDateTime | None = None
    team: str | None = Field(None, description="Team name.")
    model: str | None = None
    endpoint: EndpointKind | None = None
    key_prefix: str | None = None
    group_by: list[UsageGroup] = Field(
        default_factory=lambda: list[UsageGroup](["team", "model"]),
        description="Dimensions to sum per; 'day' is the calendar day in SLUICE_USAGE_TIME_ZONE.",
    )


class UsageTotalOut(Schema):
    team: str | None = None
    model: str | None = None
    endpoint: str | None = None
    key: str | None = None
    status: str | None = Field(None, description="Status class: 2xx, 4xx or 5xx.")
    day: str | None = Field(None, description="ISO date, in SLUICE_USAGE_TIME_ZONE.")
    requests: int
    units: int = Field(
        ...,
        description="Embedding inputs, images, characters of speech, seconds of audio heard.",
    )
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: Decimal = Field(..., description="US dollars at the prices in force when recorded.")


class PriceOut(ModelSchema):
    input_price: Decimal | None = Field(None, description="In force: $ per 1M prompt tokens.")
    output_price: Decimal | None = Field(None, description="In force: $ per 1M completion tokens.")

    class Meta:
        model = ModelPrice
        fields = [
            "model",
            "together_input",
            "together_output",
            "override_input",
            "override_output",
            "image_price",
            "refreshed_at",
        ]


class PriceOverrideIn(Schema):
    model: str = Field(..., min_length=1, max_length=200)
    override_input: Price | None = Field(
        None, description="$ per 1M prompt tokens; null: Together's."
    )
    override_output: Price | None = Field(
        None, description="$ per 1M completion tokens; null: Together's."
    )
    image_price: Price | None = Field(None, description="$ per image; null: none.")


class BudgetOut(Schema):
    id: int
    team: str
    key_prefix: str | None = Field(None, description="Null: every key of the team.")
    model: str = Field(..., description="Empty: all models.")
    unit: BudgetUnit
    period: BudgetPeriod
    limit: Decimal
    soft_threshold: float
    enabled: bool
    shadow: bool = Field(..., description="Shadow: records what it would refuse, refuses none.")
    period_start: datetime
    resets_at: datetime
    spent: Decimal = Field(..., description="This period, from the usage records.")
    left: Decimal
    used_fraction: float


class BudgetIn(Schema):
    key_id: int | None = Field(None, description="One of the team's keys; null: every key.")
    model: str = Field("", max_length=200, description="Empty: all models.")
    unit: BudgetUnit
    period: BudgetPeriod
    limit: Limit
    soft_threshold: float = Field(0.8, ge=0.01, le=1.0)
    enabled: bool = True
    shadow: bool = False


class BudgetPatchIn(Schema):
    model: str | None = Field(None, max_length=200)
    unit: BudgetUnit | None = None
    period: BudgetPeriod | None = None
    limit: Limit | None = None
    soft_threshold: float | None = Field(None, ge=0.01, le=1.0)
    enabled: bool | None = None
    shadow: bool | None = Field(None, description="Switch shadow <-> enforced (audited).")
