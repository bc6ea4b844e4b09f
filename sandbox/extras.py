"""Videos, evaluations and the fine-tune extras, as Together answers them.

Shapes from the together SDK 3.1's types: `VideoJob` (`/v2/videos`), `EvaluationJob`,
`EvalCreateResponse` and `EvalStatusResponse` (`/v1/evaluation`),
`FineTunePreviewResponse`, `FineTuningListCheckpointsResponse` and
`FineTuneTokenizedDatasetRetrieveResponse` (`/v1/fine-tunes/...`). Videos and
evaluations run in accelerated time like fine-tunes (`video_seconds`,
`evaluation_seconds` in the config): their status is derived from the clock when read.
Each handler is `(state, request, id)`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .http import ApiError, Request, Response, json_response
from .inference import require
from .jobs import Job, iso
from .state import SandboxState

# What the sandbox bills a finished video, in `outputs.cost`: US dollars, as in the
# example answer of Together's video guide (docs.together.ai/docs/videos-overview:
# minimax/video-01-director, "cost": 0.28), though the SDK types it as an integer.
VIDEO_COST = 0.28
EVAL_TYPES = ("classify", "score", "compare")


@dataclass
class Video(Job):
    request: dict[str, Any] = field(default_factory=dict)

    def status(self, now: float) -> str:
        # Together's guide lists queued, in_progress, completed, failed, cancelled.
        if now >= self.finish_time():
            return "completed"
        return "queued" if now - self.started < self.duration * 0.1 else "in_progress"

    def to_json(self, now: float, base_url: str) -> dict[str, Any]:
        status = self.status(now)
        width, height = self.request.get("width") or 1280, self.request.get("height") or 720
        done = status == "completed"
        return {
            "id": self.id,
            "object": "video",
            "model": self.request.get("model"),
            "status": status,
            "created_at": self.created_wall,
            "completed_at": self.wall(self.finish_time()) if done else None,
            "seconds": str(self.request.get("seconds") or "5"),
            "size": f"{width}x{height}",
            # What was asked, as Together's video guide shows it (not in the SDK's type).
            "inputs": {
                "model": self.request.get("model"),
                "prompt": self.request.get("prompt"),
                "width": width,
                "height": height,
                "seconds": self.request.get("seconds"),
                "seed": self.request.get("seed"),
            },
            "error": None,
            "outputs": (
                {"cost": VIDEO_COST, "video_url": f"{base_url}/sandbox/videos/{self.id}.mp4"}
                if done
                else None
            ),
        }


@dataclass
class Evaluation(Job):
    request: dict[str, Any] = field(default_factory=dict)

    def status(self, now: float) -> str:
        if now >= self.finish_time():
            return "completed"
        return "pending" if now - self.started < self.duration * 0.2 else "running"

    def results(self, now: float) -> dict[str, Any] | None:
        if self.status(now) != "completed":
            return None
        kind = self.request.get("type")
        if kind == "compare":
            return {"A_wins": 3, "B_wins": 2, "Ties": 1, "generation_fail_count": 0}
        if kind == "score":
            return {
                "aggregated_scores": {"mean_score": 7.5, "std_score": 1.2, "pass_percentage": 80},
                "failed_samples": 0,
            }
        return {"pass_percentage": 80.0, "label_counts": '{"pass": 4, "fail": 1}'}

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "workflow_id": self.id,
            "type": self.request.get("type"),
            "status": self.status(now),
            "parameters": self.request.get("parameters"),
            "created_at": iso(self.created_wall),
            "updated_at": iso(self.wall(min(now, self.finish_time()))),
            "results": self.results(now),
        }


# --- videos ------------------------------------------------------------------------------
def videos_create(state: SandboxState, request: Request, _: str) -> Response:
    body = request.json_object()
    require(body, "model")
    video = Video(
        id=str(uuid.uuid4()),
        started=state.clock(),
        created_wall=state.wall_clock(),
        duration=state.config.video_seconds,
        request=body,
    )
    state.videos[video.id] = video
    return json_response(video.to_json(state.clock(), request.base_url))


def videos_list(state: SandboxState, request: Request, _: str) -> Response:
    now = state.clock()
    rows = [video.to_json(now, request.base_url) for video in state.videos.values()]
    return json_response({"object": "list", "data": rows})


def video_retrieve(state: SandboxState, request: Request, video_id: str) -> Response:
    video = state.videos.get(video_id)
    if video is None:
        raise ApiError(404, f"Video job {video_id} not found", code="not_found")
    return json_response(video.to_json(state.clock(), request.base_url))


# --- evaluations --------------------------------------------------------------------------
def evaluation_create(state: SandboxState, request: Request, _: str) -> Response:
    body = request.json_object()
    require(body, "type", "parameters")
    if body["type"] not in EVAL_TYPES:
        raise ApiError(400, f"type must be one of {', '.join(EVAL_TYPES)}", param="type")
    parameters = body["parameters"]
    if not isinstance(parameters, dict) or not parameters.get("input_data_file_path"):
        raise ApiError(400, "parameters.input_data_file_path is required", param="parameters")
    state._job_file(str(parameters["input_data_file_path"]), plain=False)
    evaluation = Evaluation(
        id="eval-" + uuid.uuid4().hex[:20],
        started=state.clock(),
        created_wall=state.wall_clock(),
        duration=state.config.evaluation_seconds,
        request=body,
    )
    state.evaluations[evaluation.id] = evaluation
    return json_response({"workflow_id": evaluation.id, "status": "pending"})


def evaluations_list(state: SandboxState, request: Request, _: str) -> Response:
    now = state.clock()
    return json_response([evaluation.to_json(now) for evaluation in state.evaluations.values()])


def _evaluation(state: SandboxState, workflow_id: str) -> Evaluation:
    evaluation = state.evaluations.get(workflow_id)
    if evaluation is None:
        raise ApiError(404, f"Evaluation job {workflow_id} not found", code="not_found")
    return evaluation


def evaluation_retrieve(state: SandboxState, request: Request, workflow_id: str) -> Response:
    return json_response(_evaluation(state, workflow_id).to_json(state.clock()))


def evaluation_status(state: SandboxState, request: Request, workflow_id: str) -> Response:
    evaluation, now = _evaluation(state, workflow_id), state.clock()
    return json_response({"status": evaluation.status(now), "results": evaluation.results(now)})


# --- fine-tune extras ------------------------------------------------------------------------
def fine_tune_preview(state: SandboxState, request: Request, _: str) -> Response:
    body = request.json_object()
    require(body, "model", "training_file")
    training = state._job_file(str(body["training_file"]), plain=False)
    lines = (training.content or b"").splitlines() if training else []
    rows = []
    for line in lines[: int(body.get("top_k") or 5)]:
        tokens = line.decode("utf-8", "replace").split()
        ids = list(range(1, len(tokens) + 1))
        rows.append(
            {
                "input_ids": ids,
                "labels": ids,
                "num_tokens": len(ids),
                "num_trained_tokens": len(ids),
                "tokens": tokens,
                "trained_spans": [[0, len(ids)]],
                "truncated": False,
            }
        )
    return json_response(
        {
            "dataset_format": "general",
            "max_seq_length": 8192,
            "model": body["model"],
            "rows": rows,
            "train_on_inputs": bool(body.get("train_on_inputs", False)),
        }
    )


def fine_tune_checkpoints(state: SandboxState, request: Request, job_id: str) -> Response:
    job, now = state.fine_tune_get(job_id), state.clock()
    if job.status(now) != "completed":
        return json_response({"data": []})
    name = job.to_json(now)["model_output_name"]
    steps = int(job.request.get("n_epochs", 1) or 1)
    return json_response(
        {
            "data": [
                {
                    "checkpoint_type": "Final" if step == steps else f"Intermediate step {step}",
                    "created_at": iso(job.wall(job.finish_time())),
                    "path": f"s3://sandbox-checkpoints/{job.id}/step-{step}",
                    "step": step,
                    "checkpoint": "model",
                    "object_name": name if step == steps else f"{name}-step-{step}",
                }
                for step in range(1, steps + 1)
            ]
        }
    )


def fine_tune_tokenized_dataset(state: SandboxState, request: Request, job_id: str) -> Response:
    job = state.fine_tune_get(job_id)
    return json_response(
        {
            "content_type": "application/gzip",
            "expires_at": iso(state.wall_clock() + 3600),
            "filename": f"{job.id}-tokenized.tar.gz",
            "size": job.trainingfile_size,
            "url": f"{request.base_url}/sandbox/tokenized/{job.id}.tar.gz",
        }
    )


ROUTES = [
    ("POST", r"/v2/videos", videos_create),
    ("GET", r"/v2/videos", videos_list),
    ("GET", r"/v2/videos/([^/]+)", video_retrieve),
    ("POST", r"/v1/evaluation", evaluation_create),
    ("GET", r"/v1/evaluation", evaluations_list),
    ("GET", r"/v1/evaluation/([^/]+)", evaluation_retrieve),
    ("GET", r"/v1/evaluation/([^/]+)/status", evaluation_status),
    ("POST", r"/v1/fine-tunes/preview", fine_tune_preview),
    ("GET", r"/v1/fine-tunes/([^/]+)/checkpoints", fine_tune_checkpoints),
    ("GET", r"/v1/fine-tunes/([^/]+)/download-tokenized-dataset", fine_tune_tokenized_dataset),
]
