"""The limiter's message handlers: the single authority over admission.

`LimiterConsumer` owns one `Engine` and handles the `limiter` channel's messages one at a
time (limiter/authority/worker.py reads the channel), so every decision is atomic without
locks. Each handler hands its message to the part that knows about it: scopes.py (which
scopes a ticket charges, and their limits), learning.py (what Together allows each model),
budget_gate.py (a ticket's units and budgets), answers.py (each decision sent, and the
timer that serves the queue), codec.py (every answer, worded), stats.py and live.py (what
the dashboard draws).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import BaseChannelLayer

from limiter.alerts.near import near_limit_raise
from limiter.authority import codec
from limiter.authority.answers import Answers
from limiter.authority.budget_gate import BudgetGate
from limiter.authority.coalesce_stats import CoalesceStats
from limiter.authority.config import LimiterConfig, config_load
from limiter.authority.engine import Engine, ScopeId
from limiter.authority.learning import LearnedCeilings
from limiter.authority.live import LiveView
from limiter.authority.near import NearLimit, NearLimitEvent
from limiter.authority.scopes import ScopeLimit, Scopes, TicketMessage
from limiter.authority.stats import Stats
from limiter.protocol import events
from limiter.protocol.client import spawn

logger = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[None]]


class LimiterConsumer:
    """Handles the limiter channel's messages (`dispatch`), answering over `layer`. One
    instance per process owns the engine."""

    def __init__(
        self,
        layer: BaseChannelLayer,
        *,
        unknown_before: float | None = None,
        adopt_until: float | None = None,
        config: LimiterConfig | None = None,
    ) -> None:
        from django.conf import settings

        self.channel_layer = layer
        # unknown_before: before it, a limiter before this one may have admitted requests
        # this one never saw; adopt_until: capped scopes grant nothing before it, so the
        # leases web processes hand back after a restart are counted first (see Engine).
        ttl = settings.SLUICE_LEASE_TTL
        self.engine = Engine(lease_ttl=ttl, unknown_before=unknown_before, adopt_until=adopt_until)
        self.ceilings = LearnedCeilings.from_settings()
        self.scopes = Scopes(self.engine, self.ceilings, config)
        self.gate = BudgetGate.from_settings()
        self.instance = uuid.uuid4().hex[:12]
        self.codec = codec.Codec(self.instance, self.gate)
        self.stats = Stats()
        self.coalesced = CoalesceStats()
        near = NearLimit(
            threshold=settings.SLUICE_NEAR_LIMIT_FRACTION,
            alert_after=settings.SLUICE_ALERT_NEAR_LIMIT_MINUTES * 60.0,
        )
        self.live = LiveView(self.engine, self.stats, self.ceilings, self.coalesced, near)
        self.live.publish_to(layer, self._ramp, _near_limit_alert)
        self.answers = Answers(layer, self.engine, self.codec, self.stats, self.gate, self.live)
        self._handlers = self._routes()

    def _routes(self) -> dict[str, Handler]:
        """Each message type's handler."""
        return {
            events.ACQUIRE: self.on_acquire,
            events.REACQUIRE: self.on_reacquire,
            events.EXTEND: self.on_extend,
            events.RELEASE: self.on_release,
            events.CANCEL: self.on_cancel,
            events.RENEW: self.on_renew,
            events.ADOPT: self.on_adopt,
            events.USAGE: self.on_usage,
            events.JOB_BUDGET: self.on_job_budget,
            events.UPSTREAM_REPORT: self.on_upstream,
            events.CEILING_RESET: self.on_ceiling_reset,
            events.COALESCED: self.on_coalesced,
            events.SNAPSHOT_REQUEST: self.on_snapshot_request,
            events.PING: self.on_ping,
            events.CONFIG_CHANGED: self.on_config_changed,
            # The configuration group's other news: our own announcement, and fine-tuned
            # models' owners (web processes keep those; limits do not depend on them).
            events.LIMITER_STARTED: _ignore,
            events.MODELS_CHANGED: _ignore,
        }

    def close(self) -> None:
        self.live.close()
        self.ceilings.close()
        self.answers.close()

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Handle one message. One bad message must not take the engine (with every limit
        it holds) down: it is logged and the next one handled."""
        kind = message.get("type")
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            logger.error("limiter got a message of unknown type %r", kind)
            return
        try:
            await handler(message)
        except Exception:
            logger.exception("limiter failed to handle a %r message", kind)

    # --- the configuration -------------------------------------------------------------
    async def reload(self) -> None:
        """Load the limits and budgets again and apply them to every scope the engine holds."""
        try:
            self.scopes.loaded(await sync_to_async(config_load, thread_sensitive=False)())
            budgets = await self.gate.fetch()
        except Exception:  # the database is down: decide with the limits we hold
            version = self.scopes.config.version
            logger.exception("could not reload the configuration; keeping version %d", version)
            return
        self.gate.load(budgets)
        self.scopes.refresh(time.monotonic())
        self.live.changed()
        logger.info("limiter configuration loaded (version %d)", self.scopes.config.version)

    async def on_config_changed(self, message: dict[str, Any]) -> None:
        await self.reload()
        await self.answers.poll()  # a raised limit frees queued work

    async def _scopes(self, message: TicketMessage) -> tuple[ScopeLimit, ScopeLimit]:
        """A ticket's scopes, loading the configuration first when the ticket saw a newer
        one or names a key or account not known yet (created since the last load)."""
        if self.scopes.stale(message):
            await self.reload()
            self.scopes.not_found(message)
        return self.scopes.for_ticket(message)

    # --- tickets and leases ------------------------------------------------------------
    async def on_acquire(self, message: events.AcquireMessage) -> None:
        if await self.answers.asked_again(message):
            return
        # No staleness check on the asker's clock: hosts' clocks differ. An asker that
        # gave up sent a CANCEL after this ticket (same channel, in order), and a grant
        # that finds nobody waiting is handed back by its web process.
        scopes = await self._scopes(message)
        refusal = self.gate.admit(message)
        if refusal is not None:
            await self.answers.refuse(message, scopes[0], refusal)
            return
        now, args = time.monotonic(), codec.ticket_args(message)
        args["klass"] = self.scopes.klass(message)
        decisions = self.engine.acquire(message["ticket"], *scopes, message["tokens"], now, **args)
        await self.answers.send(decisions, now)

    async def on_reacquire(self, message: events.ReacquireMessage) -> None:
        if await self.answers.asked_again(message):
            return
        scopes = await self._scopes(message)
        now, args = time.monotonic(), codec.ticket_args(message)
        args["klass"] = self.scopes.klass(message)
        # The lease's call was refused upstream: the lease is freed and its ticket queued
        # first, in one step; the call used no tokens (its reservation settles at 0).
        lease, ticket = message["lease"], message["ticket"]
        decisions = self.engine.reacquire(lease, ticket, *scopes, message["tokens"], now, **args)
        await self.answers.send(decisions, now)

    async def on_extend(self, message: events.ExtendMessage) -> None:
        now = time.monotonic()
        if self.engine.extend(message["ticket"], float(message["max_wait"]), now):
            self.answers.schedule(now)  # its deadline moved: the timer may fire later

    async def on_release(self, message: events.ReleaseMessage) -> None:
        now, lease, used = time.monotonic(), message["lease"], message.get("tokens_used")
        unused = bool(message.get("unused"))
        await self.answers.send(self.engine.release(lease, used, now, unused=unused), now)

    async def on_cancel(self, message: dict[str, Any]) -> None:
        # Its asker gave up before the grant: whatever grant comes is handed back unused.
        self.gate.drop(message["ticket"])
        now = time.monotonic()
        await self.answers.send(self.engine.cancel(message["ticket"], now), now)

    async def on_renew(self, message: events.RenewMessage) -> None:
        if not self.engine.renew(message["lease"], time.monotonic()):
            lease = message["lease"]
            logger.warning("lease %s renewed after it expired: its slot was already free", lease)

    async def on_adopt(self, message: events.AdoptMessage) -> None:
        """A web process still holds this lease from before we started: count it."""
        scopes = await self._scopes(message)
        self.engine.adopt(message["lease"], *scopes, message["tokens"], time.monotonic())
        self.live.changed()

    # --- budgets -----------------------------------------------------------------------
    async def on_usage(self, message: events.UsageMessage) -> None:
        self.gate.settle(message)

    async def on_job_budget(self, message: events.JobBudgetMessage) -> None:
        if message.get("version", 0) > self.scopes.config.version:
            await self.reload()  # a budget or key newer than what this limiter holds
        answer = codec.job_budget_answer(message, self.gate.hold_job(message))
        await self.answers.reply(message["reply"], dict(answer), "a job's budget check")

    # --- what Together said, and its models' ceilings -----------------------------------
    async def on_upstream(self, message: events.UpstreamReportMessage) -> None:
        now = time.monotonic()
        scope_id = ("account", message["account"], message["endpoint"], message.get("model", ""))
        self.stats.record_upstream(scope_id, message, now, time.time())
        self.scopes.upstream(scope_id, message, now)
        if message["pause"] > 0:
            account, endpoint, pause = message["account"], message["endpoint"], message["pause"]
            logger.warning(
                "upstream 429: pausing account %s %s for %.2fs", account, endpoint, pause
            )
        self.live.changed()
        await self.answers.send(self.engine.poll(now), now)

    async def on_ceiling_reset(self, message: events.CeilingResetMessage) -> None:
        """Staff reset a model's learned ceiling: forget it (here and in the database) and
        pace the model at its profile's row again, until Together's next answer."""
        account, endpoint, model = message["account"], message["endpoint"], message["model"]
        scope_id: ScopeId = ("account", account, endpoint, model)
        now = time.monotonic()
        self.scopes.reset_ceiling(scope_id, now)
        await self.ceilings.forget_saved(scope_id)
        logger.info("learned ceiling of %s on account %s %s reset", model, account, endpoint)
        self.live.changed()
        if message.get("reply"):
            done = codec.ceiling_reset_done(model)
            await self.answers.reply(message["reply"], done, "a ceiling reset")
        await self.answers.send(self.engine.poll(now), now)

    # --- the live view and health --------------------------------------------------------
    async def on_coalesced(self, message: events.CoalescedMessage) -> None:
        self.coalesced.record(message, time.monotonic())
        self.live.changed()
        self.live.publish()

    # Posted like every answer (Answers.reply): the next message is read meanwhile.
    async def on_snapshot_request(self, message: dict[str, Any]) -> None:
        await self.answers.reply(message["reply"], dict(self.live.snapshot()), "a snapshot request")

    async def on_ping(self, message: dict[str, Any]) -> None:
        await self.answers.reply(
            message["reply"], codec.pong(message["ticket"], self.engine), "a ping"
        )

    def _ramp(self, now: float) -> None:
        """Each round of the live view's publisher: models whose callers wait step up."""
        if self.scopes.ramp(now):
            self.live.changed()


async def _ignore(message: dict[str, Any]) -> None:
    return None


def _near_limit_alert(event: NearLimitEvent) -> None:
    """A key near its limit for the alert's duration: its team's alert, raised off the
    event loop (database writes; limiter/alerts/near.py)."""
    spawn(_near_limit_raise(event))


async def _near_limit_raise(event: NearLimitEvent) -> None:
    try:
        await sync_to_async(near_limit_raise, thread_sensitive=False)(
            key_id=event.key_id,
            endpoint=event.endpoint,
            model=event.model,
            fraction=event.fraction,
            minutes=event.minutes,
        )
    except Exception:
        logger.exception("could not raise the near-limit alert of key %s", event.key_id)
