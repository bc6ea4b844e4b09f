"""Which models the account serves on dedicated endpoints, polled from Together.

Together sets no rate limit on a dedicated endpoint (it bills per replica-minute), so a
call to a model one serves is not held to the account's serverless ceiling for that model
(limiter/authority/scopes.py), only to the team's key limits and budgets. The limiter
asks every upstream account's `GET /endpoints?type=dedicated` every
SLUICE_DEDICATED_POLL_SECONDS and keeps the answer as DedicatedModel rows
(`services.dedicated_sync`: only what changed is written, and a change is a configuration
change, so every process hears of it and the limiter reloads). Rows ops marked by hand stay
whatever the poll finds. A failed poll changes nothing: the rows stay as they were.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from limiter import services
from limiter.models import UpstreamAccount
from limiter.upstream import UpstreamError, account_target
from limiter.upstream import client as upstream

logger = logging.getLogger(__name__)

# Together's endpoint states in which it serves the model.
SERVING_STATES = frozenset({"STARTED", "STARTING", "PENDING"})
POLL_DEADLINE = 10.0


def served_models(answer: Any) -> dict[str, str]:
    """model -> endpoint name of the dedicated endpoints that serve, from a list answer
    (`{"data": [...]}` or a bare list), read leniently."""
    items = answer.get("data") if isinstance(answer, dict) else answer
    found: dict[str, str] = {}
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or item.get("type", "dedicated") != "dedicated":
            continue
        model, state = item.get("model"), str(item.get("state", "STARTED")).upper()
        if isinstance(model, str) and 0 < len(model) <= 200 and state in SERVING_STATES:
            found[model] = str(item.get("name") or item.get("id") or "")[:200]
    return found


async def poll_account(account: UpstreamAccount) -> bool | None:
    """Ask one account's endpoint list and keep it: whether the rows changed; None when
    Together gave no usable answer."""
    try:
        outcome = await upstream.send(
            account_target(account),
            "GET",
            "/endpoints",
            params="type=dedicated",
            deadline=time.monotonic() + POLL_DEADLINE,
            max_retries=1,
        )
    except UpstreamError as exc:
        logger.warning("dedicated endpoints of %s: no answer (%s)", account.name, exc)
        return None
    if outcome.response.status_code != 200:
        logger.warning(
            "dedicated endpoints of %s: status %s", account.name, outcome.response.status_code
        )
        return None
    try:
        found = served_models(outcome.response.json())
    except ValueError:
        return None
    return await sync_to_async(_sync, thread_sensitive=False)(account, found)


def _sync(account: UpstreamAccount, found: dict[str, str]) -> bool:
    close_old_connections()
    return services.dedicated_sync(account=account, found=found)


def _accounts() -> list[UpstreamAccount]:
    close_old_connections()
    return list(UpstreamAccount.objects.all())


async def poll_once() -> int:
    """Every account once: how many changed."""
    changed = 0
    for account in await sync_to_async(_accounts, thread_sensitive=False)():
        changed += bool(await poll_account(account))
    return changed


async def poll_forever() -> None:
    """The limiter's poll loop; SLUICE_DEDICATED_POLL_SECONDS 0 turns it off."""
    interval = settings.SLUICE_DEDICATED_POLL_SECONDS
    while interval > 0:
        try:
            await poll_once()
        except Exception:
            logger.exception("dedicated endpoint poll failed; retrying in %.0fs", interval)
        await asyncio.sleep(interval)
