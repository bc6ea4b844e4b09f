"""limiter/protocol/layers.py overrides two private methods of channels_redis. The version is
pinned (pyproject.toml); these tests fail when an upgrade changes what they replace,
and check the one-round-trip layer against a real Redis."""

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
