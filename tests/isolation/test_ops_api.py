"""The ops API (/api/): staff sessions and the admin token only.

Every operation, each naming team B's rows where it takes an id: anonymous 401, a
logged-in user who is not staff 403, a team's key (or any other bearer) 401, in the ops
API's error shape, without B's data, and with the database as it was.
"""

from __future__ import annotations

import secrets

import httpx
import pytest

from tests.isolation.conftest import Browser, World
from tests.isolation.routes import OPS_PUBLIC, OPS_ROUTES, OpsRoute, names_a_team

# persona -> (status, error code)
REFUSED = {
    "anonymous": (401, "unauthenticated"),
    "non_staff": (403, "forbidden"),
    "team_key": (401, "unauthenticated"),
    "bogus_token": (401, "unauthenticated"),
}


def ops_path(world: World, route: OpsRoute) -> str:
    return "/api" + route.path.format(
        team=world.b.id,
        key=world.b_teammate.key_id,
        profile=world.b_profile_id,
        limit=world.b_limit_id,
        budget=world.b_budget_id,
        share=world.b_share_id,
    )


@pytest.mark.parametrize("route", OPS_ROUTES, ids=lambda r: r.id)
@pytest.mark.parametrize("persona", REFUSED)
def test_ops_api_refuses_everyone_but_staff(
    world: World, anonymous: Browser, non_staff: Browser, route: OpsRoute, persona: str
) -> None:
    before = world.db.ops_state()
    path = ops_path(world, route)

    if persona in ("anonymous", "non_staff"):
        browser = anonymous if persona == "anonymous" else non_staff
        answer = browser.request(route.method, path, json=route.body)
    else:
        token = world.a.secret if persona == "team_key" else secrets.token_urlsafe(24)
        # Wrong bearers are throttled per address (dashboard/auth_throttle.py): each call
        # comes from its own loopback address, so every one is refused as a first guess.
        source = f"127.0.{2 + list(REFUSED).index(persona)}.{1 + OPS_ROUTES.index(route)}"
        with httpx.Client(transport=httpx.HTTPTransport(local_address=source)) as client:
            answer = client.request(
                route.method,
                world.server.url + path,
                json=route.body,
                timeout=30,
                headers={"authorization": f"Bearer {token}"},
            )

    status, code = REFUSED[persona]
    if persona == "non_staff" and names_a_team(route.path):
        status, code = 404, "not_found"  # a user with no role sees no team at all
    assert answer.status_code == status, answer.text[:300]
    assert answer.json()["error"]["code"] == code
    assert world.b.name not in answer.text
    assert world.db.ops_state() == before


@pytest.mark.parametrize("route", [r for r in OPS_ROUTES if r.method == "GET"], ids=lambda r: r.id)
def test_admin_token_reads_every_route(world: World, route: OpsRoute) -> None:
    """The control: the same paths answer the admin token, so the refusals above are real."""
    answer = world.ops.get(ops_path(world, route).removeprefix("/api"))
    assert answer.status_code == 200, answer.text[:300]


@pytest.mark.parametrize("name", OPS_PUBLIC)
def test_api_schema_is_public_and_names_no_tenant(
    world: World, anonymous: Browser, name: str
) -> None:
    answer = anonymous.request("GET", OPS_PUBLIC[name])
    assert answer.status_code in (200, 404)
    assert world.b.name not in answer.text and world.a.name not in answer.text
