"""The dashboard, the admin and the live websocket: staff only.

Every page (exports and forms included) and every admin page of every registered model,
each naming team B's rows where it takes an id: anonymous is sent to log in, a logged-in
user who is not staff gets 403 (the admin sends it to its login too), never the content;
the database is as it was. The websocket refuses both, and accepts staff.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest
from django.contrib import admin
from django.urls import reverse
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from limiter.models import VISIBLE_PREFIX_LENGTH
from tests.isolation.conftest import Browser, World
from tests.isolation.routes import (
    PAGE_PUBLIC,
    PAGE_ROUTES,
    WEBSOCKET_ROUTES,
    PageRoute,
    names_a_team,
)

CLOSE_FORBIDDEN = 4403


def page_path(world: World, path: str) -> str:
    return path.format(
        team=world.b.id,
        key=world.b_teammate.key_id,
        profile=world.b_profile_id,
        limit=world.b_limit_id,
        webhook=world.b_webhook_id,
        budget=world.b_budget_id,
        share=world.b_share_id,
    )


@pytest.mark.parametrize("route", PAGE_ROUTES, ids=lambda r: f"{r.method} {r.name}")
def test_anonymous_is_sent_to_log_in(world: World, anonymous: Browser, route: PageRoute) -> None:
    before = world.db.ops_state()
    path = page_path(world, route.path)

    answer = anonymous.request(route.method, path, data=route.data)

    assert answer.status_code == 302
    assert answer.headers["location"] == f"/login/?next={quote(path)}"
    assert world.b.name not in answer.text
    assert world.db.ops_state() == before


@pytest.mark.parametrize("route", PAGE_ROUTES, ids=lambda r: f"{r.method} {r.name}")
def test_non_staff_is_forbidden(world: World, non_staff: Browser, route: PageRoute) -> None:
    before = world.db.ops_state()

    answer = non_staff.request(route.method, page_path(world, route.path), data=route.data)

    # A user with no role sees no team: a team's object answers as an unknown one.
    assert answer.status_code == (404 if names_a_team(route.path) else 403)
    assert world.b.name not in answer.text
    assert world.db.ops_state() == before


@pytest.mark.parametrize(
    "route", [r for r in PAGE_ROUTES if r.method == "GET"], ids=lambda r: r.name
)
def test_staff_sees_every_page(world: World, staff: Browser, route: PageRoute) -> None:
    """The control: the same paths answer staff, so the refusals above are real."""
    answer = staff.request("GET", page_path(world, route.path))
    assert answer.status_code == 200


def test_login_and_logout_pages_name_no_tenant(world: World, anonymous: Browser) -> None:
    login = anonymous.request("GET", PAGE_PUBLIC["login"])
    assert login.status_code == 200 and world.b.name not in login.text
    logout = anonymous.request("POST", PAGE_PUBLIC["logout"])
    assert logout.status_code in (200, 302) and world.b.name not in logout.text


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_health_and_metrics_are_public_and_name_no_tenant(world: World, path: str) -> None:
    answer = httpx.get(world.server.url + path, timeout=30)
    assert answer.status_code == 200
    for name in (
        world.a.name,
        world.b.name,
        world.b.secret[:VISIBLE_PREFIX_LENGTH],
        *world.b_ids(),
    ):
        assert name not in answer.text


# --- the admin ---------------------------------------------------------------------------------
def admin_paths(world: World) -> list[str]:
    """Every admin page: the index, each app, and each registered model's pages (for an
    object of B's where there is one)."""
    b_rows = {
        "team": world.b.id,
        "apikey": world.b_teammate.key_id,
        "limitprofile": world.b_profile_id,
    }
    paths = [
        reverse("admin:index"),
        reverse("admin:password_change"),
        reverse("admin:password_change_done"),
    ]
    for model in admin.site._registry:
        meta = model._meta
        paths.append(reverse("admin:app_list", args=[meta.app_label]))
        prefix = f"admin:{meta.app_label}_{meta.model_name}"
        paths += [reverse(f"{prefix}_changelist"), reverse(f"{prefix}_add")]
        pk = b_rows.get(meta.model_name, 1)
        paths += [
            reverse(f"{prefix}_{page}", args=[pk]) for page in ("change", "delete", "history")
        ]
    return sorted(set(paths))


def test_admin_refuses_anonymous_and_non_staff(
    world: World, anonymous: Browser, non_staff: Browser
) -> None:
    for path in admin_paths(world):
        answer = anonymous.request("GET", path)
        assert answer.status_code == 302, path
        assert answer.headers["location"].startswith("/admin/login/?next="), path
        # Signed in without a role: refused, not sent to sign in again.
        assert non_staff.request("GET", path).status_code == 403, path
    # A write through the admin (deleting B's teammate's key) changes nothing.
    before = world.db.ops_state()
    delete = reverse("admin:limiter_apikey_delete", args=[world.b_teammate.key_id])
    answer = anonymous.request("POST", delete, data={"post": "yes"})
    assert answer.status_code == 302 and answer.headers["location"].startswith("/admin/login/")
    assert non_staff.request("POST", delete, data={"post": "yes"}).status_code == 403
    assert world.db.ops_state() == before


def test_staff_sees_the_admin(world: World, staff: Browser) -> None:
    assert (
        staff.request("GET", reverse("admin:limiter_team_change", args=[world.b.id])).status_code
        == 200
    )


# --- the live websocket ------------------------------------------------------------------------
def open_socket(world: World, path: str, browser: Browser) -> tuple[str, Any]:
    """("refused", close code or HTTP status) or ("accepted", the first message)."""
    cookies = "; ".join(f"{name}={value}" for name, value in browser.http.cookies.items())
    url = world.server.url.replace("http://", "ws://") + path
    try:
        with connect(
            url, additional_headers={"origin": world.server.url, "cookie": cookies}, open_timeout=10
        ) as socket:
            try:
                return "accepted", socket.recv(timeout=10)
            except Exception:  # closed right after the handshake
                return "refused", socket.close_code
    except InvalidStatus as exc:
        return "refused", exc.response.status_code


@pytest.mark.parametrize("path", WEBSOCKET_ROUTES)
def test_websocket_refuses_anonymous_and_non_staff(
    world: World, anonymous: Browser, non_staff: Browser, path: str
) -> None:
    for browser in (anonymous, non_staff):
        outcome, detail = open_socket(world, path, browser)
        assert outcome == "refused", detail
        assert detail in (403, CLOSE_FORBIDDEN)


@pytest.mark.parametrize("path", WEBSOCKET_ROUTES)
def test_websocket_serves_staff(world: World, staff: Browser, path: str) -> None:
    outcome, message = open_socket(world, path, staff)
    assert outcome == "accepted", message
    assert '"type"' in message
