"""Fine-tunes: queued beyond the account's slots, started fairly, all completed, cancellable."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from limiter.gateway import jobs as api
from limiter.jobs import services
from limiter.jobs.models import Job, JobEvent, JobKind, JobState
from limiter.jobs.poller import Poller
from limiter.protocol.events import LIVE_GROUP
from tests.jobs.conftest import MODEL, all_done, call, drive, request, set_cap, upload

pytestmark = pytest.mark.django_db(transaction=True)


async def create(key, training_file: str, **extra):
    # The team owns the file, as if it had uploaded it through Sluice.
    await sync_to_async(services.file_record)(team_id=key.team_id, file_id=training_file)
    body = {"model": MODEL, "training_file": training_file, **extra}
    return await call(api.fine_tunes_create, request(key, "POST", "/v1/fine-tunes", body))


async def test_five_fine_tunes_run_three_at_a_time_and_all_complete(sandbox, make_key):
    sandbox.configure({"fine_tune_seconds": 1.5})
    key = await sync_to_async(make_key)("alpha")
    training = upload(sandbox, b'{"text": "hello"}\n', "fine-tune")

    answers = await asyncio.gather(*(create(key, training) for _ in range(5)))

    assert [status for status, _ in answers] == [200] * 5
    statuses = sorted(body["status"] for _, body in answers)
    assert statuses.count("queued") == 2, statuses
    ids = [body["id"] for _, body in answers]
    assert all(job_id.startswith("ft-sluice-") for job_id in ids)
    assert await Job.objects.filter(state=JobState.QUEUED).acount() == 2

    await drive(Poller(), all_done)

    stats = sandbox.stats()["fine_tunes"]
    assert stats["created"] == 5
    assert stats["max_concurrent_fine_tunes_seen"] == 3
    assert stats["rejected_409"] == 0
    for job_id in ids:
        status, body = await call(
            api.fine_tune_retrieve,
            request(key, "GET", "/v1/fine-tunes/x", path_params={"id": job_id}),
        )
        assert (status, body["status"]) == (200, "completed")
        assert body["id"] == job_id and body["sluice"]["upstream_id"].startswith("ft-")
    assert await JobEvent.objects.filter(
        job__public_id=ids[0], upstream_status="completed"
    ).aexists()


async def test_cancelled_queued_job_never_starts(sandbox, make_key):
    sandbox.configure({"fine_tune_seconds": 1.0})
    key = await sync_to_async(make_key)("alpha")
    training = upload(sandbox, b'{"text": "hello"}\n', "fine-tune")
    answers = [await create(key, training) for _ in range(4)]
    queued = answers[3][1]
    assert queued["status"] == "queued"

    status, body = await call(
        api.fine_tune_cancel, request(key, "POST", "/x", path_params={"id": queued["id"]})
    )
    assert (status, body["status"]) == (200, "cancelled")

    await drive(Poller(), all_done)
    assert sandbox.stats()["fine_tunes"]["created"] == 3
    job = await Job.objects.aget(public_id=queued["id"])
    assert job.upstream_id is None and job.started_at is None and job.upstream_status == "cancelled"


async def test_running_job_is_cancelled_upstream(sandbox, make_key):
    sandbox.configure({"fine_tune_seconds": 30})
    key = await sync_to_async(make_key)("alpha")
    training = upload(sandbox, b'{"text": "hello"}\n', "fine-tune")
    _, started = await create(key, training)
    assert started["status"] != "queued"

    status, body = await call(
        api.fine_tune_cancel, request(key, "POST", "/x", path_params={"id": started["id"]})
    )

    assert (status, body["status"]) == (200, "cancelled")
    job = await Job.objects.aget(public_id=started["id"])
    assert job.state == JobState.DONE  # the slot is free at once


async def test_fair_order_across_teams_and_team_cap(sandbox, make_key):
    sandbox.configure({"fine_tune_seconds": 30})
    await sync_to_async(set_cap)("default", "fine_tunes", max_concurrent=2)
    alpha, beta = await sync_to_async(make_key)("alpha"), await sync_to_async(make_key)("beta")
    training = upload(sandbox, b'{"text": "hello"}\n', "fine-tune")
    # alpha fills the account, then queues two more; beta queues one after them.
    for _ in range(4):
        await create(alpha, training)
    _, beta_job = await create(beta, training)
    assert beta_job["status"] == "queued"
    running = [
        job async for job in Job.objects.filter(state=JobState.RUNNING).order_by("claimed_at")
    ]
    # Free one slot: beta, never served, goes before alpha's older queued jobs.
    _, _ = await call(
        api.fine_tune_cancel, request(alpha, "POST", "/x", path_params={"id": running[0].public_id})
    )
    await Poller().tick()
    assert (await Job.objects.aget(public_id=beta_job["id"])).state == JobState.RUNNING


async def test_another_teams_job_is_not_found(sandbox, make_key):
    alpha, beta = await sync_to_async(make_key)("alpha"), await sync_to_async(make_key)("beta")
    training = upload(sandbox, b'{"text": "hello"}\n', "fine-tune")
    _, job = await create(alpha, training)

    status, body = await call(
        api.fine_tune_retrieve, request(beta, "GET", "/x", path_params={"id": job["id"]})
    )
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await call(
        api.fine_tune_cancel, request(beta, "POST", "/x", path_params={"id": job["id"]})
    )
    assert status == 404
    status, listed = await call(api.fine_tunes_list, request(beta, "GET", "/v1/fine-tunes"))
    assert (status, listed) == (200, {"data": []})
    status, listed = await call(api.fine_tunes_list, request(alpha, "GET", "/v1/fine-tunes"))
    assert [item["id"] for item in listed["data"]] == [job["id"]]


async def test_missing_field_and_upstream_refusal(sandbox, make_key):
    key = await sync_to_async(make_key)("alpha")
    status, body = await call(
        api.fine_tunes_create, request(key, "POST", "/v1/fine-tunes", {"model": MODEL})
    )
    assert status == 400 and body["error"]["param"] == "training_file"
    # Together refuses a file it does not hold: the team sees Together's answer, the job is
    # recorded as an error.
    status, body = await create(key, "file-does-not-exist")
    assert status == 400
    job = await Job.objects.aget(kind=JobKind.FINE_TUNE)
    assert (job.state, job.upstream_status) == (JobState.DONE, "error")


async def test_unknown_status_holds_the_slot_and_is_logged(sandbox, make_key, caplog):
    sandbox.configure({"fine_tune_seconds": 30})
    key = await sync_to_async(make_key)("alpha")
    _, started = await create(key, upload(sandbox, b'{"text": "hello"}\n', "fine-tune"))
    job = await Job.objects.select_related("account", "team").aget(public_id=started["id"])

    changed = await sync_to_async(services.job_apply_upstream)(
        job=job, obj={"id": job.upstream_id, "status": "defrosting"}
    )

    assert changed
    job = await Job.objects.aget(pk=job.pk)
    assert (job.state, job.upstream_status) == (JobState.RUNNING, "defrosting")
    assert "unknown upstream status 'defrosting'" in caplog.text


async def test_poller_publishes_slots_and_queue_to_the_dashboard(sandbox, make_key):
    sandbox.configure({"fine_tune_seconds": 30})
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(LIVE_GROUP, channel)
    key = await sync_to_async(make_key)("alpha")
    training = upload(sandbox, b'{"text": "hello"}\n', "fine-tune")
    ids = [(await create(key, training))[1]["id"] for _ in range(4)]

    assert await Poller().publish()

    message = await asyncio.wait_for(layer.receive(channel), 5)
    assert message["type"] == "live.jobs"
    (account,) = message["accounts"].values()
    slots = account["fine_tunes"]
    assert (slots["used"], slots["total"]) == (3, 3)
    assert [holder["job"] for holder in slots["holders"]] == ids[:3]
    assert slots["holders"][0]["team"] == "alpha" and slots["holders"][0]["status"] == "pending"
    assert [(w["job"], w["position"]) for w in slots["waiting"]] == [(ids[3], 1)]
    assert account["batches"] == {"used": 0, "total": 10, "holders": [], "waiting": []}
    poller = Poller()
    await poller.publish()
    assert not await poller.publish()  # unchanged: nothing sent
