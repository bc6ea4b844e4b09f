"""Files, fine-tunes and batches: the stateful endpoints. Each handler is `(state, request, id)`."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import parse_qs

from .files import parse_multipart
from .http import ApiError, Request, Response, json_response
from .inference import require
from .state import SandboxState

# Values the together SDK's FileResponse accepts; anything else would break its parsing.
FILE_PURPOSES = ("fine-tune", "calibration", "eval", "batch-api")
UPLOAD_PATH = "/sandbox-upload"
UPLOAD_SIGNATURE_REFUSED = "The upload URL's signature does not match this file."


# --- files ---------------------------------------------------------------------------
def upload_signature(state: SandboxState, file_id: str) -> str:
    """What makes an upload URL secret, like object storage's presigned URLs: the PUT
    carries no API key (the SDKs send none there), and a file id alone is no secret."""
    return hmac.new(state.upload_secret, file_id.encode(), hashlib.sha256).hexdigest()


def _form_fields(request: Request) -> tuple[dict[str, str], tuple[str, bytes] | None]:
    """Text fields and the optional (filename, bytes) file part of an upload request.

    Fields may come as multipart parts, a urlencoded or JSON body, or query parameters:
    the SDKs differ, and all of them mean the same thing.
    """
    fields = {name: values[-1] for name, values in request.query.items()}
    content_type = request.headers.get("content-type", "")
    upload: tuple[str, bytes] | None = None
    if content_type.startswith("multipart/form-data"):
        try:
            parts = parse_multipart(content_type, request.body)
        except ValueError as exc:
            raise ApiError(400, f"Malformed multipart body: {exc}") from exc
        for part in parts:
            if part.name == "file" and part.filename is not None:
                upload = (part.filename, part.data)
            else:
                fields[part.name] = part.data.decode("utf-8", "replace")
    elif content_type.startswith("application/x-www-form-urlencoded"):
        fields.update({k: v[-1] for k, v in parse_qs(request.body.decode("latin-1")).items()})
    elif request.body.strip():
        fields.update({k: str(v) for k, v in request.json_object().items()})
    return fields, upload


def files_create(state: SandboxState, request: Request, _: str) -> Response:
    fields, upload = _form_fields(request)
    purpose = fields.get("purpose") or ""
    if purpose not in FILE_PURPOSES:
        raise ApiError(400, f"purpose must be one of {', '.join(FILE_PURPOSES)}", param="purpose")
    if upload is not None:
        filename, content = upload
        stored = state.file_create(
            filename=fields.get("file_name") or filename, purpose=purpose, content=content
        )
        return json_response(stored.to_json())
    # No file part: the SDK's signed-URL flow. It PUTs the bytes to Location, then preprocesses.
    stored = state.file_create(
        filename=fields.get("file_name") or "upload.jsonl", purpose=purpose, content=None
    )
    headers = {
        "location": (
            f"{request.base_url}{UPLOAD_PATH}/{stored.id}"
            f"?signature={upload_signature(state, stored.id)}"
        ),
        "x-together-file-id": stored.id,
    }
    return json_response({"id": stored.id, "upload_url": headers["location"]}, 302, headers)


def file_put_bytes(state: SandboxState, request: Request, file_id: str) -> Response:
    """The signed-URL target. Like object storage it needs no API key: the URL is the secret."""
    signature = (request.query.get("signature") or [""])[-1]
    if not hmac.compare_digest(signature.encode(), upload_signature(state, file_id).encode()):
        raise ApiError(
            403, UPLOAD_SIGNATURE_REFUSED, error_type="permission_error", code="forbidden"
        )
    state.file_get(file_id).content = request.body
    return Response(200, b"", content_type="text/plain")


def file_preprocess(state: SandboxState, request: Request, file_id: str) -> Response:
    stored = state.file_get(file_id)
    if stored.content is None:
        raise ApiError(400, f"File {file_id} has no uploaded content yet")
    return json_response(stored.to_json())


def files_list(state: SandboxState, request: Request, _: str) -> Response:
    return json_response({"object": "list", "data": [f.to_json() for f in state.files.values()]})


def file_retrieve(state: SandboxState, request: Request, file_id: str) -> Response:
    return json_response(state.file_get(file_id).to_json())


def file_content(state: SandboxState, request: Request, file_id: str) -> Response:
    content = state.file_get(file_id).content or b""
    return Response(200, content, content_type="application/octet-stream")


def file_delete(state: SandboxState, request: Request, file_id: str) -> Response:
    state.file_get(file_id)
    del state.files[file_id]
    return json_response({"id": file_id, "object": "file", "deleted": True})


# --- fine-tunes --------------------------------------------------------------------
def fine_tunes_create(state: SandboxState, request: Request, _: str) -> Response:
    body = request.json_object()
    require(body, "training_file", "model")
    job = state.fine_tune_create(body)
    return json_response(job.to_json(state.clock()))


def fine_tunes_list(state: SandboxState, request: Request, _: str) -> Response:
    now = state.clock()
    return json_response({"data": [job.to_json(now) for job in state.fine_tunes.values()]})


def fine_tune_retrieve(state: SandboxState, request: Request, job_id: str) -> Response:
    return json_response(state.fine_tune_get(job_id).to_json(state.clock()))


def fine_tune_cancel(state: SandboxState, request: Request, job_id: str) -> Response:
    return json_response(state.fine_tune_cancel(job_id).to_json(state.clock()))


def fine_tune_events(state: SandboxState, request: Request, job_id: str) -> Response:
    state.fine_tune_get(job_id)
    return json_response({"data": []})


def fine_tune_model_limits(state: SandboxState, request: Request, _: str) -> Response:
    """What `client.fine_tuning.create` fetches first; generous fixed limits."""
    model = (request.query.get("model_name") or [""])[-1]
    batch = {"max_batch_size": 96, "max_batch_size_dpo": 48, "min_batch_size": 8}
    limits: dict[str, Any] = {
        "model_name": model,
        "default_gradient_accumulation_steps": 1,
        "lora_training": {
            **batch,
            "default_rank": 64,
            "max_rank": 64,
            "target_modules": ["all-linear"],
        },
        "full_training": batch,
        "max_learning_rate": 1.0,
        "min_learning_rate": 0.0,
        "max_num_checkpoints": 10,
        "max_num_epochs": 20,
        "max_num_evals": 10,
        "max_seq_length_sft": 8192,
        "max_seq_length_dpo": 8192,
        "min_max_seq_length": 512,
        "merge_output_lora": True,
        "supports_full_training": True,
        "supports_reasoning": False,
        "supports_tools": False,
        "supports_vision": False,
    }
    return json_response(limits)


def fine_tune_estimate_price(state: SandboxState, request: Request, _: str) -> Response:
    """The SDK asks for a price before creating a job; the sandbox is always affordable."""
    body = request.json_object()
    training = state.files.get(str(body.get("training_file", "")))
    tokens = len((training.content or b"").split()) if training else 0
    return json_response(
        {
            "estimation_available": True,
            "allowed_to_proceed": True,
            "estimated_total_price": 0.0,
            "estimated_train_token_count": tokens,
            "estimated_eval_token_count": 0,
            "user_limit": 1_000_000.0,
        }
    )


# --- batches --------------------------------------------------------------------------
def batches_create(state: SandboxState, request: Request, _: str) -> Response:
    try:
        body = request.json_object()
    except ApiError as error:
        raise ApiError(400, error.message, plain=True) from error
    for name in ("endpoint", "input_file_id"):
        if not body.get(name):
            raise ApiError(400, f"{name} is required", plain=True)
    job = state.batch_create(body)
    return json_response({"job": state.batch_json(job)}, 201)


def batches_list(state: SandboxState, request: Request, _: str) -> Response:
    # A bare array, unlike the other list endpoints.
    return json_response([state.batch_json(job) for job in state.batches.values()])


def batch_retrieve(state: SandboxState, request: Request, batch_id: str) -> Response:
    return json_response(state.batch_json(state.batch_get(batch_id)))


def batch_cancel(state: SandboxState, request: Request, batch_id: str) -> Response:
    return json_response(state.batch_json(state.batch_cancel(batch_id)))
