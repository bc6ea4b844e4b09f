"""Step 1 of a call: who is calling.

The bearer is a team key, looked up by its SHA-256 in the process's key cache
(limiter/gateway/keys.py: no database query for a known key). The key is checked first and
the auth-failure throttle after: a valid key is never refused because others behind
the same address (a load balancer, a NAT) guessed badly; an address past
AUTH_FAILURES_PER_MINUTE failures gets 429 for its further failures only.
"""

from __future__ import annotations

import math

from django.conf import settings

from limiter.gateway import errors
from limiter.gateway.errors import ApiError
from limiter.gateway.http import Request
from limiter.gateway.keys import KeyInfo
from limiter.gateway.keys import cache as key_cache
from limiter.gateway.throttle import AuthThrottle

AUTH_FAILURES_PER_MINUTE = 30  # per client address (across processes with REDIS_URL)


class Authenticator:
    def __init__(self) -> None:
        self.throttle = AuthThrottle(AUTH_FAILURES_PER_MINUTE, redis_url=settings.REDIS_URL)

    async def authenticate(self, request: Request) -> KeyInfo:
        """The caller's key, or a 401 (a 429 for an address that keeps failing); a
        paused team's key is refused with 403."""
        authorization = request.headers.get("authorization", "")
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise ApiError(
                401, errors.MSG_NO_KEY, type=errors.AUTHENTICATION, code="missing_api_key"
            )
        info = await key_cache.authenticate(secret.strip())
        if info is None:
            wait = await self.throttle.failed(request.client)
            if wait:
                raise ApiError(
                    429,
                    errors.MSG_TOO_MANY_AUTH_FAILURES,
                    type=errors.RATE_LIMIT,
                    code="auth_rate_limited",
                    headers={"retry-after": str(math.ceil(wait))},
                )
            raise errors.invalid_key()
        if info.paused:
            raise errors.team_paused(info.team_name)
        return info
