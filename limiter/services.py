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
    LimitProfile,
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
