"""Issue 11's scenarios: Together's per-model, dynamic limits, played by the sandbox.

`python -m bench --only dynamic` runs these alone; `make bench` runs them after the gateway's.
Each figure stands beside its baseline from the same run:

1. **Isolation.** One account, two teams. Team A calls a model the sandbox caps at 6 a minute
   (a per-model cap, as Together's free and image models) at 10x that; team B calls another
   model within its limit, throughout. Team A calls only in alternate windows (off first, so
   Sluice meets A's model knowing nothing of it), and B's calls are judged by the window they
   were due in: beside A, or without A. Interleaving puts the two in the same minutes of a
   shared machine, so its drift hits both alike. Together's 429s on A's model are the
   sandbox's own count.
2. **Dynamic ramp.** The sandbox's rate starts at its floor (60/min) and follows twice the
   successful rate of the last 60 s, up to 1,200/min; demand is open loop, 10 requests a
   second for 4 minutes. What was "both demanded and allowed" is the integral over the run of
   min(demand, the sandbox's rate at each second), from the sandbox's own rate series. Run
   twice on fresh deployments: with learned ceilings (the account's profile caps each model at
   1,200/min, Together's cap), and with the static ceiling of before (600/min paced at 500,
   `SLUICE_UPSTREAM_LEARN=0`).
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.latency import MODEL, percentile
from bench.procs import PYTHON, ROOT
from bench.servers import Ceiling, Sandbox, Sluice

UPSTREAM_LATENCY_MS = 20.0
KEY_MAX_WAIT = 5.0  # a request waits in Sluice's queue at most this long, then gets a 429

# Isolation: B's model keeps a floor of 600/min, so 5 a second is within its limit; A's model
# (a glob, as Together's "-Free" models) is capped at 6 a minute and asked 10x that.
TINY_MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo-Free"
TINY_CAP = 6
ISOLATION_LIMITS: dict[str, Any] = {
    "floor_per_minute": 600,
    "cap_per_minute": 1200,
    "window_seconds": 60.0,
    "model_caps": {"*-Free": TINY_CAP},
}
A_RATE = 10 * TINY_CAP / 60  # requests a second: 10x the tiny model's limit
B_RATE = 5.0

# The ramp: the numbers.
RAMP_LIMITS: dict[str, Any] = {
    "floor_per_minute": 60,
    "cap_per_minute": 1200,
    "window_seconds": 60.0,
}
DEMAND = 10.0  # requests a second
LEARNED = Ceiling(account_rpm=1200, account_pace=1200, key_max_wait=KEY_MAX_WAIT)
STATIC = Ceiling(account_rpm=600, account_pace=500, key_max_wait=KEY_MAX_WAIT)


@dataclass(frozen=True)
class DynamicSize:
    isolation_seconds: float  # team B's whole run; team A calls in every other window of it
    isolation_windows: int  # windows with team A (as many without, each first)
    ramp_seconds: float  # each of the two ramps
    tail_seconds: float  # "the last 2 minutes" of a ramp


FULL = DynamicSize(
    isolation_seconds=80.0, isolation_windows=4, ramp_seconds=240.0, tail_seconds=120.0
)
QUICK = DynamicSize(
    isolation_seconds=30.0, isolation_windows=3, ramp_seconds=90.0, tail_seconds=45.0
)
TINY = DynamicSize(isolation_seconds=4.0, isolation_windows=2, ramp_seconds=4.0, tail_seconds=2.0)


# --- figures --------------------------------------------------------------------------------
@dataclass
class Calls:
    """One stream of open-loop calls, as its caller saw them."""

    sent: int
    ok: int
    refused_by_sluice: int  # 429 x-sluice-limited-by: gateway (queue full or too long a wait)
    refused_upstream: int  # 429 x-sluice-limited-by: upstream (Together's, after retries)
    other: int  # any other status, transport failures included
    p50_ms: float  # of the successful calls
    p95_ms: float

    @property
    def success(self) -> float:
        return self.ok / self.sent if self.sent else math.nan


def calls(records: list[dict[str, Any]], stream: str) -> Calls:
    mine = [r for r in records if r["stream"] == stream]
    ok = sorted(r["latency_ms"] for r in mine if r["status"] == 200)
    limited = [r for r in mine if r["status"] == 429]
    by_sluice = sum(r["limited_by"] == "gateway" for r in limited)
    upstream = sum(r["limited_by"] == "upstream" for r in limited)
    return Calls(
        sent=len(mine),
        ok=len(ok),
        refused_by_sluice=by_sluice,
        refused_upstream=upstream,
        other=len(mine) - len(ok) - by_sluice - upstream,
        p50_ms=percentile(ok, 50),
        p95_ms=percentile(ok, 95),
    )


@dataclass
class Upstream:
    """What the sandbox saw of one model: requests that reached it and its 429s."""

    ok: int
    status_429: int
    status_503: int

    @property
    def sent(self) -> int:
        return self.ok + self.status_429 + self.status_503

    @classmethod
    def of(cls, stats: dict[str, Any], model: str) -> Upstream:
        model_stats = (stats.get("dynamic") or {}).get("models", {}).get(model)
        if model_stats is None:  # nothing of ours reached it
            return cls(0, 0, 0)
        return cls(model_stats["ok"], model_stats["status_429"], model_stats["status_503"])


def allowed(
    series: list[list[float]], *, start: float, seconds: float, demand: float, floor: float
) -> float:
    """Requests both demanded and allowed: the integral over [start, start + seconds) of
    min(demand a second, the sandbox's rate a second), from its per-second samples
    `[t, rate_per_minute, ...]` (the rate in force over [t, t + 1)). Time before the
    model's first sample is at the floor, where every model starts."""
    end = start + seconds
    total = covered = 0.0
    for sample in series:
        t, rate = sample[0], sample[1]
        overlap = min(t + 1, end) - max(t, start)
        if overlap > 0:
            total += min(demand, rate / 60) * overlap
            covered += overlap
    return total + min(demand, floor / 60) * max(0.0, seconds - covered)


@dataclass
class Ramp:
    label: str
    seconds: float
    tail_seconds: float
    demand: int
    served: int  # successful answers
    allowed: float  # the integral of min(demand, the sandbox's rate)
    tail_demand: int
    tail_served: int
    refused_by_sluice: int
    upstream: Upstream
    final_rate: float  # the sandbox's rate at the end, per minute

    @property
    def served_of_allowed(self) -> float:
        return self.served / self.allowed if self.allowed else math.nan

    @property
    def tail_fraction(self) -> float:
        return self.tail_served / self.tail_demand if self.tail_demand else math.nan

    @property
    def goodput(self) -> float:
        return self.served / self.demand if self.demand else math.nan

    @property
    def upstream_429_fraction(self) -> float:
        sent = self.upstream.sent
        return self.upstream.status_429 / sent if sent else math.nan


def ramp_figures(
    label: str,
    result: dict[str, Any],
    stats: dict[str, Any],
    *,
    seconds: float,
    tail_seconds: float,
) -> Ramp:
    records = result["requests"]
    model = stats["dynamic"]["models"].get(MODEL, {"series": [], "rate_per_minute": 0})
    tail = [r for r in records if r["at"] >= seconds - tail_seconds]
    return Ramp(
        label=label,
        seconds=seconds,
        tail_seconds=tail_seconds,
        demand=len(records),
        served=sum(r["status"] == 200 for r in records),
        allowed=allowed(
            model["series"],
            start=result["mono_start"],
            seconds=seconds,
            demand=DEMAND,
            floor=RAMP_LIMITS["floor_per_minute"],
        ),
        tail_demand=len(tail),
        tail_served=sum(r["status"] == 200 for r in tail),
        refused_by_sluice=calls(records, "ramp").refused_by_sluice,
        upstream=Upstream.of(stats, MODEL),
        final_rate=model["rate_per_minute"],
    )


@dataclass
class Isolation:
    seconds: float
    alone: Calls  # team B without team A
    beside: Calls  # team B beside team A
    tiny: Calls  # team A
    tiny_upstream: Upstream
    other_upstream: Upstream  # B's model, in the run beside A


@dataclass
class DynamicResults:
    size: DynamicSize
    isolation: Isolation | None = None
    ramps: dict[str, Ramp] = field(default_factory=dict)  # "learned" | "static"


# --- running --------------------------------------------------------------------------------
def run_openloop(streams: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """One open-loop run in its own process (bench/openloop.py); its answer, parsed."""
    done = subprocess.run(
        [PYTHON, "-m", "bench.openloop"],
        cwd=ROOT,
        input=json.dumps({"streams": streams}) + "\n",
        capture_output=True,
        text=True,
        timeout=seconds + 180,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _stream(
    name: str, sluice: Sluice, key: str, model: str, rate: float, seconds: float
) -> dict[str, Any]:
    return {
        "name": name,
        "url": f"{sluice.urls[0]}/v1/chat/completions",
        "key": sluice.keys[key],
        "model": model,
        "rate": rate,
        "duration": seconds,
    }


def a_windows(size: DynamicSize) -> list[tuple[float, float]]:
    """Team A's windows, [start, end) in seconds from the start: every other one, from the
    second (the first is without A)."""
    length = size.isolation_seconds / (2 * size.isolation_windows)
    return [((2 * i + 1) * length, (2 * i + 2) * length) for i in range(size.isolation_windows)]


def split_by_windows(
    records: list[dict[str, Any]], windows: list[tuple[float, float]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(due inside a window, due outside every window)."""
    inside = [r for r in records if any(start <= r["at"] < end for start, end in windows)]
    outside = [r for r in records if not any(start <= r["at"] < end for start, end in windows)]
    return inside, outside


def _isolation(
    sandbox: Sandbox, tmp: Path, size: DynamicSize, log: Callable[[str], None]
) -> Isolation:
    seconds = size.isolation_seconds
    windows = a_windows(size)
    tmp.mkdir()
    with Sluice(tmp, sandbox, LEARNED) as sluice:
        sandbox.control({"reset": True, "dynamic": ISOLATION_LIMITS, "extra_models": [TINY_MODEL]})
        streams = [_stream("b", sluice, "other", MODEL, B_RATE, seconds)]
        for start, end in windows:
            a = _stream("a", sluice, "burst", TINY_MODEL, A_RATE, end - start)
            streams.append({**a, "delay": start})
        result = run_openloop(streams, seconds)
        stats = sandbox.stats()
    b_records = [r for r in result["requests"] if r["stream"] == "b"]
    beside, alone = split_by_windows(b_records, windows)
    isolation = Isolation(
        seconds=seconds,
        alone=calls(alone, "b"),
        beside=calls(beside, "b"),
        tiny=calls(result["requests"], "a"),
        tiny_upstream=Upstream.of(stats, TINY_MODEL),
        other_upstream=Upstream.of(stats, MODEL),
    )
    log(f"isolation: team B without A {isolation.alone}, beside A {isolation.beside}")
    return isolation


def _ramp(
    sandbox: Sandbox,
    tmp: Path,
    label: str,
    ceiling: Ceiling,
    settings: dict[str, str],
    size: DynamicSize,
    log: Callable[[str], None],
) -> Ramp:
    tmp.mkdir()
    # A fresh deployment: nothing learned from an earlier run.
    with Sluice(tmp, sandbox, ceiling, settings=settings) as sluice:
        sandbox.control({"reset": True, "dynamic": RAMP_LIMITS})
        log(f"ramp ({label}): {DEMAND:g}/s for {size.ramp_seconds:g} s")
        result = run_openloop(
            [_stream("ramp", sluice, "burst", MODEL, DEMAND, size.ramp_seconds)],
            size.ramp_seconds,
        )
        stats = sandbox.stats()
    figures = ramp_figures(
        label, result, stats, seconds=size.ramp_seconds, tail_seconds=size.tail_seconds
    )
    log(
        f"ramp ({label}): served {figures.served} of {figures.allowed:.0f} allowed, "
        f"upstream 429s {figures.upstream.status_429} of {figures.upstream.sent}"
    )
    return figures


def run(size: DynamicSize, tmp: Path, log: Callable[[str], None]) -> DynamicResults:
    results = DynamicResults(size)
    with Sandbox(tmp, UPSTREAM_LATENCY_MS) as sandbox:
        log("dynamic: isolation")
        results.isolation = _isolation(sandbox, tmp / "isolation", size, log)
        results.ramps["learned"] = _ramp(
            sandbox, tmp / "ramp-learned", "learned", LEARNED, {}, size, log
        )
        results.ramps["static"] = _ramp(
            sandbox,
            tmp / "ramp-static",
            "static",
            STATIC,
            {"SLUICE_UPSTREAM_LEARN": "0"},
            size,
            log,
        )
    return results
