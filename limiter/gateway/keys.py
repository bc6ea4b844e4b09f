"""Team key authentication, cached per process.

The hot path does no database query for a known key: `KeyCache` maps the SHA-256 of a
secret to a `KeyInfo` carrying everything the gateway needs (team, upstream account
and where its calls go, the configuration version it was read at; the limits
themselves are the limiter's, limiter/authority/config.py). The cache is dropped whole
on any configuration change (limiter/protocol/changes.py), so a revoked key fails on the next
request; a TTL bounds staleness should a broadcast ever be missed.
"""

from __future__ import annotations

from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.db import close_old_connections
from django.utils import timezone

from limiter.caching import GenerationCache
from limiter.models import ORG_KINDS, ApiKey, ConfigVersion
from limiter.protocol.changes import register_cache
from limiter.upstream import Target, account_target

CACHE_TTL = 60.0
NEGATIVE_TTL = 5.0
MAX_KNOWN = 100_000  # keys held at once per process
MAX_UNKNOWN = 10_000  # recent bad secrets remembered (the auth throttle slows their senders)
LOAD_ATTEMPTS = 3  # reads of one key, should configuration changes keep interrupting them


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    prefix: str
    secret_hash: str
    team_id: int
    team_name: str
    paused: bool
    expires_at: float | None  # unix time
    account_id: str
    account_name: str
    target: Target  # where its calls go: the account's base URL and upstream secret
    config_version: (
        int  # the configuration version this was read at (see limiter/authority/config.py)
    )
    fallbacks: dict[str, str]
    max_batch_requests: int | None
    # Inputs per merged embeddings request for this key's calls; 0: not merged (its profile
    # turned coalescing off). See limiter/gateway/coalesce.py.
    coalesce_max_inputs: int = 0
    # The organisation-level kinds its profile has a row for: the only ones it may use
    # (limiter/gateway/org.py); every other is refused with a 403 naming the route.
    org_kinds: frozenset[str] = frozenset()

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def _load(secret_hash: str) -> KeyInfo | None:
    close_old_connections()  # this runs outside a request: drop a connection the DB closed
    version = ConfigVersion.current()  # read first: what follows is at least this new
    key = (
        ApiKey.objects.usable()
        .select_related("team__profile", "team__upstream__profile", "profile")
        .filter(secret_hash=secret_hash)
        .first()
    )
    if key is None:
        return None
    profile = key.profile or key.team.profile
    account = key.team.upstream
    # The per-batch cap is applied here (the jobs edge); the limiter applies the rest.
    batches = (
        profile.limits.filter(endpoint="batches", model="").first()
        or account.profile.limits.filter(endpoint="batches", model="").first()
    )
    return KeyInfo(
        key_id=str(key.pk),
        prefix=key.prefix,
        secret_hash=key.secret_hash,
        team_id=key.team_id,
        team_name=key.team.name,
        paused=key.team.paused,
        expires_at=key.expires_at.timestamp() if key.expires_at else None,
        account_id=str(account.pk),
        account_name=account.name,
        target=account_target(account),
        config_version=version,
        fallbacks=dict(profile.model_fallbacks or {}),
        max_batch_requests=batches.max_batch_requests if batches else None,
        coalesce_max_inputs=profile.coalesce_max_inputs if profile.coalesce_embeddings else 0,
        org_kinds=frozenset(
            profile.limits.filter(endpoint__in=ORG_KINDS, model="").values_list(
                "endpoint", flat=True
            )
        ),
    )


class KeyCache:
    def __init__(self) -> None:
        # Bounded: a scan of random secrets can neither grow memory without limit nor keep
        # an entry past its TTL (a missed broadcast heals by then). A read that was running
        # when the cache was cleared may predate the change (a revocation): its answer is
        # not stored (limiter/caching.py).
        self._cache: GenerationCache[str, KeyInfo] = GenerationCache(
            ttl=CACHE_TTL,
            maxsize=MAX_KNOWN,
            absent_ttl=NEGATIVE_TTL,
            absent_maxsize=MAX_UNKNOWN,
        )

    def clear(self) -> None:
        self._cache.clear()

    async def authenticate(self, secret: str) -> KeyInfo | None:
        """The key's info, or None for an unknown, revoked or expired key.

        Every lookup (this cache, then the database) is by the SHA-256 of the presented
        secret, never by the secret: whatever timing a comparison leaks is about a hash
        of the attacker's own input, which tells nothing about any stored key.
        """
        return await self.lookup(ApiKey.hash_secret(secret))

    async def lookup(self, secret_hash: str) -> KeyInfo | None:
        """`authenticate` for a secret already hashed (re-checking a key in use)."""
        info = self._cache.get(secret_hash)
        if info is None:
            if self._cache.absent(secret_hash):
                return None
            info = await self._load_current(secret_hash)
            if info is None:
                return None
        if info.expired(timezone.now().timestamp()):
            return None
        return info

    async def _load_current(self, secret_hash: str) -> KeyInfo | None:
        for _attempt in range(LOAD_ATTEMPTS):
            generation = self._cache.generation
            info = await sync_to_async(_load, thread_sensitive=True)(secret_hash)
            if self._cache.put(secret_hash, info, generation):
                return info
            # The configuration changed while we read: read again, store nothing.
        # Changes kept coming: answer from the last read (a request's pre-send re-check
        # still applies), but keep nothing.
        return info


cache = KeyCache()
register_cache(cache.clear)  # any configuration change: every key is read again
