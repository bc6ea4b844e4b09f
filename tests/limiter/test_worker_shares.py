"""Issue 21: guaranteed shares, priorities and weights reach the limiter from the
database (limiter/authority/config.py), take effect on the change broadcast for calls
already queued, and a share's total on a scope is held to 100%."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer
from django.core.exceptions import ValidationError

from limiter.authority.consumer import LimiterConsumer
from limiter.authority.sharing import BACKGROUND, CRITICAL, STANDARD, Klass
from limiter.models import EndpointLimit, LimitProfile, Share, Team, UpstreamAccount
from limiter.protocol import events
from limiter.services import key_issue, team_get_or_create

pytestmark = pytest.mark.django_db(transaction=True)
MODEL = "org/chat-model"


@pytest.fixture
def world(seeded_transactional_db):
    wide = LimitProfile.objects.create(name="wide")
    EndpointLimit.objects.create(
        profile=wide,
        endpoint="chat",
        requests_per_minute=60000,
        burst=1000,
        queue_depth=100,
        max_queue_wait_seconds=60,
    )
    # The account: one call at a time, one a second, so every other call queues.
    EndpointLimit.objects.filter(profile__name="default", endpoint="chat").update(
        requests_per_minute=60, pace_per_minute=None, burst=1
    )
    prod, _ = team_get_or_create(name="prod", profile=wide)
    dev, _ = team_get_or_create(name="dev", profile=wide)
    account = UpstreamAccount.objects.get(is_default=True)
    return {
        "prod": prod,
        "dev": dev,
        "prod_key": key_issue(team=prod).key,
        "dev_key": key_issue(team=dev).key,
        "account": account,
    }


async def limiter() -> tuple[LimiterConsumer, InMemoryChannelLayer]:
    layer = InMemoryChannelLayer()
    consumer = LimiterConsumer(layer)
    await consumer.reload()
    return consumer, layer


def message(ticket: str, key, account, model: str = MODEL) -> events.AcquireMessage:
    return {
        "type": events.ACQUIRE,
        "ticket": ticket,
        "reply": "reply",
        "endpoint": "chat",
        "key": str(key.pk),
        "account": str(account.pk),
        "model": model,
        "version": 0,
        "tokens": 0.0,
        "request_id": ticket,
    }


async def test_a_keys_class_is_its_teams_share_weight_and_priority(world):
    prod, account = world["prod"], world["account"]
    await Share.objects.acreate(account=account, team=prod, endpoint="chat", fraction=0.6)
    await Share.objects.acreate(
        account=account, team=prod, endpoint="chat", model=MODEL, fraction=0.3
    )
    prod.priority, prod.weight = "critical", 2.0
    await prod.asave()
    consumer, _layer = await limiter()
    klass = consumer.scopes.klass(message("t", world["prod_key"], account))
    assert klass == Klass(f"team:{prod.pk}", 0.3, 2.0, CRITICAL)  # the model's own row
    other_model = consumer.scopes.klass(message("t", world["prod_key"], account, "x/y"))
    assert other_model.share == 0.6  # the endpoint's row
    dev = consumer.scopes.klass(message("t", world["dev_key"], account))
    assert dev == Klass(f"team:{world['dev'].pk}", 0.0, 1.0, STANDARD)


async def test_a_share_on_a_key_makes_it_a_class_of_its_own_and_its_priority_wins(world):
    key = world["prod_key"]
    key.priority = "background"
    await key.asave()
    await Share.objects.acreate(account=world["account"], key=key, endpoint="chat", fraction=0.2)
    consumer, _layer = await limiter()
    klass = consumer.scopes.klass(message("t", key, world["account"]))
    assert klass == Klass(f"key:{key.pk}", 0.2, 1.0, BACKGROUND)


async def test_a_priority_changed_in_the_database_reorders_calls_already_queued(world):
    consumer, layer = await limiter()
    account = world["account"]
    await consumer.dispatch(message("d0", world["dev_key"], account))  # granted: the burst
    for n in range(1, 4):
        await consumer.dispatch(message(f"d{n}", world["dev_key"], account))
    await consumer.dispatch(message("p1", world["prod_key"], account))
    queued = {t.id for t in consumer.engine.tickets.values()}
    assert queued == {"d1", "d2", "d3", "p1"}
    team = world["prod"]
    team.priority = "critical"
    await team.asave()  # saved: the configuration broadcast (limiter/signals.py)
    await consumer.dispatch({"type": events.CONFIG_CHANGED})
    p1 = consumer.engine.tickets["p1"]
    assert p1.klass.priority == CRITICAL
    group = consumer.engine.groups[p1.account.id]
    assert group.heads(0.0)[0] is p1  # the next grant is prod's


def test_shares_on_one_scope_add_up_to_at_most_100_percent(world):
    account, prod, dev = world["account"], world["prod"], world["dev"]
    Share(account=account, team=prod, endpoint="chat", fraction=0.6).full_clean()
    Share.objects.create(account=account, team=prod, endpoint="chat", fraction=0.6)
    with pytest.raises(ValidationError) as error:
        Share(account=account, team=dev, endpoint="chat", fraction=0.5).full_clean()
    assert "110%" in str(error.value)
    # A model's own row replaces the endpoint's for that model: 0.3 + 0.5 fits there,
    # but not the endpoint's 0.6 + 0.5 on every other model.
    Share.objects.create(account=account, team=prod, endpoint="chat", model=MODEL, fraction=0.3)
    Share(account=account, team=dev, endpoint="chat", model=MODEL, fraction=0.5).full_clean()
    with pytest.raises(ValidationError):
        Share(account=account, team=dev, endpoint="chat", fraction=0.5).full_clean()
    with pytest.raises(ValidationError):  # neither a team nor a key
        Share(account=account, endpoint="chat", fraction=0.1).full_clean()
    with pytest.raises(ValidationError):  # out of range
        Share(account=account, team=dev, endpoint="chat", model="a/b", fraction=1.5).full_clean()
    with pytest.raises(ValidationError):  # a glob
        Share(account=account, team=dev, endpoint="chat", model="a/*", fraction=0.1).full_clean()


async def test_a_share_saved_bumps_the_configuration(world):
    from limiter.models import ConfigVersion

    before = await sync_to_async(ConfigVersion.current)()
    await Share.objects.acreate(
        account=world["account"], team=world["prod"], endpoint="chat", fraction=0.5
    )
    assert await sync_to_async(ConfigVersion.current)() > before
    assert await Team.objects.filter(shares__fraction=0.5).aexists()
