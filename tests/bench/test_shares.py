"""bench/shares.py's arithmetic on made-up answers: grants are counted at their moment (due
plus queue wait), prod's return is its first call after the pause, and the table shows
both runs side by side."""

from __future__ import annotations

from bench import shares


def record(stream: str, at: float, queued_ms: float = 0.0, status: int = 200) -> dict:
    return {"stream": stream, "at": at, "status": status, "queued_ms": queued_ms}


def test_figures_count_grants_at_their_moment_and_prods_return():
    requests = [
        record("prod", 10.0, 100.0),
        record("prod", 20.0, 300.0),
        record("prod", 71.0, 120.0),
        record("prod", 72.0, status=429),
        # Due before the steady window, granted inside it: counted.
        record("dev", 9.5, 1000.0),
        record("exp", 39.9, 500.0),  # granted after the window: not counted
        record("dev", 50.0),
    ]
    stats = {"dynamic": {"models": {shares.MODEL: {"ok": 5, "status_429": 1, "status_503": 0}}}}
    figures = shares.figures({"requests": requests}, stats)
    assert figures["prod_200"] == 3 / 4
    assert figures["prod_p95_wait_ms"] == 300.0
    assert figures["prod_return_wait_ms"] == 120.0
    assert figures["steady_use"] == 3 / (5 * 30)  # two prod, one dev in [10, 40)
    assert figures["exp_over_dev"] == 0.0
    assert (figures["upstream_429"], figures["upstream_sent"]) == (1, 6)
    assert figures["upstream_429_at"] == []  # no series: no second to name
    text = shares.table({"on": figures, "off": figures})
    assert "| prod answered 200 | 75.0% | 75.0% |" in text
    assert "| Together's (sandbox's) 429s / sent | 1 / 6 | 1 / 6 |" in text


def test_moving_ceiling_windows_hold_prod_to_min_of_demand_and_its_share_of_the_ceiling():
    from bench import shares_moving as moving

    origin = 1000.0
    # The sandbox's rate: 300 a minute (5 a second) until 60 s, then 120 (2 a second).
    series = [[origin + t, 300 if t < 60 else 120, 0, 0, 0] for t in range(-1, 91)]
    series[62][3] = 2  # two upstream 429s in the second [61, 62)
    requests = []
    for second in range(30, 90):
        requests += [record("prod", second + 0.1), record("prod", second + 0.6)]  # 2 a second
    # prod's 429 in [40, 50) and a grant pushed out of [80, 90) by its queue wait.
    requests[25]["status"] = 429
    requests[-1]["queued_ms"] = 600.0
    result = {"mono_start": origin, "requests": requests}
    stats = {
        "dynamic": {
            "models": {shares.MODEL: {"series": series, "ok": 9, "status_429": 1, "status_503": 0}}
        }
    }
    figures = moving.moving_figures(result, stats)
    rows = figures["windows"]
    assert [r["start"] for r in rows] == [30.0, 40.0, 50.0, 60.0, 70.0, 80.0]
    assert [r["demand"] for r in rows] == [20] * 6
    assert [r["granted"] for r in rows] == [20, 19, 20, 20, 20, 19]
    assert [r["ceiling"] for r in rows] == [50.0, 50.0, 50.0, 20.0, 20.0, 20.0]
    # Before the drop prod should get all it asks (20 < 60% of 45 usable); after it 60%
    # of 18 usable (10.8) or of the sandbox's 20 (12): it got more.
    assert figures["prod_worst_usable"] == 19 / 20
    assert figures["windows_met"] == 5  # all but [40, 50), where prod lost one
    assert figures["windows_met_sandbox"] == 5  # the same against the sandbox's own rate
    assert figures["prod_worst_sandbox"] == 19 / 20
    assert (figures["upstream_429"], figures["upstream_sent"]) == (1, 10)
    assert figures["upstream_429_at"] == [61.0, 61.0]
    assert moving.moving_cells(figures, "windows_met") == "5 of 6"
