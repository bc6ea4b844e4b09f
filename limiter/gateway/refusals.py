"""Writes the 429 record and keys' last-use times in batches, off the request path.

Requests only append to an in-memory buffer; a background task flushes it once a
second in one transaction (bulk insert + one UPDATE for last-used times), so a storm
of refusals costs the database one write a second, not one per refusal.

A batch the database refuses is written again row by row (limiter/batching.py
`write_each`): a row it cannot store (NUL in a text, a value too long for its column)
is dropped with a log line, and the others are written, so one such row cannot fail
every flush after it, for every team.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from datetime import UTC, datetime
from typing import NamedTuple

from asgiref.sync import sync_to_async
from django.db import close_old_connections, transaction
from django.utils import timezone

from limiter.batching import BatchWriter, write_each
from limiter.models import ApiKey, Refusal

logger = logging.getLogger(__name__)

MAX_BUFFER = 100_000  # beyond this the oldest unsaved records are dropped, loudly


class Pending(NamedTuple):
    """A 429 not written yet. Cheap to make on the request path (a flood is refused at
    thousands a second); the model instance is built when the batch is written."""

    created_at: float  # unix time
    team_id: int | None
    team_name: str
    key_prefix: str
    upstream: str
    endpoint: str
    model: str
    reason: str
    source: str
    retry_after: float | None
    request_id: str
    message: str
    shadow: bool  # what a shadow limit or budget would have refused (the call was admitted)

    def row(self) -> Refusal:
        return Refusal(
            created_at=datetime.fromtimestamp(self.created_at, UTC),
            team_id=self.team_id,
            team_name=self.team_name,
            key_prefix=self.key_prefix,
            upstream=self.upstream,
            endpoint=self.endpoint,
            model=self.model[:200],
            reason=self.reason,
            source=self.source,
            retry_after_seconds=self.retry_after,
            request_id=self.request_id,
            message=self.message[:300],
            shadow=self.shadow,
        )


class Recorder(BatchWriter):
    def __init__(self) -> None:
        super().__init__()
        # Bounded: a database down for long loses the oldest records, not the process.
        self._refusals: deque[Pending] = deque(maxlen=MAX_BUFFER)
        self._used: dict[str, datetime] = {}

    def refusal(
        self,
        *,
        team_id: int | None,
        team_name: str,
        key_prefix: str,
        upstream: str,
        endpoint: str,
        model: str,
        reason: str,
        source: str,
        retry_after: float | None,
        request_id: str,
        message: str = "",
        shadow: bool = False,
    ) -> None:
        if len(self._refusals) == MAX_BUFFER:
            logger.error(
                "429 record buffer full (%d): dropping the oldest unsaved refusal", MAX_BUFFER
            )
        self._refusals.append(
            Pending(
                time.time(),
                team_id,
                team_name,
                key_prefix,
                upstream,
                endpoint,
                model,
                reason,
                source,
                retry_after,
                request_id,
                message,
                shadow,
            )
        )

    def key_used(self, key_id: str) -> None:
        self._used[key_id] = timezone.now()

    async def flush(self) -> int:
        refusals, self._refusals = list(self._refusals), deque(maxlen=MAX_BUFFER)
        used, self._used = self._used, {}
        if not refusals and not used:
            return 0
        try:
            await sync_to_async(_write, thread_sensitive=True)(refusals, used)
        except Exception:
            # One row the database cannot store must not hold back the others: each alone.
            written, refusals, used = await sync_to_async(_write_each, thread_sensitive=True)(
                refusals, used
            )
            if not refusals and not used:
                return written
            # Keep the rest for the next round rather than lose the audit trail.
            logger.exception("could not write %d refusals; will retry", len(refusals))
            self._refusals = deque(
                [*refusals, *self._refusals], maxlen=MAX_BUFFER
            )  # oldest go first
            for key_id, at in used.items():
                self._used.setdefault(key_id, at)
            return written
        return len(refusals)


def _write(refusals: list[Pending], used: dict[str, datetime]) -> None:
    close_old_connections()
    with transaction.atomic():
        if refusals:
            Refusal.objects.bulk_create([r.row() for r in refusals], batch_size=500)
        if used:
            latest = max(used.values())
            # One UPDATE: last use to the second is all the dashboard needs.
            ApiKey.objects.filter(pk__in=list(used)).update(last_used_at=latest)


def _write_each(
    refusals: list[Pending], used: dict[str, datetime]
) -> tuple[int, list[Pending], dict[str, datetime]]:
    """After a failed batch: the last-use times alone, then each refusal alone. Returns
    how many refusals were written, and what is left to retry (the database down)."""
    try:
        _write([], used)
    except Exception:
        return 0, refusals, used
    written, left = write_each(
        refusals,
        lambda refusal: _write([refusal], {}),
        lambda refusal: f"429 record of team {refusal.team_id} on {refusal.endpoint}",
    )
    return written, left, {}


recorder = Recorder()
