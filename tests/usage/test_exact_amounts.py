"""The amounts a budget or price accepts read back exactly from the database (issue 18):
SQLite keeps a decimal column as a double, so ExactAmountValidator allows 15 digits."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from limiter.services import team_get_or_create
from limiter.usage.models import Budget, BudgetPeriod, BudgetUnit, ModelPrice

pytestmark = pytest.mark.django_db

LIMIT = Budget._meta.get_field("limit")
PRICE = ModelPrice._meta.get_field("override_input")


@pytest.fixture
def team(db):
    return team_get_or_create(name="amounts")[0]


def allowed(field) -> st.SearchStrategy[Decimal]:
    # Any decimal of the field's places, then those the field's validators allow.
    places = field.decimal_places
    digits = st.integers(min_value=1, max_value=10 ** (field.max_digits) - 1)
    return digits.map(lambda n: Decimal(n).scaleb(-places)).filter(lambda d: _valid(field, d))


def _valid(field, value: Decimal) -> bool:
    try:
        field.run_validators(value)
    except ValidationError:
        return False
    return True


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(limit=allowed(LIMIT), price=allowed(PRICE))
def test_every_amount_allowed_reads_back_exactly(team, limit: Decimal, price: Decimal) -> None:
    budget = Budget.objects.create(
        team=team, unit=BudgetUnit.TOKENS, period=BudgetPeriod.DAY, limit=limit
    )
    assert Budget.objects.get(pk=budget.pk).limit == limit
    row = ModelPrice.objects.create(model=f"m-{budget.pk}", override_input=price)
    assert ModelPrice.objects.get(pk=row.pk).override_input == price


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        (LIMIT, "99999999999999.9", True),  # 15 digits
        (LIMIT, "99999999999999.99", False),  # 16: SQLite reads back 1E+14
        (LIMIT, "99999999999999.999999", False),  # 20: the field's max_digits, not SQLite's
        (LIMIT, "123456789.123456", True),
        (LIMIT, "1.1234567", False),  # 7 places
        (LIMIT, "25.500000", True),  # zeros at the end change nothing
        (LIMIT, "100000000000000", False),  # 15 whole digits, the field keeps 14
        (PRICE, "9999999999.99999", True),
        (PRICE, "9999999999.999999", False),
        (PRICE, "99999999999", False),
    ],
)
def test_the_limits_of_what_is_allowed(field, value: str, ok: bool) -> None:
    assert _valid(field, Decimal(value)) is ok
