"""Every 429 Sluice or Together gives a caller, reported in one place.

A refusal is counted in /metrics (by endpoint, reason and who refused), kept in the 429
record for the auditors under its caller's team, key and request id (written off the
request path: limiter/gateway/refusals.py), and, when Sluice refused, counted for its
team's alerts. Together's 429s reach the alerts another way: the upstream client counts
every answer of an account (limiter/upstream.py), so they are not counted twice.
"""

from __future__ import annotations

from typing import Protocol

from limiter import metrics
from limiter.alerts.monitor import monitor as alerts_monitor
from limiter.gateway.keys import KeyInfo
from limiter.gateway.refusals import Recorder
from limiter.gateway.refusals import recorder as refusal_recorder

GATEWAY = "gateway"  # Sluice refused (the limiter, a budget, a wait that ran out)
UPSTREAM = "upstream"  # Together refused


class Monitor(Protocol):
    def team_refused(self, team_id: int | None) -> None: ...


class RefusalSink:
    """Where the gateway reports each refusal; `recorder` and `monitor` are the process's
    429 record and alert counters unless a test gives its own."""

    def __init__(self, recorder: Recorder | None = None, monitor: Monitor | None = None) -> None:
        self.recorder: Recorder = recorder if recorder is not None else refusal_recorder
        self.monitor: Monitor = monitor if monitor is not None else alerts_monitor

    def refused(
        self,
        key: KeyInfo,
        request_id: str,
        endpoint: str,
        model: str,
        *,
        reason: str,
        source: str,
        retry_after: float,
        message: str = "",
    ) -> None:
        """One caller refused: `source` is GATEWAY or UPSTREAM."""
        metrics.REFUSED.labels(endpoint, reason, source).inc()
        if source == GATEWAY:
            self.monitor.team_refused(key.team_id)
        self._record(key, request_id, endpoint, model, reason, source, retry_after, message)

    def shadow_refused(
        self,
        key: KeyInfo,
        request_id: str,
        endpoint: str,
        model: str,
        *,
        reason: str,
        message: str = "",
    ) -> None:
        """One call admitted that a shadow limit or budget would have refused: counted
        and kept in the 429 record marked shadow, but no alert (nobody was refused)."""
        metrics.SHADOW_REFUSED.labels(key.team_name, endpoint, reason).inc()
        self._record(key, request_id, endpoint, model, reason, GATEWAY, None, message, shadow=True)

    def _record(
        self,
        key: KeyInfo,
        request_id: str,
        endpoint: str,
        model: str,
        reason: str,
        source: str,
        retry_after: float | None,
        message: str,
        *,
        shadow: bool = False,
    ) -> None:
        self.recorder.refusal(
            team_id=key.team_id,
            team_name=key.team_name,
            key_prefix=key.prefix,
            upstream=key.account_name,
            endpoint=endpoint,
            model=model,
            reason=reason,
            source=source,
            retry_after=retry_after,
            request_id=request_id,
            message=message,
            shadow=shadow,
        )
