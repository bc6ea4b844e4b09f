"""Scale-out against embedded, as issue 22 asks: one embedded Sluice process against four web
processes plus the limiter worker over Redis, in one run, cells alternated so that the
machine's drift hits both alike.

The CPU of every process that serves a call counts: the embedded process; or the four web
processes, the limiter worker and the Redis server. So the bench runs a Redis server of its
own (`OwnRedis`): the shared one on 6379 also serves other work, whose CPU is not ours. Both
deployments write their usage rows to PostgreSQL (a database each), so the database's work is
the same for both and left out of both.

Where the extra CPU goes is reported beside the totals: each side's CPU per call, and per
call the messages sent over Redis (one ZADD each in the send script), the send round trips
(one script each) and the pops (one BZMPOP each), read from Redis's own command counts. And
a third deployment, not one to run, splits the cost in two: four embedded processes, each
with a limiter of its own and no Redis (the key has no limits, so their separate books change
nothing for it). What it costs above one embedded process is the split into four processes
on this machine's cores alone, with no limiter message at all.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.latency import Target, measure_once
from bench.procs import Process, cpu_seconds, free_port, spawn, stop

CONCURRENCY = 16


class OwnRedis:
    """A redis-server of the bench's own on a free port of 127.0.0.1, without persistence."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.process: Process | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> OwnRedis:
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port)]
        args += ["--save", "", "--appendonly", "no"]
        self.process = spawn(args, {"PATH": "/usr/bin:/bin"}, self.tmp / "redis.log")
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        for _ in range(100):
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    break
                subprocess.run(["sleep", "0.05"], check=False)
        self.__exit__()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop(self.process)


def command_counts(url: str) -> dict[str, int]:
    """Redis's calls per command since it started (commands run by scripts included)."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


@dataclass
class Side:
    """One alternated cell of one deployment: throughput and CPU per call, by process."""

    rps: float
    cpu_ms: float  # all its processes' CPU per successful call
    parts_ms: dict[str, float]  # the same, by part (web, limiter, redis)
    per_call: dict[str, float] = field(default_factory=dict)  # Redis commands per call
    failed: int = 0


@dataclass
class ScaleOut:
    embedded: list[Side] = field(default_factory=list)
    four: list[Side] = field(default_factory=list)
    split: list[Side] = field(default_factory=list)  # four embedded processes, no Redis
    redis_counted: bool = True

    def median(self, side: str, pick: Callable[[Side], float]) -> float:
        cells = {"embedded": self.embedded, "four": self.four, "split": self.split}[side]
        return statistics.median(pick(c) for c in cells) if cells else float("nan")

    def four_parts_ms(self) -> dict[str, float]:
        """Four web + limiter's CPU per call by part (web, limiter, redis), medians."""
        names = self.four[0].parts_ms if self.four else {}
        return {n: statistics.median(c.parts_ms.get(n, 0.0) for c in self.four) for n in names}

    def four_per_call(self) -> dict[str, float]:
        """Redis commands per call under four web + limiter, medians."""
        names = self.four[0].per_call if self.four else {}
        return {n: statistics.median(c.per_call.get(n, 0.0) for c in self.four) for n in names}

    @property
    def ratio(self) -> float:
        """Four web + limiter (+ Redis) ÷ embedded, CPU per call, over alternated pairs."""
        pairs = zip(self.four, self.embedded, strict=True)
        return statistics.median(f.cpu_ms / e.cpu_ms for f, e in pairs)


def _cell(
    target: Target,
    parts: dict[str, Callable[[], list[int]]],
    *,
    duration: float,
    warmup: int,
    redis_url: str = "",
) -> Side:
    before = {name: cpu_seconds(pids()) for name, pids in parts.items()}
    counts = command_counts(redis_url) if redis_url else {}
    cell = measure_once(
        target, concurrency=CONCURRENCY, stream=False, duration=duration, warmup=warmup
    )
    # measure_once reads CPU around its measured phase only; the parts' split is read
    # around the whole cell (warm-up included) and scaled to the cell's total.
    spent = {name: cpu_seconds(pids()) - before[name] for name, pids in parts.items()}
    whole = sum(spent.values()) or 1.0
    parts_ms = {name: cell.cpu_ms * s / whole for name, s in spent.items()}
    per_call: dict[str, float] = {}
    if redis_url:
        after = command_counts(redis_url)
        # The cell's calls, warm-up included: rps × duration counts the measured phase only.
        calls = max(1, round(cell.rps * duration) + warmup)
        for command in ("zadd", "eval", "evalsha", "bzmpop", "bzpopmin"):
            done = after.get(command, 0) - counts.get(command, 0)
            if done:
                per_call[command] = done / calls
    return Side(cell.rps, cell.cpu_ms, parts_ms, per_call, cell.failed)


def run(
    *,
    embedded: Target,
    four: Target,
    split: Target | None,
    web_pids: Callable[[], list[int]],
    limiter_pid: int,
    redis_pid: int | None,
    redis_url: str,
    repeats: int,
    duration: float,
    warmup: int,
    log: Callable[[str], None],
) -> ScaleOut:
    """`repeats` rounds of one cell each, in turn forwards and backwards."""
    out = ScaleOut(redis_counted=redis_pid is not None)
    four_parts: dict[str, Callable[[], list[int]]] = {
        "web": web_pids,
        "limiter": lambda: [limiter_pid],
    }
    if redis_pid is not None:
        four_parts["redis"] = lambda: [redis_pid]
    sides = ["embedded", "four", *(["split"] if split is not None else [])]
    for repeat in range(repeats):
        for side in sides if repeat % 2 == 0 else sides[::-1]:
            if side == "four":
                cell = _cell(
                    four, four_parts, duration=duration, warmup=warmup, redis_url=redis_url
                )
            else:
                target = embedded if side == "embedded" else split
                assert target is not None
                cell = _cell(target, {"web": target.pids}, duration=duration, warmup=warmup)
            getattr(out, side).append(cell)
            log(
                f"scale-out {side}: {cell.rps:.0f} req/s, {cell.cpu_ms:.2f} ms CPU a call "
                + ", ".join(f"{k} {v:.2f}" for k, v in cell.parts_ms.items())
                + (" | " + ", ".join(f"{k} {v:.2f}" for k, v in cell.per_call.items()))
            )
    return out
