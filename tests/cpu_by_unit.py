"""The CPU each unit of work costs (a pytest plugin, loaded by tests/conftest.py; off unless
SLUICE_TEST_CPU_LOG names a file).

A test's CPU is mostly spent in the processes it starts (servers, shells, browsers), not in
pytest's own: at each change of unit (tests/scheduling.py) the plugin reads the CPU used so
far by the test process and every process below it (`/proc`: their own time and that of
the children they have reaped, as the fork server reaps the servers) and appends the
difference, with the unit's wall time, as one JSON line to the file. Each xdist worker runs
its units one after another, so the difference is the unit's. What measured SLOW_FIRST:

    SLUICE_TEST_CPU_LOG=/tmp/cpu.jsonl make test
    python -m tests.cpu_by_unit /tmp/cpu.jsonl
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.scheduling import unit_of

_LOG = os.environ.get("SLUICE_TEST_CPU_LOG")
_TICKS = os.sysconf("SC_CLK_TCK")


def _tree_cpu(root: int) -> float:
    """Seconds of CPU of `root` and its living descendants, with what each has reaped."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while read
        # After the command: state ppid ... utime(12) stime(13) cutime(14) cstime(15)
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = sum(int(value) for value in fields[11:15]) / _TICKS
    children: dict[int, list[int]] = defaultdict(list)
    for pid, parent in parents.items():
        children[parent].append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo.extend(children[pid])
    return total


class _Recorder:
    def __init__(self, path: str) -> None:
        self.path = path
        self.unit: str | None = None
        self.cpu = 0.0
        self.wall = 0.0

    def _close_unit(self) -> None:
        cpu, wall = _tree_cpu(os.getpid()), time.monotonic()
        if self.unit is not None:
            line = {
                "unit": self.unit,
                "cpu": round(cpu - self.cpu, 2),
                "wall": round(wall - self.wall, 2),
                # Which worker ran it and when it ended: how busy each worker was, and
                # how long the last ones ran after the others were done.
                "worker": os.environ.get("PYTEST_XDIST_WORKER", "-"),
                "ended": round(time.time(), 2),
            }
            with open(self.path, "a") as log:
                log.write(json.dumps(line) + "\n")
        self.cpu, self.wall = cpu, wall

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self, nodeid: str, location: object) -> None:
        unit = unit_of(nodeid)
        if unit != self.unit:
            self._close_unit()
            self.unit = unit

    def pytest_sessionfinish(self) -> None:
        self._close_unit()


def pytest_configure(config: pytest.Config) -> None:
    # In each xdist worker, or in a run without workers; not in the xdist controller,
    # which hears every worker's tests start and whose processes are the workers.
    controller = bool(getattr(config.option, "numprocesses", None)) and not hasattr(
        config, "workerinput"
    )
    if _LOG and not config.option.collectonly and not controller:
        config.pluginmanager.register(_Recorder(_LOG), "cpu_by_unit_recorder")


def main(path: str) -> None:
    """The units by CPU, largest first, with their wall time and the total."""
    cpu: dict[str, float] = defaultdict(float)
    wall: dict[str, float] = defaultdict(float)
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        cpu[row["unit"]] += row["cpu"]
        wall[row["unit"]] += row["wall"]
    for unit in sorted(cpu, key=cpu.__getitem__, reverse=True):
        print(f"{cpu[unit]:8.1f} s CPU {wall[unit]:8.1f} s wall  {unit}")
    print(f"{sum(cpu.values()):8.1f} s CPU {sum(wall.values()):8.1f} s wall  in all")


if __name__ == "__main__":
    main(sys.argv[1])
