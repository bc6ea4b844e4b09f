"""Limiter decisions per second: acquire + release through `LimiterClient`, as a web
process does, against the `LimiterConsumer` on the `limiter` channel.

Run as a child process (`python -m bench.decisions '{"concurrency": 64, ...}'`)
with the deployment's environment: without REDIS_URL the consumer runs in this
process over the in-memory layer (the embedded mode); with REDIS_URL it is the
separate `manage.py runworker limiter` the parent started. Prints one JSON line.

Besides decisions a second, the CPU each decision costs: this process's (the web side)
and, given the limiter worker's pid, the worker's. On a machine shared with other work
the rate falls with the CPU other processes take; the CPU per decision much less so.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

# Far above the load, so every acquire is granted: this measures the hop, not queueing.


def _key() -> Any:
    from limiter.gateway.keys import KeyInfo
    from limiter.upstream import Target

    return KeyInfo(
        key_id="bench-key",
        prefix="sk-sluice-bench",
        secret_hash="",
        team_id=0,
        team_name="bench",
        paused=False,
        expires_at=None,
        account_id="bench-account",
        account_name="bench",
        target=Target("1", "together", "http://127.0.0.1:9/v1", ""),
        config_version=0,
        fallbacks={},
        max_batch_requests=None,
    )


async def _caller(client: Any, key: Any, deadline: float, round_trips: list[float]) -> None:
    while time.monotonic() < deadline:
        started = time.perf_counter()
        grant = await client.acquire(
            key=key, endpoint="chat", tokens=0, request_id=uuid.uuid4().hex
        )
        round_trips.append(time.perf_counter() - started)
        client.release(grant.lease, None)


async def measure(concurrency: int, duration: float, worker: int = 0) -> dict[str, float]:
    from django.conf import settings

    from bench.procs import cpu_seconds
    from limiter import serving
    from limiter.protocol import client as limiter_client

    client = limiter_client.LimiterClient()
    await client.start()
    if settings.SLUICE_EMBEDDED_LIMITER:
        limiter_client.spawn(serving.run_embedded_limiter())
    await client.ping(within=10.0)  # the limiter is up (and, over Redis, reachable)
    key = _key()
    warm: list[float] = []
    await asyncio.gather(
        *(_caller(client, key, time.monotonic() + 0.3, warm) for _ in range(concurrency))
    )
    round_trips: list[float] = []
    started, cpu = time.monotonic(), time.process_time()
    worker_cpu = cpu_seconds([worker]) if worker else 0.0
    await asyncio.gather(
        *(_caller(client, key, started + duration, round_trips) for _ in range(concurrency))
    )
    elapsed = time.monotonic() - started
    cpu, worker_cpu = time.process_time() - cpu, cpu_seconds([worker]) - worker_cpu if worker else 0
    decided = max(len(round_trips), 1)
    round_trips.sort()
    return {
        "decisions_per_s": len(round_trips) / elapsed,
        "web_cpu_ms_per_decision": cpu * 1000 / decided,
        **({"limiter_cpu_ms_per_decision": worker_cpu * 1000 / decided} if worker else {}),
        "round_trip_p50_ms": round_trips[len(round_trips) // 2] * 1000
        if round_trips
        else float("nan"),
    }


def run(
    env: dict[str, str], concurrency: int, duration: float, worker: int = 0
) -> dict[str, float]:
    """Measure in a child process with `env` (the parent side); `worker`: the limiter
    worker's pid, when it runs apart."""
    from bench.procs import run_python

    options = {"concurrency": concurrency, "duration": duration, "worker": worker}
    code, stdout, stderr = run_python(
        ["-m", "bench.decisions", json.dumps(options)],
        # Decisions a second, not their timeliness: a grant that comes back late on a
        # saturated machine is still a decision, not one to hand back and ask again.
        {**env, "SLUICE_GRANT_MAX_AGE": "30"},
        timeout=duration + 60,
    )
    if code:
        raise RuntimeError(f"decisions benchmark failed:\n{stdout}\n{stderr}")
    return json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    import django

    django.setup()
    options = json.loads(sys.argv[1])
    figures = measure(options["concurrency"], options["duration"], options.get("worker", 0))
    print(json.dumps(asyncio.run(figures)), flush=True)


if __name__ == "__main__":
    main()
