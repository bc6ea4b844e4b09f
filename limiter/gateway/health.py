"""Operations endpoints (no auth, no Django middleware): bind them where only the
process manager, load balancer and Prometheus reach.

/healthz: the process is up and its event loop answers.
/readyz: it can do its job: the database answers, the channel layer carries a message,
and the limiter answers a ping. 503 with the failing checks otherwise.
/metrics: this process's Prometheus metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connection
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from limiter import metrics
from limiter.gateway.context import LimiterStarter
from limiter.protocol.client import LimiterUnavailable


def _db_ok() -> None:
    close_old_connections()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


class Health:
    """The operations endpoints of one process. `limiter` reaches its limiter client (as
    the team API's does); `draining` says whether the process is shutting down. Both
    given by whoever builds it (limiter/serving.py)."""

    def __init__(self, limiter: LimiterStarter, draining: Callable[[], bool]) -> None:
        self.limiter = limiter
        self.draining = draining

    async def readiness(self) -> tuple[bool, dict[str, object]]:
        checks: dict[str, object] = {}
        ok = not self.draining()
        if not ok:
            checks["draining"] = True
        started = time.monotonic()
        try:
            await sync_to_async(_db_ok, thread_sensitive=True)()
            checks["database"] = "ok"
        except Exception as exc:
            ok, checks["database"] = False, f"failed: {type(exc).__name__}"
        try:
            client = await self.limiter()
            checks["channel_layer"] = "ok"
            round_trip, counts = await client.ping()
            checks["limiter_round_trip_ms"] = round(round_trip * 1000, 2)
            checks["limiter"] = counts
        except LimiterUnavailable:
            ok, checks["limiter"] = False, "no answer"
        except Exception as exc:
            ok, checks["channel_layer"] = False, f"failed: {type(exc).__name__}"
        checks["took_ms"] = round((time.monotonic() - started) * 1000, 2)
        return ok, checks

    async def _process_gauges(self) -> None:
        try:
            client = await self.limiter()
        except Exception:  # the channel layer is down: /readyz says so; metrics go on
            return
        metrics.LOOP_LATE.set(client.lag.stalled_now())
        metrics.LOOP_TICKS.set(client.lag.ticks)
        metrics.REFUSAL_ASK_WAITS.set(client.refusals.waits)

    async def __call__(self, scope, receive, send) -> None:
        if scope["path"] == "/metrics":
            await self._process_gauges()
            await _answer(send, 200, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST)
            return
        if scope["path"] == "/readyz":
            ok, checks = await self.readiness()
            status, body = (
                (200 if ok else 503),
                {"status": "ready" if ok else "not ready", "checks": checks},
            )
        else:
            status, body = 200, {"status": "ok"}
        await _answer(send, status, json.dumps(body).encode(), "application/json")


async def _answer(send, status: int, payload: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
