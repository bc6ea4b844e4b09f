"""The loop's lateness and the clock that stands still meanwhile (limiter/protocol/lag.py),
on a real event loop: blocked on purpose, then left free."""

from __future__ import annotations

import asyncio
import time

import pytest

from limiter.protocol.inbox import Decision, Inbox
from limiter.protocol.lag import LoopLag


@pytest.fixture
async def lag():
    lag = LoopLag()
    lag.start()
    yield lag
    lag.stop()


async def test_a_free_loop_keeps_the_walls_pace(lag: LoopLag) -> None:
    wall, responsive = time.monotonic(), lag.responsive()
    await asyncio.sleep(0.3)
    gained = lag.responsive() - responsive
    assert gained == pytest.approx(time.monotonic() - wall, abs=0.05)


async def test_the_clock_stands_still_while_the_loop_is_blocked(lag: LoopLag) -> None:
    await asyncio.sleep(0.05)  # a tick or two on time
    before, stalled = lag.responsive(), lag.stalled_now()
    time.sleep(0.4)  # noqa: ASYNC251  (the loop runs nothing meanwhile: what is measured)
    assert lag.responsive() - before < 0.03  # at most the one tick that was due
    assert lag.stalled_now() - stalled > 0.35
    await asyncio.sleep(0)  # the overdue tick runs: the clock goes on from where it stood
    assert lag.responsive() >= before


async def test_the_clock_never_goes_back(lag: LoopLag) -> None:
    readings = []
    for blocked in (0.0, 0.05, 0.0, 0.1, 0.0):
        time.sleep(blocked)  # noqa: ASYNC251
        readings.append(lag.responsive())
        await asyncio.sleep(0.01)
        readings.append(lag.responsive())
    assert readings == sorted(readings)


async def test_an_inbox_wait_on_it_outlasts_a_blocked_loop(lag: LoopLag) -> None:
    """0.2 s of waiting, of which the loop is blocked 0.5 s: the event put at 0.6 s of
    the wall clock is still read, where a wall-clock wait would have timed out."""
    inbox = Inbox()

    async def block_then_answer() -> None:
        await asyncio.sleep(0.05)
        time.sleep(0.5)  # noqa: ASYNC251
        await asyncio.sleep(0.05)
        inbox.put(Decision({"kind": "grant"}))  # type: ignore[typeddict-item]

    answering = asyncio.ensure_future(block_then_answer())
    event = await inbox.next(0.2, lag.responsive)
    assert isinstance(event, Decision)
    await answering


async def test_an_inbox_wait_on_it_still_times_out_on_a_free_loop(lag: LoopLag) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await Inbox().next(0.2, lag.responsive)
    # Not much later: a loaded machine's scheduling delays add the loop's own lateness
    # (by design), so the bound is loose; a clock that stood still would never end it.
    assert 0.19 < time.monotonic() - started < 1.0


async def test_a_quiet_loop_ticks_slowly_and_a_call_brings_the_fine_pace_back() -> None:
    """After `quiet` seconds with no call the probe wakes the loop every `idle_tick`,
    not every `tick`; the next call brings the pending tick forward at once, and a stall
    then is measured as finely as before."""
    lag = LoopLag(tick=0.01, idle_tick=0.5, quiet=0.1)
    lag.start()
    try:
        await asyncio.sleep(0.15)  # the quiet spell begins
        ticks = lag.ticks
        await asyncio.sleep(0.4)
        assert lag.ticks - ticks <= 1  # about 40 at the fine pace
        lag.use()
        await asyncio.sleep(0.05)
        # The pending tick brought forward and the fine pace again (about 5; a loaded
        # machine's scheduling can leave 2), not the next one 0.5 s later.
        assert lag.ticks - ticks >= 2
        stalled = lag.stalled_now()
        time.sleep(0.2)  # noqa: ASYNC251  (blocked: what is measured)
        assert lag.stalled_now() - stalled > 0.15
    finally:
        lag.stop()
