"""Personas and data for the dashboard tests: an ops user (role admin), a user with no
role, two teams."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from dashboard.audit import ACCESS_ACTIONS
from dashboard.models import AuditEntry
from limiter.models import Refusal
from limiter.services import key_issue, team_get_or_create

ADMIN_TOKEN = "test-admin-token-0123456789"


def audited_changes():
    """The audit log's changes, without its sign-ins (force_login is one)."""
    return AuditEntry.objects.exclude(action__in=ACCESS_ACTIONS)


def org_user(username: str, role: str, password: str = "x"):
    """A user holding an organisation role, set as roles_grant sets it but without its
    audit entry (tests count the audit entries their own changes write)."""
    user = User.objects.create_user(username, password=password, is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def staff(db):
    return org_user("ops", "admin", password="ops-password")


@pytest.fixture
def outsider(django_user_model):
    return django_user_model.objects.create_user("dev", password="dev-password")


@pytest.fixture
def staff_client(staff) -> Client:
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def outsider_client(outsider) -> Client:
    client = Client()
    client.force_login(outsider)
    return client


@pytest.fixture
def team(db):
    return team_get_or_create(name="search")[0]


@pytest.fixture
def other_team(db):
    return team_get_or_create(name="ads")[0]


@pytest.fixture
def key(team):
    return key_issue(team=team, name="prod").key


@pytest.fixture
def admin_token(settings) -> str:
    settings.SLUICE_ADMIN_TOKEN = ADMIN_TOKEN
    return ADMIN_TOKEN


def make_refusals(
    team,
    n: int,
    *,
    endpoint: str = "chat",
    source: str = "gateway",
    start=None,
    step_seconds: float = 1.0,
    reason: str = "rate_limited",
    model: str = "meta-llama/Llama-3-8b",
    key_prefix: str = "sk-sluice-abc123",
):
    start = start or timezone.now() - timedelta(seconds=n * step_seconds)
    rows = [
        Refusal(
            created_at=start + timedelta(seconds=i * step_seconds),
            team=team,
            team_name=team.name if team else "",
            key_prefix=key_prefix,
            upstream="together",
            endpoint=endpoint,
            model=model,
            reason=reason,
            source=source,
            retry_after_seconds=1.5,
            request_id=f"req-{i}",
        )
        for i in range(n)
    ]
    return Refusal.objects.bulk_create(rows)
