"""The ops API's sharing router (issue 21): guaranteed shares of an upstream account's
ceiling, each team's priority and weight, and a key's own priority. Operators and admins
change them (LIMITS_WRITE); auditors read (READ_ALL). Mounted on the one NinjaAPI
(dashboard/api.py), with its auth, rules and error shape: a share that would take a
scope past 100% is a 400 naming the field."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router, Status

from dashboard import shares
from dashboard.access import api_rule, key_team, team_pk
from dashboard.policy import LIMITS_WRITE, READ_ALL, TEAM_READ
from dashboard.schemas import ErrorOut
from dashboard.sharing_schemas import (
    KeyPriorityIn,
    KeyPriorityOut,
    ShareIn,
    ShareOut,
    SharePatchIn,
    TeamSharingIn,
    TeamSharingOut,
)
from limiter.models import ApiKey, Share, Team, UpstreamAccount

ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut}

router = Router(tags=["shares and priorities"])


def _actor(request: HttpRequest) -> User | None:
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, User) else None


@router.get("/shares", response={200: list[ShareOut], **ERRORS})
@api_rule(READ_ALL)
def share_list(request: HttpRequest):
    """Every guaranteed share, by account, endpoint kind and model."""
    return Share.objects.select_related("account", "team")


@router.post("/shares", response={201: ShareOut, **ERRORS})
@api_rule(LIMITS_WRITE)
def share_create(request: HttpRequest, payload: ShareIn):
    """Give a team (or one key) a guaranteed share of an account's ceiling on an endpoint
    kind (each model on its own) or one model. 400 when the shares there would exceed 1."""
    account = get_object_or_404(UpstreamAccount, name=payload.account)
    team = get_object_or_404(Team, name=payload.team) if payload.team else None
    key = get_object_or_404(ApiKey, pk=payload.key_id) if payload.key_id else None
    share = shares.share_create(
        actor=_actor(request),
        account=account,
        team=team,
        key=key,
        endpoint=payload.endpoint,
        model=payload.model,
        fraction=payload.fraction,
    )
    return Status(201, share)


@router.patch("/shares/{share_id}", response={200: ShareOut, **ERRORS})
@api_rule(LIMITS_WRITE)
def share_update(request: HttpRequest, share_id: int, payload: SharePatchIn):
    share = get_object_or_404(Share, pk=share_id)
    return shares.share_update(actor=_actor(request), share=share, fraction=payload.fraction)


@router.delete("/shares/{share_id}", response={204: None, **ERRORS})
@api_rule(LIMITS_WRITE)
def share_delete(request: HttpRequest, share_id: int):
    shares.share_delete(actor=_actor(request), share=get_object_or_404(Share, pk=share_id))
    return Status(204, None)


@router.get("/teams/{team_id}/sharing", response={200: TeamSharingOut, **ERRORS})
@api_rule(TEAM_READ, team_from=team_pk("team_id"))
def team_sharing_get(request: HttpRequest, team_id: int):
    return get_object_or_404(Team, pk=team_id)


@router.patch("/teams/{team_id}/sharing", response={200: TeamSharingOut, **ERRORS})
@api_rule(LIMITS_WRITE, team_from=team_pk("team_id"))
def team_sharing_set(request: HttpRequest, team_id: int, payload: TeamSharingIn):
    """A team's priority (critical, standard, background) and weight."""
    team = get_object_or_404(Team, pk=team_id)
    return shares.team_sharing_set(
        actor=_actor(request), team=team, priority=payload.priority, weight=payload.weight
    )


@router.patch("/keys/{key_id}/priority", response={200: KeyPriorityOut, **ERRORS})
@api_rule(LIMITS_WRITE, team_from=key_team("key_id"))
def key_priority_set(request: HttpRequest, key_id: int, payload: KeyPriorityIn):
    """A key's own priority ("": its team's)."""
    key = get_object_or_404(ApiKey.objects.select_related("team"), pk=key_id)
    return shares.key_priority_set(actor=_actor(request), key=key, priority=payload.priority)
