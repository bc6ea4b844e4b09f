"""The web process's limiter client: what it hands back when its caller goes away."""

from __future__ import annotations

import asyncio
import time

from limiter import events
from limiter.client import LimiterClient
from limiter.keys import KeyInfo
from limiter.upstream import Target

LIMIT = (60.0, 1, None, None, 10, 30.0)


class RecordingLayer:
    """A channel layer that keeps what is sent to the limiter; answers come from the test."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.arrived = asyncio.Event()

    async def send(self, channel: str, message: dict) -> None:
        self.sent.append(message)
        self.arrived.set()

    def types(self) -> list[str]:
        return [message["type"] for message in self.sent]


def key_info() -> KeyInfo:
    return KeyInfo(
        key_id="7",
        prefix="sk-sluice-abcdef",
        secret_hash="0" * 64,
        team_id=1,
        team_name="alpha",
        paused=False,
        expires_at=None,
        account_id="1",
        account_name="together",
        target=Target("1", "together", "http://127.0.0.1:9/v1", ""),
        key_limits={"chat": LIMIT},
        account_limits={"chat": LIMIT},
        fallbacks={},
        max_batch_requests=None,
        loaded_at=time.monotonic(),
    )


async def until_sent(layer: RecordingLayer, kind: str) -> dict:
    while True:
        found = [message for message in layer.sent if message["type"] == kind]
        if found:
            return found[0]
        layer.arrived.clear()
        await asyncio.wait_for(layer.arrived.wait(), 5)


async def test_a_grant_that_arrives_as_its_caller_is_cancelled_is_handed_back():
    client = LimiterClient()
    client.layer = layer = RecordingLayer()
    waiting = asyncio.ensure_future(
        client.acquire(key=key_info(), endpoint="chat", tokens=0, request_id="req_1")
    )
    ticket = (await until_sent(layer, events.ACQUIRE))["ticket"]

    # The call is cancelled (its caller went away, or its key was revoked) and in the same
    # instant, before it runs again, its grant arrives: it never reads the grant.
    waiting.cancel()
    client._dispatch(
        {
            "type": events.DECISION,
            "ticket": ticket,
            "kind": "grant",
            "lease": "lease-1",
            "reason": "",
            "scope": "",
            "retry_after": 0.0,
            "waited": 0.0,
            "limit": 60,
            "remaining": 0,
            "reset": 1.0,
            "at": time.time(),
        }
    )
    assert isinstance(
        (await asyncio.gather(waiting, return_exceptions=True))[0], asyncio.CancelledError
    )

    assert (await until_sent(layer, events.RELEASE))["lease"] == "lease-1"
    assert events.CANCEL in layer.types()
