"""Jobs and budgets over real HTTP (`manage.py serve` with its embedded limiter and job
poller, the sandbox upstream): a batch or fine-tune is checked against the team's and
key's budgets when it is created and again when it starts, at the estimate the README
states, and its real usage settles the estimate. Also: a job body that fails validation
is answered 400 before it spends the key's request rate."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.jobs.conftest import MODEL
from tests.servers import SluiceServer

CHAT = "meta-llama/Llama-3.3-70B-Instruct-Turbo"  # in the sandbox's list, with a price
SLOW = {"requests_per_minute": 1, "pace_per_minute": None, "burst": 1}
FAST = {"requests_per_minute": 6000, "pace_per_minute": None, "burst": 100}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SluiceServer]:
    with SluiceServer(tmp_path_factory.mktemp("job-budgets")) as server:
        server.sandbox.configure({"fine_tune_seconds": 1.0, "batch_seconds": 1.0})
        server.make_profile(
            "jobs-fast", {"files": FAST, "fine_tunes": FAST, "batches": FAST, "chat": FAST}
        )
        server.make_profile("jobs-slow", {"files": FAST, "fine_tunes": SLOW, "batches": SLOW})
        yield server


@pytest.fixture
def ops(server: SluiceServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"{server.url}/api",
        headers={"authorization": f"Bearer {server.admin_token}"},
        timeout=30,
    ) as client:
        yield client


def team_v1(server: SluiceServer, team: str, profile: str = "jobs-fast") -> httpx.Client:
    key = server.issue_key(team, profile=profile)
    return httpx.Client(
        base_url=f"{server.url}/v1", headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def wait_for(read: Callable[[], Any], done: Callable[[Any], bool], within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while not done(value := read()):
        assert time.monotonic() < deadline, f"still {value!r}"
        time.sleep(0.2)  # polling the job poller's work, done in the server
    return value


def test_a_job_body_that_fails_validation_is_refused_before_it_spends_the_rate(server):
    """Issue 18, item 10: with one job request a minute, invalid bodies used to take the
    key's request rate (and queue for it) before their 400."""
    with team_v1(server, "jobs-invalid", profile="jobs-slow") as v1:
        bodies: list[tuple[str, Any]] = [
            ("/batches", b"{not json"),
            ("/batches", {"endpoint": "/v1/chat/completions"}),
            ("/batches", {"endpoint": 7, "input_file_id": "file-x"}),
            ("/fine-tunes", {"model": MODEL}),
            ("/fine-tunes", b"[1]"),
            ("/fine-tunes", {"model": MODEL, "training_file": ["file-x"]}),
        ]
        for path, body in bodies:
            started = time.monotonic()
            if isinstance(body, bytes):
                answer = v1.post(path, content=body, headers={"content-type": "application/json"})
            else:
                answer = v1.post(path, json=body)
            assert answer.status_code == 400, (path, body, answer.text)
            assert answer.json()["error"]["code"] in (
                "invalid_json",
                "missing_field",
                "invalid_type",
            )
            assert time.monotonic() - started < 1.0
            assert "x-sluice-queued-ms" not in answer.headers
        # The key's one request a minute is still there: a well-formed body is admitted
        # at once (and answered 404: no such file).
        answer = v1.post(
            "/batches", json={"endpoint": "/v1/chat/completions", "input_file_id": "file-x"}
        )
        assert answer.status_code == 404, answer.text
        assert "x-sluice-queued-ms" not in answer.headers
