"""What Together allows each model, learned from its answers. Pure and clock-free.

Together limits each model on its own and moves the limit with the organisation's
recent successful traffic (../shared/together-api.md, section 1), and it says so on
every answer: `x-ratelimit-limit` / `-remaining` / `-reset` and `x-tokenlimit-*`, with
`-dynamic` variants when the dynamic limit is on. The limiter keeps one `Ceiling` per
(account, endpoint kind, model), starting from the profile's numbers, and paces that
model's scope at:

    pace = min(profile cap, learned ceiling x (1 - margin))          (requests and tokens)

- **Learned ceilings** come from the headers (the dynamic variant when present),
  read leniently: a missing, odd or fractional value never breaks anything. Together
  documents them as per second; `unit_seconds` says otherwise if that changes.
- **The margin adapts** between `MIN_MARGIN` (2%) and the configured one
  (`SLUICE_UPSTREAM_MARGIN`, 10%, where every model starts): it is there for the jitter
  between a grant and its arrival at Together, and for a ceiling not known yet. While the
  headers state the limit, callers want more than the pace and Together has not refused
  for a while, it narrows a point at a time (so use approaches 98% of a stated limit);
  a 429 at a stated limit doubles it.
- **A 429 whose headers state the limit is jitter, not a lower ceiling**: the headers
  already moved the learned ceiling (a lower limit lowers the pace at once), so the pace
  goes to that limit less the widened margin, not to half. **A 429 that states no limit
  cuts the pace multiplicatively** (`dynamic_token_limited` the token pace, anything
  else the request pace): the ceiling is unknown, so back off hard. Either way the scope
  pauses for the time Together asked.
- **Without a 429 for a while, a model with unmet demand ramps up** step by step
  (additive increase), never above the profile's cap nor what the headers report. A step
  is a tenth of that ceiling, not of the cap: a model Together allows 6 a minute climbs
  back from a 429 in steps of 0.54 a minute, not straight to its ceiling in one step of a
  tenth of a 1,200/min cap (Together: ramp gradually, never burst far above recent success).
- A 503 is capacity, not a limit: it changes no pace.

The limiter keeps the ceilings (limiter/authority/learning.py) and applies each as the
`Limit` of the model's account scope (limiter/authority/scopes.py). What a ceiling learned
(`Learned`) is kept in the database (limiter/authority/learned.py), so a restarted limiter
starts from it, not from the profile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from limiter.authority.engine import Limit

DECREASE = 0.5  # a 429 that states no limit halves the pace
# The margin in use, between these: it narrows by NARROW_STEP at most every STEP_SECONDS
# while clean under demand, and a 429 at a stated limit multiplies it by WIDEN.
MIN_MARGIN = 0.02
NARROW_STEP = 0.01
WIDEN = 2.0
QUIET_SECONDS = 10.0  # no 429 for this long before the pace may rise again
STEP_SECONDS = 2.0  # at most one increase this often
# An increase adds this much of the ceiling in force (additive, not compounding): of what the
# headers allow less the margin when Together has said, else of the profile's cap.
STEP_FRACTION = 0.1
FLOOR_PER_MINUTE = 1.0  # the pace never falls below one request a minute


def _number(headers: Mapping[str, str], *names: str) -> float | None:
    """The first of `names` that holds a positive number, leniently; else None."""
    for name in names:
        try:
            value = float(str(headers.get(name, "")).strip())
        except ValueError:
            continue
        if math.isfinite(value) and value > 0:
            return value
    return None


@dataclass(frozen=True, slots=True)
class Learned:
    """What a ceiling learned, as it is kept across restarts (per minute throughout)."""

    learned: float | None
    learned_tokens: float | None
    pace: float
    token_pace: float | None
    source: str
    updated_at: float  # unix time of the last change


@dataclass(slots=True)
class Ceiling:
    """One model's ceiling on one account: the profile's numbers, what Together's
    headers said, and the pace in use."""

    cap: Limit  # the profile's row for the endpoint: a cap and the starting point
    pace: float  # requests per minute in use
    token_pace: float | None  # tokens per minute in use, where a token limit applies
    learned: float | None = None  # requests per minute Together reported
    learned_tokens: float | None = None
    source: str = "profile"  # where the pace came from: "profile" | "headers" | "429"
    last_429: float = -math.inf
    last_increase: float = -math.inf
    # How far the margin in use is below the configured one (0: the configured one). Not
    # kept across restarts: a restarted limiter starts at the configured, widest margin.
    narrowed: float = 0.0

    @classmethod
    def start(cls, cap: Limit) -> Ceiling:
        return cls(cap=cap, pace=cap.per_minute, token_pace=cap.tokens_per_minute)

    # --- across restarts ---------------------------------------------------------------
    def learned_state(self, updated_at: float) -> Learned:
        return Learned(
            learned=self.learned,
            learned_tokens=self.learned_tokens,
            pace=self.pace,
            token_pace=self.token_pace,
            source=self.source,
            updated_at=updated_at,
        )

    def restore(self, state: Learned, *, margin: float) -> None:
        """Start from what a previous limiter learned, within today's profile: a cap
        lowered since then still holds, and a token pace needs a token cap."""
        self.learned, self.source = state.learned, state.source
        self.pace = max(FLOOR_PER_MINUTE, min(state.pace, self.ceiling(margin)))
        if self.cap.tokens_per_minute is not None:
            self.learned_tokens = state.learned_tokens
            top = self.token_ceiling(margin)
            if state.token_pace is not None and top is not None:
                self.token_pace = max(1.0, min(state.token_pace, top))

    # --- the limits ------------------------------------------------------------------
    def margin_in_use(self, margin: float) -> float:
        """The margin paced under now: the configured `margin`, less what clean service at
        the stated limit has narrowed it by, never under MIN_MARGIN (nor above `margin`)."""
        return max(min(MIN_MARGIN, margin), margin - self.narrowed)

    def ceiling(self, margin: float) -> float:
        """The highest request pace allowed now: the cap, or the learned limit less the
        margin in use."""
        top = self.cap_per_minute
        if self.learned is not None:
            top = min(top, self.learned * (1 - self.margin_in_use(margin)))
        return max(FLOOR_PER_MINUTE, top)

    def token_ceiling(self, margin: float) -> float | None:
        top = self.cap.tokens_per_minute
        if self.learned_tokens is not None:
            learned = self.learned_tokens * (1 - self.margin_in_use(margin))
            top = learned if top is None else min(top, learned)
        return top

    @property
    def cap_per_minute(self) -> float:
        return self.cap.per_minute

    def limit(self) -> Limit:
        """The model scope's limit: the profile's row at the pace in use."""
        return replace(self.cap, per_minute=self.pace, tokens_per_minute=self.token_pace)

    # --- what Together says ------------------------------------------------------------
    def observe(self, headers: Mapping[str, str], *, unit_seconds: float, margin: float) -> bool:
        """Learn from an answer's headers; returns whether the pace changed."""
        lowered = {name.lower(): value for name, value in headers.items()}
        per_minute = 60.0 / unit_seconds
        requests = _number(lowered, "x-ratelimit-limit-dynamic", "x-ratelimit-limit")
        tokens = _number(lowered, "x-tokenlimit-limit-dynamic", "x-tokenlimit-limit")
        if requests is None and tokens is None:
            return False
        before = (self.pace, self.token_pace)
        if requests is not None:
            self.learned = requests * per_minute
            if self.pace > self.ceiling(margin):
                self.pace, self.source = self.ceiling(margin), "headers"
        if tokens is not None and self.cap.tokens_per_minute is not None:
            self.learned_tokens = tokens * per_minute
            top = self.token_ceiling(margin)
            if top is not None and (self.token_pace is None or self.token_pace > top):
                self.token_pace, self.source = top, "headers"
        return (self.pace, self.token_pace) != before

    def refused(
        self,
        now: float,
        *,
        error_type: str,
        margin: float,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Together answered 429. When its `headers` state the limit it names (already
        learned by `observe`), the 429 says our calls reached it closer together than we
        granted them: widen the margin and pace at that limit less it. Otherwise the
        ceiling is unknown: cut the pace it names (multiplicative decrease)."""
        self.last_429 = now
        self.source = "429"
        tokens = error_type == "dynamic_token_limited" and self.token_pace is not None
        lowered = {name.lower(): value for name, value in (headers or {}).items()}
        if tokens:
            stated = _number(lowered, "x-tokenlimit-limit-dynamic", "x-tokenlimit-limit")
        else:
            stated = _number(lowered, "x-ratelimit-limit-dynamic", "x-ratelimit-limit")
        if stated is not None and (self.learned_tokens if tokens else self.learned) is not None:
            self.narrowed = margin - min(margin, WIDEN * self.margin_in_use(margin))
            self.pace = min(self.pace, self.ceiling(margin))
            top = self.token_ceiling(margin)
            if self.token_pace is not None and top is not None:
                self.token_pace = min(self.token_pace, top)
        elif tokens and self.token_pace is not None:
            self.token_pace = max(1.0, self.token_pace * DECREASE)
        else:
            self.pace = max(FLOOR_PER_MINUTE, self.pace * DECREASE)

    def ramp(self, now: float, *, demand: bool, margin: float) -> bool:
        """Raise the pace one step when callers want more than it and Together has not
        refused for a while (additive increase), or, already at the stated limit less the
        margin, narrow the margin a step; returns whether the pace rose."""
        if (
            not demand
            or now - self.last_429 < QUIET_SECONDS
            or now - self.last_increase < STEP_SECONDS
        ):
            return False
        top = self.ceiling(margin)
        if self.pace >= top:
            return self._narrow(now, margin)
        self.pace = min(top, self.pace + STEP_FRACTION * top)
        if self.token_pace is not None:
            token_top = self.token_ceiling(margin)
            if token_top is not None:
                self.token_pace = min(token_top, self.token_pace + STEP_FRACTION * token_top)
        self.last_increase = now
        return True

    def _narrow(self, now: float, margin: float) -> bool:
        """At the top under demand: narrow the margin a step, where it is what binds (the
        headers stated the limit and the profile's cap is above it)."""
        if self.learned is None or self.margin_in_use(margin) <= min(MIN_MARGIN, margin):
            return False
        if self.learned * (1 - self.margin_in_use(margin)) >= self.cap_per_minute:
            return False  # the cap binds: a narrower margin would raise nothing
        token_top = self.token_ceiling(margin)
        self.narrowed = min(margin - min(MIN_MARGIN, margin), self.narrowed + NARROW_STEP)
        self.pace = self.ceiling(margin)
        if self.token_pace is not None and token_top is not None and self.token_pace >= token_top:
            self.token_pace = self.token_ceiling(margin)  # at its top too: it follows
        self.last_increase = now
        return True
