"""The route table: every route of the dashboard, the ops API (from its OpenAPI
document), the CSV exports, /admin/ and the websocket, for every persona. Each cell
asserts the status; for every refused write, that the database did not change (and
that the refusal itself was audited). A route added without a declared rule, or left
out of these tables, fails `test_every_route_declares_a_rule_and_is_in_the_table`."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory
from django.urls import URLPattern, URLResolver, get_resolver, path, reverse
from ninja import NinjaAPI

from dashboard import access, live, policy
from dashboard.api import MSG_KEY_PROFILE, StaffSession, api
from dashboard.audit import ACTION_REFUSED
from dashboard.consumers import LiveConsumer
from dashboard.models import AuditEntry, TeamMembership
from dashboard.services import token_create
from limiter import serving
from limiter.alerts.models import Webhook
from limiter.models import ApiKey, EndpointLimit, LimitProfile, Share, Team, UpstreamAccount
from limiter.services import key_issue, profile_default, team_get_or_create
from limiter.usage.models import Budget, ModelPrice
from tests.conftest import seed_if_flushed
from tests.dashboard.conftest import org_user

ANON, NOROLE, VIEWER, MAINTAINER, AUDITOR, OPERATOR, ADMIN = (
    "anonymous",
    "no role",
    "team A viewer",
    "team A maintainer",
    "auditor",
    "operator",
    "admin",
)
PERSONAS = (ANON, NOROLE, VIEWER, MAINTAINER, AUDITOR, OPERATOR, ADMIN)
TEAM_PERSONAS = {NOROLE, VIEWER, MAINTAINER}  # see no team but their own

READERS = frozenset({AUDITOR, OPERATOR, ADMIN})
OPS = frozenset({OPERATOR, ADMIN})
ADMINS = frozenset({ADMIN})
TEAM_A_READERS = READERS | {VIEWER, MAINTAINER}
TEAM_A_KEYS = OPS | {MAINTAINER}


# --- the world each cell runs in --------------------------------------------------------------
@dataclass
class World:
    team_a: Team
    team_b: Team
    key_a: ApiKey
    key_b: ApiKey
    budget_a: Budget
    budget_b: Budget
    profile: LimitProfile
    limit: EndpointLimit
    model_limit: EndpointLimit
    share: Share
    webhook: Webhook
    users: dict[str, User]

    def ids(self, target: str) -> dict[str, int]:
        """Ids the routes' arguments name; `target` A or B picks whose team's objects."""
        b = target == "B"
        return {
            "team": (self.team_b if b else self.team_a).pk,
            "key": (self.key_b if b else self.key_a).pk,
            "budget": (self.budget_b if b else self.budget_a).pk,
            "profile": self.profile.pk,
            "limit": self.limit.pk,
            "model_limit": self.model_limit.pk,
            "share": self.share.pk,
            "webhook": self.webhook.pk,
            "account": UpstreamAccount.objects.get(is_default=True).pk,
        }


@pytest.fixture(scope="module")
def world_made(django_db_setup: None, django_db_blocker: Any) -> Iterator[World]:
    """The world, made once for the module (some 700 cells) in a transaction rolled back
    at its end. Each cell runs in a savepoint within it (pytest-django's `db`), so what a
    cell changes is undone before the next, as when each made its own world. (The
    websocket cells, which need transactions of their own, are in
    test_route_table_websocket.py.)"""
    with django_db_blocker.unblock(), transaction.atomic():
        seed_if_flushed()
        yield _make_world()
        transaction.set_rollback(True)


@pytest.fixture
def world(world_made: World, db: None) -> World:
    """A copy of the module's world for one cell (its instances are the cell's own, as
    Django's setUpTestData gives them)."""
    return copy.deepcopy(world_made)


def _make_world() -> World:
    team_a, team_b = team_get_or_create(name="team-a")[0], team_get_or_create(name="team-b")[0]
    key_a, key_b = key_issue(team=team_a).key, key_issue(team=team_b).key
    budgets = [
        Budget.objects.create(team=t, unit="dollars", period="month", limit=Decimal("10"))
        for t in (team_a, team_b)
    ]
    profile = profile_default()
    model_limit = EndpointLimit.objects.create(
        profile=profile, endpoint="chat", model="acme/*", requests_per_minute=10
    )
    users = {
        # No passwords (force_login needs none; hashing one costs a quarter of a second).
        NOROLE: User.objects.create_user("norole"),
        VIEWER: User.objects.create_user("viewer"),
        MAINTAINER: User.objects.create_user("maintainer"),
        AUDITOR: org_user("auditor", "auditor"),
        OPERATOR: org_user("operator", "operator"),
        ADMIN: org_user("admin", "admin"),
    }
    TeamMembership.objects.create(user=users[VIEWER], team=team_a, role="viewer")
    TeamMembership.objects.create(user=users[MAINTAINER], team=team_a, role="maintainer")
    return World(
        team_a=team_a,
        team_b=team_b,
        key_a=key_a,
        key_b=key_b,
        budget_a=budgets[0],
        budget_b=budgets[1],
        profile=profile,
        limit=profile.limits.get(endpoint="chat", model=""),
        model_limit=model_limit,
        share=Share.objects.create(
            account=UpstreamAccount.objects.get(is_default=True),
            team=team_a,
            endpoint="chat",
            fraction=0.5,
        ),
        # A closed loopback port: the test delivery tried by webhook_test goes nowhere else.
        webhook=Webhook.objects.create(name="ops", url="http://127.0.0.1:9/x"),
        users=users,
    )


def client_for(world: World, persona: str) -> Client:
    client = Client()
    if persona != ANON:
        client.force_login(world.users[persona])
    return client


@functools.cache
def _state_queries() -> tuple[tuple[str, str, tuple[Any, ...]], ...]:
    tables: dict[str, Any] = {
        "team": Team.objects.all(),
        "key": ApiKey.objects.all(),
        "profile": LimitProfile.objects.all(),
        "limit": EndpointLimit.objects.all(),
        "budget": Budget.objects.all(),
        "webhook": Webhook.objects.all(),
        "price": ModelPrice.objects.all(),
        "account": UpstreamAccount.objects.all(),
        "user": User.objects.all(),
        "membership": TeamMembership.objects.all(),
        "group": Group.objects.all(),
        "user_groups": User.groups.through.objects.all(),
        "audit": AuditEntry.objects.exclude(
            action__in=(ACTION_REFUSED, "sign_in", "sign_out", "sign_in_failed")
        ),
    }
    return tuple(
        (name, *rows.order_by("pk").values_list().query.sql_with_params())
        for name, rows in tables.items()
    )


def database_state() -> dict[str, list[tuple[Any, ...]]]:
    """Every row a write could touch, every column (the audit log without the entries
    about access). The ORM's queries, compiled once: a cell reads the state twice."""
    with connection.cursor() as cursor:
        state = {}
        for name, sql, params in _state_queries():
            cursor.execute(sql, params)
            state[name] = cursor.fetchall()
    return state


def expected_refusal(persona: str, allowed: frozenset[str], target: str | None, api: bool) -> int:
    """The status a refused persona gets: sign in first, then 404 for a team it may not
    see (team-scoped routes on team B, or any team for a user with no role), else 403."""
    if persona == ANON:
        return 401 if api else 302
    if target is not None and (persona == NOROLE or (target == "B" and persona in TEAM_PERSONAS)):
        return 404
    return 403


def assert_cell(
    *,
    world: World,
    persona: str,
    method: str,
    url: str,
    data: Any,
    allowed: frozenset[str],
    target: str | None,
    api: bool,
    login_url: str = "/login/",
) -> None:
    client = client_for(world, persona)
    before = database_state()
    refused_before = AuditEntry.objects.filter(action=ACTION_REFUSED).count()
    if method == "GET":
        response = client.get(url)
    elif api:
        response = client.generic(method, url, data, content_type="application/json")
    else:
        response = client.post(url, data)
    where = f"{persona} {method} {url}"
    if persona in allowed:
        # The policy let it through: what the route then answers is its own business
        # (a form's errors, a 422), never a refusal, a missing object or a 500.
        assert response.status_code not in (401, 403, 404, 405) and response.status_code < 500, (
            where,
            response.status_code,
        )
        if response.status_code == 302:
            assert not response["Location"].startswith(login_url), where
        return
    status = expected_refusal(persona, allowed, target, api)
    assert response.status_code == status, (where, response.status_code, status)
    if status == 302:
        assert response["Location"].startswith(login_url), where
    if method != "GET":
        assert database_state() == before, where
        refused = AuditEntry.objects.filter(action=ACTION_REFUSED)
        assert refused.count() == refused_before + (status == 403), where
        if status == 403:
            entry = refused.latest("id")
            assert entry.actor == world.users[persona] and entry.new_values["address"], where


# --- the dashboard ------------------------------------------------------------------------------
# name -> (URL argument from World.ids, [(method, who may)]). Team-scoped routes run on
# team A's and on team B's object.
DASHBOARD: dict[str, tuple[str | None, list[tuple[str, frozenset[str]]]]] = {
    "overview": (None, [("GET", TEAM_A_READERS)]),  # a team user lands on its team
    "live": (None, [("GET", TEAM_A_READERS)]),  # its teams' rows (test_shared_views.py)
    "ceiling_reset": (None, [("POST", OPS)]),
    "limits": (None, [("GET", READERS), ("POST", OPS)]),
    "profile": ("profile", [("GET", READERS), ("POST", OPS)]),
    "limit_edit": ("limit", [("GET", OPS), ("POST", OPS)]),
    "model_limit_create": ("profile", [("POST", OPS)]),
    "model_limit_delete": ("model_limit", [("POST", OPS)]),
    "limit_shadow": ("limit", [("POST", OPS)]),
    "teams": (None, [("GET", READERS), ("POST", OPS)]),
    "team": ("team", [("GET", TEAM_A_READERS)]),
    "team_pause": ("team", [("POST", OPS)]),
    "team_profile": ("team", [("POST", OPS)]),
    "team_sharing": ("team", [("POST", OPS)]),
    "share_create": ("team", [("POST", OPS)]),
    "share_delete": ("share", [("POST", OPS)]),
    "key_create": ("team", [("POST", TEAM_A_KEYS)]),
    "budget_create": ("team", [("POST", OPS)]),
    "budget_delete": ("budget", [("POST", OPS)]),
    "budget_shadow": ("budget", [("POST", OPS)]),
    "key_revoke": ("key", [("POST", TEAM_A_KEYS)]),
    "key_rotate": ("key", [("POST", TEAM_A_KEYS)]),
    "refusals": (None, [("GET", TEAM_A_READERS)]),
    "refusals_csv": (None, [("GET", TEAM_A_READERS)]),
    "usage": (None, [("GET", TEAM_A_READERS)]),
    "usage_csv": (None, [("GET", TEAM_A_READERS)]),
    "audit": (None, [("GET", READERS)]),
    "alerts": (None, [("GET", TEAM_A_READERS), ("POST", ADMINS)]),
    "webhook_edit": ("webhook", [("GET", ADMINS), ("POST", ADMINS)]),
    "webhook_test": ("webhook", [("POST", ADMINS)]),
    "webhook_enable": ("webhook", [("POST", ADMINS)]),
    # One's own personal tokens: whoever holds a role (token_revoke: one's own token).
    "tokens": (None, [("GET", TEAM_A_READERS), ("POST", TEAM_A_READERS)]),
    "token_revoke": ("token", [("POST", TEAM_A_READERS)]),
}
TEAM_ARGS = {"team", "key", "budget"}


def _dashboard_cells() -> list[Any]:
    cells = []
    for name, (arg, methods) in DASHBOARD.items():
        for target in ("A", "B") if arg in TEAM_ARGS else (None,):
            for method, allowed in methods:
                for persona in PERSONAS:
                    # Team A's personas may act on team B's object in no case.
                    who = allowed if target != "B" else allowed - TEAM_PERSONAS
                    cells.append(
                        pytest.param(
                            name,
                            arg,
                            target,
                            method,
                            who,
                            persona,
                            id=f"{name}-{target or ''}-{method}-{persona}",
                        )
                    )
    return cells


@pytest.mark.parametrize(
    ("name", "arg", "target", "method", "allowed", "persona"), _dashboard_cells()
)
def test_dashboard(world, name, arg, target, method, allowed, persona) -> None:
    ids = world.ids(target or "A")
    if arg == "token":  # the persona's own token (the admin's for those without a role)
        owner = world.users[persona if persona in TEAM_A_READERS else ADMIN]
        ids["token"] = token_create(user=owner, actor=owner).token.pk
    url = reverse(f"dashboard:{name}", args=[ids[arg]] if arg else [])
    data = {
        "paused": "1",
        "name": "x",
        "enabled": "0",
        "account": ids["account"],
        "endpoint": "chat",
        "model": "acme/x",
        "unit": "dollars",
        "period": "day",
        "limit": "5",
        "shadow": "1",
    }
    assert_cell(
        world=world,
        persona=persona,
        method=method,
        url=url,
        data=data,
        allowed=allowed,
        target=target,
        api=False,
    )


# --- the ops API, from its OpenAPI document -------------------------------------------------------
# (method, path) -> who may. Paths with a team's object run on team A's and team B's.
API: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/api/teams"): TEAM_A_READERS,  # a team role lists its own team only
    ("POST", "/api/teams"): OPS,
    ("GET", "/api/teams/{team_id}"): TEAM_A_READERS,
    ("GET", "/api/teams/{team_id}/now"): TEAM_A_READERS,
    ("PATCH", "/api/teams/{team_id}"): OPS,
    ("GET", "/api/teams/{team_id}/keys"): TEAM_A_READERS,
    ("POST", "/api/teams/{team_id}/keys"): TEAM_A_KEYS,
    ("POST", "/api/keys/{key_id}/revoke"): TEAM_A_KEYS,
    ("POST", "/api/keys/{key_id}/rotate"): TEAM_A_KEYS,
    ("GET", "/api/profiles"): READERS,
    ("POST", "/api/profiles"): OPS,
    ("GET", "/api/profiles/{profile_id}"): READERS,
    ("PATCH", "/api/profiles/{profile_id}"): OPS,
    ("DELETE", "/api/profiles/{profile_id}"): OPS,
    ("POST", "/api/profiles/{profile_id}/limits"): OPS,
    ("PATCH", "/api/limits/{limit_id}"): OPS,
    ("DELETE", "/api/limits/{limit_id}"): OPS,
    # The shared reads: a team role's own rows (tests/dashboard/test_shared_views.py).
    ("GET", "/api/refusals"): TEAM_A_READERS,
    ("GET", "/api/refusals/per-minute"): TEAM_A_READERS,
    ("GET", "/api/refusals.csv"): TEAM_A_READERS,
    ("GET", "/api/audit"): READERS,
    ("GET", "/api/live"): TEAM_A_READERS,
    ("GET", "/api/ceilings"): TEAM_A_READERS,
    ("POST", "/api/ceilings/reset"): OPS,
    ("GET", "/api/usage"): TEAM_A_READERS,
    ("GET", "/api/prices"): READERS,
    ("POST", "/api/prices"): ADMINS,
    ("GET", "/api/teams/{team_id}/budgets"): TEAM_A_READERS,
    ("POST", "/api/teams/{team_id}/budgets"): OPS,
    ("PATCH", "/api/budgets/{budget_id}"): OPS,
    ("DELETE", "/api/budgets/{budget_id}"): OPS,
    ("GET", "/api/shares"): READERS,
    ("POST", "/api/shares"): OPS,
    ("PATCH", "/api/shares/{share_id}"): OPS,
    ("DELETE", "/api/shares/{share_id}"): OPS,
    ("GET", "/api/teams/{team_id}/sharing"): TEAM_A_READERS,
    ("PATCH", "/api/teams/{team_id}/sharing"): OPS,
    ("PATCH", "/api/keys/{key_id}/priority"): OPS,
}
PATH_PARAMS = {
    "{team_id}": "team",
    "{key_id}": "key",
    "{budget_id}": "budget",
    "{profile_id}": "profile",
    "{limit_id}": "limit",
    "{share_id}": "share",
}


def openapi_operations() -> set[tuple[str, str]]:
    schema = api.get_openapi_schema()
    return {
        (method.upper(), route)
        for route, operations in schema["paths"].items()
        for method in operations
    }


def _api_cells() -> list[Any]:
    cells = []
    for (method, route), allowed in API.items():
        scoped = any(p in route for p in ("{team_id}", "{key_id}", "{budget_id}"))
        for target in ("A", "B") if scoped else (None,):
            who = allowed if target != "B" else allowed - TEAM_PERSONAS
            for persona in PERSONAS:
                cells.append(
                    pytest.param(
                        method,
                        route,
                        target,
                        who,
                        persona,
                        id=f"{method} {route}-{target or ''}-{persona}",
                    )
                )
    return cells


@pytest.fixture
def no_limiter(monkeypatch):
    """No limiter runs here: /api/live and /api/ceilings ask one and wait a second for
    nothing; answer at once that none answered."""

    async def request_snapshot(reply: str) -> None:
        return None

    monkeypatch.setattr(serving, "request_snapshot", request_snapshot)
    monkeypatch.setattr(live, "SNAPSHOT_TIMEOUT", 0.01)


@pytest.mark.parametrize(("method", "route", "target", "allowed", "persona"), _api_cells())
def test_ops_api(world, no_limiter, method, route, target, allowed, persona) -> None:
    ids = world.ids(target or "A")
    url = route
    for param, name in PATH_PARAMS.items():
        url = url.replace(param, str(ids[name]))
    assert_cell(
        world=world,
        persona=persona,
        method=method,
        url=url,
        data={},
        allowed=allowed,
        target=target,
        api=True,
    )


# --- /admin/ --------------------------------------------------------------------------------------
# (method, URL template, who may). Holders of an org role are let in; then each page asks
# the role group's model permissions.
ADMIN_CELLS: list[tuple[str, str, frozenset[str]]] = [
    ("GET", "/admin/", READERS),
    ("GET", "/admin/limiter/team/", READERS),
    ("GET", "/admin/limiter/team/{team}/change/", READERS),  # the auditor's is read-only
    ("POST", "/admin/limiter/team/{team}/change/", OPS),
    ("GET", "/admin/limiter/limitprofile/add/", OPS),
    ("POST", "/admin/limiter/team/{team}/delete/", OPS),
    ("GET", "/admin/limiter/refusal/", READERS),
    ("GET", "/admin/limiter/upstreamaccount/", READERS),
    ("POST", "/admin/limiter/upstreamaccount/{account}/change/", ADMINS),
    ("GET", "/admin/auth/user/", ADMINS),
    ("POST", "/admin/auth/user/add/", ADMINS),
]


@pytest.mark.parametrize(
    ("method", "template", "allowed", "persona"),
    [pytest.param(m, t, a, p, id=f"{m} {t}-{p}") for m, t, a in ADMIN_CELLS for p in PERSONAS],
)
def test_admin(world, method, template, allowed, persona) -> None:
    ids = world.ids("A")
    url = template.format(**ids)
    data = {"post": "yes"} if url.endswith("/delete/") else {}
    assert_cell(
        world=world,
        persona=persona,
        method=method,
        url=url,
        data=data,
        allowed=allowed,
        target=None,
        api=False,
        login_url="/admin/login/",
    )


# --- deny by default -----------------------------------------------------------------------------
def _patterns(resolver: URLResolver, namespaces: tuple[str, ...] = ()) -> list[Any]:
    found = []
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            found += _patterns(entry, namespaces + ((entry.namespace,) if entry.namespace else ()))
        elif isinstance(entry, URLPattern):
            found.append((namespaces, entry))
    return found


def test_every_route_declares_a_rule_and_is_in_the_table() -> None:
    dashboard_names = set()
    for namespaces, pattern in _patterns(get_resolver()):
        if "admin" in namespaces or "ops-api" in namespaces:
            continue  # the admin asks the policy itself; the API's operations are below
        callback = pattern.callback
        assert access.rule_of(callback) is not None or getattr(
            callback, access.PUBLIC_ATTR, False
        ), f"{pattern.pattern} ({pattern.name}) declares no rule: add @rule(...) or @public"
        if "dashboard" in namespaces:
            dashboard_names.add(pattern.name)
    assert dashboard_names == set(DASHBOARD), "a dashboard route is missing from DASHBOARD"

    operations = [
        operation
        for bound in api._get_bound_routers()
        for path_view in bound.path_operations.values()
        for operation in path_view.operations
    ]
    assert operations
    for operation in operations:
        assert access.rule_of(operation.view_func) is not None, (
            f"{operation.view_func.__name__} declares no rule: add @api_rule(...)"
        )
    assert openapi_operations() == set(API), "an ops API operation is missing from API"

    assert access.rule_of(LiveConsumer) is not None
    for rule in [access.rule_of(op.view_func) for op in operations]:
        assert rule is not None and rule.action in policy.ACTIONS


def _undeclared(request: HttpRequest) -> HttpResponse:
    return HttpResponse("a route someone forgot to declare")


urlpatterns = [path("undeclared/", _undeclared), *get_resolver("dashboard.urls").url_patterns]


@pytest.mark.urls(__name__)
def test_a_view_without_a_rule_is_refused(world) -> None:
    assert client_for(world, ADMIN).get("/undeclared/").status_code == 403


def test_an_operation_without_a_rule_is_refused(world, settings) -> None:
    other = NinjaAPI(urls_namespace="undeclared-api", auth=StaffSession())
    other.add_decorator(access.api_guard, mode="view")
    other.exception_handler(access.Refused)(
        lambda request, exc: other.create_response(request, {"refused": True}, status=403)
    )

    @other.get("/forgotten")
    def forgotten(request: HttpRequest) -> dict[str, str]:
        return {"oops": "served"}

    @other.get("/declared")
    @access.api_rule(policy.READ_ALL)
    def declared(request: HttpRequest) -> dict[str, str]:
        return {"ok": "served"}

    def call(route: str) -> int:
        request = RequestFactory().get(route)
        request.user = world.users[ADMIN]
        request.COOKIES[settings.SESSION_COOKIE_NAME] = "signed-in"
        pattern = next(p for p in other.urls[0] if str(p.pattern) == route.lstrip("/"))
        return pattern.callback(request).status_code

    assert call("/declared") == 200
    assert call("/forgotten") == 403


# --- no control a user may not use ------------------------------------------------------------
def post_forms(html: str) -> list[str]:
    """The actions of a page's POST forms, but the sign-out in the header."""
    actions = []
    for form in re.findall(r"<form[^>]*>", html):
        if 'method="post"' in form and 'action="/logout/"' not in form:
            match = re.search(r'action="([^"]*)"', form)
            actions.append(match.group(1) if match else "")
    return actions


def test_an_auditor_sees_every_page_without_a_write_control(world) -> None:
    client = client_for(world, AUDITOR)
    for name, (arg, methods) in DASHBOARD.items():
        if ("GET", READERS) not in methods and ("GET", TEAM_A_READERS) not in methods:
            continue
        url = reverse(f"dashboard:{name}", args=[world.ids("A")[arg]] if arg else [])
        response = client.get(url)
        assert response.status_code == 200, url
        # Its own API tokens are the one thing an auditor may create (they read only).
        if not name.endswith("_csv") and name != "tokens":
            assert post_forms(response.content.decode()) == [], url
    # The operator's pages do carry them: the check above can see a form.
    operator = client_for(world, OPERATOR).get(reverse("dashboard:teams")).content.decode()
    assert post_forms(operator)


def test_team_page_controls_follow_the_team_role(world) -> None:
    url = reverse("dashboard:team", args=[world.team_a.pk])
    viewer = client_for(world, VIEWER).get(url).content.decode()
    maintainer = client_for(world, MAINTAINER).get(url).content.decode()
    assert post_forms(viewer) == []
    key_forms = {
        reverse("dashboard:key_create", args=[world.team_a.pk]),
        reverse("dashboard:key_rotate", args=[world.key_a.pk]),
        reverse("dashboard:key_revoke", args=[world.key_a.pk]),
    }
    assert set(post_forms(maintainer)) == key_forms  # no pause, profile or budget form
    assert 'name="profile"' not in maintainer  # its keys take the team's profile
    # Their navigation is their team, not the organisation's pages.
    assert reverse("dashboard:limits") not in maintainer and url in maintainer


def test_a_maintainers_key_takes_the_teams_profile(world) -> None:
    other = LimitProfile.objects.create(name="bigger")
    client = client_for(world, MAINTAINER)
    refused = client.post(
        f"/api/teams/{world.team_a.pk}/keys",
        {"name": "ci", "profile": "bigger"},
        content_type="application/json",
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == MSG_KEY_PROFILE
    assert not ApiKey.objects.filter(name="ci").exists()
    # The page has no profile field for them; one sent anyway is ignored.
    url = reverse("dashboard:key_create", args=[world.team_a.pk])
    assert client.post(url, {"name": "ci", "profile": other.pk}).status_code == 200
    assert ApiKey.objects.get(name="ci").profile is None


def test_a_refusal_says_why_and_where_to_go(world) -> None:
    """A user with no role gets a page saying so (not an empty dashboard); a team user is
    pointed at its team's page; an auditor is told its role may read but not change."""
    nobody = client_for(world, NOROLE).get(reverse("dashboard:overview"))
    assert nobody.status_code == 403 and 'id="no-role"' in nobody.content.decode()
    # (A team user signing in lands on its team; an organisation page refuses it.)
    viewer = client_for(world, VIEWER).get(reverse("dashboard:limits")).content.decode()
    assert reverse("dashboard:team", args=[world.team_a.pk]) in viewer
    assert world.team_b.name not in viewer
    auditor = client_for(world, AUDITOR).post(reverse("dashboard:teams"), {"name": "x"})
    assert auditor.status_code == 403 and "may see this page but not change it" in (
        auditor.content.decode()
    )
