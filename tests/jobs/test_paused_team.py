"""Jobs and the operator's hand: a paused team's queued jobs wait for it to be resumed; a
revoked key's queued jobs never start (the key may have leaked), while a rotated key's
queued jobs go on under its replacement."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from dashboard import services as ops
from limiter import services
from limiter.gateway import jobs as api
from limiter.jobs import services as jobs
from limiter.jobs.models import Job, JobState
from limiter.jobs.poller import Poller
from limiter.models import ApiKey, Team
from tests.jobs.conftest import MODEL, call, request, set_cap, upload

pytestmark = pytest.mark.django_db(transaction=True)


async def create(key, training_file: str) -> dict:
    # The team owns the file, as if it had uploaded it through Sluice.
    await sync_to_async(jobs.file_record)(team_id=key.team_id, file_id=training_file)
    status, body = await call(
        api.fine_tunes_create,
        request(key, "POST", "/v1/fine-tunes", {"model": MODEL, "training_file": training_file}),
    )
    assert status == 200, body
    return body


async def cancel(key, job: dict) -> None:
    status, body = await call(
        api.fine_tune_cancel, request(key, "POST", "/x", path_params={"id": job["id"]})
    )
    assert (status, body["status"]) == (200, "cancelled")


async def state(job: dict) -> str:
    return (await Job.objects.aget(public_id=job["id"])).state


def pause(team: str, paused: bool) -> None:
    ops.team_pause(actor=None, team=Team.objects.get(name=team), paused=paused)


@pytest.fixture
def one_slot(sandbox) -> None:
    # Fine-tunes last long enough that only a cancel frees the one slot: each step is explicit.
    sandbox.configure({"fine_tune_seconds": 60})
    set_cap("default", "fine_tunes", max_concurrent=1)


async def test_a_paused_teams_queued_job_waits_until_the_team_is_resumed(
    sandbox, make_key, one_slot
):
    alpha, beta = await sync_to_async(make_key)("alpha"), await sync_to_async(make_key)("beta")
    training = upload(sandbox, b'{"text": "hello"}\n', "fine-tune")
    running = await create(alpha, training)
    queued = await create(alpha, training)
    assert queued["status"] == "queued"

    await sync_to_async(pause)("alpha", True)
    await cancel(alpha, running)  # the slot is free
    await Poller().tick()

    assert await state(queued) == JobState.QUEUED  # paused: it does not take the slot
    assert sandbox.stats()["fine_tunes"]["created"] == 1
    # Nor does it hold up another team's work.
    other = await create(beta, training)
    assert await state(other) == JobState.RUNNING

    await sync_to_async(pause)("alpha", False)
    await cancel(beta, other)
    await Poller().tick()

    assert await state(queued) == JobState.RUNNING  # resumed: it starts
    assert sandbox.stats()["fine_tunes"]["created"] == 3


async def test_a_revoked_keys_queued_job_is_cancelled_and_never_starts(sandbox, make_key, one_slot):
    alpha = await sync_to_async(make_key)("alpha")
    training = upload(sandbox, b'{"text": "hello"}\n', "fine-tune")
    running = await create(alpha, training)
    queued = await create(alpha, training)

    key = await ApiKey.objects.aget(pk=alpha.key_id)
    await sync_to_async(services.key_revoke)(key=key)
    await cancel(alpha, running)  # the slot is free
    await Poller().tick()

    job = await Job.objects.aget(public_id=queued["id"])
    assert (job.state, job.upstream_status, job.upstream_id) == (JobState.DONE, "cancelled", None)
    assert job.error == jobs.MSG_KEY_REVOKED
    assert sandbox.stats()["fine_tunes"]["created"] == 1  # only the first ever reached Together


async def test_a_rotated_keys_queued_job_goes_on_under_the_new_key(sandbox, make_key, one_slot):
    alpha = await sync_to_async(make_key)("alpha")
    training = upload(sandbox, b'{"text": "hello"}\n', "fine-tune")
    running = await create(alpha, training)
    queued = await create(alpha, training)

    key = await ApiKey.objects.aget(pk=alpha.key_id)
    issued = await sync_to_async(services.key_rotate)(key=key)
    await cancel(alpha, running)
    await Poller().tick()

    job = await Job.objects.aget(public_id=queued["id"])
    assert job.state == JobState.RUNNING
    assert (job.key_id, job.key_prefix) == (issued.key.pk, issued.key.prefix)
