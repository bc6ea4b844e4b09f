"""Roles in real headless Chromium against a real server: an auditor reads the 429
history, usage and the audit log with no control to change anything; a team maintainer
sees only team A, creates and revokes a key (checked by its effect on API traffic), and
gets 404 on team B's page."""

from __future__ import annotations

import json

import pytest

from tests.browsers import browser  # noqa: F401  (the browser fixture)
from tests.dashboard.test_browser import chat

pytestmark = pytest.mark.browser

TEAM_A, TEAM_B = "team-a", "team-b"
# The only POST form an auditor's pages may carry: signing out.
EDIT_CONTROLS = (
    "form[method=post]:not(.logout), form[method=POST]:not(.logout), "
    "a[href*='/edit/'], button.danger, #key-form, #pause-button"
)


@pytest.fixture(scope="module")
def world(shared_server):
    """Two teams with a key each and some traffic, a 429 each, an auditor and a
    maintainer of team A (the roles given through dashboard/roles.py, as adduser does)."""
    server = shared_server
    keys = {team: server.issue_key(team) for team in (TEAM_A, TEAM_B)}
    for key in keys.values():
        assert chat(server.url, key).status_code == 200
    out = server.python(
        "import json\n"
        "from django.contrib.auth.models import User\n"
        "from dashboard.roles import role_grant\n"
        "from limiter.models import Refusal, Team\n"
        "teams = {t.name: t for t in Team.objects.filter(name__in=['team-a', 'team-b'])}\n"
        "for name, team in teams.items():\n"
        "    Refusal.objects.create(team=team, team_name=name, key_prefix=f'sk-sluice-{name}',\n"
        "        endpoint='chat', model='m', reason='rate_limited', source='gateway')\n"
        "auditor = User.objects.create_user('audrey', password='audrey-pw-1')\n"
        "role_grant(user=auditor, role='auditor', actor=None, source='test')\n"
        "maya = User.objects.create_user('maya', password='maya-pw-1')\n"
        "role_grant(user=maya, role='maintainer', team=teams['team-a'], actor=None,\n"
        "    source='test')\n"
        "print(json.dumps({name: team.pk for name, team in teams.items()}))\n"
    )
    return {"ids": json.loads(out.strip().splitlines()[-1]), "keys": keys}


def sign_in(browser, url: str, username: str, password: str):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto(f"{url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return context, page


def test_auditor_reads_everything_and_can_change_nothing(browser, shared_server, world):  # noqa: F811
    url = shared_server.url
    context, page = sign_in(browser, url, "audrey", "audrey-pw-1")
    try:
        assert page.url == f"{url}/"  # an organisation role lands on the live overview
        page.wait_for_selector("#conn[data-state=live]")
        team_a = world["ids"][TEAM_A]
        pages = [
            "/",
            "/refusals/",
            "/usage/",
            "/audit/",
            "/limits/",
            "/teams/",
            f"/teams/{team_a}/",
            "/alerts/",
        ]
        for path in pages:
            response = page.goto(f"{url}{path}")
            assert response is not None and response.status == 200, path
            page.wait_for_load_state("networkidle")
            controls = page.locator(EDIT_CONTROLS)
            assert controls.count() == 0, (
                path,
                [c.evaluate("e => e.outerHTML") for c in controls.all()],
            )
        # What they came to read is there: both teams' 429s, the usage table, the audit log.
        page.goto(f"{url}/refusals/")
        history = page.locator("#refusals").inner_text()
        assert TEAM_A in history and TEAM_B in history and "rate_limited" in history
        page.goto(f"{url}/usage/")
        assert page.locator("#usage").count() == 1
        page.goto(f"{url}/audit/")
        assert "apikey" in page.locator("#audit").inner_text()
        # A write sent anyway (the team pause form's POST, with a valid CSRF token) is
        # refused and changes nothing.
        page.goto(f"{url}/teams/")
        status = page.evaluate(
            """async (team) => {
                const token = document.querySelector('input[name=csrfmiddlewaretoken]').value;
                const body = new URLSearchParams({csrfmiddlewaretoken: token, paused: '1'});
                const r = await fetch(`/teams/${team}/pause/`, {method: 'POST', body});
                return r.status;
            }""",
            team_a,
        )
        assert status == 403
        assert "False" in shared_server.python(
            f"from limiter.models import Team; print(Team.objects.get(pk={team_a}).paused)"
        )
    finally:
        context.close()


def test_team_maintainer_sees_team_a_only_and_keys_it(browser, shared_server, world):  # noqa: F811
    url = shared_server.url
    team_a, team_b = world["ids"][TEAM_A], world["ids"][TEAM_B]
    context, page = sign_in(browser, url, "maya", "maya-pw-1")
    try:
        assert page.url == f"{url}/teams/{team_a}/"  # lands on their team
        nav = page.locator("header nav").inner_text()
        assert TEAM_A in nav and TEAM_B not in nav and "Limits" not in nav
        # Their page: limits in force, 429s with what to do, their keys; the live rows
        # of their own keys only.
        assert page.locator("#limits-in-force tr[data-endpoint=chat]").count() >= 1
        assert "slow down" in page.locator("#team-refusals").inner_text().lower()
        page.wait_for_selector("#team-now-state[data-state]")
        assert TEAM_B not in page.content()

        # Create a key: the secret is shown once and works.
        page.fill("#id_name", "from-the-browser")
        assert page.locator("#key-form select").count() == 0  # no profile to pick
        page.click("text=Create key")
        secret = page.input_value("#secret")
        assert chat(url, secret).status_code == 200
        page.goto(f"{url}/teams/{team_a}/")
        assert secret not in page.content()
        # Revoke it: its next call is refused.
        page.click(f"tr[data-prefix='{secret[:16]}'] >> text=Revoke")
        assert "revoked" in page.locator(".messages").inner_text()
        assert chat(url, secret).status_code == 401

        # Team B's page, by URL: 404; the shared views show team A's rows only (the live
        # page's websocket too, once open), and every organisation page is refused.
        response = page.goto(f"{url}/teams/{team_b}/")
        assert response is not None and response.status == 404
        for path in ("/live/", "/refusals/", "/usage/", "/alerts/"):
            response = page.goto(f"{url}{path}")
            assert response is not None and response.status == 200, path
            if path == "/live/":
                page.wait_for_selector("#conn[data-state=live]")
            assert TEAM_B not in page.content(), path
        for path in ("/audit/", "/limits/", "/teams/"):
            response = page.goto(f"{url}{path}")
            assert response is not None and response.status in (403, 404), path
            assert TEAM_B not in page.content()
        # Their own tokens page shows nothing of team B either.
        response = page.goto(f"{url}/tokens/")
        assert response is not None and response.status == 200 and TEAM_B not in page.content()
    finally:
        context.close()
