"""Latency, throughput and CPU per request of one target at one concurrency.

A target is anything that answers POST /v1/chat/completions: the sandbox itself (the
baseline), Sluice, the floor. CPU is read from /proc for the target's processes just
around the measured phase (after the load generator's warm-up), so it is the CPU the
server spent on exactly the requests counted.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from bench.procs import cpu_seconds, run_load

MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


@dataclass
class Target:
    name: str
    base_urls: list[str]  # ".../v1" of each process; clients are spread over them
    key: str
    pids: Callable[[], list[int]]  # whose CPU counts as this target's


@dataclass
class Cell:
    p50_ms: float
    p99_ms: float
    rps: float
    cpu_ms: float  # server CPU per successful request
    failed: int  # non-2xx answers and transport errors


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def plan(
    target: Target,
    *,
    concurrency: int,
    stream: bool,
    warmup: int,
    duration: float | None = None,
    requests: int | None = None,
    timeout: float = 60.0,
) -> dict:
    """A load-generator plan (see loadgen.Plan) for chat completions against `target`."""
    return {
        "urls": [f"{url}/chat/completions" for url in target.base_urls],
        "headers": {"authorization": f"Bearer {target.key}", "content-type": "application/json"},
        "body": {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 16,
            "stream": stream,
        },
        "concurrency": concurrency,
        "duration": duration,
        "requests": requests,
        "warmup": warmup,
        "timeout": timeout,
    }


def measure_once(
    target: Target, *, concurrency: int, stream: bool, duration: float, warmup: int
) -> Cell:
    cpu: dict[str, float] = {}
    result = run_load(
        plan(target, concurrency=concurrency, stream=stream, duration=duration, warmup=warmup),
        around=lambda: cpu.__setitem__("before", cpu_seconds(target.pids())),
        after=lambda: cpu.__setitem__("after", cpu_seconds(target.pids())),
    )
    latencies = sorted(result["latencies_ms"])
    ok = len(latencies)
    failed = result["errors"] + sum(
        n for status, n in result["statuses"].items() if not status.startswith("2")
    )
    return Cell(
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        rps=ok / result["elapsed"],
        cpu_ms=(cpu["after"] - cpu["before"]) * 1000 / ok if ok else float("nan"),
        failed=failed,
    )


def median_cell(cells: list[Cell]) -> Cell:
    """Each figure's median over repeated runs."""
    return Cell(
        p50_ms=statistics.median(c.p50_ms for c in cells),
        p99_ms=statistics.median(c.p99_ms for c in cells),
        rps=statistics.median(c.rps for c in cells),
        cpu_ms=statistics.median(c.cpu_ms for c in cells),
        failed=sum(c.failed for c in cells),
    )
