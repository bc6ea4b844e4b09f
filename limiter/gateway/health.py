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

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connection
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from limiter import metrics, serving
from limiter.protocol.client import LimiterUnavailable


def _db_ok() -> None:
    close_old_connections()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def readiness() -> tuple[bool, dict[str, object]]:
    checks: dict[str, object] = {}
    ok = not serving.draining
    if serving.draining:
        checks["draining"] = True
    started = time.monotonic()
    try:
        await sync_to_async(_db_ok, thread_sensitive=True)()
        checks["database"] = "ok"
    except Exception as exc:
        ok, checks["database"] = False, f"failed: {type(exc).__name__}"
    try:
        client = await serving.ensure_started()
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


async def app(scope, receive, send) -> None:
    if scope["path"] == "/metrics":
        payload = generate_latest(metrics.REGISTRY)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPE_LATEST.encode()),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        return
    if scope["path"] == "/readyz":
        ok, checks = await readiness()
        status, body = (
            (200 if ok else 503),
            {"status": "ready" if ok else "not ready", "checks": checks},
        )
    else:
        status, body = 200, {"status": "ok"}
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
