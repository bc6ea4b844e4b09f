"""`python -m bench [--quick] [--duration S] [--only PART] [--out FILE]`:
measure Sluice against its baselines on loopback and print markdown tables (see
bench/__init__.py): the gateway's (latency, throughput, CPU, decisions, accuracy, and
embeddings coalescing), and issue 11's scenarios against Together's dynamic limits
(bench/dynamic.py), usage recording's CPU cost (bench/usage_cpu.py), sharded limiters
simulated (bench/shards.py), a flood refused locally (bench/flood.py) and issue 21's shares
scenario (bench/shares.py). `--only coalesce` runs the coalescing scenario alone (printed
only), and `--only split` what splitting into four processes costs a call (bench/split.py;
printed only, never part of a whole run).

A development tool, not part of the served application: it starts every server it
measures as a subprocess, so it needs no Django set-up of its own.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bench import dynamic, flood, report, runner, shards_report, shares, split, usage_cpu
from bench.coalesce import table as coalesce_table
from bench.servers import Ceiling

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
# The dynamic scenarios' own part of the page, so `--only` rewrites one part only.
DYNAMIC_START, DYNAMIC_END = "<!-- bench:dynamic:start -->", "<!-- bench:dynamic:end -->"
# Usage recording's CPU cost (bench/usage_cpu.py), its own part too.
USAGE_START, USAGE_END = "<!-- bench:usage:start -->", "<!-- bench:usage:end -->"
# Sharded limiters simulated (bench/shards.py), its own part too.
SHARDS_START, SHARDS_END = "<!-- bench:shards:start -->", "<!-- bench:shards:end -->"
# A flood refused locally (bench/flood.py), its own part too.
FLOOD_START, FLOOD_END = "<!-- bench:flood:start -->", "<!-- bench:flood:end -->"
# Issue 21's shares scenario (bench/shares.py), its own part too.
SHARES_START, SHARES_END = "<!-- bench:shares:start -->", "<!-- bench:shares:end -->"
PARTS = ("gateway", "dynamic", "coalesce", "usage", "shards", "flood", "shares", "split")


def write_report(path: Path, text: str, start: str = START, end: str = END) -> None:
    """Replace the part of `path` between the `start` and `end` markers (the prose around
    it is kept), or write the whole file when it has none."""
    current = path.read_text() if path.exists() else ""
    if start in current and end in current:
        head, rest = current.split(start, 1)
        text = f"{head}{start}\n{text}{end}{rest.split(end, 1)[1]}"
    path.write_text(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark Sluice against the sandbox, the bare-Django floor and itself scaled out, "
            "and against Together's dynamic limits as the sandbox plays them."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a reduced run (a few minutes)")
    parser.add_argument("--duration", type=float, help="seconds of load per latency cell")
    parser.add_argument("--out", type=Path, help="also write the report to this markdown file")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/11",
        help="a Redis database of the benchmark's own: it is flushed",
    )
    parser.add_argument(
        "--postgres-url",
        default="postgres://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server where a throwaway database is created and dropped",
    )
    parser.add_argument(
        "--only",
        choices=PARTS,
        help=(
            "run one part: the gateway's measurements, issue 11's dynamic-limit scenarios, "
            "embeddings coalescing alone, usage recording's CPU cost, sharded limiters "
            "simulated (no servers: the engine on a simulated clock), a flood refused "
            "locally, issue 21's shares, or what splitting into four processes costs a call "
            "(floors and Sluice, closed and open loop; only when asked)"
        ),
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    command = "python -m " + shlex.join(["bench", *(argv if argv is not None else sys.argv[1:])])

    def log(line: str) -> None:
        print(f"[bench] {line}", file=sys.stderr, flush=True)

    if args.only == "coalesce":
        print(_coalesce(args, command, log))
        return
    if args.only == "split":
        print(_split(args, command, log))
        return
    # Each part in this order, into its own markers of the report (`--out`).
    parts = (
        ("gateway", _gateway, START, END),
        ("usage", _usage, USAGE_START, USAGE_END),
        ("flood", _flood, FLOOD_START, FLOOD_END),
        ("dynamic", _dynamic, DYNAMIC_START, DYNAMIC_END),
        ("shards", _shards, SHARDS_START, SHARDS_END),
        ("shares", _shares, SHARES_START, SHARES_END),
    )
    for name, run, start, end in parts:
        if args.only in (None, name):
            text = run(args, command, log)
            print(text)
            if args.out:
                write_report(args.out, text, start, end)


def _shares(args: argparse.Namespace, command: str, log: Callable[[str], None]) -> str:
    started, load_before = time.monotonic(), runner.load_average()
    figures = shares.table(shares.run(log))
    machine = report.machine(load_before, runner.load_average())
    return (
        f"Command: `{command}`\n\n{machine}\n\n{figures}"
        f"\nRun time {time.monotonic() - started:.0f} s.\n"
    )


def _split(args: argparse.Namespace, command: str, log: Callable[[str], None]) -> str:
    size = split.FULL if not args.quick else replace(split.FULL, rounds=2, duration=2.0)
    if args.duration:
        size = replace(size, duration=args.duration)
    ceiling = Ceiling(runner.ACCOUNT_RPM, runner.ACCOUNT_PACE, runner.FULL.key_max_wait)
    started, load_before = time.monotonic(), runner.load_average()
    with tempfile.TemporaryDirectory(prefix="sluice-bench-split-") as tmp:
        comparisons = split.run(
            Path(tmp),
            size,
            ceiling=ceiling,
            redis_url=args.redis_url,
            postgres_url=args.postgres_url,
            log=log,
        )
    return "\n\n".join(
        [
            f"Command: `{command}`",
            report.machine(load_before, runner.load_average()),
            split.markdown(comparisons),
            f"Run time {time.monotonic() - started:.0f} s; {size.rounds} alternated rounds of "
            f"{size.duration:g} s a cell, medians; the upstream is the sandbox with 20 ms "
            "latency; ÷ 1 process is the median of each round's ratio to its one-process cell.",
        ]
    )


def _gateway(args: argparse.Namespace, command: str, log: Callable[[str], None]) -> str:
    size = runner.QUICK if args.quick else runner.FULL
    if args.duration:
        size = replace(size, duration=args.duration)
    started, load_before = time.monotonic(), runner.load_average()
    results = runner.run(
        size,
        redis_url=args.redis_url,
        postgres_url=args.postgres_url,
        log=log,
    )
    notes = [
        f"Total run time {time.monotonic() - started:.0f} s. Latency cells: "
        f"{size.duration:g} s of load each, median of {size.repeats} run(s); "
        "the upstream is the sandbox with 20 ms latency. "
        "Added latency = through the gateway minus directly against the sandbox, same concurrency.",
    ]
    if not results.uvicorn:
        notes.append("uvicorn is not installed: the floor was measured under daphne only.")
    return report.render(
        results,
        command=command,
        machine_line=report.machine(load_before, runner.load_average()),
        notes=notes,
    )


def _coalesce(args: argparse.Namespace, command: str, log: Callable[[str], None]) -> str:
    size = runner.QUICK if args.quick else runner.FULL
    if args.duration:
        size = replace(size, duration=args.duration)
    started, load_before = time.monotonic(), runner.load_average()
    figures = runner.run_coalesce(size, log)
    return "\n\n".join(
        [
            f"Command: `{command}`",
            report.machine(load_before, runner.load_average()),
            coalesce_table(figures),
            f"Total run time {time.monotonic() - started:.0f} s; medians of {size.repeats} "
            "run(s); the upstream is the sandbox with 20 ms latency.",
        ]
    )


def _usage(args: argparse.Namespace, command: str, log: Callable[[str], None]) -> str:
    repeats, duration = (3, 2.0) if args.quick else (9, 3.0)
    started, load_before = time.monotonic(), runner.load_average()
    figures = usage_cpu.measure(repeats=repeats, duration=duration, log=log)
    return (
        "\n\n".join(
            [
                f"Command: `{command}`",
                report.machine(load_before, runner.load_average()),
                figures.markdown(),
                f"Run time {time.monotonic() - started:.0f} s; {repeats} runs of {duration:g} s "
                "each way, in turns; the upstream is the sandbox with 20 ms latency.",
            ]
        )
        + "\n"
    )


def _flood(args: argparse.Namespace, command: str, log: Callable[[str], None]) -> str:
    duration, storm = (4.0, 2.0) if args.quick else (10.0, 5.0)
    started, load_before = time.monotonic(), runner.load_average()
    results = flood.measure(duration=duration, storm=storm, log=log)
    return (
        "\n\n".join(
            [
                f"Command: `{command}`",
                report.machine(load_before, runner.load_average()),
                flood.markdown(results),
                f"Run time {time.monotonic() - started:.0f} s; phases of {duration:g} s, the "
                f"storm {storm:g} s; one web process (uvicorn; the last under daphne) with "
                "its embedded limiter each way; the upstream is the sandbox with 20 ms latency. "
                "One run each way on a shared, noisy machine: read the columns against each "
                "other, not as absolutes.",
            ]
        )
        + "\n"
    )


def _dynamic(args: argparse.Namespace, command: str, log: Callable[[str], None]) -> str:
    size = dynamic.QUICK if args.quick else dynamic.FULL
    started, load_before = time.monotonic(), runner.load_average()
    with tempfile.TemporaryDirectory(prefix="sluice-bench-dynamic-") as tmp:
        results = dynamic.run(size, Path(tmp), log)
    notes = [
        f"Run time {time.monotonic() - started:.0f} s. The upstream is the sandbox with "
        f"{dynamic.UPSTREAM_LATENCY_MS:g} ms latency in its dynamic mode; demand is open loop "
        "(bench/openloop.py): requests at fixed moments, none retried by the caller.",
    ]
    if args.quick:
        notes.append(
            f"--quick: ramps of {size.ramp_seconds:g} s, not the issue's 4 minutes; "
            "the targets are for the full run."
        )
    return report.render_dynamic(
        results,
        command=command,
        machine_line=report.machine(load_before, runner.load_average()),
        notes=notes,
    )


def _shards(args: argparse.Namespace, command: str, log: Callable[[str], None]) -> str:
    seconds = shards_report.QUICK if args.quick else shards_report.FULL
    log(f"sharded limiters, {seconds:g} s simulated, one limiter and then the shards")
    load_before = runner.load_average()
    pair = shards_report.run(seconds)
    return (
        "\n\n".join(
            [
                f"Command: `{command}`",
                report.machine(load_before, runner.load_average()),
                shards_report.render(pair),
            ]
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
