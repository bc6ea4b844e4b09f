"""The limiter's live view (limiter/authority/live.py and stats.py), through its own
interface: the snapshot shows the engine's scopes, queue and counts, each model's learned
ceiling with what Together said of it, and goes out when something changed or the
heartbeat is due; a scope the engine forgets takes its counts with it."""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.layers import InMemoryChannelLayer

from limiter.authority import live
from limiter.authority.coalesce_stats import CoalesceStats
from limiter.authority.engine import Engine, Limit
from limiter.authority.learning import LearnedCeilings
from limiter.authority.live import HEARTBEAT_INTERVAL, LiveView
from limiter.authority.stats import HISTORY_BUCKET_SECONDS, Stats
from limiter.protocol import events

KEY = ("key", "k", "chat", "")
ACCOUNT = ("account", "a", "chat", "m")
ONE = Limit(per_minute=60, burst=1, queue_depth=1, max_wait=30.0)


def view() -> LiveView:
    ceilings = LearnedCeilings(margin=0.1, unit_seconds=1.0)
    return LiveView(Engine(), Stats(), ceilings, CoalesceStats())


def serve(shown: LiveView, now: float) -> None:
    """Three tickets on one scope pair: granted, queued, refused (queue full)."""
    account_limit = shown.ceilings.limit(ACCOUNT, ONE)
    wall = time.time()
    for ticket in ("t1", "t2", "t3"):
        for decision in shown.engine.acquire(ticket, (KEY, ONE), (ACCOUNT, account_limit), 0, now):
            shown.stats.record(decision, now, wall)


def upstream(**fields) -> events.UpstreamReportMessage:
    report: events.UpstreamReportMessage = {
        "type": events.UPSTREAM_REPORT,
        "account": "a",
        "endpoint": "chat",
        "model": "m",
        "error_type": "",
        "pause": 0.0,
        "headers": {},
        "refused": False,
        "unavailable": 0,
    }
    return {**report, **fields}  # type: ignore[typeddict-item]


def test_the_snapshot_shows_the_engines_scopes_queue_and_counts():
    shown = view()
    serve(shown, time.monotonic())
    snapshot = shown.snapshot()
    assert snapshot["type"] == events.LIVE_SNAPSHOT
    assert snapshot["limiter"]["decisions"] == 3
    assert snapshot["limiter"]["tickets_queued"] == 1
    assert snapshot["limiter"]["history_bucket_seconds"] == HISTORY_BUCKET_SECONDS
    scopes = {(s["kind"], s["id"]): s for s in snapshot["scopes"]}
    assert scopes.keys() == {("key", "k"), ("account", "a")}
    key = scopes[("key", "k")]
    assert (key["admitted_last_minute"], key["queued"], key["limit_per_minute"]) == (1, 1, 60)
    assert key["refused_last_minute"] == {"gateway": 1, "upstream": 0}
    ((_, admitted, queued, refused),) = snapshot["history"]["chat"]
    assert (admitted, queued, refused) == (1, 1, 1)


def test_the_models_panel_shows_each_ceiling_and_what_together_said_of_it():
    shown = view()
    serve(shown, time.monotonic())
    now = time.monotonic()
    headers = {"x-ratelimit-limit": "0.5"}
    for report in (upstream(headers=headers, unavailable=2), upstream(pause=1.0, refused=True)):
        shown.stats.record_upstream(ACCOUNT, report, now, time.time())
        shown.ceilings.learn(ACCOUNT, report, now)
    (model,) = shown.snapshot()["models"]
    assert (model["account"], model["model"], model["source"]) == ("a", "m", "429")
    assert model["learned_per_minute"] == 30 and model["pace_per_minute"] == 13.5
    assert (model["upstream_429_last_minute"], model["upstream_503_last_minute"]) == (1, 2)
    assert model["last_headers"]["x-ratelimit-limit"] == "0.5" and "at" in model["last_headers"]
    assert model["updated_at"] is not None
    snapshot = shown.snapshot()
    assert snapshot["upstream_headers"]["a"]["chat"]["x-ratelimit-limit"] == "0.5"
    account = next(s for s in snapshot["scopes"] if s["kind"] == "account")
    assert account["refused_last_minute"]["upstream"] == 1


def test_a_snapshot_is_due_on_a_change_or_a_heartbeat():
    shown = view()
    assert shown.due(100.0)  # a new view has something to show
    assert not shown.due(100.5)
    shown.changed()
    assert shown.due(101.0)
    assert not shown.due(101.0 + HEARTBEAT_INTERVAL - 0.1)
    assert shown.due(101.0 + HEARTBEAT_INTERVAL)


def test_forgotten_scopes_take_their_counts_but_not_the_models_429s():
    shown = view()
    serve(shown, 0.0)
    for decision in shown.engine.poll(100.0):  # the queued ticket's turn
        shown.stats.record(decision, 100.0, time.time())
    shown.stats.record_upstream_refusal(ACCOUNT, 0.0, time.time())
    shown.stats.forget(shown.engine.forget_idle(now=1000.0))
    assert shown.engine.scopes == {}
    assert shown.stats.admitted == {} and shown.stats.refused == {}
    assert ACCOUNT in shown.stats.upstream_refused


async def test_the_publisher_sends_snapshots_to_the_live_group_and_runs_each_round(monkeypatch):
    monkeypatch.setattr(live, "SNAPSHOT_INTERVAL", 0.01)
    layer = InMemoryChannelLayer()
    await layer.group_add(events.LIVE_GROUP, "watcher")
    rounds: list[float] = []
    shown = view()
    shown.publish_to(layer, rounds.append)
    shown.publish()
    try:
        snapshot = await asyncio.wait_for(layer.receive("watcher"), 5)
        assert snapshot["type"] == events.LIVE_SNAPSHOT
        assert rounds
    finally:
        shown.close()


@pytest.mark.parametrize("n", [1, 3])
def test_second_counts_keep_the_last_minute(n):
    counts = Stats().admitted[KEY]
    counts.add(10.0, n)
    counts.add(50.0)
    assert counts.last_minute(60.0) == n + 1
    assert counts.last_minute(70.5) == 1


def test_the_snapshot_shows_each_classs_share_use_and_whether_it_lends_or_borrows():
    """Issue 21: per account and model, a team's share, its use, lending or borrowing."""
    from limiter.authority.sharing import CRITICAL, Klass

    shown = view()
    wide = Limit(per_minute=60000, burst=1000, queue_depth=100, max_wait=60.0)
    ceiling = Limit(per_minute=60, burst=1)
    now = time.monotonic()
    prod = Klass("team:1", share=0.6, priority=CRITICAL)
    dev = Klass("team:2")
    # dev alone for 20 s: it borrows prod's idle share, which prod lends.
    for n in range(20):
        shown.engine.acquire(f"d{n}", (KEY, wide), (ACCOUNT, ceiling), 0, now + n, klass=dev)
    shown.engine.acquire(
        "p0", (("key", "p", "chat", ""), wide), (ACCOUNT, ceiling), 0, now, klass=prod
    )
    rows = {r["holder"]: r for r in shown.snapshot()["sharing"]}
    assert rows["team:2"]["state"] == "borrowing" and rows["team:2"]["use"] > 0.6
    assert rows["team:2"]["account"] == "a" and rows["team:2"]["model"] == "m"
    assert (rows["team:1"]["share"], rows["team:1"]["priority"]) == (0.6, CRITICAL)
    assert rows["team:1"]["state"] in ("lending", "reclaiming")
