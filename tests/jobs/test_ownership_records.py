"""What Sluice records as a team's, and when: the job services, the broadcast that tells
every web process, the queue keeping a job's secrets only until it starts, and the
migration that records ownership for jobs stored before it (issue 8, items 1, 2, 4)."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor

from limiter.jobs import ownership, selectors, services
from limiter.jobs.models import Job, JobKind, JobState, ModelKind, TeamFile, TeamModel
from limiter.jobs.poller import Poller
from limiter.models import Team
from limiter.protocol import client as limiter_client
from limiter.protocol import events
from tests.jobs.conftest import MODEL, call, drive, request, set_cap, upload

pytestmark = pytest.mark.django_db(transaction=True)

SECRETS = {"wandb_api_key": "wandb-s3cret", "hf_api_token": "hf-s3cret"}


def fine_tune_obj(job_id: str, output: str, **extra: object) -> dict[str, object]:
    return {"id": job_id, "status": "running", "model_output_name": output, **extra}


@pytest.fixture(autouse=True)
def _fresh_map() -> None:
    ownership.owned_models.clear()


async def test_a_queued_job_keeps_its_secrets_until_it_starts(sandbox, make_key) -> None:
    from limiter.gateway import jobs as api

    sandbox.configure({"fine_tune_seconds": 0.5})
    await sync_to_async(set_cap)("default", "fine_tunes", max_concurrent=1)
    key = await sync_to_async(make_key)("alpha")
    training = upload(sandbox, b'{"text": "hello"}\n', "fine-tune")
    await sync_to_async(services.file_record)(team_id=key.team_id, file_id=training)
    body = {"model": MODEL, "training_file": training, **SECRETS}
    answers = [
        await call(api.fine_tunes_create, request(key, "POST", "/v1/fine-tunes", body))
        for _ in range(2)
    ]
    assert [answer["status"] for _, answer in answers] == ["pending", "queued"]
    assert not any(name in answer for _, answer in answers for name in SECRETS)
    running, queued = [await Job.objects.aget(public_id=answer["id"]) for _, answer in answers]
    assert {name: running.request[name] for name in SECRETS} == dict.fromkeys(SECRETS, "[redacted]")
    assert {name: queued.request[name] for name in SECRETS} == SECRETS  # still to be sent

    await drive(Poller(), lambda: Job.objects.get(pk=queued.pk).state != JobState.QUEUED)

    started = await Job.objects.aget(pk=queued.pk)
    assert {name: started.request[name] for name in SECRETS} == dict.fromkeys(SECRETS, "[redacted]")
    sent = [job.request for job in sandbox.app.state.fine_tunes.values()]
    assert [{name: request.get(name) for name in SECRETS} for request in sent] == [SECRETS, SECRETS]


def test_what_together_reports_for_a_job_is_its_teams_and_nothing_its_request_names(
    make_key,
) -> None:
    alpha, beta = make_key("alpha"), make_key("beta")
    TeamFile.objects.create(team_id=beta.team_id, file_id="file-beta")
    job = services.job_accept(
        key=alpha,
        kind=JobKind.BATCH,
        request={"input_file_id": "file-alpha", "output_file_id": "file-beta"},
    )
    Job.objects.filter(pk=job.pk).update(state=JobState.RUNNING, upstream_status="IN_PROGRESS")
    job.refresh_from_db()

    # An upstream that echoed the request's output_file_id must not hand it over.
    services.job_apply_upstream(
        job=job,
        obj={
            "id": "b-1",
            "status": "COMPLETED",
            "output_file_id": "file-beta",
            "error_file_id": "file-errors",
            "input_file_id": "file-alpha",
        },
    )

    assert selectors.file_ids_for_team(team_id=alpha.team_id) == {"file-errors"}


async def test_new_models_reach_every_web_process_through_the_broadcast(make_key) -> None:
    alpha = await sync_to_async(make_key)("alpha")
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(events.CONFIG_GROUP, channel)
    job = await sync_to_async(services.job_accept)(
        key=alpha, kind=JobKind.FINE_TUNE, request={"model": MODEL, "training_file": "f"}
    )
    # The accept recorded Sluice's own id as a checkpoint, and said so.
    assert await asyncio.wait_for(layer.receive(channel), 1) == {"type": events.MODELS_CHANGED}
    await Job.objects.filter(pk=job.pk).aupdate(state=JobState.STARTING)
    await ownership.owned_models.owners()
    assert ownership.owned_models.loaded is not None

    def start_and_check_before_commit() -> None:
        with transaction.atomic():
            services._record_started(job, fine_tune_obj("ft-1", "org/Model-A-1"), "started")
            assert ownership.owned_models.loaded is not None  # nothing said before the commit

    await sync_to_async(start_and_check_before_commit)()

    assert ownership.owned_models.loaded is None  # this process: at once
    assert await asyncio.wait_for(layer.receive(channel), 1) == {"type": events.MODELS_CHANGED}
    owners = await ownership.owned_models.owners()
    assert (
        owners["org/model-a-1"].team_id == alpha.team_id and owners["ft-1"].team_id == alpha.team_id
    )
    assert set(
        await sync_to_async(lambda: set(TeamModel.objects.values_list("name", "kind")))()
    ) == {
        ("org/model-a-1", ModelKind.MODEL),
        ("ft-1", ModelKind.CHECKPOINT),
        (job.public_id.lower(), ModelKind.CHECKPOINT),
    }

    # Every other web process: its LimiterClient hears the broadcast and drops its map.
    await ownership.owned_models.owners()
    assert limiter_client.LimiterClient().broadcasts.hear({"type": events.MODELS_CHANGED})
    assert ownership.owned_models.loaded is None


def test_a_load_that_raced_a_change_is_not_kept(make_key, monkeypatch) -> None:
    real = selectors.model_owners

    def load_then_change() -> dict:
        owners = real()
        ownership.owned_models.clear()  # a change committed while the load ran
        return owners

    monkeypatch.setattr(selectors, "model_owners", load_then_change)
    ownership.owned_models.load()
    assert ownership.owned_models.loaded is None


def test_shared_models_follow_the_owners_profile(make_key) -> None:
    alpha, beta = make_key("alpha"), make_key("beta")
    TeamModel.objects.create(team_id=alpha.team_id, name="org/a-shared-1", kind=ModelKind.MODEL)
    TeamModel.objects.create(team_id=alpha.team_id, name="org/a-private-1", kind=ModelKind.MODEL)
    profile = Team.objects.get(pk=alpha.team_id).profile
    profile.shared_models = ["ORG/*-shared-*"]
    profile.save()

    owners = selectors.model_owners()

    assert ownership.usable(owners, team_id=beta.team_id, name="org/A-Shared-1")
    assert not ownership.usable(owners, team_id=beta.team_id, name="org/a-private-1")
    assert ownership.usable(owners, team_id=alpha.team_id, name="org/a-private-1")
    assert ownership.usable(owners, team_id=beta.team_id, name="meta-llama/anything")


def test_migration_records_ownership_from_together_view_and_redacts_secrets(make_key) -> None:
    alpha, beta = make_key("alpha"), make_key("beta")
    executor = MigrationExecutor(connection)
    executor.migrate([("limiter", "0004_team_files")])
    apps = executor.loader.project_state([("limiter", "0004_team_files")]).apps
    OldJob = apps.get_model("limiter", "Job")
    common = {"account_id": alpha.account_id, "team_id": alpha.team_id, "key_prefix": ""}
    OldJob.objects.create(
        public_id="batch-sluice-1",
        kind="batch",
        state="done",
        **common,
        request={"input_file_id": "file-a", "output_file_id": "file-beta"},
        upstream={"id": "u-1", "output_file_id": "file-out", "error_file_id": "file-beta"},
    )
    OldJob.objects.create(
        public_id="ft-sluice-2",
        kind="fine_tune",
        state="done",
        upstream_id="ft-up-2",
        **common,
        request={"training_file": "file-a", **SECRETS},
        upstream={"id": "ft-up-2", "model_output_name": "Org/Tuned-2", "wandb_api_key": "x"},
    )
    OldJob.objects.create(
        public_id="ft-sluice-3",
        kind="fine_tune",
        state="queued",
        **common,
        request={"training_file": "file-a", **SECRETS},
    )

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    assert selectors.file_ids_for_team(team_id=alpha.team_id) == {"file-out"}
    assert selectors.file_ids_for_team(team_id=beta.team_id) == set()
    assert set(TeamModel.objects.filter(team_id=alpha.team_id).values_list("name", flat=True)) == {
        "org/tuned-2",
        "ft-up-2",
        "ft-sluice-2",
        "ft-sluice-3",
    }
    done, queued = (
        Job.objects.get(public_id="ft-sluice-2"),
        Job.objects.get(public_id="ft-sluice-3"),
    )
    assert {name: done.request[name] for name in SECRETS} == dict.fromkeys(SECRETS, "[redacted]")
    assert done.upstream["wandb_api_key"] == "[redacted]"
    assert {name: queued.request[name] for name in SECRETS} == SECRETS
