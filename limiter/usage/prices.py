"""Each web process's copy of the model prices: Together's list price, or staff's override.

Read on the request path (a dict lookup), never from the database there. Loaded from
ModelPrice and every account's model list in the background when the process starts
(`fetch_in_background`: a process serves at once, whatever the model list does), again
from ModelPrice every RELOAD_SECONDS (a staff override reaches every process within
that), and updated at once from every model list Sluice fetches from Together
(limiter/gateway/catalog.py calls `observe`), whose prices are also written to
ModelPrice off the request path. A call whose model has no price yet is priced when its
rollup row is written (limiter/usage/recorder.py), after the start-up fetch has ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async

from limiter.models import UpstreamAccount
from limiter.protocol.changes import register_cache
from limiter.upstream import UpstreamError, account_target
from limiter.upstream import client as upstream
from limiter.usage.models import ModelPrice
from limiter.usage.pricing import NO_PRICE, UNIT_LIST_PRICES, Price, cost_of, list_prices
from limiter.usage.selectors import prices_readable
from limiter.usage.services import amount_unreadable, prices_record

# The price arithmetic, for the callers that price with this process's copy.
__all__ = ["NO_PRICE", "Price", "Prices", "cost_of", "list_prices", "price_override", "prices"]

logger = logging.getLogger(__name__)

RELOAD_SECONDS = 60.0


class Prices:
    def __init__(self) -> None:
        self._together: dict[str, tuple[Decimal | None, Decimal | None]] = {}
        self._override: dict[str, Price] = {}
        self._table: dict[str, Price] = {}
        self.loaded_at = -RELOAD_SECONDS
        # The start-up load and fetch of Together's lists, while it runs (see `fetching`).
        self.fetch: asyncio.Task[None] | None = None
        self._rebuild()  # the list prices Sluice holds itself (audio) are known at once

    @property
    def fetching(self) -> bool:
        """Whether the start-up fetch still runs: calls of a model with no price wait for
        it to be priced (their rows, and their reports to dollar budgets)."""
        return self.fetch is not None and not self.fetch.done()

    def fetch_in_background(self) -> None:
        """Load the prices held in the database, then every account's model list, in a
        task: the process serves meanwhile (an upstream that never answers the model list
        delays no call). A failure is logged; the prices stay as they were."""
        self.fetch = asyncio.get_running_loop().create_task(self._fetch())

    async def _fetch(self) -> None:
        await self.reload_if_due(force=True)
        try:
            await refresh_from_together()
        except Exception:
            logger.exception("could not fetch Together's model prices")

    async def settled(self) -> None:
        """Wait for the start-up fetch to end (at once when it has)."""
        if self.fetch is not None and not self.fetch.done():
            await asyncio.wait([self.fetch])

    def price(self, model: str) -> Price:
        return self._table.get(model, NO_PRICE)

    def knows(self, model: str) -> bool:
        return model in self._table

    def _rebuild(self) -> None:
        # Audio's and the code interpreter's list prices are per unit (limiter/usage/pricing.py).
        table: dict[str, Price] = {m: (None, None, unit) for m, unit in UNIT_LIST_PRICES.items()}
        for model, (inp, out) in self._together.items():
            table[model] = (inp, out, table.get(model, NO_PRICE)[2])
        for model, (o_in, o_out, image) in self._override.items():
            t_in, t_out, t_unit = table.get(model, NO_PRICE)
            table[model] = (
                o_in if o_in is not None else t_in,
                o_out if o_out is not None else t_out,
                image if image is not None else t_unit,
            )
        self._table = table

    def observe(
        self, rows: list[dict[str, Any]]
    ) -> dict[str, tuple[Decimal | None, Decimal | None]]:
        """Take Together's prices from a model list, here at once; returns them (the
        caller writes them to the database off the request path)."""
        found = list_prices(rows)
        if found:
            self._together.update(found)
            self._rebuild()
        return found

    def load(self) -> None:
        """Read every ModelPrice (sync: call off the event loop)."""
        together, override = {}, {}
        rows, broken = prices_readable()
        for row in rows:
            if row.pk in broken:  # skipped: every other price still loads
                amount_unreadable(kind="price", row_id=row.pk, model=row.model)
                continue
            if row.together_input is not None or row.together_output is not None:
                together[row.model] = (row.together_input, row.together_output)
            if (
                row.override_input is not None
                or row.override_output is not None
                or row.image_price is not None
            ):
                override[row.model] = (row.override_input, row.override_output, row.image_price)
        # Prices seen in a model list since are as new as the database's: keep them.
        self._together = {**together, **self._together} if self._together else together
        self._override = override
        self._rebuild()
        self.loaded_at = time.monotonic()

    def expire(self) -> None:
        """Reload at the next chance (a price override was broadcast)."""
        self.loaded_at = -RELOAD_SECONDS

    async def reload_if_due(self, *, force: bool = False) -> None:
        if force or time.monotonic() - self.loaded_at >= RELOAD_SECONDS:
            try:
                await sync_to_async(self.load, thread_sensitive=True)()
            except Exception:
                logger.exception("could not load model prices; keeping the ones held")
                self.loaded_at = time.monotonic()


prices = Prices()
register_cache(prices.expire)  # a price override was saved: reload at the next chance

# Seconds the start-up fetch of one account's model list may take. It runs in the
# background; calls of models with no price meanwhile are priced when it ends.
FETCH_DEADLINE = 15.0


async def refresh_from_together() -> None:
    """Fetch every upstream account's model list for its prices, all at once (a process
    starting). A failure is logged; its account's models stay unpriced until a call
    names one (limiter/gateway/metering.py asks again, at most once a minute)."""

    def accounts() -> list[UpstreamAccount]:
        return list(UpstreamAccount.objects.all())

    async def one(account: UpstreamAccount) -> None:
        try:
            outcome = await upstream.send(
                account_target(account),
                "GET",
                "/models",
                deadline=time.monotonic() + FETCH_DEADLINE,
            )
            if outcome.response.status_code != 200:
                raise UpstreamError(outcome.response.status_code, "no model list")
            data = outcome.response.json()
        except (UpstreamError, ValueError) as exc:
            logger.warning("could not read %s's model prices: %s", account.name, exc)
            return
        rows = data if isinstance(data, list) else data.get("data", [])
        found = prices.observe(rows if isinstance(rows, list) else [])
        if found:
            await sync_to_async(prices_record, thread_sensitive=True)(found=found)

    await asyncio.gather(*(one(a) for a in await sync_to_async(accounts, thread_sensitive=True)()))


def price_override(
    *,
    model: str,
    input_price: Decimal | None,
    output_price: Decimal | None,
    image_price: Decimal | None,
) -> ModelPrice:
    """Staff's negotiated rate for a model (None: Together's list price applies), in force
    in this process at once and in the others at the broadcast its save makes."""
    # The overrides are all set here: not read, so a row whose stored one cannot be read
    # is mended.
    overrides = ("override_input", "override_output", "image_price")
    row, _created = ModelPrice.objects.defer(*overrides).get_or_create(model=model)
    row.override_input, row.override_output, row.image_price = (
        input_price,
        output_price,
        image_price,
    )
    row.full_clean()
    row.save()  # broadcast: every web process reloads its prices (limiter/usage/signals.py)
    prices.load()
    return row
