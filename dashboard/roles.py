"""Who holds which role: the organisation roles (Django Groups `admin`, `operator`,
`auditor`, at most one per user) and team roles (TeamMembership rows).

Every change goes through `roles_set`, `role_grant` or `role_revoke`, which keep
`is_staff` in step with the organisation role (Django's admin lets in staff only, then
asks the group's permissions) and write an AuditEntry for each grant and removal in the
same transaction. `dashboard/policy.py` reads these roles.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from django.contrib.auth.models import Group, User
from django.db import transaction

from dashboard.models import AuditEntry, TeamMembership, TeamRole
from dashboard.policy import ORG_ROLES, roles_forget
from limiter.models import Team

log = logging.getLogger(__name__)

TEAM_ROLES = (TeamRole.VIEWER.value, TeamRole.MAINTAINER.value)

ACTION_GRANT = "role_grant"
ACTION_REVOKE = "role_revoke"

MSG_UNKNOWN_ORG_ROLE = "Unknown organisation role '{role}': use one of admin, operator, auditor."
MSG_UNKNOWN_TEAM_ROLE = "Unknown team role '{role}': use viewer or maintainer."


class RoleError(ValueError):
    """A role that does not exist; the message says which ones do."""


def _audit(
    *, user: User, action: str, role: str, team: Team | None, actor: User | None, source: str
) -> None:
    values = {"role": role, "team": team.name if team is not None else None, "source": source}
    AuditEntry.objects.create(
        actor=actor,
        actor_name=actor.get_username() if actor is not None else source,
        action=action,
        object_type="user",
        object_id=str(user.pk),
        object_repr=user.get_username(),
        old_values=values if action == ACTION_REVOKE else {},
        new_values=values if action == ACTION_GRANT else {},
    )


def _org_role_replace(*, user: User, role: str | None, actor: User | None, source: str) -> bool:
    if role is not None and role not in ORG_ROLES:
        raise RoleError(MSG_UNKNOWN_ORG_ROLE.format(role=role))
    held = [group for group in user.groups.all() if group.name in ORG_ROLES]
    changed = False
    for group in held:
        if group.name != role:
            user.groups.remove(group)
            _audit(
                user=user,
                action=ACTION_REVOKE,
                role=group.name,
                team=None,
                actor=actor,
                source=source,
            )
            changed = True
    if role is not None and role not in {group.name for group in held}:
        user.groups.add(Group.objects.get(name=role))
        _audit(user=user, action=ACTION_GRANT, role=role, team=None, actor=actor, source=source)
        changed = True
    # Staff is what lets Django's admin in; the group's permissions decide the rest.
    is_staff = role is not None or user.is_superuser
    if user.is_staff != is_staff:
        user.is_staff = is_staff
        user.save(update_fields=["is_staff"])
    return changed


def _team_role_set(
    *, user: User, team: Team, role: str | None, actor: User | None, source: str
) -> bool:
    if role is not None and role not in TEAM_ROLES:
        raise RoleError(MSG_UNKNOWN_TEAM_ROLE.format(role=role))
    current = TeamMembership.objects.filter(user=user, team=team).first()
    if current is not None and current.role == role:
        return False
    if current is not None:
        current.delete()
        _audit(
            user=user,
            action=ACTION_REVOKE,
            role=current.role,
            team=team,
            actor=actor,
            source=source,
        )
    if role is not None:
        TeamMembership.objects.create(user=user, team=team, role=role)
        _audit(user=user, action=ACTION_GRANT, role=role, team=team, actor=actor, source=source)
    return True


@transaction.atomic
def roles_set(
    *,
    user: User,
    org_role: str | None,
    team_roles: Mapping[str, str],
    actor: User | None,
    source: str,
) -> None:
    """Make the user's roles exactly these (a sign-in through the identity provider
    re-reads them): the organisation role, and a role on each named team, every other
    membership removed. Team names that do not exist are skipped with a log line."""
    for role in team_roles.values():
        if role not in TEAM_ROLES:
            raise RoleError(MSG_UNKNOWN_TEAM_ROLE.format(role=role))
    roles_forget(user)
    _org_role_replace(user=user, role=org_role, actor=actor, source=source)
    teams = {team.name: team for team in Team.objects.filter(name__in=list(team_roles))}
    for name in sorted(set(team_roles) - set(teams)):
        log.warning("roles: no team named %r; %s's role on it is ignored", name, user)
    for membership in TeamMembership.objects.filter(user=user).exclude(team__in=teams.values()):
        _team_role_set(user=user, team=membership.team, role=None, actor=actor, source=source)
    for name, team in teams.items():
        _team_role_set(user=user, team=team, role=team_roles[name], actor=actor, source=source)


@transaction.atomic
def role_grant(
    *, user: User, role: str, team: Team | None = None, actor: User | None, source: str
) -> bool:
    """Give one role: an organisation role (replacing the one held) or, with `team`, a
    role on that team (replacing the one held there). Returns whether anything changed."""
    roles_forget(user)
    if team is None:
        return _org_role_replace(user=user, role=role, actor=actor, source=source)
    return _team_role_set(user=user, team=team, role=role, actor=actor, source=source)


@transaction.atomic
def role_revoke(*, user: User, team: Team | None = None, actor: User | None, source: str) -> bool:
    """Take away the organisation role or, with `team`, the role on that team.
    Returns whether the user held it."""
    roles_forget(user)
    if team is None:
        return _org_role_replace(user=user, role=None, actor=actor, source=source)
    return _team_role_set(user=user, team=team, role=None, actor=actor, source=source)
