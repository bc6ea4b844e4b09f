"""Issue 21: shares, priorities and weights set through the ops API and the team page:
validated (shares on one scope add up to at most 100%: a 400 naming the field, a form
error), audited, and read by auditors who change nothing."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from dashboard.models import AuditEntry
from limiter.models import ConfigVersion, Share, Team, UpstreamAccount
from tests.dashboard.conftest import audited_changes, org_user

pytestmark = pytest.mark.django_db


def client_of(role: str) -> Client:
    client = Client()
    client.force_login(org_user(role, role))
    return client


@pytest.fixture
def account():
    return UpstreamAccount.objects.get(is_default=True)


def share_in(team: Team, fraction: float, **extra) -> dict:
    return {"account": "together", "team": team.name, "endpoint": "chat", "fraction": fraction} | (
        extra
    )


def post(client: Client, url: str, body: dict):
    return client.post(url, body, content_type="application/json")


def test_shares_through_the_api_held_to_100_percent_and_audited(team, other_team, account):
    ops = client_of("operator")
    before = ConfigVersion.current()
    created = post(ops, "/api/shares", share_in(team, 0.6))
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["team"], body["fraction"], body["model"]) == (team.name, 0.6, "")
    assert ConfigVersion.current() > before  # in force at once: the limiter reloads
    over = post(ops, "/api/shares", share_in(other_team, 0.5))
    assert over.status_code == 400
    assert "110%" in over.json()["error"]["fields"]["fraction"][0]
    assert Share.objects.count() == 1
    # The model's own row replaces the endpoint's there.
    ok = post(ops, "/api/shares", share_in(other_team, 0.4, model="Org/Model-A"))
    assert ok.status_code == 201 and ok.json()["model"] == "org/model-a"
    share_id = created.json()["id"]
    raised = ops.patch(
        f"/api/shares/{share_id}", {"fraction": 0.7}, content_type="application/json"
    )
    assert raised.status_code == 400  # 0.7 + 0.4 on org/model-a
    assert Share.objects.get(pk=share_id).fraction == 0.6
    assert ops.delete(f"/api/shares/{share_id}").status_code == 204
    actions = list(audited_changes().order_by("id").values_list("action", "object_type"))
    assert actions == [("create", "share"), ("create", "share"), ("delete", "share")]


def test_bad_numbers_are_a_400_before_the_database(team):
    ops = client_of("admin")
    for fraction in (0, -0.1, 1.5, "nan", 1e400):
        answer = post(ops, "/api/shares", share_in(team, fraction))
        assert answer.status_code == 400, fraction
    bad_weight = ops.patch(
        f"/api/teams/{team.pk}/sharing", {"weight": 1e9}, content_type="application/json"
    )
    assert bad_weight.status_code == 400
    bad_priority = ops.patch(
        f"/api/teams/{team.pk}/sharing", {"priority": "urgent"}, content_type="application/json"
    )
    assert bad_priority.status_code == 400
    assert not Share.objects.exists()


def test_a_teams_priority_and_weight_and_a_keys_own_priority(team, key):
    ops = client_of("operator")
    answer = ops.patch(
        f"/api/teams/{team.pk}/sharing",
        {"priority": "critical", "weight": 3},
        content_type="application/json",
    )
    assert answer.json() == {"id": team.pk, "name": team.name, "priority": "critical", "weight": 3}
    key_answer = ops.patch(
        f"/api/keys/{key.pk}/priority", {"priority": "background"}, content_type="application/json"
    )
    assert key_answer.json()["effective_priority"] == "background"
    back = ops.patch(
        f"/api/keys/{key.pk}/priority", {"priority": ""}, content_type="application/json"
    )
    assert back.json()["effective_priority"] == "critical"  # the team's again
    assert client_of("auditor").get(f"/api/teams/{team.pk}/sharing").json()["weight"] == 3


def test_an_auditor_reads_shares_and_changes_nothing(team, account):
    Share.objects.create(account=account, team=team, endpoint="chat", fraction=0.3)
    auditor = client_of("auditor")
    assert [s["fraction"] for s in auditor.get("/api/shares").json()] == [0.3]
    assert post(auditor, "/api/shares", share_in(team, 0.1)).status_code == 403
    page = auditor.get(reverse("dashboard:team", args=[team.pk]))
    assert b'id="shares"' in page.content and b"30%" in page.content
    assert b'id="share-form"' not in page.content  # no control it may not use
    assert Share.objects.count() == 1


def test_the_team_page_adds_a_share_and_shows_a_total_past_100_percent_as_a_form_error(
    team, other_team, account
):
    Share.objects.create(account=account, team=other_team, endpoint="chat", fraction=0.7)
    ops = client_of("operator")
    url = reverse("dashboard:share_create", args=[team.pk])
    refused = ops.post(url, {"account": account.pk, "endpoint": "chat", "fraction": "0.5"})
    assert refused.status_code == 400
    assert b"120%" in refused.content
    assert not Share.objects.filter(team=team).exists()
    added = ops.post(url, {"account": account.pk, "endpoint": "chat", "fraction": "0.3"})
    assert added.status_code == 302
    share = Share.objects.get(team=team)
    assert share.fraction == 0.3 and share.key is None
    sharing = ops.post(
        reverse("dashboard:team_sharing", args=[team.pk]), {"priority": "background", "weight": "2"}
    )
    assert sharing.status_code == 302
    team.refresh_from_db()
    assert (team.priority, team.weight) == ("background", 2.0)
    removed = ops.post(reverse("dashboard:share_delete", args=[share.pk]))
    assert removed.status_code == 302 and not Share.objects.filter(pk=share.pk).exists()
    assert AuditEntry.objects.filter(object_type="share", action="delete").count() == 1


def test_a_keys_share_on_the_team_page_is_the_keys_alone(team, key, other_team, account):
    ops = client_of("admin")
    url = reverse("dashboard:share_create", args=[team.pk])
    added = ops.post(
        url, {"account": account.pk, "endpoint": "chat", "fraction": "0.2", "key": key.pk}
    )
    assert added.status_code == 302, added.content
    share = Share.objects.get()
    assert (share.key, share.team) == (key, None)
    # Another team's key is not a choice here.
    other_key = other_team.keys.create(secret_hash="x" * 64, prefix="sk-sluice-zzzzzz")
    wrong = ops.post(
        url, {"account": account.pk, "endpoint": "chat", "fraction": "0.1", "key": other_key.pk}
    )
    assert wrong.status_code == 400
