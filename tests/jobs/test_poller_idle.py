"""The poller's idle pass (limiter/jobs/poller.py `jobs_pending`): with no job in flight it
runs only its publish step, one query where its eight were. Its check must be a superset of
what every step selects, or a job would wait for nothing: each shape of job row below is
put alone in the table, and any step that would select it must find `jobs_pending` true."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from limiter.jobs import budgets, services
from limiter.jobs.models import Job, JobKind, JobState
from limiter.jobs.poller import Poller, jobs_pending
from limiter.jobs.usage_collection import USAGE_LOOKBACK, jobs_usage_due
from limiter.models import Team
from limiter.usage.models import JobUsage

pytestmark = pytest.mark.django_db(transaction=True)


def _selected_by_a_step() -> list[str]:
    """The steps' own selections (step 0 last: it cancels what it selects)."""
    steps = {
        "reconcile_starting": bool(services.jobs_stale_starting(older_than=-3600)),
        "poll_running": bool(services.jobs_due_poll()),
        "start_queued": bool(services.queued_work()),
        "record_usage": bool(jobs_usage_due()),
        "release_holds": bool(budgets.jobs_holding_ended(lookback=USAGE_LOOKBACK)),
    }
    steps["cancel_keyless"] = services.jobs_cancel_keyless() > 0
    return [name for name, selected in steps.items() if selected]


def _shapes() -> list[dict[str, Any]]:
    now = timezone.now()
    shapes = []
    for state, upstream, hold, finished, recorded in itertools.product(
        list(JobState),
        (None, "ft-upstream"),
        (None, {"tokens": 10.0, "cost": 0.0}),
        (None, now - timedelta(minutes=5), now - USAGE_LOOKBACK - timedelta(days=1)),
        (False, True),
    ):
        shapes.append(
            {
                "state": state,
                "upstream_id": upstream,
                "budget_hold": hold,
                "finished_at": finished,
                "claimed_at": now - timedelta(hours=2),
                "recorded": recorded,
            }
        )
    return shapes


def _check_every_shape(team, account) -> list[str]:  # type: ignore[no-untyped-def]
    missed = []
    for number, shape in enumerate(_shapes()):
        Job.objects.all().delete()
        recorded = shape.pop("recorded")
        job = Job.objects.create(
            public_id=f"ft-{number}",
            kind=JobKind.FINE_TUNE,
            team=team,
            account=account,
            request={"model": "m", "training_file": "file-1"},
            **shape,
        )
        if recorded:
            JobUsage.objects.create(job=job)
        pending = jobs_pending()
        selected = _selected_by_a_step()
        if selected and not pending:
            missed.append(f"{shape} (recorded: {recorded}) selected by {selected}")
    return missed


def test_every_job_a_step_would_select_is_pending(account, make_key) -> None:
    key = make_key("idle")
    team = Team.objects.get(pk=key.team_id)
    assert _check_every_shape(team, account) == []
    Job.objects.all().delete()
    assert not jobs_pending()


async def test_an_idle_pass_only_publishes_and_a_queued_job_wakes_every_step(
    account, make_key, monkeypatch
) -> None:
    poller = Poller()
    ran: list[str] = []
    names = [
        "cancel_keyless",
        "reconcile_starting",
        "poll_running",
        "start_queued",
        "record_usage",
        "release_holds",
        "publish",
    ]
    for name in names:

        async def step(name: str = name) -> bool:
            ran.append(name)
            return False

        monkeypatch.setattr(poller, name, step)

    await poller.tick()
    assert ran == ["publish"]

    key = await sync_to_async(make_key)("busy")
    await sync_to_async(Job.objects.create)(
        public_id="ft-queued",
        kind=JobKind.FINE_TUNE,
        team_id=key.team_id,
        account=account,
        request={"model": "m", "training_file": "file-1"},
    )
    ran.clear()
    await poller.tick()
    assert ran == names
