"""Reads on jobs: a team's own jobs, the start order of the queue, the live snapshot."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase

from django.db.models import Max, Q, QuerySet

from limiter.jobs.estimates import job_holds
from limiter.jobs.live import (
    LIVE_JOBS,
    AccountJobs,
    KindSlots,
    LiveJobsMessage,
    SlotHolder,
    WaitingJob,
)
from limiter.jobs.models import (
    ENDPOINT_OF_KIND,
    HOLDING_STATES,
    Job,
    JobEvent,
    JobKind,
    JobState,
    TeamFile,
    TeamModel,
)
from limiter.models import EndpointLimit, Team, UpstreamAccount
from limiter.usage.budgets import JobHold

# A team's list shows at most this many jobs, newest first.
LIST_LIMIT = 500


def file_ids_for_team(*, team_id: int) -> set[str]:
    """Files this team may see: those it uploaded, and those Together produced for its
    jobs (recorded when Sluice stored Together's view of the job)."""
    return set(TeamFile.objects.filter(team_id=team_id).values_list("file_id", flat=True))


def files_not_owned(*, team_id: int, file_ids: set[str]) -> set[str]:
    """Those of `file_ids` that are not this team's (one indexed query)."""
    owned = TeamFile.objects.filter(team_id=team_id, file_id__in=file_ids).values_list(
        "file_id", flat=True
    )
    return file_ids - set(owned)


@dataclass(frozen=True, slots=True)
class ModelOwner:
    team_id: int
    shared: bool  # the owner's profile lets every team use it


def model_owners() -> dict[str, ModelOwner]:
    """Every recorded fine-tuned model and checkpoint name (lower-cased), and its owner."""
    shared_by_team = {
        team_id: [str(pattern).lower() for pattern in shared] if isinstance(shared, list) else []
        for team_id, shared in Team.objects.values_list("pk", "profile__shared_models")
    }
    return {
        name: ModelOwner(
            team_id, any(fnmatchcase(name, pattern) for pattern in shared_by_team.get(team_id, ()))
        )
        for name, team_id in TeamModel.objects.values_list("name", "team_id").iterator(
            chunk_size=2000
        )
    }


def job_get_for_team(*, team_id: int, kind: str, public_id: str) -> Job | None:
    """The team's job with that id; another team's job is as good as unknown."""
    return (
        Job.objects.filter(team_id=team_id, kind=kind, public_id=public_id)
        .select_related("account", "team")
        .prefetch_related("parts")
        .first()
    )


def job_list_for_team(*, team_id: int, kind: str) -> list[Job]:
    """The team's jobs of a kind, newest first; a split batch appears once, as its parent."""
    jobs: QuerySet[Job] = Job.objects.filter(team_id=team_id, kind=kind, parent__isnull=True)
    return list(jobs.prefetch_related("parts").order_by("-created_at", "-id")[:LIST_LIMIT])


def fair_order(queued: list[Job], last_start: dict[int, datetime]) -> list[Job]:
    """Round-robin across teams, oldest first within a team.

    Each round takes one job from every team still waiting; teams go in the order they
    were last served (never served first, then longest ago), ties by their oldest job.
    `queued` must be ordered oldest first.
    """
    by_team: dict[int, deque[Job]] = {}
    for job in queued:
        by_team.setdefault(job.team_id, deque()).append(job)
    teams = sorted(
        by_team,
        key=lambda t: (
            t in last_start,
            last_start.get(t) or by_team[t][0].created_at,
            by_team[t][0].created_at,
            by_team[t][0].pk,
        ),
    )
    order: list[Job] = []
    while teams:
        for team in teams:
            order.append(by_team[team].popleft())
        teams = [team for team in teams if by_team[team]]
    return order


def key_still_usable(now: datetime) -> Q:
    """Jobs whose submitting key may still act: not revoked, expired or deleted. A job
    queued with a key that is then revoked never starts (the key may have been leaked);
    rotating a key hands its queued jobs to the replacement first (limiter.services)."""
    return Q(key__isnull=False, key__revoked_at__isnull=True) & (
        Q(key__expires_at__isnull=True) | Q(key__expires_at__gt=now)
    )


def queued_in_order(*, account_id: int, kind: str, now: datetime | None = None) -> list[Job]:
    """The account's queued jobs of a kind, in the order they will start. With `now`,
    only those that may start now: not held back by a retry delay, nor by their team
    being paused (they start when it is resumed)."""
    jobs = Job.objects.filter(
        account_id=account_id, kind=kind, state=JobState.QUEUED
    ).select_related("team")
    if now is not None:
        jobs = jobs.filter(Q(not_before__isnull=True) | Q(not_before__lte=now)).filter(
            team__paused=False
        )
        jobs = jobs.filter(key_still_usable(now))
    queued = list(jobs.order_by("created_at", "id"))
    team_ids = {job.team_id for job in queued}
    last_start = dict(
        Job.objects.filter(
            account_id=account_id, kind=kind, team_id__in=team_ids, claimed_at__isnull=False
        )
        .values("team")
        .annotate(last=Max("claimed_at"))
        .values_list("team", "last")
    )
    return fair_order(queued, last_start)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _kind_slots(account_id: int, kind: str, total: int | None) -> KindSlots:
    holders = (
        Job.objects.filter(account_id=account_id, kind=kind, state__in=HOLDING_STATES)
        .select_related("team", "parent")
        .order_by("claimed_at", "id")
    )
    waiting = queued_in_order(account_id=account_id, kind=kind)
    return KindSlots(
        used=len(holders),
        total=total,
        holders=[
            SlotHolder(
                team=job.team.name,
                job=job.public_id,
                parent=job.parent.public_id if job.parent else None,
                upstream_id=job.upstream_id,
                status=job.upstream_status if job.state == JobState.RUNNING else "starting",
                since=_iso(job.claimed_at) or "",
            )
            for job in holders
        ],
        waiting=[
            WaitingJob(
                team=job.team.name,
                job=job.public_id,
                parent=job.parent.public_id if job.parent else None,
                position=position,
                since=_iso(job.created_at) or "",
                not_before=_iso(job.not_before),
            )
            for position, job in enumerate(waiting, start=1)
        ],
    )


def jobs_version() -> int:
    """Changes whenever any job changes: the id of the newest JobEvent."""
    return JobEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def jobs_live_snapshot() -> LiveJobsMessage:
    """Fine-tune, batch and video slots, and their queues, of every upstream account."""
    accounts: dict[str, AccountJobs] = {}
    for account in UpstreamAccount.objects.order_by("name"):
        caps = dict(
            EndpointLimit.objects.filter(
                profile_id=account.profile_id, endpoint__in=ENDPOINT_OF_KIND.values(), model=""
            ).values_list("endpoint", "max_concurrent")
        )
        accounts[str(account.pk)] = AccountJobs(
            name=account.name,
            fine_tunes=_kind_slots(account.pk, JobKind.FINE_TUNE, caps.get("fine_tunes")),
            batches=_kind_slots(account.pk, JobKind.BATCH, caps.get("batches")),
            videos=_kind_slots(account.pk, JobKind.VIDEO, caps.get("videos")),
        )
    return LiveJobsMessage(type=LIVE_JOBS, at=time.time(), accounts=accounts)


def job_budget_holds() -> list[tuple[str, list[JobHold]]]:
    """Every job that holds its estimate against its budgets (Job.budget_hold), as
    (key id, holds): what a limiter that starts takes (limiter/usage/budgets.py)."""
    rows = Job.objects.filter(budget_hold__isnull=False, key__isnull=False).values_list(
        "public_id", "key_id", "budget_hold"
    )
    return [
        (str(key_id), job_holds(public_id, estimate))
        for public_id, key_id, estimate in rows.iterator(chunk_size=2000)
    ]
