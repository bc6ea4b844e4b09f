"""Writes that span models or have side effects: issuing and revoking keys, teams.

Every change here is followed (through `limiter/signals.py`) by a broadcast that makes
web processes drop cached keys and limits, so it takes effect on the next request.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from limiter.jobs.models import Job, JobState
from limiter.models import (
    KEY_PREFIX,
    VISIBLE_PREFIX_LENGTH,
    ApiKey,
    LimitProfile,
    Team,
    UpstreamAccount,
)

DEFAULT_PROFILE = "default"


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
    # A rotation is hygiene, not a leak: the old key's queued jobs go on under the new
    # one. (A revoked key's queued jobs never start: limiter.jobs.selectors.key_still_usable.)
    Job.objects.filter(key=key, state=JobState.QUEUED).update(
        key=issued.key, key_prefix=issued.key.prefix
    )
    key_revoke(key=key)
    return issued
