"""Waiting for a condition: the tests' one polling helper.

What a server does off the request path (a recorder's flush, a poller's pass, a reload, a
report sent in the background) gives a test no signal: the test reads the state until it
holds, rather than sleeping a guessed time, so it goes on as soon as the state is there
and still waits long enough on a loaded machine. On time out it fails with what it waited
for and the last value read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _timed_out(what: str | None, within: float, value: Any) -> AssertionError:
    shown = repr(value)
    if len(shown) > 2000:
        shown = shown[:2000] + "..."
    return AssertionError(f"{what or 'the condition'}: not within {within:g} s; last read {shown}")


def wait_until(
    read: Callable[[], T],
    done: Callable[[T], object] = bool,
    *,
    within: float = 10.0,
    every: float = 0.05,
    what: str | None = None,
) -> T:
    """Call `read()` every `every` seconds until `done(value)` holds, and return that value
    (with the default `done`, until `read()` is truthy); AssertionError after `within`."""
    deadline = time.monotonic() + within
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, within, value)
        time.sleep(every)


async def await_until(
    read: Callable[[], Awaitable[T]],
    done: Callable[[T], object] = bool,
    *,
    within: float = 10.0,
    every: float = 0.05,
    what: str | None = None,
) -> T:
    """`wait_until` for a coroutine `read`, sleeping without blocking the event loop."""
    deadline = time.monotonic() + within
    while True:
        value = await read()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, within, value)
        await asyncio.sleep(every)
