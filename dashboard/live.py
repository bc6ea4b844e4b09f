"""The live view's data: the limiter's snapshots, given names, and the latest one kept.

The limiter speaks in ids (ApiKey pk, UpstreamAccount pk); the browser wants team
names, key prefixes and account names. The mapping is cached per process and reloaded
when a snapshot names an id it does not know, or when the configuration changes.
"""

from __future__ import annotations

import asyncio
import time

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from typing_extensions import TypedDict

from limiter import events, process, selectors


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


class LiveView(TypedDict):
    """The limiter's snapshot with names instead of ids (the websocket's "snapshot")."""

    type: str
    at: float
    limiter: dict[str, float]
    scopes: list[LiveScope]
    upstream_headers: dict[str, dict[str, dict[str, str]]]  # account name -> endpoint -> headers
    models: list[LiveModel]  # Together's limits per account and model, as learned
    history: dict[str, list[list[int]]]
    # Merged embeddings requests of the last minute (limiter/coalesce_stats.py), by account name.
    coalescing: list[events.CoalescingSnapshot]


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
    await process.ensure_started()
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
    await process.request_snapshot(reply)
    try:
        message = await asyncio.wait_for(layer.receive(reply), SNAPSHOT_TIMEOUT)
    except TimeoutError:
        return latest.snapshot
    return await snapshot_enriched(message)
