"""The benchmark harness end to end in a tiny configuration: every server starts, every
measurement runs, the table has every row and its figures parse. Targets are not
asserted: the machine is shared and noisy, so whether they are met is the report's
business, not CI's."""

from __future__ import annotations

import os
import re

import pytest

from bench import report, runner
from bench.__main__ import END, START, write_report
from bench.latency import percentile
from bench.servers import POSTGRES_TEMPLATE
from tests import databases
from tests.conftest import need, reachable

REDIS_URL = os.environ.get(
    "SLUICE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"
)  # flushed by the run
POSTGRES_URL = os.environ.get(
    "SLUICE_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def expected_rows() -> list[str]:
    rows = []
    for mode in ("non-stream", "stream"):
        for c in (1, 16, 64):
            rows += [
                f"Added latency p50, {mode}, c={c} (ms)",
                f"Added latency p99, {mode}, c={c} (ms)",
                f"Throughput, {mode}, c={c} (req/s)",
            ]
        rows += [
            f"Gateway CPU per request, {mode}, c=16 (ms)",
            f"Gateway CPU, Sluice ÷ floor (daphne), {mode}, c=16",
        ]
    rows += [
        "Scale-out CPU per request, 1 embedded process, non-stream, c=16 (ms)",
        "Scale-out CPU per request, 4 web + limiter worker + Redis, non-stream, c=16 (ms)",
        "Scale-out CPU per request, 4 web + limiter ÷ 1 embedded (alternated pairs)",
        "Scale-out CPU per request, 4 embedded processes, no Redis (the split alone) (ms)",
        "Scale-out Redis commands per request (4 web + limiter)",
        "Scale-out throughput, 1 embedded process, non-stream, c=16 (req/s)",
        "Scale-out throughput, 4 web + limiter, non-stream, c=16 (req/s)",
    ]
    rows += [
        "Limiter decisions per second, in-memory layer (one process)",
        "Limiter decisions per second, channels_redis (runworker limiter)",
    ]
    for deployment in (
        "1 web process (embedded)",
        "4 web processes + limiter worker (Redis, PostgreSQL)",
    ):
        for case in (
            "one burst (360 requests",
            "two bursts across the window boundary (720 requests",
        ):
            rows.append(f"Accuracy: {deployment}, {case}, 64 clients)")
    rows += [
        f"Embedded inputs per second, {runner.TINY.coalesce_callers} callers, single inputs, "
        "account 300/min paced at 250",
        "Upstream requests / upstream 429s / callers not answered 200",
        "p50 latency, concurrency 1, unthrottled account (ms)",
    ]
    return rows


@pytest.mark.services
@pytest.mark.usefixtures("migrated_sqlite", "forked_python")
def test_tiny_run_prints_every_row_with_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    need(reachable(REDIS_URL), f"Redis is not reachable at {REDIS_URL}")
    need(reachable(POSTGRES_URL), f"PostgreSQL is not reachable at {POSTGRES_URL}")
    # Its PostgreSQL databases copied from the run's migrated template (tests/databases.py).
    monkeypatch.setenv(POSTGRES_TEMPLATE, databases.postgres_template(POSTGRES_URL))
    results = runner.run(
        runner.TINY, redis_url=REDIS_URL, postgres_url=POSTGRES_URL, log=lambda line: None
    )
    text = report.render(
        results,
        command="python -m bench (tiny)",
        machine_line=report.machine((0.0,), (0.0,)),
        notes=[],
    )

    rows = {
        cells[1].strip(): cells[2:]
        for line in text.splitlines()
        if line.startswith("| ") and (cells := line.split("|"))
    }
    for name in expected_rows():
        assert name in rows, f"missing row {name!r}"
        sluice, baseline = rows[name][0], rows[name][1]
        figures = NUMBER.findall(sluice)
        assert figures and "n/a" not in sluice, f"{name}: no figure in {sluice!r}"
        assert all(float(f) == float(f) for f in figures)
        assert baseline.strip(), f"{name}: no baseline"
    for case in results.accuracy.values():
        assert case.other == 0, "every burst request is answered 200 or 429"


def test_report_replaces_only_the_marked_part(tmp_path) -> None:
    page = tmp_path / "benchmark.md"
    page.write_text(f"# Prose\n\n{START}\nold table\n{END}\n\nMore prose.\n")
    write_report(page, "new table\n")
    assert page.read_text() == f"# Prose\n\n{START}\nnew table\n{END}\n\nMore prose.\n"


def test_percentile_is_nearest_rank() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([float(n) for n in range(1, 101)], 99) == 99.0
    assert percentile([], 50) != percentile([], 50)  # NaN: nothing to rank
