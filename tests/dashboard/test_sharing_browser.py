"""Issue 21 in real headless Chromium against a real server (gateway, limiter, sandbox):
an operator sets a team's priority and a guaranteed share on the team page, a share past
100% is a form error, and the Live view shows the team's share and use once it calls."""

from __future__ import annotations

import httpx
import pytest

from tests.browsers import browser  # noqa: F401  (the browser fixture)
from tests.dashboard.test_browser import chat, page  # noqa: F401  (the page fixture)

pytestmark = pytest.mark.browser


def team_id(server, name: str) -> int:
    with httpx.Client(
        base_url=f"{server.url}/api",
        headers={"authorization": f"Bearer {server.admin_token}"},
        timeout=30,
    ) as api:
        return next(t["id"] for t in api.get("/teams").json() if t["name"] == name)


def add_share(tab, url: str, fraction: str) -> None:
    tab.goto(url)
    form = tab.locator("#share-form")
    form.locator("select[name=account]").select_option(label="together")
    form.locator("select[name=endpoint]").select_option("chat")
    form.locator("input[name=fraction]").fill(fraction)
    form.locator("button[type=submit]").click()


def test_set_a_priority_and_a_share_and_see_them_live(page, shared_server):  # noqa: F811
    url = shared_server.url
    key = shared_server.issue_key("share-prod")
    shared_server.issue_key("share-dev")
    prod_page = f"{url}/teams/{team_id(shared_server, 'share-prod')}/"
    dev_page = f"{url}/teams/{team_id(shared_server, 'share-dev')}/"

    page.goto(prod_page)
    page.locator("#sharing-form select[name=priority]").select_option("critical")
    page.locator("#sharing-form button[type=submit]").click()
    page.wait_for_url(prod_page)
    assert page.locator("#sharing-form select[name=priority]").input_value() == "critical"

    add_share(page, prod_page, "0.6")
    page.wait_for_url(prod_page)
    assert "60%" in page.locator("#shares").inner_text()

    add_share(page, dev_page, "0.5")  # 110% on together's chat
    assert "110%" in page.locator("#share-form").inner_text()
    assert "No guaranteed share" in page.locator("#shares").inner_text()

    assert chat(url, key).status_code == 200  # in force at once: the limiter reloaded
    page.goto(f"{url}/")
    row = page.locator('#sharing tr[data-holder^="team:"]', has_text="share-prod")
    row.wait_for()
    assert "60%" in row.inner_text() and "critical" in row.inner_text()

    page.goto(prod_page)  # leave the shared server as it was
    page.locator("#shares button.danger").click()
    page.wait_for_url(prod_page)
    assert "No guaranteed share" in page.locator("#shares").inner_text()
