"""The per-process parts every cache and loop-bound singleton share: the generation-counted
TTL cache (limiter/caching.py), the loop-bound value (limiter/loops.py), and the one
registry a configuration change clears them through (limiter/protocol/changes.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import async_to_sync

from limiter import loops
from limiter.caching import GenerationCache
from limiter.gateway import keys
from limiter.jobs import ownership
from limiter.loops import LoopBound
from limiter.models import LimitProfile
from limiter.usage.prices import prices
from tests.factories import key_info


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_read_begun_before_a_clear_is_not_stored() -> None:
    cache: GenerationCache[str, int] = GenerationCache(ttl=60, maxsize=10)
    generation = cache.generation
    cache.clear()  # a change while the read ran
    assert not cache.put("a", 1, generation)
    assert cache.get("a") is None
    assert cache.put("a", 2, cache.generation)
    assert cache.get("a") == 2


def test_entries_expire_and_an_absent_answer_is_remembered_apart() -> None:
    clock = Clock()
    cache: GenerationCache[str, int] = GenerationCache(
        ttl=60, maxsize=10, absent_ttl=5, absent_maxsize=1, timer=clock
    )
    cache.put("known", 1, cache.generation)
    cache.put("nobody", None, cache.generation)
    cache.put("nobody-else", None, cache.generation)  # its map holds one: "nobody" goes
    assert cache.get("known") == 1 and cache.absent("nobody-else") and not cache.absent("nobody")
    clock.now = 5.0
    assert not cache.absent("nobody-else") and cache.get("known") == 1
    clock.now = 60.0
    assert cache.get("known") is None


def test_a_clear_drops_both_maps() -> None:
    cache: GenerationCache[str, int] = GenerationCache(
        ttl=60, maxsize=10, absent_ttl=5, absent_maxsize=10
    )
    cache.put("known", 1, cache.generation)
    cache.put("nobody", None, cache.generation)
    cache.clear()
    assert cache.get("known") is None and not cache.absent("nobody")


def test_without_an_absent_map_none_is_not_remembered() -> None:
    cache: GenerationCache[str, int] = GenerationCache(ttl=60, maxsize=10)
    cache.put("a", 1, cache.generation)
    assert cache.put("a", None, cache.generation)
    assert cache.get("a") is None and not cache.absent("a")


def test_a_process_loop_is_uvloops() -> None:
    """runworker's and jobpoller's loop (loops.run): uvloop, which uvicorn[standard]
    installs, not asyncio's Python loop (asyncio.run ignored it before)."""

    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert loops.run(which()) == "uvloop"


def test_a_loop_bound_value_is_made_again_on_another_loop() -> None:
    made: list[asyncio.AbstractEventLoop] = []

    def make() -> asyncio.AbstractEventLoop:
        made.append(asyncio.get_running_loop())
        return made[-1]

    bound = LoopBound(make)

    async def twice() -> tuple[object, object]:
        return bound.get(), bound.get()

    first = asyncio.run(twice())
    second = asyncio.run(twice())
    assert first[0] is first[1] and second[0] is second[1]  # once per loop
    assert len(made) == 2 and made[0] is not made[1]

    async def current() -> object:
        return bound.current()

    assert asyncio.run(current()) is None  # the last value is another loop's
    loop_and_value = bound.bound()
    assert loop_and_value is not None and loop_and_value[0] is made[1]


async def test_a_spent_value_is_made_again() -> None:
    async def finish() -> None:
        pass

    tasks = LoopBound(
        lambda: asyncio.get_running_loop().create_task(finish()), spent=lambda t: t.done()
    )
    first = tasks.get()
    assert tasks.get() is first
    await first
    assert tasks.current() is None
    assert tasks.get() is not first


async def test_a_value_set_on_this_loop_until_cleared() -> None:
    bound: LoopBound[str] = LoopBound()
    assert bound.current() is None
    with pytest.raises(LookupError):
        bound.get()
    assert bound.set("mine") == "mine" and bound.get() == "mine"
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(bound.bound()))
    thread.start()
    thread.join()
    assert seen == [(asyncio.get_running_loop(), "mine")]  # from any thread
    bound.clear()
    assert bound.current() is None


@pytest.mark.django_db
def test_a_saved_change_drops_every_registered_cache_in_this_process_at_once(
    django_capture_on_commit_callbacks, monkeypatch
) -> None:
    info, loads = key_info(), []
    monkeypatch.setattr(keys, "_load", lambda secret_hash: loads.append(secret_hash) or info)
    for _ in range(2):
        assert async_to_sync(keys.cache.lookup)(info.secret_hash) == info
    assert len(loads) == 1  # read once, then held
    ownership.owned_models.load()
    prices.loaded_at = 1e12  # as if just loaded
    with django_capture_on_commit_callbacks(execute=True):
        LimitProfile.objects.get(name="default").save()
    assert async_to_sync(keys.cache.lookup)(info.secret_hash) == info
    assert len(loads) == 2  # read again
    assert ownership.owned_models.loaded is None
    assert prices.loaded_at < 0  # reloaded at the next chance
