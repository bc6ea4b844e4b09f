"""Single sign-on's settings: the role map's syntax, what a claim maps to, and that a
half-configured single sign-on stops the server from starting (ImproperlyConfigured)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from dashboard import oidc_config, roles
from dashboard.oidc_config import MappedRole, claim_values, role_map_parse, roles_from_claim
from tests.servers import ROOT

EXAMPLE = "sluice-admins=admin,sluice-audit=auditor,team-search=team:search:maintainer"


def test_role_names_agree_with_the_role_service():
    assert set(oidc_config.ORG_ROLES) == set(roles.ORG_ROLES)
    assert set(oidc_config.TEAM_ROLES) == set(roles.TEAM_ROLES)


def test_role_map_parses_org_and_team_roles():
    assert role_map_parse(EXAMPLE) == {
        "sluice-admins": (MappedRole(org_role="admin"),),
        "sluice-audit": (MappedRole(org_role="auditor"),),
        "team-search": (MappedRole(team="search", team_role="maintainer"),),
    }


def test_role_map_allows_repeats_equals_in_values_and_colons_in_team_names():
    parsed = role_map_parse(" ops = operator , ops=team:a:b:viewer,cn=x=auditor,, ")
    assert parsed == {
        "ops": (MappedRole(org_role="operator"), MappedRole(team="a:b", team_role="viewer")),
        "cn=x": (MappedRole(org_role="auditor"),),
    }


@pytest.mark.parametrize(
    "text",
    ["admins", "=admin", "x=", "x=owner", "x=team:search", "x=team::viewer", "x=team:s:boss"],
)
def test_role_map_refuses_what_it_cannot_read(text):
    with pytest.raises(ImproperlyConfigured, match="SLUICE_OIDC_ROLE_MAP"):
        role_map_parse(text)


def test_widest_roles_win():
    mapping = role_map_parse(
        "a=auditor,o=operator,t1=team:search:viewer,t2=team:search:maintainer,t3=team:ads:viewer"
    )
    assert roles_from_claim(["a", "o", "t1", "t2", "t3", "unknown"], mapping) == (
        "operator",
        {"search": "maintainer", "ads": "viewer"},
    )
    assert roles_from_claim(["unknown"], mapping) == (None, {})


def test_claim_values_read_lists_strings_and_nested_claims():
    assert claim_values({"groups": ["a", 3, "b"]}, "groups") == ["a", "b"]
    assert claim_values({"groups": "a"}, "groups") == ["a"]
    assert claim_values({}, "groups") == []
    assert claim_values({"realm_access": {"roles": ["x"]}}, "realm_access.roles") == ["x"]
    assert claim_values({"realm_access": "x"}, "realm_access.roles") == []


def _check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


FULL = {
    "SLUICE_OIDC_ISSUER": "http://127.0.0.1:1/",
    "SLUICE_OIDC_CLIENT_ID": "sluice",
    "SLUICE_OIDC_CLIENT_SECRET": "secret",
    "SLUICE_OIDC_ROLE_MAP": EXAMPLE,
}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({**FULL, "SLUICE_OIDC_CLIENT_SECRET": ""}, "needs SLUICE_OIDC_CLIENT_ID and"),
        ({**FULL, "SLUICE_OIDC_ROLE_MAP": ""}, "needs SLUICE_OIDC_ROLE_MAP"),
        ({**FULL, "SLUICE_OIDC_ROLE_MAP": "x=root"}, "'x=root' is not VALUE=ROLE"),
        ({"SLUICE_LOCAL_LOGIN": "false"}, "SLUICE_LOCAL_LOGIN=false needs SLUICE_OIDC_ISSUER"),
    ],
)
def test_incomplete_single_sign_on_is_loud(env, message):
    done = _check(**env)
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr
    assert message in done.stderr


def test_complete_single_sign_on_starts_without_reaching_the_provider():
    # Discovery waits for the first sign-in: port 1 answers nothing, and `check` passes.
    done = _check(**FULL)
    assert done.returncode == 0, done.stderr
