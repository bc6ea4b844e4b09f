"""Shadow limits in real headless Chromium against a real server: a shadow row admits
calls over it (recorded, shown in the 429 history marked shadow); one click on the
profile page enforces it, and the next call over it is refused within a second."""

from __future__ import annotations

import time

import pytest

from tests.browsers import browser  # noqa: F401  (the browser fixture)
from tests.dashboard.test_browser import chat, page  # noqa: F401  (the page fixture)
from tests.waiting import wait_until

pytestmark = pytest.mark.browser


def test_one_click_enforces_a_shadow_row_and_the_next_call_is_refused(page, shared_server):  # noqa: F811
    url = shared_server.url
    shared_server.make_profile(
        "shadow-one",
        {
            "chat": {
                "requests_per_minute": 1,
                "pace_per_minute": None,
                "burst": 1,
                # A short queue: back-to-back calls may wait for the account's pace.
                "queue_depth": 10,
                "max_queue_wait_seconds": 5,
                "shadow": True,
            }
        },
    )
    key = shared_server.issue_key("shadow-team", profile="shadow-one")
    # Over a 1/min row in shadow: both answered.
    answers = [chat(url, key) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200], answers[-1].text

    # The Live view: the key's row says shadow, and near its limit (its enforced twin
    # admitted 1 of 1/min), with the calls it would have refused.
    page.goto(f"{url}/live/")
    live_row = page.locator("#teams tr", has_text="shadow-team")
    live_row.locator("[data-shadow]").wait_for()
    live_row.locator("[data-near-limit]").wait_for()
    assert "2 shadow" in live_row.inner_text()

    # The 429 history shows the would-be refusals, marked shadow, under the mode filter.
    def shadow_rows() -> int:
        page.goto(f"{url}/refusals/?team=shadow-team&mode=shadow")
        return page.locator("#refusals tbody .badge-shadow").count()

    assert wait_until(shadow_rows, lambda n: n >= 2, within=10, what="shadow rows shown")
    page.goto(f"{url}/refusals/?team=shadow-team&mode=enforced")
    assert "No refusal matches" in page.locator("#refusals").inner_text()

    # The profile page: the row says shadow; one click enforces it.
    page.goto(f"{url}/limits/")
    page.click("text=shadow-one")
    row = page.locator("#limits tr[data-endpoint=chat]")
    assert row.locator("[data-mode=shadow]").count() == 1
    row.locator("button:has-text('Enforce')").click()
    page.wait_for_selector("#limits tr[data-endpoint=chat] [data-mode=enforced]")
    clicked = time.monotonic()
    assert "enforced" in page.locator(".messages").inner_text()
    refused = chat(url, key)
    elapsed = time.monotonic() - clicked
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limited"
    assert elapsed < 1.0, elapsed

    # Audited: the audit log names the switch.
    page.goto(f"{url}/audit/")
    assert "shadow" in page.locator("body").inner_text()
