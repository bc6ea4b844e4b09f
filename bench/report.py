"""The one table: each figure next to its baseline from the same run, the issue's
targets, and LiteLLM's figures from the issue as a labelled reference (not measured)."""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata

from bench.accuracy import Accuracy
from bench.coalesce import CoalesceResults
from bench.coalesce import table as coalesce_table
from bench.dynamic import (
    A_RATE,
    B_RATE,
    KEY_MAX_WAIT,
    TINY_CAP,
    DynamicResults,
    Isolation,
    Ramp,
)
from bench.latency import Cell
from bench.scaleout import ScaleOut

CONCURRENCIES = (1, 16, 64)
MODES = (("non-stream", False), ("stream", True))
DASH = "–"

# The LiteLLM Proxy 1.108.7 figures: (mode, concurrency) -> figure.
LITELLM_ADDED_P50 = {("non-stream", 1): 12.0, ("non-stream", 16): 103.0}
LITELLM_RPS = {("non-stream", 16): 118.0, ("stream", 16): 54.0}
LITELLM_CPU_MS = 8.4


@dataclass
class Results:
    cells: dict[tuple[str, str, int], Cell] = field(default_factory=dict)  # (target, mode, c)
    scaleout: ScaleOut | None = None  # 1 embedded against 4 web + limiter, alternated
    decisions: dict[str, dict[str, float]] = field(default_factory=dict)  # "memory" | "redis"
    accuracy: dict[str, Accuracy] = field(default_factory=dict)  # case -> figures
    uvicorn: bool = False
    coalesce: CoalesceResults | None = None


@dataclass
class Row:
    measure: str
    sluice: str
    baseline: str = DASH
    sluice_uvicorn: str = DASH
    floor: str = DASH
    floor_uvicorn: str = DASH
    litellm: str = DASH
    target: str = DASH
    met: str = DASH


@dataclass
class DynamicRow:
    measure: str
    sluice: str
    baseline: str = DASH
    target: str = DASH
    met: str = DASH


def num(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _latency_rows(r: Results) -> list[Row]:
    rows = []
    for mode, _ in MODES:
        for c in CONCURRENCIES:
            direct, sluice = r.cells[("direct", mode, c)], r.cells[("sluice", mode, c)]
            floor = r.cells.get(("floor", mode, c))
            uvi = r.cells.get(("floor-uvicorn", mode, c))
            sluice_uvi = r.cells.get(("sluice-uvicorn", mode, c))
            for label, attr in (("p50", "p50_ms"), ("p99", "p99_ms")):
                added = getattr(sluice, attr) - getattr(direct, attr)
                row = Row(
                    f"Added latency {label}, {mode}, c={c} (ms)",
                    num(added),
                    f"direct {num(getattr(direct, attr))}",
                    num(getattr(sluice_uvi, attr) - getattr(direct, attr)) if sluice_uvi else DASH,
                    num(getattr(floor, attr) - getattr(direct, attr)) if floor else DASH,
                    num(getattr(uvi, attr) - getattr(direct, attr)) if uvi else DASH,
                )
                ref = LITELLM_ADDED_P50.get((mode, c)) if label == "p50" else None
                if ref is not None:
                    row.litellm = num(ref, 0)
                if label == "p50" and mode == "non-stream" and c == 1:
                    row.target, row.met = "< 5", verdict(added < 5)
                elif ref is not None and c == 16:
                    row.target, row.met = (
                        f"≤ {num(ref / 3)} (⅓ of reference)",
                        verdict(added <= ref / 3),
                    )
                rows.append(row)
            row = Row(
                f"Throughput, {mode}, c={c} (req/s)",
                num(sluice.rps),
                f"direct {num(direct.rps)}",
                num(sluice_uvi.rps) if sluice_uvi else DASH,
                num(floor.rps) if floor else DASH,
                num(uvi.rps) if uvi else DASH,
            )
            ref = LITELLM_RPS.get((mode, c))
            if ref is not None:
                row.litellm = num(ref, 0)
                row.target, row.met = (
                    f"≥ {num(ref * 2.5, 0)} (2.5× reference)",
                    verdict(sluice.rps >= ref * 2.5),
                )
            rows.append(row)
    return rows


def _cpu_rows(r: Results) -> list[Row]:
    rows = []
    for mode, _ in MODES:
        sluice = r.cells[("sluice", mode, 16)]
        floor = r.cells[("floor", mode, 16)]
        uvi = r.cells.get(("floor-uvicorn", mode, 16))
        sluice_uvi = r.cells.get(("sluice-uvicorn", mode, 16))
        rows.append(
            Row(
                f"Gateway CPU per request, {mode}, c=16 (ms)",
                num(sluice.cpu_ms, 2),
                f"floor {num(floor.cpu_ms, 2)}",
                num(sluice_uvi.cpu_ms, 2) if sluice_uvi else DASH,
                num(floor.cpu_ms, 2),
                num(uvi.cpu_ms, 2) if uvi else DASH,
                num(LITELLM_CPU_MS) if mode == "non-stream" else DASH,
                "≤ floor (daphne)",
                verdict(sluice.cpu_ms <= floor.cpu_ms),
            )
        )
        rows.append(
            Row(
                f"Gateway CPU, Sluice ÷ floor (daphne), {mode}, c=16",
                num(sluice.cpu_ms / floor.cpu_ms, 2),
                "1.00",
                target="≤ 1.00",
                met=verdict(sluice.cpu_ms <= floor.cpu_ms),
            )
        )
    return rows + (_scale_out_rows(r.scaleout) if r.scaleout is not None else [])


def _scale_out_rows(s: ScaleOut) -> list[Row]:
    """Issue 22's comparison: 1 embedded process against 4 web + limiter (+ Redis), CPU of
    every process that serves a call, cells alternated (bench/scaleout.py)."""
    embedded_cpu = s.median("embedded", lambda c: c.cpu_ms)
    four_cpu = s.median("four", lambda c: c.cpu_ms)
    embedded_rps = s.median("embedded", lambda c: c.rps)
    four_rps = s.median("four", lambda c: c.rps)
    parts = ", ".join(f"{name} {num(ms, 2)}" for name, ms in s.four_parts_ms().items())
    messages = ", ".join(f"{name} {num(n, 2)}" for name, n in s.four_per_call().items())
    with_redis = (
        "limiter worker + Redis" if s.redis_counted else "limiter worker (Redis not counted)"
    )
    return [
        Row(
            "Scale-out CPU per request, 1 embedded process, non-stream, c=16 (ms)",
            num(embedded_cpu, 2),
            f"4 web + limiter {num(four_cpu, 2)}",
        ),
        Row(
            f"Scale-out CPU per request, 4 web + {with_redis}, non-stream, c=16 (ms)",
            num(four_cpu, 2),
            f"embedded {num(embedded_cpu, 2)}; by part: {parts}",
        ),
        Row(
            "Scale-out CPU per request, 4 web + limiter ÷ 1 embedded (alternated pairs)",
            num(s.ratio, 2),
            "1.00",
            target="≤ 1.10",
            met=verdict(s.ratio <= 1.10),
        ),
        Row(
            "Scale-out CPU per request, 4 embedded processes, no Redis (the split alone) (ms)",
            num(s.median("split", lambda c: c.cpu_ms), 2),
            f"1 embedded {num(embedded_cpu, 2)}; 4 web + limiter {num(four_cpu, 2)}",
        ),
        Row(
            "Scale-out Redis commands per request (4 web + limiter)",
            messages or DASH,
            "zadd: messages sent; eval/evalsha: send round trips; bzmpop: pops",
        ),
        Row(
            "Scale-out throughput, 1 embedded process, non-stream, c=16 (req/s)",
            num(embedded_rps),
            f"4 web + limiter {num(four_rps)}",
        ),
        Row(
            "Scale-out throughput, 4 web + limiter, non-stream, c=16 (req/s)",
            num(four_rps),
            f"embedded {num(embedded_rps)}",
            target="≥ embedded",
            met=verdict(four_rps >= embedded_rps),
        ),
    ]


def _decision_rows(r: Results) -> list[Row]:
    memory, redis = r.decisions["memory"], r.decisions["redis"]
    return [
        Row(
            "Limiter decisions per second, in-memory layer (one process)",
            num(memory["decisions_per_s"], 0),
            f"round trip p50 {num(memory['round_trip_p50_ms'], 2)} ms; "
            f"CPU {_cpu_per_decision(memory)}",
        ),
        Row(
            "Limiter decisions per second, channels_redis (runworker limiter)",
            num(redis["decisions_per_s"], 0),
            (
                f"in-memory {num(memory['decisions_per_s'], 0)}; "
                f"round trip p50 {num(redis['round_trip_p50_ms'], 2)} ms; "
                f"CPU {_cpu_per_decision(redis)}"
            ),
        ),
    ]


def _cpu_per_decision(figures: dict[str, float]) -> str:
    """The CPU a decision costs: the asking process's, and the limiter worker's apart."""
    web = figures.get("web_cpu_ms_per_decision")
    if web is None:
        return "not measured"
    limiter = figures.get("limiter_cpu_ms_per_decision")
    if limiter is None:
        return f"{num(web, 3)} ms a decision"
    return f"{num(web, 3)} ms web + {num(limiter, 3)} ms limiter a decision"


def _accuracy_rows(r: Results) -> list[Row]:
    rows = []
    for case, a in r.accuracy.items():
        rows.append(
            Row(
                f"Accuracy: {case} ({a.sent} requests, 64 clients)",
                f"reached upstream {a.reached_upstream}; upstream 429s {a.upstream_429}; "
                f"max in any 1 s {a.max_1s}; max in any 60 s {a.max_60s}",
                f"limits {a.limit_1s}/s, {a.limit_60s}/min; Sluice answered {a.answered_200}×200, "
                f"{a.answered_429}×429, {a.other} other, in {a.seconds} s",
                litellm="2× the limit reached upstream across a window boundary"
                if "boundary" in case
                else DASH,
                target="0 upstream 429s, ≤ limit in every window",
                met=verdict(a.held),
            )
        )
    return rows


def table(r: Results) -> str:
    rows = _latency_rows(r) + _cpu_rows(r) + _decision_rows(r) + _accuracy_rows(r)
    header = (
        "| Measure | Sluice under daphne | Baseline (same run) "
        "| Sluice under uvicorn (the default) | Floor: Django + daphne | Floor: Django + uvicorn "
        "| LiteLLM (reference, not measured here) | Target (judged on daphne's column) | Met |"
    )
    lines = [header, "|" + "---|" * 9]
    lines += [
        f"| {x.measure} | {x.sluice} | {x.baseline} | {x.sluice_uvicorn} | {x.floor} "
        f"| {x.floor_uvicorn} | {x.litellm} | {x.target} | {x.met} |"
        for x in rows
    ]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    packages = ", ".join(
        f"{p} {_version(p)}"
        for p in ("django", "daphne", "channels", "channels-redis", "httpx", "aiohttp", "uvicorn")
    )
    return (
        f"Machine: {os.cpu_count()} CPUs (nproc), {_cpu_model()}; "
        f"Python {platform.python_version()}; {packages}. "
        f"Load average (1/5/15 min) before {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' '.join(f'{x:.2f}' for x in load_after)}."
    )


def render(r: Results, *, command: str, machine_line: str, notes: list[str]) -> str:
    tables = [table(r)] + ([coalesce_table(r.coalesce)] if r.coalesce is not None else [])
    return "\n\n".join([f"Command: `{command}`", machine_line, *tables, *notes]) + "\n"


# --- issue 11's scenarios (bench/dynamic.py) ------------------------------------------------
def pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def _latency_unchanged(beside: float, alone: float) -> bool:
    """Within 20% or 5 ms of the run without team A, whichever is wider: the box is shared."""
    return beside <= alone + max(5.0, 0.2 * alone)


def _isolation_rows(i: Isolation) -> list[DynamicRow]:
    b, alone, a = i.beside, i.alone, i.tiny
    return [
        DynamicRow(
            f"Isolation: team B's calls answered 200 ({B_RATE:g}/s on another model for "
            f"{i.seconds:g} s; team A in every other window), beside team A",
            f"{pct(b.success)} ({b.ok} of {b.sent})",
            f"without team A (same run): {pct(alone.success)} ({alone.ok} of {alone.sent})",
            "all succeed",
            verdict(b.ok == b.sent),
        ),
        DynamicRow(
            "Isolation: team B's latency p50 / p95, beside team A (ms)",
            f"{num(b.p50_ms)} / {num(b.p95_ms)}",
            f"without team A (same run): {num(alone.p50_ms)} / {num(alone.p95_ms)}",
            "unchanged (within 20% or 5 ms)",
            verdict(
                _latency_unchanged(b.p50_ms, alone.p50_ms)
                and _latency_unchanged(b.p95_ms, alone.p95_ms)
            ),
        ),
        DynamicRow(
            f"Isolation: Together's 429s on team A's model (capped at {TINY_CAP}/min, "
            f"asked {A_RATE * 60:g}/min)",
            f"{i.tiny_upstream.status_429} of {i.tiny_upstream.sent} sent upstream",
            f"team A answered {a.ok}×200, {a.refused_by_sluice}×429 by Sluice, "
            f"{a.refused_upstream}×429 from Together, {a.other} other; "
            f"Together's 429s on team B's model: {i.other_upstream.status_429}",
            "a handful (≤ 5), before Sluice learned the limit",
            verdict(i.tiny_upstream.status_429 <= 5 and i.other_upstream.status_429 == 0),
        ),
    ]


def _ramp_rows(learned: Ramp, static: Ramp) -> list[DynamicRow]:
    def share(r: Ramp) -> str:
        return f"{pct(r.served_of_allowed)} ({r.served} of {r.allowed:.0f})"

    def tail(r: Ramp) -> str:
        return f"{pct(r.tail_fraction)} ({r.tail_served} of {r.tail_demand})"

    def refused(r: Ramp) -> str:
        return f"{pct(r.upstream_429_fraction)} ({r.upstream.status_429} of {r.upstream.sent})"

    minutes = f"{learned.tail_seconds / 60:g} min"
    return [
        DynamicRow(
            "Dynamic ramp: successful answers ÷ ∫ min(demand, the sandbox's rate)",
            share(learned),
            f"static ceiling: {share(static)}",
            "≥ 85%",
            verdict(learned.served_of_allowed >= 0.85),
        ),
        DynamicRow(
            f"Dynamic ramp: demand answered 200 over the last {minutes}",
            tail(learned),
            f"static ceiling: {tail(static)}",
            "≥ 90%",
            verdict(learned.tail_fraction >= 0.90),
        ),
        DynamicRow(
            "Dynamic ramp: Together's 429s ÷ requests Sluice sent upstream",
            refused(learned),
            f"static ceiling: {refused(static)}",
            "≤ 1%",
            verdict(learned.upstream_429_fraction <= 0.01),
        ),
        DynamicRow(
            f"Dynamic ramp: goodput, answered 200 ÷ demand ({learned.demand} requests)",
            f"{pct(learned.goodput)}; refused by Sluice (queue wait over {KEY_MAX_WAIT:g} s) "
            f"{learned.refused_by_sluice}",
            f"static ceiling: {pct(static.goodput)}; refused by Sluice {static.refused_by_sluice}",
        ),
        DynamicRow(
            "Dynamic ramp: the sandbox's rate at the end (per minute; cap 1,200)",
            num(learned.final_rate, 0),
            f"static ceiling: {num(static.final_rate, 0)}",
        ),
    ]


def dynamic_table(r: DynamicResults) -> str:
    rows = _isolation_rows(r.isolation) if r.isolation else []
    if "learned" in r.ramps and "static" in r.ramps:
        rows += _ramp_rows(r.ramps["learned"], r.ramps["static"])
    lines = ["| Measure | Sluice | Baseline (same run) | Target | Met |", "|" + "---|" * 5]
    lines += [f"| {x.measure} | {x.sluice} | {x.baseline} | {x.target} | {x.met} |" for x in rows]
    return "\n".join(lines)


def render_dynamic(r: DynamicResults, *, command: str, machine_line: str, notes: list[str]) -> str:
    return "\n\n".join([f"Command: `{command}`", machine_line, dynamic_table(r), *notes]) + "\n"
