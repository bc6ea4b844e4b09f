"""The key cache: a lookup racing a configuration change must not bring back what it changed."""

from __future__ import annotations

import asyncio
import threading

import pytest

from limiter.gateway import keys
from limiter.gateway.keys import KeyCache, KeyInfo
from limiter.models import ApiKey
from tests import factories

SECRET = "sk-sluice-test-secret"


def key_info() -> KeyInfo:
    return factories.key_info(prefix=SECRET[:16], secret_hash=ApiKey.hash_secret(SECRET))


async def test_a_lookup_in_flight_when_the_cache_is_cleared_does_not_store_its_stale_answer(
    monkeypatch,
):
    # The first load reads the key while it is still usable and is slow to return; the key
    # is revoked (and the cache cleared) meanwhile. Every later load sees the revocation.
    loading, finish = threading.Event(), threading.Event()
    loads: list[str] = []

    def load(secret_hash: str) -> KeyInfo | None:
        loads.append(secret_hash)
        if len(loads) == 1:
            loading.set()
            assert finish.wait(10), "the test never released the first load"
            return key_info()
        return None

    monkeypatch.setattr(keys, "_load", load)
    cache = KeyCache()
    lookup = asyncio.ensure_future(cache.authenticate(SECRET))
    assert await asyncio.to_thread(loading.wait, 10)
    cache.clear()  # the revocation's broadcast arrives while the load runs
    finish.set()

    raced = await lookup
    # The stale answer was not kept: the next request is refused.
    assert await cache.authenticate(SECRET) is None
    # And the lookup that raced the change asked again rather than answer what it read before.
    assert raced is None
    assert len(loads) >= 2


@pytest.mark.parametrize("cleared", [False, True])
async def test_a_lookup_caches_its_answer_unless_the_cache_was_cleared_meanwhile(
    monkeypatch, cleared
):
    loads: list[str] = []
    cache = KeyCache()

    def load(secret_hash: str) -> KeyInfo | None:
        loads.append(secret_hash)
        if cleared and len(loads) == 1:
            cache.clear()  # as a broadcast would, from the loop, while this thread reads
        return key_info()

    monkeypatch.setattr(keys, "_load", load)
    assert await cache.authenticate(SECRET) is not None
    assert await cache.authenticate(SECRET) is not None
    # Not cleared: one load, then the cache. Cleared during the first: it loads again once,
    # and that second answer is kept.
    assert len(loads) == (2 if cleared else 1)
