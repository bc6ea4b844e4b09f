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
    text = shares.table({"on": figures, "off": figures})
    assert "| prod answered 200 | 75.0% | 75.0% |" in text
    assert "| Together's (sandbox's) 429s / sent | 1 / 6 | 1 / 6 |" in text
