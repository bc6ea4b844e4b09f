"""The servers under test, each a context manager that stops its process group on exit:
the sandbox upstream, Sluice (embedded, or N web processes + a limiter worker over
Redis), and the floor under daphne or uvicorn. Everything listens on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

from bench.procs import (
    PYTHON,
    Process,
    free_port,
    http_json,
    manage,
    spawn,
    stop,
    wait_for_http,
)

LOOPBACK = "127.0.0.1"
# Migrated databases to copy instead of migrating a new one (3 to 4 s of CPU each): a SQLite
# file and a PostgreSQL template database's name. The benchmark's own runs leave them unset;
# its tests (tests/bench) name the test run's templates (tests/databases.py).
SQLITE_TEMPLATE = "SLUICE_BENCH_SQLITE_TEMPLATE"
POSTGRES_TEMPLATE = "SLUICE_BENCH_POSTGRES_TEMPLATE"
_migrated: set[str] = set()  # database URLs made from a template by this process
# Django's system checks, which a management command runs before it starts: 0.3 to 0.4 s of
# CPU a process, for the same project each time (the tests' own servers still run them), and
# outside what the benchmark measures; so its servers start without them.
SKIP_CHECKS = "--skip-checks"


def _migrated_copy(database_url: str) -> bool:
    """Whether the database at `database_url` is a copy of a migrated template: a
    PostgreSQL one made by ScaleOutServices, or a SQLite one copied now (when its file does
    not exist yet and a template is named) or earlier by this process."""
    if not database_url.startswith("sqlite:///"):
        return database_url in _migrated
    path = Path(database_url.removeprefix("sqlite:///"))
    if path.exists():
        return database_url in _migrated
    template = os.environ.get(SQLITE_TEMPLATE)
    if not template:
        return False
    shutil.copy(template, path)
    _migrated.add(database_url)
    return True


def base_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # embedded unless asked
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "DATABASE_URL": database_url,
            "SECRET_KEY": "bench-" + secrets.token_urlsafe(16),
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "WARNING",
            **extra,
        }
    )
    return env


class _OneProcess:
    """A server process on a free port of 127.0.0.1, ready once `ready_path` answers."""

    ready_path = "/"

    def __init__(self) -> None:
        self.port = free_port()
        self.process: Process

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self):
        try:
            wait_for_http(f"{self.url}{self.ready_path}", self.process)
        except BaseException:
            stop(self.process)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.process)


class Sandbox(_OneProcess):
    """`manage.py sandbox --latency-ms 20`: the simulated Together every path ends at."""

    ready_path = "/sandbox/stats"

    def __init__(self, tmp: Path, latency_ms: float) -> None:
        super().__init__()
        self.process = spawn(
            [
                PYTHON,
                "manage.py",
                "sandbox",
                SKIP_CHECKS,
                "--port",
                str(self.port),
                "--latency-ms",
                str(latency_ms),
            ],
            base_env(f"sqlite:///{tmp / 'sandbox.sqlite3'}"),
            tmp / "sandbox.log",
        )

    @property
    def v1_url(self) -> str:
        return f"{self.url}/v1"

    def control(self, patch: dict[str, Any]) -> None:
        http_json("POST", f"{self.url}/sandbox/control", patch)

    def chat_stats(self) -> dict[str, Any]:
        return self.stats()["chat"]

    def stats(self) -> dict[str, Any]:
        return http_json("GET", f"{self.url}/sandbox/stats")


@dataclass
class Ceiling:
    """The account ceiling under test and the key's longest queue wait."""

    account_rpm: int
    account_pace: int
    key_max_wait: float


class Sluice:
    """Sluice as deployed: `manage.py serve` x web, plus `runworker limiter` with Redis."""

    def __init__(
        self,
        tmp: Path,
        sandbox: Sandbox,
        ceiling: Ceiling,
        *,
        web: int = 1,
        redis_url: str = "",
        database_url: str = "",
        server: str = "uvicorn",  # serve's default
        settings: dict[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.server = server
        extra = {"TOGETHER_BASE_URL": sandbox.v1_url, "TOGETHER_API_KEY": "", "SLUICE_SANDBOX": "1"}
        extra.update(settings or {})  # Sluice's own settings for this deployment
        if redis_url:
            extra["REDIS_URL"] = redis_url
        self.env = base_env(
            database_url or f"sqlite:///{tmp / f'sluice-{server}.sqlite3'}", **extra
        )
        self.ceiling = ceiling
        self.ports = [free_port() for _ in range(web)]
        self.redis_url = redis_url
        self.web: list[Process] = []
        self.worker: Process | None = None
        self.keys: dict[str, str] = {}

    @property
    def urls(self) -> list[str]:
        return [f"http://{LOOPBACK}:{port}" for port in self.ports]

    @property
    def web_pids(self) -> list[int]:
        return [p.pid for p in self.web]

    def __enter__(self) -> Sluice:
        try:
            if not _migrated_copy(self.env["DATABASE_URL"]):
                manage(self.env, "migrate", "--noinput", "-v0")
            options = json.dumps(self.ceiling.__dict__)
            out = manage(
                self.env,
                "shell",
                "-v",
                "0",
                "-c",
                f"from bench.provision import main; main({options!r})",
            )
            self.keys = json.loads(out.strip().splitlines()[-1])
            if self.redis_url:
                self.worker = spawn(
                    [PYTHON, "manage.py", "runworker", "limiter", SKIP_CHECKS],
                    self.env,
                    self.tmp / "worker.log",
                )
            for port in self.ports:
                self.web.append(
                    spawn(
                        [
                            PYTHON,
                            "manage.py",
                            "serve",
                            SKIP_CHECKS,
                            "--port",
                            str(port),
                            "--server",
                            self.server,
                        ],
                        self.env,
                        self.tmp / f"serve-{port}.log",
                    )
                )
            for process, url in zip(self.web, self.urls, strict=True):
                wait_for_http(f"{url}/healthz", process)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for process in [*self.web, *([self.worker] if self.worker else [])]:
            stop(process)


class Floor(_OneProcess):
    """The bare Django proxy view under `server` ("daphne" or "uvicorn"), or another app of
    bench/floor (`app`, e.g. `BARE`: no framework at all)."""

    def __init__(
        self, tmp: Path, sandbox: Sandbox, server: str, app: str = "bench.floor.asgi:application"
    ) -> None:
        super().__init__()
        args = {
            "daphne": ["-m", "daphne", "-b", LOOPBACK, "-p", str(self.port), app],
            "uvicorn": [
                "-m",
                "uvicorn",
                "--host",
                LOOPBACK,
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
                "--lifespan",
                "off",
                app,
            ],
        }[server]
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "bench.floor.settings",
            "FLOOR_UPSTREAM": sandbox.v1_url,
            "PYTHONUNBUFFERED": "1",
        }
        self.process = spawn([PYTHON, *args], env, tmp / f"floor-{server}.log")


BARE = "bench.floor.bare:application"  # the pure ASGI forwarder (bench/split.py)


def uvicorn_installed() -> bool:
    return importlib.util.find_spec("uvicorn") is not None


# --- scale-out services: a Redis database and a PostgreSQL database of our own ------------------
class ScaleOutServices:
    """Flushes the given Redis database and creates `databases` throwaway PostgreSQL
    databases (`database_urls`; `database_url` is the first), dropped on exit."""

    def __init__(self, redis_url: str, postgres_url: str, databases: int = 1) -> None:
        self.redis_url = redis_url
        self.admin_url = postgres_url
        stem = f"sluice_bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.db_names = [f"{stem}_{n}" for n in range(databases)]
        self.database_urls = [
            urllib.parse.urlsplit(postgres_url)._replace(path=f"/{name}").geturl()
            for name in self.db_names
        ]

    @property
    def database_url(self) -> str:
        return self.database_urls[0]

    def __enter__(self) -> ScaleOutServices:
        redis.Redis.from_url(self.redis_url).flushdb()
        template = os.environ.get(POSTGRES_TEMPLATE)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            if template:
                # A copy fails while anyone is connected to the template: its makers hold
                # this lock while they migrate it (tests/databases.py).
                conn.execute("SELECT pg_advisory_lock(hashtext(%s))", [template])
            try:
                for name in self.db_names:
                    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
                    if template:
                        create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
                    conn.execute(create)
            finally:
                if template:
                    conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", [template])
        if template:
            _migrated.update(self.database_urls)
        return self

    def __exit__(self, *exc: object) -> None:
        _migrated.difference_update(self.database_urls)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in self.db_names:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        redis.Redis.from_url(self.redis_url).flushdb()
