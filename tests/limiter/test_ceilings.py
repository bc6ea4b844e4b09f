"""Issue 11: a model's pace, learned from Together's answers. Time is passed in."""

from __future__ import annotations

import pytest

from limiter.authority.ceilings import MIN_MARGIN, QUIET_SECONDS, STEP_SECONDS, Ceiling
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
    model.refused(0.0, error_type="dynamic_request_limited", margin=MARGIN)
    assert (model.pace, model.token_pace, model.source) == (250, 60_000, "429")
    model.refused(1.0, error_type="dynamic_token_limited", margin=MARGIN)
    assert (model.pace, model.token_pace) == (250, 30_000)


def test_the_pace_rises_step_by_step_only_with_demand_and_after_quiet() -> None:
    model = ceiling()
    model.refused(0.0, error_type="dynamic_request_limited", margin=MARGIN)  # 250
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
    model.refused(0.0, error_type="dynamic_request_limited", margin=MARGIN)  # 81
    for step in range(30):
        model.ramp(QUIET_SECONDS + step * STEP_SECONDS, demand=True, margin=MARGIN)
    assert model.pace == pytest.approx(176.4)  # 180 less the narrowest margin, 2%


def test_a_step_is_a_tenth_of_what_the_headers_allow_not_of_the_cap() -> None:
    """A model Together allows 6 a minute, under a 1,200/min cap, climbs back from a 429 in
    steps of a tenth of its ceiling (5.4), not to the ceiling in one step of 120."""
    model = Ceiling.start(Limit(per_minute=1200, burst=1))
    model.observe({"x-ratelimit-limit-dynamic": "0.1"}, unit_seconds=1.0, margin=MARGIN)
    assert model.pace == pytest.approx(5.4)
    model.refused(0.0, error_type="dynamic_request_limited", margin=MARGIN)
    assert model.pace == pytest.approx(2.7)
    paces = []
    for step in range(8):
        model.ramp(QUIET_SECONDS + step * STEP_SECONDS, demand=True, margin=MARGIN)
        paces.append(model.pace)
    assert paces[:5] == pytest.approx([3.24, 3.78, 4.32, 4.86, 5.4])  # + 0.54 each time
    # Then at the headers less the margin, which narrows a point a step.
    assert paces[5:] == pytest.approx([5.46, 5.52, 5.58])


def test_headers_that_rise_let_the_pace_follow_with_demand_never_past_them() -> None:
    """Together's dynamic rate grows with recent success: each rise the headers report lets
    the pace climb towards it (less the margin), one step at a time."""
    model = Ceiling.start(Limit(per_minute=1200, burst=1))
    model.observe({"x-ratelimit-limit-dynamic": "1"}, unit_seconds=1.0, margin=MARGIN)  # 60/min
    assert model.pace == pytest.approx(54)
    model.observe({"x-ratelimit-limit-dynamic": "2"}, unit_seconds=1.0, margin=MARGIN)  # 120/min
    assert model.pace == pytest.approx(54)  # a higher report alone raises nothing
    assert model.ramp(0.0, demand=True, margin=MARGIN)
    assert model.pace == pytest.approx(64.8)  # + a tenth of 108
    for step in range(1, 5):
        model.ramp(step * STEP_SECONDS, demand=True, margin=MARGIN)
    assert model.pace == pytest.approx(108)  # at the headers less the margin
    for step in range(5, 30):  # which then narrows, to 2%
        model.ramp(step * STEP_SECONDS, demand=True, margin=MARGIN)
    assert model.pace == pytest.approx(117.6)


def test_a_429_that_states_the_limit_widens_the_margin_instead_of_halving() -> None:
    """Together's 429 carrying the limit it enforces says our calls reached it closer
    together than granted (jitter), not that the ceiling halved: the pace goes to that
    limit less a doubled margin."""
    model = Ceiling.start(Limit(per_minute=1200, burst=1))
    stated = {"x-ratelimit-limit": "5", "x-ratelimit-limit-dynamic": "5"}  # 300 a minute
    model.observe(stated, unit_seconds=1.0, margin=MARGIN)
    for step in range(8):  # clean under demand: the margin narrows to 2%
        model.ramp(step * STEP_SECONDS, demand=True, margin=MARGIN)
    assert model.margin_in_use(MARGIN) == pytest.approx(MIN_MARGIN)
    assert model.pace == pytest.approx(294)
    model.observe(stated, unit_seconds=1.0, margin=MARGIN)
    model.refused(20.0, error_type="dynamic_request_limited", margin=MARGIN, headers=stated)
    assert model.margin_in_use(MARGIN) == pytest.approx(0.04)
    assert (model.pace, model.source) == (pytest.approx(288), "429")
    for when in (21.0, 22.0):  # again: 8%, then never past the configured 10%
        model.refused(when, error_type="dynamic_request_limited", margin=MARGIN, headers=stated)
    assert model.margin_in_use(MARGIN) == pytest.approx(MARGIN)
    assert model.pace == pytest.approx(270)


def test_a_429_at_a_lower_stated_limit_paces_at_it_not_at_half() -> None:
    """The ceiling moved down (420 to 240 a minute): the 429's headers say so, and the pace
    is the new limit less the widened margin."""
    model = Ceiling.start(Limit(per_minute=420, burst=1))
    model.observe({"x-ratelimit-limit-dynamic": "7"}, unit_seconds=1.0, margin=MARGIN)
    assert model.pace == pytest.approx(378)
    dropped = {"x-ratelimit-limit": "4", "x-ratelimit-limit-dynamic": "4"}
    model.observe(dropped, unit_seconds=1.0, margin=MARGIN)
    model.refused(0.0, error_type="dynamic_request_limited", margin=MARGIN, headers=dropped)
    assert model.pace == pytest.approx(216)  # 240 less 10%; halving gave 108


def test_a_token_429_that_states_the_token_limit_widens_the_margin() -> None:
    model = ceiling()
    stated = {"x-tokenlimit-limit": "500"}  # 30,000 a minute -> 27,000
    model.observe(stated, unit_seconds=1.0, margin=MARGIN)
    model.refused(0.0, error_type="dynamic_token_limited", margin=MARGIN, headers=stated)
    assert model.token_pace == pytest.approx(27_000) and model.pace == 500


def test_the_margin_narrows_only_at_the_top_under_demand_after_quiet_and_where_it_binds() -> None:
    model = Ceiling.start(Limit(per_minute=1200, burst=1))
    model.observe({"x-ratelimit-limit": "5"}, unit_seconds=1.0, margin=MARGIN)  # 300 -> 270
    assert not model.ramp(0.0, demand=False, margin=MARGIN)  # nobody waits
    assert model.ramp(0.0, demand=True, margin=MARGIN)
    assert model.margin_in_use(MARGIN) == pytest.approx(0.09) and model.pace == pytest.approx(273)
    assert not model.ramp(STEP_SECONDS / 2, demand=True, margin=MARGIN)  # one step at a time
    model.refused(1.0, error_type="dynamic_request_limited", margin=MARGIN, headers={})
    assert model.pace == pytest.approx(136.5)  # no limit stated: halved, margin kept
    assert model.margin_in_use(MARGIN) == pytest.approx(0.09)
    assert not model.ramp(QUIET_SECONDS, demand=True, margin=MARGIN)  # too soon after a 429
    # Without a stated limit there is no margin to narrow; under a lower cap, none binds.
    unknown = Ceiling.start(Limit(per_minute=300, burst=1))
    assert not unknown.ramp(0.0, demand=True, margin=MARGIN)
    capped = Ceiling.start(Limit(per_minute=250, burst=1))
    capped.observe({"x-ratelimit-limit": "5"}, unit_seconds=1.0, margin=MARGIN)
    assert not capped.ramp(0.0, demand=True, margin=MARGIN)
    assert capped.margin_in_use(MARGIN) == MARGIN and capped.pace == 250
