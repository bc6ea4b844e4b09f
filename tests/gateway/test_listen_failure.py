"""`manage.py serve` on a port another process holds exits non-zero, saying so: daphne
logs the failure and stops, and the process used to exit 0, which a supervisor reads as
a clean stop (and the test servers' port retry could not tell from a crash)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.servers import ROOT


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
def test_serve_on_a_taken_port_exits_non_zero(tmp_path, server: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "manage.py", "serve", "--port", str(port), "--server", server],
            cwd=ROOT,
            env={
                "PATH": "/usr/bin:/bin",
                "DJANGO_SETTINGS_MODULE": "dashboard.settings",
                "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
                "SECRET_KEY": "listen-failure-test",
                "SLUICE_SANDBOX": "1",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0, done.stdout + done.stderr
    assert str(port) in done.stdout + done.stderr
