"""The limiter's learned ceilings: what Together allows each model, kept while it runs and
across restarts.

Each model's account scope is paced at its `Ceiling` (limiter/authority/ceilings.py): it
starts at the profile's row (or where a previous limiter left off, read back from the
database by `restore`), moves with Together's headers and 429s (`learn`), and steps up
while callers wait and Together has not refused for a while (`ramp`). What changed is
written to the database every few seconds by a task of its own (`start_persisting`), and
once more on shutdown (`persist`), never on the decision path
(limiter/authority/learned.py). The caller applies each new `Limit` to the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from asgiref.sync import sync_to_async

from limiter.authority.ceilings import Ceiling, Learned
from limiter.authority.config import UNLIMITED
from limiter.authority.engine import Limit, ScopeId
from limiter.authority.learned import learned_forget, learned_load, learned_save
from limiter.protocol import events
from limiter.protocol.client import spawn

logger = logging.getLogger(__name__)

# Learned ceilings that changed are written to the database this often.
SAVE_INTERVAL = 2.0


class LearnedCeilings:
    """One `Ceiling` per model's account scope, and what of them is not saved yet."""

    def __init__(
        self,
        *,
        margin: float,
        unit_seconds: float,
        learn: bool = True,
        max_age: float = 3600.0,
    ) -> None:
        self.margin = margin  # paced this far under what Together allows
        self.unit_seconds = unit_seconds  # what Together's header numbers are per
        self.learning = learn  # off: every model keeps its profile's row
        self.max_age = max_age  # older saved states are not restored
        self.ceilings: dict[ScopeId, Ceiling] = {}
        self.changed_at: dict[ScopeId, float] = {}  # unix time each last changed
        self._restored: dict[ScopeId, Learned] = {}  # read back, applied when first used
        self._unsaved: set[ScopeId] = set()
        self._persister: asyncio.Task[Any] | None = None

    @classmethod
    def from_settings(cls) -> LearnedCeilings:
        from django.conf import settings

        return cls(
            margin=settings.SLUICE_UPSTREAM_MARGIN,
            unit_seconds=settings.SLUICE_UPSTREAM_LIMIT_UNIT_SECONDS,
            learn=settings.SLUICE_UPSTREAM_LEARN,
            max_age=settings.SLUICE_LEARNED_CEILING_MAX_AGE,
        )

    def limit(self, scope_id: ScopeId, profile: Limit) -> Limit:
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
                self.changed_at[scope_id] = restored.updated_at
        elif ceiling.cap != profile:  # the profile changed: new cap, pace within it
            ceiling.cap = profile
            ceiling.pace = min(ceiling.pace, ceiling.ceiling(self.margin))
        return ceiling.limit()

    def learn(
        self, scope_id: ScopeId, report: events.UpstreamReportMessage, now: float
    ) -> Limit | None:
        """Together's headers and 429s move that model's pace (never another's): its new
        limit, or None when nothing changed."""
        ceiling = self.ceilings.get(scope_id)
        if ceiling is None or not self.learning:
            return None  # no call of ours made it, or learning is off: nothing to pace
        changed = False
        if report["headers"]:
            changed = ceiling.observe(
                report["headers"], unit_seconds=self.unit_seconds, margin=self.margin
            )
        if report["pause"] > 0:
            ceiling.refused(
                now,
                error_type=report.get("error_type", ""),
                margin=self.margin,
                headers=report["headers"],
            )
            changed = True
        if not changed:
            return None
        self._changed(scope_id)
        return ceiling.limit()

    def ramp(self, now: float, waiting: set[ScopeId]) -> list[tuple[ScopeId, Limit]]:
        """Models whose callers wait (`waiting`: their account scopes) for more than their
        pace, and that Together has not refused for a while, step up: their new limits."""
        stepped = []
        for scope_id, ceiling in self.ceilings.items():
            if ceiling.ramp(now, demand=scope_id in waiting, margin=self.margin):
                self._changed(scope_id)
                stepped.append((scope_id, ceiling.limit()))
        return stepped

    def reset(self, scope_id: ScopeId) -> None:
        """Forget a model's ceiling here: its next `limit` starts from the profile."""
        self.ceilings.pop(scope_id, None)
        self._restored.pop(scope_id, None)
        self._unsaved.discard(scope_id)
        self.changed_at.pop(scope_id, None)

    def _changed(self, scope_id: ScopeId) -> None:
        self.changed_at[scope_id] = time.time()
        self._unsaved.add(scope_id)

    async def forget_saved(self, scope_id: ScopeId) -> None:
        """Delete a model's saved state (a reset): the next limiter starts from the profile."""
        _, account, endpoint, model = scope_id
        try:
            await sync_to_async(learned_forget, thread_sensitive=False)(
                account=account, endpoint=endpoint, model=model
            )
        except Exception:
            logger.exception("could not delete the learned ceiling of %s", model)

    async def restore(self) -> int:
        """Read what the previous limiter learned (fresher than the max age); each model's
        ceiling starts from it when its scope is first made. Returns how many."""
        try:
            self._restored = await sync_to_async(learned_load, thread_sensitive=False)(
                max_age=self.max_age
            )
        except Exception:  # the database is down: start from the profiles
            logger.exception("could not load the learned ceilings; starting from the profiles")
            return 0
        logger.info("learned ceilings restored for %d models", len(self._restored))
        return len(self._restored)

    async def persist(self) -> int:
        """Write the ceilings that changed since the last write, in one statement, in a
        thread: decisions go on meanwhile. Returns how many were written."""
        if not self._unsaved:
            return 0
        states = {
            scope_id: self.ceilings[scope_id].learned_state(self.changed_at[scope_id])
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
            self._persister = spawn(self._persist_forever())

    async def _persist_forever(self) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            await self.persist()

    def close(self) -> None:
        if self._persister:
            self._persister.cancel()
