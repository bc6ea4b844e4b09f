"""`manage.py serve`: one process serving the dashboard, the team API and (embedded
mode) the limiter, with uvicorn (or daphne: `--server daphne`, SLUICE_SERVER=daphne).

uvicorn is the default because it is measured cheaper for the same application, in the
same runs (docs/measured.md, "The default server"): a refusal answered locally costs
half the CPU it does under daphne (0.29 against 0.64 ms, where the target is 0.5), a
chat call about a quarter less, and a storm of calls on one key left daphne's one
process too far behind to answer the other teams. daphne stays supported and tested.

SIGTERM (or Ctrl-C) drains instead of dropping work: the server stops accepting
connections, /readyz turns 503 for the load balancer, requests in flight or queued
are answered (up to SLUICE_SHUTDOWN_GRACE seconds), the 429 record is flushed, and
only then does the process exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import environ
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from limiter.management.production import refuse_development_secret_key

env = environ.Env()


class Command(BaseCommand):
    help = (
        "Serve Sluice (dashboard + team API + embedded limiter) on HOST:PORT (uvicorn, or daphne)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=env.str("HOST", default="127.0.0.1"))
        parser.add_argument("--port", type=int, default=env.int("PORT", default=8000))
        parser.add_argument(
            "--server",
            choices=["daphne", "uvicorn"],
            default=env.str("SLUICE_SERVER", default="uvicorn"),
            help="the ASGI server: uvicorn (default: cheaper, docs/measured.md) or daphne",
        )

    def handle(self, *args: Any, host: str, port: int, server: str, **options: Any) -> None:
        refuse_development_secret_key()
        if settings.SLUICE_SANDBOX and not env.str("TOGETHER_BASE_URL", default=""):
            # No Together key: the sandbox upstream is mounted on this very server.
            settings.TOGETHER_BASE_URL = f"http://{_loopback(host)}:{port}/sandbox/v1"
        if server == "daphne":
            self._daphne(host, port)
        else:
            self._uvicorn(host, port)

    def _daphne(self, host: str, port: int) -> None:
        # Imported here: daphne.server installs Twisted's asyncio reactor as a side effect.
        from dashboard.daphne_server import SluiceServer  # isort: skip  (first: see above)
        from dashboard.asgi import application

        server: SluiceServer = SluiceServer(
            application=application,
            endpoints=[f"tcp:port={port}:interface={host}"],
            ready_callable=lambda: self._ready_daphne(server, host, port),
            application_close_timeout=settings.SLUICE_SHUTDOWN_GRACE,
            websocket_handshake_timeout=10,
            signal_handlers=False,  # ours drain first (below)
        )
        server.run()
        if server.failed:
            raise CommandError(f"could not listen on {host}:{port}")

    def _ready_daphne(self, server, host: str, port: int) -> None:
        from twisted.internet import reactor

        from dashboard.asgi import team_api
        from limiter import serving
        from limiter.protocol.tasks import spawn

        # Start the limiter, the 429 recorder and the job poller now, not on the first request.
        spawn(_started_and_settled())

        def stop_listening() -> None:
            for listening_port in server.ports:
                listening_port.stopListening()

        loop = asyncio.get_event_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # twisted types `reactor` as its zope Interface, whose methods are declared
            # without self; mypy reads them right only with the mypy-zope plugin.
            loop.add_signal_handler(
                sig,
                lambda: spawn(
                    serving.drain(team_api, stop_listening, reactor.stop)  # type: ignore[misc]
                ),
            )
        self._announce(host, port, "daphne")

    def _uvicorn(self, host: str, port: int) -> None:
        import uvicorn

        from dashboard.asgi import application, team_api
        from limiter import serving
        from limiter.protocol.tasks import spawn

        command = self

        class DrainingServer(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                # uvicorn's own stops at once and, once stopped, raises the signal again,
                # so the process dies of it (exit -15) without the drain: ours drain first
                # (serving.drain) and the process exits 0.
                loop = asyncio.get_running_loop()
                signals = (signal.SIGTERM, signal.SIGINT)
                for sig in signals:
                    loop.add_signal_handler(
                        sig,
                        # Kept until it ends (spawn): a task only the loop refers to may be
                        # collected mid-drain.
                        lambda: spawn(serving.drain(team_api, self.stop_listening, self.exit)),
                    )
                try:
                    yield
                finally:
                    for sig in signals:
                        loop.remove_signal_handler(sig)

            def stop_listening(self) -> None:
                for listener in self.servers:
                    listener.close()

            def exit(self) -> None:
                self.should_exit = True

            async def startup(self, sockets=None) -> None:
                await super().startup(sockets)
                await serving.ensure_started()
                serving.settle_heap()
                command._announce(host, port, f"uvicorn, {_loop_name()}")

        config = uvicorn.Config(
            application,
            host=host,
            port=port,
            lifespan="off",
            log_level="warning",
            timeout_graceful_shutdown=int(settings.SLUICE_SHUTDOWN_GRACE),
        )
        # uvicorn's own run makes the loop its config names ("auto": uvloop, installed with
        # uvicorn[standard]); `asyncio.run(server.serve())` ran asyncio's own loop, whose
        # pure-Python loop and transports cost more CPU a call (docs/measured.md, "CPU a call").
        DrainingServer(config).run()

    def _announce(self, host: str, port: int, server: str) -> None:
        mode = (
            "embedded limiter" if settings.SLUICE_EMBEDDED_LIMITER else "limiter worker over Redis"
        )
        upstream = "sandbox upstream" if settings.SLUICE_SANDBOX else settings.TOGETHER_BASE_URL
        self.stdout.write(
            f"Sluice listening on http://{host}:{port}/ ({server}; {mode}; {upstream})"
        )
        self.stdout.flush()


def _loop_name() -> str:
    """The running event loop's package: "uvloop", or "asyncio" where uvloop is missing."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


async def _started_and_settled() -> None:
    from limiter import serving

    await serving.ensure_started()
    serving.settle_heap()


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
