"""Near-limit signals and shadow rows on the live view (limiter/authority/near.py, live.py):
each scope's use over the last minute as a fraction of its limit, marked at the threshold,
counted in /metrics, and a key near its limit for M minutes raising its team's alert."""

from __future__ import annotations

from channels.layers import InMemoryChannelLayer

from limiter import metrics
from limiter.authority.coalesce_stats import CoalesceStats
from limiter.authority.engine import Engine, Limit
from limiter.authority.learning import LearnedCeilings
from limiter.authority.live import LiveView
from limiter.authority.near import NearLimit, NearLimitEvent
from limiter.authority.stats import Stats

KEY = ("key", "7", "chat", "")
ACCOUNT = ("account", "a", "chat", "m")
WIDE = Limit(per_minute=6000, burst=100, queue_depth=100, max_wait=30.0)


def view(near: NearLimit) -> tuple[LiveView, list[NearLimitEvent]]:
    told: list[NearLimitEvent] = []
    shown = LiveView(
        Engine(), Stats(), LearnedCeilings(margin=0.1, unit_seconds=1.0), CoalesceStats(), near
    )
    shown.publish_to(InMemoryChannelLayer(), lambda now: None, told.append)
    return shown, told


def call(shown: LiveView, ticket: str, limit: Limit, now: float) -> None:
    for decision in shown.engine.acquire(ticket, (KEY, limit), (ACCOUNT, WIDE), 0, now):
        shown.stats.record(decision, now, 0.0)


def key_row(shown: LiveView) -> dict:
    return next(s for s in shown.snapshot()["scopes"] if s["kind"] == "key")


def gauge(kind: str, endpoint: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(
        "sluice_near_limit_scopes", {"kind": kind, "endpoint": endpoint}
    )


def test_a_scope_at_80_percent_of_its_limit_is_marked_and_counted(monkeypatch):
    shown, _ = view(NearLimit(threshold=0.8, alert_after=0))
    limit = Limit(per_minute=10, burst=10, queue_depth=0, max_wait=0)
    base = 1000.0
    monkeypatch.setattr("limiter.authority.live.time.monotonic", lambda: base + 1)
    for i in range(7):
        call(shown, f"t{i}", limit, base)
    row = key_row(shown)
    assert row["use_fraction"] == 0.7 and not row["near_limit"]
    assert gauge("key", "chat") == 0
    call(shown, "t7", limit, base)
    row = key_row(shown)
    assert row["use_fraction"] == 0.8 and row["near_limit"]
    assert gauge("key", "chat") == 1
    # A minute later the calls have left the window: no longer near.
    monkeypatch.setattr("limiter.authority.live.time.monotonic", lambda: base + 61)
    row = key_row(shown)
    assert row["use_fraction"] == 0 and not row["near_limit"]
    assert gauge("key", "chat") in (0, None)


def test_a_shadow_row_on_the_live_view_shows_its_would_be_refusals_and_its_twins_use(
    monkeypatch,
):
    shown, _ = view(NearLimit(threshold=0.8, alert_after=0))
    shadow = Limit(per_minute=10, burst=1, queue_depth=0, max_wait=0, shadow=True)
    base = 1000.0
    monkeypatch.setattr("limiter.authority.live.time.monotonic", lambda: base + 1)
    for i in range(6):
        call(shown, f"t{i}", shadow, base)
    row = key_row(shown)
    assert row["shadow"] is True
    assert row["admitted_last_minute"] == 6  # every call went
    assert row["shadow_refused_last_minute"] == 5  # burst 1: five would have been refused
    assert row["use_fraction"] == 0.1  # the twin's one admission of 10/min


def test_a_key_near_its_limit_for_the_alerts_duration_is_told_once_per_run():
    near = NearLimit(threshold=0.8, alert_after=300.0)
    scope = Engine().scope(KEY, WIDE, 0.0)
    assert near.observe(scope, 0.9, now=0.0) is None
    assert near.observe(scope, 0.95, now=299.0) is None
    event = near.observe(scope, 0.9, now=300.0)
    assert event == NearLimitEvent("7", "chat", "", 0.9, 5.0)
    assert near.observe(scope, 0.9, now=400.0) is None  # told already
    assert near.observe(scope, 0.5, now=401.0) is None  # below: the run ends
    assert near.observe(scope, 0.9, now=402.0) is None  # a new run starts over
    assert near.observe(scope, 0.9, now=702.0) is not None


def test_an_account_scope_is_marked_but_raises_no_team_alert():
    near = NearLimit(threshold=0.8, alert_after=1.0)
    scope = Engine().scope(ACCOUNT, WIDE, 0.0)
    assert near.observe(scope, 0.9, now=0.0) is None
    assert near.observe(scope, 0.9, now=10.0) is None
    assert near.near(ACCOUNT)
