"""The gate a ticket passes before the engine (limiter/authority/budget_gate.py), through
its own interface, with budgets loaded in memory: units out of range are refused alone,
a budget used up refuses, a covered call is reserved until its report, and a job's
estimate is held only if it fits."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from limiter.authority import budget_gate
from limiter.authority.budget_gate import INVALID, MSG_INVALID_UNITS, BudgetGate
from limiter.authority.engine import INVALID_UNITS
from limiter.protocol import events
from limiter.usage.budgets import BUDGET_EXCEEDED, BudgetBook, BudgetRule

TEAM_BUDGET = BudgetRule(
    id=1,
    team_id=7,
    team_name="painters",
    key_id="",
    key_prefix="",
    model="",
    unit="tokens",
    period="day",
    limit=100.0,
    soft_threshold=0.8,
)


@pytest.fixture
def crossed(monkeypatch) -> list[tuple[int, str]]:
    """The thresholds announced (recorded and alerted off the loop, in the database)."""
    seen: list[tuple[int, str]] = []
    monkeypatch.setattr(
        budget_gate, "threshold_crossed", lambda rule, level, *_: seen.append((rule.id, level))
    )
    return seen


def gate(*rules: BudgetRule) -> BudgetGate:
    book = BudgetBook(ZoneInfo("UTC"))
    book.load(list(rules), {"k": 7}, {}, datetime.now(UTC), [])
    return BudgetGate(book)


def ticket(name: str, tokens: float, *, endpoint: str = "chat", **extra) -> dict:
    return {
        "type": events.ACQUIRE,
        "ticket": name,
        "reply": "r",
        "endpoint": endpoint,
        "key": "k",
        "account": "a",
        "model": "m",
        "version": 0,
        "tokens": tokens,
        "request_id": name,
        **extra,
    }


def usage(tokens: float, reservation: str = "") -> dict:
    return {
        "type": events.USAGE,
        "key": "k",
        "model": "m",
        "tokens": tokens,
        "cost": 0.0,
        "reservation": reservation,
    }


@pytest.mark.parametrize("units", [10**400, math.inf, math.nan, -1, "10"])
def test_units_out_of_range_are_refused_with_or_without_a_budget(units):
    for checked in (gate(), gate(TEAM_BUDGET)):
        assert checked.admit(ticket("t", units)) == INVALID
        assert checked.admit(ticket("t", 1, cost=units)) == INVALID
        assert checked.book.reservations == {}
    assert (INVALID.reason, INVALID.scope, INVALID.message) == (
        INVALID_UNITS,
        "key",
        MSG_INVALID_UNITS,
    )


def test_a_covered_call_is_reserved_until_a_budget_is_full_then_refused():
    checked = gate(TEAM_BUDGET)
    assert checked.admit(ticket("t1", 60)) is None
    assert checked.admit(ticket("t2", 40)) is None
    assert checked.reserved("t1") and checked.covers("k") and not checked.covers("other")
    refusal = checked.admit(ticket("t3", 1))
    assert refusal is not None
    assert (refusal.reason, refusal.scope) == (BUDGET_EXCEEDED, "team")
    assert 0 < refusal.retry_after <= 86400
    assert "team 'painters'" in refusal.message
    checked.drop("t2")  # refused or cancelled in the queue: it holds nothing
    assert checked.admit(ticket("t4", 1)) is None


def test_what_no_budget_judges_passes_without_a_reservation():
    checked = gate(TEAM_BUDGET)
    assert checked.admit(ticket("files", 500, endpoint="files")) is None
    assert checked.admit(ticket("merged", 500, charge=events.CHARGE_ACCOUNT)) is None
    assert gate().admit(ticket("none", 500)) is None
    assert checked.book.reservations == {}


def test_a_call_that_spends_nothing_passes_a_full_budget():
    """A list (events.AcquireMessage.spends False) is no budget's business: it passes a
    budget that refuses the next spending call, and reserves nothing."""
    checked = gate(TEAM_BUDGET)
    assert checked.admit(ticket("all", 100)) is None
    assert checked.admit(ticket("more", 1)) is not None
    assert checked.admit(ticket("list", 1, endpoint="code_interpreter", spends=False)) is None
    assert not checked.reserved("list")


async def test_a_report_settles_its_reservation_and_announces_the_thresholds(crossed):
    checked = gate(TEAM_BUDGET)
    assert checked.admit(ticket("t1", 50)) is None
    checked.settle(usage(85, reservation="t1"))
    state = checked.book.states[1]
    assert (state.spent, state.reserved) == (85.0, 0.0)
    for _ in range(20):  # announced off the event loop
        if crossed:
            break
        await asyncio.sleep(0.01)
    assert crossed == [(1, "soft")]


async def test_a_report_out_of_range_is_settled_at_zero(crossed):
    checked = gate(TEAM_BUDGET)
    assert checked.admit(ticket("t1", 50)) is None
    checked.settle(usage(math.inf, reservation="t1"))
    assert (checked.book.states[1].spent, checked.book.states[1].reserved) == (0.0, 0.0)


def test_a_jobs_estimate_is_held_only_if_it_fits():
    checked = gate(TEAM_BUDGET)
    job: events.JobBudgetMessage = {
        "type": events.JOB_BUDGET,
        "ticket": "j",
        "reply": "r",
        "key": "k",
        "version": 0,
        "job": "a batch",
        "action": "accepted",
        "holds": [{"job": "job-1", "model": "m", "tokens": 70.0, "cost": 0.0}],
    }
    assert checked.hold_job(job) is None
    assert checked.book.states[1].reserved == 70.0
    refused = checked.hold_job({**job, "holds": [{**job["holds"][0], "job": "job-2"}]})
    assert refused is not None and not refused.over_limit
    assert checked.book.states[1].reserved == 70.0
