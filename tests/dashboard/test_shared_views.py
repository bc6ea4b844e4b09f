"""The shared views for a team role: Live (page, websocket, /api/live, /api/ceilings),
Usage (page, CSV, /api/usage), the 429 history (page, CSV, /api/refusals*) and Alerts.
Team A's viewer gets team A's rows and its upstream account's totals; team B's name and
key prefix appear nowhere in what it is sent. An auditor still gets every row."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from dashboard import live
from dashboard.consumers import LiveConsumer
from dashboard.models import TeamMembership
from limiter import selectors, serving
from limiter.alerts.models import Alert, Webhook
from limiter.models import ApiKey, Team
from limiter.protocol import events
from limiter.services import key_issue, team_get_or_create, upstream_default
from limiter.usage.models import UsageRollup
from tests.dashboard.conftest import make_refusals, org_user
from tests.dashboard.test_route_table import post_forms

A_NAME, B_NAME = "alpha-team", "bravo-team"
B_WEBHOOK = "bravo-hook"
ORG_ALERT = "upstream_429:1"  # an alert about no team: the organisation's


@dataclass
class Shared:
    a: Team
    b: Team
    key_a: ApiKey
    key_b: ApiKey
    viewer: User
    auditor: User

    def client(self, user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client


def rollup(team: Team, key: ApiKey, requests: int) -> UsageRollup:
    return UsageRollup(
        writer="w",
        minute=timezone.now().replace(second=0, microsecond=0) - timedelta(hours=1),
        team=team,
        team_name=team.name,
        key_prefix=key.prefix,
        upstream=upstream_default().name,
        endpoint="chat",
        model="acme/chat",
        status_class="2xx",
        requests=requests,
        total_tokens=requests * 10,
        cost=Decimal(requests),
    )


def build_world() -> Shared:
    """Teams A and B on the one upstream account, each with a key, 429s, usage and an
    alert; B with its own webhook; an alert about no team; A's viewer and an auditor."""
    a, b = team_get_or_create(name=A_NAME)[0], team_get_or_create(name=B_NAME)[0]
    key_a, key_b = key_issue(team=a, name="a-key").key, key_issue(team=b, name="b-key").key
    make_refusals(a, 3, key_prefix=key_a.prefix)
    make_refusals(b, 5, key_prefix=key_b.prefix)
    UsageRollup.objects.bulk_create([rollup(a, key_a, 3), rollup(b, key_b, 5)])
    Alert.objects.create(
        condition=f"team_429:{a.pk}", period_key="p", team=a, text=f"{A_NAME}: 30 429s"
    )
    Alert.objects.create(
        condition=f"team_429:{b.pk}", period_key="p", team=b, text=f"{B_NAME}: 50 429s"
    )
    Alert.objects.create(
        condition=ORG_ALERT, period_key="p", text=f"Together's 429s (most from {B_NAME})"
    )
    Webhook.objects.create(name=B_WEBHOOK, url="http://127.0.0.1:9/b", team=b, enabled=False)
    viewer = User.objects.create_user("alpha-viewer")
    TeamMembership.objects.create(user=viewer, team=a, role="viewer")
    return Shared(a, b, key_a, key_b, viewer, org_user("auditor", "auditor"))


@pytest.fixture
def world(db) -> Shared:
    return build_world()


def text_of(response: Any) -> str:
    if getattr(response, "streaming", False):

        async def collect() -> bytes:
            return b"".join([chunk async for chunk in response.streaming_content])

        return async_to_sync(collect)().decode()
    return response.content.decode()


def assert_only_a(world: Shared, body: str, *, a_shown: bool = True) -> None:
    assert B_NAME not in body and world.key_b.prefix not in body
    assert B_WEBHOOK not in body and ORG_ALERT not in body
    if a_shown:
        assert A_NAME in body or world.key_a.prefix in body


def assert_both(world: Shared, body: str) -> None:
    assert world.key_a.prefix in body and world.key_b.prefix in body


# --- pages and exports ---------------------------------------------------------------------
READS = [
    "/refusals/",
    "/refusals.csv",
    "/usage/?group_by=team&group_by=key",
    "/usage.csv?group_by=team&group_by=key",
    "/api/refusals",
    "/api/refusals.csv",
    "/api/usage?group_by=team&group_by=key",
]


@pytest.mark.parametrize("url", READS)
def test_a_team_viewer_reads_its_own_rows_only(world, url) -> None:
    response = world.client(world.viewer).get(url)
    assert response.status_code == 200
    assert_only_a(world, text_of(response))


@pytest.mark.parametrize("url", READS)
def test_an_auditor_still_reads_every_row(world, url) -> None:
    response = world.client(world.auditor).get(url)
    assert response.status_code == 200
    assert_both(world, text_of(response))


@pytest.mark.parametrize(
    "url",
    [
        f"/refusals/?team={B_NAME}",
        f"/refusals.csv?team={B_NAME}",
        f"/api/refusals?team={B_NAME}",
        f"/api/refusals.csv?team={B_NAME}",
        f"/usage/?team={B_NAME}&group_by=key",
        f"/api/usage?team={B_NAME}&group_by=key",
    ],
)
def test_naming_another_team_in_a_filter_yields_none_of_its_rows(world, url) -> None:
    response = world.client(world.viewer).get(url)
    assert response.status_code == 200
    body = text_of(response)
    # Nothing of B's, and not A's rows either: the filter matched no team it may see.
    assert world.key_b.prefix not in body and world.key_a.prefix not in body


def test_the_team_dropdowns_list_visible_teams_only(world) -> None:
    client = world.client(world.viewer)
    for url in ("/refusals/", "/usage/"):
        body = client.get(url).content.decode()
        assert f'value="{A_NAME}"' in body and B_NAME not in body, url


def test_the_429_chart_counts_the_teams_own_refusals(world) -> None:
    minutes = world.client(world.viewer).get("/api/refusals/per-minute").json()
    assert sum(row["refusals"] for row in minutes) == 3
    minutes = world.client(world.auditor).get("/api/refusals/per-minute").json()
    assert sum(row["refusals"] for row in minutes) == 8


def test_usage_shows_the_accounts_total_without_other_teams_names(world) -> None:
    body = world.client(world.viewer).get("/usage/?group_by=team").content.decode()
    table = body[body.index('id="account-totals"') :]
    account = upstream_default().name
    # A's 3 requests and B's 5, on the one account they share, as one unnamed total.
    assert f'<td>{account}</td><td class="num">8</td>' in table
    assert_only_a(world, body)
    assert 'id="account-totals"' not in world.client(world.auditor).get("/usage/").content.decode()


def test_alerts_show_the_teams_alerts_and_no_webhook(world) -> None:
    response = world.client(world.viewer).get("/alerts/")
    assert response.status_code == 200
    body = response.content.decode()
    assert f"{A_NAME}: 30 429s" in body
    assert_only_a(world, body)
    # A webhook sent anyway is refused and nothing is added.
    refused = world.client(world.viewer).post(
        "/alerts/", {"name": "mine", "url": "http://127.0.0.1:9/m", "team": world.a.pk}
    )
    assert refused.status_code == 403 and not Webhook.objects.filter(name="mine").exists()
    auditor = world.client(world.auditor).get("/alerts/").content.decode()
    assert B_WEBHOOK in auditor and ORG_ALERT in auditor and f"{B_NAME}: 50 429s" in auditor


def test_a_team_viewers_shared_views_carry_no_write_control(world) -> None:
    client = world.client(world.viewer)
    for url in ("/live/", "/refusals/", "/usage/", "/alerts/"):
        assert post_forms(client.get(url).content.decode()) == [], url


def test_the_team_navigation_reaches_the_shared_views(world) -> None:
    body = world.client(world.viewer).get(f"/teams/{world.a.pk}/").content.decode()
    for url in ("/live/", "/refusals/", "/usage/", "/alerts/"):
        assert f'href="{url}"' in body, url
    assert 'href="/limits/"' not in body and 'href="/audit/"' not in body


# --- live ------------------------------------------------------------------------------------
def scope(kind: str, scope_id: str) -> events.ScopeSnapshot:
    return {
        "kind": kind,
        "id": scope_id,
        "endpoint": "chat",
        "model": "",
        "limit_per_minute": 500.0,
        "burst": 5,
        "in_use": 1.5,
        "admitted_last_minute": 3,
        "queued": 2,
        "longest_wait": 0.8,
        "leases": 1,
        "max_concurrent": None,
        "tokens_per_minute": None,
        "tokens_in_use": None,
        "paused_for": 0.0,
        "refused_last_minute": {"gateway": 1, "upstream": 0},
    }


def snapshot(world: Shared) -> events.LiveSnapshot:
    account = str(upstream_default().pk)
    return {
        "type": events.LIVE_SNAPSHOT,
        "at": time.time(),
        "limiter": {"started_at": time.time() - 10, "decisions": 7, "tickets_queued": 2},
        "scopes": [
            scope("key", str(world.key_a.pk)),
            scope("key", str(world.key_b.pk)),
            scope("account", account),
        ],
        "upstream_headers": {account: {"chat": {"x-ratelimit-remaining": "59"}}},
        "models": [],
        "history": {"chat": [[int(time.time()) // 60 * 60, 6, 2, 1]]},
        "coalescing": [],
    }


def jobs_message(world: Shared) -> dict[str, Any]:
    def holder(team: Team, job: str) -> dict[str, Any]:
        return {
            "team": team.name,
            "job": job,
            "parent": None,
            "upstream_id": None,
            "status": "running",
            "since": "2026-01-01T00:00:00+00:00",
        }

    def waiting(team: Team, job: str, position: int) -> dict[str, Any]:
        return {
            "team": team.name,
            "job": job,
            "parent": None,
            "position": position,
            "since": "2026-01-01T00:00:00+00:00",
            "not_before": None,
        }

    slots = {
        "used": 2,
        "total": 3,
        "holders": [holder(world.a, "ft-alpha-1"), holder(world.b, "ft-bravo-1")],
        "waiting": [waiting(world.b, "ft-bravo-2", 1), waiting(world.a, "ft-alpha-2", 2)],
    }
    empty = {"used": 0, "total": 3, "holders": [], "waiting": []}
    account = upstream_default()
    return {
        "type": events.LIVE_JOBS,
        "at": time.time(),
        "accounts": {
            str(account.pk): {"name": account.name, "fine_tunes": slots, "batches": empty}
        },
    }


def test_the_live_page_and_api_give_the_teams_rows_and_the_accounts(world, monkeypatch) -> None:
    view = live.snapshot_enrich(snapshot(world), selectors.scope_names())
    monkeypatch.setattr(live, "latest", live.Latest())
    live.latest.store(view)
    # No limiter runs here: should the stored view age past a second, the old one serves.
    monkeypatch.setattr(live, "SNAPSHOT_TIMEOUT", 0.01)

    async def request_snapshot(reply: str) -> None:
        return None

    monkeypatch.setattr(serving, "request_snapshot", request_snapshot)

    page = world.client(world.viewer).get("/live/")
    assert page.status_code == 200
    assert_only_a(world, page.content.decode())  # the limits of its team only

    answer = world.client(world.viewer).get("/api/live")
    assert answer.status_code == 200
    assert_only_a(world, answer.content.decode())
    scopes = answer.json()["snapshot"]["scopes"]
    assert [s["kind"] for s in scopes] == ["key", "account"]  # its key, and the account's
    assert scopes[0]["key_prefix"] == world.key_a.prefix
    assert world.client(world.viewer).get("/api/ceilings").status_code == 200

    everything = world.client(world.auditor).get("/api/live")
    assert_both(world, everything.content.decode())
    assert B_NAME in world.client(world.auditor).get("/").content.decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("seeded_transactional_db")
@pytest.mark.parametrize("who", ["viewer", "auditor"])
async def test_the_websocket_sends_a_team_user_its_own_rows(who, monkeypatch) -> None:
    async def request_snapshot(reply: str) -> None:
        return None

    monkeypatch.setattr(serving, "request_snapshot", request_snapshot)
    live.names.clear()
    world = await database_sync_to_async(build_world)()
    limiter_says = await database_sync_to_async(lambda: (snapshot(world), jobs_message(world)))()
    account_name = await database_sync_to_async(lambda: upstream_default().name)()
    communicator = WebsocketCommunicator(LiveConsumer.as_asgi(), "/ws/live/")
    communicator.scope["user"] = world.viewer if who == "viewer" else world.auditor
    connected, _ = await communicator.connect()
    assert connected

    received = [await communicator.receive_json_from(timeout=2) for _ in range(2)]
    for message in limiter_says:
        await get_channel_layer().group_send(events.LIVE_GROUP, dict(message))
    received += [await communicator.receive_json_from(timeout=2) for _ in range(2)]
    await communicator.disconnect()

    assert [m["type"] for m in received] == ["limits", "jobs", "snapshot", "jobs"]
    body = str(received)
    if who == "auditor":
        assert B_NAME in body and world.key_b.prefix in body and "ft-bravo-1" in body
        return
    assert_only_a(world, body)
    assert "ft-bravo" not in body
    limits, _, view, jobs = received
    assert [t["name"] for t in limits["limits"]["teams"]] == [A_NAME]
    assert [s.get("key_prefix") or s["account"] for s in view["scopes"]] == [
        world.key_a.prefix,
        account_name,
    ]
    fine_tunes = next(iter(jobs["accounts"].values()))["fine_tunes"]
    # The account's totals stay (2 of 3 slots used); A's jobs keep their queue position.
    assert fine_tunes["used"] == 2 and [w["position"] for w in fine_tunes["waiting"]] == [2]
