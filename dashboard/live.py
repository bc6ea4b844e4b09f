"""The live view's data: the limiter's snapshots, given names, and the latest one kept.

The limiter speaks in ids (ApiKey pk, UpstreamAccount pk); the browser wants team
names, key prefixes and account names. The mapping is cached per process and reloaded
when a snapshot names an id it does not know, or when the configuration changes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from typing_extensions import TypedDict

from limiter import selectors, serving
from limiter.jobs.live import AccountJobs, KindSlots
from limiter.models import Team
from limiter.protocol import events


class LiveScope(events.ScopeSnapshot, total=False):
    """A limiter scope as the browser and /api/live get it: with its display names."""

    team: str  # key scopes
    team_id: str
    key_prefix: str
    key_name: str
    account: str  # account scopes


class LiveModel(events.ModelCeilingSnapshot):
    """A model's learned ceiling as the browser and /api/live get it: with the account's name."""

    account_name: str


class LiveSharing(events.SharingSnapshot):
    """A class's part of an account's model ceiling, with names: its team (and the key's
    prefix when a key holds the share) and the account's."""

    team: str
    team_id: str
    key_prefix: str
    account_name: str


class LiveView(TypedDict):
    """The limiter's snapshot with names instead of ids (the websocket's "snapshot")."""

    type: str
    at: float
    limiter: dict[str, float]
    scopes: list[LiveScope]
    upstream_headers: dict[str, dict[str, dict[str, str]]]  # account name -> endpoint -> headers
    models: list[LiveModel]  # Together's limits per account and model, as learned
    history: dict[str, list[list[int]]]
    # Merged embeddings requests of the last minute, by account name
    # (limiter/authority/coalesce_stats.py).
    coalescing: list[events.CoalescingSnapshot]
    # Per account and model, each team's (or key's) share, use, and lending or borrowing.
    sharing: list[LiveSharing]


# Reload names at most this often when a snapshot keeps naming an unknown id (a key
# deleted since the limiter last saw it), so a stale id cannot cost a query per update.
NAMES_RETRY_SECONDS = 5.0
# /api/live asks the limiter itself when the last snapshot seen is older than this.
LATEST_MAX_AGE = 1.0
SNAPSHOT_TIMEOUT = 1.0


class ScopeNames:
    def __init__(self) -> None:
        self._names: dict[str, dict[str, dict[str, str]]] | None = None
        self._loaded_at = 0.0

    def clear(self) -> None:
        self._names = None

    def _missing(self, snapshot: events.LiveSnapshot) -> bool:
        assert self._names is not None
        return any(scope["id"] not in self._names[scope["kind"]] for scope in snapshot["scopes"])

    async def get(self, snapshot: events.LiveSnapshot) -> dict[str, dict[str, dict[str, str]]]:
        stale = self._names is None or (
            self._missing(snapshot) and time.monotonic() - self._loaded_at > NAMES_RETRY_SECONDS
        )
        if stale:
            self._names = await database_sync_to_async(selectors.scope_names)()
            self._loaded_at = time.monotonic()
        assert self._names is not None
        return self._names


names = ScopeNames()


def snapshot_enrich(
    snapshot: events.LiveSnapshot, scope_names: dict[str, dict[str, dict[str, str]]]
) -> LiveView:
    """The snapshot as the browser gets it: every scope carries its display names."""
    scopes: list[LiveScope] = []
    for scope in snapshot["scopes"]:
        known = scope_names[scope["kind"]].get(scope["id"], {})
        if scope["kind"] == "key":
            labels = {
                "team": known.get("team", "(deleted key)"),
                "team_id": known.get("team_id", ""),
                "key_prefix": known.get("prefix", scope["id"]),
                "key_name": known.get("name", ""),
            }
        else:
            labels = {"account": known.get("name", f"account {scope['id']}")}
        scopes.append(LiveScope(**scope, **labels))  # type: ignore[typeddict-item]
    accounts = scope_names["account"]
    return {
        "type": "snapshot",
        "at": snapshot["at"],
        "limiter": snapshot["limiter"],
        "scopes": scopes,
        "upstream_headers": {
            accounts.get(account, {}).get("name", account): headers
            for account, headers in snapshot["upstream_headers"].items()
        },
        "models": [
            LiveModel(
                **model,
                account_name=accounts.get(model["account"], {}).get(
                    "name", f"account {model['account']}"
                ),
            )
            for model in snapshot.get("models", [])
        ],
        "history": snapshot["history"],
        "coalescing": [
            {**row, "account": accounts.get(row["account"], {}).get("name", row["account"])}
            for row in snapshot.get("coalescing", [])
        ],
        "sharing": [_sharing_named(row, scope_names) for row in snapshot.get("sharing", [])],
    }


def _sharing_named(
    row: events.SharingSnapshot, scope_names: dict[str, dict[str, dict[str, str]]]
) -> LiveSharing:
    kind, _, object_id = row["holder"].partition(":")
    if kind == "key":
        key = scope_names["key"].get(object_id, {})
        team_id, team, prefix = (
            key.get("team_id", ""),
            key.get("team", "(deleted key)"),
            key.get("prefix", ""),
        )
    else:
        known = scope_names.get("team", {}).get(object_id, {})
        team_id, team, prefix = object_id, known.get("name", f"team {object_id}"), ""
    account = scope_names["account"].get(row["account"], {}).get("name", row["account"])
    return LiveSharing(**row, team=team, team_id=team_id, key_prefix=prefix, account_name=account)


# --- what a team user sees ---------------------------------------------------------------
@dataclass(frozen=True)
class Visible:
    """What of the live view a team user may see: its teams' key scopes, limits and jobs,
    and the upstream accounts those teams are routed to (their totals, which name no
    team). Computed once per connection or request (`visible_for`)."""

    team_ids: frozenset[str]
    team_names: frozenset[str]
    account_ids: frozenset[str]
    account_names: frozenset[str]


def visible_for(rows_of: frozenset[int] | None) -> Visible | None:
    """What a reader of these teams' rows (`policy.team_rows`) sees: None, every row."""
    if rows_of is None:
        return None
    teams = list(Team.objects.filter(pk__in=rows_of).select_related("upstream"))
    return Visible(
        team_ids=frozenset(str(team.pk) for team in teams),
        team_names=frozenset(team.name for team in teams),
        account_ids=frozenset(str(team.upstream_id) for team in teams),
        account_names=frozenset(team.upstream.name for team in teams),
    )


def view_scoped(view: LiveView, visible: Visible | None) -> LiveView:
    """The snapshot as `visible` may see it: its teams' key scopes, its accounts' scopes,
    ceilings, headers and merged embeddings. The limiter's own counters and the per-endpoint
    history are totals over every team, with no name in them: kept."""
    if visible is None:
        return view
    return {
        **view,
        "scopes": [
            scope
            for scope in view["scopes"]
            if (scope["kind"] == "key" and scope.get("team_id") in visible.team_ids)
            or (scope["kind"] == "account" and scope["id"] in visible.account_ids)
        ],
        "upstream_headers": {
            name: headers
            for name, headers in view["upstream_headers"].items()
            if name in visible.account_names
        },
        "models": [model for model in view["models"] if model["account"] in visible.account_ids],
        "coalescing": [
            row for row in view["coalescing"] if row["account"] in visible.account_names
        ],
        # Its own teams' parts only: another team's share and use name that team.
        "sharing": [row for row in view["sharing"] if row["team_id"] in visible.team_ids],
    }


def _slots_scoped(slots: KindSlots, teams: frozenset[str]) -> KindSlots:
    return {
        **slots,
        "holders": [holder for holder in slots["holders"] if holder["team"] in teams],
        "waiting": [job for job in slots["waiting"] if job["team"] in teams],
    }


def jobs_scoped(
    accounts: dict[str, AccountJobs], visible: Visible | None
) -> dict[str, AccountJobs]:
    """Fine-tune and batch slots of the visible accounts: how many are used (a total), and
    the holders and waiting jobs of the visible teams only (their positions stay the
    account queue's, so a team still sees how many jobs are ahead of its own)."""
    if visible is None:
        return accounts
    scoped: dict[str, AccountJobs] = {}
    for account_id, account in accounts.items():
        if account_id not in visible.account_ids:
            continue
        scoped[account_id] = {
            "name": account["name"],
            "fine_tunes": _slots_scoped(account["fine_tunes"], visible.team_names),
            "batches": _slots_scoped(account["batches"], visible.team_names),
        }
        if "videos" in account:  # not from a poller older than video jobs
            scoped[account_id]["videos"] = _slots_scoped(account["videos"], visible.team_names)
    return scoped


def limits_scoped(limits: dict[str, Any], visible: Visible | None) -> dict[str, Any]:
    """`selectors.limit_overview()` narrowed: the visible teams and their accounts."""
    if visible is None:
        return limits
    return {
        "accounts": [a for a in limits["accounts"] if a["id"] in visible.account_ids],
        "teams": [t for t in limits["teams"] if str(t["id"]) in visible.team_ids],
    }


class Latest:
    """The newest snapshot this process has seen, for GET /api/live."""

    def __init__(self) -> None:
        self.snapshot: LiveView | None = None
        self.seen_at = 0.0

    def store(self, enriched: LiveView) -> None:
        self.snapshot = enriched
        self.seen_at = time.monotonic()

    def age(self) -> float | None:
        return None if self.snapshot is None else time.monotonic() - self.seen_at


latest = Latest()


async def snapshot_enriched(snapshot: events.LiveSnapshot) -> LiveView:
    enriched = snapshot_enrich(snapshot, await names.get(snapshot))
    latest.store(enriched)
    return enriched


async def ceiling_reset_send(*, account: str, endpoint: str, model: str) -> bool:
    """Tell the limiter to forget a model's learned ceiling; whether it confirmed within
    SNAPSHOT_TIMEOUT (the database row is deleted by the caller either way)."""
    await serving.ensure_started()
    layer = get_channel_layer()
    reply = await layer.new_channel("sluice.reset.")
    message: events.CeilingResetMessage = {
        "type": events.CEILING_RESET,
        "account": account,
        "endpoint": endpoint,
        "model": model,
        "reply": reply,
    }
    await layer.send(events.LIMITER_CHANNEL, dict(message))
    try:
        await asyncio.wait_for(layer.receive(reply), SNAPSHOT_TIMEOUT)
    except TimeoutError:
        return False
    latest.seen_at = 0.0  # the next /api/live asks the limiter: it shows the reset
    return True


async def snapshot_fetch() -> LiveView | None:
    """The latest snapshot, asking the limiter when the last one seen is old. When the
    limiter does not answer within SNAPSHOT_TIMEOUT, the old one (or None): the caller
    tells from `latest.age()` that it is stale."""
    age = latest.age()
    if age is not None and age <= LATEST_MAX_AGE:
        return latest.snapshot
    layer = get_channel_layer()
    reply = await layer.new_channel("sluice.live.api.")
    await serving.request_snapshot(reply)
    try:
        message = await asyncio.wait_for(layer.receive(reply), SNAPSHOT_TIMEOUT)
    except TimeoutError:
        return latest.snapshot
    return await snapshot_enriched(message)
