"""Revoking a key or pausing a team ends that key's work at once, not when it is next granted.

Each web process knows its own calls in flight, by key (`Calls`). When a configuration
change is broadcast (CONFIG_GROUP; every save of a key or team sends one, from the
dashboard, the ops API or the admin), the process re-checks the keys of those calls
against the database, in one query off the event loop, and cuts the calls whose key may
no longer be used. A key that expires is cut by a timer at its expiry.

Cutting cancels the call's task, so whatever it waits on is given back: a ticket queued
in the limiter is cancelled (the key's place goes to others), an upstream call or stream
is closed and its lease released. The team API then answers what a new call would get
(401 invalid_api_key, 403 team_paused); a stream already started ends with that error as
a final SSE event. The database is asked rather than the broadcast trusted to say what
changed: a key revoked through any path is caught, and the query only runs when this
process has calls in flight.

Not cut: a file or job write the limiter has already admitted. It is short, and its
answer must tell the truth about what it created or cancelled. Jobs already queued belong
to the team, not the key: a revoked key's fine-tunes and batches still run; a paused
team's do not start until it is resumed (limiter/jobs/services.py `job_claim_next`).

The last line of defence is `key_refusal`, asked right before a call goes upstream: the
key cache was cleared by the broadcast, so it answers from the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from limiter import selectors
from limiter.gateway import errors
from limiter.gateway.errors import ApiError
from limiter.gateway.keys import KeyInfo
from limiter.gateway.keys import cache as key_cache
from limiter.protocol.client import on_config_changed, spawn

logger = logging.getLogger(__name__)


async def key_refusal(key: KeyInfo) -> ApiError | None:
    """What a new call of this key would be answered now, or None while it may call."""
    current = await key_cache.lookup(key.secret_hash)
    if current is None:
        return errors.invalid_key()
    if current.paused:
        return errors.team_paused(current.team_name)
    return None


@dataclass(eq=False, slots=True)
class Call:
    """One call in flight: the task to cancel, and why it was cut (None while it runs)."""

    key: KeyInfo
    task: asyncio.Task
    request_id: str
    # False once cutting would make the answer lie (an admitted write), or the answer is
    # being sent: cancelling then would leave a response half written.
    cuttable: bool = True
    refusal: ApiError | None = None
    expiry: asyncio.TimerHandle | None = None


def _blocked_keys(key_ids: list[str]) -> dict[str, selectors.KeyBlock]:
    close_old_connections()  # this runs outside a request: drop a connection the DB closed
    return selectors.keys_blocked(key_ids=key_ids)


class Calls:
    """This process's calls in flight, by key id."""

    def __init__(self) -> None:
        self._by_key: dict[str, set[Call]] = {}
        self._checking: asyncio.Task | None = None
        self._check_again = False

    def track(self, key: KeyInfo, task: asyncio.Task, request_id: str) -> Call:
        call = Call(key, task, request_id)
        self._by_key.setdefault(key.key_id, set()).add(call)
        if key.expires_at is not None:
            # An expiry broadcasts nothing: the call is cut when the moment comes.
            delay = max(0.0, key.expires_at - time.time())
            call.expiry = asyncio.get_running_loop().call_later(
                delay, self.cut, call, errors.invalid_key()
            )
        return call

    def untrack(self, call: Call) -> None:
        call.cuttable = False
        if call.expiry is not None:
            call.expiry.cancel()
        calls = self._by_key.get(call.key.key_id)
        if calls is not None:
            calls.discard(call)
            if not calls:
                del self._by_key[call.key.key_id]

    def cut(self, call: Call, refusal: ApiError) -> bool:
        """Cancel the call, to be answered `refusal`; whether it was cut (not already, and
        cuttable)."""
        if not call.cuttable or call.refusal is not None:
            return False
        call.refusal = refusal
        call.cuttable = False
        logger.info("cutting %s of key %s: %s", call.request_id, call.key.prefix, refusal.code)
        call.task.cancel()
        return True

    def config_changed(self) -> None:
        """A configuration change was broadcast: re-check the keys of the calls in flight.

        Changes arriving while a check runs start one more check after it: the running
        query may have read the database before they were committed."""
        if self._checking is not None and not self._checking.done():
            self._check_again = True
            return
        if self._by_key:
            self._checking = spawn(self._recheck_until_settled())

    async def _recheck_until_settled(self) -> None:
        while True:
            self._check_again = False
            try:
                await self.recheck()
            except Exception:  # the pre-send check (key_refusal) still stands
                logger.exception("could not re-check the keys of calls in flight")
            if not self._check_again:
                return

    async def recheck(self) -> int:
        """Cut the calls whose key may no longer call; how many it cut."""
        key_ids = list(self._by_key)
        if not key_ids:
            return 0
        blocked = await sync_to_async(_blocked_keys, thread_sensitive=True)(key_ids)
        cut = 0
        for key_id, why in blocked.items():
            for call in list(self._by_key.get(key_id, ())):
                refusal = (
                    errors.invalid_key()
                    if why == "unusable"
                    else errors.team_paused(call.key.team_name)
                )
                cut += self.cut(call, refusal)
        return cut


calls = Calls()
on_config_changed(calls.config_changed)
