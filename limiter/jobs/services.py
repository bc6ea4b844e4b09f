"""Writes on fine-tune jobs, batches and video jobs: accept, start fairly within caps, poll, cancel.

Starting is claim-then-call: a conditional UPDATE moves a job from queued to starting
only while the account (and the team) still has a free slot, so two processes can
never start the same job or overfill the caps. Only then is Together called, and the
upstream id recorded. A job left in "starting" by a crash is reconciled by looking it
up upstream (`together.find_started`) before it may be started again. A create is
sent once, never retried: a job whose create got no clear answer stays "starting"
and is settled the same way (a blind retry could make a second upstream job).

A running job never holds its slot for ever. Its polls back off on failure (2 s
doubling, at most POLL_FAILURE_MAX_SECONDS apart), and it is recorded as ended
(`done`, upstream status "error" / "FAILED", an error saying why, a JobEvent), which
frees its slot, when either:
- Together answers 404 (or 410) to GONE_AFTER_POLLS polls in a row, spaced at least
  GONE_CONFIRM_SECONDS apart: it no longer knows the job, and one 404 may be a blip;
- its polls have failed for SLUICE_JOB_LOST_AFTER (default 24 h) whatever the cause
  (5xx, no answer). That span is counted on the backoff schedule, so a job is never
  ended sooner; a poller that was down adds to it.
A successful poll in between starts both counts again.

Functions without `async` touch only the database; the async ones call Together and
reach the database through `sync_to_async`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Func, IntegerField, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.db.models.lookups import LessThan
from django.utils import timezone

from limiter.jobs import budgets, fields, together
from limiter.jobs.estimates import Estimate
from limiter.jobs.models import (
    BATCH_TERMINAL,
    ENDPOINT_OF_KIND,
    FINE_TUNE_TERMINAL,
    HOLDING_STATES,
    VIDEO_TERMINAL,
    Job,
    JobEvent,
    JobKind,
    JobState,
    ModelKind,
    TeamFile,
    TeamModel,
    new_public_id,
)
from limiter.jobs.ownership import broadcast_models_changed, model_key
from limiter.jobs.selectors import key_still_usable, queued_in_order
from limiter.models import ConfigVersion, EndpointLimit, UpstreamAccount
from limiter.upstream import Target, UpstreamError, account_target

logger = logging.getLogger(__name__)


class Caller(Protocol):
    """The key a job is made under, as these services read it: the gateway's KeyInfo is
    one, and so is any object with these attributes."""

    @property
    def key_id(self) -> str: ...
    @property
    def prefix(self) -> str: ...
    @property
    def team_id(self) -> int: ...
    @property
    def account_id(self) -> str: ...
    @property
    def target(self) -> Target: ...
    @property
    def max_batch_requests(self) -> int | None: ...


# Statuses Together documents; anything else is logged once per change and treated as running.
KNOWN_STATUSES = {
    JobKind.FINE_TUNE: FINE_TUNE_TERMINAL
    | {"pending", "queued", "running", "compressing", "uploading", "cancel_requested"},
    JobKind.BATCH: BATCH_TERMINAL | {"VALIDATING", "IN_PROGRESS", "CANCELING"},
    JobKind.VIDEO: VIDEO_TERMINAL | {"queued", "in_progress"},
}
# What Sluice records for a job that ended without ever running upstream.
CANCELLED = {JobKind.FINE_TUNE: "cancelled", JobKind.BATCH: "CANCELLED", JobKind.VIDEO: "cancelled"}
FAILED = {JobKind.FINE_TUNE: "error", JobKind.BATCH: "FAILED", JobKind.VIDEO: "failed"}

POLL_BASE_SECONDS = 1.0
POLL_MAX_SECONDS = 60.0
POLL_FAILURE_MAX_SECONDS = 300.0
# A job Together answers 404 for this many polls in a row is gone (see the docstring).
GONE_AFTER_POLLS = 3
GONE_CONFIRM_SECONDS = 30.0
GONE_STATUSES = frozenset({404, 410})
# Together said "busy" (409/429) to a start: wait this long before trying that job again.
BUSY_RETRY_SECONDS = 15.0
# A start in flight can last the start deadline; a claim older than this plus the margin
# belongs to a process that died, so reconciling it cannot race a live start.
RECONCILE_MARGIN_SECONDS = 5.0


class BatchTooLarge(Exception):
    def __init__(self, count: int, cap: int) -> None:
        super().__init__(f"{count} requests > {cap}")
        self.count = count
        self.cap = cap


class ModelNotUsable(Exception):
    """A batch's requests name a fine-tuned model that is another team's."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model


class UpstreamRefused(Exception):
    """Together answered with an error the team should see as it is."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"upstream answered {response.status_code}")
        self.response = response


@dataclass(slots=True)
class StartResult:
    outcome: str  # "started" | "requeued" | "held" | "failed" | "unknown"
    response: httpx.Response | None = None
    warning: str | None = None


@dataclass(slots=True)
class BatchPlan:
    """The input file's requests, and the part files a split batch will run on."""

    request_count: int
    part_files: list[tuple[str, int]] = field(default_factory=list)  # (file id, requests)
    # The requests of each job to be stored (one, or one a part): what their estimates
    # are made of (limiter/jobs/estimates.py).
    lines: list[list[bytes]] = field(default_factory=list)


# --- accepting ---------------------------------------------------------------------------
def _event(job: Job, message: str = "") -> None:
    JobEvent.objects.create(
        job=job, state=job.state, upstream_status=job.upstream_status, message=message[:300]
    )


def _new_job(
    *,
    key: Caller,
    kind: str,
    request: dict[str, Any],
    parent: Job | None = None,
    request_count: int | None = None,
    state: str = JobState.QUEUED,
    public_id: str = "",
    estimate: Estimate | None = None,
) -> Job:
    job = Job(
        public_id=public_id or new_public_id(kind),
        budget_hold=estimate,
        kind=kind,
        team_id=key.team_id,
        key_id=int(key.key_id),
        key_prefix=key.prefix,
        account_id=int(key.account_id),
        parent=parent,
        state=state,
        request=request,
        request_count=request_count,
    )
    if kind == JobKind.FINE_TUNE and not request.get("suffix"):
        # The marker rides in the suffix so a start cut short by a crash can be found upstream.
        job.request = {**request, "suffix": job.marker}
    if state == JobState.GROUP:
        job.request = fields.redacted(job.request)  # never sent itself: its parts carry the body
    job.save()
    if kind == JobKind.FINE_TUNE:
        # Sluice's own id names the job's checkpoints too: it is the team's from now on.
        team_models_record(job=job, names={model_key(job.public_id): ModelKind.CHECKPOINT})
    _event(job, "accepted")
    return job


@transaction.atomic
def job_accept(
    *,
    key: Caller,
    kind: str,
    request: dict[str, Any],
    request_count: int | None = None,
    public_id: str = "",
    estimate: Estimate | None = None,
) -> Job:
    """Store a job as queued, with the estimate it holds against its budgets (None:
    none held, usage not recorded). It is committed before the team hears back."""
    return _new_job(
        key=key,
        kind=kind,
        request=request,
        request_count=request_count,
        public_id=public_id,
        estimate=estimate,
    )


@transaction.atomic
def batch_accept_split(
    *,
    key: Caller,
    request: dict[str, Any],
    plan: BatchPlan,
    part_ids: list[str] | None = None,
    estimates: list[Estimate] | None = None,
) -> Job:
    """Store a split batch: one parent the team sees (it holds nothing), and one queued
    part per file, each with its id and estimate when given."""
    parent = _new_job(
        key=key,
        kind=JobKind.BATCH,
        request=request,
        request_count=plan.request_count,
        state=JobState.GROUP,
    )
    for n, (file_id, count) in enumerate(plan.part_files):
        # Sluice made the part files from the team's own file: they are the team's.
        file_record(team_id=key.team_id, file_id=file_id)
        _new_job(
            key=key,
            kind=JobKind.BATCH,
            request={**request, "input_file_id": file_id},
            parent=parent,
            request_count=count,
            public_id=part_ids[n] if part_ids else "",
            estimate=estimates[n] if estimates else None,
        )
    return parent


async def batch_plan(
    *, key: Caller, input_file_id: str, split: bool, model_usable: Callable[[str], bool]
) -> BatchPlan:
    """Count the input file's requests against the key's per-batch cap; split it if asked.

    Raises ModelNotUsable (a request names another team's fine-tuned model: a batch
    would run it as surely as a chat call), BatchTooLarge (over the cap, no split
    asked), UpstreamRefused or UpstreamError. A part that fails to upload fails the
    split, and the parts already uploaded are deleted.
    """
    target = key.target
    response = await together.file_content(target, input_file_id)
    if response.status_code != 200:
        raise UpstreamRefused(response)
    lines = [line for line in response.content.splitlines() if line.strip()]
    for model in _batch_models(lines):
        if not model_usable(model):
            raise ModelNotUsable(model)
    cap = key.max_batch_requests
    plan = BatchPlan(request_count=len(lines), lines=[lines])
    if cap is None or len(lines) <= cap:
        return plan
    if not split:
        raise BatchTooLarge(len(lines), cap)
    chunks = [lines[i : i + cap] for i in range(0, len(lines), cap)]
    # Every upload is let finish (none is retried: see together.py), so that a failed
    # split can delete the parts that did upload instead of leaving them orphaned.
    uploads = await asyncio.gather(
        *(
            together.file_upload(
                target,
                filename=f"{input_file_id}-part-{n}.jsonl",
                content=b"\n".join(chunk) + b"\n",
                purpose="batch-api",
            )
            for n, chunk in enumerate(chunks, start=1)
        ),
        return_exceptions=True,
    )
    uploaded = [
        str(upload.json()["id"])
        for upload in uploads
        if isinstance(upload, httpx.Response) and upload.status_code == 200
    ]
    if len(uploaded) < len(chunks):
        await _files_delete(target, uploaded)
        failure = next(
            upload
            for upload in uploads
            if not isinstance(upload, httpx.Response) or upload.status_code != 200
        )
        if isinstance(failure, httpx.Response):
            raise UpstreamRefused(failure)
        raise failure
    plan.part_files = [
        (file_id, len(chunk)) for file_id, chunk in zip(uploaded, chunks, strict=True)
    ]
    plan.lines = chunks
    return plan


async def batch_parts_delete(*, key: Caller, plan: BatchPlan) -> None:
    """A split batch refused after its parts were uploaded: they go (best effort)."""
    await _files_delete(key.target, [file_id for file_id, _count in plan.part_files])


async def file_size(*, key: Caller, file_id: str) -> int | None:
    """The size in bytes Together reports for a file, None when it does not say."""
    try:
        response = await together.file_meta(key.target, file_id)
    except UpstreamError as exc:
        logger.warning("reading file %s's size: %s", file_id, exc.detail)
        return None
    size = response.json().get("bytes") if response.status_code == 200 else None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        logger.warning("file %s: no size from upstream (HTTP %s)", file_id, response.status_code)
        return None
    return size


async def _files_delete(target: Target, file_ids: list[str]) -> None:
    """Best effort: a part file left behind costs storage, not correctness."""
    for file_id in file_ids:
        try:
            response = await together.file_delete(target, file_id)
        except UpstreamError as exc:
            logger.warning("deleting part file %s: %s; left upstream", file_id, exc.detail)
            continue
        if not response.is_success:
            logger.warning(
                "deleting part file %s answered %s; left upstream", file_id, response.status_code
            )


def _batch_models(lines: list[bytes]) -> set[str]:
    """The models a batch file's requests name (`{"body": {"model": ...}}` a line)."""
    models: set[str] = set()
    for line in lines:
        try:
            body = json.loads(line).get("body")
        except (ValueError, AttributeError):
            continue  # Together reports malformed lines in the batch's error file
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(model, str):
            models.add(model)
    return models


def file_record(*, team_id: int, file_id: str) -> None:
    """Remember that `team_id` uploaded `file_id`, so that team (and only it) sees it."""
    TeamFile.objects.get_or_create(team_id=team_id, file_id=file_id)


# --- what a job produced is its team's ------------------------------------------------------
MODEL_NAME_MAX = 300  # TeamModel.name


def team_models_record(*, job: Job, names: dict[str, str]) -> None:
    """Record names (lower-cased, with their kind) as the job's team's; a name some other
    team already owns keeps its owner."""
    names = {name: kind for name, kind in names.items() if name and len(name) <= MODEL_NAME_MAX}
    taken = dict(TeamModel.objects.filter(name__in=names).values_list("name", "team_id"))
    for name, team_id in taken.items():
        if team_id != job.team_id:
            logger.error(
                "job %s reports %r, already recorded as team %s's; left as is",
                job.public_id,
                name,
                team_id,
            )
    new = [
        TeamModel(team_id=job.team_id, name=name, kind=kind, job=job)
        for name, kind in names.items()
        if name not in taken
    ]
    if new:
        TeamModel.objects.bulk_create(new, ignore_conflicts=True)
        # Every web process drops its map once this is committed (see ownership.py).
        transaction.on_commit(broadcast_models_changed)


def job_outputs_record(*, job: Job, obj: dict[str, Any]) -> None:
    """Record as the job's team's what Together reports for the job: the files it
    produced (a batch's output and error files), its output model, and its upstream id
    (which `from_checkpoint` names).

    Only Together's view counts, and a file the team's own request named is never taken
    from it: an echo of a request field proves nothing about who owns the file.
    """
    named = {value for value in fields.file_fields(job.request).values() if isinstance(value, str)}
    produced = {
        value
        for value in fields.file_fields(obj).values()
        if fields.is_upstream_id(value) and value not in named
    }
    if produced:
        owned = TeamFile.objects.filter(team_id=job.team_id, file_id__in=produced).values_list(
            "file_id", flat=True
        )
        TeamFile.objects.bulk_create(
            [TeamFile(team_id=job.team_id, file_id=file_id) for file_id in produced - set(owned)],
            ignore_conflicts=True,
        )
    names: dict[str, str] = {}
    output_model = obj.get("model_output_name")
    if isinstance(output_model, str):
        names[model_key(output_model)] = ModelKind.MODEL
    if job.kind == JobKind.FINE_TUNE and obj.get("id"):
        names[model_key(str(obj["id"]))] = ModelKind.CHECKPOINT
    if names:
        team_models_record(job=job, names=names)


# --- fair claiming ---------------------------------------------------------------------------
def _cap(profile_id: int, endpoint: str) -> int | None:
    return (
        EndpointLimit.objects.filter(profile_id=profile_id, endpoint=endpoint, model="")
        .values_list("max_concurrent", flat=True)
        .first()
    )


def _count(queryset: QuerySet[Job]) -> Coalesce:
    # COUNT as a plain function, so the subquery has no GROUP BY and answers 0, not NULL.
    counted = queryset.order_by().annotate(
        n=Func(F("pk"), function="COUNT", output_field=IntegerField())
    )
    return Coalesce(Subquery(counted.values("n")[:1]), Value(0))


def job_claim_next(*, account_id: int, kind: str) -> Job | None:
    """Claim the next job that fits the account's and its team's caps, or None."""
    endpoint = ENDPOINT_OF_KIND[JobKind(kind)]
    account = UpstreamAccount.objects.get(pk=account_id)
    account_cap = _cap(account.profile_id, endpoint)
    for _ in range(5):  # a lost race re-reads the queue
        now = timezone.now()
        order = queued_in_order(account_id=account_id, kind=kind, now=now)
        if not order:
            return None
        held = dict(
            Job.objects.filter(account_id=account_id, kind=kind, state__in=HOLDING_STATES)
            .values("team")
            .annotate(n=Count("pk"))
            .values_list("team", "n")
        )
        if account_cap is not None and sum(held.values()) >= account_cap:
            return None
        team_caps = {
            team.pk: _cap(team.profile_id, endpoint) for team in {job.team for job in order}
        }
        for job in order:
            team_cap = team_caps[job.team_id]
            if team_cap is not None and held.get(job.team_id, 0) >= team_cap:
                continue
            if _claim(job, account_cap=account_cap, team_cap=team_cap, now=now):
                job.state, job.claimed_at, job.account = JobState.STARTING, now, account
                return job
            break  # lost a race for this job or a slot: read again
        else:
            return None
    return None


def _claim(job: Job, *, account_cap: int | None, team_cap: int | None, now: datetime) -> bool:
    holders = Job.objects.filter(kind=job.kind, state__in=HOLDING_STATES)
    # Its team not paused, checked in the UPDATE too: a pause committed after the queue
    # was read must still hold the job back.
    claim = Job.objects.filter(pk=job.pk, state=JobState.QUEUED, team__paused=False).filter(
        key_still_usable(now)
    )
    # The caps are re-checked inside the UPDATE itself: counting first and writing
    # after would let two processes both take the last slot.
    if account_cap is not None:
        claim = claim.filter(
            LessThan(_count(holders.filter(account_id=job.account_id)), account_cap)
        )
    if team_cap is not None:
        claim = claim.filter(LessThan(_count(holders.filter(team_id=job.team_id)), team_cap))
    with transaction.atomic():
        if connection.features.has_select_for_update:
            # PostgreSQL evaluates each UPDATE's subquery on its own snapshot; locking the
            # account row serialises claims per account. SQLite has one writer anyway.
            UpstreamAccount.objects.select_for_update().filter(pk=job.account_id).values_list(
                "pk"
            ).first()
        return claim.update(state=JobState.STARTING, claimed_at=now) == 1


# --- starting --------------------------------------------------------------------------
async def jobs_start_queued(*, account_id: int, kind: str) -> dict[int, StartResult]:
    """Start queued jobs of one account and kind while slots are free, in fair order."""
    results: dict[int, StartResult] = {}
    while True:
        job = await sync_to_async(job_claim_next)(account_id=account_id, kind=kind)
        if job is None:
            return results
        results[job.pk] = await job_start(job=job)


MSG_HELD_BUDGET = "Held in the queue: {reason}"
MSG_HELD_LIMITER = (
    "Held in the queue: the limiter did not answer its budget check; it is tried again shortly."
)
# A job held by its budget is checked again this often (or at the budget's reset, if
# sooner): a raised budget, or calls settling below their estimates, may let it fit.
BUDGET_RECHECK_SECONDS = 30.0
LIMITER_RECHECK_SECONDS = 5.0


async def _budget_allows(job: Job) -> bool:
    """The start's budget check: hold the job's estimate, if it fits, or put the job back
    in the queue with the reason shown to its team (never started over budget). Skipped
    for a team without budgets, and with the limiter silent in failure mode "open"."""
    if job.budget_hold is None or not budgets.enabled():
        return True
    if not await sync_to_async(budgets.covered)(team_id=job.team_id):
        return True
    try:
        verdict = await budgets.ask(
            key_id=str(job.key_id),
            version=await sync_to_async(ConfigVersion.current)(),
            kind=job.kind,
            action="started",
            jobs=[(job.public_id, job.budget_hold)],
        )
    except budgets.LimiterSilent:
        if settings.SLUICE_LIMITER_FAILURE_MODE == "open":
            logger.error("limiter silent: starting %s unchecked (failure mode open)", job.public_id)
            return True
        await sync_to_async(_requeue)(
            job,
            delay=LIMITER_RECHECK_SECONDS,
            reason="budget check unanswered",
            shown=MSG_HELD_LIMITER,
        )
        return False
    if verdict.held:
        return True
    delay = min(BUDGET_RECHECK_SECONDS, max(verdict.retry_after, 1.0))
    reason = MSG_HELD_BUDGET.format(reason=verdict.message)
    await sync_to_async(_requeue)(job, delay=delay, reason="over budget", shown=reason)
    return False


async def job_start(*, job: Job) -> StartResult:
    """Submit a claimed job, once its budgets allow it (`_budget_allows`). Only an answer
    that proves nothing was created releases the claim."""
    if not await _budget_allows(job):
        return StartResult("held")
    target = account_target(job.account)
    try:
        response = await together.submit(target, job)
    except UpstreamError as exc:
        # Together may or may not have created it: the reconciler finds out later.
        logger.warning(
            "starting %s: no answer from upstream (%s); left for reconciling",
            job.public_id,
            exc.detail,
        )
        return StartResult("unknown")
    if response.is_success:
        data = response.json()
        await _record_started_and_cancel(job, together.created_object(job.kind, data), "started")
        warning = data.get("warning") if isinstance(data, dict) else None
        return StartResult("started", response, warning)
    if response.status_code in (409, 429):
        # Together is busy (its own concurrency limit, or other users of the account).
        await sync_to_async(_requeue)(
            job, delay=BUSY_RETRY_SECONDS, reason=f"upstream busy ({response.status_code})"
        )
        return StartResult("requeued", response)
    if response.status_code >= 500:
        logger.warning(
            "starting %s: upstream answered %s; left for reconciling",
            job.public_id,
            response.status_code,
        )
        return StartResult("unknown", response)
    await sync_to_async(_record_start_failed)(job, response)
    return StartResult("failed", response)


async def _record_started_and_cancel(job: Job, obj: dict[str, Any], message: str) -> None:
    cancel_wanted = await sync_to_async(_record_started)(job, obj, message)
    if cancel_wanted:
        # The team cancelled while the start was in flight.
        await job_cancel(job=await sync_to_async(_reload)(job.pk))


def _record_started(job: Job, obj: dict[str, Any], message: str) -> bool:
    """Record the upstream id; returns whether a cancel arrived meanwhile."""
    now = timezone.now()
    status = str(obj.get("status") or "")
    terminal = job.is_terminal_status(status)
    try:
        # One transaction: the output model is the team's the moment Together names it.
        with transaction.atomic():
            updated = Job.objects.filter(pk=job.pk, state=JobState.STARTING).update(
                state=JobState.DONE if terminal else JobState.RUNNING,
                upstream_id=str(obj.get("id")),
                upstream=fields.redacted(obj),
                upstream_status=status,
                started_at=now,
                finished_at=now if terminal else None,
                next_poll_at=now + timedelta(seconds=POLL_BASE_SECONDS),
                poll_failures=0,
                unchanged_polls=0,
                # Submitted: the secrets in the body (wandb_api_key...) are not needed again.
                request=fields.redacted(job.request),
                error="",  # a reason it was held in the queue no longer applies
            )
            if updated:
                job_outputs_record(job=job, obj=obj)
    except IntegrityError:
        logger.error(
            "upstream job %s is already recorded for another job; %s left as is",
            obj.get("id"),
            job.public_id,
        )
        return False
    if not updated:
        return False
    job.refresh_from_db()
    _event(job, f"{message} upstream as {job.upstream_id}")
    return job.cancel_requested


def _requeue(job: Job, *, delay: float, reason: str, shown: str = "") -> None:
    """Back to the queue, not before `delay`; `shown`: why, in the job's error for its
    team (a job held by its budget), until it starts."""
    now = timezone.now()
    updated = Job.objects.filter(pk=job.pk, state=JobState.STARTING).update(
        state=JobState.QUEUED,
        claimed_at=None,
        not_before=now + timedelta(seconds=delay),
        error=shown,
    )
    if updated:
        job.state, job.error = JobState.QUEUED, shown
        _event(job, f"back in the queue: {reason}")


def _record_start_failed(job: Job, response: httpx.Response) -> None:
    now = timezone.now()
    status = FAILED[JobKind(job.kind)]
    error = _error_text(response)
    if Job.objects.filter(pk=job.pk, state=JobState.STARTING).update(
        state=JobState.DONE,
        upstream_status=status,
        error=error,
        finished_at=now,
        request=fields.redacted(job.request),  # never to be sent again
    ):
        job.state, job.upstream_status = JobState.DONE, status
        _event(job, f"refused upstream ({response.status_code}): {error}")


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return response.text[:300]
    if isinstance(error, dict):
        return str(error.get("message") or error)[:300]
    return str(error)[:300]


def _reload(job_id: int) -> Job:
    return Job.objects.select_related("account", "team").get(pk=job_id)


# --- reconciling interrupted starts ---------------------------------------------------------
def jobs_stale_starting(*, older_than: float) -> list[Job]:
    cutoff = timezone.now() - timedelta(seconds=older_than)
    return list(
        Job.objects.filter(state=JobState.STARTING, claimed_at__lt=cutoff).select_related(
            "account", "team"
        )
    )


async def job_reconcile(*, job: Job) -> bool:
    """Settle a job some process claimed but never finished starting. Returns whether settled.

    Found upstream: recorded as running (never started twice). Not found: back in the
    queue at its original place. Upstream unreadable: left for the next round.
    """
    try:
        items = await together.list_jobs(account_target(job.account), job.kind)
    except UpstreamError as exc:
        logger.warning("reconciling %s: upstream unreachable (%s)", job.public_id, exc.detail)
        return False
    if items is None:
        return False
    ids = [str(item.get("id")) for item in items if item.get("id")]
    taken = await sync_to_async(_taken_ids)(ids)
    match = together.find_started(job, items, taken=taken)
    if match is not None:
        await _record_started_and_cancel(job, match, "found after an interrupted start:")
    else:
        await sync_to_async(_requeue)(
            job, delay=0, reason="an interrupted start never reached Together"
        )
    return True


def _taken_ids(ids: list[str]) -> set[str]:
    return {
        upstream_id
        for upstream_id in Job.objects.filter(upstream_id__in=ids).values_list(
            "upstream_id", flat=True
        )
        if upstream_id
    }


# --- polling -----------------------------------------------------------------------------
def jobs_due_poll(*, limit: int = 100) -> list[Job]:
    now = timezone.now()
    return list(
        Job.objects.filter(state=JobState.RUNNING)
        .filter(Q(next_poll_at__isnull=True) | Q(next_poll_at__lte=now))
        .select_related("account", "team")
        .order_by("next_poll_at")[:limit]
    )


async def job_poll(*, job: Job) -> bool:
    """Read the job upstream and record what changed. Returns whether its status changed."""
    try:
        response = await together.fetch(account_target(job.account), job.kind, str(job.upstream_id))
    except UpstreamError as exc:
        await sync_to_async(_poll_failed)(job, exc.detail)
        return False
    if response.status_code != 200:
        await sync_to_async(_poll_failed)(
            job,
            f"HTTP {response.status_code}: {_error_text(response)}",
            not_found=response.status_code in GONE_STATUSES,
        )
        return False
    return await sync_to_async(job_apply_upstream)(job=job, obj=response.json())


def job_apply_upstream(*, job: Job, obj: dict[str, Any]) -> bool:
    """Store Together's view of a running job; a terminal status frees its slot."""
    now = timezone.now()
    status = str(obj.get("status") or job.upstream_status)
    changed = status != job.upstream_status
    if changed and status not in KNOWN_STATUSES[JobKind(job.kind)]:
        logger.warning(
            "job %s: unknown upstream status %r, treated as still running", job.public_id, status
        )
    # After failed polls, unchanged_polls held the 404 count (see _poll_failed).
    unchanged = 0 if changed or job.poll_failures else job.unchanged_polls + 1
    values: dict[str, Any] = {
        "upstream": fields.redacted(obj),
        "upstream_status": status,
        "poll_failures": 0,
        "unchanged_polls": unchanged,
        # Long jobs are polled less and less often while nothing changes.
        "next_poll_at": now
        + timedelta(seconds=min(POLL_MAX_SECONDS, POLL_BASE_SECONDS * 1.5**unchanged)),
    }
    if job.is_terminal_status(status):
        values.update(state=JobState.DONE, finished_at=now, next_poll_at=None)
    with transaction.atomic():
        # Conditional on what we read, so two pollers record one event per change.
        updated = Job.objects.filter(
            pk=job.pk, state=JobState.RUNNING, upstream_status=job.upstream_status
        ).update(**values)
        if updated:
            # In the same transaction: no moment where the job shows an output file or
            # model that is not yet recorded as the team's.
            job_outputs_record(job=job, obj=obj)
    if not updated:
        return False
    for name, value in values.items():
        setattr(job, name, value)
    if changed or job.state == JobState.DONE:
        _event(job, "status changed upstream")
    return changed


MSG_JOB_GONE = (
    "Together no longer knows this job: it answered 404 to {polls} polls in a row. "
    "Sluice recorded it as ended and freed its slot."
)
MSG_JOB_UNREADABLE = (
    "Sluice could not read this job from Together for {seconds:.0f} s, so it recorded it "
    "as ended and freed its slot. Last error: {detail}"
)


def lost_after() -> float:
    """Seconds of failing polls after which a running job gives its slot back."""
    return float(settings.SLUICE_JOB_LOST_AFTER)


def _poll_delay(failures: int) -> float:
    return min(POLL_FAILURE_MAX_SECONDS, 2.0**failures)


def _failing_for(failures: int) -> float:
    """The least time `failures` failed polls in a row span: the backoff between them."""
    return sum(_poll_delay(n) for n in range(1, failures))


def _poll_failed(job: Job, detail: str, *, not_found: bool = False) -> None:
    """Back off; end the job once Together has surely lost it or polls failed too long."""
    failures = job.poll_failures + 1
    # No schema change for a second counter: while polls fail, unchanged_polls counts
    # Together's 404s in a row (any other failure breaks the run; a success resets it).
    gone_polls = (job.unchanged_polls + 1 if job.poll_failures else 1) if not_found else 0
    if gone_polls >= GONE_AFTER_POLLS:
        _record_lost(job, failures, MSG_JOB_GONE.format(polls=gone_polls))
        return
    if _failing_for(failures) >= lost_after():
        _record_lost(job, failures, MSG_JOB_UNREADABLE.format(seconds=lost_after(), detail=detail))
        return
    delay = _poll_delay(failures)
    if not_found:
        delay = max(delay, GONE_CONFIRM_SECONDS)  # a blip of Together's must not end a job
    logger.warning("polling %s failed (%s); next try in %.0fs", job.public_id, detail, delay)
    # Conditional on what we read, so two pollers failing at once count one failure.
    Job.objects.filter(pk=job.pk, state=JobState.RUNNING, poll_failures=job.poll_failures).update(
        poll_failures=failures,
        unchanged_polls=gone_polls,
        next_poll_at=timezone.now() + timedelta(seconds=delay),
    )


def _record_lost(job: Job, failures: int, error: str) -> None:
    status = FAILED[JobKind(job.kind)]
    now = timezone.now()
    if not Job.objects.filter(
        pk=job.pk, state=JobState.RUNNING, poll_failures=job.poll_failures
    ).update(
        state=JobState.DONE,
        upstream_status=status,
        error=error,
        finished_at=now,
        next_poll_at=None,
        poll_failures=failures,
    ):
        return
    job.state, job.upstream_status, job.error = JobState.DONE, status, error
    job.finished_at, job.next_poll_at, job.poll_failures = now, None, failures
    logger.error("job %s (upstream %s) ended: %s", job.public_id, job.upstream_id, error)
    _event(job, error)


def queued_work() -> list[tuple[int, str]]:
    """(account, kind) pairs with a job ready to start."""
    now = timezone.now()
    return list(
        Job.objects.filter(state=JobState.QUEUED)
        .filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
        .values_list("account_id", "kind")
        .distinct()
        .order_by()
    )


# --- cancelling --------------------------------------------------------------------------
async def job_cancel(*, job: Job) -> Job:
    """Cancel a job: a queued one locally (it never starts), a running one upstream.

    A job being started is flagged and cancelled as soon as its upstream id is known.
    Raises UpstreamRefused when Together refuses the cancel.
    """
    if job.state == JobState.GROUP:
        for part in await sync_to_async(
            lambda: list(job.parts.select_related("account", "team"))
        )():
            await job_cancel(job=part)
        return await sync_to_async(_reload)(job.pk)
    if job.state == JobState.QUEUED and await sync_to_async(_cancel_queued)(job):
        return job
    if job.state in (JobState.QUEUED, JobState.STARTING):
        if await sync_to_async(_flag_cancel)(job):
            return job
        job = await sync_to_async(_reload)(job.pk)  # it moved on meanwhile
    if job.state != JobState.RUNNING:
        return job  # ended already: cancelling changes nothing, as on Together
    response = await together.cancel(account_target(job.account), job.kind, str(job.upstream_id))
    if not response.is_success:
        raise UpstreamRefused(response)
    await sync_to_async(job_apply_upstream)(
        job=job, obj=together.created_object(job.kind, response.json())
    )
    return job


MSG_KEY_REVOKED = (
    "Cancelled before it started: the key that submitted it was revoked, expired or deleted."
)


def jobs_cancel_keyless() -> int:
    """Cancel queued jobs whose submitting key can no longer act (see `key_still_usable`),
    so the team sees why they never started rather than a queue that never moves."""
    cancelled = 0
    for job in Job.objects.filter(state=JobState.QUEUED).exclude(key_still_usable(timezone.now())):
        if _cancel_queued(job, reason=MSG_KEY_REVOKED):
            cancelled += 1
    return cancelled


def _cancel_queued(job: Job, *, reason: str = "") -> bool:
    status = CANCELLED[JobKind(job.kind)]
    if not Job.objects.filter(pk=job.pk, state=JobState.QUEUED).update(
        state=JobState.DONE,
        upstream_status=status,
        finished_at=timezone.now(),
        cancel_requested=True,
        request=fields.redacted(job.request),  # never to be sent
        error=reason,
    ):
        return False
    job.state, job.upstream_status, job.cancel_requested, job.error = (
        JobState.DONE,
        status,
        True,
        reason,
    )
    _event(job, reason or "cancelled before it started")
    return True


def _flag_cancel(job: Job) -> bool:
    if not Job.objects.filter(pk=job.pk, state=JobState.STARTING).update(cancel_requested=True):
        return False
    job.cancel_requested = True
    _event(job, "cancel requested while starting")
    return True
