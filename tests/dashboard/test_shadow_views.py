"""Shadow rows and budgets in the dashboard and the ops API: one switch each (a button, a
PATCH), audited and broadcast; an auditor may not switch; the 429 history shows and filters
the shadow records in its page, its CSV and its API."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from dashboard.models import AuditEntry
from limiter.models import ConfigVersion, EndpointLimit, LimitProfile, Refusal
from limiter.usage.models import Budget
from tests.dashboard.conftest import ADMIN_TOKEN, make_refusals, org_user
from tests.dashboard.test_views import read_streaming

pytestmark = pytest.mark.django_db


def chat_row() -> EndpointLimit:
    return EndpointLimit.objects.get(
        profile=LimitProfile.objects.get(name="default"), endpoint="chat", model=""
    )


def test_one_click_switches_a_row_to_shadow_and_back_audited_and_broadcast(staff_client):
    row = chat_row()
    version = ConfigVersion.current()
    url = reverse("dashboard:limit_shadow", args=[row.pk])
    assert staff_client.post(url, {"shadow": "1"}).status_code == 302
    row.refresh_from_db()
    assert row.shadow and ConfigVersion.current() > version
    entry = AuditEntry.objects.filter(object_type="endpointlimit", action="update").latest("id")
    assert (entry.old_values, entry.new_values) == ({"shadow": False}, {"shadow": True})
    page = staff_client.get(reverse("dashboard:profile", args=[row.profile_id])).content.decode()
    assert 'data-mode="shadow"' in page and ">Enforce</button>" in page
    assert staff_client.post(url, {"shadow": "0"}).status_code == 302
    row.refresh_from_db()
    assert not row.shadow


def test_an_auditor_sees_the_mode_but_may_not_switch_it():
    auditor = Client()
    auditor.force_login(org_user("audrey", "auditor"))
    row = chat_row()
    page = auditor.get(reverse("dashboard:profile", args=[row.profile_id])).content.decode()
    assert 'data-mode="enforced"' in page and "shadow-switch" not in page
    answer = auditor.post(reverse("dashboard:limit_shadow", args=[row.pk]), {"shadow": "1"})
    assert answer.status_code == 403
    row.refresh_from_db()
    assert not row.shadow
    assert Client().post(reverse("dashboard:limit_shadow", args=[row.pk])).status_code == 302
    assert an_operator_gets_404_for(row.pk + 10_000)


def an_operator_gets_404_for(pk: int) -> bool:
    client = Client()
    client.force_login(org_user("opal", "operator"))
    return (
        client.post(reverse("dashboard:limit_shadow", args=[pk]), {"shadow": "1"}).status_code
        == 404
    )


def test_a_budget_switches_on_the_team_page(staff_client, team):
    budget = Budget.objects.create(team=team, unit="tokens", period="day", limit=Decimal(100))
    url = reverse("dashboard:budget_shadow", args=[budget.pk])
    assert staff_client.post(url, {"shadow": "1"}).status_code == 302
    budget.refresh_from_db()
    assert budget.shadow
    entry = AuditEntry.objects.filter(object_type="budget", action="update").latest("id")
    assert entry.new_values == {"shadow": True}
    page = staff_client.get(reverse("dashboard:team", args=[team.pk])).content.decode()
    assert 'data-mode="shadow"' in page


def test_the_ops_api_switches_rows_and_budgets_with_one_call(client, admin_token, team):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {ADMIN_TOKEN}"}
    row = chat_row()
    answer = client.patch(
        f"/api/limits/{row.pk}", {"shadow": True}, content_type="application/json", **auth
    )
    assert answer.status_code == 200 and answer.json()["shadow"] is True
    row.refresh_from_db()
    assert row.shadow
    assert AuditEntry.objects.filter(object_type="endpointlimit", new_values={"shadow": True})
    budget = Budget.objects.create(team=team, unit="tokens", period="day", limit=Decimal(100))
    answer = client.patch(
        f"/api/budgets/{budget.pk}", {"shadow": True}, content_type="application/json", **auth
    )
    assert answer.status_code == 200 and answer.json()["shadow"] is True
    assert AuditEntry.objects.filter(object_type="budget", new_values={"shadow": True})
    bad = client.patch(
        f"/api/limits/{row.pk}", {"shadow": "maybe"}, content_type="application/json", **auth
    )
    assert bad.status_code == 400 and "error" in bad.json()


def test_the_429_history_marks_and_filters_shadow_records(staff_client, client, admin_token, team):
    make_refusals(team, 3)
    make_refusals(team, 2, reason="token_rate_limited")
    Refusal.objects.filter(reason="token_rate_limited").update(shadow=True)
    page = staff_client.get(reverse("dashboard:refusals"), {"mode": "shadow"}).content.decode()
    assert page.count('badge badge-shadow">shadow<') == 2
    page = staff_client.get(reverse("dashboard:refusals"), {"mode": "enforced"}).content.decode()
    assert "badge-shadow" not in page and page.count("<td>refused</td>") == 3
    csv = read_streaming(staff_client.get(reverse("dashboard:refusals_csv"), {"mode": "shadow"}))
    lines = csv.strip().splitlines()
    assert lines[0].endswith(",shadow") and len(lines) == 3
    auth = {"HTTP_AUTHORIZATION": f"Bearer {ADMIN_TOKEN}"}
    items = client.get("/api/refusals", {"mode": "shadow"}, **auth).json()["items"]
    assert [r["shadow"] for r in items] == [True, True]
    assert client.get("/api/refusals", {"mode": "bogus"}, **auth).status_code == 400
