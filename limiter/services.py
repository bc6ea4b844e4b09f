"""Writes that span models or have side effects: issuing and revoking keys, teams.

Every change here is followed (through `limiter/signals.py`) by a broadcast that makes
web processes drop cached keys and limits, so it takes effect on the next request.

What other apps hold under a key hears of its rotation through `key_rotated`, sent in
the rotation's transaction (the jobs app moves the key's queued jobs to the new key).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from limiter.models import (
    KEY_PREFIX,
    VISIBLE_PREFIX_LENGTH,
    ApiKey,
    DedicatedModel,
    LimitProfile,
    ManagedObject,
    Team,
    UpstreamAccount,
)

DEFAULT_PROFILE = "default"

# Sent with `old` and `new` (ApiKey) inside the rotation's transaction: a receiver's
# writes commit or roll back with it.
key_rotated = Signal()


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    secret: str  # shown once, never stored


def profile_default() -> LimitProfile:
    return LimitProfile.objects.get(name=DEFAULT_PROFILE)


def upstream_default() -> UpstreamAccount:
    return UpstreamAccount.objects.get(is_default=True)


def team_get_or_create(*, name: str, profile: LimitProfile | None = None) -> tuple[Team, bool]:
    return Team.objects.get_or_create(
        name=name,
        defaults={"profile": profile or profile_default(), "upstream": upstream_default()},
    )


def key_issue(
    *,
    team: Team,
    name: str = "",
    profile: LimitProfile | None = None,
    expires_at: datetime | None = None,
) -> IssuedKey:
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        team=team,
        name=name,
        prefix=secret[:VISIBLE_PREFIX_LENGTH],
        secret_hash=ApiKey.hash_secret(secret),
        profile=profile,
        expires_at=expires_at,
    )
    return IssuedKey(key=key, secret=secret)


def key_revoke(*, key: ApiKey) -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


@transaction.atomic
def key_rotate(*, key: ApiKey) -> IssuedKey:
    """Issue a replacement with the same team, name, profile and expiry; revoke the old key."""
    issued = key_issue(team=key.team, name=key.name, profile=key.profile, expires_at=key.expires_at)
    key_rotated.send(sender=ApiKey, old=key, new=issued.key)
    key_revoke(key=key)
    return issued


def managed_object_record(*, team_id: int, kind: str, object_id: str) -> None:
    """`team_id` created `object_id` (an evaluation, an organisation-level object) through
    Sluice: it is that team's from now on. The first owner recorded keeps it."""
    ManagedObject.objects.get_or_create(
        kind=kind, object_id=object_id[:200], defaults={"team_id": team_id}
    )


def managed_objects_expire(*, kind: str, before: datetime) -> int:
    """Forget who made the objects of `kind` recorded before `before`: objects Together ends
    by itself (a code interpreter session), long gone upstream. Returns how many."""
    deleted, _ = ManagedObject.objects.filter(kind=kind, created_at__lt=before).delete()
    return deleted


def managed_object_forget(*, team_id: int, kind: str, object_id: str) -> None:
    """The team deleted its object upstream: nobody owns the id any more."""
    ManagedObject.objects.filter(team_id=team_id, kind=kind, object_id=object_id).delete()


@transaction.atomic
def dedicated_sync(*, account: UpstreamAccount, found: dict[str, str]) -> bool:
    """Together's endpoint list of `account` says these models (model -> endpoint name) are
    served on dedicated endpoints: add the new rows, drop the polled ones no longer listed
    (ops' rows stay). Writes only what changed (each write is a configuration change);
    returns whether anything did."""
    rows = {row.model: row for row in DedicatedModel.objects.filter(account=account)}
    stale = [row.pk for model, row in rows.items() if not row.by_hand and model not in found]
    changed = bool(stale)
    if stale:
        DedicatedModel.objects.filter(pk__in=stale).delete()
    for model, name in found.items():
        if model not in rows:
            DedicatedModel.objects.create(account=account, model=model[:200], endpoint_name=name)
            changed = True
    return changed


def dedicated_mark(*, account: UpstreamAccount, model: str) -> DedicatedModel:
    """Ops say `model` is served on one of `account`'s dedicated endpoints."""
    row, created = DedicatedModel.objects.get_or_create(
        account=account, model=model, defaults={"by_hand": True}
    )
    if not created and not row.by_hand:
        row.by_hand = True  # ops' from now on: the poll no longer removes it
        row.save(update_fields=["by_hand"])
    return row


def dedicated_unmark(*, row: DedicatedModel) -> None:
    """Ops' mark removed (a polled row found again comes back at the next poll)."""
    row.delete()
