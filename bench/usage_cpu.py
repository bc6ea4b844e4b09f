"""Gateway CPU per request with usage recording on, beside the same run with it off.

    python -m bench.usage_cpu [--repeats 5] [--duration 3]

Two Sluice deployments side by side on one sandbox upstream (20 ms), identical but for
SLUICE_USAGE_RECORDING, each with its own database. Each repeat measures both, in
turns (off, on, then on, off...), non-streaming chat at 16 callers like `make bench`'s
CPU row, so a drift of this shared machine's speed falls on both alike; the figures are
medians. CPU is the web process's own, read from /proc around the measured phase
(bench/latency.py). Target: recording costs at most 5% more CPU per request.
Callable alone (`measure`) so `python -m bench` can run it as one of its scenarios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.latency import Cell, Target, measure_once
from bench.procs import manage
from bench.runner import ACCOUNT_PACE, ACCOUNT_RPM, UPSTREAM_LATENCY_MS
from bench.servers import Ceiling, Sandbox, Sluice

CONCURRENCY = 16
TARGET_RATIO = 1.05


@dataclass
class UsageCpu:
    off: list[Cell]
    on: list[Cell]
    recorded: dict[str, int] = field(default_factory=dict)  # requests in each one's rollups

    @property
    def off_ms(self) -> float:
        return statistics.median(c.cpu_ms for c in self.off)

    @property
    def on_ms(self) -> float:
        return statistics.median(c.cpu_ms for c in self.on)

    @property
    def ratio(self) -> float:
        return self.on_ms / self.off_ms

    def markdown(self) -> str:
        verdict = "met" if self.ratio <= TARGET_RATIO else "**missed**"
        failed = sum(c.failed for c in self.off + self.on)
        return (
            "| measure | recording off | recording on | on / off | target |\n"
            "|---|---|---|---|---|\n"
            f"| gateway CPU per request, c={CONCURRENCY} (median of {len(self.on)}) "
            f"| {self.off_ms:.3f} ms | {self.on_ms:.3f} ms | {self.ratio:.3f} "
            f"| <= {TARGET_RATIO:.2f}: {verdict} |\n"
            f"| throughput | {statistics.median(c.rps for c in self.off):.0f} req/s "
            f"| {statistics.median(c.rps for c in self.on):.0f} req/s | | |\n"
            f"\nFailed requests: {failed}. Requests in the usage rollups, off / on: "
            f"{self.recorded.get('off')} / {self.recorded.get('on')}. "
            "Each run's CPU, off / on (ms): "
            + ", ".join(
                f"{a.cpu_ms:.3f} / {b.cpu_ms:.3f}" for a, b in zip(self.off, self.on, strict=True)
            )
        )


def measure(
    *, repeats: int = 5, duration: float = 3.0, warmup: int = 30, log: Callable[[str], None] = print
) -> UsageCpu:
    ceiling = Ceiling(ACCOUNT_RPM, ACCOUNT_PACE, 5.0)
    result = UsageCpu([], [])
    with tempfile.TemporaryDirectory(prefix="sluice-bench-usage-") as name:
        tmp = Path(name)
        (tmp / "off").mkdir()
        (tmp / "on").mkdir()
        with (
            Sandbox(tmp, UPSTREAM_LATENCY_MS) as sandbox,
            Sluice(
                tmp / "off", sandbox, ceiling, settings={"SLUICE_USAGE_RECORDING": "false"}
            ) as off,
            Sluice(tmp / "on", sandbox, ceiling, settings={"SLUICE_USAGE_RECORDING": "true"}) as on,
        ):
            targets = {
                "off": Target("off", [f"{off.urls[0]}/v1"], off.keys["open"], lambda: off.web_pids),
                "on": Target("on", [f"{on.urls[0]}/v1"], on.keys["open"], lambda: on.web_pids),
            }
            for run in range(repeats):
                order = ("off", "on") if run % 2 == 0 else ("on", "off")
                for label in order:
                    cell = measure_once(
                        targets[label],
                        concurrency=CONCURRENCY,
                        stream=False,
                        duration=duration,
                        warmup=warmup,
                    )
                    getattr(result, label).append(cell)
                log(
                    f"run {run + 1}: off {result.off[-1].cpu_ms:.3f} ms, "
                    f"on {result.on[-1].cpu_ms:.3f} ms"
                )
            # Proof that the runs differ as meant: requests in each one's rollups (written
            # every second, so the last second of `on` may not be in yet).
            result.recorded = {label: _recorded(d.env) for label, d in (("off", off), ("on", on))}
    return result


def _recorded(env: dict[str, str]) -> int:
    out = manage(
        env,
        "shell",
        "-v",
        "0",
        "-c",
        "from django.db.models import Sum\n"
        "from limiter.usage.models import UsageRollup\n"
        "print(UsageRollup.objects.aggregate(n=Sum('requests'))['n'] or 0)",
    )
    return int(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    print(measure(repeats=args.repeats, duration=args.duration).markdown())


if __name__ == "__main__":
    main()
