"""What reaches a waiting ticket: typed events, each ticket on a queue of its own.

Besides the limiter's answer (`Decision`, or a ping's `Pong`), the transport tells every
waiting ticket of two things that are not answers: a limiter announced its start
(`LimiterRestarted`: one that queued the ticket may be gone) and this process's reply
channel works again after failing (`Resync`: an answer sent meanwhile may be lost).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from limiter.protocol.events import DecisionMessage


@dataclass(frozen=True, slots=True)
class Decision:
    """The limiter's answer to a ticket: "grant", "queued" or "refuse"."""

    message: DecisionMessage

    @property
    def kind(self) -> str:
        return self.message["kind"]

    @property
    def limiter(self) -> str:
        """The deciding limiter instance ("" when it did not say)."""
        return self.message.get("limiter", "")


@dataclass(frozen=True, slots=True)
class Pong:
    """The limiter's answer to a ping: its counts (leases, queued, scopes)."""

    counts: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LimiterRestarted:
    """A limiter announced its start (events.LIMITER_STARTED)."""

    limiter: str


@dataclass(frozen=True, slots=True)
class Resync:
    """This process's reply channel works again after failing (Redis restarted)."""


TicketEvent = Decision | Pong | LimiterRestarted | Resync

# The shortest wait `Inbox.next` sets itself when its clock says that little is left.
MIN_WAIT = 0.001


class Inbox:
    """One ticket's queue, read by one reader. An event counts as handled once the reader
    asks for the next one or closes the inbox; `settled` waits until all are."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[TicketEvent] = asyncio.Queue()
        self._unhandled = 0
        self._holding = False  # the reader holds an event it has not finished with
        self._idle = asyncio.Event()
        self._idle.set()

    def put(self, event: TicketEvent) -> None:
        self._unhandled += 1
        self._idle.clear()
        self._queue.put_nowait(event)

    async def next(self, within: float, clock: Callable[[], float] | None = None) -> TicketEvent:
        """The next event; TimeoutError after `within` seconds without one, measured on
        `clock` when given (lag.LoopLag.responsive: time the loop ran late is not counted,
        so the wait is at least `within` of the wall clock, longer by the loop's lag)."""
        self._handled()
        if clock is None:
            event = await asyncio.wait_for(self._queue.get(), within)
        else:
            deadline = clock() + within
            while True:
                try:
                    event = await asyncio.wait_for(
                        self._queue.get(), max(deadline - clock(), MIN_WAIT)
                    )
                    break
                except TimeoutError:
                    if clock() >= deadline:
                        raise
        self._holding = True
        return event

    def close(self) -> list[TicketEvent]:
        """Stop reading: the events put and never read."""
        self._handled()
        unread = []
        while not self._queue.empty():
            unread.append(self._queue.get_nowait())
        self._done(len(unread))
        return unread

    @property
    def busy(self) -> bool:
        return self._unhandled > 0

    async def settled(self) -> None:
        await self._idle.wait()

    def _handled(self) -> None:
        if self._holding:
            self._holding = False
            self._done(1)

    def _done(self, count: int) -> None:
        self._unhandled -= count
        if self._unhandled <= 0:
            self._unhandled = 0
            self._idle.set()
