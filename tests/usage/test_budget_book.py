"""The limiter's budget book, with time passed in: calendar periods in a time zone,
refusal once the limit is reached, thresholds announced once a period, turnover; and
reservations: held from admission, settled by the report, dropped, expired, carried over
a period's turn, and the overshoot bound over any interleaving of calls and reports."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# --- reservations: held from admission, settled by the report ---------------------------
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def booked(*rules: BudgetRule, ttl: float = 600.0) -> BudgetBook:
    book = BudgetBook(UTC, reservation_ttl=ttl)
    book.load(list(rules) or [rule()], {"k1": 7, "k2": 7}, {}, NOW)
    return book


def test_a_call_in_flight_holds_its_estimate_until_its_report_settles_it():
    book = booked()
    for ticket, estimate in (("t1", 60), ("t2", 30), ("t3", 5), ("t4", 5)):
        assert book.admit(ticket, "k1", "m", estimate, 0.0, NOW) is None
    state = book.states[1]
    assert (state.spent, state.reserved) == (0.0, 100.0)
    # Nothing reported yet, nothing spent: the calls in flight fill the budget.
    refused = book.admit("t5", "k2", "m", 5, 0.0, NOW)
    assert refused is not None
    assert not book.reserved("t5")
    assert "has used 0 (and 100 held by its calls in flight) of its 100" in refused.message()
    # t1 used less than its estimate: the difference is room again at once.
    assert book.settle("t1", "k1", "m", 20, 0.0, NOW) == []
    assert (state.spent, state.reserved) == (20.0, 40.0)
    assert not book.reserved("t1")
    assert book.admit("t5", "k2", "m", 5, 0.0, NOW) is None
    # A second report under the same reservation settles nothing twice: it is charged as
    # a report naming no reservation (here 0: nothing changes).
    book.settle("t1", "k1", "m", 0, 0.0, NOW)
    assert (state.spent, state.reserved) == (20.0, 45.0)


def test_a_refused_or_cancelled_ticket_holds_nothing_and_an_unused_grant_settles_at_zero():
    book = booked()
    book.admit("queued", "k1", "m", 70, 0.0, NOW)
    book.drop("queued")  # the engine refused it (queue full, timed out) or it was cancelled
    assert book.states[1].reserved == 0.0
    book.drop("queued")  # twice: nothing more
    book.admit("granted", "k1", "m", 70, 0.0, NOW)
    book.settle("granted", "", "", 0.0, 0.0, NOW)  # never went upstream
    assert (book.states[1].spent, book.states[1].reserved) == (0.0, 0.0)


def test_dollar_budgets_hold_the_estimated_cost_and_model_budgets_only_their_model():
    book = booked(
        rule(id=1, unit="dollars", limit=1.0),
        rule(id=2, model="big", limit=100.0),
    )
    dollars, big = book.states[1], book.states[2]
    assert book.admit("a", "k1", "big", 80, 0.6, NOW) is None
    assert book.admit("b", "k1", "small", 500, 0.3, NOW) is None  # not "big": dollars only
    assert (dollars.reserved, big.reserved) == (pytest.approx(0.9), 80.0)
    assert book.admit("c", "k1", "big", 1, 0.05, NOW) is None
    assert book.admit("d", "k2", "small", 1, 0.1, NOW) is None  # $0.95 held: room left
    assert book.admit("e", "k2", "big", 1, 0.0, NOW) is not None  # $1.05 held: full
    book.settle("a", "k1", "big", 30, 0.2, NOW)
    assert (dollars.spent, dollars.reserved) == (0.2, pytest.approx(0.45))
    assert (big.spent, big.reserved) == (30.0, 1.0)


def test_a_reservation_never_reported_expires_at_its_estimate_and_a_late_report_corrects_it():
    book = booked(ttl=600)
    book.admit("lost", "k1", "m", 70, 0.0, NOW)
    assert book.expire(NOW + timedelta(seconds=599)) == []
    assert book.states[1].reserved == 70.0
    crossings = book.expire(NOW + timedelta(seconds=600))
    assert [c.level for c in crossings] == []  # 70 of 100: below the soft 80
    assert (book.states[1].spent, book.states[1].reserved) == (70.0, 0.0)
    assert not book.reserved("lost")
    # The call was a long one after all: its report, within another TTL, corrects the
    # charge by what it used beyond the estimate.
    crossings = book.settle("lost", "k1", "m", 95, 0.0, NOW + timedelta(seconds=700))
    assert [c.level for c in crossings] == [SOFT]
    assert book.states[1].spent == 95.0
    # Expiry is checked on the way: an admission past the TTL charges the expired first.
    book.admit("gone", "k1", "m", 10, 0.0, NOW + timedelta(seconds=700))
    crossings = book.settle("other", "k2", "m", 0, 0.0, NOW + timedelta(seconds=1300))
    assert [c.level for c in crossings] == [HARD]
    assert book.states[1].spent == 105.0
    # Its report after two TTLs names nothing the book remembers: charged as it stands.
    book.settle("gone", "k1", "m", 3, 0.0, NOW + timedelta(seconds=2600))
    assert book.states[1].spent == 108.0


def test_the_period_turns_over_with_reservations_open():
    book = booked()
    book.charge("k1", "m", 50, 0.0, NOW)
    late = datetime(2026, 11, 29, 23, 59, tzinfo=UTC)
    assert book.admit("night", "k1", "m", 40, 0.0, late) is None  # 50 + 0 < 100
    assert book.admit("night2", "k1", "m", 10, 0.0, late) is None  # 50 + 40 < 100
    assert book.admit("no", "k1", "m", 1, 0.0, late) is not None  # 50 + 50: full
    midnight = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
    # A new period: nothing spent in it, but the calls in flight are still held.
    assert book.admit("a", "k1", "m", 50, 0.0, midnight) is None  # 0 + 50 < 100
    state = book.states[1]
    assert (state.start, state.spent, state.reserved) == (midnight, 0.0, 100.0)
    assert book.admit("b", "k1", "m", 1, 0.0, midnight) is not None
    # It ends in the new period and is charged there, where its usage rollup lands.
    book.settle("night", "k1", "m", 35, 0.0, midnight + timedelta(minutes=1))
    assert (state.spent, state.reserved) == (35.0, 60.0)


def test_a_budget_made_while_calls_are_in_flight_holds_them_from_its_first_check():
    book = booked(rule(id=1, model="other"))
    book.admit("t1", "k1", "m", 60, 0.0, NOW)  # no budget covers it: nothing held
    assert not book.reserved("t1")
    book.admit("t2", "k1", "other", 60, 0.0, NOW)
    new = rule(id=2, limit=100.0)  # every model
    book.load([rule(id=1, model="other"), new], {"k1": 7, "k2": 7}, {}, NOW)
    assert book.states[2].reserved == 60.0  # t2, which the new budget covers
    assert book.admit("t3", "k1", "m", 50, 0.0, NOW) is None  # 60 < 100
    assert book.admit("t4", "k1", "m", 1, 0.0, NOW) is not None
    book.settle("t2", "k1", "other", 10, 0.0, NOW)
    assert (book.states[2].spent, book.states[2].reserved) == (10.0, 50.0)
    assert (book.states[1].spent, book.states[1].reserved) == (10.0, 0.0)


# --- the bound, over any interleaving ----------------------------------------------------
LIMIT = 1000.0


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    callers=st.integers(1, 16),
    over=st.booleans(),  # whether some calls use more than their estimate
)
def test_calls_in_flight_never_take_the_budget_past_the_bound(seed, callers, over):
    """Callers send calls (estimate = prompt + max_tokens) and their reports land in any
    order, any time later, on one book, as on the one worker. Whatever the order: the
    final spend is below the limit plus the last admitted call's usage plus, over the
    calls in flight at its admission, what each used beyond its estimate."""
    rng = random.Random(seed)
    book = booked(rule(limit=LIMIT))
    in_flight: dict[str, tuple[float, float]] = {}  # ticket -> (estimate, actual)
    bound = 0.0
    sent = 0
    while sent < 400:
        # Either a caller sends its next call (while fewer than `callers` are in flight)
        # or some call in flight reports, in no particular order.
        if len(in_flight) < callers and (not in_flight or rng.random() < 0.5):
            sent += 1
            ticket = f"t{sent}"
            estimate = float(rng.randint(5, 60))
            beyond = over and rng.random() < 0.3
            actual = float(max(1, int(estimate * rng.uniform(*((1, 3) if beyond else (0.2, 1))))))
            if book.admit(ticket, "k1", "m", estimate, 0.0, NOW) is None:
                excess = sum(max(0.0, a - e) for e, a in in_flight.values())
                in_flight[ticket] = (estimate, actual)
                bound = actual + excess  # of the last call admitted so far
        else:
            ticket = rng.choice(list(in_flight))
            _estimate, actual = in_flight.pop(ticket)
            book.settle(ticket, "k1", "m", actual, 0.0, NOW)
    for ticket, (_estimate, actual) in list(in_flight.items()):
        book.settle(ticket, "k1", "m", actual, 0.0, NOW)
    state = book.states[1]
    assert state.reserved == 0.0
    assert state.spent >= LIMIT  # 400 calls of at most 60: the budget was reached
    assert state.spent < LIMIT + bound, (state.spent, bound)
    if not over:  # estimates hold what calls use: less than one call over
        assert state.spent - LIMIT < 60


def test_a_job_is_held_only_if_its_estimate_fits_and_until_its_usage_settles_it():
    """Jobs (issue 18): a job must fit whole, `spent + reserved + estimate <= limit`, and
    its own hold is not counted twice when it is checked again at its start."""
    from limiter.usage.budgets import JobHold

    book = BudgetBook(UTC)
    now = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    book.load([rule(limit=1000.0), rule(id=2, unit="dollars", limit=1.0)], {"k1": 7}, {}, now)
    book.charge("k1", "m", 300, 0.0, now)
    refused = book.hold_jobs("k1", [JobHold("batch-a", "m", 800, 0.1)], now)
    assert refused is not None and not refused.over_limit and refused.estimate == 800
    assert "estimated at 800 tokens" in refused.message("batch", "accepted")
    assert "has 700 left" in refused.message("batch", "accepted")
    assert book.states[1].reserved == 0  # refused: nothing held
    whole = book.hold_jobs("k1", [JobHold("batch-b", "m", 1001, 0.0)], now)
    assert whole is not None and whole.over_limit
    assert "more than the whole 1,000 token budget" in whole.message("batch", "accepted")

    # Two models of one batch, fitting exactly: held in both budgets.
    parts = [JobHold("batch-c", "m", 500, 0.25), JobHold("batch-c", "n", 200, 0.25)]
    assert book.hold_jobs("k1", parts, now) is None
    assert (book.states[1].reserved, book.states[2].reserved) == (700, 0.5)
    assert book.check("k1", "m", now) is not None  # calls find the budget full
    # Checked again at its start: its own hold is not counted twice.
    assert book.hold_jobs("k1", parts, now) is None
    assert book.states[1].reserved == 700
    # More spent meanwhile (a call beyond its estimate): it no longer fits, and is held back.
    book.charge("k1", "m", 50, 0.0, now)
    assert book.hold_jobs("k1", parts, now) is not None
    assert book.states[1].reserved == 700  # still holding its estimate while it waits

    # Its usage settles it: the first report names it, the others are charged as they are.
    book.settle("batch-c", "k1", "m", 120, 0.1, now)
    book.settle("", "k1", "n", 30, 0.05, now)
    assert (book.states[1].spent, book.states[1].reserved) == (500, 0)
    assert book.states[2].spent == pytest.approx(0.15)
    # A job that ends without running is let go at 0.
    assert book.hold_jobs("k1", [JobHold("ft-d", "m", 400, 0.0)], now) is None
    book.settle("ft-d", "", "", 0.0, 0.0, now)
    assert (book.states[1].spent, book.states[1].reserved) == (500, 0)


def test_a_limiter_that_starts_takes_the_jobs_holds_once():
    from limiter.usage.budgets import JobHold

    book = BudgetBook(UTC)
    now = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    holds = [("k1", [JobHold("batch-a", "m", 600, 0.0)])]
    book.load([rule(limit=1000.0)], {"k1": 7}, {}, now, holds)
    assert book.states[1].reserved == 600
    book.load([rule(limit=1000.0)], {"k1": 7}, {}, now, holds)  # a reload: not taken twice
    assert book.states[1].reserved == 600
    refused = book.hold_jobs("k1", [JobHold("batch-b", "m", 500, 0.0)], now)
    assert refused is not None
    book.settle("batch-a", "k1", "m", 100, 0.0, now)
    assert book.hold_jobs("k1", [JobHold("batch-b", "m", 500, 0.0)], now) is None
