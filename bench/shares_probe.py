"""Why the shares scenario uses less of the ceiling than the pace: one enforcement's steady
scenario (bench/shares.py, without the moving and background runs), shares on and off in
the order given, logging the model's pace over each run and comparing the grants with it.

`python -m bench.shares_probe cushion on,off,on` (about 2.5 minutes a run). The pace is read
from the limiter's own `LearnedCeiling` row (written every 2 s while it changes) four times a
second; the grants from the answers' headers, as bench/shares.py counts them. For each run it
prints when the pace moved, the grants a second, and the grants over [10 s, 40 s) against
the integral of the pace in force (what the limiter allowed) and against 300 a minute.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import shares
from bench.dynamic import UPSTREAM_LATENCY_MS, run_openloop
from bench.procs import manage
from bench.servers import Sandbox, Sluice

POLL_SECONDS = 0.25


def _poll_pace(db: Path, samples: list[tuple[float, float]], stop: threading.Event) -> None:
    """(monotonic time, pace a minute) samples of the model's learned ceiling row."""
    while not stop.is_set():
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)
            try:
                row = con.execute("select pace_per_minute from limiter_learnedceiling").fetchone()
            finally:
                con.close()
            if row is not None:
                samples.append((time.monotonic(), float(row[0])))
        except sqlite3.Error:
            pass  # not created yet, or locked by the limiter's write: the next sample
        time.sleep(POLL_SECONDS)


def probe_one(sandbox: Sandbox, tmp: Path, on: bool, enforcement: str) -> dict[str, Any]:
    tmp.mkdir()
    with Sluice(tmp, sandbox, shares.CEILING) as sluice:
        sandbox.control({"reset": True, "dynamic": {**shares.LIMITS, "enforcement": enforcement}})
        command = f"from bench.shares import provision; provision({on!r})"
        out = manage(sluice.env, "shell", "-v", "0", "-c", command)
        keys = json.loads(out.strip().splitlines()[-1])
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        db = tmp / "sluice-uvicorn.sqlite3"
        poller = threading.Thread(target=_poll_pace, args=(db, samples, stop), daemon=True)
        poller.start()
        result = run_openloop(shares._streams(sluice, keys), shares.SECONDS)
        stop.set()
        poller.join()
        stats = sandbox.stats()
    start = result["mono_start"]
    paces = [(at - start, pace) for at, pace in samples]
    grants = sorted(
        r["at"] + r.get("queued_ms", 0) / 1000 for r in result["requests"] if r["status"] == 200
    )
    allowed = sum(
        pace / 60 * max(0.0, min(t1, shares.STEADY[1]) - max(t0, shares.STEADY[0]))
        for (t0, pace), (t1, _) in zip(paces, paces[1:], strict=False)
    )
    steady = sum(1 for g in grants if shares.STEADY[0] <= g < shares.STEADY[1])
    per_second = [sum(1 for g in grants if s <= g < s + 1) for s in range(int(shares.SECONDS))]
    moved = [
        (round(at, 1), pace)
        for i, (at, pace) in enumerate(paces)
        if i == 0 or pace != paces[i - 1][1]
    ]
    return {
        "shares": on,
        "steady_use": shares.figures(result, stats)["steady_use"],
        "steady_grants": steady,
        "pace_allowed": allowed,
        "pace_moved": moved,
        "per_second": per_second,
    }


def main() -> None:
    enforcement, order = sys.argv[1], [word == "on" for word in sys.argv[2].split(",")]
    with tempfile.TemporaryDirectory(prefix="sluice-bench-probe-") as tmp:
        with Sandbox(Path(tmp), UPSTREAM_LATENCY_MS) as sandbox:
            for i, on in enumerate(order):
                r = probe_one(sandbox, Path(tmp) / f"run{i}", on, enforcement)
                print(
                    f"{enforcement}, shares {'on' if on else 'off'}: "
                    f"{r['steady_grants']} grants in [10 s, 40 s) = "
                    f"{r['steady_use']:.1%} of 300/min, "
                    f"{r['steady_grants'] / r['pace_allowed']:.1%} of the pace in force "
                    f"({r['pace_allowed']:.1f}); pace moved {r['pace_moved']}; "
                    f"grants a second {r['per_second'][:45]}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
