"""Real servers for tests: Sluice as a subprocess, the sandbox upstream in a thread.

Tests talk to them over HTTP exactly as users would. Everything listens on 127.0.0.1
and is stopped at the end of the test.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from sandbox import SandboxConfig, run_in_thread
from tests import databases, forkserver
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# A test's own subprocess, or a server's process (forked by tests/forkserver.py).
Process = subprocess.Popen | forkserver.Process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 30.0, process: Process | None = None) -> None:
    def answers() -> bool:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        try:
            # Any answer but a 404: another server that took the port between free_port()
            # and our bind (a sandbox) answers /healthz 404, while ours exits non-zero.
            return httpx.get(url, timeout=1.0).status_code != 404
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, within=timeout, what=url)
    except AssertionError as timed_out:
        raise TimeoutError(f"{url} did not answer within {timeout}s") from timed_out


class SluiceServer:
    """`manage.py serve` on a free port, with its own database and sandbox upstream.

    `env` adds or overrides environment variables (REDIS_URL, DATABASE_URL...);
    `web_processes` > 1 starts several servers sharing one database and layer (needs
    REDIS_URL), and `limiter_worker` starts `manage.py runworker limiter` beside them.
    """

    admin_username = databases.ADMIN_USERNAME

    def __init__(
        self,
        tmp_path: Path,
        *,
        env: dict[str, str] | None = None,
        sandbox: SandboxConfig | None = None,
        web_processes: int = 1,
        limiter_worker: bool = False,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.sandbox = run_in_thread(config=sandbox or SandboxConfig())
        self.admin_password = secrets.token_urlsafe(12)
        self.admin_token = secrets.token_urlsafe(24)
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'sluice.sqlite3'}",
            "TOGETHER_BASE_URL": self.sandbox.v1_url,
            "TOGETHER_API_KEY": "",
            "SLUICE_SANDBOX": "1",
            "SECRET_KEY": "test-" + secrets.token_urlsafe(16),
            "SLUICE_ADMIN_TOKEN": self.admin_token,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.ports = [free_port() for _ in range(web_processes)]
        self.limiter_worker = limiter_worker
        self.worker_env = worker_env or {}  # on top of `env`, for the limiter worker only
        self.processes: list[Process] = []
        self.worker: Process | None = None
        self._shell: Shell | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    @property
    def sandbox_url(self) -> str:
        return self.sandbox.url

    # --- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> SluiceServer:
        database = self.env["DATABASE_URL"]
        if database.startswith("sqlite:///"):
            # Migrating takes seconds: copy a database migrated once per test run.
            databases.copy_migrated_sqlite(Path(database.removeprefix("sqlite:///")))
            self.admin_password = databases.admin_password()
        elif databases.is_migrated_copy(database):  # from databases.postgres_database()
            self.admin_password = databases.admin_password()
        else:
            self.manage("migrate", "--noinput", "-v0")
            self.python(
                "from django.contrib.auth import get_user_model;"
                "get_user_model().objects.create_superuser("
                f"{self.admin_username!r}, '', {self.admin_password!r})"
            )
        try:
            if self.limiter_worker:
                self.start_worker()
            for port in self.ports:
                self.processes.append(
                    self._spawn("serve", "--port", str(port), log=f"serve-{port}.log")
                )
            for index in range(len(self.ports)):
                self._wait_listening(index)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_listening(self, index: int, attempts: int = 3) -> None:
        """Wait for web process `index`; should another process have taken its port since
        free_port() chose it (`serve` then exits non-zero), start it on a new one."""
        for attempt in range(attempts):
            try:
                wait_for_http(f"{self.urls[index]}/healthz", process=self.processes[index])
                return
            except RuntimeError:
                if attempt == attempts - 1 or "could not listen" not in self.log(
                    f"serve-{self.ports[index]}.log"
                ):
                    raise
            port = self.ports[index] = free_port()
            self.processes[index] = self._spawn(
                "serve", "--port", str(port), log=f"serve-{port}.log"
            )

    def __exit__(self, *exc: object) -> None:
        if self._shell is not None:
            self._shell.close()
        stop_all([*self.processes, *([self.worker] if self.worker else [])])
        self.sandbox.stop()

    def _spawn(
        self, command: str, *args: str, log: str, env: dict[str, str] | None = None
    ) -> forkserver.Process:
        """A server process (`serve`, `runworker`). Without Django's system checks: 0.3 to
        0.4 s of CPU a process, for the same project each time, checked once instead
        (tests/test_system_checks.py)."""
        with open(self.tmp_path / log, "ab") as output:
            return forkserver.spawn(
                [PYTHON, "manage.py", command, "--skip-checks", *args],
                env={**self.env, **(env or {})},
                stdout=output,
            )

    def restart(self) -> None:
        """Stop every web process (SIGTERM: the drain runs, as in a deploy) and start them
        again on the same ports, database and sandbox."""
        stop_all(self.processes)
        self.processes = [
            self._spawn("serve", "--port", str(port), log=f"serve-{port}.log")
            for port in self.ports
        ]
        for process, url in zip(self.processes, self.urls, strict=True):
            wait_for_http(f"{url}/healthz", process=process)

    def start_worker(self) -> None:
        self.worker = self._spawn("runworker", "limiter", log="worker.log", env=self.worker_env)

    def kill_worker(self) -> None:
        assert self.worker is not None
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait(10)

    def log(self, name: str | None = None) -> str:
        path = self.tmp_path / (name or f"serve-{self.ports[0]}.log")
        return path.read_text(errors="replace") if path.exists() else ""

    # --- set-up through manage.py --------------------------------------------------------
    def manage(self, *args: str) -> str:
        """Run a command; its output (stdout and stderr together)."""
        code, output = forkserver.run([PYTHON, "manage.py", *args], env=self.env, timeout=60)
        if code:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{output}")
        return output

    def manage_fails(self, *args: str) -> str:
        """Run a command that must fail; its output."""
        code, output = forkserver.run([PYTHON, "manage.py", *args], env=self.env, timeout=60)
        assert code != 0, f"manage.py {' '.join(args)} succeeded:\n{output}"
        return output

    def python(self, code: str) -> str:
        """Run `code` in a Django shell against this deployment's database; its output.

        One `manage.py shell` per server answers every call (Django starts once, not per
        call: a process start costs about a second of CPU on this machine)."""
        if self._shell is None or self._shell.alive_with() != self.env:
            if self._shell is not None:
                self._shell.close()
            self._shell = Shell(self.env)
        return self._shell.run(code)

    def issue_key(self, team: str, profile: str | None = None) -> str:
        """A new key for `team` (created if need be), through the ops API."""
        api = httpx.Client(
            base_url=f"{self.url}/api",
            headers={"authorization": f"Bearer {self.admin_token}"},
            timeout=30,
        )
        with api:
            teams = {t["name"]: t["id"] for t in api.get("/teams").raise_for_status().json()}
            if team not in teams:
                teams[team] = (
                    api.post("/teams", json={"name": team}).raise_for_status().json()["id"]
                )
            issued = api.post(
                f"/teams/{teams[team]}/keys", json={"profile": profile}
            ).raise_for_status()
            return issued.json()["secret"]

    def make_profile(
        self, name: str, limits: dict[str, dict[str, Any]], *, account: bool = False
    ) -> None:
        """Create (or replace) a profile: {endpoint: {field: value}}; missing endpoints copy
        the default profile. With `account`, make it the default upstream account's ceiling."""
        self.python(
            "import json\n"
            "from limiter.models import LimitProfile, EndpointLimit, UpstreamAccount\n"
            f"name, limits, account = {name!r}, "
            f"json.loads({json.dumps(json.dumps(limits))}), {account!r}\n"
            "profile, _ = LimitProfile.objects.get_or_create(name=name)\n"
            "profile.limits.all().delete()\n"
            "for row in EndpointLimit.objects.filter(profile__name='default'):\n"
            "    row.pk, row.profile = None, profile\n"
            "    for field, value in limits.get(row.endpoint, {}).items():\n"
            "        setattr(row, field, value)\n"
            "    row.save()\n"
            "if account:\n"
            "    UpstreamAccount.objects.filter(is_default=True).update(profile=profile)\n"
        )


# What the shell child runs: a code snippet a line (JSON), its output and outcome back as
# one JSON line. Database connections are closed after each, as a fresh process would.
_SHELL_LOOP = """
import contextlib, io, json, sys, traceback
from django.db import connections
answer = sys.stdout
for line in sys.stdin:
    output, ok = io.StringIO(), True
    try:
        with contextlib.redirect_stdout(output):
            exec(compile(json.loads(line), "<test>", "exec"), {"__name__": "__test__"})
    except BaseException:
        ok = False
        output.write(traceback.format_exc())
    finally:
        connections.close_all()
    answer.write(json.dumps({"ok": ok, "output": output.getvalue()}) + chr(10))
    answer.flush()
"""


class Shell:
    """A long-lived `manage.py shell` that runs code snippets one at a time."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = dict(env)
        self.lock = threading.Lock()
        self.process = forkserver.spawn(
            [PYTHON, "manage.py", "shell", "-v", "0", "-c", _SHELL_LOOP],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def alive_with(self) -> dict[str, str] | None:
        """The environment it runs with, or None once it has exited."""
        return self.env if self.process.poll() is None else None

    def run(self, code: str, timeout: float = 60.0) -> str:
        with self.lock:
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.write(json.dumps(code) + "\n")
            self.process.stdin.flush()
            ready, _, _ = select.select([self.process.stdout], [], [], timeout)
            line = self.process.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise RuntimeError(f"the test shell gave no answer within {timeout:g} s:\n{code}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise RuntimeError(f"manage.py shell failed:\n{answer['output']}")
        return str(answer["output"])

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def stop(process: Process, timeout: float = 10.0) -> None:
    stop_all([process], timeout)


def stop_all(processes: Sequence[Process], timeout: float = 10.0) -> None:
    """SIGTERM to every process first, then wait for each: they drain side by side, as in
    a deploy, instead of one after another."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# --- a private Redis ------------------------------------------------------------------------
class RedisServer:
    """A redis-server of a test's own on a free loopback port, so that it may be restarted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._listening, within=10, what="redis-server listening")

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextmanager
def private_redis_server() -> Iterator[RedisServer]:
    """Callers check first that redis-server is installed (tests.conftest.need_redis_server)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
