"""One limiter per channel layer: a lease on a Redis key, so a second `runworker limiter`
cannot silently split the authority (every limit would double).

The holder refreshes the key every HEARTBEAT seconds and records the wall time it was
last alive; a limiter starting after a crash reads that time and assumes every scope was
at its fullest then (Engine.unknown_before), so limits hold across the restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

import redis.asyncio as redis

logger = logging.getLogger(__name__)

LOCK_KEY = "sluice:limiter:authority"
ALIVE_KEY = "sluice:limiter:alive"
LOCK_TTL_MS = 3000
HEARTBEAT = 0.5

# Extend the lock only if we still hold it: compare and extend in one step.
EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


def _text(value: bytes | str | None) -> str:
    """A GET reply as text: bytes from this client (no decode_responses), though
    redis-py types every reply as bytes or str."""
    if isinstance(value, bytes):
        return value.decode()
    return value or ""


class AuthorityTaken(Exception):
    pass


class Authority:
    def __init__(self, redis_url: str) -> None:
        self.client = redis.from_url(redis_url)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.last_alive: float | None = None  # wall time a previous limiter was last alive

    async def acquire(self, wait: float) -> None:
        """Take the authority, waiting up to `wait` seconds for a dead holder's lease to lapse."""
        deadline = time.monotonic() + wait
        raw = await self.client.get(ALIVE_KEY)
        self.last_alive = float(raw) if raw else None
        while not await self.client.set(LOCK_KEY, self.token, nx=True, px=LOCK_TTL_MS):
            if time.monotonic() >= deadline:
                raise AuthorityTaken(_text(await self.client.get(LOCK_KEY)) or "?")
            await asyncio.sleep(0.25)
        # A holder that died since we read it may have been alive until just now.
        raw = await self.client.get(ALIVE_KEY)
        self.last_alive = float(raw) if raw else None
        await self.client.set(ALIVE_KEY, time.time())

    async def keep(self, stop: asyncio.Event, alive_until: Callable[[], float] = time.time) -> None:
        """Refresh the lease and the heartbeat until `stop`; set `stop` if another took over.

        The heartbeat records `alive_until()`: the wall time a successor must assume every
        bucket full at. Now, unless a settled overrun left a bucket more than full (the
        limiter passes its engine's `fullness_bound`)."""
        while not stop.is_set():
            try:
                extended = await self.client.eval(EXTEND, 1, LOCK_KEY, self.token, LOCK_TTL_MS)
                if not extended:
                    # Gone (a Redis restart) or taken. Re-take it if free; else step down.
                    if not await self.client.set(LOCK_KEY, self.token, nx=True, px=LOCK_TTL_MS):
                        logger.critical("another limiter took the authority; stopping this one")
                        stop.set()
                        return
                await self.client.set(ALIVE_KEY, alive_until())
            except (redis.RedisError, OSError) as exc:
                logger.error("cannot refresh the limiter authority (%s); still serving", exc)
            try:
                await asyncio.wait_for(stop.wait(), HEARTBEAT)
            except TimeoutError:
                pass

    async def release(self) -> None:
        try:
            if _text(await self.client.get(LOCK_KEY)) == self.token:
                await self.client.delete(LOCK_KEY)
            await self.client.set(ALIVE_KEY, time.time())
        except (redis.RedisError, OSError):
            pass
        await self.client.aclose()
