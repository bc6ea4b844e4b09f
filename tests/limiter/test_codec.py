"""The one place the limiter words its answers (limiter/authority/codec.py): the engine's
decisions and the refusals before the engine come out as the same DecisionMessage, with
the budget's word on a grant, and a ticket's extras go to the engine as its arguments."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from limiter.authority import codec
from limiter.authority.budget_gate import INVALID, BudgetGate, Refusal
from limiter.authority.codec import Codec
from limiter.authority.engine import Engine, Limit, Quota
from limiter.protocol import events
from limiter.protocol.events import DecisionMessage
from limiter.usage.budgets import BudgetBook, BudgetRule, Exceeded, JobRefused

KEY = ("key", "k", "chat", "")
ACCOUNT = ("account", "a", "chat", "m")
ONE = Limit(per_minute=60, burst=1, queue_depth=1, max_wait=30.0)
RULE = BudgetRule(1, 7, "painters", "", "", "", "tokens", "day", 100.0, 0.8)


def budgets(*rules: BudgetRule) -> BudgetGate:
    book = BudgetBook(ZoneInfo("UTC"))
    book.load(list(rules), {"k": 7}, {}, datetime.now(UTC), [])
    return BudgetGate(book)


def decide(engine: Engine, ticket: str) -> list:
    return engine.acquire(ticket, (KEY, ONE), (ACCOUNT, ONE), 0, now=0.0, reply_to="r")


def test_the_engines_decisions_are_worded_with_the_instance_and_the_clock():
    words = Codec("limiter-1", budgets())
    engine = Engine()
    before = time.monotonic()
    (grant,) = decide(engine, "t1")
    (queued,) = decide(engine, "t2")
    (refused,) = decide(engine, "t3")
    message = words.decision(grant)
    assert message["type"] == events.DECISION and message["kind"] == "grant"
    assert (message["ticket"], message["lease"], message["limiter"]) == (
        "t1",
        grant.lease,
        "limiter-1",
    )
    assert (message["limit"], message["remaining"], message["budgeted"]) == (60, 0, False)
    assert message["reservation"] == "" and message["at"] >= before
    # A grant lists shadow refusals only when it has some (test_shadow_budgets.py), and
    # one that did not queue waited on no rule.
    promise = {"refused_for", "refused_scope"}  # a refusal's, when it holds a while
    unsaid = {"message", "shadow", "rule", *promise}
    assert set(message) == set(DecisionMessage.__annotations__) - unsaid
    queued_message = words.decision(queued)
    assert (queued_message["kind"], queued_message["max_wait"]) == ("queued", 30.0)
    assert queued_message["retry_after"] == pytest.approx(1.0)
    assert queued_message["reason"] == "rate_limited"  # the rule it waits on: its own key's
    refused_message = words.decision(refused)
    assert (refused_message["kind"], refused_message["reason"]) == ("refuse", "queue_full")
    # Its key may queue 30 s, longer than the bucket takes to have room: no promise.
    assert "refused_for" not in refused_message


def test_a_refusal_that_holds_a_while_says_for_how_long_and_whose_state_proves_it():
    words = Codec("limiter-1", budgets())
    engine = Engine()
    no_queue = Limit(per_minute=60, burst=1)
    engine.acquire("t1", (KEY, no_queue), (ACCOUNT, ONE), 0, now=0.0)
    (refused,) = engine.acquire("t2", (KEY, no_queue), (ACCOUNT, ONE), 0, now=0.25)
    message = words.decision(refused)
    assert (message["kind"], message["reason"]) == ("refuse", "rate_limited")
    assert message["refused_for"] == pytest.approx(0.75 - 1e-3)
    assert message["refused_scope"] == "key"


def test_a_grant_that_queued_names_the_rule_it_waited_on():
    # (A timeout's rule: tests/limiter/test_engine_shares.py.)
    words = Codec("limiter-1", budgets())
    engine = Engine()
    decide(engine, "t1")
    decide(engine, "t2")  # queued behind its key's (and the account's) one a minute
    (granted,) = engine.poll(60.0)
    assert words.decision(granted)["rule"] == "rate_limited"  # its key, as tight as the account


def test_a_grant_a_budget_covers_is_budgeted_and_names_its_reservation():
    gate = budgets(RULE)
    assert gate.admit({"ticket": "t1", "key": "k", "endpoint": "chat", "tokens": 5}) is None
    (grant,) = decide(Engine(), "t1")
    message = Codec("limiter-1", gate).decision(grant)
    assert (message["budgeted"], message["reservation"]) == (True, "t1")


def test_a_refusal_before_the_engine_is_a_decision_message_like_the_engines():
    quota = Quota(limit_per_minute=60, remaining=3, reset_after=2.5)
    for refusal, scope in (
        (INVALID, "key"),
        (Refusal("budget_exceeded", "team", -5, "no"), "team"),
    ):
        message = Codec("limiter-1", budgets()).refusal("t9", refusal, quota)
        assert (message["kind"], message["ticket"], message["scope"]) == ("refuse", "t9", scope)
        assert (message["reason"], message["message"]) == (refusal.reason, refusal.message)
        assert (message["limit"], message["remaining"], message["reset"]) == (60, 3, 2.5)
        assert (message["lease"], message["waited"], message["max_wait"]) == ("", 0.0, 0.0)
        assert message["retry_after"] >= 0.001 and message["limiter"] == "limiter-1"
        # A grant's fields, a promise that holds a while and a queued call's rule: none.
        unsaid = {"budgeted", "reservation", "shadow", "refused_for", "refused_scope", "rule"}
        assert set(message) == set(DecisionMessage.__annotations__) - unsaid


def test_a_tickets_extras_are_the_engines_arguments():
    plain = {"reply": "r", "request_id": "q"}
    assert codec.ticket_args(plain) == {"reply_to": "r", "request_id": "q"}
    merged = {**plain, "charge": events.CHARGE_ACCOUNT, "max_wait": 12}
    assert codec.ticket_args(merged) == {
        "reply_to": "r",
        "request_id": "q",
        "refundable": True,
        "max_wait": 12.0,
    }


def test_a_jobs_budget_answer_says_why_it_is_not_held():
    message = {"ticket": "j", "job": "a batch", "action": "accepted"}
    assert codec.job_budget_answer(message, None) == {
        "type": events.JOB_BUDGET_ANSWER,
        "ticket": "j",
        "held": True,
    }
    exceeded = Exceeded(RULE, 90.0, datetime.now(UTC), 0.0, "UTC")
    answer = codec.job_budget_answer(message, JobRefused(exceeded, 500.0, over_limit=True))
    assert (answer["held"], answer["over_limit"], answer["retry_after"]) == (False, True, 0.001)
    assert "this a batch is estimated at 500 tokens" in answer["message"]


def test_a_pong_says_what_the_engine_holds():
    engine = Engine()
    engine.acquire("t1", (KEY, ONE), (ACCOUNT, ONE), 0, now=0.0, refundable=True)  # a lease
    decide(engine, "t2")
    assert codec.pong("p", engine) == {
        "type": events.PONG,
        "ticket": "p",
        "leases": 1,
        "queued": 1,
        "scopes": 2,
    }
