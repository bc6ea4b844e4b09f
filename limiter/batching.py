"""Writing rows in batches from a background task, shared by the 429 record
(limiter/gateway/refusals.py) and the usage record (limiter/usage/recorder.py).

Requests only append to a writer's in-memory buffer; its task flushes the buffer every
`interval()` seconds in one transaction. A batch the database refuses is written again
row by row (`write_each`), so that one row it cannot store is dropped alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from django.db import DataError, IntegrityError

from limiter.loops import LoopBound

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0


# What a database answers about one row it cannot store: NUL in a text field or a lone
# surrogate (ValueError, DataError on PostgreSQL), too long for its column or a number
# out of range (DataError), a constraint (IntegrityError). The row is dropped; anything
# else (the database down) keeps the rows for the next flush.
UNSTORABLE = (DataError, IntegrityError, ValueError)

Row = TypeVar("Row")


def write_each(
    rows: Sequence[Row], write: Callable[[Row], object], describe: Callable[[Row], str]
) -> tuple[int, list[Row]]:
    """Write `rows` one at a time (each `write` its own transaction), after their batch
    failed. Returns how many were written and those not tried yet: a row the database
    cannot store is dropped with a log line (`describe` says whose, no content); any
    other failure stops here, and the rest wait for the next flush."""
    written = 0
    for index, row in enumerate(rows):
        try:
            write(row)
        except UNSTORABLE as exc:
            logger.error(
                "dropped a row the database cannot store (%s): %s",
                type(exc).__name__,
                describe(row),
            )
            continue
        except Exception:
            return written, list(rows[index:])
        written += 1
    return written, []


class BatchWriter:
    """A background task in the running loop that calls `flush` every `interval()`
    seconds. `start` (re)starts it in whichever loop is current; a drain calls `flush`
    itself, last."""

    def __init__(self) -> None:
        self._task: LoopBound[asyncio.Task] = LoopBound(
            lambda: asyncio.get_running_loop().create_task(self._flush_forever()),
            spent=lambda task: task.done(),
        )

    def start(self) -> None:
        self._task.get()

    def interval(self) -> float:
        return FLUSH_INTERVAL

    async def before_flush(self) -> None:
        """Anything to do once an interval before the flush (nothing by default)."""

    async def flush(self) -> int:
        raise NotImplementedError

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval())
            await self.before_flush()
            await self.flush()
