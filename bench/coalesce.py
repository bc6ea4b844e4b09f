"""Embeddings coalescing (issue 13): merged against unmerged, same servers, same run.

  throughput  64 callers (8 in the tests' tiny run) each sending single-input
              embeddings as fast as answers come back, through an account whose
              embeddings ceiling is the seed's 300/min paced at 250 (burst 1); the
              sandbox enforces Together's 5/s and 300/min on embeddings and answers
              in 20 ms. Once with coalescing (the default), once with
              `x-sluice-coalesce: false`: embedded inputs per second of each, and
              the sandbox's 429s.
  latency     one caller (nothing to merge with) through an unthrottled account:
              p50 with coalescing minus p50 without, against the window + 2 ms.

`python -m bench --only coalesce` runs this alone (a few minutes less than the whole
benchmark); `python -m bench` runs it after the rest.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.latency import percentile
from bench.procs import http_json, run_load
from bench.servers import Ceiling, Sandbox, Sluice

MODEL = "BAAI/bge-base-en-v1.5"
CALLERS = 64  # the benchmark's; the tests' tiny run uses fewer (bench/runner.py TINY)
WINDOW_MS = 5.0  # SLUICE_COALESCE_WINDOW_MS's default
# Together's embeddings limit in the seed's table, as the sandbox enforces it.
SANDBOX_LIMITS = {"embeddings": {"requests_per_second": 5, "requests_per_minute": 300}}
OFF = {"x-sluice-coalesce": "false"}


@dataclass
class CoalesceResults:
    inputs_per_second: dict[str, float]  # "on" | "off" -> embedded inputs per second
    upstream_requests: dict[str, int]
    upstream_429: dict[str, int]
    failed: dict[str, int]  # callers answered other than 200
    p50_ms: dict[str, float]  # concurrency 1, unthrottled account
    window_ms: float
    callers: int = CALLERS

    @property
    def speedup(self) -> float:
        off = self.inputs_per_second["off"]
        return self.inputs_per_second["on"] / off if off else float("inf")

    @property
    def added_ms(self) -> float:
        return self.p50_ms["on"] - self.p50_ms["off"]


PROVISION = """
import json
from limiter.models import EndpointLimit, LimitProfile, Team, UpstreamAccount
from limiter.services import key_issue

OPEN = {"requests_per_minute": 1_000_000, "pace_per_minute": None, "burst": 1000,
        "queue_depth": 1000, "max_queue_wait_seconds": 60}

def profile(name):
    made, _ = LimitProfile.objects.get_or_create(name=name)
    made.limits.all().delete()
    for row in EndpointLimit.objects.filter(profile__name="default"):
        row.pk, row.profile = None, made
        if row.endpoint == "embeddings":
            for field, value in OPEN.items():
                setattr(row, field, value)
        row.save()
    return made

keys = profile("bench-embed-key")  # the callers' own limit is out of the way
open_account, _ = UpstreamAccount.objects.update_or_create(
    name="bench-embed-open", defaults={"profile": profile("bench-embed-open")})
# The seed's 300/min paced at 250, burst 1: the default profile's embeddings row.
ceiling = profile("bench-embed-ceiling")
EndpointLimit.objects.filter(profile=ceiling, endpoint="embeddings").update(
    requests_per_minute=300, pace_per_minute=250, burst=1)
ceiling_account, _ = UpstreamAccount.objects.update_or_create(
    name="bench-embed-ceiling", defaults={"profile": ceiling})
out = {}
for name, account in (("ceiling", ceiling_account), ("open", open_account)):
    team, _ = Team.objects.update_or_create(
        name=f"bench-embed-{name}", defaults={"profile": keys, "upstream": account})
    out[name] = key_issue(team=team).secret
print(json.dumps(out))
"""


def _plan(sluice: Sluice, key: str, *, concurrency: int, duration: float, off: bool) -> dict:
    return {
        "urls": [f"{sluice.urls[0]}/v1/embeddings"],
        "headers": {
            "authorization": f"Bearer {key}",
            "content-type": "application/json",
            **(OFF if off else {}),
        },
        "body": {"model": MODEL, "input": "The quick brown fox jumps over the lazy dog."},
        "concurrency": concurrency,
        "duration": duration,
        "warmup": 0 if concurrency > 1 else 20,
        "timeout": 120.0,
    }


def _stats(sandbox: Sandbox) -> dict[str, Any]:
    return http_json("GET", f"{sandbox.url}/sandbox/stats")


def _throughput(
    sandbox: Sandbox, sluice: Sluice, key: str, duration: float, off: bool, callers: int
) -> tuple[float, int, int, int]:
    sandbox.control({"reset": True, "latency_ms": 20.0, "limits": SANDBOX_LIMITS})
    result = run_load(_plan(sluice, key, concurrency=callers, duration=duration, off=off))
    stats = _stats(sandbox)
    ok = result["statuses"].get("200", 0)
    failed = result["errors"] + sum(n for s, n in result["statuses"].items() if s != "200")
    return (
        ok / result["elapsed"],
        stats["embeddings"]["requests"],
        stats["embeddings"]["status_429"],
        failed,
    )


def _p50(sluice: Sluice, key: str, duration: float, off: bool) -> float:
    result = run_load(_plan(sluice, key, concurrency=1, duration=duration, off=off))
    return percentile(sorted(result["latencies_ms"]), 50)


def run(
    tmp: Path,
    sandbox: Sandbox,
    duration: float,
    repeats: int,
    log: Callable[[str], None],
    callers: int = CALLERS,
) -> CoalesceResults:
    """`duration`: seconds of load per throughput run (the latency runs take the same).
    Every call still queued when it ends is waited for (the unmerged run drains at 250 a
    minute, so `callers` bounds the run's tail)."""
    with Sluice(tmp, sandbox, Ceiling(120, 100, 5.0), provision=PROVISION) as sluice:
        keys = sluice.provided
        figures: dict[str, list[tuple[float, int, int, int]]] = {"on": [], "off": []}
        latency: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(repeats):
            for mode in ("on", "off"):  # interleaved: drift on a shared machine hits both
                figures[mode].append(
                    _throughput(sandbox, sluice, keys["ceiling"], duration, mode == "off", callers)
                )
                log(f"coalesce {mode}: {figures[mode][-1][0]:.1f} inputs/s")
            sandbox.control({"reset": True, "latency_ms": 20.0})
            for mode in ("on", "off"):
                latency[mode].append(_p50(sluice, keys["open"], duration, mode == "off"))
            log(f"coalesce c=1 p50: on {latency['on'][-1]:.1f} ms, off {latency['off'][-1]:.1f} ms")
    return CoalesceResults(
        inputs_per_second={m: statistics.median(f[0] for f in figures[m]) for m in figures},
        upstream_requests={m: sum(f[1] for f in figures[m]) for m in figures},
        upstream_429={m: sum(f[2] for f in figures[m]) for m in figures},
        failed={m: sum(f[3] for f in figures[m]) for m in figures},
        p50_ms={m: statistics.median(latency[m]) for m in latency},
        window_ms=WINDOW_MS,
        callers=callers,
    )


def table(r: CoalesceResults) -> str:
    def verdict(ok: bool) -> str:
        return "yes" if ok else "**no**"

    rows = [
        (
            f"Embedded inputs per second, {r.callers} callers, single inputs, "
            "account 300/min paced at 250",
            f"{r.inputs_per_second['on']:.1f}",
            f"{r.inputs_per_second['off']:.1f}",
            "≥ 10× without",
            f"{r.speedup:.1f}× ({verdict(r.speedup >= 10)})",
        ),
        (
            "Upstream requests / upstream 429s / callers not answered 200",
            f"{r.upstream_requests['on']} / {r.upstream_429['on']} / {r.failed['on']}",
            f"{r.upstream_requests['off']} / {r.upstream_429['off']} / {r.failed['off']}",
            "0 upstream 429s",
            verdict(r.upstream_429["on"] == 0 and r.upstream_429["off"] == 0),
        ),
        (
            "p50 latency, concurrency 1, unthrottled account (ms)",
            f"{r.p50_ms['on']:.1f}",
            f"{r.p50_ms['off']:.1f}",
            f"added ≤ window {r.window_ms:g} + 2 ms",
            f"added {r.added_ms:.1f} ms ({verdict(r.added_ms <= r.window_ms + 2)})",
        ),
    ]
    lines = [
        "| Embeddings coalescing | With coalescing | Without (same run) | Target | Met |",
        "|---|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
    ]
    return "\n".join(lines)
