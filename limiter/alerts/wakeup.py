"""The alerts loop's doorbell: `wake()`, from any thread, makes this process's loop look
for due deliveries now instead of at its next round.

services.notify rings it when it queues a delivery; the loop (delivery.run_alerts)
listens. It sits below both, so the code that raises alerts and the loop that sends
them (and raises the rate conditions through notify) do not import each other.
"""

from __future__ import annotations

import asyncio

from limiter.loops import LoopBound

_bell: LoopBound[asyncio.Event] = LoopBound()


def listen() -> asyncio.Event:
    """The bell of the running loop's alerts loop (set by `wake`; the loop clears it)."""
    return _bell.set(asyncio.Event())


def wake() -> None:
    """Ring the bell of this process's alerts loop, if one listens (from any thread)."""
    bound = _bell.bound()
    if bound is not None and not bound[0].is_closed():
        bound[0].call_soon_threadsafe(bound[1].set)
