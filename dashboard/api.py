"""The ops API at /api/ (docs at /api/docs): teams, keys, profiles and limits, the 429
history, the audit log and the live snapshot.

Auth: a signed-in session (with CSRF on writes), `Authorization: Bearer <personal
token>` (a user's token, dashboard/tokens.py: it acts with its owner's role, or reads
only), or `Authorization: Bearer <SLUICE_ADMIN_TOKEN>` (the bootstrap admin credential).
Each operation declares its rule (`@api_rule`, dashboard/access.py), which `api_guard`
asks of the policy before the payload is parsed: refused is 403, another team's object
404, no rule declared 403.
Operations parse, call a service or selector, and shape the output; every error leaves
in one shape, `{"error": {"code", "message", "fields"}}`, from the handlers below.
"""

from __future__ import annotations

import hmac
import math
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from ninja import NinjaAPI, Query, Router, Status
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.parser import Parser
from ninja.security import APIKeyCookie, HttpBearer

from dashboard import auth_throttle, live, policy, services
from dashboard.access import Refused, api_guard, api_rule, key_team, team_pk, team_rows_of
from dashboard.api_types import Cursor
from dashboard.exports import refusal_csv_response
from dashboard.policy import (
    LIMITS_WRITE,
    READ_ALL,
    SHARED_READ,
    TEAM_KEYS_WRITE,
    TEAM_READ,
    TEAMS_WRITE,
)
from dashboard.schemas import (
    AuditPageOut,
    CeilingResetIn,
    CeilingResetOut,
    ErrorOut,
    KeyIn,
    KeyIssuedOut,
    KeyOut,
    LimitIn,
    LimitOut,
    LimitPatchIn,
    LimitsOverviewOut,
    LiveOut,
    MinuteOut,
    ModelCeilingsOut,
    ProfileIn,
    ProfileOut,
    ProfilePatchIn,
    RefusalFilterIn,
    RefusalPageOut,
    TeamIn,
    TeamNowOut,
    TeamOut,
    TeamPatchIn,
)
from dashboard.selectors import audit_page, limit_warnings, team_now
from dashboard.sharing_api import router as sharing_router
from dashboard.tokens import token_user
from dashboard.usage_api import router as usage_router
from limiter import selectors
from limiter.jobs import selectors as job_selectors
from limiter.models import ApiKey, EndpointLimit, LimitProfile, Team, UpstreamAccount

MSG_AUTH = "Log in or send 'Authorization: Bearer <your API token>'."
MSG_FORBIDDEN = "Your role does not allow this."
MSG_KEY_PROFILE = "A team maintainer's keys use the team's profile; leave 'profile' out."
MSG_THROTTLED = "Too many wrong tokens from this address; retry later."
MSG_NOT_FOUND = "Not found."
MSG_INVALID = "The request is not valid."
MSG_NOT_JSON = "The body must be JSON, sent as application/json (this one was {media_type})."
MSG_NOT_OBJECT = "The body must be a JSON object (this one was {kind})."
_JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
# A limiter that has sent nothing for this long is shown as unreachable.
LIVE_STALE_SECONDS = 3.0


class OpsRequest(HttpRequest):
    # Set by ninja to what the authenticator returned: the signed-in User (StaffSession),
    # a personal token's owner or TOKEN_ACTOR (BearerToken).
    auth: User | str


class AdminTokenThrottled(Exception):
    def __init__(self, wait: float) -> None:
        self.wait = wait


class BearerToken(HttpBearer):
    """`Authorization: Bearer`: the bootstrap admin token (TOKEN_ACTOR) or a personal token
    (its owner, acting through it: api_guard asks the policy for that user)."""

    def authenticate(self, request: HttpRequest, token: str) -> User | str | None:
        expected = settings.SLUICE_ADMIN_TOKEN
        # Constant-time, so a wrong token's timing says nothing about the right one.
        if expected and hmac.compare_digest(token.encode(), expected.encode()):
            return services.TOKEN_ACTOR
        user = token_user(token)
        if user is not None:
            return user
        # Checked first, counted after: a guesser is slowed, a valid token never is.
        wait = auth_throttle.admin_token_failed(request)
        if wait:
            raise AdminTokenThrottled(wait)
        return None


class StaffSession(APIKeyCookie):
    param_name = settings.SESSION_COOKIE_NAME

    def _get_key(self, request: HttpRequest) -> str | None:
        # No session cookie: answer 401 (not logged in) rather than a CSRF failure.
        if self.param_name not in request.COOKIES:
            return None
        return super()._get_key(request)

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        user = request.user
        # Who it is; what they may do is each operation's rule (api_guard).
        return user if user.is_authenticated else None


class BodyNotJson(ValueError):
    pass


class JsonOnly(Parser):
    """Bodies are JSON objects, and say so: a body labelled anything else (a form,
    multipart) is a 400 however it reads, not parsed as JSON whatever its sender meant.
    Every operation's body is a schema, an object; ninja's schemas also read attributes
    off any value, so an array or a string would otherwise pass as an empty patch."""

    def parse_body(self, request: HttpRequest) -> Any:
        media_type = (request.content_type or "").lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise BodyNotJson(MSG_NOT_JSON.format(media_type=media_type or "none"))
        body = super().parse_body(request)
        if not isinstance(body, dict):
            raise BodyNotJson(MSG_NOT_OBJECT.format(kind=_JSON_KINDS.get(type(body), "a number")))
        return body


api = NinjaAPI(
    title="Sluice ops API",
    version="1",
    description="Teams, keys, limit profiles, the 429 history, the audit log and the live view.",
    auth=[BearerToken(), StaffSession()],
    urls_namespace="ops-api",
    parser=JsonOnly(),
)
# Every operation, of every router: its declared rule, before its payload is parsed.
api.add_decorator(api_guard, mode="view")


def _error(
    request: HttpRequest, status: int, code: str, message: str, fields: dict | None = None
) -> HttpResponse:
    return api.create_response(
        request, {"error": {"code": code, "message": message, "fields": fields}}, status=status
    )


@api.exception_handler(AuthenticationError)
def _on_auth(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return _error(request, 401, "unauthenticated", MSG_AUTH)


@api.exception_handler(AdminTokenThrottled)
def _on_throttled(request: HttpRequest, exc: AdminTokenThrottled) -> HttpResponse:
    response = _error(request, 429, "throttled", MSG_THROTTLED)
    response["Retry-After"] = str(math.ceil(exc.wait))
    return response


@api.exception_handler(Refused)
def _on_refused(request: HttpRequest, exc: Refused) -> HttpResponse:
    return _error(request, 403, "forbidden", MSG_FORBIDDEN)


@api.exception_handler(Http404)
def _on_404(request: HttpRequest, exc: Http404) -> HttpResponse:
    return _error(request, 404, "not_found", MSG_NOT_FOUND)


@api.exception_handler(HttpError)
def _on_http(request: HttpRequest, exc: HttpError) -> HttpResponse:
    # Ninja words every unreadable body alike; a body that is not JSON is told why.
    message = str(exc.__cause__) if isinstance(exc.__cause__, BodyNotJson) else str(exc)
    return _error(request, exc.status_code, "http_error", message)


@api.exception_handler(NinjaValidationError)
def _on_invalid(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
    fields: dict[str, list[str]] = {}
    for error in exc.errors:
        # loc is ("body", "payload", "burst") or ("query", "source"): the field is last.
        loc = error.get("loc") or ("body",)
        fields.setdefault(str(loc[-1]), []).append(error["msg"])
    return _error(request, 400, "invalid", MSG_INVALID, fields)


@api.exception_handler(DjangoValidationError)
def _on_model_invalid(request: HttpRequest, exc: DjangoValidationError) -> HttpResponse:
    fields = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
    return _error(request, 400, "invalid", MSG_INVALID, fields)


@api.exception_handler(services.ServiceError)
def _on_service(request: HttpRequest, exc: services.ServiceError) -> HttpResponse:
    return _error(request, 409, "conflict", str(exc))


def _actor(request: OpsRequest) -> User | None:
    # The admin token (TOKEN_ACTOR, the only str) acts as nobody in particular; the
    # audit names it as such.
    return None if isinstance(request.auth, str) else request.auth


def _profile(name: str) -> LimitProfile:
    return get_object_or_404(LimitProfile, name=name)


ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut}

# --- teams and keys ---------------------------------------------------------------------------
teams = Router(tags=["teams and keys"])


@teams.get("/teams", response={200: list[TeamOut], **ERRORS})
@api_rule(TEAM_READ)
def team_list(request: OpsRequest):
    teams = selectors.team_list()
    if isinstance(request.auth, User):  # a team role lists its own teams only
        teams = teams.filter(pk__in=policy.teams_visible(request.auth))
    return teams


@teams.post("/teams", response={201: TeamOut, **ERRORS})
@api_rule(TEAMS_WRITE)
def team_create(request: OpsRequest, payload: TeamIn):
    profile = _profile(payload.profile) if payload.profile else None
    return Status(
        201, services.team_create(actor=_actor(request), name=payload.name, profile=profile)
    )


@teams.get("/teams/{team_id}", response={200: TeamOut, **ERRORS})
@api_rule(TEAM_READ, team_from=team_pk("team_id"))
def team_get(request: HttpRequest, team_id: int):
    return get_object_or_404(selectors.team_list(), pk=team_id)


@teams.get("/teams/{team_id}/now", response={200: TeamNowOut, **ERRORS})
@api_rule(TEAM_READ, team_from=team_pk("team_id"))
def team_now_get(request: HttpRequest, team_id: int):
    """The team's own rows of the live view (its keys' queues, leases and refusals of
    the last minute) and its fine-tune and batch jobs' places in the queue."""
    team = get_object_or_404(Team, pk=team_id)
    snapshot = async_to_sync(live.snapshot_fetch)()
    age = live.latest.age()
    return team_now(
        team=team,
        snapshot=snapshot,
        reachable=age is not None and age <= LIVE_STALE_SECONDS,
        jobs=job_selectors.jobs_live_snapshot()["accounts"],
    )


@teams.patch("/teams/{team_id}", response={200: TeamOut, **ERRORS})
@api_rule(TEAMS_WRITE, team_from=team_pk("team_id"))
def team_update(request: OpsRequest, team_id: int, payload: TeamPatchIn):
    team = get_object_or_404(selectors.team_list(), pk=team_id)
    if payload.profile is not None:
        services.profile_assign(actor=_actor(request), team=team, profile=_profile(payload.profile))
    if payload.paused is not None:
        services.team_pause(actor=_actor(request), team=team, paused=payload.paused)
    return team


@teams.get("/teams/{team_id}/keys", response={200: list[KeyOut], **ERRORS})
@api_rule(TEAM_READ, team_from=team_pk("team_id"))
def key_list(request: HttpRequest, team_id: int):
    return selectors.key_list(team=get_object_or_404(Team, pk=team_id)).select_related("team")


@teams.post("/teams/{team_id}/keys", response={201: KeyIssuedOut, **ERRORS})
@api_rule(TEAM_KEYS_WRITE, team_from=team_pk("team_id"))
def key_create(request: OpsRequest, team_id: int, payload: KeyIn):
    team = get_object_or_404(Team, pk=team_id)
    if payload.profile and isinstance(request.auth, User):
        if not policy.allows(request.auth, policy.KEYS_WRITE):
            raise HttpError(403, MSG_KEY_PROFILE)
    profile = _profile(payload.profile) if payload.profile else None
    issued = services.key_create(
        actor=_actor(request),
        team=team,
        name=payload.name,
        profile=profile,
        expires_at=payload.expires_at,
    )
    return Status(201, {"key": issued.key, "secret": issued.secret})


@teams.post("/keys/{key_id}/revoke", response={200: KeyOut, **ERRORS})
@api_rule(TEAM_KEYS_WRITE, team_from=key_team("key_id"))
def key_revoke(request: OpsRequest, key_id: int):
    key = get_object_or_404(ApiKey.objects.select_related("team", "profile"), pk=key_id)
    return services.key_revoke(actor=_actor(request), key=key)


@teams.post("/keys/{key_id}/rotate", response={201: KeyIssuedOut, **ERRORS})
@api_rule(TEAM_KEYS_WRITE, team_from=key_team("key_id"))
def key_rotate(request: OpsRequest, key_id: int):
    key = get_object_or_404(ApiKey.objects.select_related("team", "profile"), pk=key_id)
    issued = services.key_rotate(actor=_actor(request), key=key)
    return Status(201, {"key": issued.key, "secret": issued.secret})


# --- profiles and limits ---------------------------------------------------------------------
profiles = Router(tags=["profiles and limits"])


@profiles.get("/profiles", response={200: list[ProfileOut], **ERRORS})
@api_rule(READ_ALL)
def profile_list(request: HttpRequest):
    return selectors.profile_list()


@profiles.post("/profiles", response={201: ProfileOut, **ERRORS})
@api_rule(LIMITS_WRITE)
def profile_create(request: OpsRequest, payload: ProfileIn):
    source = _profile(payload.copy_from) if payload.copy_from else None
    profile = services.profile_create(
        actor=_actor(request), name=payload.name, description=payload.description, copy_from=source
    )
    return Status(201, profile)


@profiles.get("/profiles/{profile_id}", response={200: ProfileOut, **ERRORS})
@api_rule(READ_ALL)
def profile_get(request: HttpRequest, profile_id: int):
    return get_object_or_404(selectors.profile_list(), pk=profile_id)


@profiles.patch("/profiles/{profile_id}", response={200: ProfileOut, **ERRORS})
@api_rule(LIMITS_WRITE)
def profile_update(request: OpsRequest, profile_id: int, payload: ProfilePatchIn):
    profile = get_object_or_404(LimitProfile, pk=profile_id)
    services.profile_update(
        actor=_actor(request), profile=profile, data=payload.dict(exclude_unset=True)
    )
    return profile


@profiles.delete("/profiles/{profile_id}", response={204: None, **ERRORS})
@api_rule(LIMITS_WRITE)
def profile_delete(request: OpsRequest, profile_id: int):
    services.profile_delete(
        actor=_actor(request), profile=get_object_or_404(LimitProfile, pk=profile_id)
    )
    return Status(204, None)


def _limit_out(limit: EndpointLimit) -> LimitOut:
    # A limit above its upstream ceiling is saved, and the answer says so.
    out = LimitOut.from_orm(limit)
    out.warnings = limit_warnings(limit=limit)
    return out


@profiles.post("/profiles/{profile_id}/limits", response={201: LimitOut, **ERRORS})
@api_rule(LIMITS_WRITE)
def limit_create(request: OpsRequest, profile_id: int, payload: LimitIn):
    profile = get_object_or_404(LimitProfile, pk=profile_id)
    data = payload.dict(exclude={"endpoint", "model"}, exclude_none=True)
    limit = services.limit_create(
        actor=_actor(request),
        profile=profile,
        endpoint=payload.endpoint,
        model=payload.model.strip(),
        data=data,
    )
    return Status(201, _limit_out(limit))


@profiles.patch("/limits/{limit_id}", response={200: LimitOut, **ERRORS})
@api_rule(LIMITS_WRITE)
def limit_update(request: OpsRequest, limit_id: int, payload: LimitPatchIn):
    limit = get_object_or_404(EndpointLimit.objects.select_related("profile"), pk=limit_id)
    # Unset fields keep their value; a field sent as null clears an optional limit.
    services.limit_update(actor=_actor(request), limit=limit, data=payload.dict(exclude_unset=True))
    return _limit_out(limit)


@profiles.delete("/limits/{limit_id}", response={204: None, **ERRORS})
@api_rule(LIMITS_WRITE)
def limit_delete(request: OpsRequest, limit_id: int):
    services.limit_delete(
        actor=_actor(request), limit=get_object_or_404(EndpointLimit, pk=limit_id)
    )
    return Status(204, None)


# --- 429 history -------------------------------------------------------------------------------
refusals = Router(tags=["429 history"])


def _filters(request: HttpRequest, query: RefusalFilterIn) -> selectors.RefusalFilters:
    # A team user's rows only: another team named in the query matches no row.
    teams = team_rows_of(request)
    visible = Team.objects.all() if teams is None else Team.objects.filter(pk__in=teams)
    team = visible.filter(name=query.team).first() if query.team else None
    return selectors.RefusalFilters(
        teams=teams,
        start=query.start,
        end=query.end,
        team=team,
        team_name=query.team or "",
        key_prefix=query.key_prefix or "",
        endpoint=query.endpoint or "",
        model=query.model or "",
        reason=query.reason or "",
        source=query.source or "",
        mode=query.mode or "",
    )


@refusals.get("/refusals", response={200: RefusalPageOut, **ERRORS})
@api_rule(SHARED_READ)
def refusal_list(
    request: HttpRequest,
    filters: Query[RefusalFilterIn],
    after: Cursor = "",
    size: int = Query(selectors.PAGE_SIZE, ge=1, le=selectors.MAX_PAGE_SIZE),
):
    page = selectors.refusal_page(filters=_filters(request, filters), after=after, size=size)
    return {"items": page.rows, "next_cursor": page.next_cursor}


@refusals.get("/refusals/per-minute", response={200: list[MinuteOut], **ERRORS})
@api_rule(SHARED_READ)
def refusal_per_minute(request: HttpRequest, filters: Query[RefusalFilterIn]):
    """Refusals per minute over the filtered range (at most its last 24 hours)."""
    return [
        {"minute": m, "refusals": n}
        for m, n in selectors.refusal_per_minute(filters=_filters(request, filters))
    ]


@refusals.get(
    "/refusals.csv",
    response={200: None, **ERRORS},
    openapi_extra={
        "responses": {200: {"description": "CSV, streamed", "content": {"text/csv": {}}}},
    },
)
@api_rule(SHARED_READ)
def refusal_csv(request: HttpRequest, filters: Query[RefusalFilterIn]) -> StreamingHttpResponse:
    return refusal_csv_response(filters=_filters(request, filters))


# --- audit and live ------------------------------------------------------------------------------
ops = Router(tags=["audit and live"])


@ops.get("/audit", response={200: AuditPageOut, **ERRORS})
@api_rule(READ_ALL)
def audit_list(
    request: HttpRequest, after: Cursor = "", object_type: str = "", object_id: str = ""
):
    page = audit_page(after=after, object_type=object_type, object_id=object_id)
    return {"items": page.rows, "next_cursor": page.next_cursor}


@ops.get("/live", response={200: LiveOut, **ERRORS})
@api_rule(SHARED_READ)
def live_get(request: HttpRequest):
    """The latest live snapshot (asked of the limiter when older than a second) plus the
    limits as the database holds them; a team user's teams and accounts only, as on the
    websocket (dashboard/live.py)."""
    visible = live.visible_for(team_rows_of(request))
    snapshot = async_to_sync(live.snapshot_fetch)()
    age = live.latest.age()
    return {
        "limiter_reachable": age is not None and age <= LIVE_STALE_SECONDS,
        "age_seconds": age,
        "snapshot": live.view_scoped(snapshot, visible) if snapshot else None,
        "jobs": live.jobs_scoped(job_selectors.jobs_live_snapshot()["accounts"], visible),
        "limits": LimitsOverviewOut(**live.limits_scoped(selectors.limit_overview(), visible)),
    }


@ops.get("/ceilings", response={200: ModelCeilingsOut, **ERRORS})
@api_rule(SHARED_READ)
def ceiling_list(request: HttpRequest):
    """Together's limit per account and model as the limiter learned it: the learned
    ceiling, where the pace came from, the pace in use, the last headers, 429s and 503s."""
    visible = live.visible_for(team_rows_of(request))
    snapshot = async_to_sync(live.snapshot_fetch)()
    age = live.latest.age()
    return {
        "limiter_reachable": age is not None and age <= LIVE_STALE_SECONDS,
        "models": live.view_scoped(snapshot, visible)["models"] if snapshot else [],
    }


@ops.post("/ceilings/reset", response={200: CeilingResetOut, **ERRORS})
@api_rule(LIMITS_WRITE)
def ceiling_reset(request: OpsRequest, payload: CeilingResetIn):
    """Forget one model's learned ceiling (database and limiter): it is paced at its
    profile's row again until Together's next answer."""
    account = get_object_or_404(UpstreamAccount, pk=payload.account)
    confirmed = services.learned_ceiling_reset(
        actor=_actor(request), account=account, endpoint=payload.endpoint, model=payload.model
    )
    return {"reset": True, "limiter_confirmed": confirmed}


api.add_router("", teams)
api.add_router("", profiles)
api.add_router("", refusals)
api.add_router("", ops)
api.add_router("", usage_router)
api.add_router("", sharing_router)
