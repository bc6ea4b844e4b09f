"""The job poller: keeps Sluice's fine-tune and batch bookkeeping in step with Together.

Runs as a task inside `manage.py serve` and alone as `manage.py jobpoller`. Any number
of pollers may run at once: every write is a conditional UPDATE, so two pollers never
start one job twice or record one change twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import Error, connection
from django.db.models import Q
from django.utils import timezone

from limiter.jobs import budgets, selectors, services, together, usage_collection
from limiter.jobs.live import HEARTBEAT_SECONDS
from limiter.jobs.models import Job, JobState
from limiter.protocol.events import LIVE_GROUP

logger = logging.getLogger(__name__)

# Upstream calls in flight at once while polling.
POLL_CONCURRENCY = 10


class Poller:
    def __init__(self, *, start_deadline: float | None = None) -> None:
        self.start_deadline = (
            start_deadline if start_deadline is not None else together.start_deadline()
        )
        self._published_version: int | None = None
        self._published_at = 0.0

    async def tick(self, stop: asyncio.Event | None = None) -> bool:
        """One pass; returns whether any step found work. The steps, in order:

        0. cancel queued jobs whose submitting key was revoked, expired or deleted;
        1. reconcile jobs left "starting" by a process that died mid-start;
        2. poll running jobs that are due, recording status changes (a terminal
           status frees the job's slot);
        3. start queued jobs while slots are free, fairly across teams;
        4. record what ended jobs used (tokens and cost, once per job), settling the
           estimates they held against their budgets;
        5. let go of the holds of jobs that ended with no usage to settle them;
        6. publish the jobs snapshot to the dashboard when it changed.

        With `stop` set between steps, the pass ends early.
        """
        # A long-lived loop outlives DB connections; and with no job in flight, steps 0 to 5
        # have nothing to read: one query instead of their eight (an idle process's CPU).
        if await sync_to_async(_connected_and_pending)():
            steps: list[Callable[[], Awaitable[bool]]] = [
                self.cancel_keyless,
                self.reconcile_starting,
                self.poll_running,
                self.start_queued,
                self.record_usage,
                self.release_holds,
                self.publish,
            ]
        else:
            steps = [self.publish]
        found = False
        for step in steps:
            if stop is not None and stop.is_set():
                break
            found = await step() or found
        return found

    async def cancel_keyless(self) -> bool:
        return await sync_to_async(services.jobs_cancel_keyless)() > 0

    async def reconcile_starting(self) -> bool:
        # A live start lasts at most the start deadline; older claims are orphans.
        stale = await sync_to_async(services.jobs_stale_starting)(
            older_than=self.start_deadline + services.RECONCILE_MARGIN_SECONDS
        )
        settled = [await services.job_reconcile(job=job) for job in stale]
        return any(settled)

    async def poll_running(self) -> bool:
        due = await sync_to_async(services.jobs_due_poll)()
        if not due:
            return False
        gate = asyncio.Semaphore(POLL_CONCURRENCY)

        async def poll(job: Job) -> bool:
            async with gate:
                return await services.job_poll(job=job)

        await asyncio.gather(*(poll(job) for job in due))
        return True

    async def start_queued(self) -> bool:
        started = False
        for account_id, kind in await sync_to_async(services.queued_work)():
            results = await services.jobs_start_queued(account_id=account_id, kind=kind)
            started = started or bool(results)
        return started

    async def record_usage(self) -> bool:
        return await usage_collection.jobs_usage_collect()

    async def release_holds(self) -> bool:
        ended = await sync_to_async(budgets.jobs_holding_ended)(
            lookback=usage_collection.USAGE_LOOKBACK
        )
        cleared = [
            job.public_id for job in ended if await sync_to_async(budgets.hold_clear)(job=job)
        ]
        await budgets.let_go(cleared)
        return bool(cleared)

    async def publish(self) -> bool:
        # Every change of any job writes a JobEvent, in whichever process made it; the
        # newest event's id is a one-row query, the snapshot several: build it only
        # when something changed (or for the heartbeat).
        version = await sync_to_async(selectors.jobs_version)()
        now = time.monotonic()
        if version == self._published_version and now - self._published_at < HEARTBEAT_SECONDS:
            return False
        layer = get_channel_layer()
        if layer is None:
            return False
        snapshot = await sync_to_async(selectors.jobs_live_snapshot)()
        await layer.group_send(LIVE_GROUP, dict(snapshot))
        self._published_version, self._published_at = version, now
        return True


def jobs_pending() -> bool:
    """Whether any job may have work for the pass's steps 0 to 5: a superset of what each
    step selects (tests/jobs/test_poller_idle.py holds each step's selection to it).
    Queued, starting and running jobs (steps 0 to 3); ended jobs whose usage may still be
    read (step 4, without its retry spacing); ended jobs still holding a budget estimate
    (step 5)."""
    lookback = timezone.now() - usage_collection.USAGE_LOOKBACK
    return Job.objects.filter(
        Q(state__in=(JobState.QUEUED, JobState.STARTING, JobState.RUNNING))
        | Q(state=JobState.DONE, budget_hold__isnull=False)
        | Q(
            state=JobState.DONE,
            upstream_id__isnull=False,
            usage__isnull=True,
            finished_at__gte=lookback,
        )
    ).exists()


def _connected_and_pending() -> bool:
    """`jobs_pending` on the connection the passes keep. Not close_old_connections()
    first: with CONN_MAX_AGE at 0 it closes the connection every time, and the poller
    would connect again each second (0.9 ms of CPU a pass on SQLite; on PostgreSQL a new
    backend a second from every serving process). A connection the database dropped (a
    restart) fails its query: it is closed, and the check asks again on a new one."""
    try:
        return jobs_pending()
    except Error:
        connection.close()
        return jobs_pending()


async def run_poller(
    stop: asyncio.Event, interval: float = 1.0, *, start_deadline: float | None = None
) -> None:
    """Poll until `stop` is set; a failing pass is logged and the loop goes on."""
    poller = Poller(start_deadline=start_deadline)
    logger.info("job poller running (every %.1fs)", interval)
    while not stop.is_set():
        try:
            await poller.tick(stop)
        except Exception:
            logger.exception("job poller pass failed; retrying in %.1fs", interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
    logger.info("job poller stopped")
