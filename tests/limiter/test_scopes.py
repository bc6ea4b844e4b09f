"""Resolving a ticket's scopes and keeping the engine's scopes at their limits
(limiter/authority/scopes.py), through its own interface, on a configuration built in
memory: no database."""

from __future__ import annotations

import dataclasses

import pytest

from limiter.authority.config import UNLIMITED, LimiterConfig, model_rows
from limiter.authority.engine import Engine, Limit
from limiter.authority.learning import LearnedCeilings
from limiter.authority.scopes import Scopes
from limiter.protocol import events

FLUX = "black-forest-labs/FLUX.1-schnell"
KEY_ROW = Limit(per_minute=60, burst=5)
KEY_FLUX = Limit(per_minute=3, burst=1)
ACCOUNT_ROW = Limit(per_minute=600, burst=10)
ACCOUNT_FLUX = Limit(per_minute=6, burst=1, queue_depth=10, max_wait=600)


def config(version: int = 1, *, key_flux: bool = True) -> LimiterConfig:
    return LimiterConfig(
        version=version,
        key_profiles={"k": 1},
        account_profiles={"a": 2},
        limits={(1, "images"): KEY_ROW, (2, "images"): ACCOUNT_ROW},
        models={
            **({(1, "images"): model_rows([(FLUX, KEY_FLUX)])} if key_flux else {}),
            (2, "images"): model_rows([("black-forest-labs/*", ACCOUNT_FLUX)]),
        },
    )


def scopes(cfg: LimiterConfig | None = None) -> Scopes:
    learned = LearnedCeilings(margin=0.1, unit_seconds=1.0)
    return Scopes(Engine(), learned, cfg or config())


def ticket(model: str = FLUX, *, key: str = "k", version: int = 1, charge: str = "") -> dict:
    message = {
        "type": events.ACQUIRE,
        "ticket": "t",
        "reply": "r",
        "endpoint": "images",
        "key": key,
        "account": "a",
        "model": model,
        "version": version,
        "tokens": 0.0,
        "request_id": "t",
    }
    if charge:
        message["charge"] = charge
    return message


def test_a_call_charges_its_keys_scope_and_its_accounts_scope_for_the_model():
    resolved = scopes().for_ticket(ticket("stability/sdxl"))
    assert resolved == (
        (("key", "k", "images", ""), KEY_ROW),
        (("account", "a", "images", "stability/sdxl"), ACCOUNT_ROW),
    )


def test_a_keys_own_row_for_a_model_is_a_scope_of_its_own_and_the_account_paces_the_model():
    key_scope, account_scope = scopes().for_ticket(ticket())
    assert key_scope == (("key", "k", "images", FLUX), KEY_FLUX)
    assert account_scope == (("account", "a", "images", FLUX), ACCOUNT_FLUX)


def test_a_merged_request_charges_the_account_alone_and_its_callers_their_keys_alone():
    key_scope, account_scope = scopes().for_ticket(ticket(charge=events.CHARGE_ACCOUNT))
    assert key_scope == (("key", "", "images", ""), UNLIMITED)
    assert account_scope[0] == ("account", "a", "images", FLUX)
    key_scope, account_scope = scopes().for_ticket(ticket(charge=events.CHARGE_KEY))
    assert key_scope[0] == ("key", "k", "images", FLUX)
    assert account_scope == (("account", "", "images", ""), UNLIMITED)


def test_a_ticket_asks_for_a_load_when_it_saw_newer_or_names_someone_unknown_once():
    resolver = scopes()
    assert not resolver.stale(ticket())
    assert resolver.stale(ticket(version=2))
    unknown = ticket(key="gone")
    assert resolver.stale(unknown)
    resolver.not_found(unknown)  # still unknown after a load: not loaded for again
    assert not resolver.stale(unknown)
    assert resolver.for_ticket(unknown)[0] == (("key", "gone", "images", ""), UNLIMITED)
    resolver.loaded(config(2))  # a new configuration: asked about again
    assert resolver.stale(unknown)


def test_a_new_configuration_is_applied_to_the_scopes_the_engine_holds():
    resolver = scopes()
    engine = resolver.engine
    for scope_id, limit in resolver.for_ticket(ticket()):
        engine.scope(scope_id, limit, 0.0)
    resolver.loaded(config(2, key_flux=False))  # the key's own row for the model is gone
    resolver.refresh(1.0)
    assert engine.scopes[("key", "k", "images", FLUX)].limit == KEY_ROW  # until it idles
    assert resolver.for_ticket(ticket())[0] == (("key", "k", "images", ""), KEY_ROW)


def test_what_together_says_paces_and_pauses_the_models_scope_on_the_engine():
    resolver = scopes()
    engine = resolver.engine
    _, (account_id, limit) = resolver.for_ticket(ticket())
    engine.scope(account_id, limit, 0.0)
    report: events.UpstreamReportMessage = {
        "type": events.UPSTREAM_REPORT,
        "account": "a",
        "endpoint": "images",
        "model": FLUX,
        "error_type": "",
        "pause": 0.0,
        "headers": {"x-ratelimit-limit-dynamic": "0.05"},  # 3 a minute
        "refused": False,
        "unavailable": 0,
    }
    resolver.upstream(account_id, report, 1.0)
    assert engine.scopes[account_id].limit.per_minute == pytest.approx(2.7)
    resolver.upstream(account_id, {**report, "headers": {}, "pause": 5.0}, 2.0)
    assert engine.scopes[account_id].limit.per_minute == pytest.approx(1.35)
    assert engine.scopes[account_id].paused_until == pytest.approx(7.0)

    resolver.reset_ceiling(account_id, 3.0)
    assert engine.scopes[account_id].limit == ACCOUNT_FLUX


def test_a_model_whose_callers_wait_ramps_up_on_the_engine():
    resolver = scopes()
    engine = resolver.engine
    _, (account_id, limit) = resolver.for_ticket(ticket())
    resolver.upstream(
        account_id,
        {
            "type": events.UPSTREAM_REPORT,
            "account": "a",
            "endpoint": "images",
            "model": FLUX,
            "error_type": "",
            "pause": 1.0,
            "headers": {},
            "refused": True,
            "unavailable": 0,
        },
        0.0,
    )
    assert not resolver.ramp(100.0)  # nobody waits
    wide = Limit(per_minute=6000, burst=1, queue_depth=10, max_wait=600)
    key = (("key", "k", "images", ""), wide)
    for name in ("first", "second"):
        engine.acquire(name, key, (account_id, engine.scopes[account_id].limit), 0, now=100.0)
    assert engine.tickets  # the second waits for the model's pace
    assert resolver.ramp(100.0)
    assert engine.scopes[account_id].limit.per_minute == pytest.approx(3.6)  # 3 + a tenth of 6


def test_a_model_on_a_dedicated_endpoint_is_held_by_its_key_alone():
    """Together sets no rate limit on a dedicated endpoint: the account's scope for the
    model is the unlimited one, and no ceiling is made for it; the key's still applies."""
    dedicated = dataclasses.replace(config(), dedicated=frozenset({("a", FLUX.lower())}))
    resolver = scopes(dedicated)
    key_scope, account_scope = resolver.for_ticket(ticket(FLUX.upper()))
    assert key_scope == (("key", "k", "images", FLUX.upper()), KEY_FLUX)
    assert account_scope == (("account", "", "images", ""), UNLIMITED)
    assert resolver.ceilings.ceilings == {}
    # Another model on the same account keeps its ceiling.
    assert resolver.for_ticket(ticket("black-forest-labs/other"))[1][0][1] == "a"


def test_what_together_says_of_a_dedicated_model_makes_no_ceiling_and_no_pause():
    resolver = scopes(dataclasses.replace(config(), dedicated=frozenset({("a", FLUX.lower())})))
    report: events.UpstreamReportMessage = {
        "type": events.UPSTREAM_REPORT,
        "account": "a",
        "endpoint": "images",
        "model": FLUX,
        "error_type": "",
        "pause": 5.0,
        "headers": {"x-ratelimit-limit": "1"},
        "refused": True,
        "unavailable": 0,
    }
    resolver.upstream(("account", "a", "images", FLUX), report, 1.0)
    assert resolver.ceilings.ceilings == {}
    assert resolver.engine.scopes == {}
