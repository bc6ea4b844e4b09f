"""The servers under test, each a context manager that stops its process group on exit:
the sandbox upstream, Sluice (embedded, or N web processes + a limiter worker over
Redis), and the floor under daphne or uvicorn. Everything listens on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import sqlite3
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
_migrated: set[str] = set()  # database URLs this process made migrated (copies)
# Django's system checks, which a management command runs before it starts: 0.3 to 0.4 s of
# CPU a process, for the same project each time (the tests' own servers still run them), and
# outside what the benchmark measures; so its servers start without them.
SKIP_CHECKS = "--skip-checks"


# A deployment's database is a copy of one migrated and provisioned for the same ceiling
# (and further set-up) earlier in the run where there is one, instead of migrating and
# provisioning its own: a `manage.py` process each, for the same rows every time. Keyed by
# `_recipe`: what the provisioning wrote depends on it alone, not on the deployment's
# settings (a key's hash is a plain SHA-256 of its secret).
_provisioned: dict[str, tuple[str, list[str]]] = {}  # database URL -> recipe, shell's output
_sqlite_sources: dict[str, tuple[Path, list[str]]] = {}  # recipe -> never served, output


def _recipe(ceiling: Ceiling, more: str) -> str:
    return json.dumps({"ceiling": ceiling.__dict__, "more": more}, sort_keys=True)


def _provision(env: dict[str, str], ceiling: Ceiling, more: str, *, migrated: bool) -> list[str]:
    """Migrate (unless `migrated`) and provision the database of `env` in one `manage.py
    shell`: its output's lines, bench/provision.py's keys and then what `more` printed."""
    code = "from bench.provision import main\n"
    if not migrated:
        code += "from django.core.management import call_command\n"
        code += "call_command('migrate', interactive=False, verbosity=0)\n"
    code += f"main({json.dumps(ceiling.__dict__)!r})\n{more}"
    return manage(env, "shell", "-v", "0", "-c", code).strip().splitlines()


def _copy_sqlite(source: Path, path: Path) -> None:
    # SQLite's backup, not a file copy: the provisioning shell may leave its last writes in
    # the write-ahead log beside the file (WAL mode, dashboard/settings.py).
    src, dst = sqlite3.connect(source), sqlite3.connect(path)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def _new_sqlite(env: dict[str, str], ceiling: Ceiling, more: str) -> list[str]:
    """Put a provisioned database at the new SQLite file of `env`: a copy of the one this
    process made for the same recipe, made first (from the run's template, if named)."""
    database_url = env["DATABASE_URL"]
    path = Path(database_url.removeprefix("sqlite:///"))
    recipe = _recipe(ceiling, more)
    made = _sqlite_sources.get(recipe)
    if made is None or not made[0].exists():
        source = path.with_name(f"provisioned-{secrets.token_hex(4)}.sqlite3")
        template = os.environ.get(SQLITE_TEMPLATE)
        if template:
            shutil.copy(template, source)
        source_env = {**env, "DATABASE_URL": f"sqlite:///{source}"}
        made = _sqlite_sources[recipe] = (
            source,
            _provision(source_env, ceiling, more, migrated=bool(template)),
        )
    _copy_sqlite(made[0], path)
    _migrated.add(database_url)
    return made[1]


def _provisioned_database(env: dict[str, str], ceiling: Ceiling, more: str) -> list[str]:
    """Make the database of `env` a migrated and provisioned one: the provisioning's output."""
    database_url = env["DATABASE_URL"]
    copied = _provisioned.get(database_url)
    if copied is not None and copied[0] == _recipe(ceiling, more):
        return copied[1]  # a PostgreSQL copy made by ScaleOutServices
    if (
        database_url.startswith("sqlite:///")
        and not Path(database_url.removeprefix("sqlite:///")).exists()
    ):
        return _new_sqlite(env, ceiling, more)
    return _provision(env, ceiling, more, migrated=database_url in _migrated)


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
        provision: str = "",
    ) -> None:
        """`provision`: more set-up, code for the provisioning shell after
        bench/provision.py's, which prints one line of JSON: `provided`."""
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
        self.provision = provision
        self.provided: Any = None

    @property
    def urls(self) -> list[str]:
        return [f"http://{LOOPBACK}:{port}" for port in self.ports]

    @property
    def web_pids(self) -> list[int]:
        return [p.pid for p in self.web]

    def __enter__(self) -> Sluice:
        try:
            lines = _provisioned_database(self.env, self.ceiling, self.provision)
            if self.provision:
                *lines, provided = lines
                self.provided = json.loads(provided)
            self.keys = json.loads(lines[-1])
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
    databases (`database_urls`; `database_url` is the first), dropped on exit. Given the
    `ceiling` of the deployments that will use them, the databases are copies of one
    migrated and provisioned for it once (see `_provisioned`)."""

    def __init__(
        self, redis_url: str, postgres_url: str, databases: int = 1, ceiling: Ceiling | None = None
    ) -> None:
        self.redis_url = redis_url
        self.admin_url = postgres_url
        self.ceiling = ceiling
        stem = f"sluice_bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.db_names = [f"{stem}_{n}" for n in range(databases)]
        # The provisioned database they are copies of, never served.
        self.source = f"{stem}_provisioned" if ceiling is not None else ""
        self.database_urls = [self._url(name) for name in self.db_names]

    def _url(self, name: str) -> str:
        return urllib.parse.urlsplit(self.admin_url)._replace(path=f"/{name}").geturl()

    @property
    def database_url(self) -> str:
        return self.database_urls[0]

    def __enter__(self) -> ScaleOutServices:
        redis.Redis.from_url(self.redis_url).flushdb()
        template = os.environ.get(POSTGRES_TEMPLATE)
        try:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                _create_databases(conn, [self.source] if self.source else self.db_names, template)
                if self.ceiling is not None:
                    self._provision_copies(conn, migrated=bool(template))
        except BaseException:
            self.__exit__()
            raise
        if template or self.ceiling is not None:
            _migrated.update(self.database_urls)
        return self

    def _provision_copies(self, conn: psycopg.Connection, *, migrated: bool) -> None:
        """Provision the source database, then make the deployments' databases copies of it."""
        assert self.ceiling is not None
        env = base_env(self._url(self.source), TOGETHER_API_KEY="", SLUICE_SANDBOX="1")
        output = _provision(env, self.ceiling, "", migrated=migrated)
        _create_databases(conn, self.db_names, self.source)
        recipe = _recipe(self.ceiling, "")
        _provisioned.update((url, (recipe, output)) for url in self.database_urls)

    def __exit__(self, *exc: object) -> None:
        _migrated.difference_update(self.database_urls)
        for url in self.database_urls:
            _provisioned.pop(url, None)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in [*self.db_names, *([self.source] if self.source else [])]:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        redis.Redis.from_url(self.redis_url).flushdb()


def _create_databases(conn: psycopg.Connection, names: list[str], template: str | None) -> None:
    """CREATE DATABASE each of `names`, copies of `template` if one is named."""
    if template:
        # A copy fails while anyone is connected to the template: its makers hold this
        # lock while they migrate it (tests/databases.py).
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", [template])
    try:
        for name in names:
            create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            conn.execute(create)
    finally:
        if template:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", [template])
