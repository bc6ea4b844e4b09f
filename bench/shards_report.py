"""The sharded simulation's tables: `python -m bench --only shards`, or `python -m
bench.shards_report [--seconds S]` alone. Two runs on the same arrivals: one limiter
(the baseline) and N shards through a shard's death and a shard joining."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from bench.shards import BucketCheck, organisation
from bench.shards_run import Outcome, Scenario, simulate

FULL, QUICK = 15.0, 3.0  # simulated seconds of load (see docs/scaling.md for why not 60)
DASH = "–"


@dataclass(frozen=True)
class Pair:
    baseline: Outcome  # one limiter, no failure, nobody joining
    sharded: Outcome


def run(seconds: float, offered: float = 20_000.0, shards: int = 4) -> Pair:
    org = organisation(offered=offered)
    sharded = Scenario(seconds=seconds, shards=shards)
    baseline = replace(sharded, shards=1, fail=False, join=False)
    return Pair(simulate(org, baseline), simulate(org, sharded))


def _shard_rows(outcome: Outcome) -> list[str]:
    rows = []
    for name, shard in outcome.shards.items():
        decided = sum(shard.decisions.values())
        busy = [n for n in shard.per_second.values() if n]
        mean = sum(busy) / len(busy) if busy else 0.0
        cpu_us = shard.cpu / decided * 1e6 if decided else 0.0
        rows.append(
            f"| {name} | {outcome.owned_before[name]} → {outcome.owned_after[name]} "
            f"| {decided} | {mean:,.0f} | {max(busy, default=0):,} "
            f"| {shard.decisions['grant']} | {decided - shard.decisions['grant']} "
            f"| {shard.unavailable} | {cpu_us:.0f} |"
        )
    return rows


def shard_table(pair: Pair) -> str:
    head = [
        "| Limiter | Accounts (start → end) | Decisions | Decisions/s (mean of its seconds) "
        "| Peak second | Granted | Refused | Unavailable | Engine CPU per decision (µs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    baseline = [
        row.replace("| shard-0 |", "| one limiter (baseline) |", 1)
        for row in _shard_rows(pair.baseline)
    ]
    return "\n".join(head + baseline + _shard_rows(pair.sharded))


def _worst(checks: list[BucketCheck], kind: str) -> str:
    mine = [c for c in checks if c.scope[0] == kind]
    if not mine:
        return DASH
    worst = max(mine, key=lambda c: c.worst_excess / c.burst)
    held = sum(c.holds for c in mine)
    return (
        f"{held} of {len(mine)} hold; tightest {worst.scope[1]}: "
        f"{worst.worst_excess:.2f} beyond rate × d, burst {worst.burst:g}"
    )


def totals_table(pair: Pair) -> str:
    rows = [
        "| | One limiter (baseline) | Sharded |",
        "|---|---|---|",
        f"| Offered calls | {pair.baseline.offered:,} | {pair.sharded.offered:,} |",
    ]
    reasons = sorted(set(pair.baseline.decided()) | set(pair.sharded.decided()))
    for reason in reasons:
        label = "Granted" if reason == "grant" else f"Refused `{reason}`"
        rows.append(
            f"| {label} | {pair.baseline.decided()[reason]:,} "
            f"| {pair.sharded.decided()[reason]:,} |"
        )
    unavailable = [
        sum(s.unavailable for s in o.shards.values()) for o in (pair.baseline, pair.sharded)
    ]
    rows += [
        f"| `limiter_unavailable` (dead shard, incl. its queued) | {unavailable[0]:,} "
        f"| {unavailable[1]:,} |",
        f"| Accounts moved / queued tickets handed over | {DASH} "
        f"| {pair.sharded.moved} / {pair.sharded.handed_over} |",
        f"| Account limits (each account's bucket) | {_worst(pair.baseline.checks, 'account')} "
        f"| {_worst(pair.sharded.checks, 'account')} |",
        f"| Key limits (each key's bucket) | {_worst(pair.baseline.checks, 'key')} "
        f"| {_worst(pair.sharded.checks, 'key')} |",
        f"| Simulation run time, wall / CPU (s) | {pair.baseline.wall:.1f} / "
        f"{pair.baseline.cpu:.1f} | {pair.sharded.wall:.1f} / {pair.sharded.cpu:.1f} |",
    ]
    return "\n".join(rows)


def _events(s: Scenario) -> str:
    parts = []
    if s.fail_at is not None:
        parts.append(f"shard-1 killed at {s.fail_at:g} s (lease TTL {s.lease_ttl:g} s)")
    if s.join_at is not None:
        parts.append(f"shard-{s.shards} joining at {s.join_at:g} s")
    return "; ".join(parts) or "no failure, nobody joining"


def render(pair: Pair) -> str:
    s = pair.sharded.scenario
    ratio = pair.sharded.decided()["grant"] / max(1, pair.baseline.decided()["grant"])
    return "\n\n".join(
        [
            f"{s.seconds:g} s of simulated time at {pair.sharded.offered / s.seconds:,.0f} "
            f"calls/s offered (open loop), 50 accounts, 500 teams, {s.shards} shards: "
            f"{_events(s)}. The same arrivals in both runs.",
            shard_table(pair),
            totals_table(pair),
            f"Granted, sharded ÷ one limiter: {ratio:.3f}. CPU figures are this shared "
            "machine's and noisy; the engine's CPU per decision counts its own calls only "
            "(a limiter process adds its transport's cost).",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.shards_report")
    parser.add_argument("--seconds", type=float, default=FULL, help="simulated seconds")
    parser.add_argument("--offered", type=float, default=20_000.0, help="calls a second")
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args(argv)
    print(render(run(args.seconds, args.offered, args.shards)))


if __name__ == "__main__":
    main()
