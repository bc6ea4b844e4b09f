"""Field types for the ops API's inputs whose accepted values are exactly what its OpenAPI
document says, found wanting by the schemathesis pass (tests/fuzz/test_ops_api.py).

pydantic's lax defaults disagree with the document it writes: a `datetime` takes a number, or
a numeric string, as a Unix timestamp (`?start=0.5` is 1970), though the document says an ISO
8601 `date-time`; a `Decimal` is documented as a number or *any* string, so `""` is valid by
the document and refused by the server. These types accept what they document, and nothing
else.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, StringConstraints, WithJsonSchema

from limiter.selectors import CURSOR_MICROS_DIGITS, MAX_ID

# --- date-times: ISO 8601 text only ---------------------------------------------------------
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _iso_text(value: Any) -> Any:
    if isinstance(value, str) and not _NUMBER.fullmatch(value):
        return value  # pydantic parses it, as ISO 8601 or not at all
    if isinstance(value, datetime):
        return value  # from Python callers
    raise ValueError("Input should be an ISO 8601 date-time, such as 2026-01-31T09:00:00Z")


IsoDateTime = Annotated[
    datetime,
    BeforeValidator(_iso_text),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

# --- keyset cursors ------------------------------------------------------------------------
# What a page's `next_cursor` is (limiter/selectors.py Cursor): microseconds since 1970, a
# dash, an id; bounded so that neither overflows the datetime nor the database's integer.
Cursor = Annotated[
    str,
    StringConstraints(
        pattern=rf"^(?:\d{{1,{CURSOR_MICROS_DIGITS}}}-\d{{1,{len(str(MAX_ID)) - 1}}})?$"
    ),
]

# --- amounts: decimals, to the 6 places the tables keep -----------------------------------
PLACES = Decimal("0.000001")


def _money(*, integer_digits: int, positive: bool):
    """An amount (dollars, or a budget's tokens) as a JSON number or a decimal string, cut to
    the 6 places the tables keep; with `positive`, an amount above 0 is at least 0.000001."""
    biggest = 10**integer_digits - 1
    if positive:
        # A digit other than 0: in the whole part, or (the whole part all zeros) the fraction.
        pattern = rf"^(?:0*[1-9]\d{{0,{integer_digits - 1}}}(?:\.\d+)?|0*\.0*[1-9]\d*)$"
        number: dict[str, Any] = {"type": "number", "exclusiveMinimum": 0, "maximum": biggest}
    else:
        pattern = rf"^0*\d{{1,{integer_digits}}}(?:\.\d+)?$"
        number = {"type": "number", "minimum": 0, "maximum": biggest}
    text = re.compile(pattern)

    def parse(value: Any) -> Decimal:
        if isinstance(value, str):
            if not text.fullmatch(value):
                raise ValueError(
                    f"Input should be a decimal {'above 0' if positive else 'of at least 0'} with "
                    f'at most {integer_digits} digits before the point, such as "25.50"'
                )
            amount = Decimal(value)
        elif isinstance(value, int | float | Decimal) and not isinstance(value, bool):
            amount = Decimal(str(value))
            if (
                not amount.is_finite()
                or amount > biggest
                or (amount <= 0 if positive else amount < 0)
            ):
                bound = "above 0" if positive else "at least 0"
                raise ValueError(f"Input should be {bound} and at most {biggest}")
        else:
            raise ValueError("Input should be a number or a decimal string")
        amount = amount.quantize(PLACES, rounding=ROUND_DOWN)
        return max(amount, PLACES) if positive else amount

    return Annotated[
        Decimal,
        BeforeValidator(parse),
        WithJsonSchema(
            {"anyOf": [number, {"type": "string", "pattern": pattern}]}, mode="validation"
        ),
    ]


# $ per 1M tokens or per image: DecimalField(max_digits=16, decimal_places=6).
Price = _money(integer_digits=10, positive=False)
# A budget's limit, in tokens or dollars: DecimalField(max_digits=20, decimal_places=6).
Limit = _money(integer_digits=14, positive=True)
