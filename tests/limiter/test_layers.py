"""limiter/protocol/layers.py overrides two private methods of channels_redis and its
receive_single. The version is pinned (pyproject.toml); these tests fail when an upgrade
changes what they replace, and check the one-round-trip, batched layer against a real
Redis."""

from __future__ import annotations

import inspect
import uuid

import pytest
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer

from limiter.protocol.layers import SluiceRedisChannelLayer, redis_hosts
from tests.conftest import need_redis_server
from tests.servers import private_redis_server


def test_the_private_methods_replaced_still_exist_with_the_same_signatures() -> None:
    for name in ("_brpop_with_clean", "_clean_receive_backup"):
        parent = getattr(RedisChannelLayer, name)
        ours = getattr(SluiceRedisChannelLayer, name)
        assert list(inspect.signature(parent).parameters) == list(
            inspect.signature(ours).parameters
        ), name
    # ...and channels_redis still reaches them from its receive path.
    assert "_brpop_with_clean" in inspect.getsource(RedisChannelLayer.receive_single)
    assert "_clean_receive_backup" in inspect.getsource(RedisChannelLayer)
    # receive_single is replaced whole: receive still reads through it, and its buffers.
    parent, ours = RedisChannelLayer.receive_single, SluiceRedisChannelLayer.receive_single
    assert list(inspect.signature(parent).parameters) == list(inspect.signature(ours).parameters)
    receive = inspect.getsource(RedisChannelLayer.receive)
    assert "self.receive_single(" in receive and "self.receive_buffer[" in receive


def _layer(redis_url: str, capacity: int = 100) -> SluiceRedisChannelLayer:
    return SluiceRedisChannelLayer(
        hosts=[redis_url], capacity=capacity, prefix=f"sluice-test-{uuid.uuid4().hex[:8]}"
    )


@pytest.mark.services
async def test_one_pop_takes_a_batch_and_hands_it_out_in_order(redis_url) -> None:
    layer = _layer(redis_url)
    key = layer.prefix + "limiter"
    try:
        sent = await layer.send_many([("limiter", {"type": "x", "n": n}) for n in range(50)])
        assert sent == [None] * 50
        redis = layer.connection(0)
        assert await redis.zcard(key) == 50
        assert (await layer.receive("limiter"))["n"] == 0
        assert await redis.zcard(key) == 0  # the other 49 came with the first, in one pop
        assert [(await layer.receive("limiter"))["n"] for _ in range(49)] == list(range(1, 50))
    finally:
        await layer.flush()
        await layer.close_pools()


@pytest.mark.services
async def test_send_many_keeps_each_channels_order_and_its_capacity(redis_url) -> None:
    layer = _layer(redis_url, capacity=3)
    try:
        web = await layer.new_channel("sluice.web.")
        batch = [("limiter", {"n": n}) if n % 2 else (web, {"n": n}) for n in range(10)]
        sent = await layer.send_many(batch)
        # Each channel takes three; the rest are ChannelFull, each in its place.
        assert [type(e).__name__ if e else None for e in sent] == [None] * 6 + ["ChannelFull"] * 4
        assert [(await layer.receive("limiter"))["n"] for _ in range(3)] == [1, 3, 5]
        assert [(await layer.receive(web))["n"] for _ in range(3)] == [0, 2, 4]
        with pytest.raises(ChannelFull):  # send is send_many of one
            await layer.send("limiter", {"n": 99})
            await layer.send("limiter", {"n": 100})
            await layer.send("limiter", {"n": 101})
            await layer.send("limiter", {"n": 102})
    finally:
        await layer.flush()
        await layer.close_pools()


@pytest.mark.services
async def test_a_pop_on_the_process_channel_reaches_each_of_its_channels(redis_url) -> None:
    # The process's `!` channels share one Redis key: what one pop brings for the others
    # waits in their buffers, in order, whoever reads first.
    sender, receiver = _layer(redis_url), _layer(redis_url)
    receiver.prefix = sender.prefix
    try:
        one, two = await receiver.new_channel("a."), await receiver.new_channel("b.")
        await sender.send_many([(one if n % 3 else two, {"n": n}) for n in range(12)])
        assert [(await receiver.receive(two))["n"] for _ in range(4)] == [0, 3, 6, 9]
        assert [(await receiver.receive(one))["n"] for _ in range(8)] == [
            n for n in range(12) if n % 3
        ]
    finally:
        await receiver.flush()
        await sender.close_pools()
        await receiver.close_pools()


@pytest.mark.services
async def test_send_and_receive_over_real_redis(redis_url) -> None:
    layer = SluiceRedisChannelLayer(
        hosts=[redis_url], capacity=2, prefix=f"sluice-test-{uuid.uuid4().hex[:8]}"
    )
    try:
        await layer.send("limiter", {"type": "limiter.ping", "n": 1})
        channel = await layer.new_channel("sluice.web.")
        await layer.send(
            channel, {"type": "limiter.decision", "n": 2}
        )  # a process-specific channel
        assert (await layer.receive("limiter"))["n"] == 1
        assert (await layer.receive(channel))["n"] == 2
        await layer.send("limiter", {"type": "x"})
        await layer.send("limiter", {"type": "x"})
        with pytest.raises(ChannelFull):  # capacity holds, as in channels_redis
            await layer.send("limiter", {"type": "x"})
    finally:
        await layer.flush()
        await layer.close_pools()


@pytest.mark.services
async def test_the_first_send_after_a_redis_restart_is_not_an_error() -> None:
    # Each web process keeps pooled connections to Redis; after Redis restarts every one of
    # them is dead. Before, the first send through each failed ("Connection closed by
    # server") and its caller got a 503, though Redis was back.
    need_redis_server()
    with private_redis_server() as redis_server:
        layer = SluiceRedisChannelLayer(
            hosts=redis_hosts(redis_server.url), prefix=f"sluice-test-{uuid.uuid4().hex[:8]}"
        )
        try:
            for n in range(4):  # a few pooled connections, as under load
                await layer.send("limiter", {"type": "limiter.ping", "n": n})
            redis_server.stop()
            redis_server.start()
            await layer.send("limiter", {"type": "limiter.ping", "n": 99})
            assert (await layer.receive("limiter"))["n"] == 99  # the old ones died with Redis
        finally:
            await layer.close_pools()


@pytest.mark.services
async def test_a_group_message_in_a_pop_reaches_every_member_channel(redis_url) -> None:
    # The live view and the configuration broadcast are group messages: one Redis entry
    # for all of a process's member channels, handed to each from the same pop.
    sender, receiver = _layer(redis_url), _layer(redis_url)
    receiver.prefix = sender.prefix
    try:
        one, two = await receiver.new_channel("a."), await receiver.new_channel("b.")
        for channel in (one, two):
            await receiver.group_add("watchers", channel)
        await sender.send(one, {"n": 0})
        await sender.group_send("watchers", {"n": 1})
        await sender.send_many([(two, {"n": 2}), (one, {"n": 3})])
        assert [(await receiver.receive(one))["n"] for _ in range(3)] == [0, 1, 3]
        assert [(await receiver.receive(two))["n"] for _ in range(2)] == [1, 2]
    finally:
        await receiver.flush()
        await sender.close_pools()
        await receiver.close_pools()


@pytest.mark.services
async def test_a_batch_goes_by_the_scripts_digest_not_its_text() -> None:
    # EVAL sent the send script's text with every batch (and Redis hashed it each time);
    # EVALSHA sends its digest. A server that does not know the script (new, restarted,
    # or its script cache flushed) is given it once, and the batch still goes.
    need_redis_server()
    with private_redis_server() as redis_server:  # its own command counts, no one else's
        layer = _layer(redis_server.url)
        try:
            for n in range(3):
                await layer.send("limiter", {"n": n})
            await layer.connection(0).script_flush()
            await layer.send_many([("limiter", {"n": 3}), ("limiter", {"n": 4})])
            stats = await layer.connection(0).info("commandstats")
            assert "cmdstat_eval" not in stats
            # 4 batches, the first and the fourth asked twice (refused NOSCRIPT, then sent).
            assert stats["cmdstat_evalsha"]["calls"] == 6
            assert stats["cmdstat_script|load"]["calls"] == 2  # new, then flushed
            assert [(await layer.receive("limiter"))["n"] for _ in range(5)] == list(range(5))
        finally:
            await layer.close_pools()
