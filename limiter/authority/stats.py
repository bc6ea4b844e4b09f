"""What the limiter counts for the live view beyond the engine's own state: admissions and
refusals per scope over the last minute, each endpoint's last hour, and what Together said.

The counts follow the engine's scopes: a scope the engine forgets (idle) takes its counts
with it (`Stats.forget`), except a model's upstream refusals, which the models panel shows
as long as the model's ceiling is known.
"""

from __future__ import annotations

from collections import defaultdict, deque

from limiter.authority.engine import Decision, ScopeId
from limiter.protocol import events

# The live charts' history: counts per 10-second bucket over the last hour, so a fresh
# server's chart draws a line within seconds and moves smoothly (per-minute rows would
# show one point for a minute), at 360 rows an hour.
HISTORY_BUCKET_SECONDS = 10
HISTORY_BUCKETS = 3600 // HISTORY_BUCKET_SECONDS


class SecondCounts:
    """Counts per second over the last minute, in a ring of 60 slots."""

    __slots__ = ("slots",)

    def __init__(self) -> None:
        self.slots: list[list[int]] = [[-1, 0] for _ in range(60)]  # [second, count]

    def add(self, now: float, n: int = 1) -> None:
        second = int(now)
        slot = self.slots[second % 60]
        if slot[0] != second:
            slot[0], slot[1] = second, 0
        slot[1] += n

    def last_minute(self, now: float) -> int:
        floor = int(now) - 59
        return sum(count for second, count in self.slots if second >= floor)


def _gateway_and_upstream() -> dict[str, SecondCounts]:
    return {"gateway": SecondCounts(), "upstream": SecondCounts()}


def _hour() -> deque[list[int]]:
    return deque(maxlen=HISTORY_BUCKETS)


class Stats:
    """Sliding counts and history, fed with every decision and every upstream report."""

    def __init__(self) -> None:
        self.admitted: dict[ScopeId, SecondCounts] = defaultdict(SecondCounts)
        self.refused: dict[ScopeId, dict[str, SecondCounts]] = defaultdict(_gateway_and_upstream)
        # Calls admitted that a shadow scope would have refused, per that scope.
        self.shadowed: dict[ScopeId, SecondCounts] = defaultdict(SecondCounts)
        # endpoint -> deque of [bucket start (unix seconds), admitted, queued, refused];
        # only buckets with something in them (the browser fills the gaps with zeros)
        self.history: dict[str, deque[list[int]]] = defaultdict(_hour)
        self.upstream_headers: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
        # Per model's account scope: the last rate headers Together sent, and its 503s
        # (capacity, which change no pace but are worth seeing).
        self.model_headers: dict[ScopeId, dict[str, str]] = {}
        self.unavailable: dict[ScopeId, SecondCounts] = defaultdict(SecondCounts)
        self.upstream_refused: dict[ScopeId, SecondCounts] = defaultdict(SecondCounts)
        self.decisions = 0

    def _bucket(self, endpoint: str, wall: float) -> list[int]:
        start = int(wall // HISTORY_BUCKET_SECONDS * HISTORY_BUCKET_SECONDS)
        rows = self.history[endpoint]
        if not rows or rows[-1][0] != start:
            rows.append([start, 0, 0, 0])
        return rows[-1]

    def record(self, decision: Decision, mono: float, wall: float) -> None:
        self.decisions += 1
        ticket = decision.ticket
        endpoint = ticket.account.id[2]
        row = self._bucket(endpoint, wall)
        if decision.kind == "grant":
            if ticket.key.id[1]:  # a merged embeddings request counts by its callers
                row[1] += 1
            for scope in ticket.scopes:
                self.admitted[scope.id].add(mono)
            for who, _reason in decision.shadow:
                self.shadowed[(ticket.key if who == "key" else ticket.account).id].add(mono)
        elif decision.kind == "queued":
            row[2] += 1
        else:
            row[3] += 1
            for scope in ticket.scopes:
                self.refused[scope.id]["gateway"].add(mono)

    def record_refused_at_once(self) -> None:
        """A ticket refused before the engine saw it (a budget, units out of range)."""
        self.decisions += 1

    def forget(self, scope_ids: list[ScopeId]) -> None:
        for scope_id in scope_ids:
            self.admitted.pop(scope_id, None)
            self.refused.pop(scope_id, None)
            self.shadowed.pop(scope_id, None)

    def record_upstream(
        self, scope_id: ScopeId, message: events.UpstreamReportMessage, mono: float, wall: float
    ) -> None:
        """What Together said of a model's account scope: its headers, its 503s, and
        whether a 429 reached the caller."""
        if message["headers"]:
            seen = {**message["headers"], "at": f"{wall:.3f}"}
            self.upstream_headers[message["account"]][message["endpoint"]] = seen
            if scope_id[3]:
                self.model_headers[scope_id] = seen
        if message.get("unavailable"):  # Together's capacity: counted, no pace changes
            self.unavailable[scope_id].add(mono, message["unavailable"])
        if message.get("refused"):
            self.record_upstream_refusal(scope_id, mono, wall)

    def record_upstream_refusal(self, scope_id: ScopeId, mono: float, wall: float) -> None:
        self.refused[scope_id]["upstream"].add(mono)
        # Kept apart from the scope's counts, which go when the scope idles: the models
        # panel shows each model as long as its ceiling is known.
        self.upstream_refused[scope_id].add(mono)
        self._bucket(scope_id[2], wall)[3] += 1
