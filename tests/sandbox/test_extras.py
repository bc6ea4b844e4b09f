"""The sandbox's videos, evaluations and fine-tune extras: Together's shapes (the together
SDK 3.1's types), and the life cycle in accelerated time, driven by a clock moved by hand."""

from __future__ import annotations

import json
from typing import Any

from sandbox import SandboxApp
from sandbox.config import SandboxConfig
from sandbox.extras import VIDEO_COST
from sandbox.state import SandboxState

from .conftest import FakeClock, call, post_json


def _app(clock: FakeClock) -> SandboxApp:
    app = SandboxApp()
    app.state = SandboxState(
        SandboxConfig(video_seconds=10.0, evaluation_seconds=10.0), clock=clock
    )
    return app


async def _get(app: SandboxApp, path: str) -> tuple[int, Any]:
    status, _headers, raw = await call(app, "GET", path)
    return status, json.loads(raw)


async def test_a_video_is_queued_then_in_progress_then_completed_with_its_cost() -> None:
    clock = FakeClock()
    app = _app(clock)
    status, _h, video = await post_json(app, "/v2/videos", {"model": "m", "prompt": "p"})
    assert status == 200
    assert (video["object"], video["status"], video["outputs"]) == ("video", "queued", None)
    clock.now += 5
    assert (await _get(app, f"/v2/videos/{video['id']}"))[1]["status"] == "in_progress"
    clock.now += 5
    done = (await _get(app, f"/v2/videos/{video['id']}"))[1]
    assert done["status"] == "completed" and done["outputs"]["cost"] == VIDEO_COST
    assert done["completed_at"] >= done["created_at"]
    assert [row["id"] for row in (await _get(app, "/v2/videos"))[1]["data"]] == [video["id"]]
    assert (await _get(app, "/v2/videos/nope"))[0] == 404


async def test_an_evaluation_needs_a_known_file_and_completes_with_results() -> None:
    clock = FakeClock()
    app = _app(clock)
    body = {"type": "score", "parameters": {"input_data_file_path": "file-nope"}}
    assert (await post_json(app, "/v1/evaluation", body))[0] == 400
    stored = app.state.file_create(filename="e.jsonl", purpose="eval", content=b"{}\n")
    body["parameters"]["input_data_file_path"] = stored.id
    status, _h, created = await post_json(app, "/v1/evaluation", body)
    assert status == 200 and created["status"] == "pending"
    workflow = created["workflow_id"]
    assert (await _get(app, f"/v1/evaluation/{workflow}/status"))[1] == {
        "status": "pending",
        "results": None,
    }
    clock.now += 10
    polled = (await _get(app, f"/v1/evaluation/{workflow}/status"))[1]
    assert polled["status"] == "completed" and "aggregated_scores" in polled["results"]
    listed = (await _get(app, "/v1/evaluation"))[1]
    assert [row["workflow_id"] for row in listed] == [workflow]
    assert (await _get(app, "/v1/evaluation/eval-nope"))[0] == 404


async def test_checkpoints_appear_once_a_fine_tune_completes() -> None:
    clock = FakeClock()
    app = _app(clock)
    stored = app.state.file_create(filename="t.jsonl", purpose="fine-tune", content=b"a b\nc\n")
    status, _h, job = await post_json(
        app, "/v1/fine-tunes", {"model": "m", "training_file": stored.id, "n_epochs": 2}
    )
    assert status == 200
    assert (await _get(app, f"/v1/fine-tunes/{job['id']}/checkpoints"))[1] == {"data": []}
    clock.now += app.state.config.fine_tune_seconds
    points = (await _get(app, f"/v1/fine-tunes/{job['id']}/checkpoints"))[1]["data"]
    assert [point["step"] for point in points] == [1, 2]
    dataset = (await _get(app, f"/v1/fine-tunes/{job['id']}/download-tokenized-dataset"))[1]
    assert dataset["size"] == len(b"a b\nc\n")
    preview = (
        await post_json(app, "/v1/fine-tunes/preview", {"model": "m", "training_file": stored.id})
    )[2]
    assert [row["num_tokens"] for row in preview["rows"]] == [2, 1]
