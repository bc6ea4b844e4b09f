"""The poller's usage step: what an ended fine-tune, batch or video used, recorded once.

A job that has ended (state `done`, with an upstream id) and has no JobUsage row yet
is due. A fine-tune's and a video's usage is in Together's last view of it (stored by the poll that
saw it end); a batch's is in its output file, read here. What it used goes to the
usage rollups (limiter/usage/job_reports.py says how it is counted and priced) and, when the
job's key is known, to its budgets through the limiter, settling the estimate the job
held since its create (limiter/jobs/budgets.py): the hold is cleared in the same
transaction as the rollups are written, and the first report names it. The JobUsage row makes it
once per job however many pollers run; a failed read of the output file is tried
again a minute later, for at most USAGE_LOOKBACK after the job ended.

Functions without `async` touch only the database.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from limiter.jobs import together
from limiter.jobs.budgets import hold_clear
from limiter.jobs.models import Job, JobKind, JobState
from limiter.protocol import events
from limiter.upstream import UpstreamError, account_target
from limiter.usage.job_reports import (
    MSG_NO_OUTPUT,
    MSG_OUTPUT_GONE,
    EndedJob,
    JobUsageReport,
    batch_usage,
    fine_tune_usage,
    video_usage,
)
from limiter.usage.models import UsageSource
from limiter.usage.selectors import price_in_force
from limiter.usage.services import job_usage_record

logger = logging.getLogger(__name__)

USAGE_LOOKBACK = timedelta(days=7)  # jobs that ended longer ago are not read again
USAGE_RETRY = timedelta(seconds=60)  # after a failed read of a batch's output file
DUE_PER_PASS = 20


def jobs_usage_due(*, limit: int = DUE_PER_PASS) -> list[Job]:
    """Ended jobs whose usage is not recorded yet, oldest first. A done job is never
    polled again, so its `next_poll_at` serves to space out retries of its usage."""
    now = timezone.now()
    return list(
        Job.objects.filter(
            state=JobState.DONE,
            upstream_id__isnull=False,
            usage__isnull=True,
            finished_at__gte=now - USAGE_LOOKBACK,
        )
        .filter(Q(next_poll_at__isnull=True) | Q(next_poll_at__lte=now))
        .select_related("account", "team")
        .order_by("finished_at")[:limit]
    )


def _retry_later(job: Job) -> None:
    Job.objects.filter(pk=job.pk).update(next_poll_at=timezone.now() + USAGE_RETRY)


def _priced_batch(content: bytes, fallback_model: str) -> JobUsageReport:
    factor = Decimal(str(settings.SLUICE_BATCH_PRICE_FACTOR))
    return batch_usage(content, fallback_model, price_in_force, factor)


async def _batch_report(job: Job) -> JobUsageReport | None:
    """The batch's usage from its output file; None to try again later."""
    obj = job.upstream or {}
    fallback = str(obj.get("model_id") or job.request.get("model_id") or "")
    output = obj.get("output_file_id")
    if not isinstance(output, str) or not output:
        return JobUsageReport([], MSG_NO_OUTPUT)
    try:
        response = await together.file_content(account_target(job.account), output)
    except UpstreamError as exc:
        logger.warning("batch %s: could not read its output file: %s", job.public_id, exc)
        return None
    if response.status_code in (404, 410):
        return JobUsageReport([], MSG_OUTPUT_GONE.format(status=response.status_code))
    if response.status_code != 200:
        logger.warning(
            "batch %s: reading its output file answered %s", job.public_id, response.status_code
        )
        return None
    return await sync_to_async(_priced_batch)(response.content, fallback)


async def job_usage_collect(*, job: Job) -> bool:
    """Record what an ended job used; returns whether this call recorded it."""
    if job.kind == JobKind.FINE_TUNE:
        report = fine_tune_usage(job.upstream or {}, str(job.request.get("model") or ""))
        source = UsageSource.FINE_TUNE
    elif job.kind == JobKind.VIDEO:
        obj = job.upstream or {}
        model = str(obj.get("model") or job.request.get("model") or "")
        price = await sync_to_async(price_in_force)(model[:200])
        report = video_usage(obj, model, price)
        source = UsageSource.VIDEO
    else:
        batch = await _batch_report(job)
        if batch is None:
            await sync_to_async(_retry_later)(job)
            return False
        report, source = batch, UsageSource.BATCH
    recorded, held = await sync_to_async(_record)(job, report, source)
    if recorded:
        key_id = str(job.key_id) if job.key_id is not None else ""
        await _charge_budgets(key_id, report, job.public_id if held else "")
    return recorded


def _record(job: Job, report: JobUsageReport, source: str) -> tuple[bool, bool]:
    """Record the usage and end the job's budget hold in one transaction: (recorded, it
    held one). A limiter that starts then either takes the hold back or counts the
    usage in the rollups it seeds from, never both."""
    with transaction.atomic():
        recorded = job_usage_record(job=_ended(job), report=report, source=source)
        return recorded, recorded and hold_clear(job=job)


def _ended(job: Job) -> EndedJob:
    return EndedJob(
        id=job.pk,
        public_id=job.public_id,
        team_id=job.team_id,
        team_name=job.team.name,
        key_prefix=job.key_prefix,
        account_name=job.account.name,
        finished_at=job.finished_at,
    )


async def _charge_budgets(key_id: str, report: JobUsageReport, hold: str) -> None:
    """Tell the limiter what the job used, as a call's usage is (events.USAGE); the first
    report names the job's hold, which it settles (one at 0 when there is nothing to
    charge: no usage reported, or the key is gone)."""
    layer = get_channel_layer()
    if layer is None:
        return
    messages: list[events.UsageMessage] = [
        {
            "type": events.USAGE,
            "key": key_id,
            "model": line.model,
            "tokens": float(line.total),
            "cost": float(line.cost),
        }
        for line in (report.lines if key_id else [])
    ]
    if hold:
        if not messages:
            messages.append(
                {"type": events.USAGE, "key": "", "model": "", "tokens": 0.0, "cost": 0.0}
            )
        messages[0]["reservation"] = hold
    for message in messages:
        try:
            await layer.send(events.LIMITER_CHANNEL, dict(message))
        except Exception:
            # Recorded in the rollups all the same: a limiter started later seeds from them.
            logger.exception("could not tell the limiter of a job's usage")


async def jobs_usage_collect() -> bool:
    """The step: every due job's usage; returns whether any was recorded."""
    if not settings.SLUICE_USAGE_RECORDING:
        return False
    recorded = False
    for job in await sync_to_async(jobs_usage_due)():
        recorded = await job_usage_collect(job=job) or recorded
    return recorded
