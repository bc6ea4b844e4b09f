"""Read queries for the dashboard and the ops API: limits as the database holds them,
keys per team, and the 429 history.

The 429 history may hold millions of rows, so nothing here counts the whole table:
pages are keyset-paginated on (created_at, id), which the `refusal_recent` index
serves newest first, and the per-minute chart only ever aggregates a bounded range.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from django.db import connection
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import Substr, TruncMinute
from django.utils import timezone

from limiter.models import (
    ApiKey,
    DedicatedModel,
    EndpointLimit,
    LimitProfile,
    ManagedObject,
    Refusal,
    Team,
    UpstreamAccount,
)
from limiter.protocol import events

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_ID = 2**63 - 1  # a bigint primary key
# A cursor's microseconds since 1970: 17 digits reach the year 5138, within datetime's.
CURSOR_MICROS_DIGITS = 17
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The chart aggregates at most this much of the filtered range (its most recent end):
# a day is 1,440 points, and bounds the rows the aggregate may touch.
CHART_MAX_RANGE = timedelta(hours=24)
CSV_CHUNK_SIZE = 2000
CSV_COLUMNS = (
    "created_at",
    "team_name",
    "key_prefix",
    "upstream",
    "endpoint",
    "model",
    "reason",
    "source",
    "retry_after_seconds",
    "request_id",
    "message",
    "shadow",
)
# The 429 history's `mode` filter: real refusals, or shadow limits' would-be refusals.
MODE_ENFORCED, MODE_SHADOW = "enforced", "shadow"


# --- limits ------------------------------------------------------------------------
def profile_list() -> QuerySet[LimitProfile]:
    return LimitProfile.objects.prefetch_related("limits").order_by("name")


def team_list() -> QuerySet[Team]:
    return Team.objects.select_related("profile", "upstream").order_by("name")


def account_list() -> QuerySet[UpstreamAccount]:
    return UpstreamAccount.objects.select_related("profile").prefetch_related("profile__limits")


def ceilings_for_profile(*, profile: LimitProfile) -> dict[str, EndpointLimit]:
    """The tightest upstream ceiling per endpoint among the accounts this profile's
    teams (or the default account) are routed to: what a limit above it would exceed."""
    account_ids = set(Team.objects.filter(profile=profile).values_list("upstream_id", flat=True))
    account_ids |= set(UpstreamAccount.objects.filter(is_default=True).values_list("pk", flat=True))
    ceilings: dict[str, EndpointLimit] = {}
    rows = EndpointLimit.objects.filter(profile__accounts__in=account_ids, model="").exclude(
        profile=profile
    )
    for row in rows.select_related("profile"):
        current = ceilings.get(row.endpoint)
        if current is None or row.requests_per_minute < current.requests_per_minute:
            ceilings[row.endpoint] = row
    return ceilings


def limit_overview() -> dict:
    """The limits the live page shows before the limiter's first snapshot arrives:
    per upstream account and per team, per endpoint, from the database."""

    def rows(profile: LimitProfile) -> list[dict]:
        return [
            {
                "endpoint": row.endpoint,
                "model": row.model,
                "limit_per_minute": row.effective_per_minute,
                "requests_per_minute": row.requests_per_minute,
                "burst": row.burst,
                "max_concurrent": row.max_concurrent,
                "queue_depth": row.queue_depth,
                "max_wait": row.max_queue_wait_seconds,
            }
            for row in profile.limits.all()
        ]

    return {
        "accounts": [
            {"id": str(a.pk), "name": a.name, "profile": a.profile.name, "limits": rows(a.profile)}
            for a in account_list()
        ],
        "teams": [
            {
                "id": t.pk,
                "name": t.name,
                "paused": t.paused,
                "profile": t.profile.name,
                "upstream": t.upstream.name,
                "limits": rows(t.profile),
            }
            for t in team_list().prefetch_related("profile__limits")
        ],
    }


def scope_names() -> dict[str, dict[str, dict[str, str]]]:
    """Display names for the limiter's scope ids: ApiKey pk and UpstreamAccount pk."""
    keys = ApiKey.objects.values_list("pk", "prefix", "name", "team__name", "team_id")
    return {
        "key": {
            str(pk): {"prefix": prefix, "name": name, "team": team, "team_id": str(team_id)}
            for pk, prefix, name, team, team_id in keys
        },
        "account": {
            str(pk): {"name": name}
            for pk, name in UpstreamAccount.objects.values_list("pk", "name")
        },
        "team": {str(pk): {"name": name} for pk, name in Team.objects.values_list("pk", "name")},
    }


# --- keys ----------------------------------------------------------------------------
def key_list(*, team: Team) -> QuerySet[ApiKey]:
    # Scoped by team: a team's page never lists another team's keys.
    return ApiKey.objects.filter(team=team).select_related("profile").order_by("-created_at", "-id")


KeyBlock = Literal["unusable", "paused"]


def keys_blocked(*, key_ids: Collection[str]) -> dict[str, KeyBlock]:
    """Which of these keys may no longer call, and why: "unusable" (revoked, expired or
    deleted) or "paused" (its team is). Usable keys are left out. One query, served by
    the primary key."""
    usable = dict(
        ApiKey.objects.usable()
        .filter(pk__in=[int(k) for k in key_ids])
        .values_list("pk", "team__paused")
    )
    blocked: dict[str, KeyBlock] = {}
    for key_id in key_ids:
        paused = usable.get(int(key_id))
        if paused is None:
            blocked[key_id] = "unusable"
        elif paused:
            blocked[key_id] = "paused"
    return blocked


# --- 429 history -----------------------------------------------------------------------
@dataclass(frozen=True)
class RefusalFilters:
    start: datetime | None = None
    end: datetime | None = None
    team: Team | None = None
    team_name: str = ""  # for refusals of a team deleted since
    key_prefix: str = ""
    endpoint: str = ""
    model: str = ""
    reason: str = ""
    source: str = ""
    mode: str = ""  # MODE_ENFORCED | MODE_SHADOW | "" for both
    # The teams whose rows the reader may see (dashboard.policy.team_rows); None: every row.
    teams: frozenset[int] | None = None


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    id: int

    def encode(self) -> str:
        micros = (self.created_at - EPOCH) // timedelta(microseconds=1)  # exact: no float
        return f"{micros}-{self.id}"

    @classmethod
    def decode(cls, value: str) -> Cursor | None:
        """The cursor `encode` wrote, or None for any other text. Its numbers are bounded
        before use: past year 9999, datetime.fromtimestamp raises OSError, and an id past
        a bigint overflows the database's integer."""
        micros_text, _, pk_text = value.partition("-")
        if not (micros_text.isascii() and micros_text.isdigit() and pk_text.isascii()):
            return None
        if not pk_text.isdigit() or len(micros_text) > CURSOR_MICROS_DIGITS:
            return None
        pk = int(pk_text)
        if pk > MAX_ID:
            return None
        when = EPOCH + timedelta(microseconds=int(micros_text))
        return cls(created_at=when, id=pk)


@dataclass
class RefusalPage:
    rows: list[Refusal]
    next_cursor: str | None


def refusal_queryset(*, filters: RefusalFilters) -> QuerySet[Refusal]:
    qs = Refusal.objects.all()
    if filters.teams is not None:
        qs = qs.filter(team_id__in=filters.teams)
    if filters.start:
        qs = qs.filter(created_at__gte=filters.start)
    if filters.end:
        qs = qs.filter(created_at__lt=filters.end)
    if filters.team is not None:
        qs = qs.filter(team=filters.team)
    elif filters.team_name:
        qs = qs.filter(team_name=filters.team_name)
    if filters.key_prefix:
        # Prefixes are fixed-length: a shorter one typed in the filter is a prefix match,
        # which the (key_prefix, created_at) index still serves as a range.
        qs = qs.filter(key_prefix__startswith=filters.key_prefix)
    for name in ("endpoint", "model", "reason", "source"):
        value = getattr(filters, name)
        if value:
            qs = qs.filter(**{name: value})
    if filters.mode in (MODE_ENFORCED, MODE_SHADOW):
        qs = qs.filter(shadow=filters.mode == MODE_SHADOW)
    return qs.order_by("-created_at", "-id")


def _after(qs: QuerySet, after: str) -> QuerySet:
    cursor = Cursor.decode(after) if after else None
    if cursor is None:
        return qs
    return qs.filter(created_at__lte=cursor.created_at).exclude(
        Q(created_at=cursor.created_at) & Q(id__gte=cursor.id)
    )


def keyset_page(qs: QuerySet, *, after: str = "", size: int = PAGE_SIZE) -> tuple[list, str | None]:
    """One page of `qs` (ordered by -created_at, -id) starting after the encoded cursor
    `after`, and the cursor of the next page (None on the last).

    The cursor condition is written as `created_at <= t AND NOT (created_at = t AND id
    >= i)` rather than an OR, so both SQLite and PostgreSQL keep a range scan on the
    created_at index instead of falling back to a full scan.
    """
    rows = list(_after(qs, after)[: size + 1])
    if len(rows) <= size:
        return rows, None
    rows = rows[:size]
    return rows, Cursor(created_at=rows[-1].created_at, id=rows[-1].pk).encode()


def refusal_page(*, filters: RefusalFilters, after: str = "", size: int = PAGE_SIZE) -> RefusalPage:
    """One page of the filtered history, newest first."""
    size = max(1, min(size, MAX_PAGE_SIZE))
    rows, next_cursor = keyset_page(refusal_queryset(filters=filters), after=after, size=size)
    return RefusalPage(rows=rows, next_cursor=next_cursor)


def refusal_chart_range(*, filters: RefusalFilters) -> tuple[datetime, datetime]:
    end = filters.end or timezone.now()
    # An `end` within a day of year 1 has no day before it to chart.
    earliest = max(end, datetime.min.replace(tzinfo=end.tzinfo) + CHART_MAX_RANGE) - CHART_MAX_RANGE
    start = filters.start or earliest
    return max(start, earliest), end


def refusal_per_minute(*, filters: RefusalFilters) -> list[tuple[datetime, int]]:
    """Refusals per minute over the filtered range, clamped to its last 24 hours."""
    start, end = refusal_chart_range(filters=filters)
    qs = (
        refusal_queryset(filters=filters)
        .filter(created_at__gte=start, created_at__lt=end)
        .order_by()
    )
    if connection.vendor == "sqlite":
        # SQLite keeps datetimes as ISO text, and Django's TruncMinute there is a Python
        # function called per row (2 s for a busy day); the text's first 16 characters
        # are the minute, computed by SQLite itself in a few milliseconds.
        rows = (
            qs.annotate(minute=Substr("created_at", 1, 16)).values("minute").annotate(n=Count("id"))
        )
        return sorted(
            (datetime.fromisoformat(row["minute"]).replace(tzinfo=UTC), row["n"]) for row in rows
        )
    minutes = qs.annotate(minute=TruncMinute("created_at")).values("minute").annotate(n=Count("id"))
    return sorted((row["minute"], row["n"]) for row in minutes)


def refusal_csv_chunk(
    *, filters: RefusalFilters, after: str = ""
) -> tuple[list[list[str]], str | None]:
    """The next CSV_CHUNK_SIZE filtered rows as CSV fields, and the cursor after them.

    An export walks the table chunk by chunk on the same keyset as the pages rather
    than holding one cursor open: each chunk is a short indexed range query, so a long
    download never pins a database connection or the SQLite read snapshot. Tuples, not
    model instances: building ten thousand models costs more than the query.
    """
    qs = _after(refusal_queryset(filters=filters), after).values_list("id", *CSV_COLUMNS)
    rows = list(qs[:CSV_CHUNK_SIZE])
    fields = [
        [created_at.isoformat(), *("" if v is None else str(v) for v in rest)]
        for _, created_at, *rest in rows
    ]
    if len(rows) < CSV_CHUNK_SIZE:
        return fields, None
    last_id, last_created_at = rows[-1][0], rows[-1][1]
    return fields, Cursor(created_at=last_created_at, id=last_id).encode()


# The reasons a refusal can carry, offered as suggestions in the filter. A fixed list:
# DISTINCT over a million rows would cost more than the page itself.
KNOWN_REASONS = (
    events.RATE_LIMITED,
    events.ACCOUNT_RATE_LIMITED,
    events.TOKEN_RATE_LIMITED,
    events.QUEUE_FULL,
    events.QUEUE_TIMEOUT,
    events.CONCURRENCY_LIMITED,
    events.UPSTREAM_PAUSED,
    events.SHARE_USED_UP,
    events.PRIORITY_WAITING,
    "upstream_rate_limited",
)


def managed_ids(*, team_id: int, kind: str) -> set[str]:
    """The ids of the objects of `kind` the team created through Sluice."""
    rows = ManagedObject.objects.filter(team_id=team_id, kind=kind)
    return set(rows.values_list("object_id", flat=True))


def managed_owners(*, kind: str, object_ids: Collection[str]) -> dict[str, int]:
    """The owning team's id of each of `object_ids` that a team created through Sluice."""
    rows = ManagedObject.objects.filter(kind=kind, object_id__in=list(object_ids))
    return dict(rows.values_list("object_id", "team_id"))


def dedicated_list(*, account_id: int | None = None) -> QuerySet[DedicatedModel]:
    """The models served on dedicated endpoints, every account's or one's."""
    rows = DedicatedModel.objects.select_related("account")
    return rows if account_id is None else rows.filter(account_id=account_id)
