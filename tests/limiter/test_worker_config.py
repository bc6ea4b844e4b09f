"""Issue 10, fault 4: the limiter owns its configuration. Tickets name a key, its
account and the configuration version the asker saw; the limits come from the
limiter's own copy of the database, reloaded on the change broadcast and whenever a
ticket saw a newer version. A missing row means no limit at that level."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer

from limiter.authority.config import UNLIMITED
from limiter.authority.consumer import LimiterConsumer
from limiter.models import ConfigVersion, EndpointLimit, LimitProfile, UpstreamAccount
from limiter.protocol import events
from limiter.services import key_issue, team_get_or_create

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world(seeded_transactional_db):
    profile = LimitProfile.objects.create(name="one-a-minute")
    EndpointLimit.objects.create(
        profile=profile,
        endpoint="chat",
        requests_per_minute=1,
        burst=1,
        queue_depth=0,
        max_queue_wait_seconds=0,
    )
    # The account's own ceiling wide open, so the key's limit is what binds.
    EndpointLimit.objects.filter(profile__name="default", endpoint="chat").update(
        requests_per_minute=60000, pace_per_minute=None, burst=1000
    )
    team, _ = team_get_or_create(name="alpha", profile=profile)
    return {
        "profile": profile,
        "key": str(key_issue(team=team).key.pk),
        "other": str(key_issue(team=team_get_or_create(name="beta", profile=profile)[0]).key.pk),
        "account": str(UpstreamAccount.objects.get(is_default=True).pk),
    }


async def limiter() -> tuple[LimiterConsumer, InMemoryChannelLayer]:
    layer = InMemoryChannelLayer()
    consumer = LimiterConsumer(layer)
    await consumer.reload()
    return consumer, layer


async def ask(consumer, layer, ticket: str, key: str, account: str, *, version: int = 0) -> dict:
    await consumer.dispatch(
        {
            "type": events.ACQUIRE,
            "ticket": ticket,
            "reply": "reply",
            "endpoint": "chat",
            "key": key,
            "account": account,
            "version": version,
            "tokens": 0.0,
            "request_id": ticket,
        }
    )
    return await layer.receive("reply")


async def test_limits_come_from_the_limiters_copy_not_the_ticket(world):
    consumer, layer = await limiter()
    assert (await ask(consumer, layer, "1", world["key"], world["account"]))["kind"] == "grant"
    refused = await ask(consumer, layer, "2", world["key"], world["account"])
    assert (refused["kind"], refused["reason"], refused["limit"]) == ("refuse", "rate_limited", 1)


async def test_a_ticket_that_saw_a_newer_configuration_makes_the_limiter_reload(world):
    consumer, layer = await limiter()
    loaded = consumer.scopes.config.version
    await ask(consumer, layer, "1", world["key"], world["account"])  # the one a minute, spent
    # Raised in the database; the broadcast has not reached the limiter yet.
    await EndpointLimit.objects.filter(profile=world["profile"], endpoint="chat").aupdate(
        requests_per_minute=6000, burst=100
    )
    await sync_to_async(ConfigVersion.bump)()
    stale = await ask(consumer, layer, "2", world["key"], world["account"], version=loaded)
    assert stale["kind"] == "refuse"  # a process that has not seen the change: the old limit
    fresh = await ask(consumer, layer, "3", world["key"], world["account"], version=loaded + 1)
    assert fresh["kind"] == "grant" and fresh["limit"] == 6000  # reloaded before deciding
    # And a stale process after that cannot flip it back: its ticket carries no limit.
    again = await ask(consumer, layer, "4", world["key"], world["account"], version=loaded)
    assert again["kind"] == "grant" and again["limit"] == 6000


async def test_the_change_broadcast_reloads_and_frees_queued_work(world):
    consumer, layer = await limiter()
    await EndpointLimit.objects.filter(profile=world["profile"], endpoint="chat").aupdate(burst=3)
    await consumer.dispatch({"type": events.CONFIG_CHANGED})
    assert consumer.scopes.config.key_limit(world["key"], "chat").burst == 3


async def test_a_missing_account_row_leaves_only_the_keys_limits(world):
    """Before: the shared ceiling silently became the calling key's own limit, so one
    team's 1/min refused another team on an account with no row of its own."""
    await EndpointLimit.objects.filter(profile__accounts__isnull=False, endpoint="chat").adelete()
    consumer, layer = await limiter()
    assert consumer.scopes.config.account_limit(world["account"], "chat") == UNLIMITED
    assert (await ask(consumer, layer, "a", world["key"], world["account"]))["kind"] == "grant"
    assert (await ask(consumer, layer, "b", world["other"], world["account"]))["kind"] == "grant"


async def test_neither_row_means_no_limit_not_an_error(world):
    await EndpointLimit.objects.filter(endpoint="chat").adelete()
    consumer, layer = await limiter()
    for ticket in "abc":
        assert (await ask(consumer, layer, ticket, world["key"], world["account"]))[
            "kind"
        ] == "grant"


async def test_an_unknown_key_reloads_once_not_on_every_ticket(world, monkeypatch):
    """A key deleted since a web process cached it (or a benchmark's made-up key) is
    limited as having no row; its tickets must not reload the configuration each time."""
    consumer, layer = await limiter()
    loads = []
    reload = consumer.reload

    async def counted() -> None:
        loads.append(1)
        await reload()

    monkeypatch.setattr(consumer, "reload", counted)
    for ticket in "abcde":
        await ask(
            consumer,
            layer,
            ticket,
            "no-such-key",
            world["account"],
            version=consumer.scopes.config.version,
        )
    assert len(loads) == 1
