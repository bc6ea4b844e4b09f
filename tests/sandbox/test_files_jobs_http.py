"""Files, fine-tunes and batches over real HTTP, including the official together SDK's flows."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from together import Together

from sandbox import ThreadedSandbox
from sandbox.resources import UPLOAD_SIGNATURE_REFUSED
from tests.waiting import wait_until

TRAINING_LINES = [{"text": f"example number {i} for the sandbox"} for i in range(12)]


@pytest.fixture
def training_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in TRAINING_LINES))
    return path


@pytest.fixture
def sdk(sandbox: ThreadedSandbox) -> Together:
    # together 3.x wants the root URL: its paths already start with /v1.
    return Together(api_key="team-key", base_url=sandbox.url, max_retries=0)


def wait_for(read_status: Callable[[], str], expected: str, timeout: float = 5.0) -> list[str]:
    """Poll until the status is reached; returns the distinct statuses seen on the way."""
    seen: list[str] = []

    def read() -> list[str]:
        status = read_status()
        if not seen or seen[-1] != status:
            seen.append(status)
        return seen

    return wait_until(read, lambda seen: seen[-1] == expected, within=timeout, every=0.02)


def test_sdk_upload_uses_the_redirect_flow(
    sdk: Together, training_file: Path, client: httpx.Client
) -> None:
    uploaded = sdk.files.upload(training_file, purpose="fine-tune")

    assert uploaded.id.startswith("file-")
    assert (uploaded.filename, uploaded.bytes, uploaded.purpose) == (
        "train.jsonl",
        training_file.stat().st_size,
        "fine-tune",
    )
    assert client.get(f"/files/{uploaded.id}/content").content == training_file.read_bytes()
    assert client.get(f"/files/{uploaded.id}").json()["LineCount"] == len(TRAINING_LINES)
    assert [f.id for f in sdk.files.list().data] == [uploaded.id]


def test_redirect_step_answers_302_with_location_and_file_id(
    sandbox: ThreadedSandbox, client: httpx.Client
) -> None:
    start = client.post(
        "/files", files={"purpose": (None, "batch-api"), "file_name": (None, "in.jsonl")}
    )
    assert start.status_code == 302
    file_id = start.headers["x-together-file-id"]
    assert start.headers["location"].startswith(
        f"{sandbox.url}/sandbox-upload/{file_id}?signature="
    )

    # The signed URL needs no API key, like object storage; the file id alone is refused.
    unsigned = httpx.put(f"{sandbox.url}/sandbox-upload/{file_id}", content=b"x")
    assert unsigned.status_code == 403
    assert unsigned.json()["error"]["message"] == UPLOAD_SIGNATURE_REFUSED
    assert httpx.put(start.headers["location"], content=b'{"a": 1}\n').status_code == 200
    done = client.post(f"/files/{file_id}/preprocess").json()
    assert (done["id"], done["bytes"], done["filename"], done["purpose"]) == (
        file_id,
        9,
        "in.jsonl",
        "batch-api",
    )


def test_plain_multipart_upload(client: httpx.Client) -> None:
    content = b'{"custom_id": "1", "body": {}}\r\n{"custom_id": "2", "body": {}}\n'
    response = client.post(
        "/files", files={"file": ("batch.jsonl", content)}, data={"purpose": "batch-api"}
    )

    assert response.status_code == 200
    stored = response.json()
    assert stored["object"] == "file"
    assert (stored["bytes"], stored["LineCount"], stored["FileType"]) == (len(content), 2, "jsonl")
    assert client.get(f"/files/{stored['id']}/content").content == content  # bytes untouched
    assert client.get("/files").json()["object"] == "list"
    assert (
        client.post(
            "/files", files={"file": ("x.jsonl", b"")}, data={"purpose": "bogus"}
        ).status_code
        == 400
    )


def test_fine_tune_progresses_in_accelerated_time(
    sandbox: ThreadedSandbox, sdk: Together, training_file: Path
) -> None:
    # Running from 25% of the job's time to its end: 1.5 s, so that a poll sees it even when
    # the machine is busy (at 0.6 s, one slow poll under the parallel suite skipped it).
    sandbox.configure({"fine_tune_seconds": 2.0})
    uploaded = sdk.files.upload(training_file, purpose="fine-tune")
    job = sdk.fine_tuning.create(
        training_file=uploaded.id, model="meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"
    )

    assert job.id.startswith("ft-")
    assert (job.status, job.training_file, job.trainingfile_numlines) == (
        "pending",
        uploaded.id,
        len(TRAINING_LINES),
    )
    seen = wait_for(lambda: sdk.fine_tuning.retrieve(job.id).status, "completed")
    assert seen[0] in ("pending", "queued") and "running" in seen
    assert [j.id for j in sdk.fine_tuning.list().data] == [job.id]


def test_fine_tune_cancel_cap_and_concurrency_stats(
    sandbox: ThreadedSandbox, client: httpx.Client
) -> None:
    sandbox.configure(
        {"max_running_fine_tunes": 3, "fine_tune_seconds": 30, "validate_file_ids": False}
    )
    body = {"training_file": "file-any", "model": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"}
    jobs = [client.post("/fine-tunes", json=body) for _ in range(4)]

    assert [r.status_code for r in jobs] == [200, 200, 200, 409]
    assert jobs[3].json()["error"]["code"] == "concurrent_job_limit"
    cancelled = client.post(f"/fine-tunes/{jobs[0].json()['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert client.post("/fine-tunes", json=body).status_code == 200
    assert sandbox.stats()["fine_tunes"] == {
        "created": 4,
        "active": 3,
        "rejected_409": 1,
        "max_concurrent_fine_tunes_seen": 3,
    }
    assert (
        client.post("/fine-tunes", json={"model": "m"}).json()["error"]["param"] == "training_file"
    )
    assert client.get("/fine-tunes/ft-missing").status_code == 404


def test_batch_lifecycle(sandbox: ThreadedSandbox, client: httpx.Client, sdk: Together) -> None:
    sandbox.configure({"batch_seconds": 1.0})
    lines = [{"custom_id": f"r{i}", "body": {"model": "m", "messages": []}} for i in range(3)]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    source = client.post(
        "/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch-api"}
    ).json()

    created = client.post(
        "/batches", json={"endpoint": "/v1/chat/completions", "input_file_id": source["id"]}
    )
    assert created.status_code == 201
    job = created.json()["job"]
    assert (job["status"], job["input_file_id"], job["file_size_bytes"]) == (
        "VALIDATING",
        source["id"],
        len(content),
    )
    assert {
        "id",
        "user_id",
        "job_deadline",
        "created_at",
        "endpoint",
        "progress",
        "model_id",
    } <= set(job)

    seen = wait_for(lambda: client.get(f"/batches/{job['id']}").json()["status"], "COMPLETED")
    assert seen == ["VALIDATING", "IN_PROGRESS", "COMPLETED"]
    finished = sdk.batches.retrieve(job["id"])  # the SDK parses the job itself
    assert (finished.status, finished.progress) == ("COMPLETED", 100.0)
    output = client.get(f"/files/{finished.output_file_id}/content").text.splitlines()
    answers = [json.loads(line) for line in output]
    assert [answer["custom_id"] for answer in answers] == ["r0", "r1", "r2"]
    assert answers[0]["response"]["body"]["usage"]["completion_tokens"] == 16

    listed = client.get("/batches").json()
    assert isinstance(listed, list) and listed[0]["id"] == job["id"]
    stats = sandbox.stats()["batches"]
    assert stats["request_counts"] == {job["id"]: 3}
    assert stats["max_concurrent_batches_seen"] == 1


def test_batch_cancel_and_plain_errors(sandbox: ThreadedSandbox, client: httpx.Client) -> None:
    sandbox.configure({"batch_seconds": 30, "validate_file_ids": False})
    job = client.post(
        "/batches", json={"endpoint": "/v1/chat/completions", "input_file_id": "file-x"}
    ).json()["job"]
    second = client.post(
        "/batches", json={"endpoint": "/v1/chat/completions", "input_file_id": "file-y"}
    )

    assert client.post(f"/batches/{job['id']}/cancel").json()["status"] == "CANCELLED"
    assert second.status_code == 201
    assert sandbox.stats()["batches"]["max_concurrent_batches_seen"] == 2
    missing = client.post("/batches", json={"endpoint": "/v1/chat/completions"})
    assert (missing.status_code, missing.json()) == (400, {"error": "input_file_id is required"})
    assert client.post("/batches", content=b"{oops").json()["error"].startswith("Invalid JSON body")
    assert client.get("/batches/nope").json() == {"error": "Batch nope not found"}
