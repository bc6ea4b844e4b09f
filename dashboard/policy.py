"""The one policy: who may do what. Every dashboard page, ops API operation, CSV export,
the live websocket and the role-based parts of `/admin/` ask `allows`; object scoping
is `teams_visible`, a queryset filter (another team's object answers 404, not 403).

Deny by default: an action not in the tables below is refused to everyone, and so is an
anonymous or inactive user.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet

from dashboard.models import TeamMembership, acting_token
from dashboard.role_permissions import ADMIN, AUDITOR, OPERATOR
from limiter.models import Team

# --- actions ---------------------------------------------------------------------------
# Organisation-wide.
READ_ALL = "read_all"  # every page, export and API read over all teams; no secret
LIMITS_WRITE = "limits_write"  # limits, profiles, learned-ceiling resets
TEAMS_WRITE = "teams_write"  # create a team, pause it, assign its profile
KEYS_WRITE = "keys_write"  # any team's keys
BUDGETS_WRITE = "budgets_write"
ALERTS_WRITE = "alerts_write"
WEBHOOKS_WRITE = "webhooks_write"
UPSTREAM_WRITE = "upstream_write"
PRICES_WRITE = "prices_write"
USERS_WRITE = "users_write"  # users and their roles
# On one team (pass `team`).
TEAM_READ = "team_read"  # the team's page: quota, usage, budgets, 429s, keys by prefix
TEAM_KEYS_WRITE = "team_keys_write"  # create, rotate, revoke the team's own keys
# The shared views (Live, Usage, 429 history, Alerts), their exports and API reads: every
# row for an organisation role; for a team role its teams' rows only (`team_rows`), plus
# its upstream account's totals without other teams' names.
SHARED_READ = "shared_read"
# One's own personal API tokens (they act with one's role): whoever holds a role.
TOKENS_OWN = "tokens_own"

WRITE_ACTIONS = frozenset(
    {
        LIMITS_WRITE,
        TEAMS_WRITE,
        KEYS_WRITE,
        BUDGETS_WRITE,
        ALERTS_WRITE,
        WEBHOOKS_WRITE,
        UPSTREAM_WRITE,
        PRICES_WRITE,
        USERS_WRITE,
        TEAM_KEYS_WRITE,
    }
)
ACTIONS = WRITE_ACTIONS | {READ_ALL, TEAM_READ, SHARED_READ, TOKENS_OWN}
TEAM_ACTIONS = frozenset({TEAM_READ, TEAM_KEYS_WRITE, SHARED_READ})

# --- who holds which -----------------------------------------------------------------------
_AUDITOR = frozenset({READ_ALL, TEAM_READ, SHARED_READ})
_OPERATOR = _AUDITOR | {
    LIMITS_WRITE,
    TEAMS_WRITE,
    KEYS_WRITE,
    BUDGETS_WRITE,
    ALERTS_WRITE,
    TEAM_KEYS_WRITE,
}
ORG_GRANTS: dict[str, frozenset[str]] = {
    AUDITOR: _AUDITOR,
    OPERATOR: frozenset(_OPERATOR),
    ADMIN: ACTIONS,
}
# A team role holds these on its own team only.
TEAM_GRANTS: dict[str, frozenset[str]] = {
    "viewer": frozenset({TEAM_READ, SHARED_READ}),
    "maintainer": frozenset({TEAM_READ, SHARED_READ, TEAM_KEYS_WRITE}),
}

ORG_ROLES = (ADMIN, OPERATOR, AUDITOR)
_CACHE = "_sluice_roles"


def org_role_of(user: User) -> str | None:
    """The user's organisation role; the superuser (bootstrap, break-glass) is admin."""
    if user.is_superuser:
        return ADMIN
    names = {group.name for group in user.groups.all()}
    # At most one by construction; if a hand edit in the admin gave two, the widest wins.
    return next((role for role in ORG_ROLES if role in names), None)


class Roles:
    """One user's roles, read once per user object (a page asks the policy many times),
    each part on first use: a page for the whole organisation never reads memberships."""

    def __init__(self, user: User | None) -> None:
        self._user = user

    @cached_property
    def org(self) -> str | None:
        return org_role_of(self._user) if self._user is not None else None

    @cached_property
    def teams(self) -> dict[int, str]:
        if self._user is None:
            return {}
        return dict(TeamMembership.objects.filter(user=self._user).values_list("team_id", "role"))


_NOBODY = Roles(None)


def roles_of(user: User | AnonymousUser | Any) -> Roles:
    if user is None or not user.is_authenticated or not user.is_active:
        return _NOBODY
    assert isinstance(user, User)
    cached = user.__dict__.get(_CACHE)
    if cached is None:
        cached = user.__dict__[_CACHE] = Roles(user)
    return cached


def roles_forget(user: User) -> None:
    """Drop the cached roles (after a change to them on this same user object)."""
    user.__dict__.pop(_CACHE, None)


def _narrowed(user: User | AnonymousUser | Any, action: str) -> bool:
    """A read-only personal token reads with its owner's role and writes nothing."""
    token = acting_token(user)
    return token is not None and token.read_only and action in WRITE_ACTIONS


def allows(user: User | AnonymousUser | Any, action: str, team: Team | None = None) -> bool:
    """Whether `user` may do `action` (on `team`, for the per-team actions). An
    organisation role holds its actions on every team; a team role only on its team."""
    if _narrowed(user, action):
        return False
    roles = roles_of(user)
    if action == TOKENS_OWN:
        return roles.org is not None or bool(roles.teams)
    if roles.org is not None and action in ORG_GRANTS.get(roles.org, frozenset()):
        return True
    if action not in TEAM_ACTIONS or team is None:
        return False
    role = roles.teams.get(team.pk)
    return role is not None and action in TEAM_GRANTS.get(role, frozenset())


def allows_somewhere(user: User | AnonymousUser | Any, action: str) -> bool:
    """Whether the user holds `action` on some team (a list narrowed by teams_visible)."""
    if _narrowed(user, action):
        return False
    roles = roles_of(user)
    if roles.org is not None and action in ORG_GRANTS.get(roles.org, frozenset()):
        return True
    return any(action in TEAM_GRANTS.get(role, frozenset()) for role in roles.teams.values())


def team_visible(user: User | AnonymousUser | Any, team: Team) -> bool:
    """Whether the user may know this team exists (else its objects answer 404)."""
    roles = roles_of(user)
    return roles.org is not None or team.pk in roles.teams


def is_org_member(user: User | AnonymousUser | Any) -> bool:
    """Whether the user holds an organisation role (reads every team)."""
    return roles_of(user).org is not None


def teams_visible(user: User | AnonymousUser | Any) -> QuerySet[Team]:
    """The teams whose objects this user may see: all for an organisation role, its own
    teams for a team role, none otherwise."""
    roles = roles_of(user)
    if roles.org is not None:
        return Team.objects.all()
    return Team.objects.filter(pk__in=list(roles.teams))


def team_rows(user: User | AnonymousUser | Any) -> frozenset[int] | None:
    """Whose rows the shared views show this user: None for an organisation role (every
    row, those of teams deleted since too), else the ids of `teams_visible` (none for a
    user without a role). The selectors filter on it: `team_id__in=...`."""
    if roles_of(user).org is not None:
        return None
    return frozenset(teams_visible(user).values_list("pk", flat=True))
