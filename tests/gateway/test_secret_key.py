"""Without a SECRET_KEY and with DEBUG off, the long-running processes refuse to start
rather than run on the built-in development key (sessions, the sandbox's bearer and the
throttle's namespace all derive from it). One-off commands keep working."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.databases import copy_migrated_sqlite
from tests.servers import PYTHON, ROOT, free_port, stop, wait_for_http


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    # SECRET_KEY="" (not absent): a developer's .env must not fill it in behind the test.
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "SECRET_KEY": "",
        "DEBUG": "false",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "TOGETHER_API_KEY": "",
        **extra,
    }


def exits(args: list[str], env: dict[str, str], within: float = 30.0) -> tuple[int, str]:
    """Run manage.py; its exit code and output. Still running after `within` s is a failure."""
    process = subprocess.Popen(
        [PYTHON, "manage.py", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        output, _ = process.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        stop(process)
        pytest.fail(f"manage.py {' '.join(args)} started instead of refusing")
    return process.returncode, output


@pytest.mark.parametrize(
    "args", [["serve", "--port", "0"], ["runworker", "limiter"]], ids=["serve", "runworker"]
)
def test_refuses_to_start_on_the_development_key(tmp_path: Path, args: list[str]) -> None:
    if args[0] == "serve":
        args = ["serve", "--port", str(free_port())]
    code, output = exits(args, environment(tmp_path, REDIS_URL="redis://127.0.0.1:1/0"))
    assert code != 0
    assert "SECRET_KEY is not set" in output
    assert "Traceback" not in output


def test_one_off_commands_run_without_a_key(tmp_path: Path) -> None:
    code, output = exits(["check"], environment(tmp_path))
    assert code == 0, output


def test_debug_serves_on_the_development_key(tmp_path: Path) -> None:
    port = free_port()
    env = environment(tmp_path, DEBUG="true")
    copy_migrated_sqlite(tmp_path / "db.sqlite3")  # what `migrate` makes, made once a run
    process = subprocess.Popen(
        [PYTHON, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        started = time.monotonic()
        wait_for_http(f"http://127.0.0.1:{port}/healthz", process=process)
        assert time.monotonic() - started < 30
    finally:
        stop(process)
