"""channels_redis, with a send and a receive of one Redis round trip each instead of four.

Every limiter decision travels as channel messages (the ticket, the answer, and a
release where a lease is held), so on the request path channels_redis's round trips
are most of scale-out's cost:

- `send` trims expired messages, checks capacity, adds the message and refreshes the
  expiry as four commands. Here they are one Lua script with the same semantics
  (expiry, capacity, ChannelFull) and the same wire format.
- `receive` keeps each popped message in a backup queue until it has been handed
  over (a cleanup script, the pop, a backup write, a backup delete), so that a
  receiver cancelled mid-pop loses nothing. Here it is the pop alone. The window it
  guarded is a receiver cancelled between the pop and the hand-over, which happens
  only when a process stops; Sluice already survives what could be lost then (an
  unanswered ticket is a 503 after SLUICE_LIMITER_TIMEOUT, a lost release is reaped
  at the lease's expiry, a dead limiter's leases are re-adopted).
"""

from __future__ import annotations

import time
from typing import Any

from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

SEND = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
if redis.call('ZCOUNT', KEYS[1], '-inf', '+inf') >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


def redis_hosts(url: str) -> list[dict[str, Any]]:
    """CHANNEL_LAYERS' `hosts` for REDIS_URL (dashboard/settings.py).

    - channels_redis blocks up to 5 s in BZPOPMIN; redis-py's default socket timeout is
      also 5 s, so reads would time out at random. Give it room.
    - A command on a broken connection is sent once more, on a new one. After Redis
      restarts, every pooled connection is dead, and redis-py's asyncio connections retry
      nothing by default: each one's next command failed, and its caller heard 503 though
      Redis was back. With Redis still down the retry fails at once (connection refused).
    """
    return [
        {
            "address": url,
            "socket_timeout": 15,
            "socket_connect_timeout": 2,
            "retry": Retry(NoBackoff(), retries=1),
            "retry_on_error": [RedisConnectionError],
        }
    ]


class SluiceRedisChannelLayer(RedisChannelLayer):
    async def _brpop_with_clean(self, index: int, channel: str, timeout: float):  # noqa: ASYNC109  (the parent's signature)
        result = await self.connection(index).bzpopmin(channel, timeout=timeout)
        return result[1] if result is not None else None

    async def _clean_receive_backup(self, index: int, channel: str) -> None:
        return None  # no backup queue to clean (see the module docstring)

    async def send(self, channel: str, message: dict) -> None:
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        name = channel
        if "!" in channel:  # a process-specific channel: as channels_redis routes it
            message = {**message, "__asgi_channel__": channel}
            name = self.non_local_name(channel)
            index = self.consistent_hash(channel)
        else:
            index = next(self._send_index_generator)
        now = time.time()
        sent = await self.connection(index).eval(
            SEND,
            1,
            self.prefix + name,
            int(now) - int(self.expiry),
            self.get_capacity(channel),
            now,
            self.serialize(message),
            int(self.expiry),
        )
        if not sent:
            raise ChannelFull()
