"""`manage.py sandbox`: serve the simulated Together upstream on its own port with daphne."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from sandbox import SandboxApp, SandboxConfig, presets


class Command(BaseCommand):
    help = "Serve the sandbox upstream (a simulated Together AI API) for local runs and tests."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8100)
        parser.add_argument(
            "--latency-ms", type=float, default=0.0, help="delay added to every inference answer"
        )
        parser.add_argument(
            "--api-key", default=None, help="accept only this bearer key (default: any)"
        )
        parser.add_argument(
            "--new-organisation",
            action="store_true",
            help="limit each model as Together limits a new organisation (the seed's rates, "
            "per second, growing with traffic); default: no limits",
        )

    def handle(
        self,
        *args: Any,
        host: str,
        port: int,
        latency_ms: float,
        api_key: str | None,
        new_organisation: bool = False,
        **options: Any,
    ) -> None:
        # Imported here: daphne.server installs Twisted's asyncio reactor as a side effect.
        from daphne.server import Server

        config = (
            presets.new_organisation(api_key)
            if new_organisation
            else SandboxConfig(api_key=api_key)
        )
        config.latency_ms = latency_ms
        app = SandboxApp(config)
        server: Any = Server(
            application=app,
            endpoints=[f"tcp:port={port}:interface={host}"],
            ready_callable=lambda: self._announce(server, host, port),
        )
        server.run()

    def _announce(self, server: Any, host: str, port: int) -> None:
        # TCP listening is synchronous in Twisted, so the bound address is known here; with
        # --port 0 it is the port the OS picked.
        bound = server.listening_addresses[0][1] if server.listening_addresses else port
        self.stdout.write(f"Sandbox upstream listening on http://{host}:{bound}/v1")
        self.stdout.flush()
