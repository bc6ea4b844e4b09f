"""The ops API: auth (session with CSRF, admin token), CRUD with audit, 429 filters, live."""

from __future__ import annotations

import pytest
from django.test import Client

from dashboard import live
from dashboard.api import MSG_AUTH, MSG_FORBIDDEN
from dashboard.models import AuditEntry
from dashboard.services import TOKEN_ACTOR
from limiter.models import COALESCE_MAX_INPUTS, ApiKey, EndpointLimit, LimitProfile, Team
from tests.dashboard.conftest import make_refusals

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(admin_token) -> Client:
    return Client(headers={"Authorization": f"Bearer {admin_token}"})


def test_401_without_auth(client):
    for method, path in [
        ("get", "/api/teams"),
        ("post", "/api/teams"),
        ("get", "/api/refusals"),
        ("get", "/api/live"),
    ]:
        response = getattr(client, method)(path, content_type="application/json")
        assert response.status_code == 401, path
        assert response.json() == {
            "error": {"code": "unauthenticated", "message": MSG_AUTH, "fields": None}
        }


def test_wrong_token_401(client, admin_token):
    response = client.get("/api/teams", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401


def test_token_disabled_when_unset(client, settings):
    settings.SLUICE_ADMIN_TOKEN = ""
    assert client.get("/api/teams", headers={"Authorization": "Bearer "}).status_code == 401


def test_session_without_a_role_403(outsider_client):
    response = outsider_client.get("/api/teams")
    assert response.status_code == 403 and response.json()["error"]["message"] == MSG_FORBIDDEN


def test_staff_session_needs_csrf_on_writes(staff):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    assert client.get("/api/teams").status_code == 200
    assert (
        client.post("/api/teams", {"name": "x"}, content_type="application/json").status_code == 403
    )
    assert not Team.objects.filter(name="x").exists()


def test_docs_and_schema(staff_client):
    assert staff_client.get("/api/docs").status_code == 200
    schema = staff_client.get("/api/openapi.json").json()
    assert "/api/refusals" in schema["paths"] and "/api/live" in schema["paths"]


def test_team_crud_and_audit(api):
    response = api.post("/api/teams", {"name": "search"}, content_type="application/json")
    assert response.status_code == 201
    team_id = response.json()["id"]
    assert response.json()["profile"] == "default" and response.json()["upstream"] == "together"
    assert (
        api.post("/api/teams", {"name": "search"}, content_type="application/json").status_code
        == 409
    )

    LimitProfile.objects.create(name="small")
    response = api.patch(
        f"/api/teams/{team_id}",
        {"profile": "small", "paused": True},
        content_type="application/json",
    )
    assert (
        response.status_code == 200
        and response.json()["paused"]
        and response.json()["profile"] == "small"
    )
    team = Team.objects.get(pk=team_id)
    assert team.paused and team.profile.name == "small"
    entries = list(AuditEntry.objects.order_by("id").values_list("actor_name", "action"))
    assert entries == [
        (TOKEN_ACTOR, "create"),
        (TOKEN_ACTOR, "assign_profile"),
        (TOKEN_ACTOR, "pause"),
    ]
    assert api.get("/api/teams/999").status_code == 404
    assert (
        api.patch(
            f"/api/teams/{team_id}", {"profile": "nope"}, content_type="application/json"
        ).status_code
        == 404
    )


def test_keys(api, team, other_team):
    response = api.post(
        f"/api/teams/{team.pk}/keys", {"name": "ci"}, content_type="application/json"
    )
    assert response.status_code == 201
    body = response.json()
    key = ApiKey.objects.get(pk=body["key"]["id"])
    assert ApiKey.hash_secret(body["secret"]) == key.secret_hash and body["key"]["team"] == "search"
    api.post(f"/api/teams/{other_team.pk}/keys", {}, content_type="application/json")

    listed = api.get(f"/api/teams/{team.pk}/keys").json()
    assert [k["prefix"] for k in listed] == [key.prefix]  # not the other team's key
    assert "secret" not in listed[0] and "secret_hash" not in listed[0]

    rotated = api.post(f"/api/keys/{key.pk}/rotate").json()
    assert rotated["key"]["prefix"] != key.prefix
    revoked = api.post(f"/api/keys/{rotated['key']['id']}/revoke").json()
    assert revoked["revoked_at"] is not None
    assert ApiKey.objects.usable().filter(team=team).count() == 0


def test_profiles_and_limits(api):
    created = api.post("/api/profiles", {"name": "tight"}, content_type="application/json")
    assert created.status_code == 201
    profile = created.json()
    chat = next(limit for limit in profile["limits"] if limit["endpoint"] == "chat")

    response = api.patch(f"/api/limits/{chat['id']}", {"burst": 0}, content_type="application/json")
    assert response.status_code == 400 and "burst" in response.json()["error"]["fields"]
    response = api.patch(
        f"/api/limits/{chat['id']}",
        {"requests_per_minute": 10, "burst": 2, "queue_depth": 0},
        content_type="application/json",
    )
    assert response.status_code == 200
    assert (response.json()["requests_per_minute"], response.json()["burst"]) == (10, 2)
    row = EndpointLimit.objects.get(pk=chat["id"])
    assert (row.requests_per_minute, row.burst, row.queue_depth) == (10, 2, 0)
    entry = AuditEntry.objects.filter(object_type="endpointlimit").get()
    assert entry.new_values == {"requests_per_minute": 10, "burst": 2, "queue_depth": 0}

    # Above the upstream ceiling: saved, with a warning.
    response = api.patch(
        f"/api/limits/{chat['id']}", {"requests_per_minute": 5000}, content_type="application/json"
    )
    assert response.status_code == 200 and "upstream ceiling" in response.json()["warnings"][0]

    assert api.delete(f"/api/limits/{chat['id']}").status_code == 204
    assert (
        api.post(
            f"/api/profiles/{profile['id']}/limits",
            {"endpoint": "chat", "requests_per_minute": 30},
            content_type="application/json",
        ).status_code
        == 201
    )
    assert (
        api.post(
            f"/api/profiles/{profile['id']}/limits",
            {"endpoint": "chat", "requests_per_minute": 30},
            content_type="application/json",
        ).status_code
        == 409
    )
    default = LimitProfile.objects.get(name="default")
    assert (
        api.delete(f"/api/profiles/{default.pk}").status_code == 409
    )  # used by the upstream account
    assert api.delete(f"/api/profiles/{profile['id']}").status_code == 204


def test_profile_coalescing_settings_read_and_written(api):
    profile = api.post("/api/profiles", {"name": "merging"}, content_type="application/json")
    profile_id = profile.json()["id"]
    assert (profile.json()["coalesce_embeddings"], profile.json()["coalesce_max_inputs"]) == (
        True,
        20,
    )

    response = api.patch(
        f"/api/profiles/{profile_id}",
        {"coalesce_embeddings": False, "coalesce_max_inputs": COALESCE_MAX_INPUTS},
        content_type="application/json",
    )
    assert response.status_code == 200
    assert (response.json()["coalesce_embeddings"], response.json()["coalesce_max_inputs"]) == (
        False,
        COALESCE_MAX_INPUTS,
    )
    stored = LimitProfile.objects.get(pk=profile_id)
    assert (stored.coalesce_embeddings, stored.coalesce_max_inputs) == (False, COALESCE_MAX_INPUTS)
    entry = AuditEntry.objects.filter(object_type="limitprofile", action="update").get()
    assert entry.new_values == {
        "coalesce_embeddings": False,
        "coalesce_max_inputs": COALESCE_MAX_INPUTS,
    }
    assert api.get(f"/api/profiles/{profile_id}").json()["coalesce_max_inputs"] == (
        COALESCE_MAX_INPUTS
    )

    # N between 1 and Together's documented maximum; neither setting takes null.
    for bad in (
        {"coalesce_max_inputs": 0},
        {"coalesce_max_inputs": COALESCE_MAX_INPUTS + 1},
        {"coalesce_max_inputs": None},
        {"coalesce_max_inputs": "many"},
        {"coalesce_embeddings": None},
    ):
        response = api.patch(f"/api/profiles/{profile_id}", bad, content_type="application/json")
        assert response.status_code == 400, bad
        assert set(response.json()["error"]["fields"]) == set(bad)
    stored.refresh_from_db()
    assert (stored.coalesce_embeddings, stored.coalesce_max_inputs) == (False, COALESCE_MAX_INPUTS)
    schema = api.get("/api/openapi.json").json()["components"]["schemas"]["ProfilePatchIn"]
    assert schema["properties"]["coalesce_max_inputs"]["maximum"] == COALESCE_MAX_INPUTS


def test_refusals_filters_pages_and_csv(api, team, other_team):
    make_refusals(team, 60, endpoint="chat")
    make_refusals(other_team, 5, endpoint="embeddings", source="upstream")
    page = api.get("/api/refusals", {"size": 50}).json()
    assert len(page["items"]) == 50 and page["next_cursor"]
    rest = api.get("/api/refusals", {"size": 50, "after": page["next_cursor"]}).json()
    assert len(rest["items"]) == 15 and rest["next_cursor"] is None
    assert len(api.get("/api/refusals", {"team": "ads"}).json()["items"]) == 5
    assert (
        len(api.get("/api/refusals", {"source": "upstream", "endpoint": "chat"}).json()["items"])
        == 0
    )
    assert api.get("/api/refusals", {"source": "bogus"}).status_code == 400
    minutes = api.get("/api/refusals/per-minute", {"team": "search"}).json()
    assert sum(m["refusals"] for m in minutes) == 60
    response = api.get("/api/refusals.csv", {"team": "ads"})
    assert response.status_code == 200 and response.streaming


def test_audit_list(api, team):
    api.patch(f"/api/teams/{team.pk}", {"paused": True}, content_type="application/json")
    items = api.get("/api/audit", {"object_type": "team"}).json()["items"]
    assert items[0]["action"] == "pause" and items[0]["old_values"] == {"paused": False}


def test_live_without_limiter_answer(api, team, monkeypatch):
    async def no_answer() -> None:
        return None

    monkeypatch.setattr(live, "snapshot_fetch", no_answer)
    monkeypatch.setattr(live.latest, "snapshot", None)
    body = api.get("/api/live").json()
    assert body["limiter_reachable"] is False and body["snapshot"] is None
    assert body["limits"]["teams"][0]["name"] == "search"
    assert body["limits"]["accounts"][0]["name"] == "together"


def test_live_carries_job_slots_and_named_scopes(api, team, monkeypatch):
    """/api/live answers the websocket's shapes: scopes with names, and every account's
    fine-tune and batch slots (the job slots were once declared but never filled)."""
    snapshot = {
        "type": "live.snapshot",
        "at": 1.0,
        "limiter": {"decisions": 1.0},
        "scopes": [
            {
                "kind": "account",
                "id": str(team.upstream_id),
                "endpoint": "chat",
                "model": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
                "limit_per_minute": 500.0,
                "burst": 1,
                "in_use": 0.0,
                "admitted_last_minute": 1,
                "queued": 0,
                "longest_wait": 0.0,
                "leases": 0,
                "max_concurrent": None,
                "tokens_per_minute": None,
                "tokens_in_use": None,
                "paused_for": 0.0,
                "refused_last_minute": {"gateway": 0, "upstream": 0},
            }
        ],
        "upstream_headers": {},
        "history": {},
    }

    async def fetch():
        return live.snapshot_enrich(
            snapshot, {"account": {str(team.upstream_id): {"name": "together"}}, "key": {}}
        )

    monkeypatch.setattr(live, "snapshot_fetch", fetch)
    body = api.get("/api/live").json()
    assert body["snapshot"]["scopes"][0]["account"] == "together"
    account = body["jobs"][str(team.upstream_id)]
    assert account["name"] == "together"
    assert account["fine_tunes"]["total"] == 3 and account["fine_tunes"]["used"] == 0
    assert account["batches"]["waiting"] == []
