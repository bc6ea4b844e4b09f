"""The limiter worker answers a ticket whose tokens or cost are out of range with a
refusal of its own (issue 18, item 1), before a budget does arithmetic with it: with a
budget, float(10**400) raised in the handler, the ticket was never answered and its
caller waited out its timeout. Driven through the worker's own dispatch."""

from __future__ import annotations

import math

import pytest

from limiter.authority.budget_gate import MSG_INVALID_UNITS
from limiter.authority.engine import INVALID_UNITS
from tests.usage.test_budget_worker import ask, limiter, report, world

pytestmark = pytest.mark.django_db(transaction=True)

ABSURD = [10**400, 1e308, math.inf, math.nan, -1]


@pytest.fixture
def budgeted(seeded_transactional_db):
    return world()


@pytest.mark.parametrize("units", ABSURD, ids=[repr(u)[:12] for u in ABSURD])
async def test_absurd_tokens_are_refused_alone_with_a_budget(budgeted, units):
    consumer, layer = await limiter()
    state = consumer.gate.book.states[budgeted["budget"]]
    refused = await ask(consumer, layer, budgeted, "bad", units)
    assert (refused["kind"], refused["reason"], refused["scope"]) == (
        "refuse",
        INVALID_UNITS,
        "key",
    )
    assert refused["message"] == MSG_INVALID_UNITS
    assert (state.spent, state.reserved) == (0.0, 0.0)
    assert consumer.engine.tickets == {} and consumer.engine.leases == {}
    good = await ask(consumer, layer, budgeted, "good", 10)
    assert (good["kind"], good["reservation"]) == ("grant", "good")


@pytest.mark.parametrize("units", ABSURD, ids=[repr(u)[:12] for u in ABSURD])
async def test_an_absurd_usage_report_releases_its_reservation(budgeted, units):
    consumer, layer = await limiter()
    state = consumer.gate.book.states[budgeted["budget"]]
    assert (await ask(consumer, layer, budgeted, "t1", 40))["kind"] == "grant"
    await report(consumer, budgeted, units, reservation="t1")
    assert (state.spent, state.reserved) == (0.0, 0.0)
    assert math.isfinite(state.spent)
