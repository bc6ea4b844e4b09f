"""Together misbehaving around jobs Sluice started: a job it forgets or cannot be read
never holds a slot for ever, and a create or part upload is never repeated blindly."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from limiter.gateway import jobs as api
from limiter.jobs import services
from limiter.jobs.models import Job, JobEvent, JobKind, JobState, TeamFile
from limiter.jobs.poller import Poller
from sandbox import ThreadedSandbox
from sandbox.http import ApiError
from tests.jobs.conftest import MODEL, all_done, batch_lines, call, drive, request, set_cap, upload

pytestmark = pytest.mark.django_db(transaction=True)

ENDPOINT = {JobKind.FINE_TUNE: "fine_tunes", JobKind.BATCH: "batches"}
FAILED = {JobKind.FINE_TUNE: "error", JobKind.BATCH: "FAILED"}


def body_for(sandbox: ThreadedSandbox, kind: str) -> dict[str, Any]:
    if kind == JobKind.FINE_TUNE:
        return {"model": MODEL, "training_file": upload(sandbox, b'{"text": "x"}\n', "fine-tune")}
    return {
        "endpoint": "/v1/chat/completions",
        "input_file_id": upload(sandbox, batch_lines(3), "batch-api"),
    }


def upstream_jobs(sandbox: ThreadedSandbox, kind: str) -> dict[str, Any]:
    state = sandbox.app.state
    return state.fine_tunes if kind == JobKind.FINE_TUNE else state.batches


def fail_after(sandbox: ThreadedSandbox, monkeypatch: pytest.MonkeyPatch, name: str, status: int):
    """Make the sandbox do the work of `state.<name>` and then answer `status` anyway, as
    Together behind a failing proxy does: the caller cannot tell whether it happened."""
    state = sandbox.app.state
    done = getattr(state, name)

    def then_fail(*args: Any, **kwargs: Any) -> Any:
        done(*args, **kwargs)
        raise ApiError(status, "Bad gateway", error_type="server_error")

    monkeypatch.setattr(state, name, then_fail)


async def two_jobs_one_slot(sandbox, make_key, kind: str) -> tuple[Job, Job]:
    """One job running upstream, holding the account's only slot; one queued behind it."""
    sandbox.configure({"fine_tune_seconds": 60, "batch_seconds": 60})
    await sync_to_async(set_cap)("default", ENDPOINT[kind], max_concurrent=1)
    key = await sync_to_async(make_key)("alpha")
    accept = sync_to_async(services.job_accept)
    first = await accept(key=key, kind=kind, request=body_for(sandbox, kind))
    second = await accept(key=key, kind=kind, request=body_for(sandbox, kind))
    await Poller().start_queued()
    first = await Job.objects.aget(pk=first.pk)
    second = await Job.objects.aget(pk=second.pk)
    assert (first.state, second.state) == (JobState.RUNNING, JobState.QUEUED)
    return first, second


async def poll_now(job: Job) -> Job:
    """One poll of `job`, made due now (time is not slept through)."""
    await Job.objects.filter(pk=job.pk).aupdate(next_poll_at=timezone.now())
    await Poller().poll_running()
    return await Job.objects.aget(pk=job.pk)


# --- slots never leak -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", [JobKind.FINE_TUNE, JobKind.BATCH])
async def test_a_job_together_no_longer_knows_is_ended_after_three_404s_and_frees_its_slot(
    sandbox, make_key, kind
):
    first, second = await two_jobs_one_slot(sandbox, make_key, kind)
    del upstream_jobs(sandbox, kind)[first.upstream_id]  # Together forgot it

    for _ in range(services.GONE_AFTER_POLLS - 1):
        first = await poll_now(first)
        # One 404 (or two) may be Together's blip: the job still runs and holds its slot.
        assert first.state == JobState.RUNNING
    confirm_in = first.next_poll_at - timezone.now()
    first = await poll_now(first)

    assert (first.state, first.upstream_status) == (JobState.DONE, FAILED[kind])
    assert first.error == services.MSG_JOB_GONE.format(polls=services.GONE_AFTER_POLLS)
    assert first.finished_at is not None and first.next_poll_at is None
    assert await JobEvent.objects.filter(
        job=first, state=JobState.DONE, message=first.error
    ).aexists()
    await Poller().start_queued()
    assert (await Job.objects.aget(pk=second.pk)).state == JobState.RUNNING  # the slot is free
    # 404s are confirmed slowly: a minute of Together's blip does not end a job.
    assert confirm_in >= timedelta(seconds=services.GONE_CONFIRM_SECONDS - 1)


async def test_a_404_between_good_polls_does_not_end_a_job(sandbox, make_key):
    first, _ = await two_jobs_one_slot(sandbox, make_key, JobKind.FINE_TUNE)
    jobs = upstream_jobs(sandbox, JobKind.FINE_TUNE)
    upstream = jobs.pop(first.upstream_id)
    for _ in range(services.GONE_AFTER_POLLS - 1):
        first = await poll_now(first)
    jobs[first.upstream_id] = upstream  # it was a blip
    first = await poll_now(first)
    assert first.poll_failures == 0
    del jobs[first.upstream_id]

    for _ in range(services.GONE_AFTER_POLLS - 1):
        first = await poll_now(first)

    assert first.state == JobState.RUNNING  # 404s in a row count, not 404s ever


async def test_a_job_whose_polls_keep_failing_is_ended_at_the_ceiling_and_frees_its_slot(
    sandbox, make_key, monkeypatch, settings
):
    # 60 s of failing polls: the backoff (2, 4, 8, 16, 32 s) spans that at the 6th failure.
    settings.SLUICE_JOB_LOST_AFTER = 60
    first, second = await two_jobs_one_slot(sandbox, make_key, JobKind.FINE_TUNE)

    def broken(job_id: str) -> Any:
        raise ApiError(500, "Internal error", error_type="server_error")

    monkeypatch.setattr(sandbox.app.state, "fine_tune_get", broken)

    for _ in range(5):
        first = await poll_now(first)
        assert first.state == JobState.RUNNING  # 5xx is "later", never "gone"
    first = await poll_now(first)

    assert (first.state, first.upstream_status) == (JobState.DONE, "error")
    assert first.error.startswith(services.MSG_JOB_UNREADABLE.format(seconds=60, detail=""))
    assert "HTTP 500" in first.error
    assert await JobEvent.objects.filter(job=first, message=first.error).aexists()
    await Poller().start_queued()
    assert (await Job.objects.aget(pk=second.pk)).state == JobState.RUNNING


async def test_failing_polls_back_off_to_a_cap(sandbox, make_key, monkeypatch):
    first, _ = await two_jobs_one_slot(sandbox, make_key, JobKind.FINE_TUNE)
    monkeypatch.setattr(
        sandbox.app.state, "fine_tune_get", lambda job_id: (_ for _ in ()).throw(ApiError(500, "x"))
    )
    await Job.objects.filter(pk=first.pk).aupdate(poll_failures=40)

    first = await poll_now(first)

    assert first.state == JobState.RUNNING and first.poll_failures == 41
    wait = (first.next_poll_at - timezone.now()).total_seconds()
    assert services.POLL_FAILURE_MAX_SECONDS - 5 < wait <= services.POLL_FAILURE_MAX_SECONDS


# --- creates are never repeated blindly -----------------------------------------------------
@pytest.mark.parametrize("kind", [JobKind.FINE_TUNE, JobKind.BATCH])
async def test_a_create_answered_502_after_together_made_the_job_makes_one_job_not_two(
    sandbox, make_key, monkeypatch, kind
):
    key = await sync_to_async(make_key)("alpha")
    job = await sync_to_async(services.job_accept)(
        key=key, kind=kind, request=body_for(sandbox, kind)
    )
    create = "fine_tune_create" if kind == JobKind.FINE_TUNE else "batch_create"
    fail_after(sandbox, monkeypatch, create, 502)

    await Poller().start_queued()

    job = await Job.objects.aget(pk=job.pk)
    assert job.state == JobState.STARTING  # Together may have it: not known, not re-sent
    assert len(upstream_jobs(sandbox, kind)) == 1
    monkeypatch.undo()
    # The reconciler runs once the start's deadline (and margin) is past.
    await Job.objects.filter(pk=job.pk).aupdate(claimed_at=timezone.now() - timedelta(minutes=5))
    await drive(Poller(start_deadline=0), all_done)

    (upstream_id,) = upstream_jobs(sandbox, kind)  # exactly one, and Sluice tracks it
    job = await Job.objects.aget(pk=job.pk)
    assert (job.state, job.upstream_id) == (JobState.DONE, upstream_id)
    assert job.upstream_status in ("completed", "COMPLETED")


async def test_a_split_whose_part_upload_fails_is_refused_and_leaves_no_part_files(
    sandbox, make_key, monkeypatch
):
    key = await sync_to_async(make_key)("alpha")
    file_id = upload(sandbox, batch_lines(250), "batch-api")
    await sync_to_async(services.file_record)(team_id=key.team_id, file_id=file_id)
    state = sandbox.app.state
    file_create: Callable[..., Any] = state.file_create

    def second_part_fails(*, filename: str, **kwargs: Any) -> Any:
        stored = file_create(filename=filename, **kwargs)
        if filename.endswith("-part-2.jsonl"):
            raise ApiError(502, "Bad gateway", error_type="server_error")
        return stored

    monkeypatch.setattr(state, "file_create", second_part_fails)
    body = {"endpoint": "/v1/chat/completions", "input_file_id": file_id, "split": True}

    status, answer = await call(api.batches_create, request(key, "POST", "/v1/batches", body))

    assert status == 502, answer
    assert not await Job.objects.aexists()
    # Part 2 was stored but answered 502: it cannot be found, and it was not sent twice.
    parts = sorted(f.filename for f in state.files.values() if "-part-" in f.filename)
    assert parts == [f"{file_id}-part-2.jsonl"]
    assert not await TeamFile.objects.exclude(file_id=file_id).aexists()
