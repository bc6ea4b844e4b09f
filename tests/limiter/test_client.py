"""The web process's limiter client, driven through its channel layer: what it sends to
the limiter, and what it does with what comes back on its reply channel (answers,
broadcasts, its own probe). Nothing sleeps to synchronise: `answer` returns once the
client's dispatcher has routed the message and the client has settled
(LimiterClient.settled)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from limiter.protocol import changes, events
from limiter.protocol.client import REPLY_CHANNEL_BACK, LimiterClient, LimiterUnavailable
from tests.factories import key_info


class Layer:
    """A channel layer as the client sees it: what is sent to the limiter is kept; what
    is sent to the reply channel (by the test, or the client's own probe) comes back
    through `receive`. An answer counts as read once the dispatcher asks for the next."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.arrived = asyncio.Event()
        self.inbox: asyncio.Queue[dict] = asyncio.Queue()
        self._reading = False

    async def new_channel(self, prefix: str = "") -> str:
        return f"{prefix}test!abc"

    async def group_add(self, group: str, channel: str) -> None:
        pass

    async def send(self, channel: str, message: dict) -> None:
        if channel.startswith("sluice.web."):
            self.inbox.put_nowait(message)
            return
        self.sent.append(message)
        self.arrived.set()

    async def receive(self, channel: str) -> dict:
        if self._reading:
            self._reading = False
            self.inbox.task_done()
        message = await self.inbox.get()
        self._reading = True
        return message

    def types(self) -> list[str]:
        return [message["type"] for message in self.sent]


Start = Callable[..., Awaitable[LimiterClient]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start a client on a layer (its dispatcher stops with the test)."""
    clients: list[LimiterClient] = []

    async def started(layer: Layer, **kw) -> LimiterClient:
        client = LimiterClient(layer, **kw)
        await client.start()
        clients.append(client)
        return client

    yield started
    for client in clients:
        await client.stop()


async def answer(client: LimiterClient, layer: Layer, message: dict) -> None:
    """Send `message` to the client's reply channel; return once it has been handled."""
    layer.inbox.put_nowait(message)
    await asyncio.wait_for(layer.inbox.join(), 5)
    await asyncio.wait_for(client.settled(), 5)


async def until_sent(layer: Layer, kind: str, n: int = 1) -> list[dict]:
    """The first `n` messages of type `kind` sent to the limiter, waiting for them."""
    while len(found := [message for message in layer.sent if message["type"] == kind]) < n:
        layer.arrived.clear()
        await asyncio.wait_for(layer.arrived.wait(), 5)
    return found


async def acquires(layer: Layer, n: int) -> list[dict]:
    return await until_sent(layer, events.ACQUIRE, n)


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


def queued(ticket: str, limiter: str, max_wait: float = 30.0) -> dict:
    return {**grant(ticket, "", at=0.0, limiter=limiter), "kind": "queued", "max_wait": max_wait}


class Clock:
    """A monotonic clock, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def one_call(client: LimiterClient, layer: Layer, **kw) -> tuple[asyncio.Future, dict]:
    """A chat call asking `client` for a grant, in the background, and the ticket it sent."""
    sent = layer.types().count(events.ACQUIRE)
    waiting = asyncio.ensure_future(
        client.acquire(key=key_info(), endpoint="chat", tokens=0, request_id="req_1", **kw)
    )
    return waiting, (await acquires(layer, sent + 1))[-1]


async def granted(client: LimiterClient, layer: Layer, lease: str, at: float, **kw) -> object:
    waiting, asked = await one_call(client, layer)
    await answer(client, layer, grant(asked["ticket"], lease, at, **kw))
    return waiting


async def test_a_grant_that_arrives_as_its_caller_is_cancelled_is_handed_back(start):
    client = await start(layer := Layer())
    waiting, asked = await one_call(client, layer)

    # The call is cancelled (its caller went away, or its key was revoked) and in the same
    # instant, before it runs again, its grant arrives: it never reads the grant.
    layer.inbox.put_nowait(grant(asked["ticket"], "lease-1", at=0.0))
    waiting.cancel()
    assert isinstance(
        (await asyncio.gather(waiting, return_exceptions=True))[0], asyncio.CancelledError
    )

    assert (await until_sent(layer, events.RELEASE))[0]["lease"] == "lease-1"
    assert events.CANCEL in layer.types()


async def test_a_grant_for_a_call_that_gave_up_is_handed_back_with_its_reservation(start):
    client = await start(layer := Layer())
    await answer(client, layer, {**grant("gone", "lease-1", at=0.0), "reservation": "gone"})
    assert [(m["type"], m.get("lease"), m.get("reservation")) for m in layer.sent] == [
        (events.RELEASE, "lease-1", None),
        (events.USAGE, None, "gone"),
    ]


async def test_grant_lateness_is_measured_without_comparing_the_hosts_clocks(start):
    """Issue 10, fault 5: a grant's age was this host's wall clock minus the limiter's; with
    more than 200 ms of skew every grant was 'stale', asked for three times and answered
    503. Decisions carry the limiter's own monotonic time; here only its differences count:
    a limiter whose clock reads 5,000 s apart is no later for it."""
    here, limiter = Clock(1000.0), Clock(6000.0)  # two hosts, two clocks
    client = await start(layer := Layer(), clock=here)
    for i, lease in enumerate(("a", "b", "c")):
        limiter.now = 6000.0 + i
        here.now = 1000.0 + i + 0.004  # decided at the limiter, delivered 4 ms later
        first = await granted(client, layer, lease, at=limiter.now)
        assert (await first).lease == lease and (await first).age == pytest.approx(0.0, abs=1e-6)
    assert events.RELEASE not in layer.types()  # none handed back


async def test_another_limiter_instance_is_another_clock(start):
    """A new limiter (a restart, perhaps on another host) reads another monotonic clock:
    its first decision sets a new baseline instead of looking hours late. A Redis restart
    keeps the instance, and so the baseline a recovery backlog could otherwise inflate."""
    here = Clock(1000.0)
    client = await start(layer := Layer(), clock=here)
    here.now = 1000.002
    assert (await (await granted(client, layer, "old", at=50.0))).age == 0.0
    here.now = 1001.002
    waiting = await granted(client, layer, "new", at=-90_000.0, limiter="two")
    assert (await waiting).age == 0.0


async def test_a_grant_that_queued_is_not_late_but_one_that_travelled_long_is(start):
    here, limiter = Clock(1000.0), Clock(50.0)
    client = await start(layer := Layer(), clock=here)
    here.now = 1000.002  # delivered 2 ms after the limiter decided
    assert (await (await granted(client, layer, "fresh", at=limiter.now))).age == 0.0
    # Queued 2 s at the limiter, then delivered in 2 ms: on time.
    limiter.now, here.now = 52.0, 1002.002
    queued_grant = await granted(client, layer, "queued", at=limiter.now, waited=2.0)
    assert (await queued_grant).age == pytest.approx(0.0, abs=1e-6)
    # Decided at once, but a second in transit (a stalled loop): handed back, asked again.
    limiter.now, here.now = 53.0, 1004.002
    late = await granted(client, layer, "late", at=limiter.now)
    again = (await acquires(layer, 4))[-1]
    await answer(client, layer, grant(again["ticket"], "on-time", at=limiter.now + 1.0))
    assert (await late).lease == "on-time"
    assert (await until_sent(layer, events.RELEASE))[0]["lease"] == "late"


async def test_a_ticket_queued_at_a_limiter_that_restarted_is_asked_of_the_new_one(start):
    """The limiter that queued it is gone (killed, restarted): its queue went with it. The
    ticket is asked again of the new limiter, with what is left of its wait, and not
    waited out (it was, for its whole 30 s, and then answered 503)."""
    here = Clock(100.0)
    client = await start(layer := Layer(), clock=here)
    waiting, first = await one_call(client, layer)
    await answer(client, layer, queued(first["ticket"], limiter="old", max_wait=30.0))
    await answer(client, layer, {"type": events.LIMITER_STARTED, "limiter": "old"})  # Redis back
    assert layer.types().count(events.ACQUIRE) == 1  # the same limiter still holds it

    here.now += 10.0
    await answer(client, layer, {"type": events.LIMITER_STARTED, "limiter": "new"})
    again = (await acquires(layer, 2))[1]
    assert again["ticket"] == first["ticket"] and again["type"] == events.ACQUIRE
    assert again["max_wait"] == pytest.approx(20.0)  # what is left of its 30 s
    await answer(client, layer, grant(first["ticket"], "lease-new", at=1.0, limiter="new"))
    assert (await asyncio.wait_for(waiting, 5)).lease == "lease-new"


async def test_after_the_reply_channel_failed_a_queued_ticket_is_asked_again(start):
    """Redis restarted under the same limiter: this process's reply channel failed, so the
    grant may have been sent into the outage and lost. The ticket is asked again of the
    same limiter with what is left of its wait (before, it was waited out: 503)."""
    here = Clock(100.0)
    client = await start(layer := Layer(), clock=here)
    waiting, first = await one_call(client, layer)
    await answer(client, layer, queued(first["ticket"], limiter="one", max_wait=30.0))
    here.now += 10.0
    await answer(client, layer, {"type": REPLY_CHANNEL_BACK})
    again = (await acquires(layer, 2))[1]
    assert again["ticket"] == first["ticket"]  # the limiter knows it if it still holds it
    assert again["max_wait"] == pytest.approx(20.0)
    await answer(client, layer, queued(first["ticket"], limiter="one", max_wait=30.0))  # it did
    await answer(client, layer, grant(first["ticket"], "lease-1", at=1.0, limiter="one"))
    assert (await asyncio.wait_for(waiting, 5)).lease == "lease-1"


async def test_after_the_reply_channel_failed_an_unanswered_ticket_is_asked_again(start):
    client = await start(layer := Layer())
    waiting, first = await one_call(client, layer)
    await answer(client, layer, {"type": REPLY_CHANNEL_BACK})
    again = (await acquires(layer, 2))[1]
    assert again == first  # asked again as asked: the same ticket
    await answer(client, layer, grant(first["ticket"], "lease-1", at=0.0))
    assert (await asyncio.wait_for(waiting, 5)).lease == "lease-1"


class FlakyLayer(Layer):
    """A channel layer down for its first receive and first send to the reply channel
    (Redis restarting)."""

    def __init__(self) -> None:
        super().__init__()
        self.receive_fails, self.send_fails = 1, 1
        self.tried = asyncio.Event()

    async def receive(self, channel: str) -> dict:
        if self.receive_fails:
            await self.tried.wait()  # once the call below has asked
            self.receive_fails -= 1
            raise ConnectionError("Connection closed by server.")
        return await super().receive(channel)

    async def send(self, channel: str, message: dict) -> None:
        if channel.startswith("sluice.web.") and self.send_fails:
            self.send_fails -= 1
            raise ConnectionError("Connection refused")
        await super().send(channel, message)


async def test_a_failed_reply_channel_is_probed_and_its_waiting_tickets_asked_again(start):
    client = await start(layer := FlakyLayer())
    waiting, first = await one_call(client, layer)
    layer.tried.set()
    again = (await acquires(layer, 2))[1]  # after a failed probe and a working one
    assert again["ticket"] == first["ticket"]
    await answer(client, layer, grant(first["ticket"], "lease-1", at=0.0))
    assert (await asyncio.wait_for(waiting, 5)).lease == "lease-1"


class DownLayer(Layer):
    """A channel layer that refuses its first `failures` sends (Redis restarting)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def send(self, channel: str, message: dict) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Connection refused")
        await super().send(channel, message)


async def test_a_call_during_a_blip_of_redis_is_sent_when_it_ends(settings, start):
    settings.SLUICE_LIMITER_TIMEOUT = 2.0
    client = await start(layer := DownLayer(failures=3))  # down for about 0.6 s
    waiting, first = await one_call(client, layer)
    await answer(client, layer, grant(first["ticket"], "lease-1", at=0.0))
    assert (await asyncio.wait_for(waiting, 5)).lease == "lease-1"


async def test_a_call_while_redis_stays_down_hears_unavailable_within_its_timeout(settings, start):
    settings.SLUICE_LIMITER_TIMEOUT = 0.5
    client = await start(DownLayer(failures=1000))
    with pytest.raises(LimiterUnavailable):  # and not a hang (wait_for's TimeoutError)
        await asyncio.wait_for(
            client.acquire(key=key_info(), endpoint="chat", tokens=0, request_id="req_1"), 5
        )


@pytest.mark.parametrize(
    "marker",
    [{"type": REPLY_CHANNEL_BACK}, {"type": events.LIMITER_STARTED, "limiter": "new"}],
    ids=["reply-channel-back", "limiter-started"],
)
async def test_a_ping_waits_past_what_is_not_its_pong(marker, start):
    # Every waiting ticket hears these, a ping's too; before, the ping took the marker for
    # the limiter's answer and reported counts it never got (/readyz).
    client = await start(layer := Layer())
    pinging = asyncio.ensure_future(client.ping(within=5))
    asked = (await until_sent(layer, events.PING))[0]
    await answer(client, layer, marker)
    await answer(
        client,
        layer,
        {"type": events.PONG, "ticket": asked["ticket"], "leases": 3, "queued": 2, "scopes": 7},
    )
    _round_trip, counts = await asyncio.wait_for(pinging, 5)
    assert counts == {"leases": 3, "queued": 2, "scopes": 7}


async def test_a_limiter_that_starts_is_handed_the_leases_held_and_only_those(start):
    client = await start(layer := Layer())
    for lease in ("held", "released"):
        assert (await (await granted(client, layer, lease, at=0.0))).lease == lease
    client.release("released", 10.0)
    await answer(client, layer, {"type": events.LIMITER_STARTED, "limiter": "two"})
    adopted = [m for m in layer.sent if m["type"] == events.ADOPT]
    assert adopted == [
        {
            "type": events.ADOPT,
            "lease": "held",
            "endpoint": "chat",
            "key": key_info().key_id,
            "account": key_info().account_id,
            "model": "",
            "tokens": 0,
        }
    ]


@pytest.fixture
def registry(monkeypatch) -> None:
    """This test's own caches and listeners (the registry is the process's)."""
    monkeypatch.setattr(changes, "_caches", {kind: [] for kind in changes.CHANGES})
    monkeypatch.setattr(changes, "_listeners", [])


async def test_a_configuration_change_drops_the_caches_before_the_listeners_hear(registry, start):
    heard: list[str] = []
    changes.on_config_changed(lambda: heard.append("listener"))
    changes.register_cache(lambda: heard.append("keys"))
    changes.register_cache(
        lambda: heard.append("models"), on=(events.CONFIG_CHANGED, events.MODELS_CHANGED)
    )
    client = await start(layer := Layer())
    await answer(client, layer, {"type": events.CONFIG_CHANGED})
    assert heard == ["keys", "models", "listener"]
    heard.clear()
    await answer(client, layer, {"type": events.MODELS_CHANGED})
    assert heard == ["models"]  # recorded models: only what holds them
    assert layer.sent == []  # a broadcast is nobody's answer


async def test_a_listener_that_fails_neither_silences_the_others_nor_the_client(registry, start):
    """Before, a listener's exception ended the dispatcher: every later answer was lost,
    and every call waited out its timeout and heard 503."""
    heard: list[str] = []

    def fails() -> None:
        raise RuntimeError("a listener's bug")

    changes.on_config_changed(fails)
    changes.on_config_changed(lambda: heard.append("next"))
    client = await start(layer := Layer())
    await answer(client, layer, {"type": events.CONFIG_CHANGED})
    assert heard == ["next"]
    waiting, asked = await one_call(client, layer)
    await answer(client, layer, grant(asked["ticket"], "lease-1", at=0.0))
    assert (await asyncio.wait_for(waiting, 5)).lease == "lease-1"


# --- a saturated loop is not an unavailable limiter (issue 22's storm) ------------------
class Hog:
    """Keeps this loop saturated, as a flood of calls does: every turn of it blocks for
    `turn` seconds (a turn's worth of other callbacks), until stopped."""

    def __init__(self, turn: float) -> None:
        self.turn = turn
        self.running = True
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while self.running:
            time.sleep(self.turn)  # noqa: ASYNC251  (the point: the loop runs nothing else)
            await asyncio.sleep(0)

    async def stop(self) -> None:
        self.running = False
        await self.task


async def answering_limiter(client: LimiterClient, layer: Layer, hops: int = 4) -> None:
    """A limiter that grants every ticket as soon as it reads it (an embedded one: the
    same loop, the same clock), `hops` turns of the loop after it was sent (the channel
    layer's queue, the consumer, its outbox: a real round trip takes a few)."""
    answered = 0
    while True:
        tickets = [m for m in layer.sent if m["type"] == events.ACQUIRE]
        for _ in range(hops if tickets[answered:] else 0):
            await asyncio.sleep(0)
        for asked in tickets[answered:]:
            layer.inbox.put_nowait(grant(asked["ticket"], f"lease-{answered}", time.monotonic()))
            answered += 1
        layer.arrived.clear()
        await layer.arrived.wait()


async def test_a_saturated_loop_does_not_make_the_limiter_unavailable(settings, start):
    """Issue 22: a storm of calls on one key saturated the web process's loop (each turn
    running thousands of refusals); a round trip to the limiter is a few turns, and
    every other team's call timed out into 503 limiter_unavailable, though the limiter
    answered each ticket at once. Its deadline now stands still while the loop is late
    (limiter/protocol/lag.py); before, this raised LimiterUnavailable."""
    settings.SLUICE_LIMITER_TIMEOUT = 0.25  # less than one turn of the loop below
    settings.SLUICE_GRANT_MAX_AGE = 60.0  # the timeout alone (the next test: late grants)
    client = await start(layer := Layer())
    limiter = asyncio.ensure_future(answering_limiter(client, layer))
    hog = Hog(turn=0.3)  # a round trip of 3 turns: about 0.9 s of wall time
    try:
        started = time.monotonic()
        got = await asyncio.wait_for(
            client.acquire(key=key_info(), endpoint="chat", tokens=0, request_id="req_1"), 20
        )
        assert got.lease == "lease-0"
        assert time.monotonic() - started > settings.SLUICE_LIMITER_TIMEOUT  # it did wait past it
    finally:
        await hog.stop()
        limiter.cancel()


async def test_a_grant_late_by_the_loops_own_lag_is_used_after_its_retries(settings, start):
    """Every grant reached the saturated loop later than SLUICE_GRANT_MAX_AGE after it was
    decided: each was handed back and asked again, three times, then 503. When the loop's
    own lateness explains the grant's, the last one is used (before: LimiterUnavailable)."""
    settings.SLUICE_LIMITER_TIMEOUT = 30.0  # the late grants alone (the test above: the timeout)
    settings.SLUICE_GRANT_MAX_AGE = 0.2
    client = await start(layer := Layer())
    limiter = asyncio.ensure_future(answering_limiter(client, layer))
    ask = {"key": key_info(), "endpoint": "chat", "tokens": 0, "request_id": "req_1"}
    assert (await client.acquire(**ask)).age == 0.0  # on time: how fast a grant comes
    hog = Hog(turn=0.3)
    try:
        got = await asyncio.wait_for(client.acquire(**ask), 20)
        assert got.age > settings.SLUICE_GRANT_MAX_AGE  # late, and used
        assert got.lease == "lease-3"  # the third ask: the first two were handed back
        assert [m["lease"] for m in await until_sent(layer, events.RELEASE, 2)] == [
            "lease-1",
            "lease-2",
        ]
    finally:
        await hog.stop()
        limiter.cancel()


async def test_a_silent_limiter_is_unavailable_once_the_loop_had_the_time_to_hear_it(
    settings, start
):
    """The deadline only stands still while the loop is late: a limiter that never
    answers is still found out, SLUICE_LIMITER_TIMEOUT after the loop is free again."""
    settings.SLUICE_LIMITER_TIMEOUT = 0.25
    client = await start(layer := Layer())
    hog = Hog(turn=0.3)
    call = asyncio.ensure_future(
        client.acquire(key=key_info(), endpoint="chat", tokens=0, request_id="req_1")
    )
    await acquires(layer, 1)
    await asyncio.sleep(1.5)  # about 5 saturated turns: no answer, and not yet unavailable
    assert not call.done()
    await hog.stop()
    freed = time.monotonic()
    with pytest.raises(LimiterUnavailable):
        await asyncio.wait_for(call, 5)
    assert time.monotonic() - freed < settings.SLUICE_LIMITER_TIMEOUT + 0.3
