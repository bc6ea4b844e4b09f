"""Single sign-on's role map: parsed from the environment by settings.py (so this module
imports nothing of Django's models) and applied at each sign-in by `dashboard/oidc.py`.

SLUICE_OIDC_ROLE_MAP is a comma-separated list of `VALUE=ROLE`, where VALUE is one value
of the roles claim (a group name) and ROLE is an organisation role (`admin`, `operator`,
`auditor`) or a team role written `team:TEAM:viewer` / `team:TEAM:maintainer`:

    sluice-admins=admin,sluice-audit=auditor,team-search=team:search:maintainer

A value may appear more than once (one group giving a team role and an organisation role);
a VALUE may contain `=` (the last one separates it from the ROLE) and a TEAM may contain
`:`, but neither may contain a comma. A user in several mapped groups gets the widest
organisation role among them and, on each team, the widest team role.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured

# The same as dashboard.roles.ORG_ROLES and TEAM_ROLES (which import the models, so
# settings.py cannot); tests/dashboard/test_oidc_config.py checks they agree. Widest first.
ORG_ROLES = ("admin", "operator", "auditor")
TEAM_ROLES = ("maintainer", "viewer")

MSG_ROLE_MAP_ENTRY = (
    "SLUICE_OIDC_ROLE_MAP: {entry!r} is not VALUE=ROLE, where ROLE is admin, operator, "
    "auditor or team:TEAM:viewer|maintainer"
)


@dataclass(frozen=True)
class MappedRole:
    """What one claim value gives: an organisation role, or a role on one team."""

    org_role: str | None = None
    team: str | None = None
    team_role: str | None = None


RoleMap = Mapping[str, tuple[MappedRole, ...]]


def _role_parse(entry: str, role: str) -> MappedRole:
    if role in ORG_ROLES:
        return MappedRole(org_role=role)
    kind, _, rest = role.partition(":")
    team, _, team_role = rest.rpartition(":")
    if kind != "team" or not team or team_role not in TEAM_ROLES:
        raise ImproperlyConfigured(MSG_ROLE_MAP_ENTRY.format(entry=entry))
    return MappedRole(team=team, team_role=team_role)


def role_map_parse(text: str) -> dict[str, tuple[MappedRole, ...]]:
    """The role map from its setting; ImproperlyConfigured names the first bad entry."""
    mapping: dict[str, tuple[MappedRole, ...]] = {}
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        value, sep, role = entry.rpartition("=")
        if not sep or not value.strip() or not role.strip():
            raise ImproperlyConfigured(MSG_ROLE_MAP_ENTRY.format(entry=entry))
        mapped = _role_parse(entry, role.strip())
        mapping[value.strip()] = (*mapping.get(value.strip(), ()), mapped)
    return mapping


def claim_values(claims: Mapping[str, Any], claim: str) -> list[str]:
    """The values of the roles claim: a list of strings or one string. A dotted name reads
    a nested claim (Keycloak's `realm_access.roles`). Missing: no values."""
    found: Any = claims
    for part in claim.split("."):
        found = found.get(part) if isinstance(found, Mapping) else None
    if isinstance(found, str):
        return [found]
    if isinstance(found, list):
        return [value for value in found if isinstance(value, str)]
    return []


def roles_from_claim(values: Iterable[str], role_map: RoleMap) -> tuple[str | None, dict[str, str]]:
    """The organisation role and the {team name: team role} these claim values map to."""
    org_roles: set[str] = set()
    team_roles: dict[str, set[str]] = {}
    for value in values:
        for mapped in role_map.get(value, ()):
            if mapped.org_role is not None:
                org_roles.add(mapped.org_role)
            elif mapped.team is not None and mapped.team_role is not None:
                team_roles.setdefault(mapped.team, set()).add(mapped.team_role)
    org_role = next((role for role in ORG_ROLES if role in org_roles), None)
    teams = {
        team: next(role for role in TEAM_ROLES if role in held) for team, held in team_roles.items()
    }
    return org_role, teams
