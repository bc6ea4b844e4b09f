"""The sandbox upstream as mounted at /sandbox/ on Sluice's own server (no Together key).

Every team's uploads sit in it, and its control endpoint reconfigures it for everyone,
so only Sluice itself may reach it:
- its Together-like API accepts one bearer, `sandbox_api_key()`, derived from
  SECRET_KEY, which Sluice's processes send (limiter/upstream.py resolve_target);
- its harness endpoints (stats, config, control) accept that bearer or a session from
  this site whose role allows it (reading: READ_ALL; control: UPSTREAM_WRITE, admins).
  The path bypasses Django's middleware, so the session cookie is checked here, and a
  session-borne request from another origin is refused (the check Django's CSRF
  middleware would make);
- the upload URL it hands out (the SDKs' redirect flow PUTs there with no bearer) is
  signed for its one file (resources.upload_signature): a file id alone opens nothing;
- the generated image stays public: image answers hand out its URL.

The standalone `manage.py sandbox` and the tests' in-thread sandbox are the bare
SandboxApp, configured by whoever starts them.
"""

from __future__ import annotations

import hmac
import logging
from importlib import import_module
from typing import Any

from channels.auth import get_user
from channels.db import database_sync_to_async
from django.conf import settings
from django.http.cookie import parse_cookie

from dashboard import policy
from dashboard.origin import origin_allowed, scope_header
from limiter.upstream import sandbox_api_key
from sandbox import SandboxApp
from sandbox.http import ApiError, json_response, send_response
from sandbox.presets import new_organisation

logger = logging.getLogger(__name__)

HARNESS = "/sandbox/"  # below the mount prefix: stats, config, control, image.png
PUBLIC_HARNESS = frozenset({"/sandbox/image.png"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MSG_FORBIDDEN = "Your role does not allow this."


class MountedSandbox:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")
        self.api_key = sandbox_api_key()
        # Together as a new organisation meets it: the seed's limits per model, per second,
        # moving with traffic (sandbox/presets.py), so Sluice learns believable ceilings.
        self.app = SandboxApp(new_organisation(self.api_key), prefix=self.prefix)

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        path = scope["path"][len(self.prefix) :]
        if scope["type"] == "http" and path.startswith(HARNESS) and path not in PUBLIC_HARNESS:
            refusal = await self._refusal(scope)
            if refusal is not None:
                await send_response(refusal.response(), send, lambda: False)
                return
            if path == "/sandbox/config" and scope["method"] == "GET":
                # The bearer is Sluice's; a staff member reading the config need not see it.
                config = {**self.app.state.config.to_dict(), "api_key": "(Sluice's own)"}
                await send_response(json_response(config), send, lambda: False)
                return
        await self.app(scope, receive, send)

    async def _refusal(self, scope: dict[str, Any]) -> ApiError | None:
        """None when Sluice itself or an allowed session from this site is calling."""
        scheme, _, key = scope_header(scope, b"authorization").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            key.strip().encode(), self.api_key.encode()
        ):
            return None
        user = await _session_user(scope)
        if user is None or not user.is_authenticated:
            return ApiError(
                401,
                "The mounted sandbox answers only Sluice and staff sessions.",
                code="invalid_api_key",
            )
        # The policy's: reading the harness is a read of everything, changing it a change
        # to the (simulated) upstream.
        action = policy.READ_ALL if scope["method"] in SAFE_METHODS else policy.UPSTREAM_WRITE
        if not await database_sync_to_async(policy.allows)(user, action):
            return ApiError(403, MSG_FORBIDDEN, error_type="permission_error", code="forbidden")
        origin = scope_header(scope, b"origin")
        if (
            scope["method"] not in SAFE_METHODS
            and origin
            and not origin_allowed(
                origin, host=scope_header(scope, b"host"), secure=scope.get("scheme") == "https"
            )
        ):
            logger.warning("sandbox control refused: staff session from origin %r", origin[:100])
            return ApiError(
                403,
                "Cross-origin request refused.",
                error_type="permission_error",
                code="forbidden",
            )
        return None


async def _session_user(scope: dict[str, Any]):
    """The user of the request's Django session cookie, or None: what AuthenticationMiddleware
    would find (channels.auth.get_user also checks the session's auth hash)."""
    session_key = parse_cookie(scope_header(scope, b"cookie")).get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore
    return await get_user({"session": store(session_key)})
