"""`manage.py runworker limiter`: the limiter as its own process (scale-out mode).

Overrides Channels' generic runworker (the limiter app is listed before channels) to
serve one channel with the guarantees the limiter needs: exactly one authority per
channel layer (a second worker waits for the lease, then refuses to start), a loop that
survives Redis restarts, a conservative start after a crash, and a clean SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from limiter import loops
from limiter.authority.lease import HEARTBEAT, Authority, AuthorityTaken
from limiter.authority.worker import LimiterConsumer, run_limiter
from limiter.management.production import refuse_development_secret_key
from limiter.protocol import events

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the limiter (channel 'limiter') as the single authority over admission."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("channels", nargs="+", help="only 'limiter' is served")
        parser.add_argument(
            "--wait",
            type=float,
            default=10.0,
            help="seconds to wait for a previous limiter's lease to lapse (default 10)",
        )

    def handle(self, *args: Any, channels: list[str], wait: float, **options: Any) -> None:
        refuse_development_secret_key()
        if channels != [events.LIMITER_CHANNEL]:
            raise CommandError(
                f"Sluice's runworker serves only the {events.LIMITER_CHANNEL!r} channel."
            )
        if not settings.REDIS_URL:
            raise CommandError(
                "runworker needs REDIS_URL (channels_redis). With the in-memory layer the limiter "
                "runs inside `manage.py serve`."
            )
        try:
            loops.run(self._serve(wait))
        except AuthorityTaken as taken:
            raise CommandError(
                f"Another limiter worker ({taken}) holds the authority on this Redis. "
                "Refusing to start: two limiters would each admit a full limit."
            ) from None

    async def _serve(self, wait: float) -> None:
        authority = Authority(settings.REDIS_URL)
        await authority.acquire(wait)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Anything a crashed predecessor admitted happened before its last heartbeat
        # (plus one beat).
        unknown_before = authority.last_alive + HEARTBEAT * 2 if authority.last_alive else None
        serving: list[LimiterConsumer] = []

        def alive_until() -> float:
            # A successor assumes every bucket full at this wall time: now, or later where
            # a settled overrun left a bucket more than full (Engine.fullness_bound).
            if not serving:
                return time.time()
            now = time.monotonic()
            return time.time() + serving[0].engine.fullness_bound(now) - now

        limiter = asyncio.create_task(
            run_limiter(
                get_channel_layer(),
                stop,
                unknown_before_wall=unknown_before,
                started=serving.append,
            )
        )
        keeper = asyncio.create_task(authority.keep(stop, alive_until))
        self.stdout.write(
            f"Limiter worker serving channel {events.LIMITER_CHANNEL!r} "
            f"(authority {authority.token})"
        )
        self.stdout.flush()
        try:
            await stop.wait()
        finally:
            limiter.cancel()
            keeper.cancel()
            await asyncio.gather(limiter, keeper, return_exceptions=True)
            await authority.release()
            logger.info("limiter worker stopped")
