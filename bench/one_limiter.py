"""What one limiter process serves: `python -m bench.one_limiter [--redis-url URL]`.

One scale-out deployment (one web process, the limiter worker, Redis, PostgreSQL) on
the sandbox upstream, in one run:
  1. the web process's throughput, non-streaming chat from 16 callers (no limits in reach);
  2. the channel-layer messages a call costs, counted at Redis (MONITOR on the
     deployment's own database) over a number of calls, by message type;
  3. the limiter's decisions per second over Redis and in memory (bench/decisions.py),
     and the messages one of those decisions costs, counted the same way.
From these: the calls a second one limiter can take (its decisions a second, scaled by
a decision's messages over a call's), and how many web processes at the measured
throughput that is. docs/scaling.md quotes the result.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import decisions
from bench.latency import MODEL
from bench.runner import ACCOUNT_PACE, ACCOUNT_RPM, CLIENTS, load_average
from bench.servers import Ceiling, Sandbox, ScaleOutServices, Sluice

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
MESSAGE_TYPE = re.compile(rb"(limiter\.[a-z_]+|live\.[a-z]+|config\.[a-z]+|models\.[a-z]+)")


class Tap:
    """Counts channel-layer sends on one Redis database by message type (MONITOR)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.db = self.client.connection_pool.connection_kwargs.get("db", 0)
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Tap:
        self._thread.start()
        time.sleep(0.2)  # MONITOR is on before the load starts
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with self.client.monitor() as monitor:
            for command in monitor.listen():
                if self._stop.is_set():
                    return
                if int(command.get("db", -1)) != self.db:
                    continue
                text = command["command"]
                if not text.upper().startswith("ZADD"):
                    # A send is one ZADD: channels_redis's own, or inside Sluice's send
                    # script (MONITOR shows a script's commands, not only the EVALSHA).
                    continue
                found = MESSAGE_TYPE.search(text.encode())
                self.counts[found.group(1).decode() if found else "other"] += 1


async def _calls(url: str, key: str, count: int, concurrency: int) -> tuple[int, float]:
    """`count` calls from `concurrency` callers; returns (answered 200, seconds)."""
    left, ok = [count], [0]
    headers = {"authorization": f"Bearer {key}"}

    async def caller(client: httpx.AsyncClient) -> None:
        while left[0] > 0:
            left[0] -= 1
            answer = await client.post(f"{url}/v1/chat/completions", json=BODY, headers=headers)
            ok[0] += answer.status_code == 200

    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(caller(client) for _ in range(concurrency)))
    return ok[0], time.monotonic() - started


def measure(redis_url: str, postgres_url: str, calls: int = 400) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    ceiling = Ceiling(ACCOUNT_RPM, ACCOUNT_PACE, 5.0)
    with tempfile.TemporaryDirectory(prefix="sluice-one-limiter-") as tmp:
        with (
            Sandbox(Path(tmp), latency_ms=20) as sandbox,
            ScaleOutServices(redis_url, postgres_url) as services,
            Sluice(
                Path(tmp),
                sandbox,
                ceiling,
                web=1,
                redis_url=services.redis_url,
                database_url=services.database_url,
            ) as sluice,
        ):
            url, key = sluice.urls[0], sluice.keys["open"]
            asyncio.run(_calls(url, key, 100, 16))  # warm up
            ok, seconds = asyncio.run(_calls(url, key, calls, 16))
            figures["web_calls_per_s"], figures["web_ok"] = ok / seconds, ok
            with Tap(redis_url) as tap:
                ok, _ = asyncio.run(_calls(url, key, calls, 16))
            figures["call_messages"] = dict(tap.counts)
            figures["tapped_calls"], figures["tapped_ok"] = calls, ok  # a 503 asked too
            figures["redis"] = decisions.run(sluice.env, CLIENTS, 3.0)
            with Tap(redis_url) as tap:  # each of its decisions is one acquire
                decisions.run(sluice.env, CLIENTS, 1.0)
            figures["decision_messages"] = dict(tap.counts)
            memory_env = {k: v for k, v in sluice.env.items() if k != "REDIS_URL"}
            figures["memory"] = decisions.run(memory_env, CLIENTS, 3.0)
        # Calls asked again because their grant came too late (limiter/protocol/client.py):
        # the web process logs each one (over the whole run, warm-up included).
        figures["late_grants"] = sum(
            log.read_text(errors="replace").count("asking again")
            for log in Path(tmp).glob("serve-*.log")
        )
    return figures


def summary(f: dict[str, Any]) -> str:
    """The figures as docs/scaling.md quotes them."""
    calls = f["call_messages"]
    per_call = sum(calls.values()) / max(1, f["tapped_calls"])
    decided = f["decision_messages"]
    per_decision = (decided.get("limiter.acquire", 0) + decided.get("limiter.decision", 0)) / max(
        1, decided.get("limiter.acquire", 0)
    )
    served = f["redis"]["decisions_per_s"] * per_decision / per_call
    before, after = f["load_average"]
    return "\n".join(
        [
            f"- web process (1 web + limiter worker), c=16: {f['web_calls_per_s']:.0f} calls/s",
            f"- channel-layer messages per call: {per_call:.2f} "
            f"({calls.get('limiter.acquire', 0) / max(1, f['tapped_calls']):.2f} acquires, "
            f"{calls.get('limiter.decision', 0) / max(1, f['tapped_calls']):.2f} answers, "
            f"{calls.get('limiter.release', 0) / max(1, f['tapped_calls']):.2f} releases, "
            f"{calls.get('limiter.upstream', 0) / max(1, f['tapped_calls']):.3f} upstream reports)",
            f"- messages per decision of bench/decisions.py: {per_decision:.2f}",
            f"- grants that came too late and were asked again (whole run): {f['late_grants']}",
            f"- decisions/s over Redis {f['redis']['decisions_per_s']:.0f}, "
            f"in memory {f['memory']['decisions_per_s']:.0f}",
            f"- calls/s one limiter over Redis takes: {served:.0f}, "
            f"= {served / f['web_calls_per_s']:.1f} web processes at the rate measured above",
            f"- load average before {before[0]:.1f}, after {after[0]:.1f}; "
            f"run {f['run_seconds']:.0f} s",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.one_limiter")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--postgres-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    started, load_before = time.monotonic(), load_average()
    figures = measure(args.redis_url, args.postgres_url)
    figures["run_seconds"] = time.monotonic() - started
    figures["load_average"] = (load_before, load_average())
    print(figures)
    print(summary(figures))


if __name__ == "__main__":
    main()
