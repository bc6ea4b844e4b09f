"""Price arithmetic, with no state and no I/O: what a price is, what counts cost at it,
and Together's list prices read from a model list.

The process's copy of the prices in force is prices.py; the database's is ModelPrice.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

# (input $/1M tokens, output $/1M tokens, $/image): the price in force, copied into rows.
Price = tuple[Decimal | None, Decimal | None, Decimal | None]
NO_PRICE: Price = (None, None, None)


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() and number >= 0 else None


def list_prices(rows: list[dict[str, Any]]) -> dict[str, tuple[Decimal | None, Decimal | None]]:
    """Together's `pricing: {input, output}` per model id (dollars per million tokens),
    leniently: a row without a usable price is skipped."""
    found = {}
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            continue
        pricing = row.get("pricing")
        if not isinstance(pricing, dict):
            continue
        inp, out = _decimal(pricing.get("input")), _decimal(pricing.get("output"))
        if inp is not None or out is not None:
            found[row["id"][:200]] = (inp, out)
    return found


def cost_of(price: Price, prompt: int, completion: int, images: int) -> Decimal:
    """Dollars for these counts at `price` (per million tokens, per image)."""
    inp, out, image = price
    cost = Decimal(0)
    if inp is not None and prompt:
        cost += inp * prompt / 1_000_000
    if out is not None and completion:
        cost += out * completion / 1_000_000
    if image is not None and images:
        cost += image * images
    return cost


def discounted(price: Price, factor: Decimal) -> Price:
    """A price times `factor` (batches: Together's batch discount)."""
    inp, out, image = price
    return (
        None if inp is None else inp * factor,
        None if out is None else out * factor,
        image,
    )
