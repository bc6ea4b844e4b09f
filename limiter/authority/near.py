"""Near-limit signals: each scope's use over the last minute as a fraction of its limit,
whether it is above the threshold (SLUICE_NEAR_LIMIT_FRACTION, default 80%), and how long
a key's scope has stayed there, for the alert "team above N% of its limit for M minutes".

Use is requests admitted in the last minute (the live counts, limiter/authority/stats.py)
over the scope's rate per minute (what its bucket refills at: the pace where one is set,
an account model's learned pace). A shadow scope's use is what its enforced twin would
have admitted: the admitted calls less its would-be refusals. Pure: time comes in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from limiter.authority.engine import Scope, ScopeId

DEFAULT_FRACTION = 0.8


@dataclass(frozen=True, slots=True)
class NearLimitEvent:
    """A key's scope above the threshold for the alert's whole duration (once per run)."""

    key_id: str
    endpoint: str
    model: str
    fraction: float
    minutes: float


@dataclass
class NearLimit:
    threshold: float = DEFAULT_FRACTION
    alert_after: float = 300.0  # seconds above the threshold that raise the alert; 0: never
    # Each scope above the threshold: since when (monotonic), and whether it was told.
    since: dict[ScopeId, float] = field(default_factory=dict)
    told: set[ScopeId] = field(default_factory=set)

    @staticmethod
    def fraction(scope: Scope, admitted_last_minute: int) -> float:
        per_minute = scope.limit.per_minute
        return admitted_last_minute / per_minute if per_minute > 0 else 0.0

    def observe(self, scope: Scope, fraction: float, now: float) -> NearLimitEvent | None:
        """A scope's use now: whether it is near its limit is kept; the alert's event when
        a key's scope has just been near for `alert_after` seconds running."""
        scope_id = scope.id
        if fraction < self.threshold:
            self.since.pop(scope_id, None)
            self.told.discard(scope_id)
            return None
        since = self.since.setdefault(scope_id, now)
        kind, object_id, endpoint, model = scope_id
        if (
            kind != "key"
            or not self.alert_after
            or now - since < self.alert_after
            or scope_id in self.told
        ):
            return None
        self.told.add(scope_id)
        return NearLimitEvent(object_id, endpoint, model, fraction, (now - since) / 60.0)

    def near(self, scope_id: ScopeId) -> bool:
        return scope_id in self.since

    def forget(self, scope_ids: list[ScopeId]) -> None:
        for scope_id in scope_ids:
            self.since.pop(scope_id, None)
            self.told.discard(scope_id)
