"""Shared test fixtures.

Services (PostgreSQL, Redis, Chromium) are used for real where the machine has them;
without them the tests that need them skip with the reason, except under
SLUICE_REQUIRE_SERVICES=1 (CI), where a missing service fails the run instead.
"""

from __future__ import annotations

import gc
import importlib
import os
import shutil
import socket
import sys
import urllib.parse

import pytest

from tests import databases
from tests.servers import SluiceServer, free_port  # noqa: F401  (re-exported for test modules)

pytest_plugins = ["tests.scheduling", "tests.cpu_by_unit"]  # make test's order, grouping, CPU

REQUIRE_SERVICES = os.environ.get("SLUICE_REQUIRE_SERVICES") == "1"
POSTGRES_URL = os.environ.get("SLUICE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SLUICE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CHROMIUM = os.environ.get("SLUICE_CHROMIUM", "/usr/bin/chromium")

# The suite starts some hundreds of Python processes (servers, workers, shells, commands).
# With PYTHONDONTWRITEBYTECODE set, as on the CI machines, each compiled the project's
# modules from source again (0.15 s of CPU a process) and each pytest process rewrote
# every test module's assertions again: the compiled files are cached in __pycache__
# (ignored by git and by the image's COPY steps) for this run's processes and the next.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False


def _one_default_ssl_context() -> None:
    """Every httpx client builds an SSL context, and the default one loads certifi's CA
    bundle: 30 ms of CPU, twenty times the cost of the plain-HTTP request to 127.0.0.1 it
    was built for. The tests make thousands (each `httpx.get`, each SDK client, each poll
    of a server's state): in this process they share one default context, built the same
    way. Any other `verify` or `cert` still gets a context of its own."""
    from httpx import _config
    from httpx._transports import default

    build = _config.create_ssl_context
    shared: list[object] = []

    def create_ssl_context(verify=True, cert=None, trust_env=True):  # type: ignore[no-untyped-def]
        if verify is not True or cert is not None or not trust_env:
            return build(verify=verify, cert=cert, trust_env=trust_env)
        if not shared:
            shared.append(build())
        return shared[0]

    default.create_ssl_context = create_ssl_context  # type: ignore[assignment]


_one_default_ssl_context()


_NAMES_THE_RUN = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    # Name the run before pytest-xdist starts its workers, which inherit it: they share
    # the migrated database templates (tests/databases.py). A run named by the caller
    # (`make test` names one for its two parts) is the caller's to clean up.
    if not hasattr(config, "workerinput"):
        config.stash[_NAMES_THE_RUN] = "SLUICE_TEST_RUN" not in os.environ
        databases.run_id()


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection built (every test item, the imported modules: most of a worker's
    heap) lives for the whole session: frozen out of the collector's walks. A full
    collection walked it each time, about 0.17 s of CPU; in 1,248 dashboard and usage
    tests on one worker the collector took 3.3 s of CPU before, 1.8 s after."""
    gc.collect()
    gc.freeze()


def pytest_unconfigure(config: pytest.Config) -> None:
    # The controller, once every worker is done.
    if not hasattr(config, "workerinput") and config.stash.get(_NAMES_THE_RUN, False):
        remove_templates()


def remove_templates() -> None:
    databases.remove_templates(POSTGRES_URL if reachable(POSTGRES_URL) else None)


def need(available: bool, reason: str) -> None:
    """Skip (or, in CI, fail) a test whose service is missing."""
    if available:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (SLUICE_REQUIRE_SERVICES=1: services must be present)")
    pytest.skip(reason)


def reachable(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return True
    except OSError:
        return False


def need_redis_server() -> None:
    """For a test that runs (and may restart) a redis-server of its own."""
    need(shutil.which("redis-server") is not None, "redis-server is not installed")


@pytest.fixture
def redis_url() -> str:
    need(reachable(REDIS_URL), f"Redis is not reachable at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture
def postgres_url() -> str:
    need(reachable(POSTGRES_URL), f"PostgreSQL is not reachable at {POSTGRES_URL}")
    return POSTGRES_URL


@pytest.fixture
def chromium_path() -> str:
    need(os.path.exists(CHROMIUM), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
def sluice_server(tmp_path):
    """A real Sluice (`manage.py serve`) on a free port, its own SQLite database, and a
    sandbox upstream on another free port (in this process, so tests read its stats)."""
    with SluiceServer(tmp_path) as server:
        yield server


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for a module whose tests do not disturb each other (own keys each)."""
    with SluiceServer(tmp_path_factory.mktemp("sluice")) as server:
        yield server


@pytest.fixture
def seeded_transactional_db(transactional_db):
    """A transactional test's database with the seeded default profile and upstream
    account: the flush between transactional tests removes what the migration seeded."""
    from django.apps import apps

    seed_migrations(apps)


@pytest.fixture(autouse=True)
def _seeded_in_transaction(request):
    """Tests in a rolled-back transaction see what the migrations seeded (the default
    profile and upstream account). A transactional test flushes the database after
    itself, so whether that data is still there would depend on which tests ran before
    on this worker (the suite runs in parallel, by file): put it back when it is gone."""
    marker = request.node.get_closest_marker("django_db")
    if marker is not None:
        if marker.kwargs.get("transaction") or (marker.args and marker.args[0]):
            return
    elif "db" not in request.fixturenames:
        return
    request.getfixturevalue("db")
    seed_if_flushed()


# The migrations that seed data, in order: what a flush removes and tests put back.
SEEDING_MIGRATIONS = (
    "0002_seed_default_profile",
    "0012_seed_audio_limits",
    "0015_seed_videos_evaluations",
    "0018_seed_code_interpreter",
)


def seed_migrations(apps) -> None:  # type: ignore[no-untyped-def]
    for name in SEEDING_MIGRATIONS:
        importlib.import_module(f"limiter.migrations.{name}").seed(apps, None)


def seed_if_flushed() -> None:
    """Put back what the migrations seeded if a transactional test flushed it."""
    from django.apps import apps

    from limiter.models import UpstreamAccount

    if not UpstreamAccount.objects.filter(is_default=True).exists():
        seed_migrations(apps)
