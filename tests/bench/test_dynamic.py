"""Issue 11's benchmark scenarios (bench/dynamic.py): the arithmetic of their figures, the
open-loop schedule, and a tiny run end to end against real servers. Targets are not
asserted on the tiny run: whether they are met is the report's business, on a full run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import dynamic, report
from bench.__main__ import DYNAMIC_END, DYNAMIC_START, END, START, write_report
from bench.openloop import Plan, Stream, schedule

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def record(stream: str, status: int, *, at: float = 0.0, ms: float = 10.0, by: str = "") -> dict:
    return {"stream": stream, "at": at, "status": status, "latency_ms": ms, "limited_by": by}


# --- the figures ------------------------------------------------------------------------------
def test_allowed_integrates_the_lower_of_demand_and_rate_over_the_run() -> None:
    # 60/min is 1 a second, below a demand of 10; 1,200/min is 20 a second, above it.
    series = [[100, 60, 0, 0, 0], [101, 60, 0, 0, 0], [102, 1200, 0, 0, 0], [103, 1200, 0, 0, 0]]
    assert dynamic.allowed(series, start=100.0, seconds=4.0, demand=10.0, floor=60) == 22.0
    # A start half-way through a second counts half of it, and the run's end cuts the last.
    assert dynamic.allowed(series, start=100.5, seconds=2.0, demand=10.0, floor=60) == 6.5


def test_allowed_counts_seconds_before_the_first_sample_at_the_floor() -> None:
    series = [[102, 1200, 0, 0, 0]]  # the model's first request came two seconds in
    assert dynamic.allowed(series, start=100.0, seconds=3.0, demand=10.0, floor=60) == 12.0


def test_samples_outside_the_run_count_for_nothing() -> None:
    series = [[90, 1200, 0, 0, 0], [100, 120, 0, 0, 0], [200, 1200, 0, 0, 0]]
    assert dynamic.allowed(series, start=100.0, seconds=1.0, demand=10.0, floor=60) == 2.0


def test_calls_tell_sluice_refusals_from_togethers_and_rank_latencies_of_successes() -> None:
    records = [
        *(record("b", 200, ms=float(ms)) for ms in range(1, 21)),
        record("b", 429, by="gateway"),
        record("b", 429, by="upstream"),
        record("b", 0),  # no answer
        record("a", 200, ms=999.0),  # another stream
    ]
    b = dynamic.calls(records, "b")
    assert (b.sent, b.ok, b.refused_by_sluice, b.refused_upstream, b.other) == (23, 20, 1, 1, 1)
    assert (b.p50_ms, b.p95_ms) == (10.0, 19.0)
    assert b.success == pytest.approx(20 / 23)


def test_ramp_figures_read_the_tail_and_the_sandboxs_counts() -> None:
    records = [record("ramp", 200 if at >= 5 else 429, at=at, by="gateway") for at in range(10)]
    stats = {
        "dynamic": {
            "models": {
                dynamic.MODEL: {
                    "series": [[t, 600, 0, 0, 0] for t in range(50, 60)],
                    "rate_per_minute": 600,
                    "ok": 5,
                    "status_429": 1,
                    "status_503": 0,
                }
            }
        }
    }
    ramp = dynamic.ramp_figures(
        "learned", {"mono_start": 50.0, "requests": records}, stats, seconds=10, tail_seconds=5
    )
    assert (ramp.demand, ramp.served, ramp.tail_demand, ramp.tail_served) == (10, 5, 5, 5)
    assert ramp.allowed == 100.0  # ten seconds at min(10/s, 600/min)
    assert (ramp.served_of_allowed, ramp.tail_fraction, ramp.goodput) == (0.05, 1.0, 0.5)
    assert ramp.upstream.sent == 6 and ramp.upstream_429_fraction == pytest.approx(1 / 6)
    assert ramp.refused_by_sluice == 5


def test_team_a_calls_in_every_other_window_and_b_is_judged_by_window() -> None:
    size = dynamic.DynamicSize(
        isolation_seconds=80, isolation_windows=4, ramp_seconds=1, tail_seconds=1
    )
    windows = dynamic.a_windows(size)
    assert windows == [(10, 20), (30, 40), (50, 60), (70, 80)]
    records = [record("b", 200, at=at / 2) for at in range(160)]  # 2 a second for 80 s
    beside, alone = dynamic.split_by_windows(records, windows)
    assert len(beside) == len(alone) == 80
    assert {r["at"] for r in beside} >= {10.0, 19.5, 70.0} and 20.0 not in {r["at"] for r in beside}


def test_the_open_loop_schedule_is_even_and_does_not_wait_for_answers() -> None:
    plan = Plan(
        streams=[
            Stream("a", "u", "k", "m", rate=2.0, duration=2.0),
            Stream("b", "u", "k", "m", rate=1.0, duration=2.0, delay=0.25),
        ]
    )
    due = [(at, stream.name) for at, stream in schedule(plan)]
    assert due == [(0.0, "a"), (0.25, "b"), (0.5, "a"), (1.0, "a"), (1.25, "b"), (1.5, "a")]


def test_only_dynamic_rewrites_its_own_part_of_the_page(tmp_path: Path) -> None:
    page = tmp_path / "benchmark.md"
    page.write_text(
        f"{START}\ngateway\n{END}\n\nprose\n\n{DYNAMIC_START}\nold\n{DYNAMIC_END}\ntail\n"
    )
    write_report(page, "new\n", DYNAMIC_START, DYNAMIC_END)
    assert page.read_text() == (
        f"{START}\ngateway\n{END}\n\nprose\n\n{DYNAMIC_START}\nnew\n{DYNAMIC_END}\ntail\n"
    )


# --- end to end ---------------------------------------------------------------------------------
@pytest.mark.usefixtures("migrated_sqlite")
def test_tiny_run_prints_every_row_with_figures_and_baselines(tmp_path: Path) -> None:
    """Every server starts, both scenarios run over real HTTP, and the table has every row."""
    results = dynamic.run(dynamic.TINY, tmp_path, lambda line: None)
    text = report.render_dynamic(
        results, command="python -m bench --only dynamic (tiny)", machine_line="", notes=[]
    )
    rows = {
        cells[1].strip(): cells[2:]
        for line in text.splitlines()
        if line.startswith("| ") and (cells := line.split("|"))
    }
    expected = [
        "Isolation: team B's calls answered 200",
        "Isolation: team B's latency p50 / p95",
        "Isolation: Together's 429s on team A's model",
        "Dynamic ramp: successful answers ÷ ∫ min(demand, the sandbox's rate)",
        "Dynamic ramp: demand answered 200 over the last",
        "Dynamic ramp: Together's 429s ÷ requests Sluice sent upstream",
        "Dynamic ramp: goodput",
        "Dynamic ramp: the sandbox's rate at the end",
    ]
    for prefix in expected:
        name = next((n for n in rows if n.startswith(prefix)), None)
        assert name is not None, f"missing row {prefix!r}"
        sluice, baseline = rows[name][0], rows[name][1]
        assert NUMBER.findall(sluice) and "n/a" not in sluice, f"{name}: {sluice!r}"
        assert NUMBER.findall(baseline), f"{name}: no baseline in {baseline!r}"
    isolation = results.isolation
    assert isolation is not None
    # Team B sent its whole demand, half of it while team A called the tiny model.
    half = dynamic.TINY.isolation_seconds / 2
    assert isolation.alone.sent == isolation.beside.sent == round(dynamic.B_RATE * half)
    assert isolation.tiny.sent == round(dynamic.A_RATE * half) and isolation.tiny_upstream.sent >= 1
    for ramp in results.ramps.values():
        assert ramp.demand == round(dynamic.DEMAND * dynamic.TINY.ramp_seconds)
        assert ramp.upstream.sent >= 1 and ramp.allowed > 0
