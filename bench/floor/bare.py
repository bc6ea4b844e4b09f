"""The least any gateway can do: a pure ASGI app, no framework, that forwards each POST's
body to the upstream with one shared aiohttp session and returns its answer. Under uvicorn
(uvloop, httptools) it measures what splitting a server into processes costs when the
server itself does (nearly) nothing (bench/split.py). Non-streaming calls only.

aiohttp, not httpx's own transport: that one's connection pool costs more CPU a call the
more calls a process has in flight (measured in bench/split.py's first run: 1.6 to 4 ms a
call, more than all of Sluice), which would make one process look dear beside four."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:8100/v1") + "/chat/completions"
Message = MutableMapping[str, Any]
_sessions: list[aiohttp.ClientSession] = []  # one, made on the first call (it needs the loop)


def session() -> aiohttp.ClientSession:
    if not _sessions:
        connector = aiohttp.TCPConnector(limit=0)
        _sessions.append(
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))
        )
    return _sessions[0]


async def application(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] != "http":  # run with --lifespan off; nothing else is served
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    authorization = dict(scope["headers"]).get(b"authorization", b"").decode()
    headers = {"content-type": "application/json", "authorization": authorization}
    async with session().post(UPSTREAM, data=body, headers=headers) as upstream:
        content = await upstream.read()
        content_type = upstream.headers.get("content-type", "application/json").encode()
        status = upstream.status
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type)],
        }
    )
    await send({"type": "http.response.body", "body": content})
