"""The Redis lease that makes one limiter the authority, against a real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as redis

from limiter.authority import lease as authority_module
from limiter.authority.lease import ALIVE_KEY, LOCK_KEY, Authority, AuthorityTaken

pytestmark = pytest.mark.services


@pytest.fixture
async def clean_redis(redis_url, monkeypatch):
    # Keys of this test's own: a Sluice (or another test run) on the same Redis keeps its lease.
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.setattr(authority_module, "LOCK_KEY", f"{LOCK_KEY}:test-{suffix}")
    monkeypatch.setattr(authority_module, "ALIVE_KEY", f"{ALIVE_KEY}:test-{suffix}")
    client = redis.from_url(redis_url)
    yield redis_url
    await client.delete(authority_module.LOCK_KEY, authority_module.ALIVE_KEY)
    await client.aclose()


async def test_a_second_limiter_cannot_take_a_held_authority(clean_redis) -> None:
    first, second = Authority(clean_redis), Authority(clean_redis)
    await first.acquire(wait=0)
    with pytest.raises(AuthorityTaken):
        await second.acquire(wait=0.3)
    await first.release()
    await second.acquire(wait=0)  # released: free at once
    await second.release()


async def test_a_dead_holders_lease_lapses_and_its_last_heartbeat_is_read(
    clean_redis, monkeypatch
) -> None:
    monkeypatch.setattr(authority_module, "LOCK_TTL_MS", 300)
    dead = Authority(clean_redis)
    await dead.acquire(wait=0)
    before = time.time()
    await dead.client.set(authority_module.ALIVE_KEY, before)
    await dead.client.aclose()  # dies without releasing
    successor = Authority(clean_redis)
    await successor.acquire(wait=2)
    assert successor.last_alive == pytest.approx(before)
    await successor.release()


async def test_keep_steps_down_when_another_took_the_lease(clean_redis, monkeypatch) -> None:
    monkeypatch.setattr(authority_module, "HEARTBEAT", 0.05)
    holder = Authority(clean_redis)
    await holder.acquire(wait=0)
    stop = asyncio.Event()
    keeping = asyncio.create_task(holder.keep(stop))
    await holder.client.set(authority_module.LOCK_KEY, "someone-else")
    await asyncio.wait_for(keeping, 2)
    assert stop.is_set()
    await holder.client.aclose()
