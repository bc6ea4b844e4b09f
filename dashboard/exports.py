"""The 429 history and the usage totals as CSV, streamed: rows are read in chunks and
written as they go, so a million-row export never sits in memory.

The rows come from an async iterator on purpose: under ASGI, Django materialises a
synchronous streaming iterator into a list before sending it.

Every export writes its rows through `spreadsheet_safe`: cells hold what callers sent
(a model name), and a spreadsheet would run one that starts like a formula.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Iterable
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse
from django.utils import timezone

from limiter import selectors
from limiter.usage import selectors as usage_selectors

# OWASP's list for CSV injection: a cell starting with one of these is read as a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(row: Iterable[str]) -> list[str]:
    """The row with each formula-like cell prefixed by a single quote, so a spreadsheet
    shows it as text (OWASP, CSV injection). Other cells are left exactly as they were."""
    return ["'" + cell if cell.startswith(FORMULA_PREFIXES) else cell for cell in row]


class _Echo:
    """A file-like that hands back what csv.writer writes, so rows stream one by one."""

    def write(self, value: str) -> str:
        return value


async def _csv_lines(filters: selectors.RefusalFilters) -> AsyncIterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(selectors.CSV_COLUMNS)
    chunk = sync_to_async(selectors.refusal_csv_chunk)
    after: str | None = ""
    while after is not None:
        rows, after = await chunk(filters=filters, after=after)
        yield "".join(writer.writerow(spreadsheet_safe(row)) for row in rows)


def refusal_csv_response(*, filters: selectors.RefusalFilters) -> StreamingHttpResponse:
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    return StreamingHttpResponse(
        _csv_lines(filters),
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="sluice-429s-{stamp}.csv"'},
    )


# --- usage -----------------------------------------------------------------------------------
USAGE_GROUP_COLUMNS = {
    "day": "day",
    "team": "team",
    "model": "model",
    "endpoint": "endpoint",
    "key": "key_prefix",
    "status": "status_class",
}
USAGE_COUNTS = ("requests", "units", "prompt_tokens", "completion_tokens", "total_tokens")
USAGE_SUM_COLUMNS = (*USAGE_COUNTS, "cost_usd")
USAGE_CSV_CHUNK = 2000
COST_PLACES = Decimal("1e-10")  # the rollups' own precision


def usage_csv_columns(group_by: Iterable[str]) -> list[str]:
    return [USAGE_GROUP_COLUMNS[name] for name in group_by] + list(USAGE_SUM_COLUMNS)


def usage_csv_fields(row: dict[str, Any], group_by: Iterable[str]) -> list[str]:
    """One row of `usage_row_out` as CSV cells: exact dollars, "" for a missing value."""
    groups = ["" if row[name] is None else str(row[name]) for name in group_by]
    counts = [str(row[name]) for name in USAGE_COUNTS]
    cost = Decimal(row["cost"]).quantize(COST_PLACES)
    return spreadsheet_safe([*groups, *counts, f"{cost:f}"])


async def _usage_lines(query: usage_selectors.UsageQuery) -> AsyncIterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(usage_csv_columns(query.group_by))
    grouped = usage_selectors.usage_grouped(query.rows(), query.group_by)
    # aiterator() fetches the grouped rows a chunk at a time (a server-side cursor on
    # PostgreSQL) on the request's one database thread; lines go out a chunk at a time.
    lines: list[str] = []
    async for row in grouped.aiterator(chunk_size=USAGE_CSV_CHUNK):
        out = usage_selectors.usage_row_out(row, query.group_by)
        lines.append(writer.writerow(usage_csv_fields(out, query.group_by)))
        if len(lines) == USAGE_CSV_CHUNK:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


def usage_csv_response(*, query: usage_selectors.UsageQuery) -> StreamingHttpResponse:
    name = f"sluice-usage-{query.first_day:%Y%m%d}-{query.last_day:%Y%m%d}.csv"
    return StreamingHttpResponse(
        _usage_lines(query),
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
