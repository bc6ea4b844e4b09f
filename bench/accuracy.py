"""Accuracy: bursts of 3x the limit from 64 clients, judged by the upstream itself.

The sandbox enforces the same ceiling Sluice's default upstream account holds, with
Together's sliding 1 s and 60 s windows, and records when it admitted each request;
its stats give what reached it, its own 429s, and the most it admitted in any sliding
window. A case with `bursts=2` fires the second burst as soon as the first one's
answers are in: the moment Sluice's bucket has drained and reopens, where a
fixed-window limiter lets a second window's allowance through back to back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from bench.latency import Target, plan
from bench.procs import run_load
from bench.servers import Ceiling, Sandbox


@dataclass
class Accuracy:
    sent: int
    answered_200: int
    answered_429: int  # by Sluice
    other: int  # anything else, transport errors included
    reached_upstream: int  # the sandbox's ok count
    upstream_429: int
    max_1s: int
    max_60s: int
    limit_1s: int
    limit_60s: int
    seconds: float

    @property
    def held(self) -> bool:
        return (
            self.upstream_429 == 0
            and self.max_1s <= self.limit_1s
            and self.max_60s <= self.limit_60s
        )


def sandbox_limits(ceiling: Ceiling) -> dict[str, int]:
    """Together's per-second and per-minute windows for the account's per-minute limit."""
    return {
        "requests_per_second": max(1, round(ceiling.account_rpm / 60)),
        "requests_per_minute": ceiling.account_rpm,
    }


def run_case(
    sandbox: Sandbox, target: Target, ceiling: Ceiling, *, clients: int, bursts: int
) -> Accuracy:
    limits = sandbox_limits(ceiling)
    # Whatever the previous case queued has been answered or timed out by now.
    time.sleep(ceiling.key_max_wait + 1)
    sandbox.control({"reset": True})
    sandbox.control({"limits": {"chat": limits}})
    per_burst = 3 * ceiling.account_rpm
    statuses: dict[str, int] = {}
    errors = 0
    started = time.monotonic()
    for _ in range(bursts):
        result = run_load(
            plan(
                target,
                concurrency=clients,
                stream=False,
                warmup=0,
                requests=per_burst,
                timeout=ceiling.key_max_wait + 30,
            )
        )
        errors += result["errors"]
        for status, n in result["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    seconds = time.monotonic() - started
    stats = sandbox.chat_stats()
    sandbox.control({"reset": True})  # unlimited again for whatever runs next
    return Accuracy(
        sent=per_burst * bursts,
        answered_200=statuses.get("200", 0),
        answered_429=statuses.get("429", 0),
        other=errors + sum(n for s, n in statuses.items() if s not in ("200", "429")),
        reached_upstream=stats["ok"],
        upstream_429=stats["status_429"],
        max_1s=stats["max_admitted_in_any_1s_window"],
        max_60s=stats["max_admitted_in_any_60s_window"],
        limit_1s=limits["requests_per_second"],
        limit_60s=limits["requests_per_minute"],
        seconds=math.ceil(seconds * 10) / 10,
    )
