"""Refresh the documentation's screenshots: docs/overview.png, docs/refusals.png and docs/usage.png.

    .venv/bin/python scripts/screenshots.py            # starts its own server + sandbox
    .venv/bin/python scripts/screenshots.py --url http://127.0.0.1:8000 \\
        --username ops --password ...

Starts Sluice against the sandbox upstream (or uses the one at --url), logs in, sends
some traffic from three teams (one with a tight chat limit, so there are 429s), and
takes the pictures in Debian's headless Chromium at 1280 px wide.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

CHROMIUM = os.environ.get("SLUICE_CHROMIUM", "/usr/bin/chromium")
CHAT_MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
EMBED_MODEL = "BAAI/bge-large-en-v1.5"
TRAFFIC_SECONDS = 12.0


def traffic(url: str, keys: dict[str, str], seconds: float) -> None:
    """A few clients per team for `seconds`: chat for all, embeddings for one."""
    deadline = time.monotonic() + seconds

    def client(key: str, path: str, body: dict) -> None:
        with httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
            while time.monotonic() < deadline:
                http.post(f"{url}/v1/{path}", json=body)
                time.sleep(0.05)

    chat = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hello"}]}
    jobs = [(key, "chat/completions", chat) for key in keys.values() for _ in range(3)]
    jobs.append((keys["search"], "embeddings", {"model": EMBED_MODEL, "input": "hello"}))
    threads = [threading.Thread(target=client, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running Sluice; default: start one")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    return parser.parse_args()


def _demo_server(stack: ExitStack) -> tuple[str, str, str, dict[str, str]]:
    """A fresh Sluice with three teams, one of them on a tight profile; its URL, the
    admin's credentials and the teams' keys."""
    from tests.servers import SluiceServer

    server = stack.enter_context(SluiceServer(Path(tempfile.mkdtemp(prefix="sluice-shots-"))))
    tight = {
        "requests_per_minute": 60,
        "pace_per_minute": None,
        "burst": 2,
        "queue_depth": 2,
        "max_queue_wait_seconds": 1,
    }
    server.make_profile("tight", {"chat": tight})
    keys = {team: server.issue_key(team) for team in ("search", "support-bot")}
    keys["research"] = server.issue_key("research", profile="tight")
    return server.url, server.admin_username, server.admin_password, keys


def _shoot(page: Any, url: str, keys: dict[str, str] | None, out: Path) -> None:
    """The overview mid-load, then the 429 history and the usage page once recorded."""
    if keys:
        load = threading.Thread(target=traffic, args=(url, keys, TRAFFIC_SECONDS))
        load.start()
        time.sleep(TRAFFIC_SECONDS - 3)  # mid-load: queues and 429s on screen
    page.wait_for_selector("#conn[data-state=live]")
    page.wait_for_selector(".chart-card")
    out.mkdir(exist_ok=True)
    page.screenshot(path=str(out / "overview.png"), full_page=True)
    if keys:
        load.join()
        time.sleep(2)  # the 429 recorder writes in batches
    # The last 20 minutes, so the per-minute chart shows the burst rather than a day.
    since = (datetime.now(UTC) - timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M")
    page.goto(f"{url}/refusals/?start={since}")
    page.screenshot(path=str(out / "refusals.png"))
    # The last week per day and team (the usage rollups are written every second, so
    # the pause above covers them too).
    week = (datetime.now(UTC) - timedelta(days=6)).strftime("%Y-%m-%d")
    page.goto(f"{url}/usage/?start={week}&group_by=day&group_by=team&group_by=model")
    page.wait_for_selector("#chart[data-drawn]")
    page.screenshot(path=str(out / "usage.png"), full_page=True)


def main() -> None:
    args = _arguments()

    import django
    from playwright.sync_api import sync_playwright

    django.setup()
    with ExitStack() as stack:
        keys: dict[str, str] | None = None
        if args.url:
            url, username, password = args.url.rstrip("/"), args.username, args.password
        else:
            url, username, password, keys = _demo_server(stack)
        playwright = stack.enter_context(sync_playwright())
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{url}/")
        _shoot(page, url, keys, args.out)
        browser.close()
    shots = ("overview.png", "refusals.png", "usage.png")
    print("Saved " + ", ".join(str(args.out / name) for name in shots))


if __name__ == "__main__":
    main()
