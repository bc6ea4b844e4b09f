"""The limiter's answers: each decision sent to its asker, and the timer that serves the
queue.

The engine decides on a message's arrival and whenever a queued ticket may go or time out;
it never waits. `Answers.send` counts each decision (limiter/authority/stats.py), lets a
refused ticket's budget reservation go, words it (limiter/authority/codec.py) and posts
it to the outbox (limiter/protocol/outbox.py) without waiting: the next ticket is decided
while the answers before it are on their way, and over Redis the answers of many tickets
share one round trip. Then it arms the timer for the engine's next wake-up, whose tick
polls the engine and sends what that decided.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels.layers import BaseChannelLayer

from limiter.authority.budget_gate import BudgetGate, Refusal
from limiter.authority.codec import Codec
from limiter.authority.engine import Decision, Engine, Limit, ScopeId
from limiter.authority.live import LiveView
from limiter.authority.stats import Stats
from limiter.protocol import events
from limiter.protocol.client import spawn
from limiter.protocol.outbox import Outbox

logger = logging.getLogger(__name__)


class Answers:
    def __init__(
        self,
        layer: BaseChannelLayer,
        engine: Engine,
        codec: Codec,
        stats: Stats,
        budgets: BudgetGate,
        live: LiveView,
    ) -> None:
        self.layer = layer
        self.outbox = Outbox(layer)
        self.engine = engine
        self.codec = codec
        self.stats = stats
        self.budgets = budgets
        self.live = live
        self._timer: asyncio.TimerHandle | None = None

    async def send(self, decisions: list[Decision], now: float) -> None:
        """Answer the decisions of one step (decided at `now`), then re-arm the timer."""
        if decisions:
            wall = time.time()
            for decision in decisions:
                self.stats.record(decision, now, wall)
                budget = None
                if decision.kind == "grant":  # a shadow budget it went over, if any
                    budget = self.budgets.shadowed(decision.ticket.id)
                elif decision.kind == "refuse":  # queue full or timed out: reserves nothing
                    self.budgets.drop(decision.ticket.id)
                if decision.ticket.reply_to:
                    message = self.codec.decision(decision, budget)
                    # A lost answer: its asker asks again, or gives up at its timeout.
                    self.outbox.post(decision.ticket.reply_to, dict(message), "decisions")
            self.live.changed()
        self.schedule(now)
        self.live.publish()

    async def poll(self) -> None:
        """Serve the queue now: tickets whose turn came, or whose wait ran out."""
        now = time.monotonic()
        await self.send(self.engine.poll(now), now)

    async def asked_again(self, message: events.AcquireMessage) -> bool:
        """A ticket asked again while it is queued here (its web process's reply channel
        failed, so an answer may have been lost: limiter/protocol/client.py): say "queued"
        again, and nothing more (it is neither charged nor queued twice). Whether it was."""
        again = self.engine.still_queued(message["ticket"], time.monotonic())
        if again is None:
            return False
        answer = dict(self.codec.decision(again))
        await self.reply(message["reply"], answer, "a ticket asked again")
        return True

    async def refuse(
        self, message: events.AcquireMessage, key_scope: tuple[ScopeId, Limit], refusal: Refusal
    ) -> None:
        """A refusal before the engine charged any scope, with the key scope's quota."""
        now = time.monotonic()
        quota = self.engine.quota(self.engine.scope(key_scope[0], key_scope[1], now), now)
        self.stats.record_refused_at_once()
        answer = dict(self.codec.refusal(message["ticket"], refusal, quota))
        await self.reply(message["reply"], answer, f"a {refusal.reason} refusal")

    async def reply(self, channel: str, message: dict[str, Any], what: str) -> None:
        """One answer that is not an engine's decision, in order with the decisions; a
        channel layer failing is logged (the asker asks again, or gives up at its timeout)."""
        self.outbox.post(channel, message, what)

    def schedule(self, now: float) -> None:
        """Arm the timer for the next moment a queued ticket may go or time out."""
        wake = self.engine.next_wakeup(now)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if wake is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + max(0.0, wake - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        spawn(self.poll())

    def close(self) -> None:
        if self._timer:
            self._timer.cancel()
