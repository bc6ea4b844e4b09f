"""The live overview's charts in real headless Chromium, on a fresh server with traffic:
points drawn within seconds (not after the first minute), the x axis in the browser's
own time zone with today's date (not 1000 days ahead), the headers panel's time readable.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.browsers import browser  # noqa: F401  (the browser fixture)
from tests.dashboard.test_browser import chat

# "Within 5 s of traffic" is a measurement of the page and the limiter's snapshots: run with
# nothing else beside it (make test runs these after the rest), not on a box loaded by six
# workers' servers, where it once took longer.
pytestmark = [pytest.mark.browser, pytest.mark.alone]

# Far from UTC and from this machine's zone, so a chart drawn in UTC or the server's
# zone would show the wrong hour.
BROWSER_ZONE = "Pacific/Auckland"
# The series' colours: admitted, queued, refused (static/dashboard/overview.js).
SERIES_RGB = [(0x2F, 0x7D, 0x4F), (0xC0, 0x8A, 0x00), (0xC0, 0x39, 0x2B)]

# Counts the series' pixels in the upper half of the chat chart's plot: with traffic a
# bucket is the highest point, so a line rises there; a chart with no points (or only
# zeros along the bottom) has none. Any series: a call paced by the model's learned
# ceiling counts as queued and then admitted, so the queued line, drawn last, can cover
# the admitted one exactly.
DRAWN_HIGH = """(colours) => colours.reduce((total, [r, g, b]) => {
  const canvas = document.querySelector('.chart-card[data-endpoint=chat] canvas');
  if (!canvas) return total;
  const ctx = canvas.getContext('2d');
  const { data } = ctx.getImageData(0, 0, canvas.width, Math.floor(canvas.height / 2));
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    const near = (j, v) => Math.abs(data[i + j] - v) < 24;
    if (near(0, r) && near(1, g) && near(2, b)) n++;
  }
  return total + n;
}, 0)"""


def _label_moments(now: datetime) -> set[tuple[str, str]]:
    """Every (HH:MM, "D Mon YYYY") an en-GB browser in BROWSER_ZONE can print for the hour
    before `now` (and a minute of slack either side)."""
    local = now.astimezone(ZoneInfo(BROWSER_ZONE))
    moments = set()
    for minutes in range(-62, 3):
        at = local + timedelta(minutes=minutes)
        moments.add((at.strftime("%H:%M"), f"{at.day} {at.strftime('%b')} {at.year}"))
    return moments


def test_charts_draw_within_seconds_with_local_times(browser, sluice_server, tmp_path):  # noqa: F811
    url = sluice_server.url
    key = sluice_server.issue_key("chart-team")
    context = browser.new_context(
        viewport={"width": 1280, "height": 1100}, timezone_id=BROWSER_ZONE, locale="en-GB"
    )
    page = context.new_page()
    page.goto(f"{url}/login/")
    page.fill("#id_username", sluice_server.admin_username)
    page.fill("#id_password", sluice_server.admin_password)
    page.click("button[type=submit]")
    page.wait_for_selector("#conn[data-state=live]")

    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            chat(url, key)

    workers = [threading.Thread(target=load) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        # Within 5 s of the first traffic on a fresh server, the chat chart has points
        # off its baseline.
        page.wait_for_function(
            f"colours => ({DRAWN_HIGH})(colours) > 10",
            arg=[list(rgb) for rgb in SERIES_RGB],
            timeout=5_000,
        )
        labels = json.loads(
            page.get_attribute(".chart-card[data-endpoint=chat]", "data-x-labels") or "[]"
        )
        now = datetime.now().astimezone()
        moments = _label_moments(now)
        first_time, first_day = labels[0].split("\n")
        assert (first_time, first_day) in moments, (labels, now)
        times = {time for time, _ in moments}
        assert all(label.split("\n")[0] in times for label in labels), labels
        assert len(labels) >= 3, labels

        # Together's rate headers: when they came, as a local date and time, not a Unix time.
        received = page.locator("#headers .received").first
        received.wait_for(timeout=5_000)
        text = received.inner_text()
        assert not re.search(r"\d{9,}", text), text
        local_today = now.astimezone(ZoneInfo(BROWSER_ZONE))
        assert f"{local_today.day} {local_today.strftime('%b')} {local_today.year}" in text, text
        page.screenshot(path=str(tmp_path / "overview-live.png"), full_page=True)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        context.close()
