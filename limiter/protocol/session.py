"""The acquire protocol: one ticket, from its ask to the limiter's decision.

A ticket is sent to the limiter, which answers "grant", "refuse", or "queued" and later
"grant" or "refuse". Meanwhile the limiter may restart, or this process's reply channel
may fail and come back (inbox.LimiterRestarted, inbox.Resync); the session asks again
where an answer may have been lost, with the same ticket (a limiter that still holds it
only says "queued" again), and waits out no queue that no longer exists.

Whatever way the session ends without its grant (its caller cancelled, no answer in
time), it cancels the ticket, and a grant that reached it unread is handed back.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from limiter.protocol import events
from limiter.protocol.courier import LeaseCourier
from limiter.protocol.grants import Asker, Grant, Lateness, LimiterUnavailable, Patience, Refused
from limiter.protocol.inbox import Decision, Inbox, LimiterRestarted, Resync
from limiter.protocol.transport import Transport

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ask:
    """What a call asks the limiter for (LimiterClient.acquire)."""

    key: Asker
    endpoint: str
    model: str
    tokens: float
    request_id: str
    replacing: str = ""  # the lease it hands back in the same step (events.REACQUIRE)
    charge: str = events.CHARGE_BOTH
    cost: float = 0.0
    spends: bool = True  # False: a call that costs nothing (events.AcquireMessage.spends)

    def message(self, ticket: str, reply: str, max_wait: float | None) -> dict[str, Any]:
        return {
            "type": events.REACQUIRE if self.replacing else events.ACQUIRE,
            "ticket": ticket,
            "reply": reply,
            "endpoint": self.endpoint,
            "key": self.key.key_id,
            "account": self.key.account_id,
            "model": self.model,
            "version": self.key.config_version,
            "tokens": self.tokens,
            "request_id": self.request_id,
            **({"cost": self.cost} if self.cost else {}),
            **({} if self.spends else {"spends": False}),
            **({"lease": self.replacing} if self.replacing else {}),
            **({"charge": self.charge} if self.charge else {}),
            **({"max_wait": max_wait} if max_wait is not None else {}),
        }

    def adoption(self, lease: str) -> events.AdoptMessage:
        """How a grant's lease is handed to a limiter that starts while it is held."""
        adopt: events.AdoptMessage = {
            "type": events.ADOPT,
            "lease": lease,
            "endpoint": self.endpoint,
            "key": self.key.key_id,
            "account": self.key.account_id,
            "model": self.model,
            "tokens": self.tokens,
        }
        if self.charge:
            adopt["charge"] = self.charge
        return adopt


class TicketSession:
    """`run()` returns the grant, or raises Refused or LimiterUnavailable. `patience`: how
    long it may queue instead of its key's max wait, raised while it waits."""

    def __init__(
        self,
        transport: Transport,
        courier: LeaseCourier,
        ask: Ask,
        *,
        patience: Patience | None = None,
        clock: Callable[[], float],
        lateness: Lateness,
        waiting: Callable[[], float] | None = None,
    ) -> None:
        self.transport, self.courier, self.ask = transport, courier, ask
        self.patience, self.clock, self.lateness = patience, clock, lateness
        # The clock the waits for an answer are measured on (lag.LoopLag.responsive):
        # time this process's loop ran late is no evidence against the limiter.
        self.waiting = waiting
        self.ticket = uuid.uuid4().hex
        self.timeout: float = settings.SLUICE_LIMITER_TIMEOUT  # a round trip, at most

    async def run(self) -> Grant:
        inbox = self.transport.open(self.ticket)
        try:
            decision = await self._decide(inbox)
        except TimeoutError:
            self.courier.cancel(self.ticket)
            raise LimiterUnavailable() from None
        except asyncio.CancelledError:
            # The caller went away (or its key was revoked) while queued: give the place
            # back, and a grant that reached the inbox in the same instant, unread.
            self.courier.cancel(self.ticket)
            for unread in self.transport.close(self.ticket):
                if isinstance(unread, Decision) and unread.kind == "grant":
                    self.courier.hand_back(unread.message)
            raise
        finally:
            self.transport.close(self.ticket)
        return self._granted(decision)

    async def _decide(self, inbox: Inbox) -> Decision:
        asked = await self._send()
        decision = await self._first_answer(inbox, asked)
        if decision.kind == "queued":
            if self.patience is not None:
                self.patience.projected = decision.message["retry_after"]
                self.patience.queued.set()
            # Asked of a new limiter, a retry's old lease is not handed back again.
            again = {k: v for k, v in asked.items() if k != "lease"}
            decision = await self._queued(inbox, decision, {**again, "type": events.ACQUIRE})
        return decision

    async def _send(self) -> dict[str, Any]:
        """Send the ticket; what was sent."""
        patience = self.patience
        if patience is None:
            asked = self.ask.message(self.ticket, self.transport.reply_channel, None)
            await self.transport.send_or_unavailable(asked, within=self.timeout)
            return asked
        patience.asking(self.clock(), self.courier.extend)
        asked_until = patience.until
        asked = self.ask.message(self.ticket, self.transport.reply_channel, patience.max_wait())
        await self.transport.send_or_unavailable(asked, within=self.timeout)
        # Extensions go after the ticket on the same channel, so the limiter has it when
        # they arrive; one that came while it was being sent goes now.
        patience.ticket = self.ticket
        if patience.until > asked_until:
            self.courier.extend(self.ticket, patience.max_wait())
        return asked

    async def _first_answer(self, inbox: Inbox, asked: dict[str, Any]) -> Decision:
        """Before any answer, which limiter got the ticket is unknown should one restart:
        wait on. Should the reply channel have failed, the answer may be lost: ask again,
        as asked."""
        while True:
            event = await inbox.next(self.timeout, self.waiting)
            if isinstance(event, Decision):
                return event
            if isinstance(event, Resync):
                await self.transport.send_or_unavailable(asked, within=self.timeout)

    async def _queued(self, inbox: Inbox, queued: Decision, asked: dict[str, Any]) -> Decision:
        """The decision after "queued": the limiter said how long it may wait; allow that
        plus the round trip (and more, should the patience be extended meanwhile).

        Should a new limiter start meanwhile (the one that queued the ticket was
        restarted, and its queue went with it), the ticket is asked of the new one with
        what is left of its wait, instead of waiting out a queue that no longer exists.
        A start announced by the same limiter (Redis came back) changes nothing; but should
        this process's reply channel have failed meanwhile (Redis restarted), its grant
        may be lost, so the ticket is asked again of the same limiter, which answers
        "queued" again if it still holds it."""
        holder = queued.limiter
        deadline = self.clock() + queued.message["max_wait"] + self.timeout
        while True:
            if self.patience is not None:
                deadline = max(deadline, self.patience.until + self.timeout)
            try:
                event = await inbox.next(deadline - self.clock(), self.waiting)
            except TimeoutError:
                if self.patience is not None and self.patience.until + self.timeout > deadline:
                    continue  # extended while it waited
                raise
            if isinstance(event, Decision):
                if event.kind != "queued":
                    return event
                holder = event.message.get("limiter", holder)  # the new limiter queued it again
                continue
            left = max(0.0, deadline - self.timeout - self.clock())
            if isinstance(event, Resync):
                logger.info(
                    "reply channel back; asking again for a queued ticket (%.1f s left)", left
                )
            elif isinstance(event, LimiterRestarted) and holder and event.limiter != holder:
                holder = event.limiter
                logger.info(
                    "limiter restarted; asking again for a queued ticket (%.1f s left)", left
                )
            else:
                continue
            self.transport.send_later({**asked, "max_wait": left})

    def _granted(self, decision: Decision) -> Grant:
        if decision.kind == "refuse":
            raise Refused(decision.message)
        message = decision.message
        if message["lease"]:
            self.courier.hold(self.ask.adoption(message["lease"]))
        age = self.lateness.age(self.clock(), message["at"], decision.limiter)
        return Grant.of(message, age)
