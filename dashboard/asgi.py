"""The ASGI entry point: one application for the team API, the dashboard and websockets.

HTTP under /v1/ and /v2/ (the together SDK's video jobs and project-scoped routes)
goes straight to the team API (limiter/gateway/app.py), not through Django's
middleware; everything else is Django. With no Together key the sandbox upstream is
mounted at /sandbox/ so that a fresh `make run` has something to talk to; it answers
only Sluice itself and staff (sandbox/mount.py). The limiter is not routed here:
`manage.py runworker limiter` (limiter/management/commands/runworker.py) or, embedded,
`serve` runs it on its channel.
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application() does

# Imported after Django is set up: these modules use the ORM and settings.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from dashboard.handler import SyncChainHandler  # noqa: E402
from dashboard.origin import SameOriginWebsocket  # noqa: E402
from limiter import serving  # noqa: E402

django_application = SyncChainHandler()  # Django's ASGI handler, cheaper (dashboard/handler.py)

# The team API and the operations endpoints, given this process's limiter client (and
# its background parts) to start on the first call; `serve` drains the same team API.
team_api = serving.build_team_api()
health = serving.build_health()

# Everything under them is the team API's: a route it does not serve is its JSON 404
# (limiter/gateway/errors.py unknown_route), never Django's HTML page. `/tci/`: Together's
# code interpreter guide calls it at the root (`POST /tci/execute`), beside `/v1/tci/`.
TEAM_API_PREFIXES = ("/v1/", "/v2/", "/tci/")
TEAM_API_ROOTS = ("/v1", "/v2", "/tci")
HEALTH_PATHS = ("/healthz", "/readyz", "/metrics")
SANDBOX_PREFIX = "/sandbox"
ABSOLUTE_FORM = ("http://", "https://")


def _websocket_routes():
    try:
        from dashboard.routing import websocket_urlpatterns
    except ImportError:
        return []
    return websocket_urlpatterns


class HttpRouter:
    """Sends each HTTP request to the team API, the sandbox or Django by path prefix."""

    def __init__(self) -> None:
        self.sandbox = None
        if settings.SLUICE_SANDBOX:
            from sandbox.mount import MountedSandbox

            self.sandbox = MountedSandbox(prefix=SANDBOX_PREFIX)  # Sluice's own bearer, or staff

    async def __call__(self, scope, receive, send) -> None:
        path = scope["path"]
        if path.startswith(ABSOLUTE_FORM):
            # `GET http://host/v1/models HTTP/1.1`: daphne puts the whole target in the path
            # (uvicorn's httptools takes its path out). The target's path is the resource.
            path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
            scope = {**scope, "path": path}
        rooted = "/" + path.lstrip("/")
        if rooted.startswith(TEAM_API_PREFIXES) or rooted in TEAM_API_ROOTS:
            # `//v1/...` too: the team API answers it (a 404 in OpenAI's shape), not Django.
            return await team_api(scope, receive, send)
        if path in HEALTH_PATHS:
            return await health(scope, receive, send)
        if self.sandbox is not None and path.startswith(SANDBOX_PREFIX + "/"):
            return await self.sandbox(scope, receive, send)
        return await django_application(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": HttpRouter(),
        # Not Channels' AllowedHostsOriginValidator: it ignores the origin's scheme and port.
        "websocket": SameOriginWebsocket(AuthMiddlewareStack(URLRouter(_websocket_routes()))),
    }
)
