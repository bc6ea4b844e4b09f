"""The limiter worker's budget handlers, driven through its own message dispatch over an
in-memory channel layer: a call a budget covers is reserved at its estimate when it is
admitted, its usage report settles the reservation, a ticket refused or cancelled holds
nothing, and a merged embeddings request is judged by its callers' tickets alone."""

from __future__ import annotations

from decimal import Decimal

import pytest
from channels.layers import InMemoryChannelLayer

from limiter.authority.consumer import LimiterConsumer
from limiter.models import EndpointLimit, LimitProfile, UpstreamAccount
from limiter.protocol import events
from limiter.services import key_issue, team_get_or_create
from limiter.usage.models import Budget

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


def world(*, per_minute: int = 60000, queue_depth: int = 0) -> dict:
    profile = LimitProfile.objects.create(name=f"budgeted-{per_minute}")
    EndpointLimit.objects.create(
        profile=profile,
        endpoint="chat",
        requests_per_minute=per_minute,
        burst=min(per_minute, 1000),
        queue_depth=queue_depth,
        max_queue_wait_seconds=120,  # a minute's wait fits: the second call queues
    )
    # The account's own ceiling wide open: the key's limit and its budget are what bind.
    EndpointLimit.objects.filter(profile__name="default", endpoint="chat").update(
        requests_per_minute=60000, pace_per_minute=None, burst=1000
    )
    team, _ = team_get_or_create(name="budgeted", profile=profile)
    budget = Budget.objects.create(
        team=team, unit="tokens", period="day", limit=Decimal(100), soft_threshold=0.8
    )
    return {
        "key": str(key_issue(team=team).key.pk),
        "account": str(UpstreamAccount.objects.get(is_default=True).pk),
        "budget": budget.pk,
    }


@pytest.fixture
def open_world(seeded_transactional_db):
    return world()


@pytest.fixture
def one_a_minute(seeded_transactional_db):
    return world(per_minute=1, queue_depth=1)


async def limiter() -> tuple[LimiterConsumer, InMemoryChannelLayer]:
    layer = InMemoryChannelLayer()
    consumer = LimiterConsumer(layer)
    await consumer.reload()
    return consumer, layer


async def ask(consumer, layer, w: dict, ticket: str, tokens: float, charge: str = "") -> dict:
    await consumer.dispatch(
        {
            "type": events.ACQUIRE,
            "ticket": ticket,
            "reply": "reply",
            "endpoint": "chat",
            "key": w["key"],
            "account": w["account"],
            "model": MODEL,
            "version": 0,
            "tokens": tokens,
            "request_id": ticket,
            **({"charge": charge} if charge else {}),
        }
    )
    return await layer.receive("reply")


async def report(consumer, w: dict, tokens: float, reservation: str = "") -> None:
    message: events.UsageMessage = {
        "type": events.USAGE,
        "key": w["key"],
        "model": MODEL,
        "tokens": tokens,
        "cost": 0.0,
    }
    if reservation:
        message["reservation"] = reservation
    await consumer.dispatch(dict(message))


async def test_a_call_is_reserved_when_admitted_and_settled_by_its_report(open_world):
    consumer, layer = await limiter()
    state = consumer.gate.book.states[open_world["budget"]]
    first = await ask(consumer, layer, open_world, "t1", 60)
    assert (first["kind"], first["budgeted"], first["reservation"]) == ("grant", True, "t1")
    second = await ask(consumer, layer, open_world, "t2", 39)
    assert (second["kind"], second["reservation"]) == ("grant", "t2")
    assert (state.spent, state.reserved) == (0.0, 99.0)
    third = await ask(consumer, layer, open_world, "t3", 1)  # 99 held: one more fits
    assert third["kind"] == "grant"
    # Nothing reported yet, nothing spent; the three calls in flight fill the budget.
    refused = await ask(consumer, layer, open_world, "t4", 1)
    assert (refused["kind"], refused["reason"]) == ("refuse", "budget_exceeded")
    assert "(and 100 held by its calls in flight)" in refused["message"]
    # t1 used 10 of its 60: settled, the room is back at once.
    await report(consumer, open_world, 10, reservation="t1")
    assert (state.spent, state.reserved) == (10.0, 40.0)
    assert (await ask(consumer, layer, open_world, "t5", 1))["kind"] == "grant"
    # A grant its web process handed back unused (too late, key revoked) settles at 0.
    await report(consumer, open_world, 0, reservation="t5")
    assert (state.spent, state.reserved) == (10.0, 40.0)


async def test_a_ticket_refused_by_its_limits_or_cancelled_in_the_queue_holds_nothing(
    one_a_minute,
):
    consumer, layer = await limiter()
    state = consumer.gate.book.states[one_a_minute["budget"]]
    assert (await ask(consumer, layer, one_a_minute, "t1", 30))["kind"] == "grant"
    assert (await ask(consumer, layer, one_a_minute, "t2", 30))["kind"] == "queued"
    full = await ask(consumer, layer, one_a_minute, "t3", 30)
    assert (full["kind"], full["reason"]) == ("refuse", "queue_full")
    assert state.reserved == 60.0  # t1 granted, t2 waiting; not t3
    await consumer.dispatch({"type": events.CANCEL, "ticket": "t2"})
    assert state.reserved == 30.0
    assert consumer.gate.book.reservations.keys() == {"t1"}


async def test_a_merged_request_is_judged_by_its_callers_not_its_first_callers_budget(
    open_world,
):
    consumer, layer = await limiter()
    await report(consumer, open_world, 150)  # a job's usage: spent past the limit
    caller = await ask(consumer, layer, open_world, "caller", 5, charge=events.CHARGE_KEY)
    assert (caller["kind"], caller["reason"]) == ("refuse", "budget_exceeded")
    # The merged request carries its first caller's key only to reach the account: a
    # team's budget refusing it would refuse every other team's callers in it.
    merged = await ask(consumer, layer, open_world, "merged", 50, charge=events.CHARGE_ACCOUNT)
    assert (merged["kind"], merged["budgeted"], merged["reservation"]) == ("grant", False, "")
    assert consumer.gate.book.reservations == {}
