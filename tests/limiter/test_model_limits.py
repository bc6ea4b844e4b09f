"""Issue 11, points 1 and 5: per-model rows in a profile (exact or glob), and learned
ceilings kept in the database across a limiter restart."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from channels.layers import InMemoryChannelLayer
from django.core.exceptions import ValidationError

from limiter.authority.ceilings import Ceiling, Learned
from limiter.authority.config import model_rows
from limiter.authority.consumer import LimiterConsumer
from limiter.authority.engine import Limit
from limiter.models import (
    MODEL_GLOB_DOCUMENTED,
    EndpointLimit,
    LearnedCeiling,
    LimitProfile,
    UpstreamAccount,
    model_pattern_error,
)
from limiter.protocol import events
from limiter.services import key_issue, team_get_or_create

ROW = Limit(per_minute=600, burst=1)


def limit(per_minute: float) -> Limit:
    return Limit(per_minute=per_minute, burst=1)


# --- matching: pure ---------------------------------------------------------------------
def test_exact_beats_glob_and_the_longest_glob_wins_without_regard_to_case() -> None:
    rows = model_rows(
        [
            ("black-forest-labs/*", limit(30)),
            ("black-forest-labs/FLUX*", limit(6)),
            ("Black-Forest-Labs/FLUX.1-pro", limit(2)),
        ]
    )
    assert rows.match("black-forest-labs/FLUX.1-pro") == ("black-forest-labs/flux.1-pro", limit(2))
    assert rows.match("BLACK-FOREST-LABS/flux.1-schnell") == ("black-forest-labs/flux*", limit(6))
    assert rows.match("black-forest-labs/other") == ("black-forest-labs/*", limit(30))
    assert rows.match("meta-llama/Llama-3.3-70B-Instruct-Turbo") is None


def test_a_restored_ceiling_stays_within_todays_profile() -> None:
    """A cap lowered while the limiter was down still holds over what was learned."""
    state = Learned(
        learned=300, learned_tokens=None, pace=270, token_pace=None, source="headers", updated_at=0
    )
    higher = Ceiling.start(ROW)
    higher.restore(state, margin=0.1)
    assert (higher.pace, higher.learned, higher.source) == (270, 300, "headers")
    lower = Ceiling.start(limit(100))
    lower.restore(state, margin=0.1)
    assert lower.pace == 100


# --- validation ------------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("model", "endpoint"),
    [("FLUX[", "images"), ("a b", "chat"), ("flux[]", "images"), ("x/*", "fine_tunes")],
)
def test_a_bad_model_row_is_refused(model: str, endpoint: str) -> None:
    row = EndpointLimit(
        profile=LimitProfile.objects.get(name="default"),
        endpoint=endpoint,
        model=model,
        requests_per_minute=6,
    )
    with pytest.raises(ValidationError) as refused:
        row.full_clean()
    assert "model" in refused.value.message_dict


@pytest.mark.parametrize(
    "model",
    [
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "black-forest-labs/FLUX*",
        "org/[ab]c?",
        "org/[!x]*",
        "a]b",
        "FLUX[",
        "flux[]",
        "a[b[c]]",
        "a b",
        "µ",
        "x" * 200,
        "x" * 201,
    ],
)
def test_the_documented_model_pattern_is_the_rule_the_model_applies(model: str) -> None:
    # The ops API documents MODEL_GLOB_DOCUMENTED (with maxLength 200); the row's own check
    # is model_pattern_error. Schemathesis trusts the first, the server applies the second.
    documented = bool(re.fullmatch(MODEL_GLOB_DOCUMENTED, model)) and len(model) <= 200
    assert documented == (model_pattern_error(model) is None)


# --- the limiter: its scopes and its learned state --------------------------------------
@pytest.fixture
def world(seeded_transactional_db):
    account = UpstreamAccount.objects.get(is_default=True)
    EndpointLimit.objects.create(
        profile=account.profile,
        endpoint="images",
        model="black-forest-labs/FLUX*",
        requests_per_minute=6,
        burst=1,
    )
    team_profile = LimitProfile.objects.create(name="painters")
    EndpointLimit.objects.create(
        profile=team_profile, endpoint="images", requests_per_minute=60, burst=5
    )
    EndpointLimit.objects.create(
        profile=team_profile,
        endpoint="images",
        model="black-forest-labs/FLUX.1-schnell",
        requests_per_minute=3,
        burst=1,
    )
    team, _ = team_get_or_create(name="painters", profile=team_profile)
    return {"account": str(account.pk), "key": str(key_issue(team=team).key.pk)}


async def started() -> LimiterConsumer:
    consumer = LimiterConsumer(InMemoryChannelLayer())
    await consumer.reload()
    await consumer.ceilings.restore()
    return consumer


def acquire(key: str, account: str, model: str, ticket: str) -> dict:
    return {
        "type": events.ACQUIRE,
        "ticket": ticket,
        "reply": "reply",
        "endpoint": "images",
        "key": key,
        "account": account,
        "model": model,
        "version": 0,
        "tokens": 0.0,
        "request_id": ticket,
    }


pytestmark_db = pytest.mark.django_db(transaction=True)


@pytestmark_db
async def test_a_model_row_is_the_accounts_cap_and_the_keys_own_budget(world) -> None:
    consumer = await started()
    flux = "black-forest-labs/FLUX.1-schnell"
    await consumer.dispatch(acquire(world["key"], world["account"], flux, "1"))
    await consumer.dispatch(acquire(world["key"], world["account"], "stability/sdxl", "2"))
    scopes = consumer.engine.scopes
    # The account: the glob's 6/min for FLUX, the endpoint's row for the other model.
    assert scopes[("account", world["account"], "images", flux)].limit.per_minute == 6
    assert scopes[("account", world["account"], "images", "stability/sdxl")].limit.per_minute == 60
    # The key: its own 3/min budget for that model, charged instead of the endpoint's row.
    assert scopes[("key", world["key"], "images", flux)].limit.per_minute == 3
    assert scopes[("key", world["key"], "images", "")].limit.per_minute == 60
    assert scopes[("key", world["key"], "images", "")].requests.debt(time.monotonic()) <= 1


@pytestmark_db
async def test_learned_ceilings_survive_a_restart_and_stale_ones_do_not(world) -> None:
    flux = "black-forest-labs/FLUX.1-schnell"
    first = await started()
    await first.dispatch(acquire(world["key"], world["account"], flux, "1"))
    await first.dispatch(
        {
            "type": events.UPSTREAM_REPORT,
            "account": world["account"],
            "endpoint": "images",
            "model": flux,
            "error_type": "",
            "pause": 0.0,
            "refused": False,
            "unavailable": 0,
            "headers": {"x-ratelimit-limit-dynamic": "0.05"},  # 3 a minute
        }
    )
    assert await first.ceilings.persist() == 1
    row = await LearnedCeiling.objects.aget(model=flux)
    assert (row.learned_per_minute, row.source) == (pytest.approx(3), "headers")

    second = await started()  # a restarted limiter
    await second.dispatch(acquire(world["key"], world["account"], flux, "2"))
    scope = second.engine.scopes[("account", world["account"], "images", flux)]
    assert scope.limit.per_minute == pytest.approx(2.7)  # 3 a minute less the 10% margin

    # An hour and more old: the next limiter starts from the profile and drops the row.
    await LearnedCeiling.objects.filter(model=flux).aupdate(
        updated_at=datetime.now(UTC) - timedelta(hours=2)
    )
    third = await started()
    await third.dispatch(acquire(world["key"], world["account"], flux, "3"))
    assert third.engine.scopes[("account", world["account"], "images", flux)].limit.per_minute == 6
    assert not await LearnedCeiling.objects.filter(model=flux).aexists()


@pytestmark_db
async def test_a_reset_forgets_the_learned_ceiling_in_memory_and_in_the_database(world) -> None:
    flux = "black-forest-labs/FLUX.1-schnell"
    consumer = await started()
    await consumer.dispatch(acquire(world["key"], world["account"], flux, "1"))
    await consumer.dispatch(
        {
            "type": events.UPSTREAM_REPORT,
            "account": world["account"],
            "endpoint": "images",
            "model": flux,
            "error_type": "",
            "pause": 0.0,
            "refused": False,
            "unavailable": 2,
            "headers": {"x-ratelimit-limit-dynamic": "0.05"},
        }
    )
    await consumer.ceilings.persist()
    model = next(m for m in consumer.live.snapshot()["models"] if m["model"] == flux)
    assert (model["source"], model["upstream_503_last_minute"]) == ("headers", 2)
    assert model["pace_per_minute"] == pytest.approx(2.7)  # 503s changed no pace
    await consumer.dispatch(
        {
            "type": events.CEILING_RESET,
            "account": world["account"],
            "endpoint": "images",
            "model": flux,
            "reply": "done",
        }
    )
    assert (await consumer.channel_layer.receive("done"))["type"] == events.CEILING_RESET_DONE
    model = next(m for m in consumer.live.snapshot()["models"] if m["model"] == flux)
    assert (model["source"], model["pace_per_minute"], model["learned_per_minute"]) == (
        "profile",
        6,
        None,
    )
    assert (
        consumer.engine.scopes[("account", world["account"], "images", flux)].limit.per_minute == 6
    )
    assert not await LearnedCeiling.objects.filter(model=flux).aexists()


@pytestmark_db
async def test_a_ticket_asked_again_while_queued_is_answered_queued_and_not_queued_twice(
    world,
) -> None:
    # A web process whose reply channel failed (Redis restarted) asks its waiting tickets
    # again, with the same ids (limiter/protocol/session.py, on inbox.Resync): one may
    # still be queued here.
    consumer = await started()
    flux = "black-forest-labs/FLUX.1-schnell"
    await consumer.dispatch(acquire(world["key"], world["account"], flux, "1"))  # the burst
    await consumer.dispatch(acquire(world["key"], world["account"], flux, "2"))
    await consumer.dispatch(acquire(world["key"], world["account"], flux, "2"))
    answers = [await consumer.channel_layer.receive("reply") for _ in range(3)]
    assert [(a["ticket"], a["kind"]) for a in answers] == [
        ("1", "grant"),
        ("2", "queued"),
        ("2", "queued"),
    ]
    # The same projected wait from its place (not the most it may wait).
    assert answers[2]["retry_after"] == pytest.approx(answers[1]["retry_after"], abs=1)
    assert list(consumer.engine.tickets) == ["2"]
    (group,) = [g for g in consumer.engine.groups.values() if g.size]
    assert group.size == 1
