"""The dashboard pages: access, forms, audit entries, keys, the 429 history."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse
from django.utils import timezone

from dashboard.forms import MSG_BURST, MSG_NEGATIVE, MSG_RATE
from dashboard.models import AuditEntry
from limiter.models import ApiKey, EndpointLimit, LimitProfile, Refusal, Team
from tests.dashboard.conftest import audited_changes, make_refusals

pytestmark = pytest.mark.django_db

PAGES = [
    "dashboard:overview",
    "dashboard:limits",
    "dashboard:teams",
    "dashboard:refusals",
    "dashboard:audit",
]


def chat_limit(profile_name: str = "default") -> EndpointLimit:
    return EndpointLimit.objects.get(profile__name=profile_name, endpoint="chat")


# --- access -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", PAGES)
def test_anonymous_is_sent_to_login(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("name", PAGES)
def test_non_staff_gets_403(outsider_client, name):
    assert outsider_client.get(reverse(name)).status_code == 403


@pytest.mark.parametrize("name", PAGES)
def test_staff_sees_every_page(staff_client, team, name):
    response = staff_client.get(reverse(name))
    assert response.status_code == 200
    assert b"Sluice" in response.content


def test_login_page_logs_staff_in(client, staff):
    response = client.post("/login/", {"username": "ops", "password": "ops-password"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200


def test_forms_need_csrf(staff):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    response = client.post(reverse("dashboard:limit_edit", args=[chat_limit().pk]), {"burst": 1})
    assert response.status_code == 403


def test_sandbox_banner(staff_client, settings):
    settings.SLUICE_SANDBOX = True
    assert b"Sandbox upstream" in staff_client.get("/").content
    settings.SLUICE_SANDBOX = False
    assert b"Sandbox upstream" not in staff_client.get("/").content


# --- limits --------------------------------------------------------------------------------
def limit_post(limit: EndpointLimit, **changes) -> dict:
    data = {
        "requests_per_minute": limit.requests_per_minute,
        "pace_per_minute": limit.pace_per_minute or "",
        "burst": limit.burst,
        "tokens_per_minute": "",
        "max_concurrent": "",
        "queue_depth": limit.queue_depth,
        "max_queue_wait_seconds": limit.max_queue_wait_seconds,
        "max_batch_requests": "",
    }
    data.update(changes)
    return data


def test_limit_edit_saves_and_audits_old_and_new(staff_client, staff):
    limit = chat_limit()
    old = {
        "requests_per_minute": limit.requests_per_minute,
        "pace_per_minute": limit.pace_per_minute,
        "burst": limit.burst,
    }
    response = staff_client.post(
        reverse("dashboard:limit_edit", args=[limit.pk]),
        limit_post(limit, requests_per_minute=120, pace_per_minute="", burst=7),
    )
    assert response.status_code == 302
    limit.refresh_from_db()
    assert (limit.requests_per_minute, limit.pace_per_minute, limit.burst) == (120, None, 7)
    entry = AuditEntry.objects.get(object_type="endpointlimit", object_id=str(limit.pk))
    assert entry.actor == staff and entry.actor_name == "ops" and entry.action == "update"
    assert entry.old_values == old
    assert entry.new_values == {"requests_per_minute": 120, "pace_per_minute": None, "burst": 7}


def test_limit_edit_unchanged_writes_no_audit(staff_client):
    limit = chat_limit()
    staff_client.post(reverse("dashboard:limit_edit", args=[limit.pk]), limit_post(limit))
    assert not audited_changes().exists()


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"requests_per_minute": 0}, "requests_per_minute", MSG_RATE),
        ({"burst": 0}, "burst", MSG_BURST),
        ({"queue_depth": -1}, "queue_depth", MSG_NEGATIVE),
        ({"max_queue_wait_seconds": -0.5}, "max_queue_wait_seconds", MSG_NEGATIVE),
    ],
)
def test_limit_form_errors(staff_client, changes, field, message):
    limit = chat_limit()
    response = staff_client.post(
        reverse("dashboard:limit_edit", args=[limit.pk]), limit_post(limit, **changes)
    )
    assert response.status_code == 200
    assert message in response.context["form"].errors[field]
    assert message in response.content.decode()
    assert EndpointLimit.objects.filter(
        pk=limit.pk, requests_per_minute=limit.requests_per_minute, burst=limit.burst
    ).exists()
    assert not audited_changes().exists()


def test_limit_above_upstream_ceiling_is_saved_but_flagged(staff_client, staff, team):
    profile = LimitProfile.objects.create(name="big")
    limit = EndpointLimit.objects.create(
        profile=profile, endpoint="chat", requests_per_minute=100, burst=5
    )
    team.profile = profile
    team.save()
    response = staff_client.post(
        reverse("dashboard:limit_edit", args=[limit.pk]),
        limit_post(limit, requests_per_minute=900),
        follow=True,
    )
    limit.refresh_from_db()
    assert limit.requests_per_minute == 900
    text = response.content.decode()
    assert "above the upstream ceiling of 600" in text


def test_profile_create_copies_default_limits(staff_client):
    response = staff_client.post(
        reverse("dashboard:limits"), {"name": "batch-heavy", "description": "x"}
    )
    profile = LimitProfile.objects.get(name="batch-heavy")
    assert response.status_code == 302 and response["Location"] == reverse(
        "dashboard:profile", args=[profile.pk]
    )
    assert profile.limits.count() == LimitProfile.objects.get(name="default").limits.count()
    assert AuditEntry.objects.get(object_type="limitprofile").new_values["copied_from"] == "default"


def test_profile_create_duplicate_name_is_an_error(staff_client):
    response = staff_client.post(reverse("dashboard:limits"), {"name": "default"}, follow=True)
    assert "already taken" in response.content.decode()


def test_assign_profile_and_pause_team(staff_client, team):
    other = LimitProfile.objects.create(name="small")
    staff_client.post(reverse("dashboard:team_profile", args=[team.pk]), {"profile": other.pk})
    staff_client.post(reverse("dashboard:team_pause", args=[team.pk]), {"paused": "1"})
    team.refresh_from_db()
    assert team.profile == other and team.paused
    actions = list(
        AuditEntry.objects.filter(object_type="team")
        .order_by("id")
        .values_list("action", "old_values", "new_values")
    )
    assert actions == [
        ("assign_profile", {"profile": "default"}, {"profile": "small"}),
        ("pause", {"paused": False}, {"paused": True}),
    ]
    staff_client.post(reverse("dashboard:team_pause", args=[team.pk]), {"paused": "0"})
    team.refresh_from_db()
    assert not team.paused


def test_pause_needs_post(staff_client, team):
    assert staff_client.get(reverse("dashboard:team_pause", args=[team.pk])).status_code == 405


# --- keys ---------------------------------------------------------------------------------------
def test_key_create_shows_secret_once(staff_client, team):
    response = staff_client.post(reverse("dashboard:key_create", args=[team.pk]), {"name": "ci"})
    assert response.status_code == 200
    key = ApiKey.objects.get(team=team, name="ci")
    secret = response.context["issued"].secret
    assert secret.startswith(key.prefix) and ApiKey.hash_secret(secret) == key.secret_hash
    assert secret in response.content.decode()
    # Not kept anywhere: the next view of the page does not show it.
    assert (
        secret not in staff_client.get(reverse("dashboard:team", args=[team.pk])).content.decode()
    )
    assert secret not in str(dict(staff_client.session))
    assert (
        AuditEntry.objects.get(object_type="apikey", action="create").new_values["prefix"]
        == key.prefix
    )


def test_team_page_lists_only_its_keys(staff_client, team, other_team, key):
    from limiter.services import key_issue

    theirs = key_issue(team=other_team).key
    text = staff_client.get(reverse("dashboard:team", args=[team.pk])).content.decode()
    assert key.prefix in text
    assert theirs.prefix not in text


def test_key_revoke_and_rotate(staff_client, key):
    response = staff_client.post(reverse("dashboard:key_rotate", args=[key.pk]))
    assert response.status_code == 200
    key.refresh_from_db()
    assert key.revoked_at is not None
    new = ApiKey.objects.get(team=key.team, revoked_at__isnull=True)
    assert response.context["issued"].key == new
    staff_client.post(reverse("dashboard:key_revoke", args=[new.pk]))
    new.refresh_from_db()
    assert new.revoked_at is not None
    assert list(audited_changes().order_by("id").values_list("action", flat=True)) == [
        "rotate",
        "create",
        "revoke",
    ]


# --- 429 history ----------------------------------------------------------------------------------
def test_refusals_keyset_pagination(staff_client, team):
    rows = make_refusals(team, 120)
    newest_first = sorted(rows, key=lambda r: (r.created_at, r.pk), reverse=True)
    seen: list[int] = []
    url = reverse("dashboard:refusals")
    while url:
        response = staff_client.get(url)
        page = response.context["page"]
        seen += [r.pk for r in page.rows]
        url = (
            f"{reverse('dashboard:refusals')}?after={page.next_cursor}"
            if page.next_cursor
            else None
        )
    assert seen == [r.pk for r in newest_first]


def test_refusals_pagination_ties_on_created_at(staff_client, team):
    moment = timezone.now()
    make_refusals(team, 75, step_seconds=0, start=moment)  # all at the same instant
    first = staff_client.get(reverse("dashboard:refusals")).context["page"]
    second = staff_client.get(reverse("dashboard:refusals"), {"after": first.next_cursor}).context[
        "page"
    ]
    ids = [r.pk for r in first.rows + second.rows]
    assert len(ids) == len(set(ids)) == 75 and second.next_cursor is None


def test_refusals_filters(staff_client, team, other_team):
    make_refusals(team, 5, endpoint="chat")
    make_refusals(team, 3, endpoint="embeddings", source="upstream", reason="upstream_rate_limited")
    make_refusals(other_team, 4, endpoint="chat")
    get = lambda **q: staff_client.get(reverse("dashboard:refusals"), q).context["page"].rows  # noqa: E731
    assert len(get(team="search")) == 8
    assert len(get(team="search", endpoint="chat")) == 5
    assert len(get(source="upstream")) == 3
    assert len(get(reason="upstream_rate_limited")) == 3
    assert len(get(key_prefix="sk-sluice-abc")) == 12
    assert len(get(model="nope")) == 0
    hour_ago = (timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert len(get(end=hour_ago)) == 0


def test_refusals_chart_counts_per_minute(staff_client, team):
    start = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=10)
    make_refusals(team, 30, start=start, step_seconds=10)  # 6 a minute for 5 minutes
    chart = staff_client.get(reverse("dashboard:refusals")).context["chart"]
    assert [n for _, n in chart] == [6, 6, 6, 6, 6]
    assert chart[0][0] == int(start.timestamp())


def read_streaming(response) -> str:
    """The body of an async-streamed response (the CSV streams from an async iterator)."""

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(collect)().decode()


def test_refusals_csv_is_streamed_with_filters(staff_client, team, other_team):
    make_refusals(team, 7, endpoint="chat")
    make_refusals(other_team, 4, endpoint="chat")
    response = staff_client.get(reverse("dashboard:refusals_csv"), {"team": "ads"})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    body = read_streaming(response)
    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0][:3] == ["created_at", "team_name", "key_prefix"]
    assert len(rows) == 5 and {r[1] for r in rows[1:]} == {"ads"}


def test_audit_page_lists_changes(staff_client, team):
    staff_client.post(reverse("dashboard:team_pause", args=[team.pk]), {"paused": "1"})
    text = staff_client.get(reverse("dashboard:audit")).content.decode()
    assert "pause" in text and "paused=True" in text and Team.objects.get().paused


def test_refusal_table_untouched_by_pages(staff_client):
    staff_client.get(reverse("dashboard:refusals"))
    assert not Refusal.objects.exists()
