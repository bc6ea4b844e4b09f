"""Which ASGI server `manage.py serve` should run by default: daphne and uvicorn side by side.

    python -m bench.server_choice [--duration 3] [--repeats 5]

One sandbox upstream (20 ms); Sluice embedded under daphne and under uvicorn; the bare
Django floor under each. Non-streaming chat at 1 and at 16 callers, the targets taken in
turns within every repeat (direct, Sluice daphne, floor daphne, Sluice uvicorn, floor
uvicorn), so a drift of this shared machine's speed falls on all alike. Added latency =
a target's p50 minus the same repeat's direct p50; figures are medians over the repeats.
The load average is printed with the table: read every figure beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from bench.latency import Cell, Target, measure_once
from bench.runner import ACCOUNT_PACE, ACCOUNT_RPM, UPSTREAM_LATENCY_MS
from bench.servers import Ceiling, Floor, Sandbox, Sluice

CONCURRENCIES = (1, 16)
SERVERS = ("daphne", "uvicorn")


def measure(
    *, duration: float, repeats: int, log: Callable[[str], None] = print
) -> dict[tuple[str, int], list[Cell]]:
    ceiling = Ceiling(ACCOUNT_RPM, ACCOUNT_PACE, 5.0)
    runs: dict[tuple[str, int], list[Cell]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-servers-") as name,
        ExitStack() as stack,
    ):
        tmp = Path(name)
        sandbox = stack.enter_context(Sandbox(tmp, UPSTREAM_LATENCY_MS))
        targets = [Target("direct", [sandbox.v1_url], "bench", lambda: [sandbox.process.pid])]
        for server in SERVERS:
            (tmp / server).mkdir()
            sluice = stack.enter_context(Sluice(tmp / server, sandbox, ceiling, server=server))
            floor = stack.enter_context(Floor(tmp / server, sandbox, server))
            targets.append(
                Target(
                    f"sluice-{server}",
                    [f"{sluice.urls[0]}/v1"],
                    sluice.keys["open"],
                    lambda s=sluice: s.web_pids,  # type: ignore[misc]
                )
            )
            targets.append(
                Target(
                    f"floor-{server}",
                    [f"{floor.url}/v1"],
                    "bench",
                    lambda f=floor: [f.process.pid],  # type: ignore[misc]
                )
            )
        for c in CONCURRENCIES:
            for _ in range(repeats):
                for target in targets:
                    cell = measure_once(
                        target, concurrency=c, stream=False, duration=duration, warmup=30
                    )
                    runs.setdefault((target.name, c), []).append(cell)
                log(
                    f"c={c}, load {os.getloadavg()[0]:.1f}: "
                    + ", ".join(f"{t.name} {runs[(t.name, c)][-1].p50_ms:.1f}" for t in targets)
                )
    return runs


def markdown(runs: dict[tuple[str, int], list[Cell]]) -> str:
    names = sorted({name for name, _ in runs if name != "direct"})
    rows = [
        "| measure | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for c in CONCURRENCIES:
        direct = runs[("direct", c)]

        def added(name: str, c: int = c, direct: list[Cell] = direct) -> str:
            pairs = zip(runs[(name, c)], direct, strict=True)
            return f"{statistics.median(x.p50_ms - d.p50_ms for x, d in pairs):.1f} ms"

        def cpu(name: str, c: int = c) -> str:
            return f"{statistics.median(x.cpu_ms for x in runs[(name, c)]):.2f} ms"

        def rps(name: str, c: int = c) -> str:
            return f"{statistics.median(x.rps for x in runs[(name, c)]):.0f}"

        def failed(name: str, c: int = c) -> str:
            return str(sum(x.failed for x in runs[(name, c)]))

        p50 = statistics.median(d.p50_ms for d in direct)
        rows.append(f"| direct p50, c={c} | " + " | ".join(f"{p50:.1f} ms" for _ in names) + " |")
        for label, cell in (
            (f"added p50, c={c}", added),
            (f"CPU a call, c={c}", cpu),
            (f"calls/s, c={c}", rps),
            (f"failed, c={c}", failed),
        ):
            rows.append(f"| {label} | " + " | ".join(cell(n) for n in names) + " |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    runs = measure(duration=args.duration, repeats=args.repeats)
    print(f"load average after: {os.getloadavg()}")
    print(markdown(runs))


if __name__ == "__main__":
    main()
