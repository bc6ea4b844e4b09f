"""A per-process cache of database reads that a configuration change drops whole.

The key cache (limiter/gateway/keys.py) and the map of who owns which fine-tuned model
(limiter/jobs/ownership.py) answer the hot path without a query. A change to what they
hold is broadcast (limiter/protocol/changes.py), and `clear()` drops everything at once;
the TTL only bounds how stale an entry can be should a broadcast be missed.

A read that was running when `clear()` came may predate the change (a revocation): its
answer must not be stored, or the revoked key would be served until the TTL. So `clear()`
bumps a generation, a reader notes the generation before it reads, and `put` stores its
answer only if no clear came in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from cachetools import TTLCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class GenerationCache(Generic[K, V]):
    """A bounded TTL map of `ttl` seconds and `maxsize` entries, dropped whole by `clear()`.

    With `absent_ttl`, an answer of "none" (`put(key, None, ...)`) is remembered too, in a
    map of its own (`absent_maxsize` entries), so a scan of random names can neither grow
    memory without limit nor push out what is there.
    """

    def __init__(
        self,
        *,
        ttl: float,
        maxsize: int,
        absent_ttl: float = 0.0,
        absent_maxsize: int = 0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._present: TTLCache[K, V] = TTLCache(maxsize=maxsize, ttl=ttl, timer=timer)
        self._absent: TTLCache[K, bool] | None = None
        if absent_ttl > 0 and absent_maxsize > 0:
            self._absent = TTLCache(maxsize=absent_maxsize, ttl=absent_ttl, timer=timer)
        self.generation = 0  # bumped by every clear()

    def get(self, key: K) -> V | None:
        """The value held for `key`, if any (and not expired)."""
        return self._present.get(key)

    def absent(self, key: K) -> bool:
        """Whether a read lately found nothing for `key` (and no clear came since)."""
        return self._absent is not None and key in self._absent

    def clear(self) -> None:
        self.generation += 1
        self._present.clear()
        if self._absent is not None:
            self._absent.clear()

    def put(self, key: K, value: V | None, generation: int) -> bool:
        """Store what a read begun at `generation` found (None: nothing), unless a clear
        came meanwhile. Whether it was stored."""
        if generation != self.generation:
            return False
        if value is None:
            self._present.pop(key, None)
            if self._absent is not None:
                self._absent[key] = True
        else:
            self._present[key] = value
        return True
