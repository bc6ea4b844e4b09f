"""The 429 history as CSV, streamed: rows are read in chunks and written as they go,
so a million-row export never sits in memory.

The rows come from an async iterator on purpose: under ASGI, Django materialises a
synchronous streaming iterator into a list before sending it.

Every export writes its rows through `spreadsheet_safe`: cells hold what callers sent
(a model name), and a spreadsheet would run one that starts like a formula.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Iterable

from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse
from django.utils import timezone

from limiter import selectors

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
