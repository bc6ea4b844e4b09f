"""Which calls a configuration change cuts, and the pre-send check, against the database."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from limiter.gateway import keys
from limiter.gateway.keys import KeyInfo
from limiter.gateway.revocation import Calls, key_refusal
from limiter.models import ApiKey, Team
from limiter.services import key_issue, key_revoke, team_get_or_create

pytestmark = pytest.mark.django_db(transaction=True)


def make_key(team: str, expires_in: float | None = None) -> KeyInfo:
    team_row, _ = team_get_or_create(name=team)
    expires_at = timezone.now() + timedelta(seconds=expires_in) if expires_in is not None else None
    issued = key_issue(team=team_row, expires_at=expires_at)
    info = keys._load(issued.key.secret_hash)
    assert info is not None
    return info


def revoke(key: KeyInfo) -> None:
    key_revoke(key=ApiKey.objects.get(pk=key.key_id))


def pause(team: str) -> None:
    row = Team.objects.get(name=team)
    row.paused = True
    row.save()


def running() -> asyncio.Task:
    """A call in flight, waiting on something that never comes (the limiter, Together)."""
    return asyncio.ensure_future(asyncio.Event().wait())


async def test_a_configuration_change_cuts_the_calls_of_revoked_keys_and_paused_teams(
    seeded_transactional_db,
):
    revoked, paused, kept = [
        await sync_to_async(make_key)(team) for team in ("alpha", "beta", "gamma")
    ]
    calls = Calls()
    tasks = {key.key_id: running() for key in (revoked, paused, kept)}
    tracked = {
        key.key_id: calls.track(key, tasks[key.key_id], f"req_{key.key_id}")
        for key in (revoked, paused, kept)
    }
    await sync_to_async(revoke)(revoked)
    await sync_to_async(pause)("beta")

    calls.config_changed()  # as the broadcast does

    done, _ = await asyncio.wait([tasks[revoked.key_id], tasks[paused.key_id]], timeout=10)
    assert len(done) == 2 and all(task.cancelled() for task in done)
    assert tracked[revoked.key_id].refusal.code == "invalid_api_key"
    assert tracked[paused.key_id].refusal.code == "team_paused"
    assert (
        tracked[paused.key_id].refusal.message
        == "Team 'beta' is paused by the operators; no requests are sent for it."
    )
    # The one pass that cut them checked the third key too, and left it running.
    assert not tasks[kept.key_id].done() and tracked[kept.key_id].refusal is None
    tasks[kept.key_id].cancel()


async def test_a_call_no_longer_cuttable_or_untracked_is_left_alone(seeded_transactional_db):
    writing, finished = [await sync_to_async(make_key)(team) for team in ("alpha", "beta")]
    calls = Calls()
    tasks = [running(), running()]
    write = calls.track(writing, tasks[0], "req_write")
    write.cuttable = False  # an admitted job write: it runs to its end
    calls.untrack(calls.track(finished, tasks[1], "req_done"))
    await sync_to_async(revoke)(writing)
    await sync_to_async(revoke)(finished)

    assert await calls.recheck() == 0

    assert not any(task.done() for task in tasks)
    assert write.refusal is None
    for task in tasks:
        task.cancel()


async def test_a_call_is_cut_when_its_key_expires(seeded_transactional_db):
    expiring = await sync_to_async(make_key)("alpha", expires_in=0.3)
    calls = Calls()
    task = running()
    call = calls.track(expiring, task, "req_expiring")

    # No broadcast: expiry is a moment, not a change.
    await asyncio.wait([task], timeout=10)

    assert task.cancelled()
    assert call.refusal is not None and call.refusal.code == "invalid_api_key"


async def test_the_pre_send_check_answers_what_a_new_call_would_get(seeded_transactional_db):
    key = await sync_to_async(make_key)("alpha")
    assert await key_refusal(key) is None

    await sync_to_async(pause)("alpha")  # the change clears the key cache
    refusal = await key_refusal(key)
    assert refusal is not None and (refusal.status, refusal.code) == (403, "team_paused")

    await sync_to_async(revoke)(key)
    refusal = await key_refusal(key)
    assert refusal is not None and (refusal.status, refusal.code) == (401, "invalid_api_key")
