"""The web process's channel to the limiter: what it sends, and the dispatcher of its
one reply channel.

Requests go to LIMITER_CHANNEL. Answers come back on a reply channel of this process's
own, which is also a member of CONFIG_GROUP; a dispatcher task reads it and routes each
message (`deliver`): a broadcast to the broadcast listener, an answer to the inbox of
the ticket waiting for it, a grant nobody waits for any more to be handed back.

Redis may restart under all this. A send is retried for as long as its caller allows;
a failing reply channel is probed until it works again, and then every waiting ticket
hears `Resync`, since an answer sent into the outage may be lost.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any, cast

from limiter.protocol import events
from limiter.protocol.events import DecisionMessage
from limiter.protocol.grants import LimiterUnavailable
from limiter.protocol.inbox import Decision, Inbox, Pong, Resync, TicketEvent
from limiter.protocol.outbox import Outbox
from limiter.protocol.tasks import spawn

logger = logging.getLogger(__name__)

CONFIG_GROUP_REFRESH = 3600.0  # channels_redis forgets group members after a day
# How often a call tries again to reach a channel layer that is down, within its
# SLUICE_LIMITER_TIMEOUT (Transport.send_or_unavailable).
SEND_RETRY_SECONDS = 0.2
# How long a message the limiter must get (a release, a cancel) is retried through an outage.
DELIVERY_SECONDS = 10.0
# How often a failing reply channel is read and probed again.
RECEIVE_RETRY_SECONDS = 0.5
# What the process sends itself to learn that its reply channel works again.
REPLY_CHANNEL_BACK = "sluice.reply_channel_back"
PONG_COUNTS = ("leases", "queued", "scopes")


class Transport:
    """`broadcast(message)` handles a CONFIG_GROUP message and says whether it was one;
    `unclaimed(decision)` gets a grant whose ticket nobody waits for any more."""

    def __init__(
        self,
        layer: Any,
        *,
        broadcast: Callable[[dict[str, Any]], bool],
        unclaimed: Callable[[DecisionMessage], None],
    ) -> None:
        self.layer = layer
        self.outbox = Outbox(layer)  # what is sent in one loop turn shares a round trip
        self.reply_channel = ""
        self._broadcast = broadcast
        self._unclaimed = unclaimed
        self._inboxes: dict[str, Inbox] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._probing = False  # _probe_reply_channel is running
        self._receiving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.reply_channel = await self.layer.new_channel("sluice.web.")
        await self.layer.group_add(events.CONFIG_GROUP, self.reply_channel)
        self._receiving = spawn(self._receive_forever())

    async def stop(self) -> None:
        """Stop reading the reply channel (what is sent in the background still goes)."""
        receiving, self._receiving = self._receiving, None
        if receiving is not None:
            receiving.cancel()
            await asyncio.gather(receiving, return_exceptions=True)

    # --- the reply channel ----------------------------------------------------------------
    async def _receive_forever(self) -> None:
        last_join = time.monotonic()
        while True:
            try:
                message = await self.layer.receive(self.reply_channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. Redis restarting: keep trying, requests time out
                logger.error("limiter reply channel failed (%s); retrying", exc)
                if not self._probing:
                    self._probing = True
                    spawn(self._probe_reply_channel())
                await asyncio.sleep(RECEIVE_RETRY_SECONDS)
                last_join = 0.0  # a restarted Redis forgot our group membership
                continue
            try:
                self.deliver(message)
            except Exception:  # one bad message must not stop every answer after it
                logger.exception("could not handle %s from the reply channel", message.get("type"))
            if time.monotonic() - last_join > CONFIG_GROUP_REFRESH:
                last_join = time.monotonic()
                spawn(self._join())

    async def _probe_reply_channel(self) -> None:
        """Send ourselves REPLY_CHANNEL_BACK until the channel layer takes it; when it comes
        back through the reply channel, every waiting ticket hears `Resync` (deliver)."""
        try:
            await self.send_retrying(
                {"type": REPLY_CHANNEL_BACK},
                within=math.inf,
                every=RECEIVE_RETRY_SECONDS,
                to=self.reply_channel,
            )
        finally:
            self._probing = False

    async def _join(self) -> None:
        try:
            await self.layer.group_add(events.CONFIG_GROUP, self.reply_channel)
        except Exception as exc:
            logger.error("could not join %s: %s", events.CONFIG_GROUP, exc)

    def deliver(self, message: dict[str, Any]) -> None:
        """Route one message that came on the reply channel."""
        if self._broadcast(message):
            return
        kind = message.get("type")
        if kind == REPLY_CHANNEL_BACK:
            self.tell_waiting(Resync())
            return
        event = _event(message)
        if event is None:
            logger.warning("ignored %r on the limiter reply channel", kind)
            return
        inbox = self._inboxes.get(message.get("ticket", ""))
        if inbox is not None:
            inbox.put(event)
        elif isinstance(event, Decision) and event.kind == "grant":
            # Granted after its caller gave up (disconnected or timed out): hand it back.
            self._unclaimed(event.message)

    # --- waiting tickets ------------------------------------------------------------------
    def open(self, ticket: str) -> Inbox:
        """Where the answers to `ticket` will arrive, until `close`."""
        inbox = self._inboxes[ticket] = Inbox()
        return inbox

    def close(self, ticket: str) -> list[TicketEvent]:
        """Stop waiting for `ticket`: what reached it and was never read."""
        inbox = self._inboxes.pop(ticket, None)
        return inbox.close() if inbox is not None else []

    def tell_waiting(self, event: TicketEvent) -> None:
        """Put `event` on every waiting ticket's inbox."""
        for inbox in self._inboxes.values():
            inbox.put(event)

    async def settled(self) -> None:
        """Until every waiting ticket has handled what reached it, and every message sent
        in the background (`send_later`) has been sent or given up on."""
        while True:
            busy = [inbox for inbox in self._inboxes.values() if inbox.busy]
            if not busy and not self._sending:
                return
            for inbox in busy:
                await inbox.settled()
            if self._sending:
                await asyncio.wait(list(self._sending))

    # --- sending --------------------------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> None:
        """Send to the limiter once; the channel layer's error if it refuses."""
        await self.outbox.send(events.LIMITER_CHANNEL, message)

    async def send_retrying(
        self,
        message: dict[str, Any],
        *,
        within: float,
        every: float,
        to: str = events.LIMITER_CHANNEL,
    ) -> Exception | None:
        """Send (to the limiter, unless `to` names another channel); while the channel layer
        refuses (Redis restarting), try again every `every` seconds for `within` seconds.
        None once sent, else the last error."""
        deadline = time.monotonic() + within
        while True:
            try:
                await self.outbox.send(to, message)
                return None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() + every > deadline:
                    return exc
                await asyncio.sleep(every)

    async def send_or_unavailable(self, message: dict[str, Any], within: float = 0.0) -> None:
        """Send, or raise LimiterUnavailable. While the channel layer itself is down (Redis
        restarting), try again every SEND_RETRY_SECONDS for `within` seconds: a call that
        comes during a blip of Redis is served when it ends, instead of hearing 503."""
        error = await self.send_retrying(message, within=within, every=SEND_RETRY_SECONDS)
        if error is not None:
            logger.error("cannot reach the limiter: %s", error)
            raise LimiterUnavailable()

    def send_later(self, message: dict[str, Any]) -> None:
        """For messages the limiter must get (a release, a cancel): send in the background,
        out of reach of the caller's cancellation, retried through a channel-layer outage
        rather than leak a lease until it expires."""
        task = spawn(self._send_until_delivered(message))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_until_delivered(self, message: dict[str, Any]) -> None:
        error = await self.send_retrying(message, within=DELIVERY_SECONDS, every=0.5)
        if error is not None:
            logger.error("could not deliver %s to the limiter: %s", message["type"], error)


def _event(message: dict[str, Any]) -> TicketEvent | None:
    kind = message.get("type")
    if kind == events.DECISION:
        return Decision(cast(DecisionMessage, message))
    if kind == events.PONG:
        return Pong({name: message[name] for name in PONG_COUNTS if name in message})
    return None
