"""Together's dynamic limits: per model, growing with recent success, enforced per second.

Each model has one budget (one per key and model when `DynamicLimits.per_key`). Its rate in
requests per minute is `DynamicLimits.request_rate`: about twice the successful rate over the
trailing window, never below the floor, never above the caps. It is enforced per second, one of
two ways (`DynamicLimits.enforcement`):

- `window` (the default, strict): at most ceil(rate / 60) admissions in any 1 s sliding window.
  A gateway pacing at 95% of 300 a minute (210 ms apart) gets a 429 whenever one call reaches
  it more than 53 ms later after its grant than the call five grants on.
- `cushion`: a bucket of ceil(rate / 60) requests refilling at rate / 60 a second (GCRA), the
  "burst cushion" Together's docs speak of: a call that arrives late leaves its room to the
  next, so pacing under the rate tolerates jitter up to about a second.

Either way, when the rate is not a multiple of 60, also at most `rate` in any 60 s window (a
6-a-minute image model gets 6 a minute, not 1 a second). A whole number a second is enforced
per second only: a limit that drops (420 to 240 a minute) allows 4 a second at once, and does
not refuse everything until the last minute's 420 have fallen under 240. Tokens work the same way
when token limits are on, in a 1 s window either way. Only successes grow the rate: a 429 or a
503 does not.

The headers show both views: `x-ratelimit-limit` / `-remaining` per second (what is enforced),
`x-ratelimit-limit-dynamic` / `-remaining-dynamic` the per-minute rate and what is left of it in
the last 60 s; `x-tokenlimit-*` likewise.

For benchmarks, each model keeps a series sampled once a second of the state's clock: `[t,
rate_per_minute, admitted, refused_429, refused_503]` for the second [t, t + 1), where the rate is
the one in force at t (summed over keys when per key), `admitted` counts what passed the limiter
and `refused_503` the admitted requests that then failed for capacity.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from typing import Any

from .config import DynamicLimits
from .ratelimit import Cushion, SlidingWindow, TokenWindow

REQUEST_LIMITED = "dynamic_request_limited"
TOKEN_LIMITED = "dynamic_token_limited"
# Samples kept per model: about 17 minutes at one a second.
SERIES_LENGTH = 1000


@dataclass(frozen=True)
class Allowance:
    """Requests or tokens of one budget after a decision, as the headers report them."""

    per_second: int
    remaining: int  # in the last second, and never more than the minute leaves
    per_minute: int  # the dynamic rate
    remaining_minute: int


@dataclass(frozen=True)
class DynamicDecision:
    allowed: bool
    error_type: str | None  # Together's 429 type when refused
    requests: Allowance
    tokens: Allowance | None  # None while token limits are off
    # Refused: seconds until this request would fit. Admitted: until another request fits.
    reset: float

    @property
    def retry_after(self) -> int:
        """Whole seconds for Retry-After; never 0, which clients read as 'now'."""
        return max(1, math.ceil(self.reset))


class SuccessLog:
    """Successful requests and their tokens, countable over any span since the last prune.

    The series samples past seconds, so this cannot forget as eagerly as a sliding window.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        # Tokens up to and including each entry: a span's tokens is one subtraction.
        self.cumulative: list[int] = []

    def add(self, now: float, tokens: int) -> None:
        self.times.append(now)
        self.cumulative.append((self.cumulative[-1] if self.cumulative else 0) + tokens)

    def between(self, start: float, end: float) -> tuple[int, int]:
        """(requests, tokens) that succeeded in (start, end]."""
        low, high = bisect_right(self.times, start), bisect_right(self.times, end)
        if high <= low:
            return 0, 0
        before = self.cumulative[low - 1] if low else 0
        return high - low, self.cumulative[high - 1] - before

    def prune(self, before: float) -> None:
        """Forget entries at or before `before`, in chunks so each call stays cheap on average."""
        stale = bisect_right(self.times, before)
        if stale and (stale >= 1024 or 2 * stale >= len(self.times)):
            del self.times[:stale]
            del self.cumulative[:stale]


class Budget:
    """The windows and success history of one model (or one key and model)."""

    def __init__(self) -> None:
        self.second = SlidingWindow(1.0)
        self.cushion = Cushion()
        self.minute = SlidingWindow(60.0)
        self.token_second = TokenWindow(1.0)
        self.token_minute = TokenWindow(60.0)
        self.successes = SuccessLog()

    def rates(self, limits: DynamicLimits, model: str, at: float) -> tuple[int, int | None]:
        """Requests and tokens per minute in force at `at`."""
        requests, tokens = self.successes.between(at - limits.window_seconds, at)
        return limits.request_rate(model, requests), limits.token_rate(tokens)

    def request_wait(self, now: float, rate: int, cushion: bool) -> float:
        if cushion:
            per_second = self.cushion.wait_for_room(now, rate / 60, math.ceil(rate / 60))
        else:
            per_second = self.second.wait_for_room(now, math.ceil(rate / 60))
        if rate % 60 == 0:
            return per_second  # whole per second: the per-second limit says it all
        return max(per_second, self.minute.wait_for_room(now, rate))

    def admit(self, now: float, rate: int) -> None:
        self.second.times.append(now)
        self.cushion.add(now, rate / 60)
        self.minute.times.append(now)

    def token_wait(self, now: float, rate: int, need: int) -> float:
        return max(
            self.token_second.wait_for_room(now, math.ceil(rate / 60), need),
            self.token_minute.wait_for_room(now, rate, need),
        )

    def requests_left(self, now: float, rate: int, cushion: bool) -> Allowance:
        per_second = math.ceil(rate / 60)
        minute_left = max(0, rate - self.minute.count(now))
        if cushion:
            second_left = self.cushion.remaining(now, rate / 60, per_second)
        else:
            second_left = per_second - self.second.count(now)
        remaining = max(0, second_left if rate % 60 == 0 else min(second_left, minute_left))
        return Allowance(per_second, remaining, rate, minute_left)

    def tokens_left(self, now: float, rate: int) -> Allowance:
        per_second = math.ceil(rate / 60)
        minute_left = max(0, rate - self.token_minute.used(now))
        remaining = max(0, min(per_second - self.token_second.used(now), minute_left))
        return Allowance(per_second, remaining, rate, minute_left)


class ModelTrack:
    """One model: its budgets, its counters and its rate series."""

    def __init__(self, now: float) -> None:
        self.budgets: dict[str, Budget] = {}
        self.series: deque[list[int]] = deque(maxlen=SERIES_LENGTH)
        self.second = math.floor(now)
        self.current = [0, 0, 0]  # admitted, refused_429, refused_503 during `second`
        self.ok = 0
        self.status_429 = 0
        self.token_limited_429 = 0
        self.status_503 = 0

    def rate(self, limits: DynamicLimits, model: str, at: float) -> int:
        return sum(budget.rates(limits, model, at)[0] for budget in self.budgets.values())


class DynamicLimiter:
    """Check and record in one step, per model; the event loop makes each call atomic."""

    def __init__(self) -> None:
        self.models: dict[str, ModelTrack] = {}

    def acquire(
        self, limits: DynamicLimits, *, key: str, model: str, tokens: int, now: float
    ) -> DynamicDecision:
        """Admit and record the request if it fits; otherwise count the 429 and record nothing."""
        track = self._track(limits, model, now)
        budget = track.budgets.setdefault(key if limits.per_key else "", Budget())
        rate, token_rate = budget.rates(limits, model, now)
        cushion = limits.enforcement == "cushion"
        error_type = None
        wait = budget.request_wait(now, rate, cushion)
        if wait > 0:
            error_type = REQUEST_LIMITED
        elif token_rate is not None:
            wait = budget.token_wait(now, token_rate, tokens)
            error_type = TOKEN_LIMITED if wait > 0 else None
        if error_type is None:
            budget.admit(now, rate)
            if token_rate is not None:
                budget.token_second.add(now, tokens)
                budget.token_minute.add(now, tokens)
            track.current[0] += 1
            wait = budget.request_wait(now, rate, cushion)
        else:
            track.current[1] += 1
            track.status_429 += 1
            if error_type == TOKEN_LIMITED:
                track.token_limited_429 += 1
        return DynamicDecision(
            allowed=error_type is None,
            error_type=error_type,
            requests=budget.requests_left(now, rate, cushion),
            tokens=None if token_rate is None else budget.tokens_left(now, token_rate),
            reset=wait,
        )

    def settle(
        self, limits: DynamicLimits, *, key: str, model: str, tokens: int, status: int, now: float
    ) -> None:
        """The final status of an admitted request: a success grows the rate, a 503 is counted."""
        track = self._track(limits, model, now)
        budget = track.budgets.setdefault(key if limits.per_key else "", Budget())
        if status < 300:
            budget.successes.add(now, tokens)
            track.ok += 1
        elif status == 503:
            track.current[2] += 1
            track.status_503 += 1

    def stats(self, limits: DynamicLimits, now: float) -> dict[str, Any]:
        models = {}
        for model in list(self.models):
            track = self._track(limits, model, now)
            token_rates = [b.rates(limits, model, now)[1] for b in track.budgets.values()]
            models[model] = {
                "rate_per_minute": track.rate(limits, model, now),
                "token_rate_per_minute": (
                    sum(r or 0 for r in token_rates) if limits.limits_tokens else None
                ),
                "ok": track.ok,
                "status_429": track.status_429,
                "token_limited_429": track.token_limited_429,
                "status_503": track.status_503,
                "series": [list(sample) for sample in track.series],
            }
        return models

    def _track(self, limits: DynamicLimits, model: str, now: float) -> ModelTrack:
        """The model's track with its series sampled up to the current second."""
        track = self.models.get(model)
        if track is None:
            track = self.models[model] = ModelTrack(now)
        current = math.floor(now)
        if current > track.second:
            # Seconds nobody asked about get their samples too, so the series has no holes.
            for t in range(max(track.second, current - SERIES_LENGTH), current):
                counts = track.current if t == track.second else [0, 0, 0]
                track.series.append([t, track.rate(limits, model, t), *counts])
            track.second, track.current = current, [0, 0, 0]
            # Keep what the rate at the current second still needs.
            for budget in track.budgets.values():
                budget.successes.prune(current - limits.window_seconds - 1)
        return track
