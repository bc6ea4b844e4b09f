"""The limiter process: serve the named channel `limiter` as the single authority over
admission.

Web processes ask it over the channel layer (limiter/protocol/client.py); `run_limiter`
reads the channel and hands each message to the `LimiterConsumer`
(limiter/authority/consumer.py), which answers each ticket on the asker's reply channel,
wakes itself on a timer to serve queued tickets, and publishes live snapshots to the
dashboard.

Embedded (the default, `manage.py serve`): it runs as a task inside the web process over
the in-memory channel layer. Scale-out: `manage.py runworker limiter` runs it alone over
channels_redis, and any number of web processes share it. Channels' own runworker and
channel routing are not used: Channels' dispatch closes stale database connections in a
thread before every message (a thread hop per decision, and the limiter's decisions never
touch the database), and would start a fresh, empty consumer after one failed message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from channels.layers import BaseChannelLayer

from limiter.authority.consumer import LimiterConsumer
from limiter.protocol import events

__all__ = ["LimiterConsumer", "learned_persist", "run_limiter"]

logger = logging.getLogger(__name__)

CONFIG_GROUP_REFRESH = 3600.0  # channels_redis forgets group members after a day

# The limiter serving in this process, if any: `serve`'s drain saves its learned ceilings.
running: LimiterConsumer | None = None


async def run_limiter(
    layer: BaseChannelLayer,
    stop: asyncio.Event | None = None,
    *,
    unknown_before_wall: float | None = None,
    started: Callable[[LimiterConsumer], None] | None = None,
) -> None:
    """Serve the limiter channel until `stop` is set, surviving channel-layer errors
    (a Redis restart must not end the authority, or its state)."""
    from django.conf import settings

    global running
    unknown_before = adopt_until = None
    if unknown_before_wall is not None:
        unknown_before = time.monotonic() - (time.time() - unknown_before_wall)
        adopt_until = time.monotonic() + settings.SLUICE_ADOPT_WINDOW
    consumer = LimiterConsumer(layer, unknown_before=unknown_before, adopt_until=adopt_until)
    if started is not None:
        started(consumer)  # runworker's heartbeat reads the engine's fullness bound
    stop = stop or asyncio.Event()
    await consumer.reload()  # the limits, before the first ticket (a ticket would reload anyway)
    await consumer.ceilings.restore()  # what the previous limiter learned of each model
    consumer.ceilings.start_persisting()
    from limiter.authority.dedicated import poll_forever
    from limiter.protocol.client import spawn

    dedicated = spawn(poll_forever())  # which models Together serves on dedicated endpoints
    running = consumer
    logger.info("limiter serving channel %r", events.LIMITER_CHANNEL)
    try:
        await _serve(layer, consumer, stop)
    finally:
        dedicated.cancel()
        consumer.close()
        running = None
        await consumer.answers.outbox.drained()  # the answers already decided
        await consumer.ceilings.persist()  # what changed since the last write


async def _serve(layer: BaseChannelLayer, consumer: LimiterConsumer, stop: asyncio.Event) -> None:
    await _join_config_group(layer)
    await _announce_start(layer, consumer)
    joined = time.monotonic()
    while not stop.is_set():
        if time.monotonic() - joined > CONFIG_GROUP_REFRESH:
            joined = time.monotonic()
            await _join_config_group(layer)
        try:
            message = await layer.receive(events.LIMITER_CHANNEL)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.error("limiter channel unavailable (%s); retrying", exc)
            await asyncio.sleep(0.5)
            # A restarted Redis lost the web processes' state, and our group membership.
            await _join_config_group(layer)
            await _announce_start(layer, consumer)
            continue
        await consumer.dispatch(message)


async def learned_persist() -> None:
    """Save the learned ceilings of the limiter running in this process (on shutdown)."""
    if running is not None:
        await running.ceilings.persist()


async def _join_config_group(layer: BaseChannelLayer) -> None:
    """Join the configuration broadcast: the limiter reloads its limits on each change."""
    try:
        await layer.group_add(events.CONFIG_GROUP, events.LIMITER_CHANNEL)
    except Exception as exc:
        logger.warning("could not join the configuration broadcast: %s", exc)


async def _announce_start(layer: BaseChannelLayer, consumer: LimiterConsumer) -> None:
    """Tell web processes a (new) limiter is serving, so they hand back their leases and
    ask again for the tickets a limiter before it held (its instance tells them apart)."""
    try:
        await layer.group_send(events.CONFIG_GROUP, consumer.codec.started())
    except Exception as exc:
        logger.warning("could not announce the limiter start: %s", exc)
