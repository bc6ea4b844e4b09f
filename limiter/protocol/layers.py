"""channels_redis, with a send and a receive of one Redis round trip each instead of four,
and both batched: many messages in one round trip.

Every limiter decision travels as channel messages (the ticket, the answer, and a
release where a lease is held), so on the request path channels_redis's round trips
are most of scale-out's cost:

- `send` trims expired messages, checks capacity, adds the message and refreshes the
  expiry as four commands. Here they are one Lua script with the same semantics
  (expiry, capacity, ChannelFull) and the same wire format, sent by its digest.
- `receive` keeps each popped message in a backup queue until it has been handed
  over (a cleanup script, the pop, a backup write, a backup delete), so that a
  receiver cancelled mid-pop loses nothing. Here it is the pop alone. The window it
  guarded is a receiver cancelled between the pop and the hand-over, which happens
  only when a process stops; Sluice already survives what could be lost then (an
  unanswered ticket is a 503 after SLUICE_LIMITER_TIMEOUT, a lost release is reaped
  at the lease's expiry, a dead limiter's leases are re-adopted).
- Batched, as profiling the limiter over Redis showed it waiting on round trips (one
  pop per message, one send per answer, one after the other), not on its CPU:
  `receive` pops up to RECEIVE_BATCH messages in one BZMPOP and hands out the rest
  from memory on the next calls, with none of channels_redis's per-message clean-up
  task; `send_many` sends many messages in one script, in order (their scores rise
  within a batch; limiter/protocol/outbox.py gathers them), and `send` is one of
  those. A process that dies holding popped messages loses them, the same window as
  above.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

# `send_many`'s: each channel key's messages added in one script, in their order. KEYS: the
# channel keys; ARGV: the expiry cutoff, the expiry, then per key its capacity and
# message count, then (score, message) pairs. Per message 1 (sent) or 0 (channel full).
SEND_MANY = """
local cutoff, expiry, at, out = ARGV[1], ARGV[2], 3, {}
for _, key in ipairs(KEYS) do
  local capacity, n = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  at = at + 2
  redis.call('ZREMRANGEBYSCORE', key, 0, cutoff)
  local count = redis.call('ZCARD', key)
  for _ = 1, n do
    if count >= capacity then
      out[#out + 1] = 0
    else
      redis.call('ZADD', key, ARGV[at], ARGV[at + 1])
      count = count + 1
      out[#out + 1] = 1
    end
    at = at + 2
  end
  redis.call('EXPIRE', key, expiry)
end
return out
"""
# Sent by its digest (EVALSHA), not its text: EVAL sent the script's 700 bytes with every
# batch, and Redis hashed them each time to find its compiled copy.
SEND_MANY_SHA = hashlib.sha1(SEND_MANY.encode()).hexdigest()  # noqa: S324  (Redis's script id)
# Messages popped in one round trip at most: enough for a loop turn's worth of tickets
# from every web process, few enough that one pop's reply stays small.
RECEIVE_BATCH = 256


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
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._popped: dict[str, deque[bytes]] = {}  # channel key -> popped, not yet handed out
        self._bzmpop = True  # Redis >= 7; older servers pop one message at a time
        self._last_score = 0.0

    async def _brpop_with_clean(self, index: int, channel: str, timeout: float):  # noqa: ASYNC109  (the parent's signature)
        popped = self._popped.get(channel)
        if popped:
            return popped.popleft()
        connection = self.connection(index)
        if self._bzmpop:
            try:
                result = await connection.bzmpop(
                    timeout, 1, [channel], min=True, count=RECEIVE_BATCH
                )
            except ResponseError:  # unknown command: Redis 6
                self._bzmpop = False
            else:
                if result is None:
                    return None
                members = [member for member, _score in result[1]]
                if len(members) > 1:
                    self._popped.setdefault(channel, deque()).extend(members[1:])
                return members[0]
        result = await connection.bzpopmin(channel, timeout=timeout)
        return result[1] if result is not None else None

    async def _clean_receive_backup(self, index: int, channel: str) -> None:
        return None  # no backup queue to clean (see the module docstring)

    async def receive_single(self, channel: str) -> tuple[str, dict[str, Any]]:
        """The parent's, without its per-message clean-up task and lock (there is no
        backup queue to clean). On this process's shared `!` channel, what one pop brought
        goes straight to the buffers `receive` reads, all but the last, which is returned
        (`receive` buffers it after the others: their order is kept), so the next receives
        return at once instead of each taking the receive lock again."""
        assert self.require_valid_channel_name(channel, receive=True), "Channel name invalid"
        if "!" in channel:
            assert channel.endswith("!")
            index = self.consistent_hash(channel)
        else:
            index = next(self._receive_index_generator)
        channel_key = self.prefix + channel
        content = None
        while content is None:
            content = await self._brpop_with_clean(index, channel_key, timeout=self.brpop_timeout)
        popped = self._popped.get(channel_key)
        if "!" in channel and popped:
            popped.appendleft(content)
            while len(popped) > 1:
                to, message = self._unpack(channel, popped.popleft())
                for name in to if isinstance(to, list) else [to]:
                    self.receive_buffer[name].put_nowait(message)
            content = popped.popleft()
        return self._unpack(channel, content)

    def _unpack(self, channel: str, content: bytes) -> tuple[Any, dict[str, Any]]:
        message = self.deserialize(content)
        if "__asgi_channel__" in message:  # a process-specific channel (or a group's list)
            return message.pop("__asgi_channel__"), message
        return channel, message

    async def send(self, channel: str, message: dict) -> None:
        (error,) = await self.send_many([(channel, message)])
        if error is not None:
            raise error

    async def send_many(self, messages: Sequence[tuple[str, dict]]) -> list[Exception | None]:
        """Send each (channel, message) as `send` does, in one script per Redis host (one
        round trip), each channel's in the order given: for each, None or ChannelFull.
        A connection error fails them all (raised)."""
        by_host: dict[int, dict[str, tuple[int, list[int], list[Any]]]] = {}
        for position, (channel, message) in enumerate(messages):
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
            keys = by_host.setdefault(index, {})
            key = self.prefix + name
            if key not in keys:
                keys[key] = (self.get_capacity(channel), [], [])
            keys[key][1].append(position)
            keys[key][2].extend((self._score(), self.serialize(message)))
        errors: list[Exception | None] = [None] * len(messages)
        for index, keys in by_host.items():
            args: list[Any] = [int(time.time()) - int(self.expiry), int(self.expiry)]
            order: list[int] = []
            for capacity, positions, pairs in keys.values():
                args.extend((capacity, len(positions), *pairs))
                order.extend(positions)
            sent = await self._send_script(self.connection(index), [*keys, *args], len(keys))
            for position, ok in zip(order, sent, strict=True):
                if not ok:
                    errors[position] = ChannelFull()
        return errors

    @staticmethod
    async def _send_script(connection: Any, args: list[Any], keys: int) -> list[int]:
        """SEND_MANY by its digest; loaded first where Redis does not know it (a server
        new or restarted: its script cache is empty)."""
        try:
            return await connection.evalsha(SEND_MANY_SHA, keys, *args)
        except NoScriptError:
            await connection.script_load(SEND_MANY)
            return await connection.evalsha(SEND_MANY_SHA, keys, *args)

    def _score(self) -> float:
        """A message's score: the time it was sent, and above the one before, so that two
        messages sent in one batch are received in that order (members of equal score
        are ordered by their bytes, which start with a random prefix)."""
        self._last_score = max(time.time(), self._last_score + 1e-6)
        return self._last_score
