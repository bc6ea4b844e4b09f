"""Throttles on staff sign-in: the login form and the ops API's admin token.

Both reuse the team API's auth-failure throttle (limiter/gateway/throttle.py): only
failures are counted, per account or per address and one-minute window, shared through
Redis when REDIS_URL is set. The address is found as the team API finds it
(SLUICE_TRUSTED_PROXIES).

- The admin token is a long random secret, like a team key: it is checked first, and
  only failures past the limit are refused (429 with Retry-After). A valid token never is.
- A password can be guessed, so a login is refused *before* its password is checked
  once its account or its address has failed LOGIN_FAILURES_PER_MINUTE times in the
  minute. A browser that has logged in to that account before carries a signed device
  cookie (OWASP's "device cookies") and is not refused: a guesser slows only itself and
  new browsers, and cannot lock the account's owner out of their own.
"""

from __future__ import annotations

from asgiref.sync import async_to_sync
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from limiter.gateway.throttle import AuthThrottle, client_address, trusted_networks

LOGIN_FAILURES_PER_MINUTE = 10  # per account, and per address
ADMIN_TOKEN_FAILURES_PER_MINUTE = 30  # per address, as for team keys
DEVICE_COOKIE = "sluice_device"
DEVICE_SALT = "sluice.login-device"
DEVICE_MAX_AGE = 90 * 86400  # seconds a browser is remembered for an account

_login = AuthThrottle(LOGIN_FAILURES_PER_MINUTE, redis_url=settings.REDIS_URL)
_admin_token = AuthThrottle(ADMIN_TOKEN_FAILURES_PER_MINUTE, redis_url=settings.REDIS_URL)
_trusted = trusted_networks(settings.SLUICE_TRUSTED_PROXIES)


def _address(request: HttpRequest) -> str:
    return client_address(
        request.META.get("REMOTE_ADDR", ""), request.META.get("HTTP_X_FORWARDED_FOR"), _trusted
    )


def _account(username: str) -> str:
    # Keyed apart from addresses (and from the team API's keys, which are bare addresses).
    return "login-account:" + username.casefold()[:150]


def login_wait(request: HttpRequest, username: str) -> float:
    """Seconds before this login may be tried (its password is not checked meanwhile), or 0."""
    if _known_device(request, username):
        return 0.0
    waits = [async_to_sync(_login.waiting)("login-address:" + _address(request))]
    if username:
        waits.append(async_to_sync(_login.waiting)(_account(username)))
    return max(waits)


def login_failed(request: HttpRequest, username: str) -> None:
    async_to_sync(_login.failed)("login-address:" + _address(request))
    if username:
        async_to_sync(_login.failed)(_account(username))


def remember_device(response: HttpResponse, username: str) -> None:
    """After a successful login: this browser is the account's own from now on."""
    response.set_signed_cookie(
        DEVICE_COOKIE,
        username,
        salt=DEVICE_SALT,
        max_age=DEVICE_MAX_AGE,
        httponly=True,
        secure=settings.SESSION_COOKIE_SECURE,
        samesite="Lax",
    )


def _known_device(request: HttpRequest, username: str) -> bool:
    remembered = request.get_signed_cookie(
        DEVICE_COOKIE, default=None, salt=DEVICE_SALT, max_age=DEVICE_MAX_AGE
    )
    return bool(username) and remembered == username


def admin_token_failed(request: HttpRequest) -> float:
    """Count a wrong admin token: seconds to wait when past the limit (answer 429), else 0."""
    return async_to_sync(_admin_token.failed)("admin-token:" + _address(request))
