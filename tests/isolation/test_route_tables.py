"""The walk tables cover every route the code declares.

A route added to the team API, the ops API, the dashboard, the websocket routing or the
ASGI router without an entry in `routes.py` fails here, so it cannot go unwalked. (The
admin's pages are enumerated from its registry by the walk itself.)
"""

from __future__ import annotations

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from dashboard.api import api
from dashboard.routing import websocket_urlpatterns
from limiter.gateway.routes import build_routes
from tests.isolation.routes import (
    OPS_PUBLIC,
    OPS_ROUTES,
    PAGE_PUBLIC,
    PAGE_ROUTES,
    V1_ROUTES,
    WEBSOCKET_ROUTES,
)


def test_every_team_api_route_is_walked() -> None:
    declared = {(method, pattern) for method, pattern, _kind, _handler in build_routes()}
    walked = {(route.method, route.pattern) for route in V1_ROUTES}
    assert declared - walked == set(), "team API routes missing from V1_ROUTES"
    assert walked - declared == set(), "V1_ROUTES names routes the team API does not have"


def test_every_ops_api_operation_is_walked() -> None:
    declared = {
        (method, path)
        for _prefix, router in api._routers
        for path, view in router.path_operations.items()
        for operation in view.operations
        for method in operation.methods
    }
    walked = {(route.method, route.pattern) for route in OPS_ROUTES}
    assert declared - walked == set(), "ops API operations missing from OPS_ROUTES"
    assert walked - declared == set(), "OPS_ROUTES names operations the ops API does not have"
    operations = {
        op.view_func.__name__
        for _p, r in api._routers
        for v in r.path_operations.values()
        for op in v.operations
    }
    others = {pattern.name for pattern in api.urls[0]} - operations
    assert others == set(OPS_PUBLIC), "a URL of the ops API that is no operation is not walked"


def test_every_dashboard_url_is_walked() -> None:
    declared: set[str] = set()
    includes: set[str] = set()
    for entry in get_resolver("dashboard.urls").url_patterns:
        if isinstance(entry, URLResolver) and entry.namespace == "dashboard":
            declared |= {f"dashboard:{pattern.name}" for pattern in entry.url_patterns}
        elif isinstance(entry, URLResolver):
            includes.add(str(entry.pattern))
        else:
            assert isinstance(entry, URLPattern)
            declared.add(str(entry.name))
    assert declared == {route.name for route in PAGE_ROUTES} | set(PAGE_PUBLIC)
    # The two included URL sets walked by their own enumerations: the ops API and the admin.
    assert includes == {"api/", "admin/"}


def test_every_websocket_route_is_walked() -> None:
    assert ["/" + str(pattern.pattern) for pattern in websocket_urlpatterns] == WEBSOCKET_ROUTES


# Importing the ASGI application builds Django's handler; whitenoise then warns that
# `collectstatic` has not run, which is true and harmless here.
@pytest.mark.filterwarnings("ignore:No directory at")
def test_the_asgi_router_sends_nothing_else_around_django() -> None:
    """HTTP that skips Django: the team API (walked above), health and metrics (public by
    design, walked in test_dashboard.py), and the sandbox when it is the upstream."""
    from dashboard import asgi

    assert asgi.TEAM_API_PREFIXES == ("/v1/", "/v2/", "/tci/")
    assert asgi.TEAM_API_ROOTS == ("/v1", "/v2", "/tci")
    assert asgi.HEALTH_PATHS == ("/healthz", "/readyz", "/metrics")
    assert asgi.SANDBOX_PREFIX == "/sandbox"
