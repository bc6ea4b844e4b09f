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

The fine tick is kept while calls come (`use()`: each call that asks the limiter or is
refused from a promise, each readiness ping) and for QUIET seconds after the last; a
process with no call for that long ticks every IDLE_TICK instead. An idle loop is not
late, and fifty wake-ups a second were a third of an idle server's CPU (14 ms of CPU a
second with them, 9 to 10 without, over three 10 s windows each). The first call after
a quiet spell brings the next tick forward to the fine pace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

TICK = 0.02  # seconds between ticks while calls come: 50 timer callbacks a second
IDLE_TICK = 0.5  # seconds between ticks once no call has come for QUIET seconds
QUIET = 5.0


class LoopLag:
    """`start()` on the loop to measure (again after `stop()`); `clock`: the monotonic
    clock the loop's timers run on."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        tick: float = TICK,
        idle_tick: float = IDLE_TICK,
        quiet: float = QUIET,
    ) -> None:
        self.clock = clock
        self.tick = tick
        self.idle_tick = idle_tick
        self.quiet = quiet
        self.stalled = 0.0  # seconds the ticks ran late, summed
        self.ticks = 0  # ticks run: under saturation, one a turn of the loop
        self._due: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._used = -float("inf")  # when the last call came (`use`)
        self._idle = False  # whether the pending tick is an idle one

    def start(self) -> None:
        self.stop()
        self._used = self.clock()  # a process starts to serve: the fine pace first
        self._schedule(self._used)

    def use(self) -> None:
        """A call is being served: tick at the fine pace until QUIET seconds after it. An
        idle tick still pending and not yet due is brought forward to the fine pace."""
        now = self._used = self.clock()
        if self._idle and self._due is not None and now < self._due:
            assert self._handle is not None
            self._handle.cancel()
            self._schedule(now)

    def _schedule(self, now: float) -> None:
        self._idle = now - self._used >= self.quiet
        every = self.idle_tick if self._idle else self.tick
        self._due = now + every
        self._handle = asyncio.get_running_loop().call_later(every, self._ticked)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._due = None

    def _ticked(self) -> None:
        now = self.clock()
        if self._due is not None:
            self.stalled += max(0.0, now - self._due)
        self.ticks += 1
        self._schedule(now)

    def stalled_now(self) -> float:
        """Seconds the loop has run late since `start`, the tick now overdue included."""
        overdue = 0.0 if self._due is None else max(0.0, self.clock() - self._due)
        return self.stalled + overdue

    def responsive(self) -> float:
        """The monotonic clock less the loop's lateness: it never goes back, and stands
        still while the loop is late."""
        return self.clock() - self.stalled_now()
