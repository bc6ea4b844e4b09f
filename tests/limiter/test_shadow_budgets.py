"""Shadow budgets at the budget gate (limiter/authority/budget_gate.py): a call over a shadow
budget is admitted and its grant names the budget that would have refused it; the same
budget enforced refuses it; an enforced budget still refuses beside a shadow one."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from limiter.authority.budget_gate import BudgetGate
from limiter.authority.codec import Codec
from limiter.authority.engine import Engine, Limit
from limiter.usage.budgets import BUDGET_EXCEEDED, BudgetBook, BudgetRule, JobHold

KEY = ("key", "k", "chat", "")
ACCOUNT = ("account", "a", "chat", "m")
WIDE = Limit(per_minute=600, burst=10, queue_depth=1, max_wait=30.0)
SPENT = BudgetRule(1, 7, "painters", "", "", "", "tokens", "day", 100.0, 0.8)


def gate(*rules: BudgetRule, spent: float = 100.0) -> BudgetGate:
    book = BudgetBook(ZoneInfo("UTC"))
    book.load(list(rules), {"k": 7}, {rule.id: spent for rule in rules}, datetime.now(UTC), [])
    return BudgetGate(book)


def ticket(name: str) -> dict:
    return {"ticket": name, "key": "k", "endpoint": "chat", "tokens": 5}


def test_a_call_over_a_shadow_budget_is_admitted_and_its_grant_says_so():
    shadowed = gate(replace(SPENT, shadow=True))
    assert shadowed.admit(ticket("t1")) is None  # admitted
    (grant,) = Engine().acquire("t1", (KEY, WIDE), (ACCOUNT, WIDE), 5, now=0.0, reply_to="r")
    message = Codec("limiter-1", shadowed).decision(grant, shadowed.shadowed("t1"))
    assert message["kind"] == "grant"
    ((would,),) = [message["shadow"]]
    assert (would["scope"], would["reason"]) == ("team", BUDGET_EXCEEDED)
    assert "painters" in would["message"] and "100" in would["message"]
    assert shadowed.shadowed("t1") is None  # asked once


def test_the_same_budget_enforced_refuses_and_enforced_ones_still_refuse_beside_shadow():
    enforced = gate(SPENT)
    refused = enforced.admit(ticket("t1"))
    assert refused is not None and refused.reason == BUDGET_EXCEEDED
    both = gate(replace(SPENT, shadow=True), replace(SPENT, id=2))
    refused = both.admit(ticket("t2"))
    assert refused is not None and refused.reason == BUDGET_EXCEEDED
    assert both.shadowed("t2") is None


def test_a_budget_with_room_records_nothing_and_a_refused_ticket_forgets_its_record():
    roomy = gate(replace(SPENT, shadow=True), spent=10.0)
    assert roomy.admit(ticket("t1")) is None and roomy.shadowed("t1") is None
    full = gate(replace(SPENT, shadow=True))
    assert full.admit(ticket("t2")) is None
    full.drop("t2")  # the engine refused it: no grant, no record
    assert full.shadowed("t2") is None


def test_a_shadow_budget_holds_no_job_back():
    shadowed = gate(replace(SPENT, shadow=True))
    assert (
        shadowed.book.hold_jobs("k", [JobHold("job-1", "", 500.0, 0.0)], datetime.now(UTC)) is None
    )
    enforced = gate(SPENT)
    assert enforced.book.hold_jobs("k", [JobHold("job-1", "", 500.0, 0.0)], datetime.now(UTC))
