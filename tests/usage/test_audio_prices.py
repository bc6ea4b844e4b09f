"""Audio's prices: per unit (a character of speech, a second of audio), from the table
Sluice holds, kept when Together's model list names the model, overridden by staff."""

from __future__ import annotations

from decimal import Decimal

import pytest

from limiter.usage.models import ModelPrice
from limiter.usage.prices import Prices
from limiter.usage.pricing import AUDIO_UNIT_PRICES, cost_of, priced_units

SONIC = "cartesia/sonic"
WHISPER = "openai/whisper-large-v3"


def test_the_list_prices_are_per_unit_and_known_at_once():
    prices = Prices()
    assert prices.knows(SONIC) and prices.knows(WHISPER)
    assert prices.price(SONIC) == (None, None, Decimal("0.000065"))  # $65 a million characters
    assert prices.price(WHISPER) == (None, None, Decimal("0.000025"))  # $0.0015 a minute


def test_togethers_model_list_keeps_the_unit_price():
    prices = Prices()
    prices.observe([{"id": SONIC, "pricing": {"input": 0, "output": 0}}])
    assert prices.price(SONIC) == (Decimal(0), Decimal(0), AUDIO_UNIT_PRICES[SONIC])


@pytest.mark.django_db
def test_a_staff_unit_price_wins():
    ModelPrice.objects.create(model=SONIC, image_price=Decimal("0.0001"))
    prices = Prices()
    prices.load()
    assert prices.price(SONIC)[2] == Decimal("0.0001")


@pytest.mark.parametrize(
    ("endpoint", "units", "charged"),
    [
        ("audio_speech", 26, 26),
        ("audio_transcription", 3, 3),
        ("images", 2, 2),
        ("embeddings", 5, 0),  # inputs are counted, tokens are charged
        ("chat", 1, 0),
    ],
)
def test_which_kinds_are_charged_by_the_unit(endpoint, units, charged):
    assert priced_units(endpoint, units) == charged


def test_a_calls_cost_is_its_units_at_the_unit_price():
    price = (None, None, AUDIO_UNIT_PRICES[WHISPER])
    assert cost_of(price, 0, 0, priced_units("audio_transcription", 60)) == Decimal("0.0015")
