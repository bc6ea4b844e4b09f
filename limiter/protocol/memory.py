"""The embedded limiter's channel layer: channels' in-memory one, each message copied
the way channels_redis carries it (msgpack) instead of with `copy.deepcopy`.

The layer copies every message it is handed, so that neither side can change what the
other holds. `deepcopy` walks each dict and list in Python, one memo entry at a time:
profiled (docs/measured.md), it was about 5% of an embedded process's CPU per call, the
ticket and its answer each copied once. A msgpack round trip is a copy too, in C, about
three times faster; and it gives the embedded limiter exactly what it would receive
over Redis (a tuple arrives as a list, bytes as bytes), so that the two modes cannot
drift apart on what a message may hold.
"""

from __future__ import annotations

from typing import Any

import msgpack
from channels.layers import InMemoryChannelLayer


class _CopiedAsOverRedis(dict):
    """A message whose deep copy (the layer's, on send) is a msgpack round trip."""

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return msgpack.unpackb(msgpack.packb(self))


class SluiceInMemoryChannelLayer(InMemoryChannelLayer):
    async def send(self, channel: str, message: dict[str, Any]) -> None:
        # channels checks, queues and copies as before; only the copy is another.
        await super().send(channel, _CopiedAsOverRedis(message))
