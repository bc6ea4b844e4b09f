"""Process-wide things that belong to one event loop.

An HTTP client, a Redis client, a background task or a future is bound to the loop it
was made on; used from another loop it fails or hangs. A process runs one loop, but the
tests run one per test, and a server may start a new one: a module-level singleton of
such a thing is made again whenever the running loop is not the one it was made on.
`LoopBound` is that rule, written once.

`run` starts a process's loop: uvloop's where it is installed (uvicorn[standard] brings
it; `serve` under uvicorn gets it from uvicorn's own run), asyncio's otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a process's main coroutine on uvloop when it is installed: its loop and
    transports are C, where asyncio's are Python, and every wake-up costs less CPU
    (docs/measured.md, "CPU a call")."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] installs it on CPython/Linux
        return asyncio.run(main)
    return uvloop.run(main)


class LoopBound(Generic[T]):
    """A value of the running loop. `get()` makes it with `make` when there is none for
    this loop, or when `spent(value)` says it can no longer serve (a finished task)."""

    def __init__(
        self,
        make: Callable[[], T] | None = None,
        *,
        spent: Callable[[T], bool] | None = None,
    ) -> None:
        self._make = make
        self._spent = spent
        # One tuple, so that a reader on another thread (`bound`) sees a matching pair.
        self._bound: tuple[asyncio.AbstractEventLoop, T] | None = None

    def get(self) -> T:
        value = self.current()
        if value is None:
            if self._make is None:
                raise LookupError("nothing is bound to this loop and nothing can make it")
            value = self.set(self._make())
        return value

    def current(self) -> T | None:
        """The value made on the running loop, or None (none yet, another loop's, spent)."""
        bound = self._bound
        if bound is None or bound[0] is not asyncio.get_running_loop():
            return None
        if self._spent is not None and self._spent(bound[1]):
            return None
        return bound[1]

    def set(self, value: T) -> T:
        """Bind `value` to the running loop (what `get` would have made)."""
        self._bound = (asyncio.get_running_loop(), value)
        return value

    def clear(self) -> None:
        self._bound = None

    def bound(self) -> tuple[asyncio.AbstractEventLoop, T] | None:
        """The loop and its value, from any thread (without a running loop)."""
        return self._bound
