"""The web process's side of the limiter: the client that asks the authority.

`LimiterClient` puts together the parts of this package: the transport (its sends and
the dispatcher of its one reply channel, transport.py), a ticket session per call for
the acquire protocol (session.py), the lease courier for what it tells the limiter
about the leases it holds (courier.py), and the broadcast listener (broadcasts.py),
through which configuration changes reach the caches registered in changes.py. The
process starts one client (limiter/serving.py).

The names the gateway uses are importable from here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from limiter.protocol import events
from limiter.protocol.broadcasts import BroadcastListener
from limiter.protocol.changes import on_config_changed, register_cache
from limiter.protocol.courier import LeaseCourier
from limiter.protocol.events import DecisionMessage
from limiter.protocol.grants import (
    Asker,
    Grant,
    Lateness,
    LimiterUnavailable,
    Patience,
    Refused,
)
from limiter.protocol.inbox import LimiterRestarted, Pong
from limiter.protocol.lag import LoopLag
from limiter.protocol.refused import (
    ASK,
    HERD_WAIT,
    PROMISED,
    WAIT,
    KnownRefusals,
    LocalRefusal,
    PromisedRefusal,
    Turn,
)
from limiter.protocol.session import Ask, TicketSession
from limiter.protocol.tasks import spawn, until_woken
from limiter.protocol.transport import REPLY_CHANNEL_BACK, Transport

__all__ = [
    "REPLY_CHANNEL_BACK",
    "STALE_GRANT_RETRIES",
    "Grant",
    "Lateness",
    "LimiterClient",
    "LimiterUnavailable",
    "Patience",
    "PromisedRefusal",
    "Refused",
    "on_config_changed",
    "spawn",
]

logger = logging.getLogger(__name__)

STALE_GRANT_RETRIES = 3


class LimiterClient:
    """`layer`: the channel layer (the project's by default); `clock`: this process's
    monotonic clock, on which grant lateness is measured."""

    def __init__(self, layer: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lateness = Lateness()
        self.broadcasts = BroadcastListener(self._limiter_started)
        self.transport = Transport(
            layer if layer is not None else get_channel_layer(),
            broadcast=self.broadcasts.hear,
            unclaimed=self._unclaimed,
        )
        self.courier = LeaseCourier(self.transport)
        # Refusals the limiter promised to repeat for a while (refused.py): answered here.
        self.refusals = KnownRefusals(clock)
        register_cache(self.refusals.clear)
        # How late this process's loop runs: a call's wait for an answer does not count it.
        self.lag = LoopLag()

    async def start(self) -> None:
        """Open the reply channel, join CONFIG_GROUP and start its dispatcher."""
        self.lag.start()
        await self.transport.start()

    async def stop(self) -> None:
        """Stop the reply channel's dispatcher."""
        self.lag.stop()
        await self.transport.stop()

    async def settled(self) -> None:
        """Until every waiting call has handled what reached it, and what was sent in the
        background (releases, cancels, reports) has gone or been given up on."""
        await self.transport.settled()

    def _limiter_started(self, limiter: str) -> None:
        self.refusals.clear()  # a new limiter knows no pause the promises may rest on
        self.courier.adopt_all()
        # Tickets queued at a limiter that is gone are asked again of this one.
        self.transport.tell_waiting(LimiterRestarted(limiter))

    def _unclaimed(self, decision: DecisionMessage) -> None:
        self.courier.hand_back(decision)

    async def acquire(
        self,
        *,
        key: Asker,
        endpoint: str,
        tokens: float,
        request_id: str,
        model: str = "",
        replacing: str = "",
        charge: str = events.CHARGE_BOTH,
        patience: Patience | None = None,
        cost: float = 0.0,
        spends: bool = True,
    ) -> Grant:
        """Wait until the limiter grants this request; raise Refused or LimiterUnavailable.

        `patience`: how long it may queue, instead of its key's max wait (a merged
        embeddings request), raised while it waits with `Patience.extend`.

        `tokens` and `cost`: the call's estimate, held against its budgets until its
        usage is reported (limiter/usage/budgets.py).

        `spends`: False for a call that costs nothing (a list): paced, never refused by a
        budget, nor by a promised refusal (those are about calls that spend).

        `charge`: which scopes the ticket charges (events.CHARGE_*): both by default; a
        merged embeddings request charges its callers' keys and the account apart.

        `replacing`: the lease the call holds when it asks again (Together answered 429);
        the limiter frees it and queues the new ticket in one step (events.REACQUIRE).

        A grant is a moment to send, not a voucher: one that reaches us late (a stalled
        event loop, a channel layer recovering) would send this call upstream together
        with the calls granted after it, a burst the limiter never allowed. So a stale
        grant is handed back and the request asks again.

        A flooding key's plain call may first wait on another call's ask, and be refused
        from the promise it brought: PromisedRefusal (refused.py, `turn`).
        """
        ask = Ask(key, endpoint, model, tokens, request_id, replacing, charge, cost, spends)
        if replacing:
            self.courier.forget(replacing)
        # Only a plain call's refusal is a promise about plain calls (refused.py).
        plain = charge == events.CHARGE_BOTH and patience is None and not replacing and spends
        promised = plain and settings.SLUICE_LOCAL_REFUSALS
        where = (key.key_id, endpoint, model)
        turn = self._turn(where) if promised else None
        try:
            if turn is not None and turn.state != ASK:
                await self._wait_turn(turn)
            sent_at, generation = self.clock(), self.refusals.generation
            try:
                return await self._granted(ask, patience)
            except Refused as refused:
                if promised:
                    self.refusals.learn(where, refused.decision, sent_at, generation)
                raise
        finally:
            if turn is not None:  # the next waiter asks, or all are refused from a promise
                self.refusals.leave(turn)

    def _turn(self, where: tuple[str, str, str]) -> Turn | None:
        # Held calls wait; so may a flooding key's herd, on one ask (bounded by its timeout).
        if settings.SLUICE_REFUSAL_HOLD <= 0:
            return None
        return self.refusals.turn(where, min(HERD_WAIT, settings.SLUICE_LIMITER_TIMEOUT))

    async def _wait_turn(self, turn: Turn) -> None:
        """Wait for the ask a flooding key's call waits on (or its deadline); raise
        PromisedRefusal if it brought a promise, else return: this call asks."""
        if turn.state == WAIT:
            await until_woken(turn.deadline - self.clock(), turn)
        if self.refusals.waited(turn) == PROMISED:
            refusal = self.refusals.refuse(turn.where, settings.SLUICE_REFUSAL_HOLD)
            if refusal is not None:  # else it ended already, or a clear voided it: ask
                raise PromisedRefusal(refusal)

    async def _granted(self, ask: Ask, patience: Patience | None) -> Grant:
        """`acquire`'s asking: again, up to STALE_GRANT_RETRIES times, while grants come late.

        The last late grant is used when this process's own loop ran late by as much
        while the call waited (lag.py): the limiter answered in time and the process is
        overloaded, so asking again only brings another grant as late, and a 503
        `limiter_unavailable` would be false. Its lateness is what the overload gives
        every call here; a one-off stall is still outlived by the asks before it."""
        self.lag.use()  # the loop's lateness probe at its fine pace while calls come
        for attempt in range(STALE_GRANT_RETRIES):
            stalled_before = self.lag.stalled_now()
            session = TicketSession(
                self.transport,
                self.courier,
                ask,
                patience=patience,
                clock=self.clock,
                lateness=self.lateness,
                waiting=self.lag.responsive,
            )
            try:
                grant = await session.run()
            except (LimiterUnavailable, asyncio.CancelledError):
                if ask.replacing:  # it may never have reached the limiter: hand it back plainly
                    self.courier.release(ask.replacing, 0.0)
                raise
            ask = dataclasses.replace(ask, replacing="")  # handed back with the first ask
            if grant.age <= settings.SLUICE_GRANT_MAX_AGE:
                return grant
            stalled = self.lag.stalled_now() - stalled_before
            if (
                attempt == STALE_GRANT_RETRIES - 1
                and grant.age - stalled <= settings.SLUICE_GRANT_MAX_AGE
            ):
                logger.warning(
                    "grant arrived %.0f ms late, this process's loop %.0f ms behind: using it",
                    grant.age * 1000,
                    stalled * 1000,
                )
                return grant
            logger.warning("grant arrived %.0f ms late; asking again", grant.age * 1000)
            self.courier.release(grant.lease, None)
            self.courier.unreserve(grant.reservation)  # the next ask reserves again
        raise LimiterUnavailable()

    def known_refusal(self, *, key: Asker, endpoint: str, model: str) -> LocalRefusal | None:
        """The limiter's refusal of a plain call (CHARGE_BOTH, its key's own max wait)
        when one is promised for now, and how long to hold it (refused.py; a held one
        is `refusals.released` after); None: `acquire` asks the limiter."""
        self.lag.use()
        if not settings.SLUICE_LOCAL_REFUSALS:
            return None
        return self.refusals.refuse((key.key_id, endpoint, model), settings.SLUICE_REFUSAL_HOLD)

    # --- what the limiter is told about the leases held (courier.py) ---------------------
    def release(self, lease: str, tokens_used: float | None, *, unused: bool = False) -> None:
        """Hand a lease back. `unused`: its work never went upstream, so its request
        charge comes back too (events.ReleaseMessage)."""
        self.courier.release(lease, tokens_used, unused=unused)

    def extend(self, ticket: str, max_wait: float) -> None:
        """A queued ticket may wait longer (Patience.extend)."""
        self.courier.extend(ticket, max_wait)

    def renew(self, lease: str) -> None:
        """Keep a lease whose request still runs (a stream longer than SLUICE_LEASE_TTL)."""
        self.courier.renew(lease)

    def report_usage(
        self, *, key_id: str, model: str, tokens: float, cost: float, reservation: str = ""
    ) -> None:
        """A budgeted call ended: tell the limiter what it used, settling its reservation."""
        self.courier.report_usage(
            key_id=key_id, model=model, tokens=tokens, cost=cost, reservation=reservation
        )

    def unreserve(self, reservation: str) -> None:
        """A grant's reservation was not used: settle it at 0."""
        self.courier.unreserve(reservation)

    # --- advice and probes ---------------------------------------------------------------
    async def report_upstream(
        self,
        *,
        key: Asker,
        endpoint: str,
        model: str,
        pause: float,
        headers: dict[str, str],
        refused: bool = False,
        error_type: str = "",
        unavailable: int = 0,
    ) -> None:
        """What Together said of a call (its rate headers; a 429's pause)."""
        message: events.UpstreamReportMessage = {
            "type": events.UPSTREAM_REPORT,
            "account": key.account_id,
            "endpoint": endpoint,
            "model": model,
            "pause": pause,
            "headers": headers,
            "refused": refused,
            "error_type": error_type,
            "unavailable": unavailable,
        }
        await self._advise(dict(message), "upstream headers")

    async def report_coalesced(
        self, *, key: Asker, model: str, inputs: int, callers: int, waited: float, longest: float
    ) -> None:
        """Tell the live view about one merged embeddings request."""
        message: events.CoalescedMessage = {
            "type": events.COALESCED,
            "account": key.account_id,
            "model": model,
            "inputs": inputs,
            "callers": callers,
            "waited": waited,
            "longest_wait": longest,
        }
        await self._advise(dict(message), "a merged request")

    async def _advise(self, message: dict[str, Any], what: str) -> None:
        """Send once: a report is advice, and the request itself goes on without it."""
        try:
            await self.transport.send(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("could not report %s to the limiter: %s", what, exc)

    async def ping(self, within: float | None = None) -> tuple[float, dict[str, Any]]:
        """Round-trip time to the limiter in seconds and its counts; raises LimiterUnavailable."""
        self.lag.use()
        ticket = uuid.uuid4().hex
        inbox = self.transport.open(ticket)
        started = time.monotonic()
        deadline = started + (within or settings.SLUICE_LIMITER_TIMEOUT)
        try:
            asked = {"type": events.PING, "ticket": ticket, "reply": self.transport.reply_channel}
            await self.transport.send_or_unavailable(asked)
            while not isinstance(
                event := await inbox.next(deadline - time.monotonic(), self.lag.responsive), Pong
            ):
                pass  # what every waiting ticket hears (a limiter started...) is no answer
        except TimeoutError:
            raise LimiterUnavailable() from None
        finally:
            self.transport.close(ticket)
        return time.monotonic() - started, event.counts
