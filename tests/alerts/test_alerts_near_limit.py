"""The alert condition "team above N% of its limit for M minutes" (`team_near_limit:<team>`):
raised from the limiter's live counts once a key has stayed at or above the threshold for
the alert's duration, once per period, to the organisation's webhooks and the team's own."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from channels.layers import InMemoryChannelLayer

from limiter.alerts.models import Alert, Delivery
from limiter.alerts.near import TEAM_NEAR_LIMIT, near_limit_raise
from limiter.alerts.services import webhook_create
from limiter.authority.coalesce_stats import CoalesceStats
from limiter.authority.engine import Engine, Limit
from limiter.authority.learning import LearnedCeilings
from limiter.authority.live import LiveView
from limiter.authority.near import NearLimit
from limiter.authority.stats import Stats
from limiter.services import key_issue, team_get_or_create

WIDE = Limit(per_minute=6000, burst=100, queue_depth=100, max_wait=30.0)


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.SLUICE_ALERT_PERIOD = 3600
    settings.SLUICE_WEBHOOK_ALLOW_PRIVATE = True  # hooks.example resolves nowhere


@pytest.fixture
def world(db):
    search, ads = team_get_or_create(name="search")[0], team_get_or_create(name="ads")[0]
    key = key_issue(team=search).key
    hooks = {
        "org": webhook_create(name="org", url="https://hooks.example/org"),
        "search": webhook_create(name="search", url="https://hooks.example/s", team=search),
        "ads": webhook_create(name="ads", url="https://hooks.example/a", team=ads),
    }
    return search, key, hooks


def test_a_key_held_near_its_limit_raises_its_teams_alert_once(world, monkeypatch):
    search, key, hooks = world
    raised: list[Alert | None] = []
    shown = LiveView(
        Engine(),
        Stats(),
        LearnedCeilings(margin=0.1, unit_seconds=1.0),
        CoalesceStats(),
        NearLimit(threshold=0.8, alert_after=120.0),  # 80% for 2 minutes
    )
    shown.publish_to(
        InMemoryChannelLayer(),
        lambda now: None,
        lambda e: raised.append(near_limit_raise(**asdict(e))),
    )
    limit = Limit(per_minute=10, burst=10, queue_depth=0, max_wait=0)
    scope = (("key", str(key.pk), "chat", ""), limit)
    account = (("account", "a", "chat", "m"), WIDE)
    clock = {"now": 0.0}
    monkeypatch.setattr("limiter.authority.live.time.monotonic", lambda: clock["now"])
    # 9 calls a minute against 10/min (90%) for three minutes, the view looked at each 10 s.
    for second in range(0, 181, 10):
        clock["now"] = float(second)
        if second % 60 == 0:
            for i in range(9):
                for d in shown.engine.acquire(f"{second}-{i}", scope, account, 0, float(second)):
                    shown.stats.record(d, float(second), 0.0)
        shown.snapshot()
    alerts = list(Alert.objects.filter(condition=f"{TEAM_NEAR_LIMIT}:{search.pk}"))
    assert len(alerts) == 1 and [a for a in raised if a] == alerts
    alert = alerts[0]
    assert alert.team == search
    assert "search" in alert.text and "90%" in alert.text and "chat" in alert.text
    assert alert.fields["use_fraction"] == 0.9 and alert.fields["key_prefix"] == key.prefix
    told = set(Delivery.objects.filter(alert=alert).values_list("webhook__name", flat=True))
    assert told == {"org", "search"}  # never another team's webhook
    assert hooks["ads"].deliveries.count() == 0


def test_under_the_threshold_or_not_long_enough_raises_nothing(world):
    _search, key, _hooks = world
    near = NearLimit(threshold=0.8, alert_after=120.0)
    scope = Engine().scope(("key", str(key.pk), "chat", ""), WIDE, 0.0)
    assert near.observe(scope, 0.79, 0.0) is None and near.observe(scope, 0.79, 500.0) is None
    assert near.observe(scope, 0.85, 501.0) is None and near.observe(scope, 0.85, 600.0) is None
    assert not Alert.objects.exists()


def test_a_deleted_key_raises_nothing_and_a_second_raise_is_deduplicated(world):
    search, key, _hooks = world
    first = near_limit_raise(
        key_id=str(key.pk), endpoint="chat", model="m", fraction=0.93, minutes=5
    )
    again = near_limit_raise(
        key_id=str(key.pk), endpoint="chat", model="m", fraction=0.95, minutes=6
    )
    assert first is not None and again is None
    assert (
        near_limit_raise(key_id="999999", endpoint="chat", model="", fraction=1, minutes=5) is None
    )
    assert (
        near_limit_raise(key_id="x'; drop", endpoint="chat", model="", fraction=1, minutes=5)
        is None
    )
    assert Alert.objects.filter(team=search).count() == 1
