"""The web process's side of the limiter: the client that asks the authority.

`LimiterClient` sends tickets to the limiter channel and waits on one reply channel
per process (a dispatcher task routes each answer to its waiting request). It also
listens to the configuration broadcast, dropping cached keys when anything changes
and telling the listeners registered with `on_config_changed`. The process starts one
client (limiter/serving.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from channels.layers import get_channel_layer
from django.conf import settings

from limiter.gateway.keys import KeyInfo
from limiter.protocol import events
from limiter.protocol.events import DecisionMessage

logger = logging.getLogger(__name__)

CONFIG_GROUP_REFRESH = 3600.0  # channels_redis forgets group members after a day
STALE_GRANT_RETRIES = 3


class LimiterUnavailable(Exception):
    """The limiter did not answer in time."""


@dataclass(frozen=True, slots=True)
class Grant:
    lease: str
    waited: float
    limit: int
    remaining: int
    reset: float
    age: float = 0.0  # seconds the answer spent travelling (the round trip beyond its queueing)
    budgeted: bool = False  # a budget counts this call: report its usage (report_usage)
    # How long the ticket could have queued (its key's max wait, or its own); None when
    # the limiter did not say (failure mode "open").
    max_wait: float | None = None
    # The budget reservation the call holds (its ticket id; "" for none): its usage report
    # settles it, and a grant handed back unused settles it at 0 (`unreserve`).
    reservation: str = ""


# Put on a waiting ticket's queue when a limiter announces its start (not a decision).
RESTARTED = "restarted"
# Put on every waiting ticket's queue when this process's reply channel works again after
# failing (Redis restarted): an answer sent to it meanwhile may be lost (not a decision).
RESYNC = "resync"
# How often a call tries again to reach a channel layer that is down, within its
# SLUICE_LIMITER_TIMEOUT (LimiterClient._send_or_unavailable).
SEND_RETRY_SECONDS = 0.2
# How long a message the limiter must get (a release, a cancel) is retried through an outage.
DELIVERY_SECONDS = 10.0
# What the process sends itself to learn that its reply channel works again.
REPLY_CHANNEL_BACK = "sluice.reply_channel_back"


class Refused(Exception):
    def __init__(self, decision: DecisionMessage) -> None:
        super().__init__(decision["reason"])
        self.decision = decision


class Patience:
    """How long a ticket may queue when its asker may raise that while it waits: a merged
    embeddings request waits as long as its most patient caller allows, and callers keep
    joining it (limiter/gateway/coalesce.py). Times are this process's monotonic clock.

    The client fills in the ticket it sent and when; `extend` tells the limiter a later
    deadline (events.EXTEND). `queued` is set once the limiter has queued the ticket,
    with its projected wait: before that the ticket has not been decided, so no caller's
    wait is over yet."""

    def __init__(self, until: float) -> None:
        self.until = until
        self.ticket = ""
        self.asked = 0.0
        self.projected = 0.0  # the limiter's projected wait when it queued the ticket
        self.queued = asyncio.Event()
        self._client: LimiterClient | None = None

    def max_wait(self) -> float:
        """Seconds from the ask to the deadline (what the limiter counts from arrival)."""
        return max(0.0, self.until - self.asked)

    def extend(self, until: float) -> None:
        if until <= self.until:
            return
        self.until = until
        if self.ticket and self._client is not None:
            self._client.extend(self.ticket, self.max_wait())


_background: set[asyncio.Task[Any]] = set()
_config_listeners: list[Callable[[], None]] = []


def on_config_changed(listener: Callable[[], None]) -> None:
    """Call `listener` on the event loop, after the key cache is cleared, whenever a
    configuration change is broadcast (e.g. the team API re-checks its calls' keys)."""
    _config_listeners.append(listener)


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Run `coro` in the background, keeping a reference so it is not collected, and
    out of reach of the caller's cancellation (a release must happen even when the
    request that holds the lease is being cancelled)."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


class Lateness:
    """How late the limiter's answers arrive, without comparing two hosts' clocks.

    Each decision carries the limiter's monotonic time `at`. Here, `now - at` is the
    delivery delay plus an unknown, constant offset between the two clocks; the smallest
    value seen lately is the offset plus the fastest delivery. A decision's lateness is
    how much slower than that it came: a grant used that late would reach Together
    bunched with the grants after it. Time a ticket spent waiting for the limiter to read
    it is not lateness (the limiter decided after it), nor is time queued for a grant.
    The minimum is kept over two windows, so a drifting clock is followed.
    """

    WINDOW = 30.0

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._best = self._previous = math.inf
        self._since: float | None = None
        self._limiter = ""

    def age(self, now: float, at: float, limiter: str = "") -> float:
        if limiter != self._limiter:  # another limiter instance: another clock
            self.reset()
            self._limiter = limiter
        delta = now - at
        if self._since is None or now - self._since > self.WINDOW:
            self._previous, self._best, self._since = self._best, math.inf, now
        self._best = min(self._best, delta)
        return max(0.0, delta - min(self._best, self._previous))


class LimiterClient:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.layer = get_channel_layer()
        self.clock = clock  # this process's monotonic clock: grant lateness is measured on it
        self.lateness = Lateness()
        self.reply_channel = ""
        self._waiting: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        # Leases this process holds, to hand to a limiter that restarts meanwhile.
        self._held: dict[str, events.AdoptMessage] = {}
        self._probing = False  # _probe_reply_channel is running

    async def start(self) -> None:
        self.reply_channel = await self.layer.new_channel("sluice.web.")
        await self.layer.group_add(events.CONFIG_GROUP, self.reply_channel)
        spawn(self._dispatch_forever())

    async def _dispatch_forever(self) -> None:
        last_join = time.monotonic()
        while True:
            try:
                message = await self.layer.receive(self.reply_channel)
            except asyncio.CancelledError:
                raise
            except (
                Exception
            ) as exc:  # e.g. Redis restarting: keep trying, requests time out meanwhile
                logger.error("limiter reply channel failed (%s); retrying", exc)
                if not self._probing:
                    self._probing = True
                    spawn(self._probe_reply_channel())
                await asyncio.sleep(0.5)
                last_join = 0.0  # a restarted Redis forgot our group membership
                continue
            self._dispatch(message)
            if time.monotonic() - last_join > CONFIG_GROUP_REFRESH:
                last_join = time.monotonic()
                spawn(self._join())

    async def _probe_reply_channel(self) -> None:
        """Send ourselves REPLY_CHANNEL_BACK until the channel layer takes it; when it comes
        back through the reply channel, every waiting ticket is asked again (_dispatch)."""
        try:
            await self._send_retrying(
                {"type": REPLY_CHANNEL_BACK}, within=math.inf, every=0.5, to=self.reply_channel
            )
        finally:
            self._probing = False

    async def _join(self) -> None:
        try:
            await self.layer.group_add(events.CONFIG_GROUP, self.reply_channel)
        except Exception as exc:
            logger.error("could not join %s: %s", events.CONFIG_GROUP, exc)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == events.CONFIG_CHANGED:
            from limiter.gateway import keys
            from limiter.jobs.ownership import owned_models

            keys.cache.clear()
            owned_models.clear()  # a profile's shared_models may have changed
            for listener in _config_listeners:
                listener()
            return
        if kind == events.MODELS_CHANGED:
            from limiter.jobs.ownership import owned_models

            owned_models.clear()
            return
        if kind == REPLY_CHANNEL_BACK:
            # A grant (or "queued") sent while the channel was down is lost, and its caller
            # would wait out its queue wait and hear 503: ask again, with the same ticket (a
            # limiter that still holds it only says "queued" again).
            for waiting in self._waiting.values():
                waiting.put_nowait({"kind": RESYNC})
            return
        if kind == events.LIMITER_STARTED:
            for held in list(self._held.values()):
                spawn(self._send_until_delivered(dict(held)))
            # Tickets queued at a limiter that is gone are asked again of this one.
            for waiting in self._waiting.values():
                waiting.put_nowait({"kind": RESTARTED, "limiter": message.get("limiter", "")})
            return
        queue = self._waiting.get(message.get("ticket", ""))
        if queue is not None:
            queue.put_nowait(message)
        elif kind == events.DECISION and message.get("kind") == "grant":
            # Granted after its caller gave up (disconnected or timed out): hand it back.
            if message.get("lease"):
                spawn(
                    self._send_until_delivered(
                        {"type": events.RELEASE, "lease": message["lease"], "tokens_used": None}
                    )
                )
            self.unreserve(message.get("reservation", ""))

    async def _send(self, message: dict[str, Any]) -> None:
        await self.layer.send(events.LIMITER_CHANNEL, message)

    async def _send_retrying(
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
                await self.layer.send(to, message)
                return None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() + every > deadline:
                    return exc
                await asyncio.sleep(every)

    async def _send_until_delivered(self, message: dict[str, Any]) -> None:
        """For messages the limiter must get (a release, a cancel): retry through a
        channel-layer outage rather than leak a lease until it expires."""
        error = await self._send_retrying(message, within=DELIVERY_SECONDS, every=0.5)
        if error is not None:
            logger.error("could not deliver %s to the limiter: %s", message["type"], error)

    async def acquire(
        self,
        *,
        key: KeyInfo,
        endpoint: str,
        tokens: float,
        request_id: str,
        model: str = "",
        replacing: str = "",
        charge: str = events.CHARGE_BOTH,
        patience: Patience | None = None,
        cost: float = 0.0,
    ) -> Grant:
        """Wait until the limiter grants this request; raise Refused or LimiterUnavailable.

        `patience`: how long it may queue, instead of its key's max wait (a merged
        embeddings request), raised while it waits with `Patience.extend`.

        `tokens` and `cost`: the call's estimate, held against its budgets until its
        usage is reported (limiter/usage/budgets.py).

        `charge`: which scopes the ticket charges (events.CHARGE_*): both by default; a
        merged embeddings request charges its callers' keys and the account apart.

        `replacing`: the lease the call holds when it asks again (Together answered 429);
        the limiter frees it and queues the new ticket in one step (events.REACQUIRE).

        A grant is a moment to send, not a voucher: one that reaches us late (a stalled
        event loop, a channel layer recovering) would send this call upstream together
        with the calls granted after it, a burst the limiter never allowed. So a stale
        grant is handed back and the request asks again.
        """
        if replacing:
            self._held.pop(replacing, None)
        for _attempt in range(STALE_GRANT_RETRIES):
            try:
                grant = await self._acquire_once(
                    key, endpoint, model, tokens, request_id, replacing, charge, patience, cost
                )
            except (LimiterUnavailable, asyncio.CancelledError):
                if replacing:  # it may never have reached the limiter: hand it back plainly
                    self.release(replacing, 0.0)
                raise
            replacing = ""  # handed back with the first ask
            if grant.age <= settings.SLUICE_GRANT_MAX_AGE:
                return grant
            logger.warning("grant arrived %.0f ms late; asking again", grant.age * 1000)
            self.release(grant.lease, None)
            self.unreserve(grant.reservation)  # the next ask reserves again
        raise LimiterUnavailable()

    async def _acquire_once(
        self,
        key: KeyInfo,
        endpoint: str,
        model: str,
        tokens: float,
        request_id: str,
        replacing: str = "",
        charge: str = events.CHARGE_BOTH,
        patience: Patience | None = None,
        cost: float = 0.0,
    ) -> Grant:
        ticket = uuid.uuid4().hex
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._waiting[ticket] = queue
        timeout = settings.SLUICE_LIMITER_TIMEOUT
        if patience is not None:
            patience.ticket, patience.asked, patience._client = "", self.clock(), self
            asked_until = patience.until
        try:
            asked: dict[str, Any] = {
                "type": events.REACQUIRE if replacing else events.ACQUIRE,
                "ticket": ticket,
                "reply": self.reply_channel,
                "endpoint": endpoint,
                "key": key.key_id,
                "account": key.account_id,
                "model": model,
                "version": key.config_version,
                "tokens": tokens,
                "request_id": request_id,
                **({"cost": cost} if cost else {}),
                **({"lease": replacing} if replacing else {}),
                **({"charge": charge} if charge else {}),
                **({"max_wait": patience.max_wait()} if patience is not None else {}),
            }
            await self._send_or_unavailable(asked, within=timeout)
            if patience is not None:
                # Extensions go after the ticket on the same channel, so the limiter has
                # it when they arrive; one that came while it was being sent goes now.
                patience.ticket = ticket
                if patience.until > asked_until:
                    self.extend(ticket, patience.max_wait())
            decision = await asyncio.wait_for(queue.get(), timeout)
            # Before any answer: which limiter got it is unknown after a restart; after a
            # broken reply channel, the answer may be lost: ask again, as asked.
            while decision["kind"] in (RESTARTED, RESYNC):
                if decision["kind"] == RESYNC:
                    await self._send_or_unavailable(asked, within=timeout)
                decision = await asyncio.wait_for(queue.get(), timeout)
            if decision["kind"] == "queued":
                if patience is not None:
                    patience.projected = decision["retry_after"]
                    patience.queued.set()
                # Asked of a new limiter, a retry's old lease is not handed back again.
                again = {k: v for k, v in asked.items() if k != "lease"}
                decision = await self._queued(
                    queue, decision, timeout, patience, {**again, "type": events.ACQUIRE}
                )
        except TimeoutError:
            spawn(self._send_until_delivered({"type": events.CANCEL, "ticket": ticket}))
            raise LimiterUnavailable() from None
        except asyncio.CancelledError:
            # The caller went away (or its key was revoked) while queued: give the place
            # back, and a grant that reached our queue in the same instant, unread.
            spawn(self._send_until_delivered({"type": events.CANCEL, "ticket": ticket}))
            while not queue.empty():
                unread = queue.get_nowait()
                if unread.get("kind") == "grant":
                    self.release(unread.get("lease", ""), None)
                    self.unreserve(unread.get("reservation", ""))
            raise
        finally:
            del self._waiting[ticket]
        if decision["kind"] == "refuse":
            raise Refused(cast(DecisionMessage, decision))
        if decision["lease"]:
            self._held[decision["lease"]] = {
                "type": events.ADOPT,
                "lease": decision["lease"],
                "endpoint": endpoint,
                "key": key.key_id,
                "account": key.account_id,
                "model": model,
                "tokens": tokens,
                **({"charge": charge} if charge else {}),  # type: ignore[typeddict-item]
            }
        return Grant(
            decision["lease"],
            decision["waited"],
            decision["limit"],
            decision["remaining"],
            decision["reset"],
            age=self.lateness.age(self.clock(), decision["at"], decision.get("limiter", "")),
            budgeted=bool(decision.get("budgeted")),
            max_wait=decision.get("max_wait"),
            reservation=decision.get("reservation", ""),
        )

    async def _queued(
        self,
        queue: asyncio.Queue[dict[str, Any]],
        queued: dict[str, Any],
        round_trip: float,
        patience: Patience | None,
        asked: dict[str, Any],
    ) -> dict[str, Any]:
        """The decision after "queued": the limiter said how long it may wait; allow that
        plus the round trip (and more, should the patience be extended meanwhile).

        Should a new limiter start meanwhile (the one that queued the ticket was
        restarted, and its queue went with it), the ticket is asked of the new one with
        what is left of its wait, instead of waiting out a queue that no longer exists.
        A start announced by the same limiter (Redis came back) changes nothing; but should
        this process's reply channel have failed meanwhile (Redis restarted), its grant
        may be lost, so the ticket is asked again of the same limiter, which answers
        "queued" again if it still holds it."""
        holder = queued.get("limiter", "")
        deadline = self.clock() + queued["max_wait"] + round_trip
        while True:
            if patience is not None:
                deadline = max(deadline, patience.until + round_trip)
            try:
                message = await asyncio.wait_for(queue.get(), deadline - self.clock())
            except TimeoutError:
                if patience is not None and patience.until + round_trip > deadline:
                    continue  # extended while it waited
                raise
            if message.get("kind") == "queued":
                holder = message.get("limiter", holder)  # the new limiter queued it again
                continue
            left = max(0.0, deadline - round_trip - self.clock())
            if message.get("kind") == RESYNC:
                logger.info(
                    "reply channel back; asking again for a queued ticket (%.1f s left)", left
                )
                spawn(self._send_until_delivered({**asked, "max_wait": left}))
                continue
            if message.get("kind") != RESTARTED:
                return message
            if not holder or message.get("limiter") == holder:
                continue
            holder = message.get("limiter", "")
            logger.info("limiter restarted; asking again for a queued ticket (%.1f s left)", left)
            spawn(self._send_until_delivered({**asked, "max_wait": left}))

    async def _send_or_unavailable(self, message: dict[str, Any], within: float = 0.0) -> None:
        """Send, or raise LimiterUnavailable. While the channel layer itself is down (Redis
        restarting), try again every SEND_RETRY_SECONDS for `within` seconds: a call that
        comes during a blip of Redis is served when it ends, instead of hearing 503."""
        error = await self._send_retrying(message, within=within, every=SEND_RETRY_SECONDS)
        if error is not None:
            logger.error("cannot reach the limiter: %s", error)
            raise LimiterUnavailable()

    def release(self, lease: str, tokens_used: float | None, *, unused: bool = False) -> None:
        """Hand a lease back. `unused`: its work never went upstream, so its request
        charge comes back too (events.ReleaseMessage)."""
        if not lease:
            return  # the grant needed no lease (no concurrency cap, no token estimate)
        self._held.pop(lease, None)
        message: events.ReleaseMessage = {
            "type": events.RELEASE,
            "lease": lease,
            "tokens_used": tokens_used,
        }
        if unused:
            message["unused"] = True
        spawn(self._send_until_delivered(dict(message)))

    def extend(self, ticket: str, max_wait: float) -> None:
        """A queued ticket may wait longer (Patience.extend)."""
        message: events.ExtendMessage = {
            "type": events.EXTEND,
            "ticket": ticket,
            "max_wait": max_wait,
        }
        spawn(self._send_until_delivered(dict(message)))

    def report_usage(
        self, *, key_id: str, model: str, tokens: float, cost: float, reservation: str = ""
    ) -> None:
        """A budgeted call ended: tell the limiter what it used, settling its reservation
        (fire and forget, retried through a channel-layer outage: a lost report leaves
        the reservation to expire at its estimate)."""
        message: events.UsageMessage = {
            "type": events.USAGE,
            "key": key_id,
            "model": model,
            "tokens": tokens,
            "cost": cost,
        }
        if reservation:
            message["reservation"] = reservation
        spawn(self._send_until_delivered(dict(message)))

    def unreserve(self, reservation: str) -> None:
        """A grant that holds a reservation was not used (handed back, or its call never
        went upstream): settle the reservation at 0, so it stops holding the budget."""
        if reservation:
            self.report_usage(key_id="", model="", tokens=0.0, cost=0.0, reservation=reservation)

    def renew(self, lease: str) -> None:
        """Keep a lease whose request still runs (a stream longer than SLUICE_LEASE_TTL)."""
        if lease:
            spawn(self._send_until_delivered({"type": events.RENEW, "lease": lease}))

    async def report_upstream(
        self,
        *,
        key: KeyInfo,
        endpoint: str,
        model: str,
        pause: float,
        headers: dict[str, str],
        refused: bool = False,
        error_type: str = "",
        unavailable: int = 0,
    ) -> None:
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
        try:
            await self._send(dict(message))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a report is advice; the request itself goes on
            logger.warning("could not report upstream headers to the limiter: %s", exc)

    async def report_coalesced(
        self, *, key: KeyInfo, model: str, inputs: int, callers: int, waited: float, longest: float
    ) -> None:
        """Tell the live view about one merged embeddings request (advice, like a report)."""
        message: events.CoalescedMessage = {
            "type": events.COALESCED,
            "account": key.account_id,
            "model": model,
            "inputs": inputs,
            "callers": callers,
            "waited": waited,
            "longest_wait": longest,
        }
        try:
            await self._send(dict(message))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("could not report a merged request to the limiter: %s", exc)

    async def ping(self, within: float | None = None) -> tuple[float, dict[str, Any]]:
        """Round-trip time to the limiter in seconds and its counts; raises LimiterUnavailable."""
        ticket = uuid.uuid4().hex
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._waiting[ticket] = queue
        started = time.monotonic()
        deadline = started + (within or settings.SLUICE_LIMITER_TIMEOUT)
        try:
            await self._send_or_unavailable(
                {"type": events.PING, "ticket": ticket, "reply": self.reply_channel}
            )
            while True:
                pong = await asyncio.wait_for(queue.get(), deadline - time.monotonic())
                # What _dispatch puts on every waiting queue (a limiter started, the reply
                # channel back) is not the limiter's answer: wait on for the pong.
                if pong.get("kind") not in (RESTARTED, RESYNC):
                    break
        except TimeoutError:
            raise LimiterUnavailable() from None
        finally:
            del self._waiting[ticket]
        return time.monotonic() - started, {
            k: pong[k] for k in ("leases", "queued", "scopes") if k in pong
        }
