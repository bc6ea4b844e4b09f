"""Team API handlers for what Sluice forwards about a team's own objects: evaluations and
the fine-tune extras (preview, checkpoints, tokenized dataset).

Evaluations (`/v1/evaluation`) run in the one Together account for every team. Sluice
checks a create's body as it checks a job's (the input file must be the team's, the
models it names must not be another team's fine-tunes), forwards it, and records the
`workflow_id` Together answers as the team's (limiter.models.ManagedObject). A team lists,
reads and polls only its own: another team's id is answered as an unknown one, before
Together hears of it. Each forwarded call gets a usage row (limiter/gateway/recording.py).

The fine-tune extras name a fine-tune by Sluice's id, as every fine-tune route does: a
job of another team is answered as an unknown one (limiter/gateway/jobs.py `own_job`);
one still queued in Sluice has no checkpoints yet, nor a tokenized dataset.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async

from limiter import selectors, services
from limiter.gateway import errors
from limiter.gateway.catalog import model_not_found
from limiter.gateway.errors import ApiError
from limiter.gateway.http import Handler, Request, Response
from limiter.gateway.jobs import (
    check_job_body,
    key_of,
    own_files,
    own_job,
    pass_through,
    relay,
    require,
    send_upstream,
)
from limiter.gateway.recording import record_call
from limiter.jobs import fields
from limiter.jobs.models import JobKind
from limiter.jobs.ownership import owned_models, usable
from limiter.models import EndpointKind

EVALUATIONS = EndpointKind.EVALUATIONS.value  # what the team's evaluations are recorded as
MSG_EVALUATION_NOT_FOUND = "No evaluation with id '{id}' for this team."
MSG_NOT_STARTED = (
    "The fine-tune job '{id}' has not started upstream yet: it has no tokenized dataset."
)
MSG_PARAMETERS_NOT_OBJECT = "'parameters' must be an object."
INPUT_FILE = "input_data_file_path"
# Where an evaluation's parameters name models: a string, or an object with `model`.
MODEL_PARAMETERS = ("judge", "model_to_evaluate", "model_a", "model_b")


# --- evaluations ------------------------------------------------------------------------
def _evaluation_body(request: Request) -> dict[str, Any]:
    body = request.json()
    require(body, "type")
    parameters = body.get("parameters")
    if not isinstance(parameters, dict):
        raise ApiError(400, MSG_PARAMETERS_NOT_OBJECT, param="parameters", code="invalid_type")
    return body


def _named_models(parameters: dict[str, Any]) -> list[str]:
    named = []
    for name in MODEL_PARAMETERS:
        value = parameters.get(name)
        model = value.get("model") if isinstance(value, dict) else value
        if isinstance(model, str) and model:
            named.append(model)
    return named


async def evaluation_create(request: Request) -> Response:
    body = _evaluation_body(request)
    parameters = body["parameters"]
    if INPUT_FILE in parameters:
        await own_files(request, {f"parameters.{INPUT_FILE}": parameters[INPUT_FILE]})
    owners = await owned_models.owners()
    for model in _named_models(parameters):
        if not usable(owners, team_id=key_of(request).team_id, name=model):
            raise await model_not_found(key_of(request), model, param="parameters")
    response = await send_upstream(request, "/evaluation")
    workflow_id = _json_field(response.content, "workflow_id") if response.is_success else None
    if fields.is_upstream_id(workflow_id):
        await sync_to_async(services.managed_object_record)(
            team_id=key_of(request).team_id, kind=EVALUATIONS, object_id=str(workflow_id)
        )
    record_call(request, "evaluations", response.status_code)
    return relay(response)


async def evaluations_list(request: Request) -> Response:
    """Together's list (its filters passed on), of the team's evaluations only."""
    response = await send_upstream(request, "/evaluation")
    record_call(request, "evaluations", response.status_code)
    if not response.is_success:
        return relay(response)
    mine = await sync_to_async(selectors.managed_ids)(
        team_id=key_of(request).team_id, kind=EVALUATIONS
    )
    listing = response.json()
    rows = listing if isinstance(listing, list) else []
    return Response.json(
        [row for row in rows if isinstance(row, dict) and row.get("workflow_id") in mine]
    )


async def _owner(workflow_id: str) -> int | None:
    owners = await sync_to_async(selectors.managed_owners)(
        kind=EVALUATIONS, object_ids=[workflow_id]
    )
    return owners.get(workflow_id)


async def _own_evaluation(request: Request) -> str:
    """The path's evaluation id, escaped for the upstream path, if the team made it."""
    workflow_id = request.path_params["id"]
    if (
        not fields.is_upstream_id(workflow_id)
        or await _owner(workflow_id) != key_of(request).team_id
    ):
        raise ApiError(
            404,
            MSG_EVALUATION_NOT_FOUND.format(id=workflow_id[: errors.MAX_ECHOED_MODEL]),
            type=errors.NOT_FOUND,
            code="not_found",
        )
    return fields.path_segment(workflow_id)


async def evaluation_retrieve(request: Request) -> Response:
    response = await pass_through(request, f"/evaluation/{await _own_evaluation(request)}")
    record_call(request, "evaluations", response.status)
    return response


async def evaluation_status(request: Request) -> Response:
    response = await pass_through(request, f"/evaluation/{await _own_evaluation(request)}/status")
    record_call(request, "evaluations", response.status)
    return response


def _json_field(content: bytes, name: str) -> object:
    try:
        data = json.loads(content)
    except ValueError:
        return None
    return data.get(name) if isinstance(data, dict) else None


# --- fine-tune extras ------------------------------------------------------------------------
def _preview_body(request: Request) -> dict[str, Any]:
    body = request.json()
    require(body, "model", "training_file")
    return body


async def fine_tune_preview(request: Request) -> Response:
    """How a training file would be tokenized: the same checks as a create."""
    body = _preview_body(request)
    await check_job_body(request, body)
    response = await pass_through(request, "/fine-tunes/preview")
    record_call(request, "fine_tunes", response.status, model=str(body["model"]))
    return response


async def fine_tune_checkpoints(request: Request) -> Response:
    job = await own_job(request, JobKind.FINE_TUNE)
    if not job.upstream_id:
        return Response.json({"data": []})  # queued in Sluice: nothing trained yet
    path = f"/fine-tunes/{fields.path_segment(job.upstream_id)}/checkpoints"
    response = await pass_through(request, path)
    record_call(request, "fine_tunes", response.status)
    return response


async def fine_tune_tokenized_dataset(request: Request) -> Response:
    job = await own_job(request, JobKind.FINE_TUNE)
    if not job.upstream_id:
        raise ApiError(
            404, MSG_NOT_STARTED.format(id=job.public_id), type=errors.NOT_FOUND, code="not_found"
        )
    path = f"/fine-tunes/{fields.path_segment(job.upstream_id)}/download-tokenized-dataset"
    response = await pass_through(request, path)
    record_call(request, "fine_tunes", response.status)
    return response


CHECKED_FIRST: dict[Handler, Callable[[Request], object]] = {
    evaluation_create: _evaluation_body,
    fine_tune_preview: _preview_body,
}

# Literal paths before `{id}` ones: the router takes the first match. The fine-tune
# routes go before limiter/gateway/jobs.py's, whose `/v1/fine-tunes/{id}` would not take
# them anyway (a different method or depth).
ROUTES: list[tuple[str, str, str, Handler]] = [
    ("POST", "/v1/evaluation", "evaluations", evaluation_create),
    ("GET", "/v1/evaluation", "evaluations", evaluations_list),
    # Reads are paced too: unlike a job's, each one is a call to Together.
    ("GET", "/v1/evaluation/{id}", "evaluations", evaluation_retrieve),
    ("GET", "/v1/evaluation/{id}/status", "evaluations", evaluation_status),
    ("POST", "/v1/fine-tunes/preview", "fine_tunes", fine_tune_preview),
    ("GET", "/v1/fine-tunes/{id}/checkpoints", "fine_tunes", fine_tune_checkpoints),
    (
        "GET",
        "/v1/fine-tunes/{id}/download-tokenized-dataset",
        "fine_tunes",
        fine_tune_tokenized_dataset,
    ),
]
