"""What the alerts tests over HTTP share: reading the server's database, a staff
session in the dashboard, webhooks added through the Alerts page, a team made to get
429s from Sluice."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psycopg

from tests.servers import SluiceServer

CHAT_MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


def query(server: SluiceServer, sql: str, *args: object) -> list[tuple]:
    """Read the server's database directly: SQLite read-only, or PostgreSQL (scale-out).
    `sql` takes `?` placeholders either way."""
    url = server.env["DATABASE_URL"]
    if url.startswith("postgres"):
        with psycopg.connect(url, autocommit=True) as db:
            return db.execute(sql.replace("?", "%s"), args).fetchall()  # type: ignore[arg-type]
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        return db.execute(sql, args).fetchall()


@contextmanager
def staff_session(server: SluiceServer) -> Iterator[httpx.Client]:
    """A logged-in staff user's browser session (cookies and CSRF), over HTTP."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield _logged_in(client, server)


def _logged_in(client: httpx.Client, server: SluiceServer) -> httpx.Client:
    page = client.get("/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token
    done = client.post(
        "/login/",
        data={
            "csrfmiddlewaretoken": token.group(1),
            "username": server.admin_username,
            "password": server.admin_password,
        },
    )
    assert done.status_code == 302, done.text
    return client


def csrf(client: httpx.Client) -> str:
    return client.cookies["csrftoken"]


def add_webhook(
    client: httpx.Client, server: SluiceServer, name: str, url: str, team: str | None = None
) -> int:
    """Add a webhook through the Alerts page: `team`'s, or with None the organisation's."""
    team_id = (
        query(server, "select id from limiter_team where name = ?", team)[0][0] if team else ""
    )
    done = client.post(
        "/alerts/",
        data={"csrfmiddlewaretoken": csrf(client), "name": name, "url": url, "team": team_id},
    )
    assert done.status_code == 302, done.text
    return query(server, "select id from alerts_webhook where name = ?", name)[0][0]


def tighten(server: SluiceServer, team: str) -> None:
    """One chat call a minute for `team`, no queue: the next ones are 429s."""
    server.make_profile(
        "one-a-minute",
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
    server.python(
        "from limiter.models import Team, LimitProfile;"
        f"t = Team.objects.get(name={team!r});"
        " t.profile = LimitProfile.objects.get(name='one-a-minute'); t.save()"
    )


def refused(server: SluiceServer, key: str, calls: int) -> int:
    with httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
        codes = [
            http.post(
                f"{server.url}/v1/chat/completions",
                json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]},
            ).status_code
            for _ in range(calls)
        ]
    return codes.count(429)
