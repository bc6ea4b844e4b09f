"""Revocation across processes: a key revoked through one web process cuts its calls
waiting and streaming in another, with the limiter in a process of its own."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from sandbox import SandboxConfig
from tests.gateway.test_revocation import (
    CHAT,
    ONE_A_MINUTE,
    PROMPTLY,
    Team,
    body,
    chats_upstream,
)
from tests.servers import SluiceServer
from tests.waiting import await_until

pytestmark = pytest.mark.services


@pytest.fixture
def cluster(tmp_path, private_redis, postgres_database):
    # Streams of 40 words 0.2 s apart: 8 s unless cut.
    server = SluiceServer(
        tmp_path,
        sandbox=SandboxConfig(stream_chunk_delay_ms=200),
        web_processes=2,
        limiter_worker=True,
        env={"REDIS_URL": private_redis.url, "DATABASE_URL": postgres_database},
    )
    with server:
        server.make_profile(
            "one-a-minute", {"chat": {**ONE_A_MINUTE["chat"], "max_concurrent": 10}}
        )
        yield server


async def test_revoking_through_one_process_cuts_the_calls_in_another(cluster):
    one, two = cluster.urls
    async with (
        httpx.AsyncClient(base_url=one, timeout=120) as ops,
        httpx.AsyncClient(base_url=two, timeout=120) as web,
    ):
        team = await Team(cluster, ops, "spread").create("one-a-minute")
        async with web.stream(
            "POST", CHAT, json=body(stream=True, max_tokens=40), headers=team.auth
        ) as stream:
            assert stream.status_code == 200
            chunks = stream.aiter_raw()
            received = await anext(chunks)
            # One a minute: this one queues in the limiter worker, behind the stream's grant.
            queued = asyncio.ensure_future(web.post(CHAT, json=body(), headers=team.auth))
            await await_until(lambda: _limiter(web, "queued", 1), what="the second call queued")

            changed = time.monotonic()
            await team.change("revoke")  # through the other web process
            answer = await queued
            async for chunk in chunks:
                received += chunk
            took = time.monotonic() - changed

        assert took < PROMPTLY, f"the calls ran on {took:.1f}s after the change"
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
        last = json.loads(
            [event for event in received.decode().split("\n\n") if event][-1].removeprefix("data: ")
        )
        assert last["error"]["code"] == "invalid_api_key"
        # The limiter kept neither the ticket nor the stream's lease; Together saw only the stream.
        await await_until(lambda: _limiter(web, "queued", 0))
        await await_until(lambda: _limiter(web, "leases", 0))
        assert chats_upstream(cluster) == 1
        assert (await team.key_row())["revoked_at"] is not None


async def _limiter(client: httpx.AsyncClient, count: str, n: int) -> bool:
    return (await client.get("/readyz")).json()["checks"]["limiter"][count] == n
