"""Sliding-window request limits, the way Together enforces them (per key, per second).

A window counts the requests admitted in the last `width` seconds: the sandbox is meant to
be strict and exact, so a gateway that paces badly sees the 429s Together would send.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from .config import KindLimits


@dataclass(frozen=True)
class Decision:
    """The limiter's answer, with what the x-ratelimit-* headers report."""

    allowed: bool
    limit: int | None
    remaining: int | None
    # Seconds until the binding window frees a slot (0 when a slot is free now).
    reset: float

    @property
    def retry_after(self) -> int:
        """Whole seconds for the Retry-After header; never 0, which clients read as 'now'."""
        return max(1, math.ceil(self.reset))


class SlidingWindow:
    """Admission timestamps of one (key, kind, width)."""

    def __init__(self, width: float) -> None:
        self.width = width
        self.times: deque[float] = deque()

    def _expire(self, now: float) -> None:
        # A timestamp exactly `width` old has left the window: (now - width, now].
        while self.times and self.times[0] <= now - self.width:
            self.times.popleft()

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self.times)

    def reset_in(self, now: float) -> float:
        self._expire(now)
        return max(0.0, self.times[0] + self.width - now) if self.times else 0.0

    def wait_for_room(self, now: float, limit: int) -> float:
        """Seconds until fewer than `limit` remain, so one more fits; 0 when it fits now.

        Unlike `reset_in`, right even when a shrinking (dynamic) limit leaves the window over full.
        """
        self._expire(now)
        excess = len(self.times) - max(1, limit)
        return 0.0 if excess < 0 else self.times[excess] + self.width - now


class Cushion:
    """A bucket of `burst` requests refilling at `per_second` (GCRA: one theoretical arrival
    time): bursts of up to `burst` at once, never more than the rate over time, and a
    request that arrives late leaves room for the next to arrive early."""

    def __init__(self) -> None:
        self.tat = -math.inf  # when the bucket would be full again at the rate

    def wait_for_room(self, now: float, per_second: float, burst: int) -> float:
        """Seconds until one more fits; 0 when it fits now."""
        interval = 1.0 / per_second
        wait = self.tat - (max(1, burst) - 1) * interval - now
        return wait if wait > 1e-9 else 0.0  # float dust of summed intervals is no wait

    def add(self, now: float, per_second: float) -> None:
        self.tat = max(self.tat, now) + 1.0 / per_second

    def remaining(self, now: float, per_second: float, burst: int) -> int:
        """Whole requests that would fit now."""
        used = max(0.0, self.tat - now) * per_second
        return max(0, min(burst, math.floor(burst - used + 1e-9)))


class TokenWindow:
    """Admitted tokens of one budget over the last `width` seconds: (time, tokens) pairs."""

    def __init__(self, width: float) -> None:
        self.width = width
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def _expire(self, now: float) -> None:
        while self.entries and self.entries[0][0] <= now - self.width:
            self.total -= self.entries.popleft()[1]

    def used(self, now: float) -> int:
        self._expire(now)
        return self.total

    def add(self, now: float, tokens: int) -> None:
        self.entries.append((now, tokens))
        self.total += tokens

    def wait_for_room(self, now: float, limit: int, need: int) -> float:
        """Seconds until `need` more tokens fit under `limit`; 0 when they fit now.

        A request bigger than the whole limit fits only an empty window, so it waits rather than
        being refused forever.
        """
        self._expire(now)
        if not self.entries or self.total + need <= limit:
            return 0.0
        excess, freed = self.total + need - limit, 0
        for t, tokens in self.entries:
            freed += tokens
            if freed >= excess:
                return t + self.width - now
        return self.entries[-1][0] + self.width - now


class SlidingWindowLimiter:
    """Per (key, kind) limits over a 1 s and a 60 s window; check and record in one step."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str, float], SlidingWindow] = {}

    def _window(self, key: str, kind: str, width: float) -> SlidingWindow:
        return self._windows.setdefault((key, kind, width), SlidingWindow(width))

    def acquire(self, key: str, kind: str, limits: KindLimits, now: float) -> Decision:
        """Admit and record the request if every window has room; otherwise record nothing."""
        bounded = [
            (self._window(key, kind, width), limit)
            for width, limit in (
                (1.0, limits.requests_per_second),
                (60.0, limits.requests_per_minute),
            )
            if limit is not None
        ]
        full = [(w, limit) for w, limit in bounded if w.count(now) >= limit]
        if full:
            # The caller must wait for the slowest window that is full.
            window, limit = max(full, key=lambda item: item[0].reset_in(now))
            return Decision(False, limit, 0, window.reset_in(now))
        for window, _ in bounded:
            window.times.append(now)
        if not bounded:
            return Decision(True, None, None, 0.0)
        # Report the tightest window, as Together reports its per-second limit.
        window, limit = min(bounded, key=lambda item: item[1] - item[0].count(now))
        return Decision(True, limit, limit - window.count(now), window.reset_in(now))

    def clear(self) -> None:
        self._windows.clear()


def max_in_any_window(times: list[float], width: float) -> int:
    """Most timestamps inside any half-open window of `width` seconds (two-pointer sweep).

    Matches the limiter's own window, so for an admitted stream this never exceeds the limit.
    """
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best
