"""The dashboard in real headless Chromium against a real server (gateway, limiter and
sandbox upstream): what ops staff do, checked by the effect on API traffic."""

from __future__ import annotations

import csv
import threading

import httpx
import pytest

from tests.browsers import browser  # noqa: F401  (the browser fixture)
from tests.waiting import wait_until

pytestmark = pytest.mark.browser

CHAT_MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


def chat(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )


@pytest.fixture
def page(browser, shared_server):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto(f"{shared_server.url}/login/")
    page.fill("#id_username", shared_server.admin_username)
    page.fill("#id_password", shared_server.admin_password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{shared_server.url}/")
    yield page
    context.close()


def test_login_shows_live_overview_with_sandbox_banner(page):
    assert page.locator("#sandbox-banner").is_visible()
    page.wait_for_selector("#conn[data-state=live]")
    assert "together" in page.locator("#accounts").inner_text()


def test_anonymous_gets_login_page(browser, shared_server):  # noqa: F811
    context = browser.new_context()
    anonymous = context.new_page()
    anonymous.goto(f"{shared_server.url}/limits/")
    assert anonymous.url.startswith(f"{shared_server.url}/login/")
    context.close()


def test_changed_chat_limit_takes_effect_on_api_traffic(page, shared_server):
    url = shared_server.url
    key = shared_server.issue_key("limit-team")
    assert chat(url, key).status_code == 200
    assert chat(url, key).status_code == 200  # the default allows more than one at once

    # A new profile (copied from default) with a chat limit of 1 request, no queue.
    page.goto(f"{url}/limits/")
    page.fill("#id_name", "one-at-a-time")
    page.click("text=Create profile")
    page.click("tr[data-endpoint=chat] >> text=Edit")
    for field, value in {
        "requests_per_minute": "1",
        "pace_per_minute": "",
        "burst": "1",
        "queue_depth": "0",
        "max_queue_wait_seconds": "0",
    }.items():
        page.fill(f"#id_{field}", value)
    page.click("text=Save limit")
    assert "saved" in page.locator(".messages").inner_text()

    # Assign it to the team, in the browser too.
    page.goto(f"{url}/teams/")
    page.click("tr[data-team=limit-team] >> a")
    page.select_option("#id_profile", label="one-at-a-time")
    page.click("text=Assign")
    assert "now uses profile 'one-at-a-time'" in page.locator(".messages").inner_text()

    first, second = chat(url, key), chat(url, key)
    assert first.status_code == 200, first.text
    assert second.status_code == 429, second.text
    assert second.headers["x-sluice-limited-by"] == "gateway"

    # A form error is shown, not saved.
    page.goto(f"{url}/limits/")
    page.click("text=one-at-a-time")
    page.click("tr[data-endpoint=chat] >> text=Edit")
    page.fill("#id_burst", "0")
    page.click("text=Save limit")
    assert "Burst must be at least 1." in page.locator("#limit-form").inner_text()


def test_create_key_use_it_revoke_it(page, shared_server):
    url = shared_server.url
    page.goto(f"{url}/teams/")
    page.fill("#id_name", "ui-team")
    page.click("text=Create team")
    page.fill("#key-form #id_name", "from the browser")
    page.click("text=Create key")
    secret = page.input_value("#secret")
    assert secret.startswith("sk-sluice-")
    page.click("#copy")

    assert chat(url, secret).status_code == 200
    page.reload()  # the secret was shown once
    assert secret not in page.content()

    page.click(f"tr[data-prefix='{secret[:16]}'] >> text=Revoke")
    assert "revoked" in page.locator(".messages").inner_text()
    response = chat(url, secret)
    assert response.status_code == 401, response.text


def test_live_overview_updates_while_requests_run(page, shared_server):
    url = shared_server.url
    key = shared_server.issue_key("live-team")
    page.wait_for_selector("#conn[data-state=live]")
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            chat(url, key)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        # The key's row appears, with admitted requests counted, pushed by the limiter.
        row = page.locator("#teams tr", has_text=key[:16])
        row.first.wait_for(timeout=10_000)
        page.wait_for_function(
            """prefix => [...document.querySelectorAll('#teams tr')].some(
                 tr => tr.textContent.includes(prefix)
                       && /[1-9]\\d* \\/ \\d+ req\\/min/.test(tr.textContent))""",
            arg=key[:16],
            timeout=10_000,
        )
        first = page.inner_text("#updated")
        page.wait_for_function(
            "t => document.querySelector('#updated').textContent !== t", arg=first
        )
        page.wait_for_selector(".chart-card[data-endpoint=chat]")
        assert page.locator("#limiter-banner").is_hidden()
        # Together's limits per model: the model called has its row, with the pace in use.
        model_row = page.locator(f"#models tr[data-model='{CHAT_MODEL}']")
        model_row.wait_for(timeout=10_000)
        assert "req/min" in model_row.locator("td.pace").inner_text()
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    # Staff reset its learned ceiling (a POST with the page's CSRF token): back to the profile.
    page.locator(f"#models tr[data-model='{CHAT_MODEL}'] button.reset").click()
    page.wait_for_selector(".messages >> text=is reset")
    page.locator(f"#models tr[data-model='{CHAT_MODEL}']").wait_for(timeout=10_000)
    assert (
        page.locator(f"#models tr[data-model='{CHAT_MODEL}'] td.source").inner_text()
        == "the profile"
    )


def test_filter_429_history_and_download_csv(page, shared_server, tmp_path):
    url = shared_server.url
    key = shared_server.issue_key("history-team")
    shared_server.make_profile(
        "history-tight",
        {
            "chat": {
                "requests_per_minute": 1,
                "pace_per_minute": None,
                "burst": 1,
                "queue_depth": 0,
                "max_queue_wait_seconds": 0,
            }
        },
    )
    shared_server.python(
        "from limiter.models import Team, LimitProfile;"
        "t = Team.objects.get(name='history-team');"
        " t.profile = LimitProfile.objects.get(name='history-tight'); t.save()"
    )
    codes = [chat(url, key).status_code for _ in range(4)]
    assert codes.count(429) >= 3, codes

    # The recorder writes 429s in batches off the request path: wait for them.
    def listed() -> int:
        page.goto(f"{url}/refusals/?team=history-team")
        return page.locator("#refusals tbody tr", has_text="history-team").count()

    wait_until(listed, lambda rows: rows >= 3, every=0.2, what="the 429s listed")
    page.select_option("#id_endpoint", "chat")
    page.select_option("#id_source", "gateway")
    page.click("#filters >> text=Filter")
    rows = page.locator("#refusals tbody tr")
    assert rows.count() >= 3
    assert all("history-team" in text for text in rows.all_inner_texts())

    with page.expect_download() as download_info:
        page.click("#csv")
    path = tmp_path / "refusals.csv"
    download_info.value.save_as(path)
    with path.open() as handle:
        records = list(csv.DictReader(handle))
    assert len(records) >= 3
    assert {r["team_name"] for r in records} == {"history-team"}
    assert {r["endpoint"] for r in records} == {"chat"} and {r["source"] for r in records} == {
        "gateway"
    }
