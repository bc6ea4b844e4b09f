"""The embedded limiter's channel layer: channels' in-memory one, copying each message as
it would travel over Redis (msgpack) instead of with deepcopy (limiter/protocol/memory.py)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from channels.layers import get_channel_layer

from limiter.protocol.memory import SluiceInMemoryChannelLayer


async def test_the_receiver_gets_a_copy_the_sender_cannot_change() -> None:
    layer = SluiceInMemoryChannelLayer()
    message: dict[str, Any] = {
        "type": "limiter.acquire",
        "size": {"tokens": 12.5},
        "scopes": ["key:a"],
    }
    await layer.send("limiter", message)
    message["size"]["tokens"] = 99.0  # the sender's dict changes after the send
    message["scopes"].append("team:b")
    received = await layer.receive("limiter")
    assert received == {"type": "limiter.acquire", "size": {"tokens": 12.5}, "scopes": ["key:a"]}
    assert type(received) is dict  # a plain dict, as over Redis


async def test_a_message_arrives_as_it_would_over_redis() -> None:
    layer = SluiceInMemoryChannelLayer()
    message = {"type": "x", "pair": (1, "a"), "blob": b"\x00\xff", "none": None, "n": 2**40}
    await layer.send("limiter", message)
    received = await layer.receive("limiter")
    # channels_redis carries msgpack: a tuple arrives as a list, bytes stay bytes.
    assert received == msgpack.unpackb(msgpack.packb(message))
    assert received["pair"] == [1, "a"]
    assert received["blob"] == b"\x00\xff"


async def test_what_redis_could_not_carry_is_refused_here_too() -> None:
    layer = SluiceInMemoryChannelLayer()
    with pytest.raises(TypeError):
        await layer.send("limiter", {"type": "x", "ids": {"a", "b"}})  # a set
    await layer.send("limiter", {"type": "y"})
    assert (await layer.receive("limiter"))["type"] == "y"  # nothing half-queued before it


async def test_groups_get_copies_too() -> None:
    layer = SluiceInMemoryChannelLayer()
    await layer.group_add("config", "one")
    await layer.group_add("config", "two")
    message = {"type": "config.changed", "keys": ["k"]}
    await layer.group_send("config", message)
    first, second = await layer.receive("one"), await layer.receive("two")
    first["keys"].append("changed by one receiver")
    assert second == {"type": "config.changed", "keys": ["k"]}


def test_the_embedded_limiter_uses_it() -> None:
    assert isinstance(get_channel_layer(), SluiceInMemoryChannelLayer)
