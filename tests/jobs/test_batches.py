"""Batches: the per-batch request cap (refused, or split on request) and at most N at once."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from limiter.gateway import jobs as api
from limiter.jobs import services
from limiter.jobs.models import Job, JobState
from limiter.jobs.poller import Poller
from tests.jobs.conftest import MODEL, all_done, batch_lines, call, drive, request, upload

pytestmark = pytest.mark.django_db(transaction=True)


async def create(key, file_id: str, *, headers=None, **extra):
    # The team owns the file, as if it had uploaded it through Sluice.
    await sync_to_async(services.file_record)(team_id=key.team_id, file_id=file_id)
    body = {
        "endpoint": "/v1/chat/completions",
        "input_file_id": file_id,
        "model_id": MODEL,
        **extra,
    }
    return await call(
        api.batches_create, request(key, "POST", "/v1/batches", body, headers=headers)
    )


async def test_batch_over_the_cap_is_refused_clearly(sandbox, make_key):
    key = await sync_to_async(make_key)("alpha")
    file_id = upload(sandbox, batch_lines(101), "batch-api")

    status, body = await create(key, file_id)

    assert status == 400
    assert body["error"]["code"] == "batch_too_large"
    assert "101 requests" in body["error"]["message"] and "at most 100" in body["error"]["message"]
    assert sandbox.stats()["batches"]["created"] == 0
    assert not await Job.objects.aexists()


@pytest.mark.parametrize("how", ["body", "header"])
async def test_batch_of_250_with_split_becomes_three_batches(sandbox, make_key, how):
    key = await sync_to_async(make_key)("alpha")
    file_id = upload(sandbox, batch_lines(250), "batch-api")
    option = {"split": True} if how == "body" else {}
    headers = {"x-sluice-split-batch": "true"} if how == "header" else None

    status, body = await create(key, file_id, headers=headers, **option)

    assert status == 201, body
    assert "3 batches" in body["warning"]
    job = body["job"]
    assert job["id"].startswith("batch-sluice-") and job["sluice"]["request_count"] == 250
    assert [part["sluice"]["request_count"] for part in job["sluice"]["parts"]] == [100, 100, 50]

    await drive(Poller(), all_done)

    stats = sandbox.stats()["batches"]
    assert stats["created"] == 3
    assert sorted(stats["request_counts"].values()) == [50, 100, 100]
    status, shown = await call(
        api.batch_retrieve, request(key, "GET", "/x", path_params={"id": job["id"]})
    )
    assert (status, shown["status"], shown["progress"]) == (200, "COMPLETED", 100.0)
    assert all(part["output_file_id"] for part in shown["sluice"]["parts"])
    status, listed = await call(api.batches_list, request(key, "GET", "/v1/batches"))
    assert [item["id"] for item in listed] == [job["id"]]  # one batch to the team, not three


async def test_twelve_batches_run_at_most_ten_at_a_time(sandbox, make_key):
    sandbox.configure({"batch_seconds": 2.0})
    key = await sync_to_async(make_key)("alpha")
    file_id = upload(sandbox, batch_lines(5), "batch-api")

    answers = await asyncio.gather(*(create(key, file_id) for _ in range(12)))

    assert [status for status, _ in answers] == [201] * 12
    assert sorted(body["job"]["status"] for _, body in answers).count("QUEUED") == 2
    await drive(Poller(), all_done)
    stats = sandbox.stats()["batches"]
    assert stats["created"] == 12
    assert stats["max_concurrent_batches_seen"] == 10
    assert await Job.objects.filter(upstream_status="COMPLETED").acount() == 12


async def test_cancel_queued_and_running_batches(sandbox, make_key):
    sandbox.configure({"batch_seconds": 30})
    key = await sync_to_async(make_key)("alpha")
    file_id = upload(sandbox, batch_lines(3), "batch-api")
    answers = [await create(key, file_id) for _ in range(11)]
    running, queued = answers[0][1]["job"], answers[10][1]["job"]
    assert queued["status"] == "QUEUED"

    for job in (queued, running):
        status, body = await call(
            api.batch_cancel, request(key, "POST", "/x", path_params={"id": job["id"]})
        )
        assert (status, body["status"]) == (200, "CANCELLED")

    assert sandbox.stats()["batches"]["created"] == 10
    assert (await Job.objects.aget(public_id=queued["id"])).upstream_id is None
    assert (await Job.objects.aget(public_id=running["id"])).state == JobState.DONE


async def test_unknown_input_file_passes_togethers_error_through(sandbox, make_key):
    key = await sync_to_async(make_key)("alpha")
    status, body = await create(key, "file-nope")
    assert status == 404 and "file-nope" in str(body)
