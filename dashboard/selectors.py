"""Read queries of the dashboard: the audit log, and warnings about limits."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from typing_extensions import TypedDict

from dashboard import live
from dashboard.live import LiveView
from dashboard.models import AuditEntry
from limiter import selectors
from limiter.jobs.live import AccountJobs
from limiter.models import EndpointLimit, Refusal, Team
from limiter.selectors import PAGE_SIZE, RefusalFilters, keyset_page
from limiter.usage import selectors as usage_selectors
from limiter.usage.budgets import period_bounds

MSG_ABOVE_CEILING = (
    "{field} {value} is above the upstream ceiling of {ceiling} for {endpoint} "
    "(profile '{profile}'): the account's limit will bind first."
)


@dataclass
class AuditPage:
    rows: list[AuditEntry]
    next_cursor: str | None


def audit_page(
    *, after: str = "", object_type: str = "", object_id: str = "", size: int = PAGE_SIZE
) -> AuditPage:
    """Newest first, keyset-paginated like the 429 history (the log only grows)."""
    qs = AuditEntry.objects.order_by("-created_at", "-id")
    if object_type:
        qs = qs.filter(object_type=object_type)
    if object_id:
        qs = qs.filter(object_id=object_id)
    rows, next_cursor = keyset_page(qs, after=after, size=size)
    return AuditPage(rows=rows, next_cursor=next_cursor)


def limit_warnings(
    *, limit: EndpointLimit, ceilings: dict[str, EndpointLimit] | None = None
) -> list[str]:
    """Why a limit is above its upstream ceiling: allowed, but the ops user should know.

    A page listing many limits of one profile passes `ceilings` (from
    `ceilings_for_profile`) so they are computed once, not once per row.
    """
    if ceilings is None:
        ceilings = selectors.ceilings_for_profile(profile=limit.profile)
    ceiling = ceilings.get(limit.endpoint)
    if ceiling is None:
        return []
    warnings = []
    for field, label in (("requests_per_minute", "Limit"), ("burst", "Burst")):
        value, top = getattr(limit, field), getattr(ceiling, field)
        if value > top:
            warnings.append(
                MSG_ABOVE_CEILING.format(
                    field=label,
                    value=value,
                    ceiling=top,
                    endpoint=limit.endpoint,
                    profile=ceiling.profile.name,
                )
            )
    return warnings


# --- a team's own page ----------------------------------------------------------------------
# What a team can do about each kind of 429 (the team page shows it next to each).
REFUSAL_ADVICE = {
    "rate_limited": "Slow down (wait for Retry-After), or ask ops for a higher limit.",
    "account_rate_limited": (
        "The upstream account your team shares is at its limit: wait for Retry-After; "
        "ask ops if it keeps happening."
    ),
    "token_rate_limited": (
        "Too many tokens a minute: send smaller or fewer requests, or ask ops for a higher "
        "token limit."
    ),
    "queue_full": "Too many requests waiting: send fewer at once, or ask ops for a longer queue.",
    "queue_timeout": "Waited too long in the queue: send fewer at once, or retry later.",
    "concurrency_limited": "Too many requests in flight: wait for some to finish first.",
    "upstream_paused": "Together asked to pause this model: wait for Retry-After.",
    "share_used_up": (
        "The shared account is at its limit and your team used its guaranteed share: wait "
        "for Retry-After, or ask ops for a larger share."
    ),
    "priority_waiting": (
        "Calls of a higher priority were waiting on the shared account: wait for "
        "Retry-After, or ask ops about your team's priority."
    ),
    "upstream_rate_limited": (
        "Together refused the call: wait for Retry-After; ops can see the limit it learned."
    ),
    "budget_exceeded": "Your budget is spent: wait for it to reset, or ask ops to raise it.",
}
REFUSAL_ADVICE_OTHER = "Wait for Retry-After; ask ops if it keeps happening."
TEAM_RECENT_REFUSALS = 20


def refusal_advice(reason: str) -> str:
    return REFUSAL_ADVICE.get(reason, REFUSAL_ADVICE_OTHER)


@dataclass(frozen=True)
class AdvisedRefusal:
    refusal: Refusal
    advice: str


def teams_accounts(*, teams: Collection[int]) -> list[str]:
    """The names of the upstream accounts these teams are routed to (their totals are
    what a team user sees of the account it shares)."""
    return list(
        Team.objects.filter(pk__in=teams).values_list("upstream__name", flat=True).distinct()
    )


def team_refusals_recent(*, team: Team, size: int = TEAM_RECENT_REFUSALS) -> list[AdvisedRefusal]:
    """The team's latest 429s, each with what to do about it."""
    page = selectors.refusal_page(filters=RefusalFilters(team=team), size=size)
    return [AdvisedRefusal(row, refusal_advice(row.reason)) for row in page.rows]


def team_limits_in_force(*, team: Team) -> list[EndpointLimit]:
    """The rows of the team's profile: what its keys may do, per endpoint and model (a
    key with its own profile is shown as such in the key list)."""
    return list(team.profile.limits.order_by("endpoint", "model"))


@dataclass(frozen=True)
class TeamUsage:
    since: datetime
    until: datetime
    rows: list[dict[str, Any]]  # per model: requests, tokens, cost
    total: dict[str, Any]


def team_usage_this_month(*, team: Team, now: datetime) -> TeamUsage:
    """The team's usage this calendar month in the usage time zone (budgets' months)."""
    since, until = period_bounds("month", now, usage_selectors.usage_zone())
    rows = usage_selectors.usage_rows(since=since, until=until, team_id=team.pk)
    return TeamUsage(
        since=since,
        until=until,
        rows=usage_selectors.usage_totals(rows, ("model",)),
        total=usage_selectors.usage_sum(rows),
    )


class TeamScopeNow(TypedDict):
    """One of the team's keys on one endpoint, as the limiter sees it now."""

    key_prefix: str
    key_name: str
    endpoint: str
    limit_per_minute: float
    burst: int
    in_use: float
    queued: int
    longest_wait: float
    leases: int
    max_concurrent: int | None
    refused_last_minute: dict[str, int]


class TeamJobNow(TypedDict):
    kind: str  # "fine_tune", "batch" or "video"
    job: str
    parent: str | None
    state: str  # "running" (holds a slot) or "waiting"
    position: int | None  # in the account's queue, 1 = starts next; None while running
    since: str


class TeamNow(TypedDict):
    limiter_reachable: bool
    scopes: list[TeamScopeNow]
    jobs: list[TeamJobNow]


def team_now(
    *, team: Team, snapshot: LiveView | None, reachable: bool, jobs: dict[str, AccountJobs]
) -> TeamNow:
    """The team's own rows of the live snapshot (its keys' scopes, no account's or other
    team's) and its jobs' places in its upstream account's fine-tune and batch queues:
    the live view as scoped for a reader of this team's rows (dashboard/live.py)."""
    visible = live.visible_for(frozenset({team.pk}))
    view = live.view_scoped(snapshot, visible) if snapshot else None
    scopes = [
        TeamScopeNow(
            key_prefix=scope.get("key_prefix", ""),
            key_name=scope.get("key_name", ""),
            endpoint=scope["endpoint"],
            limit_per_minute=scope["limit_per_minute"],
            burst=scope["burst"],
            in_use=scope["in_use"],
            queued=scope["queued"],
            longest_wait=scope["longest_wait"],
            leases=scope["leases"],
            max_concurrent=scope["max_concurrent"],
            refused_last_minute=scope["refused_last_minute"],
        )
        for scope in (view["scopes"] if view else [])
        if scope["kind"] == "key"
    ]
    mine: list[TeamJobNow] = []
    for account in live.jobs_scoped(jobs, visible).values():
        for kind, slots in (
            ("fine_tune", account["fine_tunes"]),
            ("batch", account["batches"]),
            *([("video", account["videos"])] if "videos" in account else []),
        ):
            mine += [
                TeamJobNow(
                    kind=kind,
                    job=holder["job"],
                    parent=holder["parent"],
                    state="running",
                    position=None,
                    since=holder["since"],
                )
                for holder in slots["holders"]
            ]
            mine += [
                TeamJobNow(
                    kind=kind,
                    job=waiting["job"],
                    parent=waiting["parent"],
                    state="waiting",
                    position=waiting["position"],
                    since=waiting["since"],
                )
                for waiting in slots["waiting"]
            ]
    return TeamNow(limiter_reachable=reachable, scopes=scopes, jobs=mine)
