"""The live overview's websocket: limiter snapshots pushed to the browsers of those who
read every team (READ_ALL). A team role is refused for now: the snapshot, the limits and
the job slots carry every team's rows, and are not yet narrowed to one team's."""

from __future__ import annotations

import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from dashboard import live, policy
from dashboard.access import Rule
from limiter import events, process, selectors
from limiter.jobs import selectors as job_selectors
from limiter.jobs.live import LiveJobsMessage

# channels_redis forgets group members after a day; a dashboard left open re-joins.
GROUP_REFRESH_SECONDS = 3600.0
# Close code for a refused connection: 4000-4999 are the application's own; 4403
# reads as "forbidden" and tells the page not to retry.
CLOSE_FORBIDDEN = 4403


class LiveConsumer(AsyncJsonWebsocketConsumer):
    groups: list[str] = []
    # Its rule, declared as a view's is (dashboard/access.py).
    sluice_rule = Rule(policy.READ_ALL)

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not await database_sync_to_async(policy.allows)(
            user, self.sluice_rule.action
        ):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.accept()
        await self.join_groups()
        # The limits from the database first, so the page is never empty while the
        # limiter's answer is on its way (or if it never comes).
        await self.send_json(
            {"type": "limits", "limits": await database_sync_to_async(selectors.limit_overview)()}
        )
        await self.live_jobs(await database_sync_to_async(job_selectors.jobs_live_snapshot)())
        await process.request_snapshot(self.channel_name)

    async def join_groups(self) -> None:
        await self.channel_layer.group_add(events.LIVE_GROUP, self.channel_name)
        await self.channel_layer.group_add(events.CONFIG_GROUP, self.channel_name)
        self.joined_at = time.monotonic()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(events.LIVE_GROUP, self.channel_name)
        await self.channel_layer.group_discard(events.CONFIG_GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The page asks for a "refresh" when no snapshot came for a while: the limiter
        # publishes only while something changes, and silence must mean "idle", not "down".
        if isinstance(content, dict) and content.get("type") == "refresh":
            if time.monotonic() - self.joined_at > GROUP_REFRESH_SECONDS:
                await self.join_groups()
            await process.request_snapshot(self.channel_name)

    async def live_snapshot(self, message: events.LiveSnapshot) -> None:
        await self.send_json(await live.snapshot_enriched(message))

    async def live_jobs(self, message: LiveJobsMessage) -> None:
        """Fine-tune and batch slots, from the job poller (limiter/jobs/live.py)."""
        await self.send_json({"type": "jobs", "accounts": message["accounts"]})

    async def limiter_started(self, message: dict[str, Any]) -> None:
        # A (re)started limiter knows nothing yet of what the page shows: ask at once.
        await process.request_snapshot(self.channel_name)

    async def config_changed(self, message: dict[str, Any]) -> None:
        live.names.clear()
        await self.send_json(
            {"type": "limits", "limits": await database_sync_to_async(selectors.limit_overview)()}
        )
