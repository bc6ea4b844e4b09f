"""The limits the limiter applies: its own copy, loaded from the database.

The limiter owns the configuration. Web processes send ids (the key, its upstream
account, the endpoint) and the configuration version their key cache saw, never
limits: a web process with a stale cache cannot flip a limit back. The limiter
reloads on the configuration broadcast (events.CONFIG_CHANGED), and before deciding
on a ticket whose version is newer than its own (a change it has not heard of yet).

**A missing row means no limit at that level.** A key whose profile has no row for
an endpoint is held only by its upstream account's ceiling there; an account whose
profile has no row is held only by its keys' limits; with neither, the call is not
limited (the dashboard's profiles are created with a row for every endpoint). Such a
level is the `UNLIMITED` scope below, with the default queue settings of a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import close_old_connections

from limiter.engine import Limit
from limiter.models import ApiKey, ConfigVersion, EndpointLimit, UpstreamAccount

# A rate no caller reaches, and EndpointLimit's default queue (100 deep, 30 s).
UNLIMITED = Limit(per_minute=1e12, burst=10**12, queue_depth=100, max_wait=30.0)


def limit_of(row: EndpointLimit) -> Limit:
    return Limit(
        per_minute=float(row.effective_per_minute),
        burst=row.burst,
        tokens_per_minute=float(row.tokens_per_minute) if row.tokens_per_minute else None,
        max_concurrent=row.max_concurrent,
        queue_depth=row.queue_depth,
        max_wait=row.max_queue_wait_seconds,
    )


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    version: int = 0
    key_profiles: dict[str, int] = field(default_factory=dict)  # ApiKey pk -> its profile's pk
    account_profiles: dict[str, int] = field(default_factory=dict)  # UpstreamAccount pk -> pk
    limits: dict[tuple[int, str], Limit] = field(default_factory=dict)  # (profile, endpoint)

    def knows(self, key_id: str, account_id: str) -> bool:
        return key_id in self.key_profiles and account_id in self.account_profiles

    def key_limit(self, key_id: str, endpoint: str) -> Limit:
        return self._limit(self.key_profiles.get(key_id), endpoint)

    def account_limit(self, account_id: str, endpoint: str) -> Limit:
        return self._limit(self.account_profiles.get(account_id), endpoint)

    def _limit(self, profile_id: int | None, endpoint: str) -> Limit:
        if profile_id is None:
            return UNLIMITED
        return self.limits.get((profile_id, endpoint), UNLIMITED)


def config_load() -> LimiterConfig:
    """Every usable key's profile (its own, else its team's), every account's, and every
    profile's limits: a few queries, run off the limiter's event loop."""
    close_old_connections()  # a long-lived process outlives database connections
    version = ConfigVersion.current()  # read first: a change during the load reloads again
    keys = ApiKey.objects.usable().values_list("pk", "profile_id", "team__profile_id")
    return LimiterConfig(
        version=version,
        key_profiles={str(pk): own or team for pk, own, team in keys},
        account_profiles={
            str(pk): profile
            for pk, profile in UpstreamAccount.objects.values_list("pk", "profile_id")
        },
        limits={
            (row.profile_id, row.endpoint): limit_of(row) for row in EndpointLimit.objects.all()
        },
    )
