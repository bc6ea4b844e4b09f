"""Together's dynamic limits, in process with a fake clock (no sleeping), and once over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from sandbox import DynamicLimits, SandboxApp, SandboxConfig, SandboxState, ThreadedSandbox
from sandbox.dynamic import REQUEST_LIMITED, TOKEN_LIMITED, DynamicDecision

from .conftest import CHAT_MODEL, FakeClock, chat_body, post_json

OTHER_MODEL = "Qwen/Qwen2.5-7B-Instruct-Turbo"
IMAGE_MODEL = "black-forest-labs/FLUX.1-schnell"
DYNAMIC_HEADERS = (
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-limit-dynamic",
    "x-ratelimit-remaining-dynamic",
)
TOKEN_HEADERS = (
    "x-tokenlimit-limit",
    "x-tokenlimit-remaining",
    "x-tokenlimit-limit-dynamic",
    "x-tokenlimit-remaining-dynamic",
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def dynamic_state(clock: FakeClock, **limits: Any) -> SandboxState:
    config = SandboxConfig(dynamic=DynamicLimits(**{"window_seconds": 60, **limits}))
    return SandboxState(config, clock=clock)


def dynamic_app(clock: FakeClock, **limits: Any) -> SandboxApp:
    app = SandboxApp()
    app.state = dynamic_state(clock, **limits)
    return app


def send(
    state: SandboxState, model: str = CHAT_MODEL, *, key: str = "k", tokens: int = 10
) -> DynamicDecision:
    """One request through the limiter, settled as a success when admitted."""
    decision = state.dynamic_admit(key=key, kind="chat", model=model, tokens=tokens)
    if decision.allowed:
        state.dynamic_settle(key=key, model=model, tokens=tokens, status=200)
    return decision


def steady(state: SandboxState, clock: FakeClock, seconds: int, per_second: int) -> None:
    """`per_second` requests at the start of each of the next `seconds` seconds, all admitted."""
    for _ in range(seconds):
        assert all(send(state).allowed for _ in range(per_second))
        clock.now += 1


# --- the rate -----------------------------------------------------------------------------


def test_floor_at_start_is_one_request_a_second(clock: FakeClock) -> None:
    state = dynamic_state(clock)
    first = send(state)
    clock.now += 0.25
    refused = send(state)
    clock.now += 0.75
    again = send(state)

    assert (first.allowed, first.requests.per_second, first.requests.per_minute) == (True, 1, 60)
    assert (first.requests.remaining, first.reset) == (0, 1.0)
    assert (refused.allowed, refused.error_type, refused.reset) == (False, REQUEST_LIMITED, 0.75)
    assert refused.retry_after == 1
    assert again.allowed


def test_rate_grows_to_twice_the_successful_rate_and_decays_back(clock: FakeClock) -> None:
    state = dynamic_state(clock)
    steady(state, clock, 60, per_second=1)  # 60 a minute succeeded over the 60 s window

    # The window (100, 160] holds the 59 successes sent at 101..159.
    grown = send(state)
    assert (grown.requests.per_minute, grown.requests.per_second) == (2 * 59, 2)
    assert send(state).allowed  # a second request in the same second now fits

    clock.now += 61  # every success has left the window
    assert send(state).requests.per_minute == 60


def test_rate_stops_at_the_cap(clock: FakeClock) -> None:
    state = dynamic_state(clock, cap_per_minute=240)
    for _ in range(240):  # send whatever the limit allows, each second, for four windows
        while send(state).allowed:
            pass
        clock.now += 1
    decision = send(state)
    assert (decision.requests.per_minute, decision.requests.per_second) == (240, 4)


def test_model_cap_by_glob_wins_over_the_floor_and_holds_per_minute(clock: FakeClock) -> None:
    state = dynamic_state(clock, model_caps={"black-forest-labs/FLUX*": 6})
    admitted = []
    for _ in range(20):  # one a second: the per-second share allows it, the minute does not
        admitted.append(send(state, IMAGE_MODEL).allowed)
        clock.now += 1
    assert admitted == [True] * 6 + [False] * 14

    clock.now = 160.0  # the first admission (t=100) has just left the minute
    decision = send(state, IMAGE_MODEL)
    assert (decision.allowed, decision.requests.per_second, decision.requests.per_minute) == (
        True,
        1,
        6,
    )
    # Other models keep the floor.
    assert send(state, CHAT_MODEL).requests.per_minute == 60


def test_a_burst_beyond_the_per_second_share_is_refused(clock: FakeClock) -> None:
    state = dynamic_state(clock, floor_per_minute=180)
    burst = [send(state) for _ in range(5)]
    assert [d.allowed for d in burst] == [True, True, True, False, False]
    assert {d.error_type for d in burst[3:]} == {REQUEST_LIMITED}
    clock.now += 1
    assert send(state).allowed


def jittered_arrivals(state: SandboxState, clock: FakeClock) -> list[bool]:
    """Grants 210 ms apart (95% of 300 a minute); one call in every 25 reaches the sandbox
    60 ms late, the next ones on time: whether each was admitted."""
    start, admitted = clock.now, []
    arrivals = sorted(start + i * 0.21 + (0.06 if i % 25 == 0 else 0.0) for i in range(200))
    for at in arrivals:
        clock.now = at
        admitted.append(send(state).allowed)
    return admitted


def test_the_strict_window_refuses_jitter_at_95_percent_and_the_cushion_does_not(
    clock: FakeClock,
) -> None:
    """5 in any 1 s window: a call 60 ms late and the call five grants on, on time, are 1.05 -
    0.06 = 0.99 s apart, so the window refuses; a one-second cushion (GCRA) lets the late
    call's room go to the next. Both hold the rate over time."""
    strict = jittered_arrivals(dynamic_state(clock, floor_per_minute=300), clock)
    assert strict.count(False) == 7  # every late call but the first, whose window was short
    cushion = jittered_arrivals(
        dynamic_state(clock, floor_per_minute=300, enforcement="cushion"), clock
    )
    assert cushion.count(False) == 0


def test_the_cushion_allows_a_seconds_burst_then_the_rate(clock: FakeClock) -> None:
    state = dynamic_state(clock, floor_per_minute=300, enforcement="cushion")
    burst = [send(state) for _ in range(6)]
    assert [d.allowed for d in burst] == [True] * 5 + [False]
    assert [d.requests.remaining for d in burst[:5]] == [4, 3, 2, 1, 0]
    assert burst[5].reset == pytest.approx(0.2)  # one refills every 200 ms
    clock.now += 0.2
    assert send(state).allowed and not send(state).allowed
    admitted = 0
    for _ in range(100):  # offered 10 a second for 10 s: the rate (5 a second) passes
        clock.now += 0.1
        admitted += send(state).allowed
    assert admitted == 50


def test_a_dropped_whole_per_second_limit_allows_its_new_rate_at_once(clock: FakeClock) -> None:
    """420 a minute for a minute, then the cap drops to 240: 4 a second from the next second,
    not nothing until the last minute's 420 admissions are under 240."""
    state = dynamic_state(clock, floor_per_minute=420, cap_per_minute=420)
    steady(state, clock, 60, per_second=7)
    state.configure({"dynamic": {"model_caps": {CHAT_MODEL: 240}}})
    second = [send(state) for _ in range(5)]
    assert [d.allowed for d in second] == [True] * 4 + [False]
    assert second[0].requests.per_second == 4 and second[4].reset == pytest.approx(1.0)


def test_models_are_limited_independently(clock: FakeClock) -> None:
    state = dynamic_state(clock)
    assert send(state, CHAT_MODEL).allowed
    assert not send(state, CHAT_MODEL).allowed
    assert send(state, OTHER_MODEL).allowed


def test_keys_share_a_budget_unless_per_key(clock: FakeClock) -> None:
    shared = dynamic_state(clock)
    assert send(shared, key="team-a").allowed
    assert not send(shared, key="team-b").allowed  # Together limits the organisation

    separate = dynamic_state(clock, per_key=True)
    assert send(separate, key="team-a").allowed
    assert send(separate, key="team-b").allowed


def test_token_limit_refuses_with_its_own_type(clock: FakeClock) -> None:
    state = dynamic_state(clock, floor_per_minute=600, tokens_floor_per_minute=1200)
    first = send(state, tokens=15)  # 20 tokens a second
    clock.now += 0.5
    refused = send(state, tokens=15)
    assert first.tokens is not None and refused.tokens is not None
    assert (first.tokens.per_second, first.tokens.remaining) == (20, 5)
    assert (first.tokens.per_minute, first.tokens.remaining_minute) == (1200, 1185)
    assert (refused.allowed, refused.error_type, refused.reset) == (False, TOKEN_LIMITED, 0.5)
    assert refused.requests.remaining > 0  # requests were not the problem
    assert send(state, tokens=5).allowed  # what is left still fits


def test_a_request_bigger_than_a_seconds_tokens_waits_for_an_empty_second(
    clock: FakeClock,
) -> None:
    state = dynamic_state(clock, floor_per_minute=600, tokens_floor_per_minute=600)
    assert send(state, tokens=5).allowed
    clock.now += 0.5
    assert send(state, tokens=50).error_type == TOKEN_LIMITED
    clock.now += 0.5
    assert send(state, tokens=50).allowed


def test_token_rate_grows_with_successful_tokens_up_to_its_cap(clock: FakeClock) -> None:
    state = dynamic_state(
        clock, floor_per_minute=600, tokens_floor_per_minute=600, tokens_cap_per_minute=900
    )
    for _ in range(60):
        assert send(state, tokens=10).allowed  # the whole per-second share, every second
        clock.now += 1
    decision = send(state, tokens=1)
    assert decision.tokens is not None
    assert decision.tokens.per_minute == 900  # 2 x 590 tokens a minute, capped


# --- configuration ------------------------------------------------------------------------


def test_dynamic_mode_is_off_by_default_and_configured_as_a_patch(clock: FakeClock) -> None:
    state = SandboxState(clock=clock)
    assert state.config.dynamic is None
    assert state.stats()["dynamic"] is None

    merged = state.configure({"dynamic": {"window_seconds": 30, "model_caps": {"a/*": 9}}})
    assert merged["dynamic"]["floor_per_minute"] == 60
    assert (merged["dynamic"]["window_seconds"], merged["dynamic"]["model_caps"]) == (
        30,
        {"a/*": 9},
    )
    merged = state.configure({"dynamic": {"cap_per_minute": 300}})
    assert (merged["dynamic"]["window_seconds"], merged["dynamic"]["cap_per_minute"]) == (30, 300)
    assert state.configure({"dynamic": None})["dynamic"] is None


@pytest.mark.parametrize(
    ("patch", "error"),
    [
        ({"floor_per_minute": 0}, "floor_per_minute must be positive"),
        ({"model_caps": {"x/*": -1}}, "model_caps"),
        ({"capacity_503_rate": 2}, "capacity_503_rate"),
        ({"tokens_cap_per_minute": 100}, "needs tokens_floor_per_minute"),
        ({"floor": 60}, "Unknown dynamic limit field"),
        ({"enforcement": "leaky"}, "enforcement must be one of window, cushion"),
    ],
)
def test_dynamic_config_is_loud_when_wrong(
    clock: FakeClock, patch: dict[str, object], error: str
) -> None:
    state = SandboxState(clock=clock)
    with pytest.raises(ValueError, match=error):
        state.configure({"dynamic": patch})
    assert state.config.dynamic is None


# --- answers: headers, bodies, 503s -------------------------------------------------------


async def test_headers_on_successes_and_429s_agree(clock: FakeClock) -> None:
    app = dynamic_app(clock, floor_per_minute=120)
    answers = [await post_json(app, "/v1/chat/completions", chat_body()) for _ in range(3)]
    (s1, h1, _), (s2, h2, _), (s3, h3, body) = answers

    assert (s1, s2, s3) == (200, 200, 429)
    for headers in (h1, h2, h3):
        assert all(name in headers for name in DYNAMIC_HEADERS)
        assert (headers["x-ratelimit-limit"], headers["x-ratelimit-limit-dynamic"]) == ("2", "2")
    assert [h["x-ratelimit-remaining"] for h in (h1, h2, h3)] == ["1", "0", "0"]
    assert [h["x-ratelimit-remaining-dynamic"] for h in (h1, h2, h3)] == [
        "1.9833",
        "1.9667",
        "1.9667",
    ]  # per second: 119, 118 a minute
    # Reset is 0 while a slot is free, else the wait for one; the 429 adds Retry-After.
    assert [h["x-ratelimit-reset"] for h in (h1, h2, h3)] == ["0.000", "1.000", "1.000"]
    assert h3["retry-after"] == "1"
    assert "retry-after" not in h1
    assert body == {
        "error": {
            "message": (
                "You have exceeded the dynamic request rate limit of 2 requests per second "
                f"(120 per minute) for model {CHAT_MODEL}. Retry in 1.00 seconds."
            ),
            "type": "dynamic_request_limited",
            "param": None,
            "code": None,
        }
    }


async def test_token_headers_and_dynamic_token_limited_body(clock: FakeClock) -> None:
    app = dynamic_app(clock, floor_per_minute=600, tokens_floor_per_minute=1800)  # 30 a second
    ok_status, ok_headers, _ = await post_json(
        app, "/v1/chat/completions", chat_body(max_tokens=16)
    )  # 3 prompt + 16 completion tokens
    clock.now += 0.2
    status, headers, body = await post_json(app, "/v1/chat/completions", chat_body(max_tokens=16))

    assert (ok_status, status) == (200, 429)
    assert all(name in ok_headers and name in headers for name in TOKEN_HEADERS)
    assert (ok_headers["x-tokenlimit-limit"], ok_headers["x-tokenlimit-remaining"]) == ("30", "11")
    assert ok_headers["x-tokenlimit-limit-dynamic"] == "30"
    assert ok_headers["x-tokenlimit-remaining-dynamic"] == "29.6833"  # 1,781 a minute
    assert body["error"]["type"] == "dynamic_token_limited"
    assert "30 tokens per second" in body["error"]["message"]
    assert (headers["x-ratelimit-reset"], headers["retry-after"]) == ("0.800", "1")


async def test_capacity_503s_come_at_the_configured_rate_below_the_limit(
    clock: FakeClock,
) -> None:
    app = dynamic_app(clock, floor_per_minute=6000, cap_per_minute=6000, capacity_503_rate=0.25)
    statuses = []
    for _ in range(400):  # 20 a second, well below 100 a second
        status, headers, _ = await post_json(
            app, "/v1/embeddings", {"model": "BAAI/bge-base-en-v1.5", "input": "x"}
        )
        statuses.append(status)
        assert "x-ratelimit-limit-dynamic" in headers
        clock.now += 0.05

    assert set(statuses) == {200, 503}
    assert 70 <= statuses.count(503) <= 130  # seeded, so the same every run
    stats = app.state.stats()["dynamic"]["models"]["BAAI/bge-base-en-v1.5"]
    assert (stats["ok"], stats["status_503"], stats["status_429"]) == (
        statuses.count(200),
        statuses.count(503),
        0,
    )


async def test_one_models_exhaustion_does_not_refuse_another(clock: FakeClock) -> None:
    app = dynamic_app(clock)
    codes = [(await post_json(app, "/v1/chat/completions", chat_body()))[0] for _ in range(3)]
    other, _, _ = await post_json(app, "/v1/chat/completions", chat_body(model=OTHER_MODEL))
    assert (codes, other) == ([200, 429, 429], 200)


async def test_dynamic_mode_replaces_the_per_kind_limits(clock: FakeClock) -> None:
    app = dynamic_app(clock, floor_per_minute=600)
    app.state.configure({"limits": {"chat": {"requests_per_second": 1}}})
    codes = [(await post_json(app, "/v1/chat/completions", chat_body()))[0] for _ in range(3)]
    assert codes == [200, 200, 200]
    assert len(app.state.stats()["chat"]["admitted_times"]) == 3


# --- stats ------------------------------------------------------------------------------


def test_stats_series_samples_each_second(clock: FakeClock) -> None:
    state = dynamic_state(clock)
    clock.now = 100.2
    send(state)
    send(state)  # 429
    clock.now = 101.5
    decision = state.dynamic_admit(key="k", kind="chat", model=CHAT_MODEL, tokens=1)
    state.dynamic_settle(key="k", model=CHAT_MODEL, tokens=1, status=503)
    assert decision.allowed
    clock.now = 104.0

    stats = state.stats()["dynamic"]
    model = stats["models"][CHAT_MODEL]
    assert (stats["now"], stats["window_seconds"]) == (104.0, 60)
    # [t, rate_per_minute, admitted, refused_429, refused_503]; one success at 100.2 in a 60 s
    # window is 2 a minute, so the floor holds.
    assert model["series"] == [
        [100, 60, 1, 1, 0],
        [101, 60, 1, 0, 1],
        [102, 60, 0, 0, 0],
        [103, 60, 0, 0, 0],
    ]
    assert (model["rate_per_minute"], model["ok"], model["status_429"], model["status_503"]) == (
        60,
        1,
        1,
        1,
    )
    assert model["token_rate_per_minute"] is None


def test_series_shows_the_rate_rising_and_stays_bounded(clock: FakeClock) -> None:
    state = dynamic_state(clock, window_seconds=10, floor_per_minute=6, cap_per_minute=6000)
    clock.now = 100.0
    steady(state, clock, 1100, per_second=1)

    series = state.stats()["dynamic"]["models"][CHAT_MODEL]["series"]
    assert len(series) == 1000
    assert series[-1][0] == 1199
    # A success a second over 10 s is 60 a minute: the rate settles at twice that.
    assert {sample[1] for sample in series} == {120}
    assert all(sample[2:] == [1, 0, 0] for sample in series)


def test_series_has_no_gap_after_a_long_idle(clock: FakeClock) -> None:
    state = dynamic_state(clock, window_seconds=10, floor_per_minute=6)
    clock.now = 100.0
    steady(state, clock, 10, per_second=1)  # 10 successes: 2 x 60 a minute
    clock.now = 5000.0
    send(state)
    series = state.stats()["dynamic"]["models"][CHAT_MODEL]["series"]
    assert [t for t, *_ in series] == list(range(4000, 5000))
    assert all(rate == 6 for _, rate, *_ in series)  # decayed to the floor while idle


# --- over real HTTP ---------------------------------------------------------------------


def test_dynamic_limits_over_http_and_the_control_endpoint(
    sandbox: ThreadedSandbox, client: httpx.Client
) -> None:
    control = f"{sandbox.url}/sandbox/control"
    config = httpx.post(
        control,
        json={"dynamic": {"window_seconds": 60, "model_caps": {"black-forest-labs/FLUX*": 6}}},
    )
    assert config.status_code == 200
    assert config.json()["dynamic"]["model_caps"] == {"black-forest-labs/FLUX*": 6}
    assert httpx.post(control, json={"dynamic": {"floor_per_minute": -1}}).status_code == 400

    # The floor is one a second, for every key of the organisation together.
    answers = [client.post("/chat/completions", json=chat_body()) for _ in range(2)]
    other_key = client.post(
        "/chat/completions", json=chat_body(), headers={"Authorization": "Bearer other"}
    )
    other_model = client.post("/chat/completions", json=chat_body(model=OTHER_MODEL))
    assert [r.status_code for r in (*answers, other_key, other_model)] == [200, 429, 429, 200]

    ok, refused = answers
    assert all(name in ok.headers and name in refused.headers for name in DYNAMIC_HEADERS)
    assert (ok.headers["x-ratelimit-limit"], ok.headers["x-ratelimit-limit-dynamic"]) == ("1", "1")
    assert refused.json()["error"]["type"] == "dynamic_request_limited"
    assert 0 < float(refused.headers["x-ratelimit-reset"]) <= 1
    assert refused.headers["retry-after"] == "1"

    stats = httpx.get(f"{sandbox.url}/sandbox/stats").json()["dynamic"]
    chat = stats["models"][CHAT_MODEL]
    assert (chat["rate_per_minute"], chat["ok"], chat["status_429"]) == (60, 1, 2)
    assert stats["models"][OTHER_MODEL]["ok"] == 1

    assert httpx.post(control, json={"dynamic": None}).json()["dynamic"] is None
    assert client.post("/chat/completions", json=chat_body()).status_code == 200
