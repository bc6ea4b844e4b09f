"""The live overview's websocket: limiter snapshots pushed to the browsers of those who
may read the shared views (SHARED_READ). An organisation role gets every row; a team
role only its teams' rows and its upstream accounts' totals (dashboard/live.py,
`view_scoped`), narrowed by the teams it could see when it connected."""

from __future__ import annotations

import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from dashboard import live, policy
from dashboard.access import Rule
from limiter import selectors, serving
from limiter.jobs import selectors as job_selectors
from limiter.jobs.live import LiveJobsMessage
from limiter.protocol import events

# channels_redis forgets group members after a day; a dashboard left open re-joins.
GROUP_REFRESH_SECONDS = 3600.0
# Close code for a refused connection: 4000-4999 are the application's own; 4403
# reads as "forbidden" and tells the page not to retry.
CLOSE_FORBIDDEN = 4403


class LiveConsumer(AsyncJsonWebsocketConsumer):
    groups: list[str] = []
    # Every event these groups carry (events.GROUP_EVENTS) has a handler below or is
    # listed here: an unhandled one would close the socket.
    JOINED_GROUPS = (events.LIVE_GROUP, events.CONFIG_GROUP)
    # New fine-tuned models: the live page does not show them.
    IGNORED_EVENTS = frozenset({events.MODELS_CHANGED})
    # Its rule, declared as a view's is (dashboard/access.py).
    sluice_rule = Rule(policy.SHARED_READ)
    # What of each message this user may see (None: everything), computed at connect.
    visible: live.Visible | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not await database_sync_to_async(policy.allows_somewhere)(
            user, self.sluice_rule.action
        ):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.visible = await database_sync_to_async(
            lambda: live.visible_for(policy.team_rows(user))
        )()
        await self.accept()
        await self.join_groups()
        # The limits from the database first, so the page is never empty while the
        # limiter's answer is on its way (or if it never comes).
        await self.send_limits()
        await self.live_jobs(await database_sync_to_async(job_selectors.jobs_live_snapshot)())
        await serving.request_snapshot(self.channel_name)

    async def join_groups(self) -> None:
        for group in self.JOINED_GROUPS:
            await self.channel_layer.group_add(group, self.channel_name)
        self.joined_at = time.monotonic()

    async def disconnect(self, code: int) -> None:
        for group in self.JOINED_GROUPS:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") in self.IGNORED_EVENTS:
            return
        await super().dispatch(message)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The page asks for a "refresh" when no snapshot came for a while: the limiter
        # publishes only while something changes, and silence must mean "idle", not "down".
        if isinstance(content, dict) and content.get("type") == "refresh":
            if time.monotonic() - self.joined_at > GROUP_REFRESH_SECONDS:
                await self.join_groups()
            await serving.request_snapshot(self.channel_name)

    async def send_limits(self) -> None:
        limits = await database_sync_to_async(selectors.limit_overview)()
        await self.send_json({"type": "limits", "limits": live.limits_scoped(limits, self.visible)})

    async def live_snapshot(self, message: events.LiveSnapshot) -> None:
        view = await live.snapshot_enriched(message)
        await self.send_json(live.view_scoped(view, self.visible))

    async def live_jobs(self, message: LiveJobsMessage) -> None:
        """Fine-tune and batch slots, from the job poller (limiter/jobs/live.py)."""
        accounts = live.jobs_scoped(message["accounts"], self.visible)
        await self.send_json({"type": "jobs", "accounts": accounts})

    async def limiter_started(self, message: dict[str, Any]) -> None:
        # A (re)started limiter knows nothing yet of what the page shows: ask at once.
        await serving.request_snapshot(self.channel_name)

    async def config_changed(self, message: dict[str, Any]) -> None:
        live.names.clear()
        await self.send_limits()
