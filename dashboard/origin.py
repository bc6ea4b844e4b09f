"""Same-origin checks where Django's CSRF middleware does not run: the live websocket and
the mounted sandbox's control endpoints (dashboard/asgi.py routes both around Django).

An origin is allowed when it is this site exactly as the request reached it (scheme,
host and port, the host being one of ALLOWED_HOSTS) or one of CSRF_TRUSTED_ORIGINS,
the setting Django's own CSRF check reads (wildcard subdomains included). Channels'
AllowedHostsOriginValidator compares the host only: a page on another port of the same
machine passed it.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(parts: SplitResult) -> tuple[str, str, int] | None:
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:  # a port that is not a number
        return None
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def _allowed_hosts() -> list[str]:
    # As Django's HttpRequest.get_host(): DEBUG with no ALLOWED_HOSTS means loopback names.
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        return [".localhost", "127.0.0.1", "[::1]"]
    return settings.ALLOWED_HOSTS


def origin_allowed(origin: str, *, host: str, secure: bool) -> bool:
    """Whether a request with this Origin header, received on `host` (the Host header)
    over TLS or not, comes from this site or a trusted one."""
    parts = urlsplit(origin.strip().lower())
    given = _origin(parts)
    if given is None:
        return False  # absent, "null", or not http(s)
    domain, _ = split_domain_port(host.lower())
    if domain and validate_host(domain, _allowed_hosts()):
        own = _origin(urlsplit(f"{'https' if secure else 'http'}://{host.lower()}"))
        if given == own:
            return True
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        pattern = urlsplit(trusted.lower())
        if "*" in pattern.netloc:  # "https://*.example.com": the domain and its subdomains
            if pattern.scheme == parts.scheme and is_same_domain(
                parts.netloc, pattern.netloc.replace("*", "", 1)
            ):
                return True
        elif _origin(pattern) == given:
            return True
    return False


def scope_header(scope: dict, name: bytes) -> str:
    """One request header of an ASGI scope ("" when absent); the last one wins."""
    value = b""
    for key, raw in scope.get("headers", ()):
        if key == name:
            value = raw
    return value.decode("latin-1")


class SameOriginWebsocket:
    """ASGI middleware for websockets: refuse (403) a handshake whose Origin is not this
    site or a trusted one. Browsers always send Origin on a websocket; no Origin is refused."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send):
        origin = scope_header(scope, b"origin")
        if origin_allowed(
            origin, host=scope_header(scope, b"host"), secure=scope.get("scheme") == "wss"
        ):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
