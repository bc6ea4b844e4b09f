"""The load generator: N concurrent aiohttp workers, M requests or T seconds.

Runs as its own process (`python -m bench.loadgen`), so the CPU it burns is
never charged to the server being measured, and imports nothing from Django. The
protocol on stdin/stdout is line-based JSON, so the parent can read the server's CPU
counters exactly around the measured phase:

  parent -> {"urls": [...], "concurrency": 16, "duration": 5, ...}   (one line)
  child  -> {"ready": true}          after the warm-up requests
  parent -> go                       (any line)
  child  -> {"latencies_ms": [...], "statuses": {...}, "elapsed": s, ...}

and again with the next plan, until stdin closes: a run reuses one child for its cells
(procs.reused_load_generator), each plan with a session and connections of its own.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

DONE = b"data: [DONE]"


@dataclass
class Plan:
    urls: list[str]  # full URLs; worker i uses urls[i % len(urls)]
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    concurrency: int = 1
    requests: int | None = None  # total across workers; None: run for `duration`
    duration: float | None = None
    warmup: int = 0
    timeout: float = 60.0


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)  # successful (2xx) requests only
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0  # transport failures, or a stream that ended without [DONE]

    def count(self, status: int | str) -> None:
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1


async def _one(
    session: aiohttp.ClientSession, url: str, plan: Plan, payload: bytes
) -> tuple[int, bool]:
    """Send one request and read the whole answer; returns (status, complete)."""
    async with session.post(url, data=payload, headers=plan.headers) as response:
        if not plan.body.get("stream") or response.status != 200:
            await response.read()
            return response.status, True
        # A stream counts only when it reached [DONE], as an SDK would require.
        async for line in response.content:
            if line.strip() == DONE:
                await response.read()
                return response.status, True
        return response.status, False


async def _worker(
    index: int,
    session: aiohttp.ClientSession,
    plan: Plan,
    payload: bytes,
    budget: list[int],
    deadline: float | None,
    tally: Tally,
) -> None:
    url = plan.urls[index % len(plan.urls)]
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            return
        if plan.requests is not None:
            if budget[0] <= 0:
                return
            budget[0] -= 1  # single-threaded loop: no lock needed
        started = time.perf_counter()
        try:
            status, complete = await _one(session, url, plan, payload)
        except (aiohttp.ClientError, TimeoutError):
            tally.errors += 1
            continue
        if not complete:
            tally.errors += 1
            continue
        tally.count(status)
        if 200 <= status < 300:
            tally.latencies_ms.append((time.perf_counter() - started) * 1000)


async def _phase(
    session: aiohttp.ClientSession,
    plan: Plan,
    payload: bytes,
    requests: int | None,
    duration: float | None,
) -> tuple[Tally, float]:
    tally = Tally()
    budget = [requests if requests is not None else 0]
    phase = Plan(**{**plan.__dict__, "requests": requests})
    deadline = time.monotonic() + duration if duration is not None else None
    started = time.monotonic()
    await asyncio.gather(
        *(
            _worker(i, session, phase, payload, budget, deadline, tally)
            for i in range(plan.concurrency)
        )
    )
    return tally, time.monotonic() - started


async def run(plan: Plan, wait_for_go: bool) -> dict[str, Any]:
    payload = json.dumps(plan.body).encode()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=plan.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if plan.warmup:
            # Opens the keep-alive connections and warms the server's caches.
            await _phase(session, plan, payload, max(plan.warmup, plan.concurrency), None)
        if wait_for_go:
            print(json.dumps({"ready": True}), flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        wall_start = time.time()
        tally, elapsed = await _phase(session, plan, payload, plan.requests, plan.duration)
    return {
        "latencies_ms": tally.latencies_ms,
        "statuses": tally.statuses,
        "errors": tally.errors,
        "elapsed": elapsed,
        "wall_start": wall_start,
    }


def main() -> None:
    # Plans one after another, until the parent closes stdin (bench/procs.py LoadGenerator).
    while line := sys.stdin.readline():
        if not line.strip():
            continue
        plan = Plan(**json.loads(line))
        if plan.requests is None and plan.duration is None:
            raise SystemExit("a plan needs `requests` or `duration`")
        result = asyncio.run(run(plan, wait_for_go=True))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
