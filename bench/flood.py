"""A runaway script beside a team within its limits: refusals answered locally.

    python -m bench.flood [--duration 10]

Sluice deployments one after another on one sandbox upstream (20 ms), identical but for
SLUICE_LOCAL_REFUSALS and SLUICE_REFUSAL_HOLD (limiter/protocol/refused.py): `held` (the
default) answers a refusal the limiter promised itself, and holds the 429s of a key that
keeps coming back during the promise; `local` answers them at once (SLUICE_REFUSAL_HOLD=0:
what a local refusal costs); `asked` asks the limiter for every call (the baseline). In
each, one embedded web process (uvicorn, the default; and `local` under daphne beside them):

1. alone: the neighbour (key `open`) sends 4 calls a second, open loop, for `duration`;
2. flood: 48 closed-loop workers on the `flood` key (60 a minute, no queue) for
   `duration`, the neighbour beside them as in 1. Gateway CPU per refused call is the
   web process's CPU over the phase less what phase 1 cost per second (the neighbour
   and the idle process), divided by the 429s. Limiter messages per locally refused
   call: the limiter's decisions over the phase (/readyz, `decisions`) less the calls
   that asked it (admitted, plus refusals not answered locally: /metrics), divided by
   the calls refused locally. Refusals a second: the flood's 429s over the phase. The
   neighbour's success rate and p50 against phase 1's;
3. 2,000 calls a second, open loop, on the `flood` key for `storm` seconds, the
   neighbour beside: every neighbour's call answered, and no `limiter_unavailable`
   (a 503) for anyone.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.dynamic import run_openloop
from bench.latency import MODEL
from bench.procs import cpu_seconds, run_load
from bench.runner import ACCOUNT_PACE, ACCOUNT_RPM, UPSTREAM_LATENCY_MS
from bench.servers import Ceiling, Sandbox, Sluice

WORKERS = 48
NEIGHBOUR_RATE = 4.0
STORM_RATE = 2000.0
TARGET_CPU_MS = 0.5
TARGET_P50_MS = 10.0
# (label, settings, server, heading): the baseline, local refusals answered at once (what
# one costs), the default (held), and local refusals at once under daphne (how much of a
# local refusal's CPU is the HTTP server's own).
DEPLOYMENTS: tuple[tuple[str, dict[str, str], str, str], ...] = (
    ("asked", {"SLUICE_LOCAL_REFUSALS": "false"}, "uvicorn", "every call asks the limiter"),
    ("local", {"SLUICE_REFUSAL_HOLD": "0"}, "uvicorn", "refused locally, no hold"),
    ("held", {}, "uvicorn", "refused locally and held (default)"),
    ("local-daphne", {"SLUICE_REFUSAL_HOLD": "0"}, "daphne", "local-daphne (no hold)"),
)
HEADINGS = {label: heading for label, _, _, heading in DEPLOYMENTS}
ADMIN_TOKEN = secrets.token_urlsafe(24)  # the ops API's, for the live snapshot


@dataclass
class Calls:
    statuses: dict[int, int] = field(default_factory=dict)
    p50_ms: float = float("nan")

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> float:
        return self.statuses.get(200, 0) / self.total if self.total else float("nan")

    @classmethod
    def of(cls, records: list[dict[str, Any]], stream: str) -> Calls:
        mine = [r for r in records if r["stream"] == stream]
        statuses: dict[int, int] = {}
        for record in mine:
            statuses[record["status"]] = statuses.get(record["status"], 0) + 1
        ok = sorted(r["latency_ms"] for r in mine if r["status"] == 200)
        return cls(statuses, statistics.median(ok) if ok else float("nan"))


@dataclass
class Deployment:
    label: str
    alone: Calls = field(default_factory=Calls)
    beside: Calls = field(default_factory=Calls)
    flood_statuses: dict[str, int] = field(default_factory=dict)
    cpu_ms_per_refusal: float = float("nan")
    cpu_idle_per_s: float = 0.0
    decisions: int = 0
    asked: int = 0  # flood-phase calls that asked the limiter
    local: int = 0  # flood-phase calls refused locally
    held: int = 0  # of which held first (SLUICE_REFUSAL_HOLD)
    held_seconds: float = 0.0
    waited: int = 0  # calls that waited on another call's ask (a flooding key's herd)
    refusals_per_s: float = float("nan")  # the flood's 429s a second
    storm_flood: dict[int, int] = field(default_factory=dict)
    storm_neighbour: Calls = field(default_factory=Calls)
    storm_rate: float = 0.0
    # The web process's loop over the flood phase (limiter/protocol/lag.py): the mean time
    # between two ticks of its probe (20 ms when free; one turn of the loop when turns take
    # longer) and the share of the phase its timers ran late.
    turn_ms: float = float("nan")
    late_share: float = float("nan")

    @property
    def messages_per_local(self) -> float:
        return (self.decisions - self.asked) / self.local if self.local else float("nan")


def _stream(sluice: Sluice, name: str, key: str, rate: float, seconds: float) -> dict[str, Any]:
    return {
        "name": name,
        "url": f"{sluice.urls[0]}/v1/chat/completions",
        "key": sluice.keys[key],
        "model": MODEL,
        "rate": rate,
        "duration": seconds,
    }


def _counters(sluice: Sluice) -> dict[str, float]:
    """The web process's refusal counters (/metrics) and its limiter's decisions (the
    live snapshot, /api/live)."""
    with urllib.request.urlopen(f"{sluice.urls[0]}/metrics", timeout=30) as response:
        text = response.read().decode()
    counters = {"refused": 0.0, "local": 0.0, "admitted": 0.0, "held": 0.0, "held_s": 0.0}
    counters["waits"] = 0.0
    for line in text.splitlines():
        if line.startswith("sluice_refused_total{") and 'source="gateway"' in line:
            counters["refused"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("sluice_refused_locally_total "):
            counters["local"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("sluice_refusals_held_total "):
            counters["held"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("sluice_refusal_held_seconds_total "):
            counters["held_s"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("sluice_refusal_ask_waits "):
            counters["waits"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("sluice_admitted_total{"):
            counters["admitted"] += float(line.rsplit(" ", 1)[1])
    # The live snapshot is at most a second old: read it once the phase has settled.
    time.sleep(1.5)
    request = urllib.request.Request(
        f"{sluice.urls[0]}/api/live", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        live = json.loads(response.read())
    counters["decisions"] = float(live["snapshot"]["limiter"]["decisions"])
    return counters


def _loop(sluice: Sluice) -> tuple[float, float]:
    """The web process's loop lateness so far (seconds) and its probe's ticks (/metrics)."""
    counters = {"late": 0.0, "ticks": 0.0}
    with urllib.request.urlopen(f"{sluice.urls[0]}/metrics", timeout=30) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("sluice_event_loop_late_seconds "):
                counters["late"] = float(line.rsplit(" ", 1)[1])
            elif line.startswith("sluice_event_loop_ticks "):
                counters["ticks"] = float(line.rsplit(" ", 1)[1])
    return counters["late"], counters["ticks"]


def _alone(sluice: Sluice, result: Deployment, duration: float) -> None:
    before = cpu_seconds(sluice.web_pids)
    started = time.monotonic()
    answer = run_openloop(
        [_stream(sluice, "neighbour", "open", NEIGHBOUR_RATE, duration)], duration
    )
    elapsed = time.monotonic() - started
    result.cpu_idle_per_s = (cpu_seconds(sluice.web_pids) - before) / elapsed
    result.alone = Calls.of(answer["requests"], "neighbour")


def _flood(sluice: Sluice, result: Deployment, duration: float) -> None:
    plan = {
        "urls": [f"{sluice.urls[0]}/v1/chat/completions"],
        "headers": {
            "authorization": f"Bearer {sluice.keys['flood']}",
            "content-type": "application/json",
        },
        "body": {"model": MODEL, "messages": [{"role": "user", "content": "again"}]},
        "concurrency": WORKERS,
        "duration": duration,
        "warmup": WORKERS,
    }
    marks: dict[str, Any] = {}
    neighbour: dict[str, Any] = {}

    def start() -> None:
        marks["counters"], marks["cpu"] = _counters(sluice), cpu_seconds(sluice.web_pids)
        marks["at"], marks["loop"] = time.monotonic(), _loop(sluice)
        stream = _stream(sluice, "neighbour", "open", NEIGHBOUR_RATE, duration)
        thread = threading.Thread(
            target=lambda: neighbour.update(run_openloop([stream], duration)), daemon=True
        )
        thread.start()
        marks["thread"] = thread

    def stop() -> None:
        marks["cpu_after"], marks["end"] = cpu_seconds(sluice.web_pids), time.monotonic()
        marks["loop_after"] = _loop(sluice)

    load = run_load(plan, around=start, after=stop)
    marks["thread"].join(duration + 120)
    time.sleep(0.5)  # the neighbour's last answers counted
    after = _counters(sluice)
    refused = load["statuses"].get("429", 0)
    cpu = marks["cpu_after"] - marks["cpu"] - result.cpu_idle_per_s * (marks["end"] - marks["at"])
    result.cpu_ms_per_refusal = cpu * 1000 / refused if refused else float("nan")
    result.flood_statuses = load["statuses"]
    delta = {name: after[name] - marks["counters"][name] for name in after}
    result.local = round(delta["local"])
    result.held, result.held_seconds = round(delta["held"]), delta["held_s"]
    result.waited = round(delta["waits"])
    result.asked = round(delta["admitted"] + delta["refused"] - delta["local"])
    result.decisions = round(delta["decisions"])
    span = marks["end"] - marks["at"]
    result.refusals_per_s = refused / span
    (late, ticks), (late_after, ticks_after) = marks["loop"], marks["loop_after"]
    if ticks_after > ticks:
        result.turn_ms = span * 1000 / (ticks_after - ticks)
        result.late_share = (late_after - late) / span
    result.beside = Calls.of(neighbour.get("requests", []), "neighbour")


def _storm(sluice: Sluice, result: Deployment, seconds: float) -> None:
    answer = run_openloop(
        [
            _stream(sluice, "flood", "flood", STORM_RATE, seconds),
            _stream(sluice, "neighbour", "open", NEIGHBOUR_RATE, seconds),
        ],
        seconds,
    )
    records = answer["requests"]
    flood = Calls.of(records, "flood")
    result.storm_flood = flood.statuses
    result.storm_neighbour = Calls.of(records, "neighbour")
    dues = [r["at"] for r in records if r["stream"] == "flood"]
    result.storm_rate = len(dues) / seconds


def measure(
    *, duration: float = 10.0, storm: float = 5.0, log: Callable[[str], None] = print
) -> list[Deployment]:
    ceiling = Ceiling(ACCOUNT_RPM, ACCOUNT_PACE, 5.0)
    results = []
    with tempfile.TemporaryDirectory(prefix="sluice-bench-flood-") as name:
        tmp = Path(name)
        with Sandbox(tmp, UPSTREAM_LATENCY_MS) as sandbox:
            for label, chosen, server, _ in DEPLOYMENTS:
                (tmp / label).mkdir()
                settings = {**chosen, "SLUICE_ADMIN_TOKEN": ADMIN_TOKEN}
                with Sluice(
                    tmp / label, sandbox, ceiling, settings=settings, server=server
                ) as sluice:
                    result = Deployment(label)
                    _alone(sluice, result, duration)
                    _flood(sluice, result, duration)
                    _storm(sluice, result, storm)
                    log(log_line(result))
                    results.append(result)
    return results


def log_line(r: Deployment) -> str:
    """One deployment's figures, as the run goes."""
    storm_503 = r.storm_flood.get(503, 0) + r.storm_neighbour.statuses.get(503, 0)
    return (
        f"{r.label}: {r.cpu_ms_per_refusal:.3f} ms CPU per refused call, "
        f"{r.messages_per_local:.3f} limiter messages per local refusal, "
        f"{r.refusals_per_s:.0f} refusals/s, neighbour p50 {r.alone.p50_ms:.1f} -> "
        f"{r.beside.p50_ms:.1f} ms ({r.beside.ok:.1%} answered); storm: neighbour "
        f"{r.storm_neighbour.ok:.1%} answered, {storm_503} x 503"
    )


def _verdict(results: list[Deployment], met: Callable[[Deployment], bool]) -> str:
    """Met or missed, for each deployment that refuses locally."""
    return ", ".join(
        f"{r.label} {'met' if met(r) else '**missed**'}" for r in results if r.label != "asked"
    )


def markdown(results: list[Deployment]) -> str:
    head = " | ".join(HEADINGS.get(r.label, r.label) for r in results)
    rows = [f"| measure | {head} | target |", "|---" * (2 + len(results)) + "|"]

    def row(measure: str, cell: Callable[[Deployment], str], target: str = "") -> None:
        rows.append(f"| {measure} | " + " | ".join(cell(r) for r in results) + f" | {target} |")

    row(
        f"gateway CPU per refused call ({WORKERS} workers, 60/min key)",
        lambda r: f"{r.cpu_ms_per_refusal:.3f} ms",
        f"<= {TARGET_CPU_MS} ms: "
        + _verdict(results, lambda r: r.cpu_ms_per_refusal <= TARGET_CPU_MS),
    )
    row("flood answers in the phase", lambda r: _statuses(r.flood_statuses))
    row("flood refusals a second", lambda r: f"{r.refusals_per_s:.0f}")
    row("flood calls that asked the limiter / refused locally", lambda r: f"{r.asked} / {r.local}")
    row(
        "flood calls that waited on another call's ask (a held key's herd)",
        lambda r: str(r.waited),
    )
    row(
        "of those refused locally: held first (mean hold)",
        lambda r: f"{r.held} ({r.held_seconds / r.held * 1000:.0f} ms)" if r.held else "0",
    )
    row(
        "limiter messages per locally refused call",
        lambda r: f"{r.messages_per_local:.3f} ({r.decisions} decisions)" if r.local else "-",
        "0",
    )
    row(
        f"neighbour at {NEIGHBOUR_RATE:g}/s: answered 200 alone / beside the flood",
        lambda r: f"{r.alone.ok:.1%} / {r.beside.ok:.1%}",
        "100%",
    )
    row(
        "neighbour p50 alone / beside the flood",
        lambda r: (
            f"{r.alone.p50_ms:.1f} / {r.beside.p50_ms:.1f} ms "
            f"({r.beside.p50_ms - r.alone.p50_ms:+.1f})"
        ),
        f"+{TARGET_P50_MS:g} ms: "
        + _verdict(results, lambda r: r.beside.p50_ms - r.alone.p50_ms <= TARGET_P50_MS),
    )
    row(
        "web process's loop beside the flood: mean turn (probe's tick) / share of time late",
        lambda r: f"{r.turn_ms:.1f} ms / {r.late_share:.0%}",
    )
    row(
        "neighbour's added p50 in turns of that loop",
        lambda r: f"{(r.beside.p50_ms - r.alone.p50_ms) / r.turn_ms:.1f}",
    )
    _storm_rows(row)
    return "\n".join(rows) + "\n"


def _storm_rows(row: Callable[..., None]) -> None:
    row("storm: calls due a second on one key", lambda r: f"{r.storm_rate:.0f}")
    row("storm: flood answers", lambda r: _statuses({str(k): v for k, v in r.storm_flood.items()}))
    row(
        "storm: neighbour answered 200 (p50)",
        lambda r: f"{r.storm_neighbour.ok:.1%} ({r.storm_neighbour.p50_ms:.1f} ms)",
        "100%",
    )
    row(
        "storm: 503 limiter_unavailable, anyone",
        lambda r: str(r.storm_flood.get(503, 0) + r.storm_neighbour.statuses.get(503, 0)),
        "0",
    )


def _statuses(statuses: dict[str, int]) -> str:
    return ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--storm", type=float, default=5.0)
    args = parser.parse_args()
    print(markdown(measure(duration=args.duration, storm=args.storm)))


if __name__ == "__main__":
    main()
