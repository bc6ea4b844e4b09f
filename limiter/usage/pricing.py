"""Price arithmetic, with no state and no I/O: what a price is, what counts cost at it,
and Together's list prices read from a model list.

The process's copy of the prices in force is prices.py; the database's is ModelPrice.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

# (input $/1M tokens, output $/1M tokens, $/unit): the price in force, copied into rows.
# The unit is what the endpoint kind counts in `units` and Together bills by: an image
# (images), a character of input text (audio_speech), a second of audio
# (audio_transcription), a code interpreter session (code_interpreter). One model is of
# one kind, so its unit price has one meaning.
Price = tuple[Decimal | None, Decimal | None, Decimal | None]
NO_PRICE: Price = (None, None, None)

# The endpoint kinds billed by the unit (the third element of a Price), not by tokens.
UNIT_PRICED = frozenset({"images", "audio_speech", "audio_transcription", "code_interpreter"})

# Together's list prices for its audio models, per unit, which its model list does not
# state in a form Sluice can read (its `pricing` is per million tokens). Sources:
# together.ai/models/cartesia-sonic ("Pricing: $65", per million characters, as the
# pricing page's text-to-speech table quotes it); together.ai/pricing's speech-to-text
# table, Whisper large v3 at $0.0015 per audio minute (unconfirmed: read in 2025, the
# page moves). Staff's override (ModelPrice.image_price, "$ per unit") wins over these.
PER_MILLION_CHARACTERS = Decimal(1) / 1_000_000
PER_AUDIO_MINUTE = Decimal(1) / 60
AUDIO_UNIT_PRICES: dict[str, Decimal] = {
    "cartesia/sonic": Decimal(65) * PER_MILLION_CHARACTERS,
    "cartesia/sonic-2": Decimal(65) * PER_MILLION_CHARACTERS,
    "openai/whisper-large-v3": Decimal("0.0015") * PER_AUDIO_MINUTE,
}

# The code interpreter is billed by the session, whatever runs in it: "TCI usage is billed
# at $0.03/session" (docs.together.ai/docs/together-code-interpreter, read December 2026;
# a session lives 60 minutes and may run many calls). Its usage rows name this "model";
# staff's override of its "$ per unit" wins, as for audio.
CODE_INTERPRETER = "together-code-interpreter"
UNIT_LIST_PRICES: dict[str, Decimal] = {**AUDIO_UNIT_PRICES, CODE_INTERPRETER: Decimal("0.03")}


def priced_units(endpoint: str, units: int) -> int:
    """The units a call of `endpoint` is charged by (0 where it is charged by tokens)."""
    return units if endpoint in UNIT_PRICED else 0


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
    """Dollars for these counts at `price` (per million tokens, per unit: `images` is
    the units of a unit-priced call, see `priced_units`)."""
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
