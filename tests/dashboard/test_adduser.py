"""`manage.py adduser` and `bootstrap`: roles for scripts and the first set-up."""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from dashboard import policy
from dashboard.management.commands.adduser import MSG_NO_TEAM, MSG_NOTHING, MSG_TEAM_ROLE
from dashboard.models import AuditEntry, TeamMembership
from limiter.services import team_get_or_create

pytestmark = pytest.mark.django_db


def adduser(*args: str) -> str:
    out = io.StringIO()
    call_command("adduser", *args, stdout=out)
    return out.getvalue()


def test_creates_the_user_prints_the_password_once_and_grants_the_role() -> None:
    out = adduser("alice", "--role", "auditor")
    password = re.search(r"Password \(shown once\): (\S+)", out)
    assert password is not None
    alice = User.objects.get(username="alice")
    assert alice.check_password(password.group(1)) and alice.is_staff
    assert policy.allows(alice, policy.READ_ALL) and not policy.allows(alice, policy.LIMITS_WRITE)
    entry = AuditEntry.objects.get(action="role_grant")
    assert entry.actor_name == "adduser" and entry.new_values["role"] == "auditor"

    # Again: the user exists, no new password; the new organisation role replaces the old.
    again = adduser("alice", "--role", "operator")
    assert "Password" not in again
    alice = User.objects.get(username="alice")
    assert list(alice.groups.values_list("name", flat=True)) == ["operator"]


def test_team_roles_add_up_and_keep_the_user_off_staff() -> None:
    a, b = team_get_or_create(name="team-a")[0], team_get_or_create(name="team-b")[0]
    adduser("bob", "--team", "team-a", "--team-role", "maintainer")
    adduser("bob", "--team", "team-b", "--team-role", "viewer")
    bob = User.objects.get(username="bob")
    assert not bob.is_staff
    assert dict(TeamMembership.objects.filter(user=bob).values_list("team__name", "role")) == {
        "team-a": "maintainer",
        "team-b": "viewer",
    }
    assert policy.allows(bob, policy.TEAM_KEYS_WRITE, a)
    assert not policy.allows(bob, policy.TEAM_KEYS_WRITE, b)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["carol"], MSG_NOTHING),
        (["carol", "--team", "team-a"], MSG_TEAM_ROLE),
        (["carol", "--team", "nope", "--team-role", "viewer"], MSG_NO_TEAM.format(team="nope")),
    ],
)
def test_refuses_what_it_cannot_do_and_creates_nobody(args: list[str], message: str) -> None:
    team_get_or_create(name="team-a")
    with pytest.raises(CommandError, match=re.escape(message)):
        adduser(*args)
    assert not User.objects.filter(username="carol").exists()


def test_an_unknown_role_is_refused() -> None:
    with pytest.raises(CommandError):
        adduser("dave", "--role", "owner")
    assert not User.objects.filter(username="dave").exists()


def test_bootstrap_creates_the_first_admin_in_the_admin_group() -> None:
    out = io.StringIO()
    call_command("bootstrap", stdout=out)
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff
    assert list(admin.groups.values_list("name", flat=True)) == ["admin"]
    assert policy.allows(admin, policy.USERS_WRITE)
    assert "Password: " in out.getvalue()
