"""Issue 11: a model's pace, learned from Together's answers. Time is passed in."""

from __future__ import annotations

import pytest

from limiter.authority.ceilings import QUIET_SECONDS, STEP_SECONDS, Ceiling
from limiter.authority.engine import Limit

PROFILE = Limit(per_minute=500, burst=1, tokens_per_minute=60_000)
MARGIN = 0.1


def ceiling() -> Ceiling:
    return Ceiling.start(PROFILE)


def test_the_profile_is_the_starting_point_and_the_cap() -> None:
    model = ceiling()
    assert (model.pace, model.token_pace, model.source) == (500, 60_000, "profile")
    assert model.limit() == PROFILE


def test_headers_lower_the_pace_to_the_learned_limit_less_the_margin() -> None:
    model = ceiling()
    assert model.observe({"x-ratelimit-limit": "2"}, unit_seconds=1.0, margin=MARGIN)  # 120/min
    assert model.pace == pytest.approx(108) and model.source == "headers"
    # The dynamic variant wins, fractional values read (6 a minute is 0.1 a second).
    model.observe(
        {"x-ratelimit-limit": "1", "x-ratelimit-limit-dynamic": "0.1"},
        unit_seconds=1.0,
        margin=MARGIN,
    )
    assert model.learned == pytest.approx(6) and model.pace == pytest.approx(5.4)


def test_headers_never_raise_the_pace_above_the_profile_cap() -> None:
    model = ceiling()
    assert not model.observe(
        {"x-ratelimit-limit": "100"}, unit_seconds=1.0, margin=MARGIN
    )  # 6,000/min
    assert model.pace == 500


@pytest.mark.parametrize("value", ["", "soon", "-3", "nan", "inf", "0"])
def test_odd_header_values_are_ignored(value) -> None:
    model = ceiling()
    assert not model.observe({"x-ratelimit-limit": value}, unit_seconds=1.0, margin=MARGIN)
    assert (model.pace, model.learned) == (500, None)


def test_a_minute_unit_is_a_setting() -> None:
    model = ceiling()
    model.observe({"x-ratelimit-limit": "300"}, unit_seconds=60.0, margin=MARGIN)
    assert model.learned == 300 and model.pace == pytest.approx(270)


def test_token_headers_lower_the_token_pace() -> None:
    model = ceiling()
    model.observe({"x-tokenlimit-limit": "500"}, unit_seconds=1.0, margin=MARGIN)  # 30,000/min
    assert model.token_pace == pytest.approx(27_000) and model.pace == 500


def test_a_429_halves_the_request_pace_and_a_token_429_the_token_pace() -> None:
    model = ceiling()
    model.refused(0.0, error_type="dynamic_request_limited")
    assert (model.pace, model.token_pace, model.source) == (250, 60_000, "429")
    model.refused(1.0, error_type="dynamic_token_limited")
    assert (model.pace, model.token_pace) == (250, 30_000)


def test_the_pace_rises_step_by_step_only_with_demand_and_after_quiet() -> None:
    model = ceiling()
    model.refused(0.0, error_type="dynamic_request_limited")  # 250
    assert not model.ramp(QUIET_SECONDS - 1, demand=True, margin=MARGIN)  # too soon after a 429
    assert not model.ramp(QUIET_SECONDS, demand=False, margin=MARGIN)  # nobody waits
    assert model.ramp(QUIET_SECONDS, demand=True, margin=MARGIN)
    assert model.pace == pytest.approx(300)  # + a tenth of the cap: additive
    assert not model.ramp(
        QUIET_SECONDS + STEP_SECONDS / 2, demand=True, margin=MARGIN
    )  # one step at a time
    for step in range(1, 20):
        model.ramp(QUIET_SECONDS + step * STEP_SECONDS, demand=True, margin=MARGIN)
    assert model.pace == 500  # never above the cap


def test_the_pace_never_rises_above_what_the_headers_report() -> None:
    model = ceiling()
    model.observe({"x-ratelimit-limit": "3"}, unit_seconds=1.0, margin=MARGIN)  # 180/min -> 162
    model.refused(0.0, error_type="dynamic_request_limited")  # 81
    for step in range(30):
        model.ramp(QUIET_SECONDS + step * STEP_SECONDS, demand=True, margin=MARGIN)
    assert model.pace == pytest.approx(162)


def test_a_step_is_a_tenth_of_what_the_headers_allow_not_of_the_cap() -> None:
    """A model Together allows 6 a minute, under a 1,200/min cap, climbs back from a 429 in
    steps of a tenth of its ceiling (5.4), not to the ceiling in one step of 120."""
    model = Ceiling.start(Limit(per_minute=1200, burst=1))
    model.observe({"x-ratelimit-limit-dynamic": "0.1"}, unit_seconds=1.0, margin=MARGIN)
    assert model.pace == pytest.approx(5.4)
    model.refused(0.0, error_type="dynamic_request_limited")
    assert model.pace == pytest.approx(2.7)
    paces = []
    for step in range(8):
        model.ramp(QUIET_SECONDS + step * STEP_SECONDS, demand=True, margin=MARGIN)
        paces.append(model.pace)
    assert paces[:5] == pytest.approx([3.24, 3.78, 4.32, 4.86, 5.4])  # + 0.54 each time
    assert paces[5:] == pytest.approx([5.4] * 3)  # then held at the headers less the margin


def test_headers_that_rise_let_the_pace_follow_with_demand_never_past_them() -> None:
    """Together's dynamic rate grows with recent success: each rise the headers report lets
    the pace climb towards it (less the margin), one step at a time."""
    model = Ceiling.start(Limit(per_minute=1200, burst=1))
    model.observe({"x-ratelimit-limit-dynamic": "1"}, unit_seconds=1.0, margin=MARGIN)  # 60/min
    assert model.pace == pytest.approx(54)
    assert not model.ramp(0.0, demand=True, margin=MARGIN)  # already at the ceiling
    model.observe({"x-ratelimit-limit-dynamic": "2"}, unit_seconds=1.0, margin=MARGIN)  # 120/min
    assert model.pace == pytest.approx(54)  # a higher report alone raises nothing
    assert model.ramp(0.0, demand=True, margin=MARGIN)
    assert model.pace == pytest.approx(64.8)  # + a tenth of 108
    for step in range(1, 10):
        model.ramp(step * STEP_SECONDS, demand=True, margin=MARGIN)
    assert model.pace == pytest.approx(108)
