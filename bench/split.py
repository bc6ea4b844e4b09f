"""What splitting one server into four processes costs a call on this machine, for servers
that do (nearly) nothing Sluice does, and Sluice's deployments at a rate they all carry.

Issue 22 asks four web processes + the limiter worker to spend within 10% of one embedded
process's CPU a call. bench/scaleout.py measures it closed loop (16 callers); its four
embedded processes with no Redis show the split alone costing far more than 10%. Two
questions follow, both answered here in one run:

1. Does any server pay that much for the split? The same closed loop (16 callers spread over
   the processes, bench/loadgen.py), one process against four, for the least a gateway can
   be (bench/floor/bare.py: pure ASGI under uvicorn with uvloop and httptools, one shared
   aiohttp session) and for the bench's bare-Django floor (bench/floor: httpx's default
   transport, as the issue's floor prescribes) under uvicorn. If even
   the bare forwarder's four processes cost well over 10% more a call, no gateway meets the
   target on these cores at this load shape.
2. Is it the saturation? Sixteen closed-loop callers keep one process's event loop busy, so
   each wake-up serves many calls, while four processes each idle half the time. Open loop
   (bench/openloop.py) at fixed rates every deployment carries, the calls spread evenly over
   the processes, compares them at the same offered load: the floors one against four, and
   Sluice's one embedded process, four embedded processes (no Redis) and four web + limiter
   + Redis (every process's CPU counted, as in bench/scaleout.py).

Cells are alternated (forwards, then backwards) so the machine's drift hits all alike; the
figures are medians over rounds, and each ratio is the median of the rounds' own ratios to
the one-process cell of the same round. An open-loop cell's CPU is read around the whole
load process, so its start (a few tenths of a second) adds the servers' idle CPU: under
0.01 ms a call at these rates.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench.dynamic import run_openloop
from bench.latency import MODEL, Target, measure_once, percentile
from bench.procs import cpu_seconds
from bench.runner import scale_out_deployments
from bench.servers import BARE, Ceiling, Floor, Sandbox

CONCURRENCY = 16  # closed-loop callers, as bench/scaleout.py
PROCESSES = 4
UPSTREAM_LATENCY_MS = 20.0
DJANGO_FLOOR = "bench.floor.asgi:application"


@dataclass(frozen=True)
class SplitSize:
    rounds: int  # alternated rounds per comparison
    duration: float  # seconds of load per cell
    warmup: int  # closed-loop requests before each measured phase
    rates: tuple[float, ...]  # open-loop calls a second, all processes together


FULL = SplitSize(rounds=6, duration=4.0, warmup=40, rates=(100.0, 150.0))
TINY = SplitSize(rounds=1, duration=0.3, warmup=2, rates=(20.0,))  # the harness, in tests


@dataclass
class Cell:
    cpu_ms: float  # the deployment's CPU per successful call
    rps: float  # successful calls a second
    failed: int
    p50_ms: float


@dataclass
class Comparison:
    """One load shape, several deployments, alternated; the first is the baseline."""

    title: str
    cells: dict[str, list[Cell]] = field(default_factory=dict)  # by deployment, by round

    def median(self, name: str, pick: Callable[[Cell], float]) -> float:
        return statistics.median(pick(c) for c in self.cells[name])

    def ratio(self, name: str) -> float:
        """CPU a call, ÷ the baseline's in the same round; the median over rounds."""
        base = next(iter(self.cells.values()))
        pairs = zip(self.cells[name], base, strict=True)
        return statistics.median(c.cpu_ms / b.cpu_ms for c, b in pairs)


def closed_cell(target: Target, size: SplitSize) -> Cell:
    cell = measure_once(
        target,
        concurrency=CONCURRENCY,
        stream=False,
        duration=size.duration,
        warmup=size.warmup,
    )
    return Cell(cell.cpu_ms, cell.rps, cell.failed, cell.p50_ms)


def open_cell(target: Target, rate: float, duration: float) -> Cell:
    """`rate` calls a second for `duration` seconds, split evenly over the processes."""
    share = rate / len(target.base_urls)
    streams = [
        {
            "name": f"p{n}",
            "url": f"{url}/chat/completions",
            "key": target.key,
            "model": MODEL,
            "rate": share,
            "duration": duration,
        }
        for n, url in enumerate(target.base_urls)
    ]
    before = cpu_seconds(target.pids())
    records = run_openloop(streams, duration)["requests"]
    spent = cpu_seconds(target.pids()) - before
    ok = sorted(r["latency_ms"] for r in records if 200 <= r["status"] < 300)
    return Cell(
        cpu_ms=spent * 1000 / len(ok) if ok else float("nan"),
        rps=len(ok) / duration,
        failed=len(records) - len(ok),
        p50_ms=percentile(ok, 50),
    )


def compare(
    title: str,
    targets: list[Target],
    measure: Callable[[Target], Cell],
    rounds: int,
    log: Callable[[str], None],
) -> Comparison:
    """`rounds` cells of each target, in turn forwards and backwards."""
    out = Comparison(title, {t.name: [] for t in targets})
    for repeat in range(rounds):
        for target in targets if repeat % 2 == 0 else targets[::-1]:
            cell = measure(target)
            out.cells[target.name].append(cell)
            log(f"{title}, {target.name}: {cell.rps:.0f} calls/s, {cell.cpu_ms:.2f} ms CPU a call")
    return out


@contextmanager
def floor_processes(
    tmp: Path, sandbox: Sandbox, app: str, processes: int, name: str
) -> Iterator[Target]:
    """`processes` uvicorn processes of `app`, each on a port of its own, as one target."""
    with ExitStack() as stack:
        floors = [
            stack.enter_context(Floor(tmp, sandbox, "uvicorn", app)) for _ in range(processes)
        ]
        yield Target(
            name, [f"{f.url}/v1" for f in floors], "bench", lambda: [f.process.pid for f in floors]
        )


def measure_floors(
    tmp: Path, sandbox: Sandbox, size: SplitSize, log: Callable[[str], None]
) -> list[Comparison]:
    """Each floor, one process against four: closed loop, then open loop at each rate."""
    out = []
    for label, app in (("bare ASGI forwarder", BARE), ("bare-Django floor", DJANGO_FLOOR)):
        with (
            floor_processes(tmp, sandbox, app, 1, "1 process") as one,
            floor_processes(tmp, sandbox, app, PROCESSES, f"{PROCESSES} processes") as four,
        ):
            targets = [one, four]
            out.append(
                compare(
                    f"{label}, closed loop, {CONCURRENCY} callers",
                    targets,
                    lambda t: closed_cell(t, size),
                    size.rounds,
                    log,
                )
            )
            out += open_loop(label, targets, size, log)
    return out


def open_loop(
    label: str, targets: list[Target], size: SplitSize, log: Callable[[str], None]
) -> list[Comparison]:
    return [
        compare(
            f"{label}, open loop, {rate:g} calls/s",
            targets,
            partial(open_cell, rate=rate, duration=size.duration),
            size.rounds,
            log,
        )
        for rate in size.rates
    ]


def measure_sluice(
    targets: list[Target], size: SplitSize, log: Callable[[str], None]
) -> list[Comparison]:
    """Sluice's deployments (one embedded first): closed loop, then open loop at each rate."""
    closed = compare(
        f"Sluice, closed loop, {CONCURRENCY} callers",
        targets,
        lambda t: closed_cell(t, size),
        size.rounds,
        log,
    )
    return [closed, *open_loop("Sluice", targets, size, log)]


def markdown(comparisons: list[Comparison]) -> str:
    lines = [
        "| load | deployment | CPU a call (ms) | ÷ 1 process | calls/s | p50 (ms) | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for comparison in comparisons:
        for name, cells in comparison.cells.items():
            lines.append(
                f"| {comparison.title} | {name} "
                f"| {comparison.median(name, lambda c: c.cpu_ms):.2f} "
                f"| {comparison.ratio(name):.2f} "
                f"| {comparison.median(name, lambda c: c.rps):.0f} "
                f"| {comparison.median(name, lambda c: c.p50_ms):.1f} "
                f"| {sum(c.failed for c in cells)} |"
            )
    return "\n".join(lines) + "\n"


def run(
    tmp: Path,
    size: SplitSize,
    *,
    ceiling: Ceiling,
    redis_url: str,
    postgres_url: str,
    log: Callable[[str], None],
) -> list[Comparison]:
    """The floors, then Sluice's three deployments, against one sandbox."""
    with Sandbox(tmp, UPSTREAM_LATENCY_MS) as sandbox:
        comparisons = measure_floors(tmp, sandbox, size, log)
        with scale_out_deployments(tmp, sandbox, ceiling, redis_url, postgres_url) as (
            one,
            split,
            four,
        ):
            one.name, split.name = "1 embedded", f"{PROCESSES} embedded, no Redis"
            four.name = f"{PROCESSES} web + limiter + Redis"
            comparisons += measure_sluice([one, split, four], size, log)
    return comparisons
