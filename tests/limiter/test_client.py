"""The web process's limiter client: what it hands back when its caller goes away."""

from __future__ import annotations

import asyncio

import pytest

from limiter.protocol import events
from limiter.protocol.client import REPLY_CHANNEL_BACK, LimiterClient, LimiterUnavailable
from tests.factories import key_info


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
        }
    )
    assert isinstance(
        (await asyncio.gather(waiting, return_exceptions=True))[0], asyncio.CancelledError
    )

    assert (await until_sent(layer, events.RELEASE))["lease"] == "lease-1"
    assert events.CANCEL in layer.types()


def grant(ticket: str, lease: str, at: float, waited: float = 0.0, limiter: str = "one") -> dict:
    return {
        "type": events.DECISION,
        "ticket": ticket,
        "kind": "grant",
        "lease": lease,
        "reason": "",
        "scope": "",
        "retry_after": 0.0,
        "waited": waited,
        "limit": 60,
        "remaining": 0,
        "reset": 1.0,
        "max_wait": 30.0,
        "at": at,
        "limiter": limiter,
    }


class Clock:
    """A monotonic clock, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def granted(
    client: LimiterClient, layer: RecordingLayer, lease: str, at: float, **kw
) -> object:
    waiting = asyncio.ensure_future(
        client.acquire(key=key_info(), endpoint="chat", tokens=0, request_id=lease)
    )
    sent = len([m for m in layer.sent if m["type"] == events.ACQUIRE])
    while len([m for m in layer.sent if m["type"] == events.ACQUIRE]) == sent:
        layer.arrived.clear()
        await asyncio.wait_for(layer.arrived.wait(), 5)
    ticket = [m for m in layer.sent if m["type"] == events.ACQUIRE][-1]["ticket"]
    client._dispatch(grant(ticket, lease, at, **kw))
    return waiting


async def test_grant_lateness_is_measured_without_comparing_the_hosts_clocks():
    """Issue 10, fault 5: a grant's age was this host's wall clock minus the limiter's; with
    more than 200 ms of skew every grant was 'stale', asked for three times and answered
    503. Decisions carry the limiter's own monotonic time; here only its differences count:
    a limiter whose clock reads 5,000 s apart is no later for it."""
    here, limiter = Clock(1000.0), Clock(6000.0)  # two hosts, two clocks
    client = LimiterClient(clock=here)
    client.layer = layer = RecordingLayer()
    for i, lease in enumerate(("a", "b", "c")):
        limiter.now = 6000.0 + i
        here.now = 1000.0 + i + 0.004  # decided at the limiter, delivered 4 ms later
        first = await granted(client, layer, lease, at=limiter.now)
        assert (await first).lease == lease and (await first).age == pytest.approx(0.0, abs=1e-6)
    assert events.RELEASE not in layer.types()  # none handed back


async def test_another_limiter_instance_is_another_clock():
    """A new limiter (a restart, perhaps on another host) reads another monotonic clock:
    its first decision sets a new baseline instead of looking hours late. A Redis restart
    keeps the instance, and so the baseline a recovery backlog could otherwise inflate."""
    here = Clock(1000.0)
    client = LimiterClient(clock=here)
    client.layer = layer = RecordingLayer()
    here.now = 1000.002
    assert (await (await granted(client, layer, "old", at=50.0))).age == 0.0
    here.now = 1001.002
    waiting = await granted(client, layer, "new", at=-90_000.0, limiter="two")
    assert (await waiting).age == 0.0


async def test_a_grant_that_queued_is_not_late_but_one_that_travelled_long_is():
    here, limiter = Clock(1000.0), Clock(50.0)
    client = LimiterClient(clock=here)
    client.layer = layer = RecordingLayer()
    here.now = 1000.002  # delivered 2 ms after the limiter decided
    assert (await (await granted(client, layer, "fresh", at=limiter.now))).age == 0.0
    # Queued 2 s at the limiter, then delivered in 2 ms: on time.
    limiter.now, here.now = 52.0, 1002.002
    queued = await granted(client, layer, "queued", at=limiter.now, waited=2.0)
    assert (await queued).age == pytest.approx(0.0, abs=1e-6)
    # Decided at once, but a second in transit (a stalled loop): handed back, asked again.
    limiter.now, here.now = 53.0, 1004.002
    late = await granted(client, layer, "late", at=limiter.now)
    while layer.types().count(events.ACQUIRE) < 4:
        layer.arrived.clear()
        await asyncio.wait_for(layer.arrived.wait(), 5)
    again = [m for m in layer.sent if m["type"] == events.ACQUIRE][-1]
    client._dispatch(grant(again["ticket"], "on-time", at=limiter.now + 1.0))
    assert (await late).lease == "on-time"
    assert (await until_sent(layer, events.RELEASE))["lease"] == "late"


def queued(ticket: str, limiter: str, max_wait: float = 30.0) -> dict:
    return {**grant(ticket, "", at=0.0, limiter=limiter), "kind": "queued", "max_wait": max_wait}


async def acquires(layer: RecordingLayer, n: int) -> list[dict]:
    while len(found := [m for m in layer.sent if m["type"] == events.ACQUIRE]) < n:
        layer.arrived.clear()
        await asyncio.wait_for(layer.arrived.wait(), 5)
    return found


async def one_call(client: LimiterClient, layer: RecordingLayer) -> tuple[asyncio.Future, dict]:
    """A chat call asking `client` for a grant, in the background, and the ticket it sent."""
    waiting = asyncio.ensure_future(
        client.acquire(key=key_info(), endpoint="chat", tokens=0, request_id="req_1")
    )
    return waiting, (await acquires(layer, 1))[0]


async def test_a_ticket_queued_at_a_limiter_that_restarted_is_asked_of_the_new_one():
    """The limiter that queued it is gone (killed, restarted): its queue went with it. The
    ticket is asked again of the new limiter, with what is left of its wait, and not
    waited out (it was, for its whole 30 s, and then answered 503)."""
    here = Clock(100.0)
    client = LimiterClient(clock=here)
    client.layer = layer = RecordingLayer()
    waiting, first = await one_call(client, layer)
    client._dispatch(queued(first["ticket"], limiter="old", max_wait=30.0))
    await asyncio.sleep(0)
    client._dispatch({"type": events.LIMITER_STARTED, "limiter": "old"})  # Redis came back
    await asyncio.sleep(0.05)
    assert len(await acquires(layer, 1)) == 1  # the same limiter still holds it

    here.now += 10.0
    client._dispatch({"type": events.LIMITER_STARTED, "limiter": "new"})
    again = (await acquires(layer, 2))[1]
    assert again["ticket"] == first["ticket"] and again["type"] == events.ACQUIRE
    assert again["max_wait"] == pytest.approx(20.0)  # what is left of its 30 s
    client._dispatch(grant(first["ticket"], "lease-new", at=1.0, limiter="new"))
    assert (await asyncio.wait_for(waiting, 5)).lease == "lease-new"


async def test_after_the_reply_channel_failed_a_queued_ticket_is_asked_again():
    """Redis restarted under the same limiter: this process's reply channel failed, so the
    grant may have been sent into the outage and lost. The ticket is asked again of the
    same limiter with what is left of its wait (before, it was waited out: 503)."""
    here = Clock(100.0)
    client = LimiterClient(clock=here)
    client.layer = layer = RecordingLayer()
    waiting, first = await one_call(client, layer)
    client._dispatch(queued(first["ticket"], limiter="one", max_wait=30.0))
    await asyncio.sleep(0.05)  # it reads "queued" and starts its wait
    here.now += 10.0
    client._dispatch({"type": REPLY_CHANNEL_BACK})
    again = (await acquires(layer, 2))[1]
    assert again["ticket"] == first["ticket"]  # the limiter knows it if it still holds it
    assert again["max_wait"] == pytest.approx(20.0)
    client._dispatch(queued(first["ticket"], limiter="one", max_wait=30.0))  # it did
    client._dispatch(grant(first["ticket"], "lease-1", at=1.0, limiter="one"))
    assert (await asyncio.wait_for(waiting, 5)).lease == "lease-1"


async def test_after_the_reply_channel_failed_an_unanswered_ticket_is_asked_again():
    client = LimiterClient()
    client.layer = layer = RecordingLayer()
    waiting, first = await one_call(client, layer)
    client._dispatch({"type": REPLY_CHANNEL_BACK})
    again = (await acquires(layer, 2))[1]
    assert again == first  # asked again as asked: the same ticket
    client._dispatch(grant(first["ticket"], "lease-1", at=0.0))
    assert (await asyncio.wait_for(waiting, 5)).lease == "lease-1"


class FlakyLayer(RecordingLayer):
    """A channel layer down for its first receive and first send (Redis restarting), then
    delivering what is sent to the reply channel back through it."""

    def __init__(self) -> None:
        super().__init__()
        self.inbox: asyncio.Queue[dict] = asyncio.Queue()
        self.receive_fails, self.send_fails = 1, 1

    async def receive(self, channel: str) -> dict:
        if self.receive_fails:
            self.receive_fails -= 1
            raise ConnectionError("Connection closed by server.")
        return await self.inbox.get()

    async def send(self, channel: str, message: dict) -> None:
        if channel.startswith("sluice.web."):
            if self.send_fails:
                self.send_fails -= 1
                raise ConnectionError("Connection refused")
            await self.inbox.put(message)
            return
        await super().send(channel, message)


async def test_a_failed_reply_channel_is_probed_and_its_waiting_tickets_asked_again():
    client = LimiterClient()
    client.layer = layer = FlakyLayer()
    client.reply_channel = "sluice.web.test!abc"
    waiting, first = await one_call(client, layer)
    dispatcher = asyncio.ensure_future(client._dispatch_forever())
    try:
        again = (await acquires(layer, 2))[1]  # after a failed probe and a working one
        assert again["ticket"] == first["ticket"]
        await layer.inbox.put(grant(first["ticket"], "lease-1", at=0.0))
        assert (await asyncio.wait_for(waiting, 5)).lease == "lease-1"
    finally:
        dispatcher.cancel()


class DownLayer(RecordingLayer):
    """A channel layer that refuses its first `failures` sends (Redis restarting)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def send(self, channel: str, message: dict) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Connection refused")
        await super().send(channel, message)


async def test_a_call_during_a_blip_of_redis_is_sent_when_it_ends(settings):
    settings.SLUICE_LIMITER_TIMEOUT = 2.0
    client = LimiterClient()
    client.layer = layer = DownLayer(failures=3)  # down for about 0.6 s
    waiting, first = await one_call(client, layer)
    client._dispatch(grant(first["ticket"], "lease-1", at=0.0))
    assert (await asyncio.wait_for(waiting, 5)).lease == "lease-1"


async def test_a_call_while_redis_stays_down_hears_unavailable_within_its_timeout(settings):
    settings.SLUICE_LIMITER_TIMEOUT = 0.5
    client = LimiterClient()
    client.layer = DownLayer(failures=1000)
    with pytest.raises(LimiterUnavailable):  # and not a hang (wait_for's TimeoutError)
        await asyncio.wait_for(
            client.acquire(key=key_info(), endpoint="chat", tokens=0, request_id="req_1"), 5
        )


@pytest.mark.parametrize(
    "marker",
    [{"type": REPLY_CHANNEL_BACK}, {"type": events.LIMITER_STARTED, "limiter": "new"}],
    ids=["reply-channel-back", "limiter-started"],
)
async def test_a_ping_waits_past_what_is_not_its_pong(marker):
    # _dispatch puts a marker on every waiting queue, a ping's too; before, the ping took
    # the marker for the limiter's answer and reported counts it never got (/readyz).
    client = LimiterClient()
    client.layer = layer = RecordingLayer()
    pinging = asyncio.ensure_future(client.ping(within=5))
    asked = await until_sent(layer, events.PING)
    client._dispatch(marker)
    await asyncio.sleep(0.05)
    client._dispatch(
        {"type": events.PONG, "ticket": asked["ticket"], "leases": 3, "queued": 2, "scopes": 7}
    )
    _round_trip, counts = await asyncio.wait_for(pinging, 5)
    assert counts == {"leases": 3, "queued": 2, "scopes": 7}
