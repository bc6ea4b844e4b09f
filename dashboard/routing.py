"""Websocket routes; `dashboard/asgi.py` wraps them in
SameOriginWebsocket(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))."""

from django.urls import path

from dashboard.consumers import LiveConsumer

websocket_urlpatterns = [
    path("ws/live/", LiveConsumer.as_asgi()),
]
