"""Messages sent many to a round trip: what a process sends within one loop turn, and
while the previous batch is on its way, goes out together.

Over Redis every channel-layer send is a round trip. Sent one by one, the limiter waited
on those trips, not on its CPU: each answer's send before the next ticket was read, each
of a web process's tickets a trip of its own. The outbox queues them, and one flush at a
time hands the queue to the layer's `send_many` (limiter/protocol/layers.py: one pipeline),
so the busier a process, the more messages share a trip. A layer without `send_many` (the
in-memory one) gets them one by one, in the same order.

Order is kept: messages leave in the order they were queued, and one flush ends before
the next begins, so two messages to one channel arrive as they were sent (a ticket's
"queued" before its grant, a ticket before its cancel).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from limiter.protocol.tasks import spawn

logger = logging.getLogger(__name__)

# Messages per flush at most; the rest go in the next (one send_many's pipeline stays small).
FLUSH_BATCH = 512


class Outbox:
    def __init__(self, layer: Any) -> None:
        self.layer = layer
        # (channel, message, its sender's future, or what it is for the log when posted)
        self._queue: list[tuple[str, dict[str, Any], asyncio.Future[None] | str]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send `message`, and wait until the layer took it; the layer's error if not.
        Cancelling the wait does not take back a message already queued."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Its error is read even when its sender was cancelled meanwhile (no "never retrieved").
        future.add_done_callback(_read)
        self._put(channel, message, future)
        await asyncio.shield(future)

    def post(self, channel: str, message: dict[str, Any], what: str) -> None:
        """Send `message` without waiting; a failure is logged (`what`: what it was)."""
        self._put(channel, message, what)

    async def drained(self) -> None:
        """Until everything queued so far has been sent, or has failed."""
        while self._flushing is not None:
            await asyncio.shield(self._flushing)

    def _put(
        self, channel: str, message: dict[str, Any], waiter: asyncio.Future[None] | str
    ) -> None:
        self._queue.append((channel, message, waiter))
        flushing = self._flushing
        # A flush begun in an event loop since closed never ends: begin one in this loop.
        if flushing is None or flushing.get_loop() is not asyncio.get_running_loop():
            self._flushing = spawn(self._flush())

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0)  # the rest of this loop turn's messages join the first
            while self._queue:
                batch, self._queue = self._queue[:FLUSH_BATCH], self._queue[FLUSH_BATCH:]
                await self._send(batch)
        finally:
            self._flushing = None

    async def _send(self, batch: list[tuple[str, dict[str, Any], Any]]) -> None:
        try:
            errors = await self._send_many([(channel, message) for channel, message, _ in batch])
        except asyncio.CancelledError:  # the loop is closing: its senders must not wait on
            for _channel, _message, waiter in batch:
                if not isinstance(waiter, str):
                    waiter.cancel()
            raise
        except Exception as exc:  # the layer is down (Redis restarting): every one failed
            errors = [exc] * len(batch)
        posted_failures: list[str] = []
        for (_channel, _message, waiter), error in zip(batch, errors, strict=True):
            if isinstance(waiter, str):
                if error is not None:
                    posted_failures.append(waiter)
            elif not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)
        if posted_failures:  # one line for the batch, not one per answer
            error = next(e for e in errors if e is not None)
            logger.error(
                "could not send %d message(s) (%s): %r",
                len(posted_failures),
                ", ".join(sorted(set(posted_failures))),
                error,
            )

    async def _send_many(self, messages: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        send_many = getattr(self.layer, "send_many", None)
        if send_many is not None:
            return list(await send_many(messages))
        errors: list[Exception | None] = []
        for channel, message in messages:
            try:
                await self.layer.send(channel, message)
                errors.append(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                errors.append(exc)
        return errors


def _read(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
