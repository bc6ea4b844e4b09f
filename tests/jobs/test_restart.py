"""Crash safety: a start cut short is reconciled, never repeated; a killed poller loses nothing."""

from __future__ import annotations

import json
import signal
import sys
from contextlib import ExitStack, closing
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from limiter.jobs import services, together
from limiter.jobs.models import Job, JobKind, JobState
from limiter.jobs.poller import Poller
from limiter.upstream import account_target
from sandbox import ThreadedSandbox
from tests import forkserver
from tests.conftest import POSTGRES_URL, need, reachable
from tests.databases import copy_migrated_sqlite, postgres_database
from tests.forkserver import Process
from tests.jobs.conftest import MODEL, all_done, batch_lines, drive, upload
from tests.servers import Shell
from tests.waiting import wait_until


def _claim_interrupted(key, kind: str, request: dict) -> Job:
    """A job some process claimed long ago, then died before recording the upstream id."""
    job = services.job_accept(key=key, kind=kind, request=request)
    claimed = services.job_claim_next(account_id=job.account_id, kind=kind)
    assert claimed is not None and claimed.pk == job.pk
    Job.objects.filter(pk=job.pk).update(claimed_at=timezone.now() - timedelta(minutes=5))
    return Job.objects.select_related("account", "team").get(pk=job.pk)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", [JobKind.FINE_TUNE, JobKind.BATCH, JobKind.VIDEO])
async def test_interrupted_start_that_reached_together_is_adopted_not_repeated(
    sandbox, make_key, kind
):
    key = await sync_to_async(make_key)("alpha")
    if kind == JobKind.FINE_TUNE:
        body = {"model": MODEL, "training_file": upload(sandbox, b'{"text": "x"}\n', "fine-tune")}
    elif kind == JobKind.VIDEO:
        # Found again by its model and prompt, and a created_at in Unix seconds.
        body = {"model": "minimax/video-01-director", "prompt": "a sluice gate"}
    else:
        body = {
            "endpoint": "/v1/chat/completions",
            "input_file_id": upload(sandbox, batch_lines(3), "batch-api"),
        }
    job = await sync_to_async(_claim_interrupted)(key, kind, body)
    # The dead process's call did reach Together.
    created = together.created_object(
        kind, (await together.submit(account_target(job.account), job)).json()
    )

    assert await Poller(start_deadline=0).reconcile_starting()

    job = await Job.objects.aget(pk=job.pk)
    assert (job.state, job.upstream_id) == (JobState.RUNNING, created["id"])
    await drive(Poller(start_deadline=0), all_done)
    stats = sandbox.stats()
    async with httpx.AsyncClient(headers={"authorization": "Bearer k"}) as http:
        videos = (await http.get(f"{sandbox.url}/v2/videos")).json()["data"]
    created_anywhere = len(videos)
    assert stats["fine_tunes"]["created"] + stats["batches"]["created"] + created_anywhere == 1


@pytest.mark.django_db(transaction=True)
async def test_interrupted_start_that_never_reached_together_is_started_once(sandbox, make_key):
    key = await sync_to_async(make_key)("alpha")
    body = {"model": MODEL, "training_file": upload(sandbox, b'{"text": "x"}\n', "fine-tune")}
    job = await sync_to_async(_claim_interrupted)(key, JobKind.FINE_TUNE, body)
    # A fresh claim is left alone: its start may still be in flight.
    assert not await Poller(start_deadline=3600).reconcile_starting()

    await drive(Poller(start_deadline=0), all_done)

    job = await Job.objects.aget(pk=job.pk)
    assert (job.state, job.upstream_status) == (JobState.DONE, "completed")
    assert sandbox.stats()["fine_tunes"]["created"] == 1


# --- the poller as a real process, killed with SIGKILL ----------------------------------------
class Deployment:
    """A migrated database a subprocess can see, and `manage.py` commands against it."""

    def __init__(self, database_url: str, sandbox: ThreadedSandbox, tmp_path: Path) -> None:
        self.env = {
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "DATABASE_URL": database_url,
            "TOGETHER_BASE_URL": sandbox.v1_url,
            "TOGETHER_API_KEY": "",
            "SECRET_KEY": "jobs-test",
            "PYTHONUNBUFFERED": "1",
        }
        self.tmp_path = tmp_path
        self._shell: Shell | None = None

    def python(self, code: str) -> object:
        """Run code in `manage.py shell`; its last line printed as JSON is returned. One
        shell answers every call (polling started a Django process twice a second)."""
        if self._shell is None:
            self._shell = Shell(self.env)
        return json.loads(self._shell.run(code).strip().splitlines()[-1])

    def close(self) -> None:
        if self._shell is not None:
            self._shell.close()

    def poller(self) -> Process:
        with open(self.tmp_path / "poller.log", "ab") as log:
            return forkserver.spawn(
                [
                    sys.executable,
                    "manage.py",
                    "jobpoller",
                    "--interval",
                    "0.2",
                    "--start-deadline",
                    "1",
                ],
                env=self.env,
                stdout=log,
            )

    def jobs(self) -> list[dict]:
        return self.python(
            "import json; from limiter.jobs.models import Job\n"
            "print(json.dumps(list(Job.objects.values("
            "'public_id', 'kind', 'state', 'upstream_status', 'upstream_id'))))"
        )


def running(poller: Process, deployment: Deployment) -> bool:
    """True while the poller runs; its log in the failure once it has exited."""
    assert poller.poll() is None, (deployment.tmp_path / "poller.log").read_text()
    return True


SUBMIT = """
import json
from limiter.gateway import keys
from limiter.jobs import services
from limiter.models import ApiKey
from limiter.services import key_issue, team_get_or_create
from limiter.models import UpstreamAccount
UpstreamAccount.objects.filter(is_default=True).update(base_url={base_url!r})
infos = []
for team in ("alpha", "beta"):
    issued = key_issue(team=team_get_or_create(name=team)[0])
    infos.append(keys._load(issued.key.secret_hash))
for n in range(6):
    services.job_accept(
        key=infos[n % 2],
        kind="fine_tune",
        request={{"model": {model!r}, "training_file": {training!r}}},
    )
for n in range(12):
    services.job_accept(
        key=infos[n % 2],
        kind="batch",
        request={{"endpoint": "/v1/chat/completions", "input_file_id": {batch_file!r}}},
    )
print(json.dumps("ok"))
"""


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_poller_killed_with_sigkill_and_restarted_loses_and_duplicates_nothing(
    sandbox, tmp_path, database
):
    with ExitStack() as stack:
        # A copy of the run's migrated template on either engine (tests/databases.py):
        # migrating afresh is 3.6 s of CPU, and the test is about the poller.
        if database == "sqlite":
            copy_migrated_sqlite(tmp_path / "jobs.sqlite3")
            url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
        else:
            need(reachable(POSTGRES_URL), f"PostgreSQL is not reachable at {POSTGRES_URL}")
            url = stack.enter_context(postgres_database(POSTGRES_URL, prefix="sluice_jobs"))
        deployment = stack.enter_context(closing(Deployment(url, sandbox, tmp_path)))
        _poller_killed_and_restarted(sandbox, deployment)


def _poller_killed_and_restarted(sandbox: ThreadedSandbox, deployment: Deployment) -> None:
    sandbox.configure({"fine_tune_seconds": 2.0, "batch_seconds": 2.0})
    training = upload(sandbox, b'{"text": "x"}\n', "fine-tune")
    batch_file = upload(sandbox, batch_lines(3), "batch-api")
    deployment.python(
        SUBMIT.format(
            base_url=sandbox.v1_url, model=MODEL, training=training, batch_file=batch_file
        )
    )

    poller = deployment.poller()
    try:
        # Mid-way: the first jobs are running upstream, others still wait.
        wait_until(
            lambda: running(poller, deployment) and sandbox.stats(),
            lambda stats: stats["fine_tunes"]["created"] >= 3 and stats["batches"]["created"] >= 10,
            within=30,
        )
        poller.send_signal(signal.SIGKILL)
        poller.wait(10)
    finally:
        if poller.poll() is None:
            poller.kill()
    before = deployment.jobs()
    assert len(before) == 18
    assert any(job["state"] == "queued" for job in before)
    # Make sure a crash window is covered too: a start claimed but never sent upstream.
    deployment.python(
        "import json; from datetime import timedelta; from django.utils import timezone\n"
        "from limiter.jobs.models import Job\n"
        "job = Job.objects.filter(state='queued', kind='fine_tune').first()\n"
        "Job.objects.filter(pk=job.pk).update("
        "state='starting', claimed_at=timezone.now() - timedelta(hours=1))\n"
        "print(json.dumps(job.public_id))"
    )

    poller = deployment.poller()
    try:
        jobs = wait_until(
            lambda: running(poller, deployment) and deployment.jobs(),
            lambda jobs: all(job["state"] == "done" for job in jobs),
            within=60,
            every=0.2,
        )
        poller.send_signal(signal.SIGTERM)
        assert poller.wait(15) == 0
    finally:
        if poller.poll() is None:
            poller.kill()

    stats = sandbox.stats()
    assert (
        stats["fine_tunes"]["created"] == 6 and stats["batches"]["created"] == 12
    )  # nothing started twice
    assert stats["fine_tunes"]["max_concurrent_fine_tunes_seen"] == 3
    assert stats["batches"]["max_concurrent_batches_seen"] <= 10
    assert {job["upstream_status"] for job in jobs} == {"completed", "COMPLETED"}  # nothing lost
    assert len({job["upstream_id"] for job in jobs}) == 18
    with httpx.Client(base_url=sandbox.v1_url, headers={"authorization": "Bearer x"}) as upstream:
        assert len(upstream.get("/fine-tunes").json()["data"]) == 6
