"""The limiter's answers (limiter/authority/answers.py), through their own interface over
an in-memory channel layer: each decision reaches its asker worded by the codec and is
counted, a refused ticket's reservation goes, the timer serves a queued ticket with no
message arriving, and a ticket asked again while queued is told "queued" again."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from channels.layers import InMemoryChannelLayer

from limiter.authority.answers import Answers
from limiter.authority.budget_gate import INVALID, BudgetGate
from limiter.authority.coalesce_stats import CoalesceStats
from limiter.authority.codec import Codec
from limiter.authority.engine import Engine, Limit
from limiter.authority.learning import LearnedCeilings
from limiter.authority.live import LiveView
from limiter.authority.stats import Stats
from limiter.protocol import events
from limiter.usage.budgets import BudgetBook, BudgetRule

KEY = ("key", "k", "chat", "")
ACCOUNT = ("account", "a", "chat", "")
# One now, the next a tenth of a second later; one may wait for it.
TENTH = Limit(per_minute=600, burst=1, queue_depth=1, max_wait=5.0)
RULE = BudgetRule(1, 7, "painters", "", "", "", "tokens", "day", 100.0, 0.8)


def answers() -> Answers:
    engine, stats = Engine(), Stats()
    book = BudgetBook(ZoneInfo("UTC"))
    book.load([RULE], {"k": 7}, {}, datetime.now(UTC), [])
    gate = BudgetGate(book)
    ceilings = LearnedCeilings(margin=0.1, unit_seconds=1.0)
    shown = LiveView(engine, stats, ceilings, CoalesceStats())
    codec = Codec("limiter-1", gate)
    return Answers(InMemoryChannelLayer(), engine, codec, stats, gate, shown)


def ticket(name: str) -> dict:
    return {"ticket": name, "reply": "reply", "key": "k", "endpoint": "chat", "tokens": 1}


async def ask(sent: Answers, name: str) -> None:
    assert sent.budgets.admit(ticket(name)) is None  # reserved, as a covered call is
    now = time.monotonic()
    decisions = sent.engine.acquire(name, (KEY, TENTH), (ACCOUNT, TENTH), 1, now, reply_to="reply")
    await sent.send(decisions, now)


async def test_each_decision_reaches_its_asker_and_a_refusal_holds_nothing():
    sent = answers()
    try:
        for name in ("t1", "t2", "t3"):
            await ask(sent, name)
        got = [await sent.layer.receive("reply") for _ in range(3)]
        assert [(m["ticket"], m["kind"]) for m in got] == [
            ("t1", "grant"),
            ("t2", "queued"),
            ("t3", "refuse"),
        ]
        assert all(m["limiter"] == "limiter-1" for m in got)
        assert (got[0]["budgeted"], got[0]["reservation"]) == (True, "t1")
        assert sent.stats.decisions == 3
        assert set(sent.budgets.book.reservations) == {"t1", "t2"}  # t3's went
    finally:
        sent.close()


async def test_the_timer_serves_a_queued_ticket_with_no_message_arriving():
    sent = answers()
    try:
        await ask(sent, "t1")
        await ask(sent, "t2")
        assert [(await sent.layer.receive("reply"))["kind"] for _ in range(2)] == [
            "grant",
            "queued",
        ]
        granted = await asyncio.wait_for(sent.layer.receive("reply"), 5)
        assert (granted["ticket"], granted["kind"]) == ("t2", "grant")
        assert granted["waited"] > 0
    finally:
        sent.close()


async def test_a_ticket_asked_again_while_queued_is_told_queued_again_and_nothing_more():
    sent = answers()
    try:
        await ask(sent, "t1")
        await ask(sent, "t2")
        for _ in range(2):
            await sent.layer.receive("reply")
        assert await sent.asked_again(ticket("t2"))
        again = await sent.layer.receive("reply")
        assert (again["ticket"], again["kind"]) == ("t2", "queued")
        assert list(sent.engine.tickets) == ["t2"]
        assert not await sent.asked_again(ticket("t1"))  # granted already: asked as new
    finally:
        sent.close()


async def test_a_refusal_before_the_engine_carries_the_keys_quota_and_is_counted():
    sent = answers()
    await sent.refuse(ticket("bad"), (KEY, TENTH), INVALID)
    refused = await sent.layer.receive("reply")
    assert (refused["kind"], refused["reason"], refused["limit"]) == ("refuse", INVALID.reason, 600)
    assert refused["message"] == INVALID.message
    assert sent.stats.decisions == 1
    assert sent.engine.tickets == {} and sent.engine.leases == {}


async def test_a_reply_that_cannot_be_sent_is_logged_not_raised(caplog):
    sent = answers()

    async def down(channel: str, message: dict) -> None:
        raise ConnectionError("Redis is restarting")

    sent.layer.send = down  # type: ignore[method-assign]
    await sent.reply("reply", {"type": events.PONG}, "a ping")
    await sent.outbox.drained()  # posted: sent after the reply returns
    assert "could not send 1 message(s) (a ping)" in caplog.text
