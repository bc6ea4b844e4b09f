"""The auth-failure throttle: a guesser of keys is slowed, a caller with a valid key never is.

Only failures are counted and only failures are refused, per client address and per
one-minute window. Behind a load balancer every caller can share one address, so the
team API checks the key first (limiter/gateway/app.py): 30 bad keys from a neighbour must
not lock a team with a good key out.

The address is the TCP peer, or, when the peer is a proxy named in
SLUICE_TRUSTED_PROXIES, the right-most address in X-Forwarded-For that is not itself a
trusted proxy: what our own proxy saw. Anything left of that is the caller's to forge.

With REDIS_URL the counts live in Redis (one key per address, INCR and expiry in one
script), so the limit holds across web processes. Without Redis, or while Redis fails,
each process counts in a bounded in-memory cache.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Iterable, Sequence

import redis.asyncio as redis
from cachetools import TTLCache
from django.utils.crypto import salted_hmac

from limiter.loops import LoopBound

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
MAX_ADDRESSES = 10_000  # what a scan of many addresses may cost this process in memory
REDIS_TIMEOUT = 0.5  # a slow Redis must not hold up a 401 for long
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# INCR and the window's expiry in one step: two web processes never both start a window.
COUNT_FAILURE = """
local failures = redis.call('INCR', KEYS[1])
if failures == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return {failures, redis.call('PTTL', KEYS[1])}
"""
# The same window read without counting (a failure count of 0 when there is none).
READ_FAILURES = """
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('PTTL', KEYS[1])}
"""


def trusted_networks(entries: Iterable[str]) -> list[Network]:
    """SLUICE_TRUSTED_PROXIES as networks: addresses or CIDRs. Raises ValueError when one is not."""
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip()]


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """Who is calling: the peer, or the right-most untrusted hop a trusted proxy forwarded."""
    if not forwarded_for or not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop[:64]
    return hops[0] if hops else peer  # proxies all the way: the furthest is as near as we get


class MemoryFailures:
    """Per-process windows in a TTLCache: bounded in size, and an idle address is forgotten."""

    def __init__(self, window: float, max_addresses: int) -> None:
        self.window = window
        self.windows: TTLCache[str, tuple[int, float]] = TTLCache(maxsize=max_addresses, ttl=window)

    async def add(self, address: str) -> tuple[int, float]:
        """Count one failure: (failures in the address's current window, seconds it has left)."""
        now = time.monotonic()
        failures, ends = self.windows.get(address, (0, 0.0))
        if ends <= now:
            failures, ends = 0, now + self.window
        # Writing back refreshes the entry's TTL to now + window, never before `ends`.
        self.windows[address] = (failures + 1, ends)
        return failures + 1, ends - now

    async def read(self, address: str) -> tuple[int, float]:
        """The same, without counting one."""
        now = time.monotonic()
        failures, ends = self.windows.get(address, (0, 0.0))
        return (failures, ends - now) if ends > now else (0, 0.0)

    def __len__(self) -> int:
        return len(self.windows)


class RedisFailures:
    """Windows in Redis, shared by every web process of this deployment."""

    def __init__(self, url: str, window: float) -> None:
        self.url = url
        self.window_ms = int(window * 1000)
        # Deployments sharing one Redis keep their own counts: the namespace comes from SECRET_KEY.
        self.prefix = (
            f"sluice:authfail:{salted_hmac('sluice.auth-throttle', 'namespace').hexdigest()[:12]}:"
        )
        # A client belongs to the loop it was made on (tests run one loop per test).
        self._clients: LoopBound[redis.Redis] = LoopBound(
            lambda: redis.from_url(
                self.url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
            )
        )

    def _script(self, script: str = COUNT_FAILURE):
        return self._clients.get().register_script(script)

    async def add(self, address: str) -> tuple[int, float]:
        failures, ttl_ms = await self._script()(keys=[self.prefix + address], args=[self.window_ms])
        return int(failures), max(int(ttl_ms), 0) / 1000

    async def read(self, address: str) -> tuple[int, float]:
        failures, ttl_ms = await self._script(READ_FAILURES)(keys=[self.prefix + address])
        return int(failures), max(int(ttl_ms), 0) / 1000


class AuthThrottle:
    """Failed authentications per client address."""

    def __init__(
        self, per_minute: int, *, redis_url: str = "", max_addresses: int = MAX_ADDRESSES
    ) -> None:
        self.per_minute = per_minute
        self.memory = MemoryFailures(WINDOW_SECONDS, max_addresses)
        self.shared = RedisFailures(redis_url, WINDOW_SECONDS) if redis_url else None
        self._redis_warned_at = -math.inf

    async def failed(self, address: str) -> float:
        """Count a failed authentication from `address`. Seconds it must wait when this
        failure is over the limit (answer 429), else 0 (answer 401)."""
        failures, window_left = await self._count(address)
        return max(window_left, 0.001) if failures > self.per_minute else 0.0

    async def waiting(self, address: str) -> float:
        """Seconds `address` must still wait when it is already over the limit, else 0;
        counts nothing. For secrets a person can guess (passwords), asked before checking."""
        failures, window_left = await self._count(address, count=False)
        return max(window_left, 0.001) if failures >= self.per_minute else 0.0

    async def _count(self, address: str, *, count: bool = True) -> tuple[int, float]:
        if self.shared is not None:
            try:
                return await (self.shared.add if count else self.shared.read)(address)
            except (redis.RedisError, OSError) as exc:
                # A throttle must not turn a Redis outage into failed requests: count here
                # instead (per process, as without Redis), and say so once a window.
                now = time.monotonic()
                if now - self._redis_warned_at > WINDOW_SECONDS:
                    self._redis_warned_at = now
                    logger.warning(
                        "auth-failure throttle: Redis unavailable (%s); counting per process",
                        type(exc).__name__,
                    )
        return await (self.memory.add if count else self.memory.read)(address)
