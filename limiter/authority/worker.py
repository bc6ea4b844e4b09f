"""The limiter worker: a Channels consumer on the named channel `limiter`, the single
authority over admission.

It owns one `Engine` and handles messages one at a time (Channels dispatches a
consumer's messages sequentially), so every decision is atomic without locks. Web
processes ask it over the channel layer (see limiter/protocol/client.py); it answers each
ticket on the asker's reply channel, wakes itself on a timer to serve queued tickets,
and publishes live snapshots to the dashboard.

Embedded (the default, `manage.py serve`): it runs as a task inside the web process
over the in-memory channel layer. Scale-out: `manage.py runworker limiter` runs it
alone over channels_redis, and any number of web processes share it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from channels.consumer import AsyncConsumer, get_handler_name
from channels.layers import BaseChannelLayer

from limiter.authority.ceilings import Ceiling, Learned
from limiter.authority.coalesce_stats import CoalesceStats
from limiter.authority.config import UNLIMITED, LimiterConfig, config_load
from limiter.authority.engine import (
    INVALID_UNITS,
    Decision,
    Engine,
    Limit,
    Scope,
    ScopeId,
    units_valid,
)
from limiter.protocol import events
from limiter.protocol.events import DecisionMessage, ScopeSnapshot
from limiter.usage.budgets import (
    BUDGET_EXCEEDED,
    NOT_BUDGETED,
    BudgetBook,
    Crossing,
    JobHold,
)
from limiter.usage.services import threshold_crossed

logger = logging.getLogger(__name__)

SNAPSHOT_INTERVAL = 0.5  # at most two live snapshots a second while anything changes
HEARTBEAT_INTERVAL = 5.0  # a snapshot even when idle, so the dashboard knows we are alive
# The live charts' history: counts per 10-second bucket over the last hour. Per-minute
# rows left a fresh server's chart empty for its first minute (one point, no line) and
# moved once a minute; 10 s buckets draw within seconds and cost 360 rows an hour.
HISTORY_BUCKET_SECONDS = 10
HISTORY_BUCKETS = 3600 // HISTORY_BUCKET_SECONDS
# The most US dollars one ticket may hold or report against a budget, as the engine's
# MAX_UNITS for tokens: anything beyond (or NaN, or infinite) is a bug upstream of here.
MAX_COST = 1e9
MSG_INVALID_UNITS = "The request's token or cost estimate is out of range: it was not admitted."
CONFIG_GROUP_REFRESH = 3600.0  # channels_redis forgets group members after a day
# Learned ceilings that changed are written to the database this often
# (limiter/authority/learned.py).
LEARNED_SAVE_INTERVAL = 2.0


class SecondCounts:
    """Counts per second over the last minute, in a ring of 60 slots."""

    __slots__ = ("slots",)

    def __init__(self) -> None:
        self.slots: list[list[int]] = [[-1, 0] for _ in range(60)]  # [second, count]

    def add(self, now: float, n: int = 1) -> None:
        second = int(now)
        slot = self.slots[second % 60]
        if slot[0] != second:
            slot[0], slot[1] = second, 0
        slot[1] += n

    def last_minute(self, now: float) -> int:
        floor = int(now) - 59
        return sum(count for second, count in self.slots if second >= floor)


class Stats:
    """What the dashboard shows beyond the engine's own state: sliding counts and history."""

    def __init__(self) -> None:
        self.admitted: dict[ScopeId, SecondCounts] = defaultdict(SecondCounts)
        self.refused: dict[ScopeId, dict[str, SecondCounts]] = defaultdict(
            lambda: {"gateway": SecondCounts(), "upstream": SecondCounts()}
        )
        # endpoint -> deque of [bucket start (unix seconds), admitted, queued, refused];
        # only buckets with something in them (the browser fills the gaps with zeros)
        self.history: dict[str, deque[list[int]]] = defaultdict(
            lambda: deque(maxlen=HISTORY_BUCKETS)
        )
        self.upstream_headers: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
        # Per model's account scope: the last rate headers Together sent, and its 503s
        # (capacity, which change no pace but are worth seeing).
        self.model_headers: dict[ScopeId, dict[str, str]] = {}
        self.unavailable: dict[ScopeId, SecondCounts] = defaultdict(SecondCounts)
        self.upstream_refused: dict[ScopeId, SecondCounts] = defaultdict(SecondCounts)
        self.decisions = 0

    def _bucket(self, endpoint: str, wall: float) -> list[int]:
        start = int(wall // HISTORY_BUCKET_SECONDS * HISTORY_BUCKET_SECONDS)
        rows = self.history[endpoint]
        if not rows or rows[-1][0] != start:
            rows.append([start, 0, 0, 0])
        return rows[-1]

    def record(self, decision: Decision, mono: float, wall: float) -> None:
        self.decisions += 1
        ticket = decision.ticket
        endpoint = ticket.account.id[2]
        row = self._bucket(endpoint, wall)
        if decision.kind == "grant":
            if ticket.key.id[1]:  # a merged embeddings request counts by its callers
                row[1] += 1
            for scope in ticket.scopes:
                self.admitted[scope.id].add(mono)
        elif decision.kind == "queued":
            row[2] += 1
        else:
            row[3] += 1
            for scope in ticket.scopes:
                self.refused[scope.id]["gateway"].add(mono)

    def forget(self, scope_ids: list[ScopeId]) -> None:
        for scope_id in scope_ids:
            self.admitted.pop(scope_id, None)
            self.refused.pop(scope_id, None)

    def record_upstream_refusal(self, scope_id: ScopeId, mono: float, wall: float) -> None:
        self.refused[scope_id]["upstream"].add(mono)
        # Kept apart from the scope's counts, which go when the scope idles: the models
        # panel shows each model as long as its ceiling is known.
        self.upstream_refused[scope_id].add(mono)
        self._bucket(scope_id[2], wall)[3] += 1


class LimiterConsumer(AsyncConsumer):
    """Handles `limiter.*` messages. One instance per process owns the engine.

    `run_limiter` below drives it (embedded and `manage.py runworker limiter` alike),
    reading the channel itself: Channels' own runworker and channel routing are not used.
    """

    def __init__(
        self,
        *,
        unknown_before: float | None = None,
        adopt_until: float | None = None,
        config: LimiterConfig | None = None,
    ) -> None:
        from django.conf import settings

        # The limits it applies: its own copy (limiter/authority/config.py), never a ticket's.
        self.config = config or LimiterConfig()
        # Keys and accounts a reload did not find (deleted): not reloaded for again until
        # the configuration changes.
        self._unknown: set[tuple[str, str]] = set()
        # What Together allows each model, learned from its answers (limiter/authority/ceilings.py).
        self.ceilings: dict[ScopeId, Ceiling] = {}
        self.margin = settings.SLUICE_UPSTREAM_MARGIN
        self.unit_seconds = settings.SLUICE_UPSTREAM_LIMIT_UNIT_SECONDS
        # Kept across restarts (limiter/authority/learned.py): what a previous limiter learned,
        # applied when a model's scope is first made; when each ceiling last changed;
        # and which changed since the last write.
        self.learned_max_age = settings.SLUICE_LEARNED_CEILING_MAX_AGE
        self._restored: dict[ScopeId, Learned] = {}
        self.ceiling_changed_at: dict[ScopeId, float] = {}
        self._unsaved: set[ScopeId] = set()
        self._persister: asyncio.Task[Any] | None = None
        self.learn = settings.SLUICE_UPSTREAM_LEARN

        # unknown_before: a monotonic time before which another limiter instance may
        # have admitted requests this one never saw (a restart); see Engine.
        # adopt_until: capped scopes grant nothing before it, so the leases web
        # processes hand back after a restart are counted first.
        self.engine = Engine(
            lease_ttl=settings.SLUICE_LEASE_TTL,
            unknown_before=unknown_before,
            adopt_until=adopt_until,
        )
        # Budgets and their spend this period: checked on every ACQUIRE, in memory.
        # Each call a budget covers is reserved at its estimate from its admission to its
        # report (limiter/usage/budgets.py): the bound holds whatever order reports come in.
        self.budgets = BudgetBook(
            ZoneInfo(settings.SLUICE_USAGE_TIME_ZONE), settings.SLUICE_BUDGET_RESERVATION_TTL
        )
        self.stats = Stats()
        self.coalesced = CoalesceStats()
        self.started_at = time.time()
        self.instance = uuid.uuid4().hex[:12]
        self._timer: asyncio.TimerHandle | None = None
        self._dirty = True
        self._last_snapshot = 0.0
        self._publisher: asyncio.Task[Any] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        logger.info("limiter started on channel %r", events.LIMITER_CHANNEL)
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.close()

    def close(self) -> None:
        if self._publisher:
            self._publisher.cancel()
        if self._persister:
            self._persister.cancel()
        if self._timer:
            self._timer.cancel()

    # --- learned ceilings across restarts (limiter/authority/learned.py) -------------------------
    async def learned_restore(self) -> int:
        """Read what the previous limiter learned (fresher than the max age); each model's
        ceiling starts from it when its scope is first made. Returns how many."""
        from asgiref.sync import sync_to_async

        from limiter.authority.learned import learned_load

        try:
            self._restored = await sync_to_async(learned_load, thread_sensitive=False)(
                max_age=self.learned_max_age
            )
        except Exception:  # the database is down: start from the profiles, as before
            logger.exception("could not load the learned ceilings; starting from the profiles")
            return 0
        logger.info("learned ceilings restored for %d models", len(self._restored))
        return len(self._restored)

    def _changed(self, scope_id: ScopeId) -> None:
        self.ceiling_changed_at[scope_id] = time.time()
        self._unsaved.add(scope_id)

    async def learned_persist(self) -> int:
        """Write the ceilings that changed since the last write, in one statement, in a
        thread: decisions go on meanwhile. Returns how many were written."""
        from asgiref.sync import sync_to_async

        from limiter.authority.learned import learned_save

        if not self._unsaved:
            return 0
        states = {
            scope_id: self.ceilings[scope_id].learned_state(self.ceiling_changed_at[scope_id])
            for scope_id in self._unsaved
            if scope_id in self.ceilings
        }
        self._unsaved = set()
        try:
            return await sync_to_async(learned_save, thread_sensitive=False)(states)
        except Exception:  # keep them for the next round
            logger.exception("could not save %d learned ceilings; retrying", len(states))
            self._unsaved |= set(states) & set(self.ceilings)
            return 0

    def start_persisting(self) -> None:
        if self._persister is None or self._persister.done():
            self._persister = asyncio.ensure_future(self._persist_forever())

    async def _persist_forever(self) -> None:
        while True:
            await asyncio.sleep(LEARNED_SAVE_INTERVAL)
            await self.learned_persist()

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Not Channels' dispatch: it closes stale database connections in a thread
        # before every message, a thread hop per decision, and the limiter never
        # touches the database. And one bad message must not take the engine (with
        # every limit it holds) down: Channels would start a fresh, empty instance.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            logger.error("limiter got a message of unknown type %r", message.get("type"))
            return
        try:
            await handler(message)
        except Exception:
            logger.exception("limiter failed to handle a %r message", message.get("type"))

    # --- the configuration -------------------------------------------------------------
    async def reload(self) -> None:
        """Load the limits again and apply them to every scope the engine holds."""
        from asgiref.sync import sync_to_async

        try:
            self.config = await sync_to_async(config_load, thread_sensitive=False)()
            self._unknown.clear()  # a new configuration: ask about them again
            budgets = await sync_to_async(_budgets_load, thread_sensitive=False)(self.budgets)
        except Exception:  # the database is down: decide with the limits we hold
            logger.exception(
                "could not reload the configuration; keeping version %d", self.config.version
            )
            return
        self.budgets.load(*budgets)
        now = time.monotonic()
        for scope_id in list(self.engine.scopes):
            kind, object_id, endpoint, model = scope_id
            if kind == "key":
                # A model's own budget that is gone takes the endpoint's row until its
                # scope idles out (new calls go to the endpoint's scope already).
                budget = self.config.key_model_limit(object_id, endpoint, model) if model else None
                limit = budget or self.config.key_limit(object_id, endpoint)
            else:
                limit = self._model_limit(
                    scope_id, self.config.account_limit(object_id, endpoint, model)
                )
            self.engine.scope(scope_id, limit, now)
        self._dirty = True
        logger.info("limiter configuration loaded (version %d)", self.config.version)

    async def config_changed(self, message: dict[str, Any]) -> None:
        await self.reload()
        now = time.monotonic()
        await self._answer(self.engine.poll(now), now)  # a raised limit frees queued work

    async def limiter_started(self, message: dict[str, Any]) -> None:
        return None  # our own announcement, heard through CONFIG_GROUP

    async def _scopes(
        self, message: events.AcquireMessage | events.AdoptMessage
    ) -> tuple[tuple[ScopeId, Limit], tuple[ScopeId, Limit]]:
        """The key's and the account's scope for a ticket, with the limits this limiter
        holds: reloaded first when the ticket saw a newer configuration, or names a key
        or account it does not know yet (created since its last load)."""
        key, account, endpoint = message["key"], message["account"], message["endpoint"]
        model = message.get("model", "")
        newer = message.get("version", 0) > self.config.version  # type: ignore[operator]
        unknown = not self.config.knows(key, account)
        # An id still unknown after a reload (a key deleted since its web process cached it)
        # is not worth another: it is limited as "no row" until the configuration changes.
        if newer or (unknown and (key, account) not in self._unknown):
            await self.reload()
            if not self.config.knows(key, account):
                self._unknown.add((key, account))
        account_id = ("account", account, endpoint, model)
        charge = message.get("charge", events.CHARGE_BOTH)
        if charge == events.CHARGE_KEY:  # a merged call's caller: its key alone
            return (
                self._key_scope(key, endpoint, model),
                (("account", "", endpoint, ""), UNLIMITED),
            )
        if charge == events.CHARGE_ACCOUNT:  # the merged request: the account alone
            return (
                (("key", "", endpoint, ""), UNLIMITED),
                (
                    account_id,
                    self._model_limit(
                        account_id, self.config.account_limit(account, endpoint, model)
                    ),
                ),
            )
        return (
            self._key_scope(key, endpoint, model),
            # The account's ceiling per model: one model's 429 or pace leaves the others be.
            (
                account_id,
                self._model_limit(account_id, self.config.account_limit(account, endpoint, model)),
            ),
        )

    def _key_scope(self, key: str, endpoint: str, model: str) -> tuple[ScopeId, Limit]:
        """The key's scope for a call: its profile's row for the model when it names one
        (a budget of its own, charged instead of the endpoint's), else the endpoint's.
        A key's calls to one model always land in the same scope, so the fair queue of
        each model's account scope still sees one queue per key."""
        budget = self.config.key_model_limit(key, endpoint, model)
        if budget is not None:
            return ("key", key, endpoint, model), budget
        return ("key", key, endpoint, ""), self.config.key_limit(key, endpoint)

    def _model_limit(self, scope_id: ScopeId, profile: Limit) -> Limit:
        """A model's scope on an account: the profile's row, paced at what Together
        allows that model (files and jobs, with no model, take the row as it is)."""
        if not scope_id[3] or profile.per_minute >= UNLIMITED.per_minute:
            return profile
        ceiling = self.ceilings.get(scope_id)
        if ceiling is None:
            ceiling = self.ceilings[scope_id] = Ceiling.start(profile)
            restored = self._restored.pop(scope_id, None)
            if restored is not None:  # a previous limiter learned it: start there
                ceiling.restore(restored, margin=self.margin)
                self.ceiling_changed_at[scope_id] = restored.updated_at
        elif ceiling.cap != profile:  # the profile changed: new cap, pace within it
            ceiling.cap = profile
            ceiling.pace = min(ceiling.pace, ceiling.ceiling(self.margin))
        return ceiling.limit()

    def _learn(self, scope_id: ScopeId, message: events.UpstreamReportMessage, now: float) -> None:
        """Together's headers and 429s move that model's pace (never another's)."""
        ceiling = self.ceilings.get(scope_id)
        if ceiling is None or not self.learn:
            return  # no call of ours made it, or learning is off: nothing to pace
        changed = False
        if message["headers"]:
            changed = ceiling.observe(
                message["headers"], unit_seconds=self.unit_seconds, margin=self.margin
            )
        if message["pause"] > 0:
            ceiling.refused(now, error_type=message.get("error_type", ""))
            changed = True
        if changed:
            self.engine.scope(scope_id, ceiling.limit(), now)
            self._changed(scope_id)

    def _ramp(self, now: float) -> None:
        """Models whose callers wait for more than their pace, and that Together has not
        refused for a while, step up (limiter/authority/ceilings.py)."""
        waiting = {ticket.account.id for ticket in self.engine.tickets.values()}
        for scope_id, ceiling in self.ceilings.items():
            if ceiling.ramp(now, demand=scope_id in waiting, margin=self.margin):
                self.engine.scope(scope_id, ceiling.limit(), now)
                self._changed(scope_id)
                self._dirty = True

    # --- messages ---------------------------------------------------------------------
    async def _still_queued(self, message: events.AcquireMessage | events.ReacquireMessage) -> bool:
        """A ticket asked again while it is queued here (its web process's reply channel
        failed, so an answer may have been lost: limiter/protocol/client.py): say "queued" again,
        and nothing more (it is neither charged nor queued twice)."""
        again = self.engine.still_queued(message["ticket"], time.monotonic())
        if again is None:
            return False
        try:
            await self.channel_layer.send(message["reply"], self._message(again))
        except Exception as exc:  # the channel layer failing again: it will ask again
            logger.warning("could not answer a ticket asked again: %s", exc)
        return True

    async def limiter_acquire(self, message: events.AcquireMessage) -> None:
        if await self._still_queued(message):
            return
        # No staleness check on the asker's clock: hosts' clocks differ. An asker that
        # gave up sent a CANCEL after this ticket (same channel, in order), and a grant
        # that finds nobody waiting is handed back by its web process.
        key_scope, account_scope = await self._scopes(message)
        if not _ticket_units_valid(message):
            # Refused alone, before a budget or the engine does arithmetic with it
            # (float(10**400) raised here, and the caller waited out its timeout).
            await self._refuse_now(
                message, key_scope, INVALID_UNITS, "key", 0.001, MSG_INVALID_UNITS
            )
            return
        # A merged embeddings request (CHARGE_ACCOUNT) is no one's call: each of its
        # callers was checked, and reserved, on its own ticket.
        # Files and jobs use no tokens: a job's estimate is held apart (limiter_job_budget).
        if (
            self.budgets.states
            and message.get("charge") != events.CHARGE_ACCOUNT
            and message["endpoint"] not in NOT_BUDGETED
        ):
            wall = datetime.now(UTC)
            self._announce(self.budgets.expire(wall))
            exceeded = self.budgets.admit(
                message["ticket"],
                message["key"],
                message.get("model", ""),
                float(message["tokens"] or 0.0),
                float(message.get("cost") or 0.0),
                wall,
            )
            if exceeded is not None:
                await self._refuse_now(
                    message,
                    key_scope,
                    BUDGET_EXCEEDED,
                    "key" if exceeded.rule.key_id else "team",
                    exceeded.retry_after,
                    exceeded.message(),
                )
                return
        now = time.monotonic()
        decisions = self.engine.acquire(
            message["ticket"],
            key_scope,
            account_scope,
            message["tokens"],
            now,
            reply_to=message["reply"],
            request_id=message["request_id"],
            **_ticket_options(message),
        )
        await self._answer(decisions, now)

    async def limiter_reacquire(self, message: events.ReacquireMessage) -> None:
        if await self._still_queued(message):
            return
        key_scope, account_scope = await self._scopes(message)
        now = time.monotonic()
        decisions = self.engine.reacquire(
            message["lease"],
            message["ticket"],
            key_scope,
            account_scope,
            message["tokens"],
            now,  # the refused call used no tokens: its reservation is settled as 0
            reply_to=message["reply"],
            request_id=message["request_id"],
            **_ticket_options(message),
        )
        await self._answer(decisions, now)

    async def limiter_extend(self, message: events.ExtendMessage) -> None:
        now = time.monotonic()
        if self.engine.extend(message["ticket"], float(message["max_wait"]), now):
            self._schedule(now)  # its deadline moved: the timer may fire later

    async def _refuse_now(
        self,
        message: events.AcquireMessage,
        key_scope: tuple[Any, Any],
        reason: str,
        scope: str,
        retry_after: float,
        text: str,
    ) -> None:
        """Refuse before the engine charges any scope: a budget is used up, or the
        ticket's units are out of range."""
        now = time.monotonic()
        quota = self.engine.quota(self.engine.scope(key_scope[0], key_scope[1], now), now)
        refusal: DecisionMessage = {
            "type": events.DECISION,
            "ticket": message["ticket"],
            "kind": "refuse",
            "lease": "",
            "reason": reason,
            "scope": scope,
            "retry_after": max(retry_after, 0.001),
            "waited": 0.0,
            "limit": quota.limit_per_minute,
            "remaining": quota.remaining,
            "reset": quota.reset_after,
            "max_wait": 0.0,
            "at": time.monotonic(),
            "limiter": self.instance,
            "message": text,
        }
        self.stats.decisions += 1
        try:
            await self.channel_layer.send(message["reply"], dict(refusal))
        except Exception:
            logger.exception("could not answer a %s refusal", reason)

    async def limiter_usage(self, message: events.UsageMessage) -> None:
        """A budgeted call ended: its reservation is settled with what it used (a job's
        usage, naming none, is charged as it is); announce thresholds it crossed."""
        tokens, cost = message.get("tokens") or 0.0, message.get("cost") or 0.0
        if not (units_valid(tokens) and _cost_valid(cost)):
            # Out of range: settled at 0, so the reservation goes and the book stays finite.
            logger.error("usage report out of range for key %s: settled at 0", message["key"])
            tokens = cost = 0.0
        self._announce(
            self.budgets.settle(
                message.get("reservation", ""),
                message["key"],
                message.get("model", ""),
                float(tokens),
                float(cost),
                datetime.now(UTC),
            )
        )

    async def limiter_job_budget(self, message: events.JobBudgetMessage) -> None:
        """A job created or starting: hold its estimate against its budgets if it fits
        (BudgetBook.hold_jobs), and say so to the asker."""
        if message.get("version", 0) > self.config.version:
            await self.reload()  # a budget or key newer than what this limiter holds
        wall = datetime.now(UTC)
        self._announce(self.budgets.expire(wall))
        holds = [
            JobHold(
                str(hold["job"]),
                str(hold.get("model") or ""),
                float(hold.get("tokens") or 0.0),
                float(hold.get("cost") or 0.0),
            )
            for hold in message["holds"]
        ]
        refused = self.budgets.hold_jobs(str(message["key"]), holds, wall)
        answer: events.JobBudgetAnswer = {
            "type": events.JOB_BUDGET_ANSWER,
            "ticket": message["ticket"],
            "held": refused is None,
        }
        if refused is not None:
            answer["message"] = refused.message(message["job"], message["action"])
            answer["over_limit"] = refused.over_limit
            answer["retry_after"] = max(refused.exceeded.retry_after, 0.001)
        try:
            await self.channel_layer.send(message["reply"], dict(answer))
        except Exception:
            logger.exception("could not answer a job's budget check")

    def _announce(self, crossings: list[Crossing]) -> None:
        """Thresholds crossed: recorded and alerted off the event loop (database writes)."""
        if crossings:
            from asgiref.sync import sync_to_async

            for crossing in crossings:
                asyncio.ensure_future(
                    sync_to_async(_announce_crossing, thread_sensitive=False)(crossing)
                )

    async def limiter_renew(self, message: events.RenewMessage) -> None:
        if not self.engine.renew(message["lease"], time.monotonic()):
            logger.warning(
                "lease %s renewed after it expired: its slot was already free", message["lease"]
            )

    async def limiter_release(self, message: events.ReleaseMessage) -> None:
        now = time.monotonic()
        unused = bool(message.get("unused"))
        await self._answer(
            self.engine.release(message["lease"], message.get("tokens_used"), now, unused=unused),
            now,
        )

    async def limiter_cancel(self, message: dict[str, Any]) -> None:
        # Its asker gave up before the grant: whatever grant comes is handed back unused.
        self.budgets.drop(message["ticket"])
        now = time.monotonic()
        await self._answer(self.engine.cancel(message["ticket"], now), now)

    async def limiter_upstream(self, message: events.UpstreamReportMessage) -> None:
        now = time.monotonic()
        scope_id = ("account", message["account"], message["endpoint"], message.get("model", ""))
        if message["headers"]:
            seen = {**message["headers"], "at": f"{time.time():.3f}"}
            self.stats.upstream_headers[message["account"]][message["endpoint"]] = seen
            if scope_id[3]:
                self.stats.model_headers[scope_id] = seen
        if message.get("unavailable"):  # Together's capacity: counted, no pace changes
            self.stats.unavailable[scope_id].add(now, message["unavailable"])
        self._learn(scope_id, message, now)
        if message["pause"] > 0:
            limit = self._model_limit(
                scope_id,
                self.config.account_limit(message["account"], message["endpoint"], scope_id[3]),
            )
            self.engine.pause((scope_id, limit), message["pause"], now)
            logger.warning(
                "upstream 429: pausing account %s %s for %.2fs",
                message["account"],
                message["endpoint"],
                message["pause"],
            )
        if message.get("refused"):
            self.stats.record_upstream_refusal(scope_id, now, time.time())
        self._dirty = True
        await self._answer(self.engine.poll(now), now)

    async def limiter_ceiling_reset(self, message: events.CeilingResetMessage) -> None:
        """Staff reset a model's learned ceiling: forget it (here and in the database) and
        pace the model at its profile's row again, until Together's next answer."""
        from asgiref.sync import sync_to_async

        from limiter.authority.learned import learned_forget

        account, endpoint, model = message["account"], message["endpoint"], message["model"]
        scope_id: ScopeId = ("account", account, endpoint, model)
        self.ceilings.pop(scope_id, None)
        self._restored.pop(scope_id, None)
        self._unsaved.discard(scope_id)
        self.ceiling_changed_at.pop(scope_id, None)
        now = time.monotonic()
        # A fresh ceiling at the profile's row (shown in the live view as "profile").
        limit = self._model_limit(scope_id, self.config.account_limit(account, endpoint, model))
        if scope_id in self.engine.scopes:
            self.engine.scope(scope_id, limit, now)
        try:
            await sync_to_async(learned_forget, thread_sensitive=False)(
                account=account, endpoint=endpoint, model=model
            )
        except Exception:
            logger.exception("could not delete the learned ceiling of %s", model)
        logger.info("learned ceiling of %s on account %s %s reset", model, account, endpoint)
        self._dirty = True
        if message.get("reply"):
            await self.channel_layer.send(
                message["reply"], {"type": events.CEILING_RESET_DONE, "model": model}
            )
        await self._answer(self.engine.poll(now), now)

    async def limiter_coalesced(self, message: events.CoalescedMessage) -> None:
        self.coalesced.record(message, time.monotonic())
        self._dirty = True
        self._ensure_publisher()

    async def limiter_adopt(self, message: events.AdoptMessage) -> None:
        """A web process still holds this lease from before we started: count it."""
        key_scope, account_scope = await self._scopes(message)
        now = time.monotonic()
        self.engine.adopt(
            message["lease"],
            key_scope,
            account_scope,
            message["tokens"],
            now,
        )
        self._dirty = True

    async def limiter_snapshot(self, message: dict[str, Any]) -> None:
        await self.channel_layer.send(message["reply"], self.snapshot())

    async def limiter_ping(self, message: dict[str, Any]) -> None:
        await self.channel_layer.send(
            message["reply"],
            {
                "type": events.PONG,
                "ticket": message["ticket"],
                "leases": len(self.engine.leases),
                "queued": len(self.engine.tickets),
                "scopes": len(self.engine.scopes),
            },
        )

    # --- answering --------------------------------------------------------------------
    async def _answer(self, decisions: list[Decision], now: float) -> None:
        wall = time.time()
        sends = []
        for decision in decisions:
            self.stats.record(decision, now, wall)
            if decision.kind == "refuse":  # queue full or timed out: it reserves nothing
                self.budgets.drop(decision.ticket.id)
            if decision.ticket.reply_to:
                sends.append(
                    self.channel_layer.send(decision.ticket.reply_to, self._message(decision))
                )
        # Concurrently: over Redis each send is a round trip, and a grant that waits for
        # the one before it reaches its caller late (and then upstream in a clump).
        if sends:
            await asyncio.gather(*sends, return_exceptions=True)
        if decisions:
            self._dirty = True
        self._schedule(now)
        self._ensure_publisher()

    def _message(self, decision: Decision) -> DecisionMessage:
        return {
            "type": events.DECISION,
            "ticket": decision.ticket.id,
            "kind": decision.kind,
            "lease": decision.lease,
            "reason": decision.reason,
            "scope": decision.scope,
            "retry_after": decision.retry_after,
            "waited": decision.waited,
            "limit": decision.quota.limit_per_minute,
            "remaining": decision.quota.remaining,
            "reset": decision.quota.reset_after,
            "max_wait": decision.ticket.max_wait,
            # This host's monotonic clock: the web process learns the offset (client.Lateness),
            # per limiter instance (a Redis restart keeps the instance, a new limiter not).
            "at": time.monotonic(),
            "limiter": self.instance,
            "budgeted": decision.kind == "grant" and self.budgets.covers(decision.ticket.key.id[1]),
            # The reservation its usage report settles (its ticket id), when it holds one.
            "reservation": decision.ticket.id
            if decision.kind == "grant" and self.budgets.reserved(decision.ticket.id)
            else "",
        }

    def _schedule(self, now: float) -> None:
        """Arm the timer for the next moment a queued ticket may go or time out."""
        wake = self.engine.next_wakeup(now)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if wake is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + max(0.0, wake - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        now = time.monotonic()
        await self._answer(self.engine.poll(now), now)

    # --- the live view ----------------------------------------------------------------
    def _ensure_publisher(self) -> None:
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.ensure_future(self._publish_forever())

    async def _publish_forever(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL)
            now = time.monotonic()
            self._ramp(now)
            if self._dirty or now - self._last_snapshot >= HEARTBEAT_INTERVAL:
                self._dirty = False
                self._last_snapshot = now
                try:
                    await self.channel_layer.group_send(events.LIVE_GROUP, self.snapshot())
                except Exception:
                    logger.exception("could not publish a live snapshot")
                forgotten = self.engine.forget_idle(now)
                if forgotten:
                    self.stats.forget(forgotten)
                    self._dirty = True

    def snapshot(self) -> events.LiveSnapshot:
        now = time.monotonic()
        queued_by_scope: dict[ScopeId, list[float]] = defaultdict(list)
        for ticket in self.engine.tickets.values():
            queued_by_scope[ticket.key.id].append(ticket.arrived)
            queued_by_scope[ticket.account.id].append(ticket.arrived)
        return {
            "type": events.LIVE_SNAPSHOT,
            "at": time.time(),
            "limiter": {
                "started_at": self.started_at,
                "decisions": self.stats.decisions,
                "tickets_queued": len(self.engine.tickets),
                "leases": len(self.engine.leases),
                "history_bucket_seconds": HISTORY_BUCKET_SECONDS,
            },
            "scopes": [
                self._scope_snapshot(s, queued_by_scope.get(s.id, []), now)
                for s in self.engine.scopes.values()
                if s.id[1]  # not the unlimited halves of merged embeddings calls (CHARGE_*)
            ],
            "upstream_headers": {k: dict(v) for k, v in self.stats.upstream_headers.items()},
            "models": [
                self._model_snapshot(scope_id, ceiling, now)
                for scope_id, ceiling in sorted(self.ceilings.items())
            ],
            "history": {
                endpoint: [list(row) for row in rows]
                for endpoint, rows in self.stats.history.items()
            },
            "coalescing": self.coalesced.snapshot(now),
        }

    def _model_snapshot(
        self, scope_id: ScopeId, ceiling: Ceiling, now: float
    ) -> events.ModelCeilingSnapshot:
        _, account, endpoint, model = scope_id
        refused = self.stats.upstream_refused.get(scope_id)
        unavailable = self.stats.unavailable.get(scope_id)
        return {
            "account": account,
            "endpoint": endpoint,
            "model": model,
            "cap_per_minute": ceiling.cap_per_minute,
            "learned_per_minute": ceiling.learned,
            "learned_tokens_per_minute": ceiling.learned_tokens,
            "pace_per_minute": round(ceiling.pace, 3),
            "token_pace_per_minute": ceiling.token_pace,
            "source": ceiling.source,
            "updated_at": self.ceiling_changed_at.get(scope_id),
            "last_headers": dict(self.stats.model_headers.get(scope_id, {})),
            "upstream_429_last_minute": refused.last_minute(now) if refused else 0,
            "upstream_503_last_minute": unavailable.last_minute(now) if unavailable else 0,
        }

    def _scope_snapshot(self, scope: Scope, arrivals: list[float], now: float) -> ScopeSnapshot:
        kind, object_id, endpoint, model = scope.id
        refused = self.stats.refused.get(scope.id)
        return {
            "kind": "key" if kind == "key" else "account",
            "id": object_id,
            "endpoint": endpoint,
            "model": model,
            "limit_per_minute": scope.limit.per_minute,
            "burst": scope.limit.burst,
            "in_use": round(scope.requests.debt(now), 3),
            "admitted_last_minute": admitted.last_minute(now)
            if (admitted := self.stats.admitted.get(scope.id))
            else 0,
            "queued": len(arrivals),
            "longest_wait": round(now - min(arrivals), 3) if arrivals else 0.0,
            "leases": len(scope.leases),
            "max_concurrent": scope.limit.max_concurrent,
            "tokens_per_minute": scope.limit.tokens_per_minute,
            "tokens_in_use": round(scope.tokens.debt(now), 1) if scope.tokens else None,
            "paused_for": round(max(0.0, scope.paused_until - now), 3),
            "refused_last_minute": {
                source: counts.last_minute(now) for source, counts in (refused or {}).items()
            }
            or {"gateway": 0, "upstream": 0},
        }


def _cost_valid(cost: object) -> bool:
    return isinstance(cost, int | float) and 0 <= cost <= MAX_COST


def _ticket_units_valid(message: events.AcquireMessage) -> bool:
    """Whether a ticket's tokens and cost are numbers a budget and the engine can hold
    (see engine.units_valid). The gateway bounds what callers send; this is the wall."""
    return units_valid(message["tokens"] or 0.0) and _cost_valid(message.get("cost") or 0.0)


def _ticket_options(message: events.AcquireMessage) -> dict[str, Any]:
    """A ticket's extras for the engine: a merged embeddings ticket is refundable
    (CHARGE_KEY and CHARGE_ACCOUNT alike); a ticket that brings its own max wait (a merged
    request, or one asked again of a restarted limiter with what is left of its wait)
    queues for that long instead of its key's."""
    options: dict[str, Any] = {}
    if message.get("charge"):
        options["refundable"] = True
    max_wait = message.get("max_wait")
    if max_wait is not None:
        options["max_wait"] = float(max_wait)
    return options


def _budgets_load(
    book: BudgetBook,
) -> tuple[list[Any], dict[str, int], dict[int, float], datetime, Any]:
    """The budgets, the spend so far of those the book does not track yet, and (once)
    the jobs' holds (off the event loop: database reads)."""
    from limiter.jobs.selectors import job_budget_holds
    from limiter.usage.selectors import budget_rules, budget_seed
    from limiter.usage.services import amount_unreadable

    now = datetime.now(UTC)
    rules, key_teams, unreadable = budget_rules()
    for budget in unreadable:  # left out of the rules: the others stay enforced
        amount_unreadable(kind="budget", row_id=budget.pk, team=budget.team)
    seed = budget_seed(book.untracked(rules, now), now, book.zone)
    # The jobs' holds, once: a limiter that starts takes them from the jobs stored with one.
    holds = None if book.jobs_restored else job_budget_holds()
    return rules, key_teams, seed, now, holds


def _announce_crossing(crossing: Any) -> None:
    try:
        threshold_crossed(crossing.rule, crossing.level, crossing.spent, crossing.period_start)
    except Exception:
        logger.exception("could not record budget %d's crossing", crossing.rule.id)


async def run_limiter(
    layer: BaseChannelLayer,
    stop: asyncio.Event | None = None,
    *,
    unknown_before_wall: float | None = None,
    started: Callable[[LimiterConsumer], None] | None = None,
) -> None:
    """Serve the limiter channel until `stop` is set, surviving channel-layer errors
    (a Redis restart must not end the authority, or its state)."""
    from django.conf import settings

    unknown_before = adopt_until = None
    if unknown_before_wall is not None:
        unknown_before = time.monotonic() - (time.time() - unknown_before_wall)
        adopt_until = time.monotonic() + settings.SLUICE_ADOPT_WINDOW
    consumer = LimiterConsumer(unknown_before=unknown_before, adopt_until=adopt_until)
    consumer.channel_layer = layer
    consumer.channel_name = events.LIMITER_CHANNEL
    if started is not None:
        started(consumer)  # runworker's heartbeat reads the engine's fullness bound
    stop = stop or asyncio.Event()
    await consumer.reload()  # the limits, before the first ticket (a ticket would reload anyway)
    await consumer.learned_restore()  # what the previous limiter learned of each model
    consumer.start_persisting()
    global running
    running = consumer
    logger.info("limiter serving channel %r", events.LIMITER_CHANNEL)
    await _announce(layer, consumer.instance)
    joined = time.monotonic()
    try:
        while not stop.is_set():
            if time.monotonic() - joined > CONFIG_GROUP_REFRESH:
                joined = time.monotonic()
                await _announce(layer, consumer.instance, join_only=True)
            try:
                message = await layer.receive(events.LIMITER_CHANNEL)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.error("limiter channel unavailable (%s); retrying", exc)
                await asyncio.sleep(0.5)
                # A restarted Redis lost the web processes' state.
                await _announce(layer, consumer.instance)
                continue
            await consumer.dispatch(message)
    finally:
        consumer.close()
        running = None
        await consumer.learned_persist()  # what changed since the last write


# The limiter serving in this process, if any: `serve`'s drain saves its learned ceilings.
running: LimiterConsumer | None = None


async def learned_persist() -> None:
    """Save the learned ceilings of the limiter running in this process (on shutdown)."""
    if running is not None:
        await running.learned_persist()


async def _announce(layer: BaseChannelLayer, instance: str, *, join_only: bool = False) -> None:
    """Join the configuration broadcast (the limiter reloads its limits on each change),
    and tell web processes a (new) limiter is serving, so they hand back their leases and
    ask again for the tickets a limiter before it held (`instance` tells them apart)."""
    try:
        await layer.group_add(events.CONFIG_GROUP, events.LIMITER_CHANNEL)
        if not join_only:
            await layer.group_send(
                events.CONFIG_GROUP, {"type": events.LIMITER_STARTED, "limiter": instance}
            )
    except Exception as exc:
        logger.warning("could not announce the limiter start: %s", exc)
