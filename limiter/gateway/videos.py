"""Team API handlers for video jobs: the together SDK's `/v2/videos`.

A video is a job like a fine-tune (limiter/jobs/services.py): accepted into Sluice's
persistent queue, started when the account (and the team) has a free slot of the
profile's `videos` row (`max_concurrent`; the rest wait, queued, instead of being
refused), polled until Together reports it ended, and its cost recorded then
(limiter/usage/job_reports.py `video_usage`). Its estimate (its price) is held against
the team's and key's budgets from its create, as a fine-tune's is: over budget, the
create is refused with `budget_exceeded`, and a queued one waits until it fits. It is the
team's that made it: another team's id, by Sluice's id or Together's, is answered as an
unknown one.

The id a team gets is Sluice's (`video-sluice-...`), stable from the create on; the
answer is Together's VideoJob as last seen, or, while queued, one built from the
request with status "queued" (as Together's own queue shows it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from limiter.gateway import errors
from limiter.gateway.errors import ApiError
from limiter.gateway.http import Handler, Request, Response
from limiter.gateway.jobs import (
    accept_held,
    hold_budget,
    listed_jobs,
    relay,
    require,
    retrieve_job,
    shown_job,
    start_now,
    usable_models,
)
from limiter.jobs import budgets
from limiter.jobs.estimates import video_estimate
from limiter.jobs.models import JobKind, new_public_id
from limiter.usage.prices import prices


def _video_body(request: Request) -> dict[str, Any]:
    body = request.json()
    require(body, "model")
    if len(body["model"]) > errors.MAX_ECHOED_MODEL:
        # No model id is this long; the usage and 429 records keep the model.
        raise ApiError(
            400,
            errors.MSG_MODEL_TOO_LONG.format(limit=errors.MAX_ECHOED_MODEL),
            code="invalid_value",
            param="model",
        )
    return body


async def videos_create(request: Request) -> Response:
    body = _video_body(request)
    await usable_models(request, body)  # not another team's fine-tuned model
    model = str(body["model"])
    public_id = new_public_id(JobKind.VIDEO)
    estimate = None
    if budgets.enabled():
        # Held like a fine-tune's (checked again when it starts): over budget, refused.
        estimate = video_estimate(model, prices.price(model))
        await hold_budget(request, JobKind.VIDEO, model, [(public_id, estimate)])
    job = await accept_held(request, JobKind.VIDEO, body, estimate, public_id=public_id)
    result = await start_now(job)
    if result is not None and result.outcome == "failed" and result.response is not None:
        return relay(result.response)  # Together refused it outright: say so, as it would
    return Response.json(await shown_job(job))


async def videos_list(request: Request) -> Response:
    return Response.json({"object": "list", "data": await listed_jobs(request, JobKind.VIDEO)})


async def video_retrieve(request: Request) -> Response:
    return await retrieve_job(request, JobKind.VIDEO)


CHECKED_FIRST: dict[Handler, Callable[[Request], object]] = {videos_create: _video_body}

ROUTES: list[tuple[str, str, str, Handler]] = [
    ("POST", "/v2/videos", "videos", videos_create),
    ("GET", "/v2/videos", "", videos_list),
    ("GET", "/v2/videos/{id}", "", video_retrieve),
]
