"""Fill the usage rollups with synthetic rows and time the Usage page's queries.

    DATABASE_URL=... python -m bench.usage_page --rows 200000

Rows are per-minute rollups spread over the last 30 days across 20 teams, 4 models and
two writers. Timed (median of --runs): the page's table (per day and team, its first
500 rows), its total, its chart (per day and team over 30 days), and the whole CSV per
day, team and model. Run it against a scratch database (DATABASE_URL), not the live one.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from datetime import time as clock
from decimal import Decimal

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
django.setup()

from django.db import connection  # noqa: E402  (after django.setup())
from django.utils import timezone  # noqa: E402

from dashboard.exports import usage_csv_fields  # noqa: E402
from limiter.services import team_get_or_create  # noqa: E402
from limiter.usage import selectors  # noqa: E402
from limiter.usage.models import UsageRollup  # noqa: E402

TEAMS = 20
DAYS = 30
BATCH = 10_000
MODELS = [
    "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    "Qwen/Qwen2.5-7B-Instruct-Turbo",
    "BAAI/bge-large-en-v1.5",
    "black-forest-labs/FLUX.1-schnell",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.usage_page", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, default=200_000, help="rows to add (0: none)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    teams = [team_get_or_create(name=f"bench-{i:02d}")[0] for i in range(TEAMS)]
    if args.rows:
        started = time.perf_counter()
        fill(args.rows, teams, random.Random(args.seed))
        print(f"Inserted {args.rows:,} rows in {time.perf_counter() - started:.1f} s.")
    report(args.runs)


def fill(rows: int, teams: list, rng: random.Random) -> None:
    now = timezone.now().replace(second=0, microsecond=0)
    batch: list[UsageRollup] = []
    for i in range(rows):
        team = rng.choice(teams)
        tokens = rng.randint(10, 4000)
        batch.append(
            UsageRollup(
                writer=f"bench-{i % 2}",
                minute=now - timedelta(minutes=rng.randrange(DAYS * 24 * 60)),
                team=team,
                team_name=team.name,
                key_prefix=f"sk-sluice-{team.pk:06d}",
                upstream="together",
                endpoint="chat",
                model=rng.choice(MODELS),
                status_class="2xx",
                requests=rng.randint(1, 20),
                prompt_tokens=tokens // 2,
                completion_tokens=tokens - tokens // 2,
                total_tokens=tokens,
                cost=Decimal(tokens) * Decimal("0.00000088"),
            )
        )
        if len(batch) == BATCH:
            UsageRollup.objects.bulk_create(batch)
            batch = []
    UsageRollup.objects.bulk_create(batch)


def timed(runs: int, work: Callable[[], object]) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def report(runs: int) -> None:
    zone = selectors.usage_zone()
    today = timezone.now().astimezone(zone).date()
    first = today - timedelta(days=DAYS - 1)
    query = selectors.UsageQuery(
        first_day=first,
        last_day=today,
        since=datetime.combine(first, clock(), tzinfo=zone),
        until=datetime.combine(today + timedelta(days=1), clock(), tzinfo=zone),
    )
    rows = query.rows()
    by_model = ("day", "team", "model")

    def csv_all() -> int:
        grouped = selectors.usage_grouped(rows, by_model)
        return sum(
            len(usage_csv_fields(selectors.usage_row_out(row, by_model), by_model))
            for row in grouped.iterator(chunk_size=2000)
        )

    figures = {
        "table, per day and team (first 500 rows)": lambda: list(
            selectors.usage_grouped(rows, query.group_by)[:501]
        ),
        "total": lambda: selectors.usage_sum(rows),
        "chart, per day and team": lambda: selectors.usage_chart(
            rows, series_by=("team",), metric="cost", first_day=first, last_day=today
        ),
        "CSV, per day, team and model (all rows)": csv_all,
    }
    count = UsageRollup.objects.count()
    print(f"{connection.vendor}, {count:,} rollup rows, median of {runs} (ms):")
    for name, work in figures.items():
        print(f"  {name}: {timed(runs, work):.1f}")


if __name__ == "__main__":
    main()
