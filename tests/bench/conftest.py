"""The benchmark's servers in its tests start on the test run's migrated databases
(tests/databases.py) instead of migrating their own: none of these tests is about migrating.
Where a test asks (`forked_python`), its Python processes are forked from the test
process's warm Python (tests/forkserver.py) instead of importing Django afresh each."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import procs
from bench.servers import SQLITE_TEMPLATE
from tests import databases, forkserver


@pytest.fixture
def migrated_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SQLITE_TEMPLATE, str(databases.sqlite_template()))


class ForkedPython:
    """bench.procs's `PythonStarter` through the fork server: a fresh `manage.py` costs
    about 0.6 s more CPU than a fork. Each server gets a session of its own, as bench.procs
    starts them, since bench.procs.stop signals the server's process group."""

    def spawn(self, args: list[str], env: dict[str, str], log: Path) -> procs.Process:
        with open(log, "ab") as output:
            return forkserver.spawn(args, env=env, cwd=procs.ROOT, stdout=output, new_session=True)

    def run(self, args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            process = forkserver.spawn(args, env=env, cwd=procs.ROOT, stdout=out, stderr=err)
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
            out.seek(0)
            err.seek(0)
            return code, out.read(), err.read()


@pytest.fixture
def forked_python() -> Iterator[None]:
    with procs.python_started_by(ForkedPython()):
        yield
