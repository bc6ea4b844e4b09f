"""The ops API's input (`XIn`) and output (`XOut`) schemas, with explicit fields."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from ninja import Field, ModelSchema, Schema

from dashboard.api_types import IsoDateTime
from dashboard.live import LiveView
from dashboard.models import AuditEntry
from limiter.jobs.live import AccountJobs
from limiter.models import (
    COALESCE_MAX_INPUTS,
    MODEL_GLOB_DOCUMENTED,
    ApiKey,
    EndpointKind,
    EndpointLimit,
    LimitProfile,
    Refusal,
    RefusalSource,
    Team,
)


class ErrorBody(Schema):
    code: str
    message: str
    fields: dict[str, list[str]] | None = None


class ErrorOut(Schema):
    error: ErrorBody


# --- limits and profiles ----------------------------------------------------------------
class LimitOut(ModelSchema):
    profile: str = Field(..., alias="profile.name")
    warnings: list[str] = []

    class Meta:
        model = EndpointLimit
        fields = [
            "id",
            "endpoint",
            "model",
            "requests_per_minute",
            "pace_per_minute",
            "burst",
            "tokens_per_minute",
            "max_concurrent",
            "queue_depth",
            "max_queue_wait_seconds",
            "max_batch_requests",
            "shadow",
        ]


class LimitPatchIn(Schema):
    # Omitted fields stay as they are. Only the optional limits take null (= no such
    # limit); the others must be numbers when given, as the schema says.
    # The ignores: pydantic checks a value sent against the annotation but never the
    # default, so `int = None` is "may be omitted, never null"; Python's types cannot
    # say that, and `int | None` would let null through (and into the OpenAPI schema).
    requests_per_minute: int = Field(None, ge=1)  # type: ignore[assignment]
    pace_per_minute: int | None = Field(None, ge=1)
    burst: int = Field(None, ge=1)  # type: ignore[assignment]
    tokens_per_minute: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    queue_depth: int = Field(None, ge=0)  # type: ignore[assignment]
    max_queue_wait_seconds: float = Field(None, ge=0)  # type: ignore[assignment]
    max_batch_requests: int | None = Field(None, ge=1)
    shadow: bool = Field(  # type: ignore[assignment]
        None,
        description="Shadow: admit every call, and record the ones this row would refuse "
        "(429 history marked shadow, /metrics). false: enforced.",
    )


class LimitIn(LimitPatchIn):
    endpoint: EndpointKind
    model: str = Field(
        "",
        max_length=200,
        json_schema_extra={"pattern": MODEL_GLOB_DOCUMENTED},
        description="Empty: the endpoint's row. A model name or glob (org/prefix*, any "
        "case): that model's own row (exact beats glob, a longer glob a shorter one).",
    )
    requests_per_minute: int = Field(..., ge=1)


class ProfileOut(ModelSchema):
    limits: list[LimitOut]

    class Meta:
        model = LimitProfile
        fields = [
            "id",
            "name",
            "description",
            "coalesce_embeddings",
            "coalesce_max_inputs",
            "created_at",
            "updated_at",
        ]


class ProfileIn(Schema):
    name: str = Field(..., min_length=1, max_length=80)
    description: str = ""
    copy_from: str | None = Field(
        None, description="Name of the profile whose limits to copy; default: 'default'."
    )


class ProfilePatchIn(Schema):
    # Omitted fields stay as they are; none takes null (the ignores: see LimitPatchIn).
    name: str = Field(None, min_length=1, max_length=80)  # type: ignore[assignment]
    description: str = Field(None)  # type: ignore[assignment]
    # Embeddings coalescing (limiter/gateway/coalesce.py): on or off for the profile's
    # keys, and the inputs one merged request may carry (Together documents no maximum;
    # COALESCE_MAX_INPUTS is its own guide's figure). The model validates the same bounds.
    coalesce_embeddings: bool = Field(  # type: ignore[assignment]
        None, description="Merge concurrent embeddings calls into one upstream request."
    )
    coalesce_max_inputs: int = Field(  # type: ignore[assignment]
        None,
        ge=1,
        le=COALESCE_MAX_INPUTS,
        description=f"Inputs per merged upstream request, 1 to {COALESCE_MAX_INPUTS}.",
    )


# --- teams and keys -------------------------------------------------------------------------
class TeamOut(ModelSchema):
    profile: str = Field(..., alias="profile.name")
    upstream: str = Field(..., alias="upstream.name")

    class Meta:
        model = Team
        fields = ["id", "name", "paused", "created_at"]


class TeamIn(Schema):
    name: str = Field(..., min_length=1, max_length=80)
    profile: str | None = Field(None, description="Profile name; default: 'default'.")


class TeamPatchIn(Schema):
    profile: str | None = Field(None, description="Assign this profile (by name).")
    paused: bool | None = None


class KeyOut(ModelSchema):
    team: str = Field(..., alias="team.name")
    profile: str | None = Field(None, description="Empty: the team's profile.")

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at"]

    @staticmethod
    def resolve_profile(obj: ApiKey) -> str | None:
        return obj.profile.name if obj.profile is not None else None


class KeyIn(Schema):
    name: str = Field("", max_length=80)
    profile: str | None = Field(None, description="Profile name; empty: the team's profile.")
    expires_at: IsoDateTime | None = None


class KeyIssuedOut(Schema):
    key: KeyOut
    secret: str = Field(..., description="Shown once; Sluice keeps only its hash.")


# --- 429 history ------------------------------------------------------------------------------
class RefusalFilterIn(Schema):
    start: IsoDateTime | None = None
    end: IsoDateTime | None = None
    team: str | None = Field(None, description="Team name.")
    key_prefix: str | None = None
    endpoint: EndpointKind | None = None
    model: str | None = None
    reason: str | None = None
    source: RefusalSource | None = None
    mode: Literal["enforced", "shadow"] | None = Field(
        None,
        description="enforced: real 429s; shadow: calls admitted that a shadow limit "
        "or budget would have refused.",
    )


class RefusalOut(ModelSchema):
    class Meta:
        model = Refusal
        fields = [
            "id",
            "created_at",
            "team_name",
            "key_prefix",
            "upstream",
            "endpoint",
            "model",
            "reason",
            "source",
            "retry_after_seconds",
            "request_id",
            "message",
            "shadow",
        ]


class RefusalPageOut(Schema):
    items: list[RefusalOut]
    next_cursor: str | None = Field(
        None, description="Pass as `after` for the next page; null on the last."
    )


class MinuteOut(Schema):
    minute: datetime
    refusals: int


# --- audit ----------------------------------------------------------------------------------
class AuditOut(ModelSchema):
    class Meta:
        model = AuditEntry
        fields = [
            "id",
            "created_at",
            "actor_name",
            "action",
            "object_type",
            "object_id",
            "object_repr",
            "old_values",
            "new_values",
            "via",
        ]


class AuditPageOut(Schema):
    items: list[AuditOut]
    next_cursor: str | None = None


# --- live -----------------------------------------------------------------------------------------
class DbLimitOut(Schema):
    endpoint: str
    model: str = Field(description="Empty: the endpoint's row; else a model name or glob.")
    limit_per_minute: int
    requests_per_minute: int
    burst: int
    max_concurrent: int | None
    queue_depth: int
    max_wait: float


class AccountLimitsOut(Schema):
    id: str
    name: str
    profile: str
    limits: list[DbLimitOut]


class TeamLimitsOut(Schema):
    id: int
    name: str
    paused: bool
    profile: str
    upstream: str
    limits: list[DbLimitOut]


class LimitsOverviewOut(Schema):
    accounts: list[AccountLimitsOut]
    teams: list[TeamLimitsOut]


class ModelCeilingOut(Schema):
    """Together's limit for one model on one account, as the limiter learned it."""

    account: str = Field(description="Upstream account id.")
    account_name: str
    endpoint: str
    model: str
    cap_per_minute: float = Field(description="The profile's row: the cap and starting pace.")
    learned_per_minute: float | None = Field(
        description="What Together's headers said, per minute; null before any."
    )
    learned_tokens_per_minute: float | None
    pace_per_minute: float = Field(description="The pace Sluice uses now.")
    token_pace_per_minute: float | None
    source: str = Field(description="Where the pace came from: profile, headers or 429.")
    updated_at: float | None = Field(description="Unix time of the last change.")
    last_headers: dict[str, str] = Field(
        description="Together's last rate headers for the model, with 'at' (unix time)."
    )
    upstream_429_last_minute: int
    upstream_503_last_minute: int


class ModelCeilingsOut(Schema):
    limiter_reachable: bool
    models: list[ModelCeilingOut]


class CeilingResetIn(Schema):
    account: int = Field(..., ge=1, le=2**63 - 1, description="Upstream account id.")
    endpoint: EndpointKind
    model: str = Field(..., min_length=1, max_length=200)


class CeilingResetOut(Schema):
    reset: bool = Field(description="The stored learned state is gone.")
    limiter_confirmed: bool = Field(
        description="The limiter confirmed it forgot its own within a second."
    )


class LiveOut(Schema):
    limiter_reachable: bool
    age_seconds: float | None = Field(
        None, description="Age of the snapshot; null when none was seen."
    )
    # The same shapes the websocket sends (defined once, in dashboard/live.py and
    # limiter/jobs/live.py): the limiter's scopes with names, and the job slots.
    snapshot: LiveView | None
    jobs: dict[str, AccountJobs] = Field(
        description="Fine-tune and batch slots per upstream account id."
    )
    limits: LimitsOverviewOut


# --- a team's page, now ---------------------------------------------------------------------
class TeamScopeNowOut(Schema):
    key_prefix: str
    key_name: str
    endpoint: str
    limit_per_minute: float
    burst: int
    in_use: float = Field(description="Units of the burst in use now.")
    queued: int
    longest_wait: float = Field(description="Seconds the oldest queued request has waited.")
    leases: int
    max_concurrent: int | None
    refused_last_minute: dict[str, int] = Field(description='{"gateway": n, "upstream": n}')


class TeamJobNowOut(Schema):
    kind: str = Field(description="fine_tune, batch or video")
    job: str
    parent: str | None
    state: str = Field(description="running (holds a slot) or waiting")
    position: int | None = Field(description="Place in the account's queue; 1 starts next.")
    since: str


class TeamNowOut(Schema):
    """One team's own rows of the live view: its keys' scopes and its jobs' places."""

    limiter_reachable: bool
    scopes: list[TeamScopeNowOut]
    jobs: list[TeamJobNowOut]
