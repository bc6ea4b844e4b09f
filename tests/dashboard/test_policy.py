"""The policy's table, role by action, and the role service that feeds it."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User

from dashboard import policy
from dashboard.models import AuditEntry, TeamMembership
from dashboard.roles import RoleError, role_grant, role_revoke, roles_set
from limiter.models import Team
from limiter.services import team_get_or_create

pytestmark = pytest.mark.django_db

ORG_ACTIONS = sorted(policy.ACTIONS - policy.TEAM_ACTIONS)

# role -> the actions it holds over the whole organisation (and so on every team).
EXPECTED_ORG = {
    "admin": set(policy.ACTIONS),
    "operator": {
        policy.READ_ALL,
        policy.LIMITS_WRITE,
        policy.TEAMS_WRITE,
        policy.KEYS_WRITE,
        policy.BUDGETS_WRITE,
        policy.ALERTS_WRITE,
        policy.TEAM_READ,
        policy.SHARED_READ,
        policy.TEAM_KEYS_WRITE,
        policy.TOKENS_OWN,
    },
    "auditor": {policy.READ_ALL, policy.TEAM_READ, policy.SHARED_READ, policy.TOKENS_OWN},
}
# team role -> the actions it holds on its own team (and nothing else anywhere).
EXPECTED_TEAM = {
    "viewer": {policy.TEAM_READ, policy.SHARED_READ},
    "maintainer": {policy.TEAM_READ, policy.SHARED_READ, policy.TEAM_KEYS_WRITE},
}


@pytest.fixture
def teams() -> tuple[Team, Team]:
    return team_get_or_create(name="team-a")[0], team_get_or_create(name="team-b")[0]


def _user(name: str, **extra) -> User:
    return User.objects.create_user(name, password="x", **extra)


@pytest.mark.parametrize("role", sorted(EXPECTED_ORG))
@pytest.mark.parametrize("action", sorted(policy.ACTIONS))
def test_org_role_table(role: str, action: str, teams: tuple[Team, Team]) -> None:
    user = _user("u")
    role_grant(user=user, role=role, actor=None, source="test")
    expected = action in EXPECTED_ORG[role]
    assert policy.allows(user, action) is expected
    for team in teams:  # an organisation role acts on every team alike
        assert policy.allows(user, action, team) is expected


@pytest.mark.parametrize("role", sorted(EXPECTED_TEAM))
@pytest.mark.parametrize("action", sorted(policy.ACTIONS - {policy.TOKENS_OWN}))
def test_team_role_table(role: str, action: str, teams: tuple[Team, Team]) -> None:
    team_a, team_b = teams
    user = _user("u")
    role_grant(user=user, role=role, team=team_a, actor=None, source="test")
    assert policy.allows(user, action, team_a) is (action in EXPECTED_TEAM[role])
    assert policy.allows(user, action, team_b) is False
    assert policy.allows(user, action) is False


@pytest.mark.parametrize("action", sorted(policy.ACTIONS))
def test_no_role_anonymous_and_inactive_are_refused(action: str, teams) -> None:
    from django.contrib.auth.models import AnonymousUser

    plain = _user("plain", is_staff=True)  # staff alone grants nothing any more
    inactive = _user("gone", is_active=False)
    role_grant(user=inactive, role="admin", actor=None, source="test")
    for user in (plain, AnonymousUser(), inactive):
        assert policy.allows(user, action) is False
        assert policy.allows(user, action, teams[0]) is False


def test_superuser_is_admin(teams) -> None:
    root = User.objects.create_superuser("root", password="x")
    assert all(policy.allows(root, action, teams[0]) for action in policy.ACTIONS)


def test_unknown_action_is_refused_to_admin() -> None:
    root = User.objects.create_superuser("root", password="x")
    assert policy.allows(root, "drop_database") is False


def test_teams_visible(teams) -> None:
    team_a, team_b = teams
    auditor, member, nobody = _user("aud"), _user("mem"), _user("nobody")
    role_grant(user=auditor, role="auditor", actor=None, source="test")
    role_grant(user=member, role="viewer", team=team_a, actor=None, source="test")
    assert set(policy.teams_visible(auditor)) >= {team_a, team_b}
    assert list(policy.teams_visible(member)) == [team_a]
    assert list(policy.teams_visible(nobody)) == []
    # Whose rows the shared views show: every row (None) to an organisation role.
    assert policy.team_rows(auditor) is None
    assert policy.team_rows(member) == {team_a.pk}
    assert policy.team_rows(nobody) == frozenset()


def test_groups_carry_model_permissions() -> None:
    auditor = set(Group.objects.get(name="auditor").permissions.values_list("codename", flat=True))
    operator = set(
        Group.objects.get(name="operator").permissions.values_list("codename", flat=True)
    )
    admin = Group.objects.get(name="admin").permissions.count()
    assert auditor and all(codename.startswith("view_") for codename in auditor)
    assert {"view_refusal", "view_auditentry", "view_budget"} <= auditor
    assert {"change_endpointlimit", "add_apikey", "delete_budget", "change_team"} <= operator
    assert not {"change_webhook", "change_upstreamaccount", "change_user"} & operator
    assert "change_modelprice" not in operator
    assert admin > len(operator)


def test_org_role_sets_staff_and_is_single(teams) -> None:
    user = _user("u")
    role_grant(user=user, role="auditor", actor=None, source="test")
    user.refresh_from_db()
    assert user.is_staff
    role_grant(user=user, role="operator", actor=None, source="test")
    assert list(user.groups.values_list("name", flat=True)) == ["operator"]
    assert role_revoke(user=user, actor=None, source="test") is True
    user.refresh_from_db()
    assert not user.is_staff and not user.groups.exists()
    assert not policy.allows(user, policy.READ_ALL)


def test_role_changes_are_audited(teams) -> None:
    team_a, _ = teams
    actor = User.objects.create_superuser("root", password="x")
    user = _user("u")
    role_grant(user=user, role="auditor", actor=actor, source="adduser")
    role_grant(user=user, role="maintainer", team=team_a, actor=None, source="adduser")
    role_revoke(user=user, team=team_a, actor=None, source="adduser")
    entries = list(AuditEntry.objects.order_by("id"))
    assert [(e.action, e.actor_name, e.object_repr) for e in entries] == [
        ("role_grant", "root", "u"),
        ("role_grant", "adduser", "u"),
        ("role_revoke", "adduser", "u"),
    ]
    assert entries[0].new_values == {"role": "auditor", "team": None, "source": "adduser"}
    assert entries[2].old_values == {"role": "maintainer", "team": "team-a", "source": "adduser"}
    # Granting what is held changes nothing and writes nothing.
    assert role_grant(user=user, role="auditor", actor=None, source="adduser") is False
    assert AuditEntry.objects.count() == 3


def test_roles_set_replaces_everything(teams, caplog) -> None:
    team_a, team_b = teams
    user = _user("u")
    roles_set(
        user=user,
        org_role="operator",
        team_roles={"team-a": "viewer", "team-b": "maintainer"},
        actor=None,
        source="oidc",
    )
    assert policy.allows(user, policy.LIMITS_WRITE)
    roles_set(
        user=user,
        org_role=None,
        team_roles={"team-a": "maintainer", "no-such-team": "viewer"},
        actor=None,
        source="oidc",
    )
    user.refresh_from_db()
    assert not user.is_staff
    assert dict(TeamMembership.objects.filter(user=user).values_list("team__name", "role")) == {
        "team-a": "maintainer"
    }
    assert "no-such-team" in caplog.text
    assert policy.allows(user, policy.TEAM_KEYS_WRITE, team_a)
    assert not policy.allows(user, policy.TEAM_READ, team_b)
    assert not policy.allows(user, policy.LIMITS_WRITE)
    actions = list(AuditEntry.objects.values_list("action", flat=True))
    # operator, a:viewer, b:maintainer granted; operator, b, a:viewer removed; a:maintainer.
    assert actions.count("role_grant") == 4 and actions.count("role_revoke") == 3


def test_unknown_roles_are_refused_and_change_nothing(teams) -> None:
    user = _user("u")
    with pytest.raises(RoleError):
        roles_set(
            user=user, org_role="auditor", team_roles={"team-a": "owner"}, actor=None, source="x"
        )
    with pytest.raises(RoleError):
        role_grant(user=user, role="root", actor=None, source="x")
    assert not user.groups.exists() and AuditEntry.objects.count() == 0
