"""The outbox (limiter/protocol/outbox.py): what is sent in one loop turn, and while a
batch is on its way, goes in one `send_many` over a real Redis, in order; a sender
waits for its message and hears the layer's error; a posted message's failure is
logged once per batch; and over the in-memory layer (no `send_many`) the same order."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer

from limiter.protocol.layers import SluiceRedisChannelLayer
from limiter.protocol.outbox import Outbox


class CountingLayer(SluiceRedisChannelLayer):
    """The real layer, counting its round trips of sends."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []
        self.sending = asyncio.Event()

    async def send_many(self, messages: Sequence[tuple[str, dict]]) -> list[Exception | None]:
        self.batches.append(len(messages))
        self.sending.set()
        return await super().send_many(messages)


@pytest.fixture
async def layer(redis_url):
    layer = CountingLayer(hosts=[redis_url], prefix=f"sluice-test-{uuid.uuid4().hex[:8]}")
    yield layer
    await layer.flush()
    await layer.close_pools()


@pytest.mark.services
async def test_a_loop_turns_sends_share_one_round_trip_in_order(layer) -> None:
    outbox = Outbox(layer)
    await asyncio.gather(*(outbox.send("limiter", {"n": n}) for n in range(40)))
    assert layer.batches == [40]
    assert [(await layer.receive("limiter"))["n"] for _ in range(40)] == list(range(40))


@pytest.mark.services
async def test_what_comes_while_a_batch_is_on_its_way_goes_in_the_next(layer) -> None:
    outbox = Outbox(layer)
    first = asyncio.ensure_future(outbox.send("limiter", {"n": 0}))
    await layer.sending.wait()  # the first message is on its way, alone
    for n in range(1, 30):
        outbox.post("limiter", {"n": n}, "a test message")
    await first
    await outbox.drained()
    assert layer.batches == [1, 29]
    assert [(await layer.receive("limiter"))["n"] for _ in range(30)] == list(range(30))


@pytest.mark.services
async def test_a_sender_hears_the_layers_error_and_a_posted_failure_is_logged(
    redis_url, caplog
) -> None:
    full = CountingLayer(hosts=[redis_url], capacity=1, prefix=f"sluice-test-{uuid.uuid4().hex}")
    outbox = Outbox(full)
    try:
        outbox.post("limiter", {"n": 0}, "a first message")
        outbox.post("limiter", {"n": 1}, "a release")
        outbox.post("limiter", {"n": 2}, "a release")
        with pytest.raises(ChannelFull):
            await outbox.send("limiter", {"n": 3})
        assert full.batches == [4]
        assert caplog.text.count("could not send 2 message(s) (a release)") == 1
    finally:
        await full.flush()
        await full.close_pools()


@pytest.mark.services
async def test_a_cancelled_sender_does_not_take_back_its_message(layer) -> None:
    outbox = Outbox(layer)
    sending = asyncio.ensure_future(outbox.send("limiter", {"n": 1}))
    await asyncio.sleep(0)
    sending.cancel()
    await outbox.drained()
    assert (await layer.receive("limiter"))["n"] == 1  # a cancel sent after it follows it


async def test_over_the_in_memory_layer_one_by_one_in_order() -> None:
    layer = InMemoryChannelLayer()
    outbox = Outbox(layer)
    for n in range(5):
        outbox.post("limiter", {"n": n}, "a test message")
    await outbox.send("limiter", {"n": 5})
    assert [(await layer.receive("limiter"))["n"] for _ in range(6)] == list(range(6))


def test_an_outbox_outlives_an_event_loop_closed_before_its_flush() -> None:
    # A flush begun in a loop that closed before it ran never ends; the next send, in
    # another loop, must not wait on it forever (nor lose the message queued before).
    layer = InMemoryChannelLayer()
    outbox = Outbox(layer)

    async def post() -> None:
        outbox.post("limiter", {"n": 0}, "a test message")

    first = asyncio.new_event_loop()
    first.run_until_complete(post())
    first.close()

    async def send_and_read() -> list[int]:
        await asyncio.wait_for(outbox.send("limiter", {"n": 1}), 5)
        return [(await layer.receive("limiter"))["n"] for _ in range(2)]

    assert asyncio.run(send_and_read()) == [0, 1]
