"""The whole benchmark, in order, sized by a `Size`.

1. the sandbox (20 ms), the floor(s) and Sluice embedded; the latency / throughput /
   CPU matrix, targets interleaved at each concurrency so drift on a shared machine
   hits them alike; accuracy with one web process; in-memory decisions/s;
2. those stopped, Sluice scaled out (4 web + runworker limiter, a Redis server of the
   bench's own, PostgreSQL) beside one embedded process on PostgreSQL: CPU per request of
   each, alternated (bench/scaleout.py); Redis decisions/s; accuracy with 4 web processes.
Every process is stopped on the way out, whatever happens.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import coalesce, decisions, scaleout
from bench.accuracy import run_case
from bench.latency import Cell, Target, measure_once, median_cell
from bench.procs import reused_load_generator
from bench.report import CONCURRENCIES, MODES, Results
from bench.scaleout import OwnRedis
from bench.servers import (
    Ceiling,
    Floor,
    Sandbox,
    ScaleOutServices,
    Sluice,
    uvicorn_installed,
)

UPSTREAM_LATENCY_MS = 20.0
# The accuracy ceiling: 120/min paced at 100 with a burst of 1, so the sandbox's windows
# are 2/s and 120/min; see docs/benchmark.md for why these numbers.
ACCOUNT_RPM, ACCOUNT_PACE = 120, 100
CLIENTS = 64


@dataclass(frozen=True)
class Size:
    duration: float  # seconds of load per latency cell
    repeats: int  # runs per cell; figures are medians
    warmup: int  # requests before each measured phase
    key_max_wait: float  # the longest a burst request may queue in Sluice
    decisions_duration: float
    # Seconds per coalescing throughput run: longer than a latency cell, since the unmerged
    # run is paced at 250 requests a minute and a short one counts a handful of answers.
    coalesce_duration: float
    coalesce_callers: int = coalesce.CALLERS


FULL = Size(
    duration=3.0,
    repeats=3,
    warmup=30,
    key_max_wait=5.0,
    decisions_duration=5.0,
    coalesce_duration=15.0,
)
QUICK = Size(
    duration=1.0,
    repeats=1,
    warmup=10,
    key_max_wait=2.0,
    decisions_duration=1.5,
    coalesce_duration=10.0,
)
# The harness end to end (tests/bench): every figure exists, none is meaningful.
TINY = Size(
    duration=0.3,
    repeats=1,
    warmup=2,
    key_max_wait=1.0,
    decisions_duration=0.5,
    coalesce_duration=1.5,
    # 64 callers queued behind the unmerged run's 250/min take 15 s to drain after it.
    coalesce_callers=8,
)


def _matrix(
    targets: list[Target], size: Size, log: Callable[[str], None]
) -> dict[tuple[str, str, int], Cell]:
    runs: dict[tuple[str, str, int], list[Cell]] = {}
    for mode, stream in MODES:
        for c in CONCURRENCIES:
            for _ in range(size.repeats):
                for target in targets:
                    cell = measure_once(
                        target,
                        concurrency=c,
                        stream=stream,
                        duration=size.duration,
                        warmup=size.warmup,
                    )
                    runs.setdefault((target.name, mode, c), []).append(cell)
            log(
                f"latency {mode} c={c}: "
                + ", ".join(
                    f"{t.name} p50 {runs[(t.name, mode, c)][-1].p50_ms:.1f} ms" for t in targets
                )
            )
    return {key: median_cell(cells) for key, cells in runs.items()}


def _cpu_cell(target: Target, size: Size) -> Cell:
    return median_cell(
        [
            measure_once(
                target, concurrency=16, stream=False, duration=size.duration, warmup=size.warmup
            )
            for _ in range(size.repeats)
        ]
    )


def _accuracy(
    results: Results, sandbox: Sandbox, sluice: Sluice, ceiling: Ceiling, label: str
) -> None:
    target = Target(
        "sluice-burst", [f"{u}/v1" for u in sluice.urls], sluice.keys["burst"], lambda: []
    )
    results.accuracy[f"{label}, one burst"] = run_case(
        sandbox, target, ceiling, clients=CLIENTS, bursts=1
    )
    results.accuracy[f"{label}, two bursts across the window boundary"] = run_case(
        sandbox, target, ceiling, clients=CLIENTS, bursts=2
    )


def _single_process(
    results: Results,
    tmp: Path,
    sandbox: Sandbox,
    ceiling: Ceiling,
    size: Size,
    log: Callable[[str], None],
) -> None:
    with ExitStack() as stack:
        floor = stack.enter_context(Floor(tmp, sandbox, "daphne"))
        uvi = stack.enter_context(Floor(tmp, sandbox, "uvicorn")) if results.uvicorn else None
        sluice = stack.enter_context(Sluice(tmp, sandbox, ceiling, server="daphne"))
        sluice_uvi = (
            stack.enter_context(Sluice(tmp, sandbox, ceiling, server="uvicorn"))
            if results.uvicorn
            else None
        )
        targets = [
            Target("direct", [sandbox.v1_url], "bench", lambda: [sandbox.process.pid]),
            Target(
                "sluice", [f"{sluice.urls[0]}/v1"], sluice.keys["open"], lambda: sluice.web_pids
            ),
            Target("floor", [f"{floor.url}/v1"], "bench", lambda: [floor.process.pid]),
        ]
        if uvi is not None and sluice_uvi is not None:
            targets.append(
                Target("floor-uvicorn", [f"{uvi.url}/v1"], "bench", lambda: [uvi.process.pid])
            )
            targets.append(
                Target(
                    "sluice-uvicorn",
                    [f"{sluice_uvi.urls[0]}/v1"],
                    sluice_uvi.keys["open"],
                    lambda: sluice_uvi.web_pids,
                )
            )
        log("servers up; latency matrix")
        results.cells = _matrix(targets, size, log)
        log("accuracy, 1 web process")
        _accuracy(results, sandbox, sluice, ceiling, "1 web process (embedded)")
        log("decisions, in-memory layer")
        results.decisions["memory"] = decisions.run(sluice.env, CLIENTS, size.decisions_duration)


SCALED_OUT = "4 web processes + limiter worker (Redis, PostgreSQL)"


@contextmanager
def _embedded_baselines(
    tmp: Path, sandbox: Sandbox, ceiling: Ceiling, services: ScaleOutServices
) -> Iterator[tuple[Target, Target]]:
    """The scale-out comparison's baselines: one embedded process, and four embedded
    processes (the cost of the split alone, bench/scaleout.py), both on PostgreSQL too so
    the database's work is alike; stopped after their cells. Neither runs the job poller,
    which scale-out runs as a process of its own (not started here): idle, it costs an
    embedded process about 10 ms of CPU a second."""
    serving_only = {"SLUICE_EMBEDDED_JOB_POLLER": "0"}
    with (
        Sluice(
            tmp, sandbox, ceiling, database_url=services.database_urls[1], settings=serving_only
        ) as embedded,
        Sluice(
            tmp,
            sandbox,
            ceiling,
            web=4,
            database_url=services.database_urls[2],
            settings=serving_only,
        ) as split,
    ):
        yield (
            Target(
                "embedded",
                [f"{embedded.urls[0]}/v1"],
                embedded.keys["open"],
                lambda: embedded.web_pids,
            ),
            Target(
                "split", [f"{u}/v1" for u in split.urls], split.keys["open"], lambda: split.web_pids
            ),
        )


@dataclass
class FourWeb:
    """Four web processes + the limiter worker over Redis, and the services beside them."""

    target: Target  # its CPU counts the web processes, the limiter worker and Redis
    sluice: Sluice
    worker_pid: int
    redis_pid: int | None  # None when Redis is not a server of the bench's own
    services: ScaleOutServices


@contextmanager
def four_web(
    tmp: Path, sandbox: Sandbox, ceiling: Ceiling, redis_url: str, postgres_url: str
) -> Iterator[FourWeb]:
    with ExitStack() as stack:
        # A Redis server of our own where there is one to start, so its CPU is ours alone.
        own = stack.enter_context(OwnRedis(tmp)) if OwnRedis.available() else None
        redis_url = own.url if own is not None else redis_url
        services = stack.enter_context(
            # All three deployments of the scale-out phase hold the same ceiling.
            ScaleOutServices(redis_url, postgres_url, databases=3, ceiling=ceiling)
        )
        sluice = stack.enter_context(
            Sluice(
                tmp,
                sandbox,
                ceiling,
                web=4,
                redis_url=services.redis_url,
                database_url=services.database_urls[0],
            )
        )
        worker = sluice.worker
        assert worker is not None
        redis_pid = own.process.pid if own is not None and own.process else None
        target = Target(
            "scaleout-4",
            [f"{u}/v1" for u in sluice.urls],
            sluice.keys["open"],
            lambda: [*sluice.web_pids, worker.pid, *([redis_pid] if redis_pid else [])],
        )
        yield FourWeb(target, sluice, worker.pid, redis_pid, services)


@contextmanager
def scale_out_deployments(
    tmp: Path, sandbox: Sandbox, ceiling: Ceiling, redis_url: str, postgres_url: str
) -> Iterator[tuple[Target, Target, Target]]:
    """Issue 22's three deployments, up together: one embedded process, four embedded
    processes (the split alone), and four web processes + the limiter worker over Redis."""
    with (
        four_web(tmp, sandbox, ceiling, redis_url, postgres_url) as four,
        _embedded_baselines(tmp, sandbox, ceiling, four.services) as (one, split),
    ):
        yield one, split, four.target


def _scale_out(
    results: Results,
    tmp: Path,
    sandbox: Sandbox,
    ceiling: Ceiling,
    size: Size,
    redis_url: str,
    postgres_url: str,
    log: Callable[[str], None],
) -> None:
    with four_web(tmp, sandbox, ceiling, redis_url, postgres_url) as four:
        with _embedded_baselines(tmp, sandbox, ceiling, four.services) as (one, split):
            log("scale-out up; CPU of 1 embedded against 4 web + limiter + Redis, alternated")
            results.scaleout = scaleout.run(
                embedded=one,
                four=four.target,
                split=split,
                web_pids=lambda: four.sluice.web_pids,
                limiter_pid=four.worker_pid,
                redis_pid=four.redis_pid,
                redis_url=four.services.redis_url,
                repeats=max(2, size.repeats * 2),
                duration=size.duration,
                warmup=size.warmup,
                log=log,
            )
        log("decisions, channels_redis")
        results.decisions["redis"] = decisions.run(
            four.sluice.env, CLIENTS, size.decisions_duration, worker=four.worker_pid
        )
        log("accuracy, 4 web processes")
        _accuracy(results, sandbox, four.sluice, ceiling, SCALED_OUT)


def run(size: Size, *, redis_url: str, postgres_url: str, log: Callable[[str], None]) -> Results:
    results = Results(uvicorn=uvicorn_installed())
    ceiling = Ceiling(ACCOUNT_RPM, ACCOUNT_PACE, size.key_max_wait)
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp_name,
        Sandbox(Path(tmp_name), UPSTREAM_LATENCY_MS) as sandbox,
        reused_load_generator(),  # one load generator process for every cell
    ):
        tmp = Path(tmp_name)
        _single_process(results, tmp, sandbox, ceiling, size, log)
        _scale_out(results, tmp, sandbox, ceiling, size, redis_url, postgres_url, log)
        log("embeddings coalescing, with and without")
        results.coalesce = run_coalesce(size, log, tmp=tmp, sandbox=sandbox)
    return results


def run_coalesce(
    size: Size,
    log: Callable[[str], None],
    *,
    tmp: Path | None = None,
    sandbox: Sandbox | None = None,
) -> coalesce.CoalesceResults:
    """The coalescing scenario (bench/coalesce.py), on its own servers when none given."""
    duration = size.coalesce_duration
    if tmp is not None and sandbox is not None:
        return coalesce.run(tmp, sandbox, duration, size.repeats, log, size.coalesce_callers)
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp_name,
        Sandbox(Path(tmp_name), UPSTREAM_LATENCY_MS) as own,
        reused_load_generator(),
    ):
        return coalesce.run(Path(tmp_name), own, duration, size.repeats, log, size.coalesce_callers)


def load_average() -> tuple[float, ...]:
    return os.getloadavg()
