"""Issue 21's third shares scenario: the same teams with Together's ceiling moving.

The sandbox's dynamic mode moves the model's rate with the organisation's recent successes
(twice the successful rate over a 30 s window, from a floor of 180 a minute up to 420); at
60 s its cap drops to 240 a minute, as a ceiling Together lowers. Sluice learns each move
from the answers' headers and paces at it less its margin (10%, narrowing to 2% while
clean). Team prod (share 60%, critical) asks 150 a minute open loop throughout; dev floods
(8 a second); exp asks 100 a minute. After the first 30 s, in every 10 s window prod should
get at least min(its demand, 60% of the ceiling in force). The ceiling in force is read two
ways from the sandbox's per-second series of its rate: the sandbox's own rate (the issue's
words), and what Sluice can surely use of it (the rate less Sluice's configured, widest
margin, 10%). The baseline is the same run with shares off.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from bench.dynamic import Upstream, run_openloop
from bench.latency import MODEL
from bench.procs import manage
from bench.servers import Ceiling, Sandbox, Sluice

FLOOR, TOP, DROPPED = 180, 420, 240  # the sandbox's rate a minute: floor, cap, cap from DROP_AT
LIMITS: dict[str, Any] = {
    "floor_per_minute": FLOOR,
    "cap_per_minute": TOP,
    "window_seconds": 30.0,
    "model_caps": {MODEL: TOP},
}
DROP_AT = 60.0
SECONDS = 90.0
SETTLE = 30.0  # the windows are checked after this
WINDOW = 10.0
SHARE = 0.6
MARGIN = 0.1  # SLUICE_UPSTREAM_MARGIN's default: the widest margin Sluice paces under
# The account's profile allows the sandbox's highest rate: Sluice follows what it learns.
CEILING = Ceiling(account_rpm=TOP, account_pace=TOP, key_max_wait=30.0)
PROD_RATE, DEV_RATE, EXP_RATE = 150 / 60, 8.0, 100 / 60


def ceiling_in_force(series: list[list[float]], start: float, end: float) -> float:
    """Requests the sandbox allowed over [start, end) (monotonic seconds): the integral of
    its rate in force, from its per-second samples `[t, rate_per_minute, ...]`."""
    total = 0.0
    for sample in series:
        t, rate = sample[0], sample[1]
        overlap = min(t + 1, end) - max(t, start)
        if overlap > 0:
            total += rate / 60 * overlap
    return total


def seconds_429(result: dict[str, Any], stats: dict[str, Any]) -> list[float]:
    """The seconds (from the run's start) in which the sandbox answered the model 429, as
    many times as it did: where a run's upstream 429s fell (a ceiling's drop, or a jitter)."""
    series = stats["dynamic"]["models"].get(MODEL, {}).get("series", [])
    origin = result.get("mono_start", 0.0)
    return [t - origin for t, _rate, _ok, refused, *_rest in series for _ in range(int(refused))]


def _prod_granted(records: list[dict[str, Any]], start: float, end: float) -> int:
    return sum(
        1
        for r in records
        if r["stream"] == "prod"
        and r["status"] == 200
        and start <= r["at"] + r.get("queued_ms", 0) / 1000 < end
    )


def windows(result: dict[str, Any], series: list[list[float]]) -> list[dict[str, float]]:
    """Per 10 s window after the first 30 s: prod's demand (calls due), its grants, and the
    ceiling in force (the sandbox's rate, and Sluice's usable part of it)."""
    records, origin = result["requests"], result["mono_start"]
    rows = []
    start = SETTLE
    while start + WINDOW <= SECONDS + 1e-9:
        end = start + WINDOW
        ceiling = ceiling_in_force(series, origin + start, origin + end)
        rows.append(
            {
                "start": start,
                "demand": sum(
                    1 for r in records if r["stream"] == "prod" and start <= r["at"] < end
                ),
                "granted": _prod_granted(records, start, end),
                "ceiling": ceiling,
                "usable": ceiling * (1 - MARGIN),
            }
        )
        start = end
    return rows


def moving_figures(result: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    model = stats["dynamic"]["models"].get(MODEL, {"series": []})
    rows = windows(result, model["series"])

    def worst(ceiling: str) -> float:
        """The least, over the windows, of prod's grants over what it should get."""
        return min(r["granted"] / min(r["demand"], SHARE * r[ceiling]) for r in rows)

    upstream = Upstream.of(stats, MODEL)
    return {
        "windows": rows,
        "upstream_429_at": seconds_429(result, stats),
        "prod_worst_sandbox": worst("ceiling"),
        "prod_worst_usable": worst("usable"),
        "windows_met": sum(r["granted"] >= min(r["demand"], SHARE * r["usable"]) for r in rows),
        "windows_met_sandbox": sum(
            r["granted"] >= min(r["demand"], SHARE * r["ceiling"]) for r in rows
        ),
        "upstream_429": upstream.status_429,
        "upstream_sent": upstream.sent,
    }


def _streams(url: str, keys: dict[str, str]) -> list[dict[str, Any]]:
    rates = (("prod", PROD_RATE), ("dev", DEV_RATE), ("exp", EXP_RATE))
    return [
        {
            "name": name,
            "url": url,
            "key": keys[name],
            "model": MODEL,
            "rate": rate,
            "duration": SECONDS,
        }
        for name, rate in rates
    ]


def moving_one(sandbox: Sandbox, tmp: Path, shares: bool, enforcement: str) -> dict[str, Any]:
    """One run on a fresh deployment; the sandbox's cap drops at DROP_AT."""
    tmp.mkdir()
    with Sluice(tmp, sandbox, CEILING) as sluice:
        sandbox.control({"reset": True, "dynamic": {**LIMITS, "enforcement": enforcement}})
        command = f"from bench.shares import provision; provision({shares!r})"
        out = manage(sluice.env, "shell", "-v", "0", "-c", command)
        keys = json.loads(out.strip().splitlines()[-1])
        drop = threading.Timer(
            DROP_AT, sandbox.control, args=({"dynamic": {"model_caps": {MODEL: DROPPED}}},)
        )
        drop.start()
        try:
            result = run_openloop(_streams(f"{sluice.urls[0]}/v1/chat/completions", keys), SECONDS)
        finally:
            drop.cancel()
        stats = sandbox.stats()
    return moving_figures(result, stats)


MOVING_ROWS = [
    (
        "moving ceiling: windows where prod got min(demand, 60% of sandbox's rate)",
        "windows_met_sandbox",
    ),
    ("moving ceiling: windows where prod got min(demand, 60% of usable)", "windows_met"),
    (
        "moving ceiling: prod's worst window / min(demand, 60% of sandbox's rate)",
        "prod_worst_sandbox",
    ),
    ("moving ceiling: prod's worst window / min(demand, 60% of usable)", "prod_worst_usable"),
    ("moving ceiling: Together's (sandbox's) 429s / sent", "upstream_429"),
]


def moving_cells(figures: dict[str, Any], field: str) -> str:
    if field in ("windows_met", "windows_met_sandbox"):
        return f"{figures[field]} of {len(figures['windows'])}"
    if field == "upstream_429":
        return f"{figures[field]} / {figures['upstream_sent']}"
    return f"{figures[field]:.2f}"
