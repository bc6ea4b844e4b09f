"""Team API handlers for Together's code interpreter (TCI): `POST /v1/tci/execute` runs code
in a session, `GET /v1/tci/sessions` lists the live sessions (both at the root too:
`/tci/execute`, `/tci/sessions`).

Every team's sessions live in the one Together account. A session is the team's that
started it: an execute without `session_id` starts one, and the id Together answers is
recorded as the team's (limiter.models.ManagedObject). An execute naming a session of
another team, or one Sluice never saw start, is answered as an unknown one, before Together
hears of it; the sessions list shows the team its own only.

Both routes are paced by the key's `code_interpreter` row and checked against the team's
and key's budgets. Each call gets a usage row (limiter/gateway/recording.py); Together bills
by the session ($0.03 each, limiter/usage/pricing.py), so an execute that started one counts
one unit at that price, reported to the limiter's budget book at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.utils import timezone

from limiter import selectors, services
from limiter.gateway import errors
from limiter.gateway.errors import ApiError
from limiter.gateway.http import Handler, Request, Response
from limiter.gateway.jobs import key_of, relay, require, send_upstream
from limiter.gateway.recording import record_call
from limiter.jobs import fields
from limiter.models import EndpointKind
from limiter.usage.prices import prices
from limiter.usage.pricing import CODE_INTERPRETER, cost_of, priced_units

KIND = EndpointKind.CODE_INTERPRETER.value
MSG_SESSION_NOT_FOUND = "No code interpreter session with id '{id}' for this team."
MSG_FIELD_NOT_LIST = "'{field}' must be a list."
# A session lives 60 minutes (Together's guide; the 2.x SDK's session list shows its
# `expires_at`). Whose a session was is kept a day, well past that, then forgotten as a
# new one starts: the table holds a day of sessions, not every session ever started.
OWNERSHIP_KEPT = timedelta(days=1)


def _execute_body(request: Request) -> dict[str, Any]:
    body = request.json()
    require(body, "code", "language")
    session_id = body.get("session_id")
    if session_id is not None and not isinstance(session_id, str):
        raise ApiError(
            400,
            errors.MSG_FIELD_NOT_STRING.format(field="session_id"),
            param="session_id",
            code="invalid_type",
        )
    if "files" in body and not isinstance(body["files"], list):
        raise ApiError(
            400, MSG_FIELD_NOT_LIST.format(field="files"), param="files", code="invalid_type"
        )
    return body


async def _own_session(request: Request, session_id: str) -> None:
    """A 404 unless the team started `session_id` through Sluice."""
    owners: dict[str, int] = {}
    if fields.is_upstream_id(session_id):
        owners = await sync_to_async(selectors.managed_owners)(kind=KIND, object_ids=[session_id])
    if owners.get(session_id) != key_of(request).team_id:
        raise ApiError(
            404,
            MSG_SESSION_NOT_FOUND.format(id=session_id[: errors.MAX_ECHOED_MODEL]),
            type=errors.NOT_FOUND,
            param="session_id",
            code="not_found",
        )


def _answered_session(content: bytes) -> str | None:
    """The session id of a successful execute's answer (`data.session_id`), if it is one."""
    try:
        answer = json.loads(content)
    except ValueError:
        return None
    data = answer.get("data") if isinstance(answer, dict) else None
    session_id = data.get("session_id") if isinstance(data, dict) else None
    return session_id if fields.is_upstream_id(session_id) else None


def _session_started(team_id: int, session_id: str) -> None:
    services.managed_object_record(team_id=team_id, kind=KIND, object_id=session_id)
    services.managed_objects_expire(kind=KIND, before=timezone.now() - OWNERSHIP_KEPT)


async def execute(request: Request) -> Response:
    body = _execute_body(request)
    asked = body.get("session_id") or None
    if asked is not None:
        await _own_session(request, asked)
    response = await send_upstream(request, "/tci/execute")
    answered = _answered_session(response.content) if response.is_success else None
    # A session Together started for this call (none was named, or the named one had
    # ended): the team's from now on, and one session billed.
    started = answered is not None and answered != asked
    if started:
        await sync_to_async(_session_started)(key_of(request).team_id, str(answered))
        _charge_session(request)
    record_call(
        request, KIND, response.status_code, model=CODE_INTERPRETER, units=1 if started else 0
    )
    return relay(response)


def _charge_session(request: Request) -> None:
    """The started session's price, to the limiter's budget book (a dollar budget counts
    it at once, as the usage row does when written)."""
    assert request.key is not None and request.handles is not None
    cost = cost_of(prices.price(CODE_INTERPRETER), 0, 0, priced_units(KIND, 1))
    request.handles.limiter.report_usage(
        key_id=request.key.key_id, model=CODE_INTERPRETER, tokens=0.0, cost=float(cost)
    )


async def sessions_list(request: Request) -> Response:
    """Together's list of live sessions, of the team's own only."""
    response = await send_upstream(request, "/tci/sessions")
    record_call(request, KIND, response.status_code)
    if not response.is_success:
        return relay(response)
    mine = await sync_to_async(selectors.managed_ids)(team_id=key_of(request).team_id, kind=KIND)
    try:
        listing = response.json()
    except ValueError:
        listing = None
    data = listing.get("data") if isinstance(listing, dict) else None
    rows = data.get("sessions") if isinstance(data, dict) else None
    sessions = [row for row in rows or [] if isinstance(row, dict) and row.get("id") in mine]
    return Response.json({"data": {"sessions": sessions}, "errors": None})


CHECKED_FIRST: dict[Handler, Callable[[Request], object]] = {execute: _execute_body}

# Listing the sessions costs nothing: a team over its budget can still see what it started.
SPENDS_NOTHING: frozenset[Handler] = frozenset({sessions_list})

# Under /v1 (the together SDK 2.x's base URL) and at the root, where Together's code
# interpreter guide calls them (`curl https://api.together.ai/tci/execute`). A list is a
# call to Together too: paced like an execute.
ROUTES: list[tuple[str, str, str, Handler]] = [
    (method, prefix + path, KIND, handler)
    for prefix in ("/v1", "")
    for method, path, handler in (
        ("POST", "/tci/execute", execute),
        ("GET", "/tci/sessions", sessions_list),
    )
]
