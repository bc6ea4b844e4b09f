"""`python -m bench [--quick] [--duration S] [--out docs/benchmark.md]`: measure Sluice
against its baselines on loopback and print one markdown table (see bench/__init__.py).

A development tool, not part of the served application: it starts every server it
measures as a subprocess, so it needs no Django set-up of its own.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench import report, runner
from bench.coalesce import table as coalesce_table

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def write_report(path: Path, text: str) -> None:
    """Replace the part of `path` between the bench markers (the prose around it is kept),
    or write the whole file when it has none."""
    current = path.read_text() if path.exists() else ""
    if START in current and END in current:
        head, rest = current.split(START, 1)
        text = f"{head}{START}\n{text}{END}{rest.split(END, 1)[1]}"
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark Sluice against the sandbox, the bare-Django floor and itself scaled out."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a reduced run (about two minutes)")
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
        choices=["coalesce"],
        help="run one scenario alone: coalesce = embeddings coalescing, with and without",
    )
    args = parser.parse_args(argv)

    size = runner.QUICK if args.quick else runner.FULL
    if args.duration:
        size = replace(size, duration=args.duration)
    started, load_before = time.monotonic(), runner.load_average()
    command = "python -m " + shlex.join(["bench", *(argv if argv is not None else sys.argv[1:])])
    if args.only == "coalesce":
        figures = runner.run_coalesce(
            size, lambda line: print(f"[bench] {line}", file=sys.stderr, flush=True)
        )
        text = "\n\n".join(
            [
                f"Command: `{command}`",
                report.machine(load_before, runner.load_average()),
                coalesce_table(figures),
                f"Total run time {time.monotonic() - started:.0f} s; medians of {size.repeats} "
                "run(s); the upstream is the sandbox with 20 ms latency.",
            ]
        )
        print(text)
        return
    results = runner.run(
        size,
        redis_url=args.redis_url,
        postgres_url=args.postgres_url,
        log=lambda line: print(f"[bench] {line}", file=sys.stderr, flush=True),
    )
    notes = [
        f"Total run time {time.monotonic() - started:.0f} s. Latency cells: "
        f"{size.duration:g} s of load each, median of {size.repeats} run(s); "
        "the upstream is the sandbox with 20 ms latency. "
        "Added latency = through the gateway minus directly against the sandbox, same concurrency.",
    ]
    if not results.uvicorn:
        notes.append("uvicorn is not installed: the floor was measured under daphne only.")
    text = report.render(
        results,
        command=command,
        machine_line=report.machine(load_before, runner.load_average()),
        notes=notes,
    )
    print(text)
    if args.out:
        write_report(args.out, text)


if __name__ == "__main__":
    main()
