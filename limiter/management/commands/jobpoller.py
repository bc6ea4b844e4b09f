"""`manage.py jobpoller`: the fine-tune and batch poller on its own (serve also runs one)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.core.management.base import BaseCommand

from limiter import loops
from limiter.jobs.poller import Poller, run_poller


class Command(BaseCommand):
    help = "Poll Together for fine-tune and batch jobs, free slots and start queued work."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--interval", type=float, default=1.0, help="seconds between passes")
        parser.add_argument("--once", action="store_true", help="run one pass and exit")
        parser.add_argument(
            "--start-deadline",
            type=float,
            default=None,
            help=(
                "seconds a job start may take; "
                "claims older than this (plus a margin) are reconciled"
            ),
        )

    def handle(
        self, *args: Any, interval: float, once: bool, start_deadline: float | None, **options: Any
    ) -> None:
        loops.run(self._main(interval=interval, once=once, start_deadline=start_deadline))

    async def _main(self, *, interval: float, once: bool, start_deadline: float | None) -> None:
        if once:
            found = await Poller(start_deadline=start_deadline).tick()
            self.stdout.write("found work" if found else "nothing to do")
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # SIGTERM/SIGINT end the loop after the step in progress, not in the middle of it.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.stdout.write(f"Job poller running every {interval}s (SIGTERM or Ctrl-C to stop)")
        self.stdout.flush()
        await run_poller(stop, interval, start_deadline=start_deadline)
