"""The limiter's dispatch (limiter/authority/consumer.py): every message of the groups it
joins is handled or knowingly ignored, and no message, however malformed, ends the loop
that serves the channel (`run_limiter` awaits `dispatch` with nothing around it)."""

from __future__ import annotations

import logging

import pytest
from channels.layers import InMemoryChannelLayer

from limiter.authority.consumer import LimiterConsumer
from limiter.protocol import events


@pytest.fixture
def consumer() -> LimiterConsumer:
    return LimiterConsumer(InMemoryChannelLayer())


@pytest.mark.parametrize("kind", events.GROUP_EVENTS[events.CONFIG_GROUP])
async def test_every_event_of_the_configuration_broadcast_is_handled(
    consumer, kind, caplog, monkeypatch
):
    """Before: a fine-tuned model's broadcast (MODELS_CHANGED) was logged as an error, a
    message of unknown type, on every limiter each time a team's models were recorded."""

    async def reload() -> None:  # CONFIG_CHANGED reloads from the database: not here
        return None

    monkeypatch.setattr(consumer, "reload", reload)
    with caplog.at_level(logging.ERROR, logger="limiter.authority.consumer"):
        await consumer.dispatch({"type": kind})
    assert caplog.records == []


@pytest.mark.parametrize(
    "message",
    [{}, {"type": None}, {"type": 7}, {"type": "_private"}, {"type": "dispatch"}],
    ids=["no type", "None", "a number", "private", "a method name"],
)
async def test_a_malformed_message_is_logged_and_does_not_raise(consumer, message, caplog):
    """Before: a message with no type raised out of `dispatch` (Channels'
    get_handler_name), which ended `run_limiter`'s loop and the authority with it."""
    await consumer.dispatch(message)
    assert "limiter got a message of unknown type" in caplog.text


async def test_a_handler_that_fails_is_logged_and_the_next_message_handled(consumer, caplog):
    await consumer.dispatch({"type": events.RELEASE})  # no lease named
    assert "limiter failed to handle a 'limiter.release' message" in caplog.text
    await consumer.dispatch({"type": events.PING, "reply": "r", "ticket": "p"})
    pong = await consumer.channel_layer.receive("r")
    assert (pong["type"], pong["ticket"], pong["scopes"]) == (events.PONG, "p", 0)


async def test_a_snapshot_request_is_answered_with_the_live_snapshot(consumer):
    await consumer.dispatch({"type": events.SNAPSHOT_REQUEST, "reply": "r"})
    snapshot = await consumer.channel_layer.receive("r")
    assert snapshot["type"] == events.LIVE_SNAPSHOT and snapshot["scopes"] == []
