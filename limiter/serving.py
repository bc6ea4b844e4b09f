"""Process start-up: the background parts every web process runs, started once.

`ensure_started()` starts, once per process and on the running loop: the limiter
client's reply dispatcher, the 429 recorder, the usage recorder (with the model prices
loaded), the alerts loop, and (embedded mode) the limiter worker itself and the job
poller. `draining` is set while `serve` shuts down.

It is where the team API and the operations endpoints are built (`build_team_api`,
`build_health`, called by dashboard/asgi.py): they are given `ensure_started` to reach
the limiter client, and import nothing of this module.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from typing import Protocol

from channels.layers import get_channel_layer
from django.conf import settings

from limiter.gateway.app import TeamApi, team_api
from limiter.gateway.health import Health
from limiter.gateway.sink import RefusalSink
from limiter.loops import LoopBound
from limiter.protocol import events
from limiter.protocol.client import LimiterClient, spawn

logger = logging.getLogger(__name__)

# Set when the process is shutting down: /readyz answers 503 so no new work is sent here.
draining = False

_started: LoopBound[asyncio.Future[LimiterClient]] = LoopBound()


async def ensure_started() -> LimiterClient:
    """Start this process's background parts once, on the running loop."""
    started = _started.current()
    if started is None:
        started = _started.set(asyncio.get_running_loop().create_future())
        try:
            started.set_result(await _start())
        except BaseException as exc:
            started.set_exception(exc)
            _started.clear()
            raise
    return await asyncio.shield(started)


async def _start() -> LimiterClient:
    from limiter.gateway.refusals import recorder
    from limiter.upstream import client as upstream

    client = LimiterClient()
    await client.start()
    recorder.start()
    if settings.SLUICE_USAGE_RECORDING:
        from limiter.usage.prices import prices
        from limiter.usage.recorder import usage_recorder

        # Staff's overrides and Together's list, in the background: no call waits for
        # Together's model list (calls of models with no price yet are priced at flush).
        prices.fetch_in_background()
        usage_recorder.start()
    upstream.client  # noqa: B018  (build it now: its TLS context costs tens of ms, not for the first caller)
    from limiter.alerts.delivery import run_alerts

    spawn(run_alerts())  # every web process checks and delivers; the database dedupes
    if settings.SLUICE_EMBEDDED_LIMITER:
        spawn(run_embedded_limiter())
    if settings.SLUICE_EMBEDDED_JOB_POLLER:
        from limiter.jobs.poller import run_poller

        spawn(run_poller(asyncio.Event()))
    return client


# Container allocations (less deallocations) between two young collections; CPython's is
# 700, a collection every few calls. Measured at 16 callers (docs/measured.md, "CPU a
# call"), the young collections' CPU fell by about a third at 3,000, and rose again at
# 20,000, each then a pause of over 20 ms. Garbage without cycles is freed at once either way.
GC_YOUNG_THRESHOLD = 3_000


def settle_heap() -> None:
    """Once a serving process has started: what start-up built (Django, the URL
    resolvers, the models, the caches' first rows; about 170,000 objects) lives as long
    as the process, so it is collected once and then frozen, out of every later
    collection's walk. Before this, a full collection under load took 128 ms of CPU (a
    pause every caller felt) and the collector 8.8% of the CPU at 16 callers; after it, a
    full collection took 3 ms and the collector about 3% (docs/measured.md, "CPU a
    call"). Cycles made after start-up are collected as before, fewer times a second."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


async def run_embedded_limiter() -> None:
    """The limiter as a task of this process: the same loop `runworker limiter` runs."""
    from limiter.authority.worker import run_limiter

    await run_limiter(get_channel_layer())


def build_team_api() -> TeamApi:
    """The team API of this process, reaching its limiter client through
    `ensure_started` (which starts the background parts with it, on the first call)."""
    return team_api(ensure_started, RefusalSink())


def build_health() -> Health:
    """/healthz, /readyz and /metrics of this process: not ready while it drains."""
    return Health(ensure_started, lambda: draining)


async def request_snapshot(reply_channel: str) -> None:
    """Ask the limiter to send a live snapshot to `reply_channel` (the dashboard)."""
    await ensure_started()
    await get_channel_layer().send(
        events.LIMITER_CHANNEL, {"type": events.SNAPSHOT_REQUEST, "reply": reply_channel}
    )


class Served(Protocol):
    """What a drain waits for: the team API's requests in flight (limiter.gateway.app)."""

    in_flight: int
    idle: asyncio.Event


def _stop_holding() -> None:
    """Held 429s (limiter/protocol/refused.py) are answered now, and no more are held:
    a drain waits on no flood."""
    started = _started.current()  # a start that failed is cleared (ensure_started)
    if started is not None and started.done() and not started.cancelled():
        started.result().refusals.stop_holding()


async def drain(
    served: Served, stop_listening: Callable[[], None], stop: Callable[[], None]
) -> None:
    """The one shutdown path, whichever server runs (`manage.py serve` adapts daphne's
    and uvicorn's listeners to `stop_listening` and `stop`): stop accepting, send held
    429s at once, answer what is in flight (queued and streaming included) up to
    SLUICE_SHUTDOWN_GRACE, flush the 429 record, the usage rollups and the alert
    counters, then stop the server."""
    global draining
    from limiter.alerts.delivery import alerts_stop, signals_flush
    from limiter.gateway.refusals import recorder
    from limiter.upstream import client as upstream
    from limiter.usage.recorder import usage_recorder

    if draining:
        return
    draining = True
    logger.info("draining: no new connections; %d requests in flight", served.in_flight)
    stop_listening()
    _stop_holding()
    if served.in_flight:
        try:
            await asyncio.wait_for(served.idle.wait(), settings.SLUICE_SHUTDOWN_GRACE)
        except TimeoutError:
            pass
    if served.in_flight:
        logger.warning("shutting down with %d requests still in flight", served.in_flight)
    await recorder.flush()
    await usage_recorder.flush(final=True)
    try:
        # The counts since the last check, written and judged, once the loop is stopped:
        # an alert raised here is queued in the database and sent by any other web
        # process's loop, or by this one's next start.
        await alerts_stop()
        await signals_flush()
    except Exception:
        logger.exception("draining: could not write the alert counters")
    from limiter.authority.worker import learned_persist

    await learned_persist()  # the embedded limiter's learned ceilings, for the next start
    await upstream.aclose()
    stop()
