"""The official together SDK as the client, through a real Sluice (`manage.py serve`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from together import Together

from tests import forkserver
from tests.jobs.conftest import MODEL, batch_lines
from tests.waiting import wait_until


@pytest.fixture
def jobs_server(sluice_server: Any, tmp_path: Path) -> Iterator[Any]:
    """Sluice plus a `manage.py jobpoller` on its database (serve may run one too: both is safe)."""
    sluice_server.sandbox.configure(
        {"fine_tune_seconds": 1.0, "batch_seconds": 1.0, "max_running_fine_tunes": 3}
    )
    with open(tmp_path / "jobpoller.log", "ab") as log:
        poller = forkserver.spawn(
            [sys.executable, "manage.py", "jobpoller", "--interval", "0.2"],
            env=sluice_server.env,
            stdout=log,
        )
    try:
        yield sluice_server
    finally:
        poller.terminate()
        poller.wait(30)  # it ends after the step in progress, which a loaded machine slows


def test_together_sdk_files_fine_tunes_and_batches(jobs_server: Any, tmp_path: Path) -> None:
    # Long enough that the fourth create (three SDK calls each) finds every slot taken, also
    # on a loaded machine (at 3 s, the first had finished before the fourth was asked for);
    # a generous request rate so the SDK's calls are not paced (caps are the default's).
    jobs_server.sandbox.configure({"fine_tune_seconds": 8.0})
    fast = {"requests_per_minute": 6000, "pace_per_minute": None, "burst": 100}
    jobs_server.make_profile(
        "fast", {"files": fast, "fine_tunes": fast, "batches": fast}, account=True
    )
    client = Together(
        api_key=jobs_server.issue_key("sdk-team", profile="fast"), base_url=jobs_server.url
    )
    training = tmp_path / "train.jsonl"
    training.write_text("".join(json.dumps({"text": f"example {i}"}) + "\n" for i in range(20)))

    # Files: the SDK's redirect flow (POST, PUT to Location, preprocess), through Sluice.
    uploaded = client.files.upload(file=training, purpose="fine-tune")
    assert uploaded.id.startswith("file-")
    assert client.files.retrieve(uploaded.id).filename == "train.jsonl"
    assert uploaded.id in [f.id for f in client.files.list().data]

    # Fine-tunes: four at once on an account with three slots: one waits in Sluice.
    jobs = [client.fine_tuning.create(training_file=uploaded.id, model=MODEL) for _ in range(4)]
    assert [job.status for job in jobs].count("queued") >= 1
    assert all(job.id.startswith("ft-sluice-") for job in jobs)
    for job in jobs:
        final = wait_until(
            lambda job=job: client.fine_tuning.retrieve(job.id),
            lambda j: j.status == "completed",
            within=60.0,
            every=0.2,
        )
        assert final.id == job.id
    assert {job.id for job in client.fine_tuning.list().data} == {job.id for job in jobs}
    stats = httpx.get(f"{jobs_server.sandbox_url}/sandbox/stats").json()["fine_tunes"]
    assert (stats["created"], stats["max_concurrent_fine_tunes_seen"], stats["rejected_409"]) == (
        4,
        3,
        0,
    )

    # Batches: a 150-request file, split on request into two batches tracked as one.
    requests_file = tmp_path / "batch.jsonl"
    requests_file.write_bytes(batch_lines(150))
    batch_input = client.files.upload(file=requests_file, purpose="batch-api", check=False)
    created = client.batches.create(
        input_file_id=batch_input.id,
        endpoint="/v1/chat/completions",
        extra_headers={"x-sluice-split-batch": "true"},
    )
    assert created.job is not None and created.warning and "2 batches" in created.warning
    batch = wait_until(
        lambda: client.batches.retrieve(created.job.id),
        lambda b: b.status == "COMPLETED",
        within=30.0,
        every=0.2,
    )
    assert batch.progress == 100.0
    assert [b.id for b in client.batches.list()] == [created.job.id]
    parts = batch.model_extra["sluice"]["parts"]
    output = client.files.content(parts[0]["output_file_id"]).read()
    assert len(output.splitlines()) == 100

    # Without the option, the same file is refused with a clear error.
    with pytest.raises(Exception, match="at most 100"):
        client.batches.create(input_file_id=batch_input.id, endpoint="/v1/chat/completions")


def test_plain_multipart_upload_and_another_teams_jobs(jobs_server: Any) -> None:
    alpha, beta = jobs_server.issue_key("alpha"), jobs_server.issue_key("beta")
    with httpx.Client(base_url=f"{jobs_server.url}/v1", timeout=30) as http:
        answer = http.post(
            "/files",
            headers={"authorization": f"Bearer {alpha}"},
            data={"purpose": "fine-tune"},
            files={"file": ("t.jsonl", b'{"text": "x"}\n')},
        )
        assert answer.status_code == 200, answer.text
        file_id = answer.json()["id"]
        job = http.post(
            "/fine-tunes",
            headers={"authorization": f"Bearer {alpha}"},
            json={"model": MODEL, "training_file": file_id},
        ).json()
        other = http.get(f"/fine-tunes/{job['id']}", headers={"authorization": f"Bearer {beta}"})
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
        assert http.get("/fine-tunes", headers={"authorization": f"Bearer {beta}"}).json() == {
            "data": []
        }
        assert http.get("/batches", headers={"authorization": f"Bearer {beta}"}).json() == []
        assert http.get("/fine-tunes").status_code == 401

        # Files: one Together account holds both teams' files; each team sees its own only.
        as_beta = {"authorization": f"Bearer {beta}"}
        assert file_id in [
            f["id"]
            for f in http.get("/files", headers={"authorization": f"Bearer {alpha}"}).json()["data"]
        ]
        assert http.get("/files", headers=as_beta).json()["data"] == []
        for path in (f"/files/{file_id}", f"/files/{file_id}/content"):
            refused = http.get(path, headers=as_beta)
            assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found", (
                path
            )
        stolen = http.post(
            "/fine-tunes", headers=as_beta, json={"model": MODEL, "training_file": file_id}
        )
        assert stolen.status_code == 404
        assert http.delete(f"/files/{file_id}", headers=as_beta).status_code == 404
        assert (
            http.get(f"/files/{file_id}", headers={"authorization": f"Bearer {alpha}"}).status_code
            == 200
        )
