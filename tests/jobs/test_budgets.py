"""Jobs and budgets over real HTTP (`manage.py serve` with its embedded limiter and job
poller, the sandbox upstream): a batch or fine-tune is checked against the team's and
key's budgets when it is created and again when it starts, at the estimate docs/budgets.md
states, and its real usage settles the estimate. Also: a job body that fails validation
is answered 400 before it spends the key's request rate."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.jobs.conftest import MODEL, batch_lines
from tests.servers import SluiceServer
from tests.waiting import wait_until

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
        server.make_profile(
            "jobs-one",
            {
                "files": FAST,
                "fine_tunes": FAST,
                "chat": FAST,
                "batches": {**FAST, "max_concurrent": 1},
            },
        )
        yield server


@pytest.fixture
def ops(server: SluiceServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"{server.url}/api",
        headers={"authorization": f"Bearer {server.admin_token}"},
        timeout=30,
    ) as client:
        yield client


def team_v1(
    server: SluiceServer, team: str, profile: str = "jobs-fast", ops: httpx.Client | None = None
) -> httpx.Client:
    if ops is not None:  # the team's own profile (its job slots), not only its key's
        ops.post("/teams", json={"name": team, "profile": profile}).raise_for_status()
    key = server.issue_key(team, profile=profile)
    return httpx.Client(
        base_url=f"{server.url}/v1", headers={"authorization": f"Bearer {key}"}, timeout=30
    )


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


# A 50-line batch of tests/jobs/conftest.py: each line's prompt ("user", "hi": 6
# characters, 2 tokens) and the 256 a line without max_tokens is estimated at.
BATCH_50_ESTIMATE = 50 * (2 + 256)


def budget(ops: httpx.Client, team: str, limit: int) -> dict[str, Any]:
    team_id = next(t["id"] for t in ops.get("/teams").json() if t["name"] == team)
    made = ops.post(
        f"/teams/{team_id}/budgets", json={"unit": "tokens", "period": "day", "limit": limit}
    )
    assert made.status_code == 201, made.text
    return made.json()


def upload(v1: httpx.Client, content: bytes, purpose: str) -> str:
    answer = v1.post("/files", data={"purpose": purpose}, files={"file": ("f.jsonl", content)})
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def create_batch(v1: httpx.Client, file_id: str) -> httpx.Response:
    return v1.post("/batches", json={"endpoint": "/v1/chat/completions", "input_file_id": file_id})


def chat(v1: httpx.Client, max_tokens: int = 5) -> httpx.Response:
    return v1.post(
        "/chat/completions",
        json={
            "model": CHAT,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": max_tokens,
        },
    )


def spent(ops: httpx.Client, budget_id: int, team: str) -> float:
    team_id = next(t["id"] for t in ops.get("/teams").json() if t["name"] == team)
    rows = ops.get(f"/teams/{team_id}/budgets").json()
    return float(next(row for row in rows if row["id"] == budget_id)["spent"])


def test_a_small_remaining_budget_refuses_batches_and_fine_tunes(server, ops):
    """Issue 18, item 3, as found: with 35 tokens left of a 1,100-token daily budget,
    three 50-line batches were accepted and the team's spend ended at 301,365 tokens.
    Now each is refused at its create, nothing is stored or sent to Together, and the
    spend stays what the calls used."""
    team = "jobs-broke"
    created_before = server.sandbox.stats()["batches"]["created"]
    fine_tunes_before = server.sandbox.stats()["fine_tunes"]["created"]
    with team_v1(server, team) as v1:
        made = budget(ops, team, 1100)
        # Estimated at 3 + 1,000 (admitted: below 1,100), counted 1 + 1,000 by the sandbox.
        assert chat(v1, max_tokens=1000).json()["usage"]["total_tokens"] == 1001
        batch_file = upload(v1, batch_lines(50), "batch-api")
        for _ in range(3):
            refused = create_batch(v1, batch_file)
            # More than the whole budget: it could never run within it.
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["code"] == "budget_exceeded"
            assert f"this batch is estimated at {BATCH_50_ESTIMATE:,} tokens" in error["message"]
            assert "team 'jobs-broke'" in error["message"]
        # One that fits the budget but not what is left: 429 until the budget resets.
        small = json.dumps(
            {
                "custom_id": "one",
                "body": {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 200,
                },
            }
        ).encode()
        refused = create_batch(v1, upload(v1, small + b"\n", "batch-api"))
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "budget_exceeded"
        assert "estimated at 202 tokens" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) > 60  # the day's end, not a moment
        # A fine-tune: 2,000 bytes of training data, 500 tokens an epoch.
        training = upload(v1, b'{"text": "' + b"x" * 1986 + b'"}\n', "fine-tune")
        refused = v1.post("/fine-tunes", json={"model": MODEL, "training_file": training})
        assert refused.status_code == 429, refused.text
        assert "this fine-tune is estimated at 500 tokens" in refused.json()["error"]["message"]
        assert v1.get("/batches").json() == []
        assert v1.get("/fine-tunes").json() == {"data": []}
    stats = server.sandbox.stats()
    assert stats["batches"]["created"] == created_before
    assert stats["fine_tunes"]["created"] == fine_tunes_before
    # The spend is the call's; it never moves (nothing else runs).
    wait_until(
        lambda: spent(ops, made["id"], team), lambda value: value == 1001, within=30.0, every=0.2
    )
    time.sleep(1.5)  # a rollup flush interval: anything else would have landed
    assert spent(ops, made["id"], team) == 1001


def test_a_batch_holds_its_estimate_until_its_usage_settles_it(server, ops):
    team = "jobs-held"
    with team_v1(server, team) as v1:
        budget(ops, team, BATCH_50_ESTIMATE)  # exactly one 50-line batch
        created = create_batch(v1, upload(v1, batch_lines(50), "batch-api"))
        assert created.status_code == 201, created.text  # it fits: 0 + 12,900 <= 12,900
        job_id = created.json()["job"]["id"]
        # Held from its create: a call finds nothing left, though nothing is spent yet.
        held = chat(v1)
        assert held.status_code == 429, held.text
        assert f"has used 0 (and {BATCH_50_ESTIMATE:,} held" in held.json()["error"]["message"]
        again = create_batch(v1, upload(v1, batch_lines(1), "batch-api"))
        assert again.status_code == 429, again.text
        wait_until(
            lambda: v1.get(f"/batches/{job_id}").json()["status"],
            lambda s: s == "COMPLETED",
            within=30.0,
            every=0.2,
        )
        # Its usage (50 lines of 1 + 16 tokens in the sandbox) settles the estimate.
        answer = wait_until(
            lambda: chat(v1), lambda a: a.status_code == 200, within=30.0, every=0.2
        )
        assert answer.json()["usage"]["total_tokens"] > 0


def test_a_queued_job_whose_budget_was_used_up_is_not_started(server, ops):
    team = "jobs-queue"
    server.sandbox.configure({"batch_seconds": 3.0})
    try:
        with team_v1(server, team, profile="jobs-one", ops=ops) as v1:
            made = budget(ops, team, 100_000)
            first = create_batch(v1, upload(v1, batch_lines(1), "batch-api"))
            assert first.status_code == 201, first.text
            queued = create_batch(v1, upload(v1, batch_lines(50), "batch-api"))
            assert queued.status_code == 201, queued.text
            assert queued.json()["job"]["status"] == "QUEUED"  # the team's one slot is taken
            queued_id = queued.json()["job"]["id"]
            # Meanwhile staff cut the budget to the queued batch's estimate: with the first
            # batch's usage, it no longer fits.
            ops.patch(
                f"/budgets/{made['id']}", json={"limit": BATCH_50_ESTIMATE}
            ).raise_for_status()
            first_id = first.json()["job"]["id"]
            wait_until(
                lambda: v1.get(f"/batches/{first_id}").json()["status"],
                lambda s: s == "COMPLETED",
                within=30.0,
                every=0.2,
            )
            shown = wait_until(
                lambda: v1.get(f"/batches/{queued_id}").json(),
                lambda job: job["sluice"]["error"] is not None,
                within=30.0,
                every=0.2,
            )
            assert shown["status"] == "QUEUED"
            assert shown["sluice"]["error"].startswith("Held in the queue: Budget exceeded")
            assert "It is not started until it fits" in shown["sluice"]["error"]
            time.sleep(2)  # several poller passes: it stays queued, never sent to Together
            assert v1.get(f"/batches/{queued_id}").json()["status"] == "QUEUED"
            assert server.sandbox.stats()["batches"]["created"] >= 1
            upstream = [
                b["input_file_id"]
                for b in httpx.get(
                    f"{server.sandbox.v1_url}/batches", headers={"authorization": "Bearer x"}
                ).json()
            ]
            assert queued.json()["job"]["input_file_id"] not in upstream
            # Still holding its estimate: calls are refused.
            assert chat(v1).status_code == 429
            # Cancelled, its hold is let go: calls pass again.
            cancelled = v1.post(f"/batches/{queued_id}/cancel")
            assert cancelled.json()["status"] == "CANCELLED", cancelled.text
            wait_until(
                lambda: chat(v1).status_code, lambda status: status == 200, within=30.0, every=0.2
            )
    finally:
        server.sandbox.configure({"batch_seconds": 1.0})
