"""The walk tables: every route of the team API, the ops API and the dashboard.

`test_route_tables.py` compares them with the routes the code declares, so a route
added without an entry here fails the suite instead of going unwalked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class V1Route:
    method: str
    pattern: str  # exactly as in limiter/gateway/app.py build_routes()
    # What the route names of someone's: "file", "fine_tune", "batch", "video" or
    # "evaluation" (in its path), "tci_body" (a code interpreter session in the body),
    # "model" (the body's model), "form_model" (the model of a
    # multipart form), "body" (file ids or a checkpoint in the body), "eval_body" (an
    # evaluation's file and models), "listing" (lists what the caller may see), "upload",
    # "catalogue" (about Together's models or voices, nobody's own), "org" (an
    # organisation-level route, refused unless the profile allows its kind).
    takes: str

    @property
    def id(self) -> str:
        return f"{self.method} {self.pattern}"


V1_ROUTES = [
    V1Route("POST", "/v1/chat/completions", "model"),
    V1Route("POST", "/v1/completions", "model"),
    V1Route("POST", "/v1/embeddings", "model"),
    V1Route("POST", "/v1/images/generations", "model"),
    V1Route("POST", "/v1/rerank", "model"),
    V1Route("POST", "/v1/audio/speech", "model"),
    V1Route("POST", "/v1/audio/transcriptions", "form_model"),
    V1Route("POST", "/v1/audio/translations", "form_model"),
    V1Route("GET", "/v1/voices", "catalogue"),
    V1Route("GET", "/v1/models", "listing"),
    V1Route("GET", "/v2/projects/{project_id}/models", "listing"),
    V1Route("POST", "/v1/files", "upload"),
    V1Route("GET", "/v1/files", "listing"),
    V1Route("GET", "/v1/files/{id}", "file"),
    V1Route("DELETE", "/v1/files/{id}", "file"),
    V1Route("GET", "/v1/files/{id}/content", "file"),
    V1Route("POST", "/v1/files/{id}/preprocess", "file"),
    V1Route("GET", "/v1/fine-tunes/models/limits", "catalogue"),
    V1Route("POST", "/v1/fine-tunes/estimate-price", "body"),
    V1Route("POST", "/v1/fine-tunes", "body"),
    V1Route("GET", "/v1/fine-tunes", "listing"),
    V1Route("GET", "/v1/fine-tunes/{id}", "fine_tune"),
    V1Route("POST", "/v1/fine-tunes/{id}/cancel", "fine_tune"),
    V1Route("GET", "/v1/fine-tunes/{id}/events", "fine_tune"),
    V1Route("POST", "/v1/batches", "body"),
    V1Route("GET", "/v1/batches", "listing"),
    V1Route("GET", "/v1/batches/{id}", "batch"),
    V1Route("POST", "/v1/batches/{id}/cancel", "batch"),
    V1Route("POST", "/v1/evaluation", "eval_body"),
    V1Route("GET", "/v1/evaluation", "listing"),
    V1Route("GET", "/v1/evaluation/{id}", "evaluation"),
    V1Route("GET", "/v1/evaluation/{id}/status", "evaluation"),
    V1Route("POST", "/v1/fine-tunes/preview", "body"),
    V1Route("GET", "/v1/fine-tunes/{id}/checkpoints", "fine_tune"),
    V1Route("GET", "/v1/fine-tunes/{id}/download-tokenized-dataset", "fine_tune"),
    V1Route("POST", "/v2/videos", "model"),
    V1Route("GET", "/v2/videos", "listing"),
    V1Route("GET", "/v2/videos/{id}", "video"),
    V1Route("POST", "/v1/tci/execute", "tci_body"),
    V1Route("GET", "/v1/tci/sessions", "listing"),
    V1Route("POST", "/tci/execute", "tci_body"),
    V1Route("GET", "/tci/sessions", "listing"),
    # Organisation-level routes (limiter/gateway/org.py): refused unless the profile allows
    # the kind; every method of each path is routed. The public hardware lists pass.
    V1Route("GET", "/v1/hardware", "catalogue"),
    V1Route("GET", "/v2/public/inference-instance-types", "catalogue"),
    *[
        V1Route(method, pattern, "org")
        for pattern in (
            "/v1/endpoints",
            "/v1/endpoints/{id}",
            "/v1/endpoints/{id}/{rest:path}",
            "/v2/projects/{project_id}/endpoints",
            "/v2/projects/{project_id}/endpoints/{id}",
            "/v2/projects/{project_id}/endpoints/{id}/{rest:path}",
            "/v2/projects/{project_id}/models",
            "/v2/projects/{project_id}/models/{id}",
            "/v2/projects/{project_id}/models/{id}/{rest:path}",
            "/v1/models",
            "/v1/rl",
            "/v1/rl/{rest:path}",
            "/v1/shaping",
            "/v1/shaping/{rest:path}",
            "/v1/deployments",
            "/v1/deployments/{rest:path}",
            "/v1/queue",
            "/v1/queue/{rest:path}",
            "/v1/compute",
            "/v1/compute/{rest:path}",
            "/v1/billing/{rest:path}",
            "/v1/projects",
            "/v1/projects/{rest:path}",
            "/v2/projects/{project_id}/{rest:path}",
        )
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        # The model lists stay the catalogue's ("listing" above).
        if (method, pattern)
        not in {("GET", "/v1/models"), ("GET", "/v2/projects/{project_id}/models")}
    ],
]


def concrete_path(pattern: str, **values: str) -> str:
    """A route's pattern with its parameters filled in (`{rest:path}` too)."""
    return re.sub(r"\{(\w+)(?::path)?\}", lambda m: values.get(m.group(1), "x"), pattern)


def v1_routes(*takes: str) -> list[V1Route]:
    return [route for route in V1_ROUTES if route.takes in takes]


def names_a_team(path: str) -> bool:
    """Whether the route names a team's object (in B's), which a user who sees no team,
    holding no role, gets as unknown: 404 (dashboard/policy.py teams_visible)."""
    return any(part in path for part in ("{team}", "{key}", "{budget}"))


@dataclass(frozen=True)
class OpsRoute:
    method: str
    pattern: str  # the Ninja operation's path, under /api
    path: str  # with {team}, {key}, {profile}, {limit}, {budget}, {share}: ids of team B's rows
    body: dict | None = None

    @property
    def id(self) -> str:
        return f"{self.method} /api{self.pattern}"


# Writes name team B's own rows (its teammate's key, its profile), so a write that got
# through would show in the database snapshot, not just in the status.
OPS_ROUTES = [
    OpsRoute("GET", "/teams", "/teams"),
    OpsRoute("POST", "/teams", "/teams", {"name": "made-by-an-outsider"}),
    OpsRoute("GET", "/teams/{team_id}", "/teams/{team}"),
    OpsRoute("PATCH", "/teams/{team_id}", "/teams/{team}", {"paused": True}),
    OpsRoute("GET", "/teams/{team_id}/now", "/teams/{team}/now"),
    OpsRoute("GET", "/teams/{team_id}/keys", "/teams/{team}/keys"),
    OpsRoute("POST", "/teams/{team_id}/keys", "/teams/{team}/keys", {"name": "stolen"}),
    OpsRoute("POST", "/keys/{key_id}/revoke", "/keys/{key}/revoke"),
    OpsRoute("POST", "/keys/{key_id}/rotate", "/keys/{key}/rotate"),
    OpsRoute("GET", "/profiles", "/profiles"),
    OpsRoute("POST", "/profiles", "/profiles", {"name": "made-by-an-outsider"}),
    OpsRoute("GET", "/profiles/{profile_id}", "/profiles/{profile}"),
    OpsRoute("PATCH", "/profiles/{profile_id}", "/profiles/{profile}", {"description": "defaced"}),
    OpsRoute("DELETE", "/profiles/{profile_id}", "/profiles/{profile}"),
    OpsRoute(
        "POST",
        "/profiles/{profile_id}/limits",
        "/profiles/{profile}/limits",
        {"endpoint": "chat", "requests_per_minute": 1},
    ),
    OpsRoute("PATCH", "/limits/{limit_id}", "/limits/{limit}", {"requests_per_minute": 1}),
    OpsRoute("DELETE", "/limits/{limit_id}", "/limits/{limit}"),
    OpsRoute("GET", "/refusals", "/refusals"),
    OpsRoute("GET", "/refusals/per-minute", "/refusals/per-minute"),
    OpsRoute("GET", "/refusals.csv", "/refusals.csv"),
    OpsRoute("GET", "/audit", "/audit"),
    OpsRoute("GET", "/live", "/live"),
    OpsRoute("GET", "/usage", "/usage"),
    OpsRoute("GET", "/prices", "/prices"),
    OpsRoute("POST", "/prices", "/prices", {"model": "defaced", "override_input": 0}),
    OpsRoute("GET", "/teams/{team_id}/budgets", "/teams/{team}/budgets"),
    OpsRoute(
        "POST",
        "/teams/{team_id}/budgets",
        "/teams/{team}/budgets",
        {"unit": "tokens", "period": "day", "limit": 1},
    ),
    OpsRoute("PATCH", "/budgets/{budget_id}", "/budgets/{budget}", {"limit": 1}),
    OpsRoute("DELETE", "/budgets/{budget_id}", "/budgets/{budget}"),
    OpsRoute("GET", "/shares", "/shares"),
    OpsRoute(
        "POST",
        "/shares",
        "/shares",
        {"account": "default", "team": "iso-b", "endpoint": "chat", "fraction": 0.5},
    ),
    OpsRoute("PATCH", "/shares/{share_id}", "/shares/{share}", {"fraction": 0.9}),
    OpsRoute("DELETE", "/shares/{share_id}", "/shares/{share}"),
    OpsRoute("GET", "/teams/{team_id}/sharing", "/teams/{team}/sharing"),
    OpsRoute("PATCH", "/teams/{team_id}/sharing", "/teams/{team}/sharing", {"weight": 99}),
    OpsRoute("PATCH", "/keys/{key_id}/priority", "/keys/{key}/priority", {"priority": "critical"}),
    OpsRoute("GET", "/ceilings", "/ceilings"),
    # Account 1 is the seeded default account: a reset that got through would be audited.
    OpsRoute(
        "POST",
        "/ceilings/reset",
        "/ceilings/reset",
        {"account": 1, "endpoint": "chat", "model": "some/model"},
    ),
]

# Served by Ninja to anyone, by design: the schema and its docs page, no rows; the root
# (a 404, or the docs in DEBUG).
OPS_PUBLIC = {"openapi-json": "/api/openapi.json", "openapi-view": "/api/docs", "api-root": "/api/"}


@dataclass(frozen=True)
class PageRoute:
    name: str  # the URL name in dashboard/urls.py, namespaced
    method: str
    path: str  # with {team}, {key}, {profile}, {limit}, {budget}
    data: dict | None = None

    @property
    def id(self) -> str:
        return self.name


PAGE_ROUTES = [
    PageRoute("dashboard:overview", "GET", "/"),
    PageRoute("dashboard:live", "GET", "/live/"),
    PageRoute("dashboard:limits", "GET", "/limits/"),
    PageRoute("dashboard:profile", "GET", "/limits/profiles/{profile}/"),
    PageRoute("dashboard:limit_edit", "GET", "/limits/{limit}/edit/"),
    PageRoute(
        "dashboard:model_limit_create",
        "POST",
        "/limits/profiles/{profile}/models/",
        {"endpoint": "chat", "model": "stolen/*", "requests_per_minute": "1", "burst": "1"},
    ),
    PageRoute("dashboard:model_limit_delete", "POST", "/limits/{limit}/delete/"),
    PageRoute("dashboard:limit_shadow", "POST", "/limits/{limit}/shadow/", {"shadow": "1"}),
    PageRoute(
        "dashboard:ceiling_reset",
        "POST",
        "/live/ceilings/reset/",
        {"account": "1", "endpoint": "chat", "model": "some/model"},
    ),
    PageRoute(
        "dashboard:limit_edit",
        "POST",
        "/limits/{limit}/edit/",
        {"requests_per_minute": "1", "burst": "1"},
    ),
    PageRoute("dashboard:teams", "GET", "/teams/"),
    PageRoute("dashboard:team", "GET", "/teams/{team}/"),
    PageRoute("dashboard:team_pause", "POST", "/teams/{team}/pause/", {"paused": "on"}),
    PageRoute("dashboard:team_profile", "POST", "/teams/{team}/profile/", {"profile": "default"}),
    PageRoute("dashboard:key_create", "POST", "/teams/{team}/keys/", {"name": "stolen"}),
    PageRoute(
        "dashboard:budget_create",
        "POST",
        "/teams/{team}/budgets/",
        {"unit": "tokens", "period": "day", "limit": "1", "soft_threshold": "0.8"},
    ),
    PageRoute("dashboard:budget_delete", "POST", "/budgets/{budget}/delete/"),
    PageRoute("dashboard:budget_shadow", "POST", "/budgets/{budget}/shadow/", {"shadow": "1"}),
    PageRoute(
        "dashboard:team_sharing",
        "POST",
        "/teams/{team}/sharing/",
        {"priority": "critical", "weight": "99"},
    ),
    PageRoute(
        "dashboard:share_create",
        "POST",
        "/teams/{team}/shares/",
        {"account": "1", "endpoint": "chat", "fraction": "0.5"},
    ),
    PageRoute("dashboard:share_delete", "POST", "/shares/{share}/delete/"),
    PageRoute("dashboard:key_revoke", "POST", "/keys/{key}/revoke/"),
    PageRoute("dashboard:key_rotate", "POST", "/keys/{key}/rotate/"),
    PageRoute("dashboard:tokens", "GET", "/tokens/"),
    PageRoute("dashboard:tokens", "POST", "/tokens/", {"name": "stolen", "scope": "full"}),
    # A user's own token only; refused before any lookup to those without a role.
    PageRoute("dashboard:token_revoke", "POST", "/tokens/1/revoke/"),
    PageRoute("dashboard:refusals", "GET", "/refusals/"),
    PageRoute("dashboard:refusals_csv", "GET", "/refusals.csv"),
    PageRoute("dashboard:usage", "GET", "/usage/"),
    PageRoute("dashboard:usage_csv", "GET", "/usage.csv"),
    PageRoute("dashboard:audit", "GET", "/audit/"),
    PageRoute("dashboard:alerts", "GET", "/alerts/"),
    PageRoute(
        "dashboard:alerts",
        "POST",
        "/alerts/",
        {"name": "stolen", "url": "https://attacker.example/hook", "team": ""},
    ),
    # B's webhook (disabled: nothing is sent to it).
    PageRoute("dashboard:webhook_edit", "GET", "/alerts/webhooks/{webhook}/"),
    PageRoute(
        "dashboard:webhook_edit",
        "POST",
        "/alerts/webhooks/{webhook}/",
        {"team_429_per_minute": "1"},
    ),
    PageRoute("dashboard:webhook_test", "POST", "/alerts/webhooks/{webhook}/test/"),
    PageRoute(
        "dashboard:webhook_enable", "POST", "/alerts/webhooks/{webhook}/enable/", {"enabled": "0"}
    ),
]

# Public by design: the way in and out. Walked anonymously only (a logout would end the
# session the other tests share).
PAGE_PUBLIC = {"login": "/login/", "logout": "/logout/"}

WEBSOCKET_ROUTES = ["/ws/live/"]
