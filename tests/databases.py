"""Migrated databases for the servers the tests start.

Migrating a new database costs some seconds of CPU, and creating the admin login a
password hash: a server starts instead on a copy of a template migrated once per test run
and shared by the run's processes (the pytest-xdist workers), a file copy for SQLite and
`CREATE DATABASE ... TEMPLATE` for PostgreSQL. tests/conftest.py names the run
(SLUICE_TEST_RUN) before the workers start, and removes the templates when it ends. The
migrations themselves still run, once a run on each engine. `make test` names the run
itself, so that its second part starts on the first part's templates, and removes them with
`python -m tests.databases` when both are done.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tests import forkserver

ROOT = Path(__file__).resolve().parent.parent
ADMIN_USERNAME = "ops"
_copies: set[str] = set()  # database URLs made from a template by this process


def run_id() -> str:
    """This test run's name, shared by its processes (set here when no one set it)."""
    return os.environ.setdefault("SLUICE_TEST_RUN", secrets.token_hex(6))


def admin_password() -> str:
    """The templates' admin password: the same in every process of the run."""
    return hashlib.sha256(f"sluice-test-admin-{run_id()}".encode()).hexdigest()[:20]


def is_migrated_copy(database_url: str) -> bool:
    return database_url in _copies


def _migrate_with_admin(database_url: str) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url,
    }
    admin = (
        "from django.contrib.auth import get_user_model;"
        f"get_user_model().objects.create_superuser('{ADMIN_USERNAME}', '', '{admin_password()}')"
    )
    for args in (["migrate", "--noinput", "-v0"], ["shell", "-v", "0", "-c", admin]):
        code, output = forkserver.run([sys.executable, "manage.py", *args], env=env, cwd=ROOT)
        if code:
            raise RuntimeError(f"manage.py {args[0]} failed ({code}):\n{output}")


# --- SQLite ----------------------------------------------------------------------------------
def _sqlite_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"sluice-template-{run_id()}"


def sqlite_template() -> Path:
    """The run's migrated SQLite database, with the admin login (made first if need be)."""
    directory = _sqlite_dir()
    directory.mkdir(exist_ok=True)
    template = directory / "template.sqlite3"
    if not template.exists():
        with open(directory / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process migrates, the others wait
            if not template.exists():
                building = directory / f"building-{os.getpid()}.sqlite3"
                _migrate_with_admin(f"sqlite:///{building}")
                os.replace(building, template)
    return template


def copy_migrated_sqlite(path: Path) -> None:
    """Put a migrated SQLite database, with the admin login, at `path`."""
    shutil.copy(sqlite_template(), path)


# --- PostgreSQL ------------------------------------------------------------------------------
def _url(server_url: str, name: str) -> str:
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def postgres_template_name() -> str:
    return f"sluice_template_{run_id()}"


def _copy_postgres_template(server_url: str, name: str | None) -> None:
    """Create database `name` as a copy of the run's template, made first if need be
    (only the template when `name` is None)."""
    template = postgres_template_name()
    with psycopg.connect(server_url, autocommit=True) as conn:
        # One process at a time: the first creates and migrates the template (a copy
        # fails while anyone is connected to it), the others wait on the lock (the
        # benchmark's servers take it too: bench/servers.py).
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", [template])
        try:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [template])
            if found.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{template}"')
                try:
                    _migrate_with_admin(_url(server_url, template))
                except BaseException:
                    conn.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
                    raise
            if name is not None:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", [template])


def postgres_template(server_url: str) -> str:
    """The name of the run's migrated PostgreSQL template on `server_url`, made first if
    need be; copy it under the same advisory lock (its name hashed), as bench/servers.py does."""
    _copy_postgres_template(server_url, None)
    return postgres_template_name()


def _drop(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def postgres_database(server_url: str, prefix: str = "sluice_test") -> Iterator[str]:
    """A PostgreSQL database of the caller's own on `server_url`, migrated and with the
    admin login (SluiceServer starts on it without migrating); dropped on the way out."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    _copy_postgres_template(server_url, name)
    url = _url(server_url, name)
    _copies.add(url)
    try:
        yield url
    finally:
        _copies.discard(url)
        _drop(server_url, name)


def remove_templates(postgres_server_url: str | None) -> None:
    """At the end of the run: the SQLite template's directory and the PostgreSQL one."""
    shutil.rmtree(_sqlite_dir(), ignore_errors=True)
    if postgres_server_url is not None:
        _drop(postgres_server_url, postgres_template_name())


if __name__ == "__main__":  # `make test`, once its two parts are done (SLUICE_TEST_RUN set)
    assert "SLUICE_TEST_RUN" in os.environ, "the run whose templates to remove is not named"
    from tests.conftest import remove_templates

    remove_templates()
