"""The team page's budget forms: staff add and remove budgets, validated, audited,
CSRF-checked; another team's key cannot be chosen; non-staff and anonymous change nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from dashboard.models import AuditEntry
from limiter.services import key_issue
from limiter.usage.models import Budget

pytestmark = pytest.mark.django_db

VALID = {
    "model": "",
    "unit": "dollars",
    "period": "month",
    "limit": "25.50",
    "soft_threshold": "0.75",
}


def add(client: Client, team, **fields: str):
    return client.post(reverse("dashboard:budget_create", args=[team.pk]), {**VALID, **fields})


def test_staff_add_a_team_budget_shown_on_the_team_page_and_audited(staff_client, staff, team):
    response = add(staff_client, team)

    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard:team", args=[team.pk])
    budget = Budget.objects.get()
    assert (budget.team, budget.key, budget.model, budget.unit, budget.period) == (
        team,
        None,
        "",
        "dollars",
        "month",
    )
    assert (budget.limit, budget.soft_threshold) == (Decimal("25.50"), 0.75)
    entry = AuditEntry.objects.get(object_type="budget")
    assert (entry.actor, entry.action, entry.object_id) == (staff, "create", str(budget.pk))
    assert entry.new_values["limit"] == "25.50"
    page = staff_client.get(reverse("dashboard:team", args=[team.pk])).content.decode()
    assert 'id="budgets"' in page and "$25.5" in page and "75%" in page


def test_a_key_budget_names_one_of_the_teams_keys(staff_client, team, other_team):
    mine = key_issue(team=team).key
    theirs = key_issue(team=other_team).key

    refused = add(staff_client, team, key=str(theirs.pk), unit="tokens", limit="1000")
    assert refused.status_code == 400
    assert "Select a valid choice" in refused.content.decode()
    assert not Budget.objects.exists()

    assert add(staff_client, team, key=str(mine.pk), unit="tokens", limit="1000").status_code == 302
    assert Budget.objects.get().key == mine


@pytest.mark.parametrize(
    ("field", "value"),
    [("limit", "0"), ("limit", "-5"), ("soft_threshold", "1.5"), ("unit", "euros"), ("period", "")],
)
def test_a_refused_form_comes_back_with_its_errors(staff_client, team, field, value):
    response = add(staff_client, team, **{field: value})

    assert response.status_code == 400
    page = response.content.decode()
    assert 'id="budget-form"' in page and 'class="error"' in page
    assert not Budget.objects.exists()
    assert not AuditEntry.objects.filter(object_type="budget").exists()


def test_staff_remove_a_budget_audited(staff_client, staff, team):
    add(staff_client, team)
    budget = Budget.objects.get()

    response = staff_client.post(reverse("dashboard:budget_delete", args=[budget.pk]))

    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard:team", args=[team.pk])
    assert not Budget.objects.exists()
    entry = AuditEntry.objects.get(object_type="budget", action="delete")
    assert entry.actor == staff and entry.old_values["unit"] == "dollars"


def test_only_staff_with_a_csrf_token_change_budgets(client, outsider_client, staff, team):
    anonymous = add(client, team)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login/")
    # A user with no role sees no team: its budget form answers 404 (tests/dashboard/
    # test_route_table.py has the roles that see it and are refused, 403).
    assert add(outsider_client, team).status_code == 404
    no_token = Client(enforce_csrf_checks=True)
    no_token.force_login(staff)
    assert add(no_token, team).status_code == 403
    assert not Budget.objects.exists()
    # A GET changes nothing either.
    assert client.get(reverse("dashboard:budget_create", args=[team.pk])).status_code in (302, 405)
