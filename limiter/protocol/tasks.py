"""Background tasks that nobody awaits, kept until they end; and a wait that another
task can cut short."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Run `coro` in the background, keeping a reference so it is not collected, and
    out of reach of the caller's cancellation (a release must happen even when the
    request that holds the lease is being cancelled)."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


class Wakeable(Protocol):
    """What a wait can be cut short through: whoever holds it calls its `wake`."""

    wake: Callable[[], None] | None


async def until_woken(seconds: float, waiter: Wakeable) -> None:
    """Wait `seconds`, or less: until `waiter.wake` is called (a held refusal, a herd's
    waiter: limiter/protocol/refused.py). Calling it after the wait is over does nothing."""
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not woken.done():
            woken.set_result(None)

    waiter.wake = wake
    timer = loop.call_later(max(seconds, 0.0), wake)
    try:
        await woken
    finally:
        timer.cancel()
