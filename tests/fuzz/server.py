"""The fuzzers' Sluice: small body limits, a known admin token, generous limits.

A small SLUICE_MAX_BODY_BYTES keeps the "just under / just over the limit" cases cheap.
The admin token is fixed when the module is imported, before any server starts, so that
the server and the tests that call it (schemathesis's auth provider among them) share it.
A generous limit profile (for the account and every team) keeps the limiter from queueing
the well-formed requests the fuzzers happen to produce: a queued request would only slow
the run down.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import SluiceServer

ADMIN_TOKEN = "fuzz-" + secrets.token_urlsafe(24)
MAX_BODY_BYTES = 64 * 1024
MAX_UPLOAD_BYTES = 256 * 1024
ENDPOINTS = (
    "chat",
    "completions",
    "embeddings",
    "images",
    "rerank",
    "fine_tunes",
    "batches",
    "files",
)
GENEROUS = {
    "requests_per_minute": 1_000_000,
    "pace_per_minute": None,
    "burst": 100_000,
    "queue_depth": 1000,
}


@contextmanager
def fuzz_sluice(tmp_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[SluiceServer]:
    env = {
        # daphne, not the default uvicorn: the strict xfails of test_team_api.py pin what
        # daphne itself refuses before Sluice runs (docs/known-limits.md).
        "SLUICE_SERVER": "daphne",
        "SLUICE_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "SLUICE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "SLUICE_ADMIN_TOKEN": ADMIN_TOKEN,
        **(extra_env or {}),
    }
    server = SluiceServer(tmp_path, env=env)
    server.admin_token = ADMIN_TOKEN  # what the env above makes the server accept
    with server:
        server.make_profile("fuzz", {endpoint: GENEROUS for endpoint in ENDPOINTS}, account=True)
        yield server
