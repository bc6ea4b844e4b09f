"""How late this process's event loop runs, and a clock that stands still meanwhile.

A call that waits for the limiter's answer gives up after SLUICE_LIMITER_TIMEOUT and is
answered 503 `limiter_unavailable`. Measured on the wall clock, that deadline also
expires when the limiter answered at once but this process's own loop was too busy to
read the answer: a flood of calls on one key saturates the loop (each turn runs every
ready callback: thousands of refusals), the few hops of a round trip (the ticket to the
embedded limiter, its answer, the reply dispatcher, the waiting call) take one turn
each, and a turn takes longer than the deadline allows. Every other team's call was then
refused as if the limiter were down (bench/flood.py's storm).

`LoopLag` schedules a tick every `TICK` seconds and adds up how late each one ran: that
is time the loop could not have run anything else either, so it is no evidence against
the limiter. `responsive()` is a clock that stands still while the loop is late (the
wall clock less the lateness so far, the tick now overdue included), and the deadlines
of a call's wait are measured on it (inbox.Inbox.next). An idle or busy-but-keeping-up
loop runs its ticks on time and the clock keeps the wall's pace; a limiter that never
answers is still found out after SLUICE_LIMITER_TIMEOUT of time the loop was free to
hear it. A loop stalled throughout gains TICK of this clock a turn, so a deadline of
2 s is 100 of its turns, where a round trip takes a handful.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

TICK = 0.02  # seconds between ticks: 50 timer callbacks a second, negligible CPU


class LoopLag:
    """`start()` on the loop to measure (again after `stop()`); `clock`: the monotonic
    clock the loop's timers run on."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, tick: float = TICK) -> None:
        self.clock = clock
        self.tick = tick
        self.stalled = 0.0  # seconds the ticks ran late, summed
        self.ticks = 0  # ticks run: under saturation, one a turn of the loop
        self._due: float | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.stop()
        self._due = self.clock() + self.tick
        self._handle = asyncio.get_running_loop().call_later(self.tick, self._ticked)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._due = None

    def _ticked(self) -> None:
        now = self.clock()
        if self._due is not None:
            self.stalled += max(0.0, now - self._due)
        self.ticks += 1
        self._due = now + self.tick
        self._handle = asyncio.get_running_loop().call_later(self.tick, self._ticked)

    def stalled_now(self) -> float:
        """Seconds the loop has run late since `start`, the tick now overdue included."""
        overdue = 0.0 if self._due is None else max(0.0, self.clock() - self._due)
        return self.stalled + overdue

    def responsive(self) -> float:
        """The monotonic clock less the loop's lateness: it never goes back, and stands
        still while the loop is late."""
        return self.clock() - self.stalled_now()
