"""How `make test` hands out the suite (a pytest plugin, loaded by tests/conftest.py).

Its first part runs in parallel (pytest-xdist, --dist loadgroup --no-loadscope-reorder):
each unit of work, a file, runs on one worker so that its module-scoped servers start
once, and units are handed out in the session's order, the longest first, so that none
starts last and leaves the other workers idle at the end. Its second part runs the tests
marked `alone` by themselves.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# The longest-running units first, so that in a parallel run (`make test`: pytest-xdist
# with --no-loadscope-reorder, which hands units out in this order) none starts last and
# leaves the other workers idle at the end. Ranked by their wall time in a parallel run
# (seconds, on this 2-core machine, beside the other workers and three other sessions'
# work: load 8 to 16), as tests/cpu_by_unit.py records it; the rest follow in file order.
SLOW_FIRST = (
    "tests/bench/test_bench_quick.py",  # 255: one test, the benchmark harness end to end
    "tests/isolation/",  # 213
    "tests/fuzz/test_ops_api.py",  # 209, in two units (SPLIT)
    "tests/jobs/test_restart.py",  # 193: two tests, each a poller killed and restarted
    "tests/gateway/test_limits_live.py",  # 145
    "tests/dashboard/test_route_table.py",  # 142
    "tests/gateway/test_coalesce.py",  # 118
    "tests/usage/test_amounts.py",  # 101 (a SQLite and a PostgreSQL server)
    "tests/oidc/test_sso_browser.py",  # 101
    "tests/bench/test_dynamic.py",  # 96
    "tests/dashboard/test_browser.py",  # 93
    "tests/gateway/test_errors.py",  # 92
    "tests/limiter/test_refusal_promises.py",  # 90: a state machine, pure CPU
    "tests/gateway/test_model_ceilings.py",  # 90
    "tests/fuzz/",  # 48 to 84
    "tests/gateway/test_shadow_limits.py",  # 78: a minute of calls at one a second
    "tests/scaleout/",  # 30 to 76
    "tests/jobs/test_app_migration.py",  # 73
    "tests/gateway/test_secret_key.py",  # 59
    "tests/limiter/test_engine_invariants.py",  # 57
    "tests/jobs/test_file_ownership.py",  # 56
    "tests/test_dockerfile.py",  # 52
    "tests/jobs/",  # 20 to 52
    "tests/gateway/test_audio.py",  # 50
    "tests/alerts/",  # 15 to 45
)
# Files split into several units (their tests dealt out in turn), each starting the file's
# servers of its own: as one unit, the file would be the run's longest.
SPLIT = {"tests/fuzz/test_ops_api.py": 2}


def unit_of(nodeid: str) -> str:
    # One file is one unit of work (its module-scoped servers start once); tests/isolation
    # shares one server across its files, so the package is one unit.
    path = nodeid.split("::", 1)[0]
    return "tests/isolation/" if path.startswith("tests/isolation/") else path


def _units(items: list[pytest.Item]) -> dict[pytest.Item, str]:
    units, dealt = {}, dict.fromkeys(SPLIT, 0)
    for item in items:
        unit = unit_of(item.nodeid)
        if unit in SPLIT:
            part, dealt[unit] = dealt[unit] % SPLIT[unit], dealt[unit] + 1
            unit = f"{unit}#{part}"
        units[item] = unit
    return units


def rank(item: pytest.Item) -> int:
    """Where the item's unit stands in SLOW_FIRST (the rest after, in file order)."""
    unit = unit_of(item.nodeid)
    return next(
        (i for i, prefix in enumerate(SLOW_FIRST) if unit.startswith(prefix)), len(SLOW_FIRST)
    )


ALONE_MARK = re.compile(r"\bmark\.alone\b")


def mentions_alone(path: Path) -> bool:
    """Whether the file names the mark (`pytest.mark.alone`, `pytestmark = ...mark.alone`):
    a file that only says the word ("alone") in prose is not collected by `-m alone`."""
    return ALONE_MARK.search(path.read_text(errors="replace")) is not None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """`-m alone` (make test's second part) collects only the test files that mention the
    mark: importing all the others took seconds of a part that runs on its own. The
    collection hook below makes sure that no `alone` test is in a file that does not."""
    name = collection_path.name
    if config.option.markexpr == "alone" and name.startswith("test_") and name.endswith(".py"):
        return None if mentions_alone(collection_path) else True
    return None


# A wrapper, because the two halves must come at different times. The group marks go on
# before any implementation runs: pytest-xdist's worker reads them in its own hook of the
# same name (without them, a file's tests were spread over every worker, each starting
# the file's servers again). The sort comes after every implementation: pytest-django's
# (tryfirst) reorders the whole session by database use, which put the units whose tests
# use `db` first and the slowest ones (which mostly do not) hundreds of seconds late.
@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]):
    for item, unit in _units(items).items():
        item.add_marker(pytest.mark.xdist_group(unit))
        if item.get_closest_marker("alone") and not mentions_alone(item.path):
            raise pytest.UsageError(
                f"{item.nodeid} is marked alone, but its file does not name the mark: "
                "`-m alone` would not collect it (tests/scheduling.py, ALONE_MARK)"
            )
    result = yield
    items.sort(key=rank)  # stable: the order within a file is kept
    return result
