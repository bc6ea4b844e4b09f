"""An open-loop load generator: requests sent at fixed moments, whatever the answers.

The closed-loop generator (loadgen.py) sends the next request when an answer comes back,
so a slow server is asked less. Demand that does not wait for answers is what a ramp
against a moving limit must face: 10 requests a second means 10 a second, queued, served
or refused. Each stream sends `rate` requests a second for `duration` seconds, evenly
spaced, starting `delay` seconds in; nothing is retried.

Runs as its own process (`python -m bench.openloop`) so its CPU is not the server's, and
imports nothing from Django. One line of JSON in (a `Plan`), one line out:
  {"mono_start": <time.monotonic() at the first send>, "requests": [
      {"stream", "at" (seconds after mono_start it was due), "status", "latency_ms",
       "limited_by" (Sluice's x-sluice-limited-by, or ""), "queued_ms" (x-sluice-queued-ms,
       0 when it did not queue), "code" (x-sluice-queued-by)}, ...]}
The start is on the system-wide monotonic clock, which the sandbox's rate series also uses.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Stream:
    name: str
    url: str  # the chat completions URL
    key: str
    model: str
    rate: float  # requests a second
    duration: float  # seconds
    delay: float = 0.0  # seconds after the start before the first request


@dataclass
class Plan:
    streams: list[Stream] = field(default_factory=list)
    timeout: float = 90.0  # per request: longer than any queue wait plus Together's retries

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(
            streams=[Stream(**s) for s in data["streams"]],
            timeout=data.get("timeout", 90.0),
        )


def schedule(plan: Plan) -> list[tuple[float, Stream]]:
    """Every request's due moment (seconds after the start), in order."""
    due = [
        (stream.delay + i / stream.rate, stream)
        for stream in plan.streams
        for i in range(round(stream.rate * stream.duration))
    ]
    return sorted(due, key=lambda item: item[0])


async def _one(session: aiohttp.ClientSession, stream: Stream, at: float) -> dict[str, Any]:
    body = {
        "model": stream.model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
    }
    headers = {"authorization": f"Bearer {stream.key}"}
    sent = time.monotonic()
    record: dict[str, Any] = {"stream": stream.name, "at": at, "limited_by": ""}
    try:
        async with session.post(stream.url, json=body, headers=headers) as response:
            await response.read()
            record["status"] = response.status
            record["limited_by"] = response.headers.get("x-sluice-limited-by", "")
            record["queued_ms"] = float(response.headers.get("x-sluice-queued-ms") or 0)
            record["code"] = response.headers.get("x-sluice-queued-by", "")
    except (aiohttp.ClientError, TimeoutError):
        record["status"] = 0  # a transport failure: no answer
    record["latency_ms"] = (time.monotonic() - sent) * 1000
    return record


async def run(plan: Plan) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=plan.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.monotonic()
        tasks = []
        for at, stream in schedule(plan):
            # Sleep to each due moment from the start, so lateness never accumulates.
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            tasks.append(asyncio.ensure_future(_one(session, stream, at)))
        requests = await asyncio.gather(*tasks)
    return {"mono_start": started, "requests": requests}


def main() -> None:
    plan = Plan.from_json(json.loads(sys.stdin.readline()))
    print(json.dumps(asyncio.run(run(plan))), flush=True)


if __name__ == "__main__":
    main()
