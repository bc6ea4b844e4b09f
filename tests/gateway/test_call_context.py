"""A call's context, its one finish, the one refusal sink and the 429 retry decision,
through their public interfaces, without a server: a fake limiter client and a fake
Together stand in for the real ones."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import pytest

from limiter import metrics
from limiter.gateway import forward, revocation, sending
from limiter.gateway.admission import Admission, admit
from limiter.gateway.context import CallContext, Handles
from limiter.gateway.forward import UpstreamCall
from limiter.gateway.keys import KeyInfo
from limiter.gateway.metering import Finish
from limiter.gateway.refusals import Recorder
from limiter.gateway.sink import GATEWAY, UPSTREAM, RefusalSink
from limiter.protocol import events
from limiter.protocol.client import Grant
from limiter.upstream import Outcome, Target
from limiter.usage.sizing import Size, measure


def key_info(name: str = "alpha", team_id: int = 7) -> KeyInfo:
    return KeyInfo(
        key_id=f"key-{name}",
        prefix=f"sk-{name}",
        secret_hash=f"hash-{name}",
        team_id=team_id,
        team_name=name,
        paused=False,
        expires_at=None,
        account_id="acct",
        account_name="together",
        target=Target("acct", "together", "http://127.0.0.1:9/v1", "secret"),
        config_version=1,
        fallbacks={},
        max_batch_requests=None,
    )


class FakeLimiter:
    """What the gateway asks of its limiter client, written down."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def acquire(self, **asked: Any) -> Grant:
        self.calls.append(("acquire", asked))
        return Grant("lease-2", 0.0, 10, 9, 1.0)

    def release(self, lease: str, tokens_used: float | None, *, unused: bool = False) -> None:
        if lease:
            self.calls.append(("release", (lease, tokens_used, unused)))

    def unreserve(self, reservation: str) -> None:
        if reservation:
            self.calls.append(("unreserve", reservation))

    def report_usage(self, **report: Any) -> None:
        self.calls.append(("report_usage", report))

    async def report_upstream(self, **report: Any) -> None:
        self.calls.append(("report_upstream", report))

    def known_refusal(self, **asked: Any) -> None:
        self.calls.append(("known_refusal", asked))

    def named(self, name: str) -> list[Any]:
        return [what for called, what in self.calls if called == name]


class FakeRecorder(Recorder):
    """The 429 record, its rows kept here instead of written."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []

    def refusal(self, **row: Any) -> None:  # type: ignore[override]
        self.rows.append(row)


class FakeMonitor:
    def __init__(self) -> None:
        self.teams: list[int | None] = []

    def team_refused(self, team_id: int | None) -> None:
        self.teams.append(team_id)


@pytest.fixture
def sink() -> RefusalSink:
    return RefusalSink(FakeRecorder(), FakeMonitor())


def context(sink: RefusalSink, limiter: FakeLimiter, **given: Any) -> CallContext:
    handles = Handles(limiter, sink)  # type: ignore[arg-type]  # the fake stands in
    fields: dict[str, Any] = {
        "key": key_info(),
        "request_id": "req_1",
        "endpoint": "chat",
        "model": "m",
        "size": Size(prompt=10, completion=5),
    }
    fields.update(given)
    return CallContext(handles=handles, **fields)


def refused_count(endpoint: str, reason: str, source: str) -> float:
    labels = {"endpoint": endpoint, "reason": reason, "source": source}
    return metrics.REGISTRY.get_sample_value("sluice_refused_total", labels) or 0.0


def test_a_call_is_sized_once_by_the_shared_rules() -> None:
    chat = measure({"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 8}, "chat")
    # "user" and the content: 44 characters, 11 tokens.
    assert (chat.prompt, chat.completion, chat.units, chat.cap, chat.tokens) == (11, 8, 0, 8, 19.0)
    images = measure({"prompt": "a cat", "n": 3}, "images")
    assert (images.units, images.completion) == (3, 0)
    embeddings = measure({"input": ["abcd", "efgh", "ij"]}, "embeddings")
    assert (embeddings.prompt, embeddings.units) == (3, 3)
    # n multiplies the completion bound a caller set; none set, no bound.
    assert measure({"prompt": "", "max_tokens": 4, "n": 2}, "completions").cap == 8
    assert measure({"prompt": ""}, "completions").cap is None


def test_a_gateway_refusal_is_counted_alerted_and_recorded_under_its_caller(
    sink: RefusalSink,
) -> None:
    ctx = context(sink, FakeLimiter())
    before = refused_count("chat", "queue_full", GATEWAY)
    ctx.refused(reason="queue_full", source=GATEWAY, retry_after=2.5, message="full")
    assert refused_count("chat", "queue_full", GATEWAY) == before + 1
    assert sink.monitor.teams == [7]  # type: ignore[attr-defined]
    [row] = sink.recorder.rows  # type: ignore[attr-defined]
    assert row["team_id"] == 7 and row["key_prefix"] == "sk-alpha"
    assert (row["endpoint"], row["model"], row["request_id"]) == ("chat", "m", "req_1")
    assert (row["reason"], row["source"], row["retry_after"]) == ("queue_full", GATEWAY, 2.5)
    assert row["message"] == "full" and row["upstream"] == "together"


def test_an_upstream_refusal_is_recorded_but_left_to_the_upstream_alerts(
    sink: RefusalSink,
) -> None:
    before = refused_count("chat", "upstream_rate_limited", UPSTREAM)
    sink.refused(
        key_info(),
        "req_2",
        "chat",
        "m",
        reason="upstream_rate_limited",
        source=UPSTREAM,
        retry_after=1.0,
    )
    assert refused_count("chat", "upstream_rate_limited", UPSTREAM) == before + 1
    assert sink.monitor.teams == []  # type: ignore[attr-defined]
    assert [row["source"] for row in sink.recorder.rows] == [UPSTREAM]  # type: ignore[attr-defined]


def test_finish_without_an_answer_hands_the_grant_back_unmetered(sink: RefusalSink) -> None:
    limiter = FakeLimiter()
    grant = Grant("lease-1", 0.0, 10, 9, 1.0, budgeted=True, reservation="res-1")
    finish = Finish(Admission(context(sink, limiter), grant))
    finish(unused=True)
    finish()  # once only
    assert limiter.named("release") == [("lease-1", None, True)]
    assert limiter.named("unreserve") == ["res-1"]
    assert limiter.named("report_usage") == []


def test_finish_meters_then_releases_settling_the_budget_once(
    sink: RefusalSink, settings, monkeypatch
) -> None:
    settings.SLUICE_USAGE_RECORDING = True
    recorded: list[dict[str, Any]] = []

    class Usages:
        def record(self, **row: Any) -> None:
            recorded.append(row)

        def should_refresh(self, account_id: str) -> bool:
            return False

    monkeypatch.setattr("limiter.gateway.metering.usage_recorder", Usages())
    limiter = FakeLimiter()
    grant = Grant("lease-1", 0.0, 10, 9, 1.0, budgeted=True, reservation="res-1")
    finish = Finish(Admission(context(sink, limiter), grant))
    finish.usage.take(b'{"usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}')
    finish.answered(200, served_by="fallback-model")
    finish()
    [row] = recorded
    assert (row["model"], row["status"], row["total"], row["estimated"]) == (
        "fallback-model",
        200,
        6,
        0,
    )
    [report] = limiter.named("report_usage")
    assert (report["tokens"], report["reservation"], report["model"]) == (6.0, "res-1", "m")
    assert limiter.named("release") == [("lease-1", 6.0, False)]
    assert limiter.named("unreserve") == []  # settled by the report, not again at 0


def test_a_stream_cut_short_is_finished_at_its_estimate(
    sink: RefusalSink, settings, monkeypatch
) -> None:
    settings.SLUICE_USAGE_RECORDING = False
    limiter = FakeLimiter()
    ctx = context(sink, limiter, size=Size(prompt=10, completion=256, cap=3))
    finish = Finish(Admission(ctx, Grant("lease-1", 0.0, 10, 9, 1.0)))
    finish.usage.relayed(b'data: {"choices": [{"delta": {"content": "hello world, again"}}]}\n\n')
    finish.usage.cut(ctx.size)
    finish.answered(200)
    finish()
    # 18 characters relayed: 5 tokens, bounded by the caller's max_tokens (3), plus the prompt.
    assert limiter.named("release") == [("lease-1", 13.0, False)]


class FakeTogether:
    """Answers each send with the next status."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.sent: list[dict[str, Any]] = []

    async def send(self, target: Target, method: str, path: str, **sent: Any) -> Outcome:
        self.sent.append({"path": path, **sent})
        status = self.statuses.pop(0)
        headers = {"retry-after-ms": "10"} if status == 429 else {}
        body = b'{"error": {"message": "slow down"}}' if status == 429 else b"{}"
        return Outcome(httpx.Response(status, headers=headers, content=body), attempts=1)


async def test_togethers_429_is_each_callers_and_the_retry_queues_again_first(
    sink: RefusalSink, monkeypatch
) -> None:
    together = FakeTogether([429, 200])
    monkeypatch.setattr(forward, "upstream", together)
    limiter = FakeLimiter()
    ctx = context(sink, limiter, request_id="req_merged")
    admission = Admission(ctx, Grant("lease-1", 0.0, 10, 9, 1.0), events.CHARGE_ACCOUNT)
    callers = ((key_info("alpha", 7), "req_a"), (key_info("beta", 8), "req_b"))
    call = UpstreamCall(ctx, "/embeddings", b"{}", {"x-request-id": "req_merged"}, callers=callers)

    forwarded = await sending.send(call, admission)

    assert forwarded.response.status_code == 200
    assert [sent["content"] for sent in together.sent] == [b"{}", b"{}"]
    rows = sink.recorder.rows  # type: ignore[attr-defined]
    assert [(row["team_id"], row["request_id"]) for row in rows] == [(7, "req_a"), (8, "req_b")]
    assert {row["reason"] for row in rows} == {"upstream_rate_limited"}
    # The pause reached the limiter, then the grant was handed back in the same step as
    # the call queued again (REACQUIRE), before the second send.
    [pause] = [r for r in limiter.named("report_upstream") if r["refused"]]
    assert pause["pause"] == 0.01
    [asked] = limiter.named("acquire")
    assert (asked["replacing"], asked["charge"]) == ("lease-1", events.CHARGE_ACCOUNT)
    assert admission.grant.lease == "lease-2"


async def test_admission_asks_about_a_promised_refusal_once_per_call(
    sink: RefusalSink, monkeypatch
) -> None:
    # The inference path asks before it reads the rest of the body (a flood costs no more);
    # its admission then does not ask again. Any other call is asked at admission.
    async def key_usable(key: Any) -> None:  # the key's revocation check reads the database
        return None

    monkeypatch.setattr(revocation, "key_refusal", key_usable)
    limiter = FakeLimiter()
    ctx = context(sink, limiter)
    (await admit(ctx)).release()
    assert limiter.named("known_refusal") == [{"key": ctx.key, "endpoint": "chat", "model": "m"}]
    (await admit(replace(ctx, promise_checked=True))).release()
    assert len(limiter.named("known_refusal")) == 1
    assert len(limiter.named("acquire")) == 2
