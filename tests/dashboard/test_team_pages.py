"""A team's own pages: where a team user lands, what their team page shows (limits in
force, usage this month, budgets, latest 429s with what to do, keys by prefix, its rows
of the live view), key controls for a maintainer only, other teams 404."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client

from dashboard import live
from dashboard.models import AuditEntry
from dashboard.roles import role_grant
from dashboard.selectors import REFUSAL_ADVICE
from limiter import selectors
from limiter.jobs.models import Job, JobKind, JobState
from limiter.models import ApiKey, LimitProfile
from limiter.services import key_issue
from limiter.usage.models import UsageRollup
from tests.dashboard.conftest import make_refusals, org_user

pytestmark = pytest.mark.django_db

KEY_FORMS = re.compile(rb'action="/(teams/\d+/keys|keys/\d+/(revoke|rotate))/"')


def member(name: str, team, role: str) -> Client:
    user = User.objects.create_user(name, password="x")
    role_grant(user=user, role=role, team=team, actor=None, source="test")
    client = Client()
    client.force_login(user)
    return client


def test_team_user_lands_on_their_team(team):
    viewer = member("vic", team, "viewer")
    response = viewer.get("/")
    assert response.status_code == 302 and response.url == f"/teams/{team.pk}/"


def test_team_user_on_several_teams_chooses(team, other_team):
    from limiter.services import team_get_or_create

    third = team_get_or_create(name="third")[0]
    client = member("mo", team, "viewer")
    user = User.objects.get(username="mo")
    role_grant(user=user, role="maintainer", team=other_team, actor=None, source="test")
    response = client.get("/")
    assert response.status_code == 200
    body = response.content.decode()
    assert f'href="/teams/{team.pk}/"' in body and f'href="/teams/{other_team.pk}/"' in body
    assert third.name not in body


def test_org_role_lands_on_the_live_overview():
    client = Client()
    client.force_login(org_user("audrey", "auditor"))
    response = client.get("/")
    assert response.status_code == 200
    assert "dashboard/overview.html" in [t.name for t in response.templates]


def test_viewer_sees_their_team_and_no_key_control(team, other_team, key):
    make_refusals(team, 2, reason="rate_limited", key_prefix=key.prefix)
    make_refusals(team, 1, reason="budget_exceeded", key_prefix=key.prefix)
    make_refusals(other_team, 1, reason="queue_full", key_prefix="sk-sluice-other0")
    UsageRollup.objects.create(
        minute=key.created_at.replace(second=0, microsecond=0),
        team=team,
        team_name=team.name,
        key_prefix=key.prefix,
        endpoint="chat",
        model="meta-llama/Llama-3-8b",
        requests=3,
        total_tokens=300,
        cost="0.0123",
    )
    viewer = member("vic", team, "viewer")
    response = viewer.get(f"/teams/{team.pk}/")
    assert response.status_code == 200
    body = response.content
    # Limits in force, from the team's profile.
    limits = response.context["limits"]
    assert limits and all(row.profile_id == team.profile_id for row in limits)
    assert b'id="limits-in-force"' in body and b'data-endpoint="chat"' in body
    # Usage this month and the latest 429s with what to do about each; its own only.
    assert response.context["usage"].total["requests"] == 3
    assert b"meta-llama/Llama-3-8b" in body
    reasons = [row.refusal.reason for row in response.context["refusals"]]
    assert sorted(reasons) == ["budget_exceeded", "rate_limited", "rate_limited"]
    assert REFUSAL_ADVICE["rate_limited"].encode() in body
    assert REFUSAL_ADVICE["budget_exceeded"].encode() in body
    assert b"sk-sluice-other0" not in body and b"queue_full" not in body
    # Keys by prefix, and no control to change them.
    assert key.prefix.encode() in body
    assert not KEY_FORMS.search(body)
    assert b'id="key-form"' not in body
    # No navigation to the organisation's pages.
    assert b'href="/limits/"' not in body and b'href="/audit/"' not in body


def test_viewer_is_refused_key_writes(team, key):
    viewer = member("vic", team, "viewer")
    assert viewer.post(f"/teams/{team.pk}/keys/", {"name": "x"}).status_code == 403
    assert viewer.post(f"/keys/{key.pk}/revoke/").status_code == 403
    assert viewer.post(f"/keys/{key.pk}/rotate/").status_code == 403
    assert ApiKey.objects.filter(team=team).count() == 1
    key.refresh_from_db()
    assert key.revoked_at is None


def test_other_teams_pages_are_404(team, other_team):
    theirs = key_issue(team=other_team, name="theirs").key
    for role in ("viewer", "maintainer"):
        client = member(f"u-{role}", team, role)
        assert client.get(f"/teams/{other_team.pk}/").status_code == 404
        assert client.post(f"/teams/{other_team.pk}/keys/", {"name": "x"}).status_code == 404
        assert client.post(f"/keys/{theirs.pk}/revoke/").status_code == 404
        assert client.get(f"/api/teams/{other_team.pk}/now").status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None and ApiKey.objects.filter(team=other_team).count() == 1


def test_maintainer_creates_rotates_and_revokes_within_the_profile(team):
    LimitProfile.objects.create(name="big")
    maintainer = member("maya", team, "maintainer")
    page = maintainer.get(f"/teams/{team.pk}/")
    assert b'id="key-form"' in page.content and b'name="profile"' not in page.content

    # A profile sent anyway is not used: the key keeps the team's profile.
    big = LimitProfile.objects.get(name="big")
    response = maintainer.post(f"/teams/{team.pk}/keys/", {"name": "ci", "profile": big.pk})
    assert response.status_code == 200
    key = ApiKey.objects.get(team=team)
    assert key.profile is None
    secret = response.context["issued"].secret
    assert secret.encode() in response.content
    assert secret.encode() not in maintainer.get(f"/teams/{team.pk}/").content
    assert AuditEntry.objects.get(object_type="apikey", action="create").actor_name == "maya"

    rotated = maintainer.post(f"/keys/{key.pk}/rotate/")
    assert rotated.status_code == 200
    new = ApiKey.objects.get(team=team, revoked_at__isnull=True)
    assert new.pk != key.pk
    assert maintainer.post(f"/keys/{new.pk}/revoke/").status_code == 302
    assert not ApiKey.objects.filter(team=team, revoked_at__isnull=True).exists()


def _scope(kind: str, id: str, **extra) -> dict:
    return {
        "kind": kind,
        "id": id,
        "endpoint": "chat",
        "model": "",
        "limit_per_minute": 60.0,
        "burst": 5,
        "in_use": 2.0,
        "admitted_last_minute": 4,
        "queued": 3,
        "longest_wait": 1.5,
        "leases": 1,
        "max_concurrent": 4,
        "tokens_per_minute": None,
        "tokens_in_use": None,
        "paused_for": 0.0,
        "refused_last_minute": {"gateway": 2, "upstream": 0},
        **extra,
    }


def _job(public_id: str, team, kind: str = JobKind.FINE_TUNE, **extra) -> Job:
    return Job.objects.create(
        public_id=public_id, kind=kind, team=team, account=team.upstream, request={}, **extra
    )


def test_team_now_has_its_own_scopes_and_job_places(team, other_team, key, monkeypatch):
    theirs = key_issue(team=other_team).key
    snapshot = {
        "type": "live.snapshot",
        "at": 1.0,
        "limiter": {},
        "scopes": [
            _scope("key", str(key.pk)),
            _scope("key", str(theirs.pk), queued=9),
            _scope("account", str(team.upstream_id), model="m"),
        ],
        "upstream_headers": {},
        "history": {},
    }

    names = selectors.scope_names()

    async def fetch():
        live.latest.store(live.snapshot_enrich(snapshot, names))
        return live.latest.snapshot

    monkeypatch.setattr(live, "latest", live.Latest())  # this test's own, not the module's
    monkeypatch.setattr(live, "snapshot_fetch", fetch)
    _job("ft-theirs-1", other_team)  # queued first
    _job("ft-mine-1", team)
    _job("batch-mine-1", team, kind=JobKind.BATCH)
    viewer = member("vic", team, "viewer")
    body = viewer.get(f"/api/teams/{team.pk}/now").json()
    assert body["limiter_reachable"] is True
    assert [(s["key_prefix"], s["queued"]) for s in body["scopes"]] == [(key.prefix, 3)]
    assert body["scopes"][0]["refused_last_minute"] == {"gateway": 2, "upstream": 0}
    places = {(j["kind"], j["job"], j["state"], j["position"]) for j in body["jobs"]}
    assert places == {
        ("fine_tune", "ft-mine-1", "waiting", 2),
        ("batch", "batch-mine-1", "waiting", 1),
    }
    assert "ft-theirs-1" not in str(body) and other_team.name not in str(body)

    Job.objects.filter(public_id="ft-theirs-1").update(state=JobState.RUNNING)
    body = viewer.get(f"/api/teams/{team.pk}/now").json()
    assert ("fine_tune", "ft-mine-1", "waiting", 1) in {
        (j["kind"], j["job"], j["state"], j["position"]) for j in body["jobs"]
    }
