"""Records every answered call's usage in per-minute rollups, off the request path.

A call only adds its counts to an in-memory row (a dict lookup and a few additions);
a background task writes the rows that changed every SLUICE_USAGE_FLUSH_SECONDS in one
transaction (limiter/batching.py, as the 429 record does). Each process writes only its
own rows (`writer`, unique per process start), adding to them with F()
increments, so several web processes never race on a row and a query sums over them.

`serve`'s drain on SIGTERM flushes last (limiter/serving.py): a graceful shutdown loses
nothing. A crash loses what was recorded since the last flush: at most
SLUICE_USAGE_FLUSH_SECONDS (1 s by default) of that process's usage.

The price in force is part of a row's dimensions, so the row's cost is exactly its
tokens at that price, however prices change later. A call whose model has no price
when it ends is priced when its row is written: a process serves before Together's
model list has arrived (limiter/usage/prices.py fetches it in the background), so its
first calls keep their tokens in memory until the first flush after that fetch has
ended, and are priced then. A model still without a price is written with none (cost
0) and its account's model list is fetched again.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import F

from limiter.batching import BatchWriter, write_each
from limiter.usage.prices import prices
from limiter.usage.pricing import NO_PRICE, Price, cost_of, priced_units

logger = logging.getLogger(__name__)

MAX_ROWS = 100_000  # distinct unsaved rows; beyond this new dimensions are dropped, loudly


@dataclass(frozen=True, slots=True)
class Dims:
    """What a rollup row is per (limiter/usage/models.py UsageRollup)."""

    minute: int  # unix time of the minute's start
    team_id: int | None
    team_name: str
    key_prefix: str
    upstream: str
    endpoint: str
    model: str
    status_class: str
    source: str
    price: Price | None  # None: priced when written (no price was known at the call)


class Counts:
    __slots__ = ("requests", "units", "prompt", "completion", "total", "estimated")

    def __init__(self) -> None:
        self.requests = self.units = self.prompt = self.completion = self.total = 0
        self.estimated = 0

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.units += other.units
        self.prompt += other.prompt
        self.completion += other.completion
        self.total += other.total
        self.estimated += other.estimated


def status_class(status: int) -> str:
    return f"{min(max(status // 100, 1), 5)}xx"


class UsageRecorder(BatchWriter):
    def __init__(self) -> None:
        super().__init__()
        self.writer = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._rows: dict[Dims, Counts] = {}
        self._pks: dict[Dims, int] = {}  # rows this writer has saved, for F() increments
        self._refreshing: dict[str, float] = {}  # account id -> when its prices were asked

    def interval(self) -> float:
        return float(settings.SLUICE_USAGE_FLUSH_SECONDS)

    async def before_flush(self) -> None:
        await prices.reload_if_due()

    def record(
        self,
        *,
        team_id: int | None,
        team_name: str,
        key_prefix: str,
        upstream: str,
        endpoint: str,
        model: str,
        status: int,
        prompt: int,
        completion: int,
        total: int,
        units: int = 0,
        estimated: int = 0,
        source: str = "online",
        price: Price | None = None,
    ) -> None:
        """Add one call (or a job's usage) to this minute's row. No I/O. Without a
        `price`, the model's price in force, or none yet (priced when written)."""
        if price is None and prices.knows(model):
            price = prices.price(model)
        dims = Dims(
            int(time.time() // 60 * 60),
            team_id,
            team_name,
            key_prefix,
            upstream,
            endpoint,
            model[:200],
            status_class(status),
            source,
            price,
        )
        row = self._rows.get(dims)
        if row is None:
            if len(self._rows) >= MAX_ROWS:
                logger.error("usage buffer full (%d rows): dropping a call's usage", MAX_ROWS)
                return
            row = self._rows[dims] = Counts()
        row.requests += 1
        row.units += units
        row.prompt += prompt
        row.completion += completion
        row.total += total
        row.estimated += estimated

    def unpriced(self, model: str) -> bool:
        return not prices.knows(model)

    def should_refresh(self, account_id: str) -> bool:
        """At most one price refresh a minute per account, for models with no price."""
        now = time.monotonic()
        if now - self._refreshing.get(account_id, -120.0) < 60.0:
            return False
        self._refreshing[account_id] = now
        return True

    async def flush(self, *, final: bool = False) -> int:
        """Write the rows recorded since the last flush; returns how many. Rows of calls
        with no price wait while the start-up price fetch runs (unless `final`: the
        drain writes everything), then take the price known now."""
        rows, self._rows = self._rows, {}
        if any(dims.price is None for dims in rows):
            rows = self._priced(rows, wait=prices.fetching and not final)
        if not rows:
            return 0
        written = len(rows)
        try:
            created = await sync_to_async(_write, thread_sensitive=True)(
                self.writer, rows, dict(self._pks)
            )
        except Exception:
            # One row the database cannot store must not hold back the others (a NUL in
            # a model name once stopped every team's usage): each row alone.
            created, written, left = await sync_to_async(_write_each, thread_sensitive=True)(
                self.writer, rows, dict(self._pks)
            )
            if left:
                # Keep them for the next round rather than lose the usage.
                logger.exception("could not write %d usage rows; will retry", len(left))
                for dims, counts in left.items():
                    self._rows.setdefault(dims, Counts()).add(counts)
        self._pks.update(created)
        # Rows of minutes gone by are not added to again: forget their ids.
        current = int(time.time() // 60 * 60) - 60
        self._pks = {dims: pk for dims, pk in self._pks.items() if dims.minute >= current}
        return written

    def _priced(self, rows: dict[Dims, Counts], *, wait: bool) -> dict[Dims, Counts]:
        """`rows` with the unpriced ones priced now, or (`wait`) kept back for later."""
        out: dict[Dims, Counts] = {}
        for dims, counts in rows.items():
            if dims.price is None:
                if wait:
                    self._rows.setdefault(dims, Counts()).add(counts)
                    continue
                dims = replace(dims, price=prices.price(dims.model))
            out.setdefault(dims, Counts()).add(counts)
        return out


def _write(writer: str, rows: dict[Dims, Counts], pks: dict[Dims, int]) -> dict[Dims, int]:
    from limiter.usage.models import UsageRollup

    close_old_connections()
    new: list[tuple[Dims, UsageRollup]] = []
    with transaction.atomic():
        for dims, counts in rows.items():
            assert dims.price is not None  # priced by flush()
            inp, out, image = dims.price
            cost = cost_of(
                dims.price,
                counts.prompt,
                counts.completion,
                priced_units(dims.endpoint, counts.units),
            )
            pk = pks.get(dims)
            if pk is not None and UsageRollup.objects.filter(pk=pk).update(
                requests=F("requests") + counts.requests,
                units=F("units") + counts.units,
                prompt_tokens=F("prompt_tokens") + counts.prompt,
                completion_tokens=F("completion_tokens") + counts.completion,
                total_tokens=F("total_tokens") + counts.total,
                estimated_tokens=F("estimated_tokens") + counts.estimated,
                cost=F("cost") + cost,
            ):
                continue
            new.append(
                (
                    dims,
                    UsageRollup(
                        writer=writer,
                        minute=datetime.fromtimestamp(dims.minute, tz=UTC),
                        team_id=dims.team_id,
                        team_name=dims.team_name,
                        key_prefix=dims.key_prefix,
                        upstream=dims.upstream,
                        endpoint=dims.endpoint,
                        model=dims.model,
                        status_class=dims.status_class,
                        source=dims.source,
                        input_price=inp,
                        output_price=out,
                        image_price=image,
                        requests=counts.requests,
                        units=counts.units,
                        prompt_tokens=counts.prompt,
                        completion_tokens=counts.completion,
                        total_tokens=counts.total,
                        estimated_tokens=counts.estimated,
                        cost=cost,
                    ),
                )
            )
        if new:
            UsageRollup.objects.bulk_create([row for _dims, row in new], batch_size=500)
    return {dims: row.pk for dims, row in new if row.pk is not None}


def _write_each(
    writer: str, rows: dict[Dims, Counts], pks: dict[Dims, int]
) -> tuple[dict[Dims, int], int, dict[Dims, Counts]]:
    """After a failed batch, each row in a transaction of its own: the ids of the rows
    created, how many were written, and those left to retry (the database down)."""
    created: dict[Dims, int] = {}
    written, left = write_each(
        list(rows.items()),
        lambda row: created.update(_write(writer, dict([row]), pks)),
        lambda row: f"usage row of team {row[0].team_id} on {row[0].endpoint}",
    )
    return created, written, dict(left)


usage_recorder = UsageRecorder()

__all__ = ["NO_PRICE", "UsageRecorder", "status_class", "usage_recorder"]
