"""Single sign-on end to end: headless Chromium signs in to a real Sluice server through a
real OpenID provider (panva's oidc-provider on Node.js, tests/oidc/provider/), with the
authorization code flow and PKCE. The test changes a user's groups at the provider between
sign-ins, as an identity provider's administrator would.

The server runs with SLUICE_LOCAL_LOGIN off, so the break-glass rule is checked here too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.browsers import browser  # noqa: F401  (the browser fixture)
from tests.conftest import need
from tests.servers import SluiceServer, free_port, stop_all, wait_for_http

pytestmark = pytest.mark.browser

PROVIDER_DIR = Path(__file__).resolve().parent / "provider"
CLIENT_ID = "sluice"
CLIENT_SECRET = "test-client-secret"
ROLE_MAP = "sluice-admins=admin,sluice-audit=auditor,team-search=team:search:maintainer"
USERS = {
    "ann": {"email": "ann@example.com", "name": "Ann Auditor", "groups": ["sluice-audit"]},
    "tom": {"email": "tom@example.com", "name": "Tom Search", "groups": ["team-search"]},
    "una": {"email": "una@example.com", "name": "Una Mapped", "groups": ["marketing"]},
    # Chooses the break-glass admin's name at the provider: must not become that user.
    "ops": {"email": "mallory@example.com", "name": "Mallory", "groups": ["sluice-audit"]},
}


class Provider:
    """tests/oidc/provider/provider.js on a free port; its accounts in a JSON file."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.users_file = tmp_path / "users.json"
        self.users_set(USERS)
        self.process: subprocess.Popen | None = None
        self.log = tmp_path / "provider.log"

    def users_set(self, users: dict[str, dict]) -> None:
        self.users_file.write_text(json.dumps(users))

    def groups_set(self, login: str, groups: list[str]) -> None:
        users = json.loads(self.users_file.read_text())
        users[login]["groups"] = groups
        self.users_set(users)

    def start(self, sluice_url: str) -> None:
        env = {
            **os.environ,
            "PORT": str(self.port),
            "CLIENT_ID": CLIENT_ID,
            "CLIENT_SECRET": CLIENT_SECRET,
            "REDIRECT_URI": f"{sluice_url}/oidc/callback/",
            "POST_LOGOUT_REDIRECT_URI": f"{sluice_url}/login/",
            "USERS_FILE": str(self.users_file),
        }
        self.process = subprocess.Popen(
            ["node", "provider.js"],
            cwd=PROVIDER_DIR,
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for_http(f"{self.url}/.well-known/openid-configuration", process=self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop_all([self.process])


@pytest.fixture(scope="module")
def sso(tmp_path_factory) -> Iterator[tuple[SluiceServer, Provider]]:
    need(shutil.which("node") is not None, "no Node.js (apt-get install nodejs)")
    need(
        (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir(),
        "the test OpenID provider is not installed (make test runs npm ci in tests/oidc/provider)",
    )
    tmp_path = tmp_path_factory.mktemp("sso")
    provider = Provider(tmp_path)
    server = SluiceServer(
        tmp_path,
        env={
            "SLUICE_OIDC_ISSUER": provider.url,
            "SLUICE_OIDC_CLIENT_ID": CLIENT_ID,
            "SLUICE_OIDC_CLIENT_SECRET": CLIENT_SECRET,
            "SLUICE_OIDC_ROLE_MAP": ROLE_MAP,
            "SLUICE_OIDC_SCOPES": "openid email profile groups",
            "SLUICE_OIDC_PROVIDER_NAME": "Test IdP",
            "SLUICE_LOCAL_LOGIN": "false",
        },
    )
    provider.start(server.url)
    try:
        with server:
            server.issue_key("search")  # the team the team-search group maps to
            yield server, provider
    finally:
        provider.stop()


@pytest.fixture
def page(browser):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900})

    # Only 127.0.0.1 (the provider's stock pages ask for a web font from the internet).
    def local_only(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            route.abort()

    context.route("**/*", local_only)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def sign_in(page, server: SluiceServer, provider: Provider, login: str | None) -> list[str]:
    """Click "Sign in with Test IdP" and sign in at the provider as `login` (None: the
    browser still has a session there, which sends it straight back); the authorization
    requests the browser sent."""
    asked: list[str] = []
    page.on(
        "request",
        lambda request: (
            asked.append(request.url) if request.url.startswith(f"{provider.url}/auth") else None
        ),
    )
    page.goto(f"{server.url}/login/")
    page.click("text=Sign in with Test IdP")
    if login is not None:
        page.wait_for_url(f"{provider.url}/interaction/**")
        page.fill("input[name=login]", login)
        page.fill("input[name=password]", "any")
        page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/**")
    page.wait_for_load_state()
    return asked


def roles_of(server: SluiceServer, username: str) -> dict:
    return json.loads(
        server.python(
            "import json; from django.contrib.auth.models import User;"
            "from dashboard.models import TeamMembership;"
            f"u = User.objects.get(email='{username}@example.com');"
            "print(json.dumps({'username': u.username, 'is_staff': u.is_staff,"
            " 'has_password': u.has_usable_password(),"
            " 'groups': sorted(g.name for g in u.groups.all()),"
            " 'teams': {m.team.name: m.role for m in TeamMembership.objects.filter(user=u)}}))"
        )
    )


def test_auditor_signs_in_with_pkce_and_loses_access_when_removed_from_the_group(sso, page):
    server, provider = sso
    asked = sign_in(page, server, provider, "ann")

    # The authorization code flow with a PKCE challenge (S256), no verifier on the wire.
    query = parse_qs(urlsplit(asked[0]).query)
    assert query["response_type"] == ["code"]
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) == 43  # base64url of a SHA-256
    assert "code_verifier" not in query
    assert query["scope"] == ["openid email profile groups"]

    # Landed on the dashboard as an auditor: the 429 history opens.
    assert page.url == f"{server.url}/"
    assert page.locator(".who").inner_text() == "ann"
    assert page.goto(f"{server.url}/refusals/").status == 200
    assert roles_of(server, "ann") == {
        "username": "ann",
        "is_staff": True,
        "has_password": False,
        "groups": ["auditor"],
        "teams": {},
    }

    # Logging out ends the provider's session too (RP-initiated logout).
    page.click("text=Log out")
    page.wait_for_url(f"{provider.url}/session/end**")
    page.click("text=Yes, sign me out")
    page.wait_for_url(f"{server.url}/login/")
    assert page.goto(f"{server.url}/refusals/").url.startswith(f"{server.url}/login/")

    # The provider's administrator removes ann from the group: her next sign-in (the
    # provider asks for her login again: its session ended) finds no role.
    provider.groups_set("ann", [])
    sign_in(page, server, provider, "ann")
    assert page.locator("h1").inner_text() == "You have no role in Sluice"
    assert roles_of(server, "ann")["groups"] == []
    assert roles_of(server, "ann")["is_staff"] is False
    page.goto(f"{server.url}/refusals/")
    assert page.url.startswith(f"{server.url}/login/")

    # Both the grant and the removal are in the audit log, from the provider.
    sources = server.python(
        "from dashboard.models import AuditEntry;"
        "print(sorted((e.action, e.new_values.get('role') or e.old_values.get('role'),"
        " e.actor_name) for e in AuditEntry.objects.filter(object_repr='ann')))"
    )
    assert "('role_grant', 'auditor', 'oidc')" in sources
    assert "('role_revoke', 'auditor', 'oidc')" in sources

    # Back in the group, back in Sluice (still signed in at the provider: no login form).
    provider.groups_set("ann", ["sluice-audit"])
    sign_in(page, server, provider, None)
    assert page.url == f"{server.url}/"
    assert page.goto(f"{server.url}/refusals/").status == 200


def test_team_group_gives_its_team_role(sso, page):
    server, provider = sso
    sign_in(page, server, provider, "tom")
    assert page.locator("#no-role").count() == 0
    assert roles_of(server, "tom") == {
        "username": "tom",
        "is_staff": False,
        "has_password": False,
        "groups": [],
        "teams": {"search": "maintainer"},
    }
    # The role is in force: tom sees his team's page, and another team's is not there.
    server.issue_key("ads")
    ids = json.loads(
        server.python(
            "import json; from limiter.models import Team;"
            "print(json.dumps(dict(Team.objects.values_list('name', 'id'))))"
        )
    )
    assert page.goto(f"{server.url}/teams/{ids['search']}/").status == 200
    assert page.goto(f"{server.url}/teams/{ids['ads']}/").status == 404


def test_unmapped_user_gets_a_page_saying_so(sso, page):
    server, provider = sso
    responses: list[int] = []
    page.on(
        "response",
        lambda response: (
            responses.append(response.status) if "/oidc/callback/" in response.url else None
        ),
    )
    sign_in(page, server, provider, "una")
    assert responses == [403]
    assert page.locator("h1").inner_text() == "You have no role in Sluice"
    assert "una@example.com" in page.locator("#no-role").inner_text()
    assert "marketing" in page.locator("#no-role").inner_text()
    # No session was kept: the dashboard sends to the login page.
    page.goto(f"{server.url}/")
    assert page.url.startswith(f"{server.url}/login/")
    assert roles_of(server, "una")["groups"] == []


def test_a_provider_username_does_not_take_over_a_local_account(sso, page):
    server, provider = sso
    sign_in(page, server, provider, "ops")
    created = roles_of(server, "mallory")
    assert created["username"] == "ops-2"
    assert created["groups"] == ["auditor"]
    assert page.locator(".who").inner_text() == "ops-2"
    superusers = server.python(
        "from django.contrib.auth.models import User;"
        "print(list(User.objects.filter(is_superuser=True).values_list('username', 'email')))"
    )
    assert superusers.strip() == "[('ops', '')]"


def test_local_login_off_lets_in_only_the_break_glass_superuser(sso, page):
    server, _ = sso
    server.python(
        "from django.contrib.auth.models import User;"
        "User.objects.create_user('local', password='local-password-1', is_staff=True)"
    )
    page.goto(f"{server.url}/login/")
    assert page.locator("#sso-login").is_visible()
    assert not page.locator("input[name=password]").is_visible()  # folded away

    page.click("text=Break-glass sign-in")
    page.fill("#id_username", "local")
    page.fill("#id_password", "local-password-1")
    page.click("button[type=submit]")
    assert "correct username and password" in page.locator("#break-glass").inner_text()

    page.fill("#id_username", server.admin_username)
    page.fill("#id_password", server.admin_password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/")
    assert page.locator(".who").inner_text() == server.admin_username

    # The same rule holds at /admin/'s own login form.
    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.get("/admin/login/")
        answer = client.post(
            "/admin/login/",
            data={
                "username": "local",
                "password": "local-password-1",
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
                "next": "/admin/",
            },
        )
        assert answer.status_code == 200  # the form again, not a redirect into /admin/
        assert "correct username and password" in answer.text


def test_provider_down_gives_a_page_not_a_500(tmp_path):
    # Nothing listens on the issuer's port: Sluice starts all the same (discovery waits for
    # the first sign-in), and that sign-in says the provider did not answer.
    env = {
        "SLUICE_OIDC_ISSUER": f"http://127.0.0.1:{free_port()}",
        "SLUICE_OIDC_CLIENT_ID": CLIENT_ID,
        "SLUICE_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "SLUICE_OIDC_ROLE_MAP": ROLE_MAP,
        "SLUICE_OIDC_TIMEOUT": "2",
    }
    with SluiceServer(tmp_path, env=env) as server:
        assert "Sign in with 127.0.0.1" in httpx.get(f"{server.url}/login/", timeout=10).text
        answer = httpx.get(f"{server.url}/oidc/authenticate/", timeout=10)
        assert answer.status_code == 502
        assert "The identity provider did not answer as expected" in answer.text
        # A callback nobody started (no state in the session) is refused with a page too.
        answer = httpx.get(f"{server.url}/oidc/callback/?code=x&state=y", timeout=10)
        assert answer.status_code == 403
        assert "did not complete" in answer.text
