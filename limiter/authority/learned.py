"""Learned ceilings across restarts: the limiter's per-model learned state in the database.

The limiter learns each model's ceiling from Together's answers
(limiter/authority/ceilings.py, kept by limiter/authority/learning.py). It writes what
changed here in batches, every few seconds and on shutdown, from a task of its own
through a thread (never on its decision path), and reads it back when it starts, so a
restarted limiter paces each model where the last one left off instead of at the
profile's starting point. In scale-out every process shares one PostgreSQL database, so
the database is all a new limiter needs: there is no copy in Redis. Rows older than
`max_age` are ignored on load (Together's dynamic limit follows recent traffic, so an old
reading says little) and deleted then.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.db import close_old_connections

from limiter.authority.ceilings import Learned
from limiter.authority.engine import ScopeId
from limiter.models import LearnedCeiling, UpstreamAccount

FIELDS = (
    "learned_per_minute",
    "learned_tokens_per_minute",
    "pace_per_minute",
    "token_pace_per_minute",
    "source",
    "updated_at",
)


def _scope_id(row: LearnedCeiling) -> ScopeId:
    return ("account", str(row.account_id), row.endpoint, row.model)


def learned_load(*, max_age: float) -> dict[ScopeId, Learned]:
    """Every model's learned state written within `max_age` seconds; older rows go."""
    close_old_connections()
    cutoff = datetime.now(UTC) - timedelta(seconds=max_age)
    LearnedCeiling.objects.filter(updated_at__lt=cutoff).delete()
    return {
        _scope_id(row): Learned(
            learned=row.learned_per_minute,
            learned_tokens=row.learned_tokens_per_minute,
            pace=row.pace_per_minute,
            token_pace=row.token_pace_per_minute,
            source=row.source,
            updated_at=row.updated_at.timestamp(),
        )
        for row in LearnedCeiling.objects.filter(updated_at__gte=cutoff)
    }


def learned_save(states: dict[ScopeId, Learned]) -> int:
    """Upsert each model's state in one statement; returns the rows written. Accounts
    deleted since are skipped (their rows went with them)."""
    close_old_connections()
    accounts = {
        str(pk)
        for pk in UpstreamAccount.objects.filter(
            pk__in=[int(scope_id[1]) for scope_id in states if scope_id[1].isdigit()]
        ).values_list("pk", flat=True)
    }
    rows = [
        LearnedCeiling(
            account_id=int(account),
            endpoint=endpoint,
            model=model,
            learned_per_minute=state.learned,
            learned_tokens_per_minute=state.learned_tokens,
            pace_per_minute=state.pace,
            token_pace_per_minute=state.token_pace,
            source=state.source,
            updated_at=datetime.fromtimestamp(state.updated_at, UTC),
        )
        for (_, account, endpoint, model), state in states.items()
        if account in accounts
    ]
    LearnedCeiling.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["account", "endpoint", "model"],
        update_fields=list(FIELDS),
    )
    return len(rows)


def learned_delete(*, account: str, endpoint: str, model: str) -> int:
    """Forget one model's learned state (a reset): its next limiter starts from the profile.
    Safe inside a request's transaction (the ops API's reset)."""
    if not account.isdigit():
        return 0
    deleted, _ = LearnedCeiling.objects.filter(
        account_id=int(account), endpoint=endpoint, model=model
    ).delete()
    return deleted


def learned_forget(*, account: str, endpoint: str, model: str) -> int:
    """`learned_delete` from the limiter's long-lived process, whose connection may be stale."""
    close_old_connections()
    return learned_delete(account=account, endpoint=endpoint, model=model)
