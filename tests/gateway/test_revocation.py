"""Revoking a key or pausing a team ends its work at once, over real HTTP.

A call queued in the limiter is refused when the change is made (not when its ticket
would have been granted) with the answer a new call would get, and never reaches
Together; its ticket is handed back. A running call, a stream included, is cut: a
stream ends with a final SSE error event, and its upstream response and lease go.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from limiter.gateway import errors
from sandbox import SandboxConfig
from tests.servers import SluiceServer
from tests.waiting import await_until

CHAT = "/v1/chat/completions"
MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
# One call a minute: the second call of a key queues for about a minute.
ONE_A_MINUTE = {
    "chat": {
        "requests_per_minute": 1,
        "pace_per_minute": None,
        "burst": 1,
        "queue_depth": 10,
        "max_queue_wait_seconds": 90,
    }
}
# A concurrency cap, so every running call holds a lease the test can watch.
CAPPED = {"chat": {"max_concurrent": 10}}
PROMPTLY = 5.0  # seconds: far below the minute the queued call would otherwise wait

# (what the operator does, the status and code the key's calls then get)
CHANGES = [("revoke", 401, "invalid_api_key"), ("pause", 403, "team_paused")]


def body(**extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with SluiceServer(tmp_path_factory.mktemp("revocation"), sandbox=SandboxConfig()) as server:
        server.make_profile("one-a-minute", ONE_A_MINUTE)
        server.make_profile("capped", CAPPED)
        yield server


class Team:
    """A team with one key, and the operator's hands on them through the ops API."""

    def __init__(self, server: SluiceServer, client: httpx.AsyncClient, name: str) -> None:
        self.server, self.client, self.name = server, client, name
        self.ops = {"authorization": f"Bearer {server.admin_token}"}
        self.id = self.key_id = 0
        self.secret = ""

    async def create(self, profile: str, expires_at: datetime | None = None) -> Team:
        team = await self.client.post("/api/teams", json={"name": self.name}, headers=self.ops)
        self.id = team.raise_for_status().json()["id"]
        payload = {"profile": profile, "expires_at": expires_at.isoformat() if expires_at else None}
        issued = (
            await self.client.post(f"/api/teams/{self.id}/keys", json=payload, headers=self.ops)
        ).raise_for_status()
        self.key_id, self.secret = issued.json()["key"]["id"], issued.json()["secret"]
        return self

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.secret}"}

    async def change(self, action: str) -> None:
        if action == "revoke":
            answer = await self.client.post(f"/api/keys/{self.key_id}/revoke", headers=self.ops)
        else:
            answer = await self.client.patch(
                f"/api/teams/{self.id}", json={"paused": action == "pause"}, headers=self.ops
            )
        answer.raise_for_status()

    async def key_row(self) -> dict:
        rows = (
            (await self.client.get(f"/api/teams/{self.id}/keys", headers=self.ops))
            .raise_for_status()
            .json()
        )
        return next(row for row in rows if row["id"] == self.key_id)

    async def team_row(self) -> dict:
        return (
            (await self.client.get(f"/api/teams/{self.id}", headers=self.ops))
            .raise_for_status()
            .json()
        )


async def limiter_counts(client: httpx.AsyncClient) -> dict:
    return (await client.get("/readyz")).json()["checks"]["limiter"]


def chats_upstream(server: SluiceServer) -> int:
    return server.sandbox.stats()["chat"]["requests"]


def assert_refused(response: httpx.Response, status: int, code: str, team: Team) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    if code == "invalid_api_key":
        assert (error["type"], error["message"]) == (errors.AUTHENTICATION, errors.MSG_BAD_KEY)
    else:
        assert (error["type"], error["message"]) == (
            errors.PERMISSION,
            errors.MSG_TEAM_PAUSED.format(team=team.name),
        )


async def assert_changed_in_database(team: Team, action: str) -> None:
    if action == "revoke":
        assert (await team.key_row())["revoked_at"] is not None
    else:
        assert (await team.team_row())["paused"] is True


@pytest.mark.parametrize(("action", "status", "code"), CHANGES)
async def test_a_queued_call_is_refused_when_its_key_is_revoked_or_team_paused(
    server, action, status, code
):
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        team = await Team(server, client, f"queued-{action}").create("one-a-minute")
        assert (await client.post(CHAT, json=body(), headers=team.auth)).status_code == 200
        sent = chats_upstream(server)
        queued = asyncio.ensure_future(client.post(CHAT, json=body(), headers=team.auth))
        await await_until(lambda: _queued(client, 1), what="the second call queued")

        changed = time.monotonic()
        await team.change(action)
        response = await queued
        took = time.monotonic() - changed

        assert_refused(response, status, code, team)
        assert took < PROMPTLY, f"refused {took:.1f}s after the change, not at once"
        # Its ticket was handed back, and it never reached Together.
        await await_until(lambda: limiter_counts(client), lambda c: c["queued"] == 0)
        assert chats_upstream(server) == sent
        await assert_changed_in_database(team, action)
        # A new call gets the same answer.
        assert_refused(await client.post(CHAT, json=body(), headers=team.auth), status, code, team)
        assert chats_upstream(server) == sent


async def _queued(client: httpx.AsyncClient, n: int) -> bool:
    return (await limiter_counts(client))["queued"] == n


async def test_a_queued_call_is_refused_when_its_key_expires_not_when_granted(server):
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        expires = datetime.now(UTC) + timedelta(seconds=3)
        team = await Team(server, client, "expiring").create("one-a-minute", expires_at=expires)
        assert (await client.post(CHAT, json=body(), headers=team.auth)).status_code == 200
        sent = chats_upstream(server)

        response = await client.post(CHAT, json=body(), headers=team.auth)

        late = (datetime.now(UTC) - expires).total_seconds()
        assert_refused(response, 401, "invalid_api_key", team)
        assert late < PROMPTLY, f"refused {late:.1f}s after the key expired"
        await await_until(lambda: limiter_counts(client), lambda c: c["queued"] == 0)
        assert chats_upstream(server) == sent


@pytest.mark.parametrize(("action", "status", "code"), CHANGES)
async def test_a_running_stream_is_cut_when_its_key_is_revoked_or_team_paused(
    server, action, status, code
):
    # 40 words 0.2 s apart: the stream runs for 8 s unless it is cut.
    server.sandbox.configure({"stream_chunk_delay_ms": 200})
    disconnected = server.sandbox.stats()["streams"]["disconnected"]
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        team = await Team(server, client, f"stream-{action}").create("capped")
        async with client.stream(
            "POST", CHAT, json=body(stream=True, max_tokens=40), headers=team.auth
        ) as response:
            assert response.status_code == 200
            chunks = response.aiter_raw()
            received = await anext(chunks)
            assert (await limiter_counts(client))["leases"] == 1  # the stream holds its lease

            changed = time.monotonic()
            await team.change(action)
            async for chunk in chunks:
                received += chunk
            took = time.monotonic() - changed

        assert took < PROMPTLY, f"the stream ran on {took:.1f}s after the change"
        events = [line for line in received.decode().split("\n\n") if line]
        assert events[0].startswith("data: {")  # it was streaming before the change
        assert "[DONE]" not in received.decode()
        last = json.loads(events[-1].removeprefix("data: "))
        assert last["error"]["code"] == code
        assert last["error"]["type"] == (
            errors.AUTHENTICATION if status == 401 else errors.PERMISSION
        )
        # The upstream stream was closed, and the lease handed back.
        await await_until(lambda: limiter_counts(client), lambda c: c["leases"] == 0)
        await await_until(lambda: _disconnected(server, disconnected + 1))
        await assert_changed_in_database(team, action)


async def test_a_call_waiting_on_together_is_cut_when_its_key_is_revoked(server):
    server.sandbox.configure({"latency_ms": 8000})
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            team = await Team(server, client, "slow-upstream").create("capped")
            sent = chats_upstream(server)
            running = asyncio.ensure_future(client.post(CHAT, json=body(), headers=team.auth))
            await await_until(lambda: _running_upstream(server, sent + 1))

            changed = time.monotonic()
            await team.change("revoke")
            response = await running
            took = time.monotonic() - changed

            assert_refused(response, 401, "invalid_api_key", team)
            assert took < PROMPTLY
            await await_until(lambda: limiter_counts(client), lambda c: c["leases"] == 0)
    finally:
        server.sandbox.configure({"latency_ms": 0})


async def _disconnected(server: SluiceServer, n: int) -> bool:
    return server.sandbox.stats()["streams"]["disconnected"] == n


async def _running_upstream(server: SluiceServer, n: int) -> bool:
    return chats_upstream(server) >= n
