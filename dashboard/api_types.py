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
from limiter.usage.models import EXACT_DIGITS, Budget, ExactAmountValidator, ModelPrice

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


# --- amounts: what the model field keeps exactly -------------------------------------------
def _amount_pattern(check: ExactAmountValidator, *, positive: bool) -> str:
    """The decimal strings `check` allows, as a regular expression without look-arounds
    (the document's readers, schemathesis among them, generate from it)."""
    places, whole = check.decimal_places, check.max_digits - check.decimal_places
    digits = min(check.max_digits, EXACT_DIGITS)

    def fraction(n: int) -> str:  # n places, then zeros (which change nothing)
        return rf"(?:\.\d{{0,{n}}}0*)?"

    # k whole digits (the first not 0) leave min(places, digits - k) for the fraction: one
    # branch for each run of k that leaves the same.
    branches, k = [], 1
    while k <= whole:
        room, last = min(places, digits - k), k
        while last < whole and min(places, digits - last - 1) == room:
            last += 1
        branches.append(rf"[1-9]\d{{{k - 1},{last - 1}}}{fraction(room)}")
        k = last + 1
    if positive:  # a whole part of zeros: a digit other than 0 in the fraction
        some = "|".join(rf"0{{{i}}}[1-9]\d{{0,{places - 1 - i}}}" for i in range(places))
        branches.append(rf"0\.(?:{some})0*")
    else:
        branches.append(f"0{fraction(min(places, digits))}")
    return rf"^0*(?:{'|'.join(branches)})$"


def _amount(field: Any, *, positive: bool):
    """An amount (dollars, or a budget's tokens) the model `field` stores and reads back
    exactly (limiter/usage/models.py ExactAmountValidator), from a decimal string or a JSON
    number; with `positive`, above 0.

    A decimal string is taken exactly: one with more places or digits than the field keeps
    is refused, not rounded. A JSON number is a binary double: an integer is exact up to
    the field's whole digits; one with a fraction is cut to the field's places, and below
    10**(15 - places) so that it keeps to 15 digits; above 0 stays above 0."""
    check = ExactAmountValidator(field.max_digits, field.decimal_places)
    step = Decimal(1).scaleb(-check.decimal_places)
    integers = 10 ** (check.max_digits - check.decimal_places) - 1
    fractions = Decimal(10) ** (min(check.max_digits, EXACT_DIGITS) - check.decimal_places) - step
    low: dict[str, Any] = {"exclusiveMinimum": 0} if positive else {"minimum": 0}
    integer = {"type": "integer", **low, "maximum": integers}
    number = {"type": "number", **low, "maximum": float(fractions)}
    pattern = _amount_pattern(check, positive=positive)
    text = re.compile(pattern, re.ASCII)  # \d is [0-9], as in the document
    bound = "above 0" if positive else "at least 0"

    def parse(value: Any) -> Decimal:
        if isinstance(value, bool):
            raise ValueError("Input should be a number or a decimal string")
        if isinstance(value, str | Decimal):
            if isinstance(value, str) and not text.fullmatch(value):
                raise ValueError(f"Input should be a decimal {bound}. {check.message}")
            amount = Decimal(value)
            if not check.allows(amount) or (amount <= 0 if positive else amount < 0):
                raise ValueError(f"Input should be a decimal {bound}. {check.message}")
            return amount.quantize(step)  # exact: zeros past the field's places go
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int):
            if not (0 < value if positive else 0 <= value) or value > integers:
                raise ValueError(f"Input should be {bound} and at most {integers}")
            return Decimal(value)
        if isinstance(value, float):
            amount = Decimal(repr(value))
            if not amount.is_finite() or not (0 < amount if positive else 0 <= amount):
                raise ValueError(f"Input should be {bound} and at most {fractions}")
            if amount > fractions:
                raise ValueError(
                    f"Input should be at most {fractions} as a number with a fraction; "
                    "send a larger amount as a decimal string"
                )
            amount = amount.quantize(step, rounding=ROUND_DOWN)
            return max(amount, step) if positive else amount
        raise ValueError("Input should be a number or a decimal string")

    return Annotated[
        Decimal,
        BeforeValidator(parse),
        WithJsonSchema(
            {"anyOf": [integer, number, {"type": "string", "pattern": pattern}]},
            mode="validation",
        ),
    ]


# $ per 1M tokens or per image, as staff set them.
Price = _amount(ModelPrice._meta.get_field("override_input"), positive=False)
# A budget's limit, in tokens or dollars.
Limit = _amount(Budget._meta.get_field("limit"), positive=True)
