"""The jobs snapshot the poller publishes to the dashboard (group `events.LIVE_GROUP`).

Sent as `{"type": "live.jobs", ...}` whenever it changes (and at least every
`HEARTBEAT_SECONDS`); a consumer that connects later can build the same dict with
`limiter.jobs.selectors.jobs_live_snapshot()`.
"""

from __future__ import annotations

from typing import NotRequired

from typing_extensions import TypedDict  # read by pydantic too (the ops API's /api/live)

from limiter.protocol.events import LIVE_JOBS as LIVE_JOBS  # the protocol's constants live there

HEARTBEAT_SECONDS = 10.0


class SlotHolder(TypedDict):
    team: str
    job: str  # Sluice's public id, e.g. "ft-sluice-…"; a split batch's part shows its own
    parent: str | None  # a split batch's public id, when this is one of its parts
    upstream_id: str | None  # None while "starting"
    status: str  # Together's status, or "starting"
    since: str  # ISO 8601: when the slot was taken


class WaitingJob(TypedDict):
    team: str
    job: str
    parent: str | None
    position: int  # 1 = starts next
    since: str  # ISO 8601: when it was accepted
    not_before: str | None  # Together said busy: not retried before this


class KindSlots(TypedDict):
    used: int
    total: int | None  # the account's cap (EndpointLimit.max_concurrent); None: no cap
    holders: list[SlotHolder]  # oldest first
    waiting: list[WaitingJob]  # in the order they will start (fair round-robin by team)


class AccountJobs(TypedDict):
    name: str
    fine_tunes: KindSlots
    batches: KindSlots
    # Not in a snapshot from a poller older than video jobs (a rolling deploy).
    videos: NotRequired[KindSlots]


class LiveJobsMessage(TypedDict):
    type: str  # LIVE_JOBS
    at: float  # unix time
    accounts: dict[str, AccountJobs]  # keyed by UpstreamAccount pk (as a string)
