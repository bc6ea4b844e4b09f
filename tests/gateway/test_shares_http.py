"""Issue 21 over real HTTP, against the sandbox upstream: a team's priority set through the
ops API is in force at once, and a call held back by it says so: refused with
`error.code` priority_waiting and a message naming the rule, kept so in the 429 history;
a call that waited says which rule it waited on (x-sluice-queued-by)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.servers import SluiceServer

CHAT = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


@pytest.fixture
def server(tmp_path):
    with SluiceServer(tmp_path) as server:
        # The account's ceiling: one chat call a second.
        server.make_profile(
            "one-a-second",
            {"chat": {"requests_per_minute": 60, "burst": 1, "max_queue_wait_seconds": 30}},
            account=True,
        )
        # dev's key waits at most 2 s in the queue.
        server.make_profile(
            "impatient",
            {
                "chat": {
                    "requests_per_minute": 6000,
                    "burst": 100,
                    "queue_depth": 10,
                    "max_queue_wait_seconds": 2,
                }
            },
        )
        yield server


def ops(server: SluiceServer) -> httpx.Client:
    return httpx.Client(
        base_url=f"{server.url}/api",
        headers={"authorization": f"Bearer {server.admin_token}"},
        timeout=30,
    )


async def chat(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions",
        json={"model": CHAT, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {key}"},
    )


async def test_a_call_behind_a_higher_priority_says_so_in_its_429_and_its_record(server):
    prod = server.issue_key("prod")
    dev = server.issue_key("dev", profile="impatient")
    with ops(server) as api:
        teams = {t["name"]: t["id"] for t in api.get("/teams").raise_for_status().json()}
        api.patch(
            f"/teams/{teams['prod']}/sharing", json={"priority": "critical"}
        ).raise_for_status()
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        prods = [asyncio.create_task(chat(client, prod)) for _ in range(6)]
        await asyncio.sleep(0.5)  # prod's calls are queued: one goes each second
        refused = await chat(client, dev)
        answered = await asyncio.gather(*prods)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "priority_waiting"
    assert "higher priority" in error["message"]
    assert [r.status_code for r in answered] == [200] * 6
    waited = [
        r.headers.get("x-sluice-queued-by") for r in answered if "x-sluice-queued-ms" in r.headers
    ]
    assert waited and set(waited) == {"account_rate_limited"}
    with ops(server) as api:
        for _ in range(50):  # the 429 record is written off the hot path, in batches
            rows = api.get("/refusals", params={"team": "dev"}).raise_for_status().json()
            if rows["items"]:
                break
            await asyncio.sleep(0.2)
    assert [row["reason"] for row in rows["items"]] == ["priority_waiting"]
