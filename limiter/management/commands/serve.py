"""`manage.py serve`: one process serving the dashboard, the team API and (embedded
mode) the limiter, with daphne."""

from __future__ import annotations

import asyncio
from typing import Any

import environ
from django.conf import settings
from django.core.management.base import BaseCommand

env = environ.Env()


class Command(BaseCommand):
    help = "Serve Sluice (dashboard + team API + embedded limiter) on HOST:PORT with daphne."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=env.str("HOST", default="127.0.0.1"))
        parser.add_argument("--port", type=int, default=env.int("PORT", default=8000))

    def handle(self, *args: Any, host: str, port: int, **options: Any) -> None:
        # Imported here: daphne.server installs Twisted's asyncio reactor as a side effect.
        from daphne.server import Server

        if settings.SLUICE_SANDBOX and not env.str("TOGETHER_BASE_URL", default=""):
            # No Together key: the sandbox upstream is mounted on this very server.
            settings.TOGETHER_BASE_URL = f"http://{_loopback(host)}:{port}/sandbox/v1"

        from dashboard.asgi import application

        server = Server(
            application=application,
            endpoints=[f"tcp:port={port}:interface={host}"],
            ready_callable=lambda: self._ready(host, port),
            application_close_timeout=30,
            websocket_handshake_timeout=10,
        )
        server.run()

    def _ready(self, host: str, port: int) -> None:
        from limiter import runtime

        # Start the limiter, the 429 recorder and the job poller now, not on the first request.
        asyncio.ensure_future(runtime.ensure_started())
        mode = "embedded limiter" if settings.SLUICE_EMBEDDED_LIMITER else "limiter worker over Redis"
        upstream = "sandbox upstream" if settings.SLUICE_SANDBOX else settings.TOGETHER_BASE_URL
        self.stdout.write(f"Sluice listening on http://{host}:{port}/ ({mode}; {upstream})")
        self.stdout.flush()


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
