"""The alerts loop's doorbell: `wake()`, from any thread, makes this process's loop look
for due deliveries now instead of at its next round.

services.notify rings it when it queues a delivery; the loop (delivery.run_alerts)
listens. It sits below both, so the code that raises alerts and the loop that sends
them (and raises the rate conditions through notify) do not import each other.
"""

from __future__ import annotations

import asyncio

_loop: asyncio.AbstractEventLoop | None = None
_bell: asyncio.Event | None = None


def listen() -> asyncio.Event:
    """The bell of the running loop's alerts loop (set by `wake`; the loop clears it)."""
    global _loop, _bell
    _loop, _bell = asyncio.get_running_loop(), asyncio.Event()
    return _bell


def wake() -> None:
    """Ring the bell of this process's alerts loop, if one listens."""
    if _loop is not None and _bell is not None and not _loop.is_closed():
        _loop.call_soon_threadsafe(_bell.set)
