"""The limiter's budget book, with time passed in: calendar periods in a time zone,
refusal once the limit is reached, thresholds announced once a period, turnover."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from limiter.usage.budgets import HARD, SOFT, BudgetBook, BudgetRule, period_bounds

PARIS = ZoneInfo("Europe/Paris")


def rule(**kw: object) -> BudgetRule:
    fields: dict = {
        "id": 1,
        "team_id": 7,
        "team_name": "research",
        "key_id": "",
        "key_prefix": "",
        "model": "",
        "unit": "tokens",
        "period": "day",
        "limit": 100.0,
        "soft_threshold": 0.8,
    }
    fields.update(kw)
    return BudgetRule(**fields)


def test_periods_are_calendar_periods_in_the_zone():
    now = datetime(2026, 3, 29, 12, 0, tzinfo=UTC)  # Paris moves to summer time that night
    start, end = period_bounds("day", now, PARIS)
    assert start.isoformat() == "2026-03-29T00:00:00+01:00"
    assert end.isoformat() == "2026-03-30T00:00:00+02:00"
    start, end = period_bounds("week", now, PARIS)  # a Sunday: the week began on Monday
    assert (start.date().isoformat(), end.date().isoformat()) == ("2026-03-23", "2026-03-30")
    start, end = period_bounds("month", datetime(2026, 12, 31, 23, 30, tzinfo=UTC), PARIS)
    assert (start.isoformat(), end.isoformat()) == (
        "2027-01-01T00:00:00+01:00",
        "2027-02-01T00:00:00+01:00",
    )


def test_refuses_at_the_limit_announces_each_threshold_once_and_resets():
    book = BudgetBook(UTC)
    now = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    book.load([rule()], {"k1": 7, "k2": 7}, {}, now)
    assert book.covers("k1") and not book.covers("k-other-team")
    assert book.check("k1", "m", now) is None
    assert [c.level for c in book.charge("k1", "m", 79, 0.0, now)] == []
    assert [c.level for c in book.charge("k2", "m", 1, 0.0, now)] == [SOFT]
    assert book.check("k1", "m", now) is None  # the soft threshold refuses nothing
    assert [c.level for c in book.charge("k1", "m", 30, 0.0, now)] == [HARD]
    assert book.charge("k1", "m", 30, 0.0, now) == []  # announced once
    exceeded = book.check("k2", "m", now)  # the team's budget: every key
    assert exceeded is not None
    assert exceeded.retry_after == 14 * 3600
    assert "140 of its 100 token budget per day" in exceeded.message()
    tomorrow = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
    assert book.check("k1", "m", tomorrow) is None  # a new period
    assert [c.level for c in book.charge("k1", "m", 100, 0.0, tomorrow)] == [SOFT, HARD]


def test_key_and_model_budgets_count_only_their_calls_and_reload_keeps_spend():
    book = BudgetBook(UTC)
    now = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    rules = [
        rule(id=1, key_id="k1", key_prefix="sk-sluice-abc", unit="dollars", limit=1.0),
        rule(id=2, model="big", limit=10.0),
    ]
    book.load(rules, {"k1": 7, "k2": 7}, {2: 9.0}, now)  # seeded from the rollups
    book.charge("k2", "big", 5, 3.0, now)
    assert book.check("k2", "big", now) is not None  # 14 tokens of 10 on "big"
    assert book.check("k2", "small", now) is None
    assert book.check("k1", "small", now) is None  # k2's dollars are not k1's
    book.charge("k1", "small", 1, 1.5, now)
    assert book.check("k1", "small", now) is not None
    # A reload (any configuration change) keeps what the book has been told: the
    # rollups lag behind it.
    assert book.untracked(rules, now) == []
    book.load(rules, {"k1": 7, "k2": 7}, {1: 0.0, 2: 0.0}, now)
    assert book.check("k1", "small", now) is not None
