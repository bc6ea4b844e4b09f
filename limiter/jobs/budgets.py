"""Jobs against their team's and key's budgets: the limiter's word on a job's estimate
(limiter/jobs/estimates.py) when it is created and again when it starts, and its hold
let go when it ends without usage to settle it.

The limiter worker is the one authority (limiter/usage/budgets.py `BudgetBook.hold_jobs`):
a job is held, and so may be accepted or started, only if its estimate fits what its
budgets have left; refused, nothing is held. The job's row keeps its estimate
(Job.budget_hold) from its create until the hold ends, so a limiter that starts takes
the holds back. A hold ends exactly once, by one of:
- its usage, recorded by the poller (limiter/jobs/usage_collection.py): the first report names it
  and settles it (the estimate leaves, the usage is charged);
- `let_go`: the job ended without running (cancelled while queued, refused by Together,
  or its key revoked), or its usage could not be read within the poller's look-back,
  or it was refused at its create after being held (its row never stored).
Each clears Job.budget_hold with a conditional update first, so two pollers tell the
limiter once. A job of a team without budgets is not asked about (no round trip), but
its estimate is kept all the same: a budget made later counts it when the limiter
starts, and its usage is charged as any job's.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from channels.layers import get_channel_layer
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from limiter.jobs.estimates import Estimate, job_holds
from limiter.jobs.models import Job, JobKind, JobState
from limiter.protocol import events

logger = logging.getLogger(__name__)

WORDS = {JobKind.FINE_TUNE: "fine-tune", JobKind.BATCH: "batch", JobKind.VIDEO: "video"}


class LimiterSilent(Exception):
    """The limiter did not answer within SLUICE_LIMITER_TIMEOUT."""


@dataclass(frozen=True, slots=True)
class Verdict:
    held: bool
    message: str = ""  # refused: the budget, the estimate and when it resets
    over_limit: bool = False  # refused: more than the budget's whole limit
    retry_after: float = 0.0  # refused: seconds to the budget's reset


def enabled() -> bool:
    """Budgets count jobs only while usage is recorded (off: no usage settles a hold)."""
    return bool(settings.SLUICE_USAGE_RECORDING)


def covered(*, team_id: int) -> bool:
    """Whether any budget of the team may count its jobs (one indexed query)."""
    from limiter.usage.models import Budget

    return Budget.objects.filter(team_id=team_id, enabled=True).exists()


async def ask(
    *,
    key_id: str,
    version: int,
    kind: str,
    action: str,
    jobs: list[tuple[str, Estimate]],
) -> Verdict:
    """Ask the limiter to hold these jobs' estimates (one job, or a split batch's parts:
    all or none). Raises LimiterSilent. Its own reply channel: the job poller may run
    in a process without a limiter client."""
    layer = get_channel_layer()
    ticket = uuid.uuid4().hex
    try:
        reply = await layer.new_channel("sluice.jobs.")
        message: events.JobBudgetMessage = {
            "type": events.JOB_BUDGET,
            "ticket": ticket,
            "reply": reply,
            "key": key_id,
            "version": version,
            "job": WORDS[JobKind(kind)],
            "action": action,
            "holds": [
                {"job": hold.job, "model": hold.model, "tokens": hold.tokens, "cost": hold.cost}
                for job, estimate in jobs
                for hold in job_holds(job, estimate)
            ],
        }
        await layer.send(events.LIMITER_CHANNEL, dict(message))
        answer = await asyncio.wait_for(layer.receive(reply), settings.SLUICE_LIMITER_TIMEOUT)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a timeout, or the channel layer down
        raise LimiterSilent() from exc
    return Verdict(
        held=bool(answer.get("held")),
        message=str(answer.get("message") or ""),
        over_limit=bool(answer.get("over_limit")),
        retry_after=float(answer.get("retry_after") or 0.0),
    )


async def let_go(job_ids: list[str]) -> None:
    """Tell the limiter these jobs' holds end at 0 (as a call's unused grant is settled)."""
    layer = get_channel_layer()
    for job_id in job_ids:
        message: events.UsageMessage = {
            "type": events.USAGE,
            "key": "",
            "model": "",
            "tokens": 0.0,
            "cost": 0.0,
            "reservation": job_id,
        }
        try:
            await layer.send(events.LIMITER_CHANNEL, dict(message))
        except Exception:
            # Cleared in the database: a limiter started later does not take it back.
            logger.exception("could not tell the limiter that job %s's hold ended", job_id)


def hold_clear(*, job: Job) -> bool:
    """End the job's hold in the database; whether this call did (once per job)."""
    return Job.objects.filter(pk=job.pk, budget_hold__isnull=False).update(budget_hold=None) == 1


def jobs_holding_ended(*, lookback: timedelta, limit: int = 100) -> list[Job]:
    """Ended jobs still holding an estimate no usage will settle: never run upstream, or
    ended longer than `lookback` ago (their usage was not read in time)."""
    cutoff = timezone.now() - lookback
    return list(
        Job.objects.filter(state=JobState.DONE, budget_hold__isnull=False)
        .filter(Q(upstream_id__isnull=True) | Q(finished_at__lt=cutoff))
        .order_by("finished_at")[:limit]
    )
