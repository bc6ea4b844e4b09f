"""What a web process does with what is broadcast to CONFIG_GROUP.

A configuration change (CONFIG_CHANGED, MODELS_CHANGED) drops this process's caches and
tells its listeners, through the one registry (limiter/protocol/changes.py). A limiter
that announces its start (LIMITER_STARTED) is the client's business: it hands the new
limiter the leases it holds and tells every waiting ticket (`limiter_started`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from limiter.protocol import changes, events


class BroadcastListener:
    def __init__(self, limiter_started: Callable[[str], None]) -> None:
        self._limiter_started = limiter_started

    def hear(self, message: dict[str, Any]) -> bool:
        """Act on `message` if it is a broadcast; whether it was."""
        kind = message.get("type", "")
        if kind in changes.CHANGES:
            changes.heard(kind)
            return True
        if kind == events.LIMITER_STARTED:
            self._limiter_started(message.get("limiter", ""))
            return True
        return False
