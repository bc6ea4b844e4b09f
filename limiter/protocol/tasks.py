"""Background tasks that nobody awaits, kept until they end."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Run `coro` in the background, keeping a reference so it is not collected, and
    out of reach of the caller's cancellation (a release must happen even when the
    request that holds the lease is being cancelled)."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task
