"""The limiter client's promised refusals (limiter/protocol/refused.py): what it learns from
the limiter's answers, for which calls, and what clears them."""

from __future__ import annotations

import asyncio

import pytest

from limiter.protocol import events
from limiter.protocol.client import Patience, Refused
from tests.factories import key_info
from tests.limiter.test_client import Clock, Layer, acquires, answer, grant, registry, start

__all__ = ["registry", "start"]  # fixtures


def refused(ticket: str, refused_for: float | None) -> dict:
    message = {
        **grant(ticket, "", at=0.0),
        "kind": "refuse",
        "reason": events.RATE_LIMITED,
        "scope": "key",
        "retry_after": 4.0,
    }
    if refused_for is not None:
        message["refused_for"], message["refused_scope"] = refused_for, "key"
    return message


async def refuse_one(client, layer, refused_for: float | None, **kw) -> None:
    """A chat call to model "m" the limiter refuses (with a promise of `refused_for`)."""
    before = layer.types().count(events.ACQUIRE)
    waiting = asyncio.ensure_future(
        client.acquire(key=key_info(), endpoint="chat", model="m", tokens=0, request_id="r", **kw)
    )
    asked = (await acquires(layer, before + 1))[-1]
    await answer(client, layer, refused(asked["ticket"], refused_for))
    with pytest.raises(Refused):
        await waiting


def known(client) -> dict | None:
    refusal = client.known_refusal(key=key_info(), endpoint="chat", model="m")
    return refusal.decision if refusal is not None else None


async def test_a_promise_is_kept_from_the_send_and_ends(registry, start):
    clock = Clock(100.0)
    client = await start(layer := Layer(), clock=clock)
    await refuse_one(client, layer, refused_for=3.0)
    clock.now = 102.5
    promised = known(client)
    assert promised is not None and promised["reason"] == events.RATE_LIMITED
    assert promised["retry_after"] == pytest.approx(1.5)
    clock.now = 103.0
    assert known(client) is None


async def test_a_refusal_without_a_promise_is_not_kept(registry, start):
    client = await start(layer := Layer(), clock=Clock(100.0))
    await refuse_one(client, layer, refused_for=None)
    assert known(client) is None


async def test_a_merged_or_patient_call_learns_nothing(registry, start):
    client = await start(layer := Layer(), clock=Clock(100.0))
    await refuse_one(client, layer, refused_for=3.0, charge=events.CHARGE_KEY)
    await refuse_one(client, layer, refused_for=3.0, patience=Patience(1e9))
    assert known(client) is None


@pytest.mark.parametrize(
    "broadcast",
    [{"type": events.CONFIG_CHANGED}, {"type": events.LIMITER_STARTED, "limiter": "two"}],
)
async def test_a_configuration_change_or_a_new_limiter_clears_the_promises(
    registry, start, broadcast
):
    client = await start(layer := Layer(), clock=Clock(100.0))
    await refuse_one(client, layer, refused_for=3.0)
    assert known(client) is not None
    await answer(client, layer, broadcast)
    assert known(client) is None


async def test_turned_off_nothing_is_kept(registry, start, settings):
    settings.SLUICE_LOCAL_REFUSALS = False
    client = await start(layer := Layer(), clock=Clock(100.0))
    await refuse_one(client, layer, refused_for=3.0)
    settings.SLUICE_LOCAL_REFUSALS = True
    assert known(client) is None
