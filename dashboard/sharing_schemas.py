"""The ops API's schemas for sharing an account's ceiling: shares, a team's priority and
weight, a key's priority (dashboard/sharing_api.py)."""

from __future__ import annotations

from typing import Literal

from ninja import Field, ModelSchema, Schema

from limiter.models import MAX_WEIGHT, MIN_WEIGHT, EndpointKind, Share

PriorityName = Literal["critical", "standard", "background"]


class ShareOut(ModelSchema):
    account: str = Field(..., alias="account.name")
    team: str | None = Field(None, description="The team holding it, or null for a key's.")
    key_id: int | None = Field(None, description="The key holding it, or null for a team's.")

    class Meta:
        model = Share
        fields = ["id", "endpoint", "model", "fraction"]

    @staticmethod
    def resolve_team(obj: Share) -> str | None:
        return obj.team.name if obj.team else None


class ShareIn(Schema):
    account: str = Field(..., min_length=1, max_length=80, description="Upstream account name.")
    team: str | None = Field(
        None, max_length=80, description="The team it guarantees (or give key_id)."
    )
    key_id: int | None = Field(None, ge=1, description="A key given a share of its own.")
    endpoint: EndpointKind
    model: str = Field(
        "", max_length=200, description="Empty: each model of the endpoint kind; or one model."
    )
    fraction: float = Field(
        ...,
        gt=0,
        le=1,
        description="Of the ceiling in force; the shares on one scope add up to at most 1.",
    )


class SharePatchIn(Schema):
    fraction: float = Field(..., gt=0, le=1)


class TeamSharingOut(Schema):
    id: int
    name: str
    priority: PriorityName
    weight: float


class TeamSharingIn(Schema):
    priority: PriorityName | None = Field(None, description="Omitted: unchanged.")
    weight: float | None = Field(
        None,
        ge=MIN_WEIGHT,
        le=MAX_WEIGHT,
        description="Its part of what shares leave, beside teams of its priority.",
    )


class KeyPriorityIn(Schema):
    priority: PriorityName | Literal[""] = Field(..., description='"": the team\'s priority.')


class KeyPriorityOut(Schema):
    id: int
    prefix: str
    priority: str = Field(..., description='"": the team\'s.')
    effective_priority: PriorityName
