"""Together's organisation-level routes: dedicated endpoints, model uploads, post-training,
shaping, deployments and their queue, GPU clusters, billing, projects.

They change (or show) the whole organisation's account, not one team's calls, so no team
may use them by default: the router answers `errors.refused_route`, a 403 naming the
route (limiter/gateway/app.py). Ops allow a team one kind by giving its limit profile a
row for it (`org_endpoints`, `org_models`, ...; limiter.models.ORG_KINDS); the row is then
also that kind's request rate for the team's keys. The public read-only lists
(`/v1/hardware`, `/v2/public/inference-instance-types`) pass through to every team.

An allowed call is forwarded as it came. What it creates is its team's: the `id` of a
created object is recorded (ManagedObject), a path naming an id another team recorded is
answered 404 exactly as an unknown id, a `{id}` route answers 404 for any id the team did
not create through Sluice, and a list drops the objects of other teams. These calls are
rare, so each reads its owners from the database (no cache to keep fresh).
The table of routes understood, passed through and refused is docs/routes.md.
"""

from __future__ import annotations

import json

from asgiref.sync import sync_to_async

from limiter import selectors, services
from limiter.gateway.errors import ApiError
from limiter.gateway.http import Handler, Request, Response
from limiter.gateway.jobs import pass_through
from limiter.models import EndpointKind

K = EndpointKind
MSG_NOT_FOUND = "No {what} with id '{id}' for this team."
# What each kind is, in the 403 and 404 messages.
WHAT = {
    K.ORG_ENDPOINTS: "a dedicated endpoint route",
    K.ORG_MODELS: "a model upload route",
    K.ORG_TRAINING: "a post-training or shaping route",
    K.ORG_DEPLOYMENTS: "a container deployment route",
    K.ORG_COMPUTE: "a GPU cluster route",
    K.ORG_BILLING: "the organisation's billing",
    K.ORG_PROJECTS: "a project route",
}
# Kinds whose answers list the organisation as a whole: an allowed team sees them whole.
UNOWNED = frozenset({K.ORG_BILLING, K.ORG_PROJECTS})
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def what(kind: str) -> str:
    return WHAT.get(kind, "an organisation-level route")  # type: ignore[call-overload]


async def _forward(request: Request) -> Response:
    """The call as it came, to Together (a /v2 path at its root: Target.url)."""
    path = request.path[len("/v1") :] if request.path.startswith("/v1/") else request.path
    return await pass_through(request, path)


def _segments(request: Request, prefix_len: int) -> list[str]:
    return [part for part in request.path.split("/")[prefix_len:] if part][:20]


async def _check_owner(request: Request, kind: str) -> None:
    """404 when the path names an object of another team, or (a `{id}` route) one this
    team did not create through Sluice."""
    assert request.key is not None
    team = request.key.team_id
    named = request.path_params.get("id")
    candidates = _segments(request, 2) + ([named] if named else [])
    owners = await sync_to_async(selectors.managed_owners)(kind=kind, object_ids=candidates)
    for object_id in candidates:
        owner = owners.get(object_id)
        if owner != team and (owner is not None or object_id == named):
            raise ApiError(
                404,
                MSG_NOT_FOUND.format(
                    what=what(kind).replace(" route", " object"), id=object_id[:200]
                ),
                type="not_found_error",
                code="not_found",
            )


def _object_id(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 200 else None


async def _keep_own(request: Request, kind: str, response: Response) -> Response:
    """A list answer without the objects other teams created through Sluice."""
    try:
        data = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        return response
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        return response
    assert request.key is not None
    ids = [
        item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)
    ]
    owners = await sync_to_async(selectors.managed_owners)(kind=kind, object_ids=ids)
    team = request.key.team_id
    # Only the team's own: objects made outside Sluice are the organisation's, not its.
    kept = [
        item for item in items if isinstance(item, dict) and owners.get(str(item.get("id"))) == team
    ]
    if isinstance(data, dict):
        data["data"] = kept
    response.body = json.dumps(data if isinstance(data, dict) else kept).encode()
    return response


def handler_for(kind: str, *, collection: bool) -> Handler:
    """The handler of one kind's routes; `collection`: the route is a list / create one."""

    async def manage(request: Request) -> Response:
        assert request.key is not None
        if kind in UNOWNED:
            return await _forward(request)
        await _check_owner(request, kind)
        response = await _forward(request)
        if response.status >= 300:
            return response
        if collection and request.method == "POST":
            created = _object_id(response.body)
            if created is not None:
                await sync_to_async(services.managed_object_record)(
                    team_id=request.key.team_id, kind=kind, object_id=created
                )
        elif collection and request.method == "GET":
            return await _keep_own(request, kind, response)
        elif request.method == "DELETE" and "id" in request.path_params:
            await sync_to_async(services.managed_object_forget)(
                team_id=request.key.team_id, kind=kind, object_id=request.path_params["id"]
            )
        return response

    manage.__name__ = manage.__qualname__ = f"manage_{kind}"
    return manage


async def public_read(request: Request) -> Response:
    """A public read-only list (hardware, instance types): passed through to every team."""
    return await _forward(request)


# (path, kind, collection): every method of each is routed; literal paths come first.
_TREES: tuple[tuple[str, str, bool], ...] = (
    ("/v1/endpoints", K.ORG_ENDPOINTS, True),
    ("/v1/endpoints/{id}", K.ORG_ENDPOINTS, False),
    ("/v1/endpoints/{id}/{rest:path}", K.ORG_ENDPOINTS, False),
    ("/v2/projects/{project_id}/endpoints", K.ORG_ENDPOINTS, True),
    ("/v2/projects/{project_id}/endpoints/{id}", K.ORG_ENDPOINTS, False),
    ("/v2/projects/{project_id}/endpoints/{id}/{rest:path}", K.ORG_ENDPOINTS, False),
    ("/v2/projects/{project_id}/models", K.ORG_MODELS, True),
    ("/v2/projects/{project_id}/models/{id}", K.ORG_MODELS, False),
    ("/v2/projects/{project_id}/models/{id}/{rest:path}", K.ORG_MODELS, False),
    ("/v1/models", K.ORG_MODELS, True),  # POST: an upload (GET is the catalogue's)
    ("/v1/rl", K.ORG_TRAINING, True),
    ("/v1/rl/{rest:path}", K.ORG_TRAINING, False),
    ("/v1/shaping", K.ORG_TRAINING, True),
    ("/v1/shaping/{rest:path}", K.ORG_TRAINING, False),
    ("/v1/deployments", K.ORG_DEPLOYMENTS, True),
    ("/v1/deployments/{rest:path}", K.ORG_DEPLOYMENTS, False),
    ("/v1/queue", K.ORG_DEPLOYMENTS, True),
    ("/v1/queue/{rest:path}", K.ORG_DEPLOYMENTS, False),
    ("/v1/compute", K.ORG_COMPUTE, True),
    ("/v1/compute/{rest:path}", K.ORG_COMPUTE, False),
    ("/v1/billing/{rest:path}", K.ORG_BILLING, False),
    ("/v1/projects", K.ORG_PROJECTS, True),
    ("/v1/projects/{rest:path}", K.ORG_PROJECTS, False),
    ("/v2/projects/{project_id}/{rest:path}", K.ORG_PROJECTS, False),
)


# Reads that stay the catalogue's (limiter/gateway/catalog.py): not organisation routes.
CATALOGUE = frozenset({("GET", "/v1/models"), ("GET", "/v2/projects/{project_id}/models")})


def org_routes() -> list[tuple[str, str, str, Handler]]:
    """The routes of this module, after the team API's own (GET /v1/models and the
    project's model list stay the catalogue's: the router takes the first match)."""
    routes: list[tuple[str, str, str, Handler]] = [
        ("GET", "/v1/hardware", "", public_read),
        ("GET", "/v2/public/inference-instance-types", "", public_read),
    ]
    for path, kind, collection in _TREES:
        handler = handler_for(kind, collection=collection)
        routes += [(m, path, kind, handler) for m in METHODS if (m, path) not in CATALOGUE]
    return routes
