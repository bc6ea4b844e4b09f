"""The limiter's live view: the snapshot the dashboard draws (events.LiveSnapshot), from the
engine's scopes and queue, the counts kept beside it (limiter/authority/stats.py), the
learned ceilings and the coalescing counts.

`publish` keeps a task that sends a snapshot to the live group at most twice a second
while anything changes, and every few seconds when nothing does, so the dashboard knows
the limiter is alive; each round it also forgets the engine's idle scopes (with their
counts) and runs the caller's own periodic step (the learned ceilings' ramp).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from channels.layers import BaseChannelLayer

from limiter import metrics
from limiter.authority.ceilings import Ceiling
from limiter.authority.coalesce_stats import CoalesceStats
from limiter.authority.engine import Engine, Scope, ScopeId
from limiter.authority.learning import LearnedCeilings
from limiter.authority.near import NearLimit, NearLimitEvent
from limiter.authority.sharing import sharing_state
from limiter.authority.stats import HISTORY_BUCKET_SECONDS, Stats
from limiter.protocol import events
from limiter.protocol.client import spawn
from limiter.protocol.events import ModelCeilingSnapshot, ScopeSnapshot, SharingSnapshot

logger = logging.getLogger(__name__)

SNAPSHOT_INTERVAL = 0.5  # at most two live snapshots a second while anything changes
HEARTBEAT_INTERVAL = 5.0  # a snapshot even when idle, so the dashboard knows we are alive


def _ignore_near(event: NearLimitEvent) -> None:
    return None


class LiveView:
    def __init__(
        self,
        engine: Engine,
        stats: Stats,
        ceilings: LearnedCeilings,
        coalesced: CoalesceStats,
        near: NearLimit | None = None,
    ) -> None:
        self.engine = engine
        self.stats = stats
        self.ceilings = ceilings
        self.coalesced = coalesced
        self.near = near or NearLimit()
        self._on_near: Callable[[NearLimitEvent], None] = _ignore_near
        self.started_at = time.time()
        self._dirty = True
        self._last = 0.0
        self._publisher: asyncio.Task[Any] | None = None
        self._layer: BaseChannelLayer | None = None
        self._each_round: Callable[[float], None] = _nothing

    def publish_to(
        self,
        layer: BaseChannelLayer,
        each_round: Callable[[float], None],
        on_near: Callable[[NearLimitEvent], None] = _ignore_near,
    ) -> None:
        """Where `publish` sends snapshots, what else to do each round, and whom to tell
        of a key near its limit for the alert's duration."""
        self._layer, self._each_round, self._on_near = layer, each_round, on_near

    def changed(self) -> None:
        """Something the view shows changed: the next round publishes."""
        self._dirty = True

    def due(self, now: float) -> bool:
        """Whether to publish now (something changed, or the heartbeat is due); a yes
        counts as published."""
        if not self._dirty and now - self._last < HEARTBEAT_INTERVAL:
            return False
        self._dirty = False
        self._last = now
        return True

    def publish(self) -> None:
        """Keep the publishing task running (started at the first change)."""
        if self._layer is not None and (self._publisher is None or self._publisher.done()):
            self._publisher = spawn(self._publish_forever(self._layer))

    def close(self) -> None:
        if self._publisher:
            self._publisher.cancel()

    async def _publish_forever(self, layer: BaseChannelLayer) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL)
            now = time.monotonic()
            self._each_round(now)
            if not self.due(now):
                continue
            try:
                await layer.group_send(events.LIVE_GROUP, self.snapshot())
            except Exception:
                logger.exception("could not publish a live snapshot")
            forgotten = self.engine.forget_idle(now)
            if forgotten:
                self.stats.forget(forgotten)
                self.near.forget(forgotten)
                self._dirty = True

    def snapshot(self) -> events.LiveSnapshot:
        now = time.monotonic()
        engine, stats = self.engine, self.stats
        queued_by_scope: dict[ScopeId, list[float]] = defaultdict(list)
        for ticket in engine.tickets.values():
            queued_by_scope[ticket.key.id].append(ticket.arrived)
            queued_by_scope[ticket.account.id].append(ticket.arrived)
        return {
            "type": events.LIVE_SNAPSHOT,
            "at": time.time(),
            "limiter": {
                "started_at": self.started_at,
                "decisions": stats.decisions,
                "tickets_queued": len(engine.tickets),
                "leases": len(engine.leases),
                "history_bucket_seconds": HISTORY_BUCKET_SECONDS,
            },
            "scopes": self._near_counted(
                [
                    self._scope(s, queued_by_scope.get(s.id, []), now)
                    for s in engine.scopes.values()
                    if s.id[1]  # not the unlimited halves of merged embeddings calls
                ]
            ),
            "upstream_headers": {k: dict(v) for k, v in stats.upstream_headers.items()},
            "models": [
                self._model(scope_id, ceiling, now)
                for scope_id, ceiling in sorted(self.ceilings.ceilings.items())
            ],
            "history": {
                endpoint: [list(row) for row in rows] for endpoint, rows in stats.history.items()
            },
            "coalescing": self.coalesced.snapshot(now),
            "sharing": self._sharing(now),
        }

    def _sharing(self, now: float) -> list[SharingSnapshot]:
        """Per account and model, each class served lately or waiting: its share, its use,
        whether it lends or borrows now."""
        rows: list[SharingSnapshot] = []
        for scope_id, group in self.engine.groups.items():
            _, account, endpoint, model = scope_id
            if not account:
                continue
            waiting: dict[str, int] = defaultdict(int)
            classes = dict(group.classes)
            for queue in group.by_key.values():
                for ticket in queue:
                    if ticket.klass.id:
                        waiting[ticket.klass.id] += 1
                        classes[ticket.klass.id] = ticket.klass
            for holder, klass in sorted(classes.items()):
                usage = group.usage.get(holder)
                use = round(usage.fraction(now), 4) if usage else 0.0
                rows.append(
                    {
                        "account": account,
                        "endpoint": endpoint,
                        "model": model,
                        "holder": holder,
                        "share": klass.share,
                        "priority": klass.priority,
                        "weight": klass.weight,
                        "use": use,
                        "waiting": waiting[holder],
                        "state": sharing_state(klass.share, use, waiting[holder]),
                    }
                )
        return rows

    def _model(self, scope_id: ScopeId, ceiling: Ceiling, now: float) -> ModelCeilingSnapshot:
        _, account, endpoint, model = scope_id
        refused = self.stats.upstream_refused.get(scope_id)
        unavailable = self.stats.unavailable.get(scope_id)
        return {
            "account": account,
            "endpoint": endpoint,
            "model": model,
            "cap_per_minute": ceiling.cap_per_minute,
            "learned_per_minute": ceiling.learned,
            "learned_tokens_per_minute": ceiling.learned_tokens,
            "pace_per_minute": round(ceiling.pace, 3),
            "token_pace_per_minute": ceiling.token_pace,
            "source": ceiling.source,
            "updated_at": self.ceilings.changed_at.get(scope_id),
            "last_headers": dict(self.stats.model_headers.get(scope_id, {})),
            "upstream_429_last_minute": refused.last_minute(now) if refused else 0,
            "upstream_503_last_minute": unavailable.last_minute(now) if unavailable else 0,
        }

    @staticmethod
    def _near_counted(scopes: list[ScopeSnapshot]) -> list[ScopeSnapshot]:
        """The scopes near their limit, counted in /metrics by kind and endpoint."""
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for row in scopes:
            counts[(row["kind"], row["endpoint"])] += row.get("near_limit", False)
        metrics.NEAR_LIMIT_SCOPES.clear()  # a scope gone or back below its limit counts 0
        for (kind, endpoint), count in counts.items():
            metrics.NEAR_LIMIT_SCOPES.labels(kind, endpoint).set(count)
        return scopes

    def _use(self, scope: Scope, now: float) -> tuple[int, int, float]:
        """Admitted and shadow-refused in the last minute, and the use as a fraction of
        the limit (a shadow scope's: what its enforced twin would have admitted)."""
        admitted_counts = self.stats.admitted.get(scope.id)
        shadowed_counts = self.stats.shadowed.get(scope.id)
        admitted = admitted_counts.last_minute(now) if admitted_counts else 0
        shadowed = shadowed_counts.last_minute(now) if shadowed_counts else 0
        fraction = self.near.fraction(scope, max(0, admitted - shadowed))
        event = self.near.observe(scope, fraction, now)
        if event is not None:
            self._on_near(event)
        return admitted, shadowed, fraction

    def _scope(self, scope: Scope, arrivals: list[float], now: float) -> ScopeSnapshot:
        kind, object_id, endpoint, model = scope.id
        refused = self.stats.refused.get(scope.id)
        admitted, shadowed, fraction = self._use(scope, now)
        return {
            "kind": "key" if kind == "key" else "account",
            "id": object_id,
            "endpoint": endpoint,
            "model": model,
            "limit_per_minute": scope.limit.per_minute,
            "burst": scope.limit.burst,
            "in_use": round(scope.requests.debt(now), 3),
            "admitted_last_minute": admitted,
            "queued": len(arrivals),
            "longest_wait": round(now - min(arrivals), 3) if arrivals else 0.0,
            "leases": len(scope.leases),
            "max_concurrent": scope.limit.max_concurrent,
            "tokens_per_minute": scope.limit.tokens_per_minute,
            "tokens_in_use": round(scope.tokens.debt(now), 1) if scope.tokens else None,
            "paused_for": round(max(0.0, scope.paused_until - now), 3),
            "refused_last_minute": {
                source: counts.last_minute(now) for source, counts in (refused or {}).items()
            }
            or {"gateway": 0, "upstream": 0},
            "shadow": scope.limit.shadow,
            "shadow_refused_last_minute": shadowed,
            "use_fraction": round(fraction, 3),
            "near_limit": self.near.near(scope.id),
        }


def _nothing(now: float) -> None:
    return None
