"""The Usage page in real headless Chromium, against a real server whose usage comes from
real sandbox traffic: the table shows what the sandbox reported, the filters narrow it,
the chart draws, the CSV downloads with the table's rows, a bad filter is a form error.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from tests.browsers import browser  # noqa: F401  (the browser fixture)
from tests.dashboard.test_browser import CHAT_MODEL
from tests.servers import SluiceServer

pytestmark = pytest.mark.browser

COMPLETION_MODEL = "meta-llama/Llama-2-70b-hf"
# West of UTC: a chart labelling the usage zone's (UTC) days in the browser's zone would
# print each day as the evening before.
BROWSER_ZONE = "America/Los_Angeles"
FIRST_SERIES_RGB = (0x24, 0x57, 0xC5)

# Pixels of the first series' colour in the chart's canvas: none when nothing is drawn.
DRAWN = """([r, g, b]) => {
  const canvas = document.querySelector('#chart canvas');
  if (!canvas) return 0;
  const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (Math.abs(data[i] - r) < 24 && Math.abs(data[i + 1] - g) < 24
        && Math.abs(data[i + 2] - b) < 24) n++;
  }
  return n;
}"""


def call(server: SluiceServer, key: str, path: str, body: dict) -> int:
    """One call through Sluice to the sandbox; the total tokens the sandbox reported."""
    answer = httpx.post(
        f"{server.url}/v1/{path}",
        headers={"authorization": f"Bearer {key}"},
        json=body,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["usage"]["total_tokens"]


def rows_of(page) -> list[list[str]]:
    return [
        [cell.strip() for cell in row.locator("td").all_inner_texts()]
        for row in page.locator("#usage tbody tr").all()
    ]


@pytest.fixture
def server(tmp_path):
    # The periodic flush never runs (an hour): the rollups are written by SIGTERM's drain
    # on restart, so the page is read after a known write, not after a wait.
    with SluiceServer(tmp_path, env={"SLUICE_USAGE_FLUSH_SECONDS": "3600"}) as server:
        yield server


def test_usage_page_filters_chart_and_csv(browser, server, tmp_path):  # noqa: F811
    alpha, beta = server.issue_key("usage-alpha"), server.issue_key("usage-beta")
    chat = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hello there"}]}
    alpha_tokens = sum(call(server, alpha, "chat/completions", chat) for _ in range(3))
    beta_chat = call(server, beta, "chat/completions", chat)
    beta_completion = call(
        server, beta, "completions", {"model": COMPLETION_MODEL, "prompt": "once upon a time"}
    )
    server.restart()  # the drain writes the rollups
    today = datetime.now(UTC).date()

    context = browser.new_context(
        viewport={"width": 1280, "height": 1000},
        timezone_id=BROWSER_ZONE,
        locale="en-GB",
        accept_downloads=True,
    )
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        page.goto(f"{server.url}/login/")
        page.fill("#id_username", server.admin_username)
        page.fill("#id_password", server.admin_password)
        page.click("button[type=submit]")
        page.click("nav >> text=Usage")

        # The default: the last 30 days per day and team, today's usage as recorded.
        assert page.input_value("#id_end") == today.isoformat()
        by_team = {row[1]: row for row in rows_of(page)}
        assert set(by_team) == {"usage-alpha", "usage-beta"}
        assert by_team["usage-alpha"][0] == today.isoformat()
        assert by_team["usage-alpha"][2] == "3" and by_team["usage-alpha"][6] == str(alpha_tokens)
        assert by_team["usage-beta"][2] == "2"
        assert by_team["usage-beta"][6] == str(beta_chat + beta_completion)

        # The chart draws a line per team, its days labelled in the usage zone (UTC).
        page.wait_for_function(f"rgb => ({DRAWN})(rgb) > 20", arg=list(FIRST_SERIES_RGB))
        chart = page.locator("#chart")
        assert set(json.loads(chart.get_attribute("data-series") or "[]")) == {
            "usage-alpha",
            "usage-beta",
        }
        labels = json.loads(chart.get_attribute("data-x-labels") or "[]")
        ticks = json.loads(chart.get_attribute("data-x-ticks") or "[]")
        days = [datetime.strptime(label, "%d %b %Y").date() for label in labels]
        assert days and all(today - timedelta(days=29) <= d <= today for d in days), labels
        # Each tick is a UTC midnight, labelled with that UTC day (Los Angeles would print
        # the day before).
        assert all(tick % 86400 == 0 for tick in ticks), ticks
        assert days == [datetime.fromtimestamp(tick, UTC).date() for tick in ticks], labels

        # Filter: one team, per model, the chart in tokens.
        page.select_option("#id_team", "usage-beta")
        page.uncheck("#group-by input[value=day]")
        page.uncheck("#group-by input[value=team]")
        page.check("#group-by input[value=model]")
        page.select_option("#id_metric", "tokens")
        page.click("#filters >> text=Show")
        models = {row[0]: row for row in rows_of(page)}
        assert set(models) == {CHAT_MODEL, COMPLETION_MODEL}
        assert models[CHAT_MODEL][5] == str(beta_chat)
        assert models[COMPLETION_MODEL][5] == str(beta_completion)
        assert "usage-alpha" not in page.locator("#usage").inner_text()
        page.wait_for_function(f"rgb => ({DRAWN})(rgb) > 20", arg=list(FIRST_SERIES_RGB))
        assert set(json.loads(chart.get_attribute("data-series") or "[]")) == {
            CHAT_MODEL,
            COMPLETION_MODEL,
        }
        page.screenshot(path=str(tmp_path / "usage.png"), full_page=True)

        # The CSV: the table's rows, in its order, with the exact cost.
        table = rows_of(page)
        with page.expect_download() as download_info:
            page.click("#csv")
        path = tmp_path / "usage.csv"
        download_info.value.save_as(path)
        with path.open(newline="") as handle:
            header, *lines = list(csv.reader(handle))
        assert header[0] == "model" and header[-1] == "cost_usd"
        assert len(lines) == len(table) == 2
        for line, cells in zip(lines, table, strict=True):
            assert line[:-1] == cells[:-1]
            assert Decimal(line[-1]).quantize(Decimal("1e-6")) == Decimal(cells[-1])
            assert Decimal(line[-1]) > 0  # priced at the sandbox's list price

        # A bad range is a form error on the page, not a 500 and no figures.
        page.fill("#id_start", (today + timedelta(days=2)).isoformat())
        page.fill("#id_end", today.isoformat())
        page.click("#filters >> text=Show")
        assert "The first day must not be after the last." in page.locator("#filters").inner_text()
        assert page.locator("#usage").count() == 0 and page.locator("#csv").count() == 0

        # The team page links to the team's usage.
        page.goto(f"{server.url}/teams/")
        page.click("tr[data-team=usage-alpha] >> a")
        page.click("#team-usage")
        assert page.input_value("#id_team") == "usage-alpha"
        assert {row[1] for row in rows_of(page)} == {CHAT_MODEL}
        assert date.fromisoformat(rows_of(page)[0][0]) == today
    finally:
        context.close()
