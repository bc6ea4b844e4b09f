"""Team API handlers for files, fine-tunes and batches.

Files pass through to Together untouched (including the SDKs' redirect upload: the
redirect is not followed, its `Location` and `X-Together-File-Id` go back to the
caller). Fine-tunes and batches are accepted into Sluice's persistent queue and
started when the account has a free slot; see `limiter/jobs/services.py`.

Batches over the key's per-batch request cap are refused with a 400, unless the team
asks Sluice to split them: body field `"split": true` or header
`x-sluice-split-batch: true`. A split batch runs as several upstream batches under one
id; its parts are listed in the answer's `sluice.parts`.

A batch or fine-tune is checked against its team's and key's budgets before it is stored
(`hold_budget`): its estimate (limiter/jobs/estimates.py) must fit what they have left,
or it is refused with `budget_exceeded` (429 until the budget resets; 400 when the
estimate is more than the whole budget), and nothing is stored; it is checked again
when it starts (limiter/jobs/services.py).

Every team's files and fine-tuned models live in the one Together account, so every
route that names a file or a model checks that the team owns it (or that it is no
team's): a file id in a path, any `*_file` / `*_file_id` field of a job body, `model`
and `from_checkpoint`, and the models a batch file's requests name. Another team's is
answered exactly as an unknown one, before Together hears of it.

The router (limiter/gateway/app.py) authenticates the key, checks the body of a route
in `CHECKED_FIRST` (a 400 costs no quota and never queues), applies the per-key
request rate of the route's endpoint kind, fills `request.path_params` and maps ApiError.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings

from limiter.gateway import errors
from limiter.gateway.admission import limiter_silent, rate_limited
from limiter.gateway.catalog import model_not_found
from limiter.gateway.errors import ApiError
from limiter.gateway.http import Handler, Request, Response, StreamingResponse
from limiter.gateway.keys import KeyInfo
from limiter.gateway.recording import record_call
from limiter.gateway.sink import GATEWAY
from limiter.jobs import budgets, fields, selectors, services
from limiter.jobs.estimates import Estimate, batch_estimate, fine_tune_estimate
from limiter.jobs.models import ENDPOINT_OF_KIND, Job, JobKind, new_public_id
from limiter.jobs.ownership import model_key, owned_models, usable
from limiter.jobs.shapes import job_json
from limiter.upstream import UpstreamError, client
from limiter.usage.budgets import BUDGET_EXCEEDED
from limiter.usage.prices import prices
from limiter.usage.pricing import discounted

logger = logging.getLogger(__name__)

MSG_JOB_NOT_FOUND = "No {what} with id '{id}' for this team."
MSG_FILE_NOT_FOUND = "No file with id '{id}' for this team."
MSG_BATCH_TOO_LARGE = (
    "The input file holds {count} requests; batches on this key may carry at most {cap}. "
    'Split the file, or send "split": true (or the header x-sluice-split-batch: true) '
    "to have Sluice run it as several batches of at most {cap} requests, tracked as one."
)
MSG_BATCH_SPLIT = (
    "The input file holds {count} requests, over this key's cap of {cap} a batch: "
    "Sluice runs it as {parts} batches, tracked as one (see sluice.parts)."
)
MSG_QUEUED = "Accepted and queued in Sluice: it starts when the account has a free slot."
SPLIT_HEADER = "x-sluice-split-batch"
# Upstream answer headers worth passing on; content-type is set from the answer itself.
RELAYED_HEADERS = ("location", "x-together-file-id", "retry-after", "retry-after-ms")
RELAYED_PREFIXES = ("x-ratelimit-", "x-tokenlimit-")
TRUE_VALUES = ("1", "true", "yes", "on")
# Job body fields naming a model (`param` "model" in the error, as for inference) and a
# checkpoint (`ft-...` or `ft-...:step`, or a model name).
MODEL_FIELDS = ("model", "model_id")
CHECKPOINT_FIELD = "from_checkpoint"


JOB_WORDS = {JobKind.FINE_TUNE: "fine-tune job", JobKind.BATCH: "batch", JobKind.VIDEO: "video job"}


# --- plumbing ---------------------------------------------------------------------------
def key_of(request: Request) -> KeyInfo:
    assert request.key is not None  # the router authenticates before calling a handler
    return request.key


def relay(response: httpx.Response) -> Response:
    """Together's answer as it came: status, body, type and the headers that matter."""
    relayed = Response(
        status=response.status_code,
        body=response.content,
        content_type=response.headers.get("content-type", "application/json").encode("latin-1"),
    )
    for name, value in response.headers.items():
        if name.lower() in RELAYED_HEADERS or name.lower().startswith(RELAYED_PREFIXES):
            relayed.add_header(name, value)
    return relayed


def upstream_failed(exc: UpstreamError) -> ApiError:
    if exc.timeout:
        return ApiError(
            504, errors.MSG_UPSTREAM_TIMEOUT, type=errors.UPSTREAM, code="upstream_timeout"
        )
    return errors.upstream_unreachable()


async def send_upstream(request: Request, path: str, *, stream: bool = False) -> httpx.Response:
    headers = {"content-type": request.content_type} if request.content_type else {}
    try:
        outcome = await client.send(
            key_of(request).target,
            request.method,
            path,
            content=request.body or None,
            headers=headers,
            params=request.query_string or None,
            deadline=time.monotonic() + settings.SLUICE_UPSTREAM_DEADLINE,
            stream=stream,
        )
    except UpstreamError as exc:
        raise upstream_failed(exc) from exc
    return outcome.response


async def pass_through(request: Request, path: str) -> Response:
    return relay(await send_upstream(request, path))


def require(body: dict, *names: str) -> None:
    """Each named field must be a non-empty string (ids and model names are)."""
    for name in names:
        value = body.get(name)
        if value in (None, ""):
            raise ApiError(
                400, errors.MSG_FIELD_REQUIRED.format(field=name), param=name, code="missing_field"
            )
        if not isinstance(value, str):
            raise ApiError(
                400, errors.MSG_FIELD_NOT_STRING.format(field=name), param=name, code="invalid_type"
            )


async def own_job(request: Request, kind: str) -> Job:
    job_id = request.path_params["id"]
    job = await sync_to_async(selectors.job_get_for_team)(
        team_id=key_of(request).team_id, kind=kind, public_id=job_id
    )
    if job is None:
        what = JOB_WORDS[JobKind(kind)]
        raise ApiError(
            404,
            MSG_JOB_NOT_FOUND.format(what=what, id=job_id),
            type=errors.NOT_FOUND,
            code="not_found",
        )
    return job


async def shown_job(job: Job) -> dict:
    fresh = await sync_to_async(selectors.job_get_for_team)(
        team_id=job.team_id, kind=job.kind, public_id=job.public_id
    )
    return await sync_to_async(job_json)(fresh or job)


async def start_now(job: Job) -> services.StartResult | None:
    """Try to start queued work at once; the job is stored, so a failure here only delays it."""
    try:
        results = await services.jobs_start_queued(account_id=job.account_id, kind=job.kind)
    except Exception:
        logger.exception("starting %s at once failed; the poller will start it", job.public_id)
        return None
    return results.get(job.pk)


# --- what a team may name ----------------------------------------------------------------
# One Together account holds every team's files: a team sees, reads and deletes only the
# files it uploaded through Sluice or its jobs produced (selectors.file_ids_for_team).
async def _visible_files(request: Request) -> set[str]:
    return await sync_to_async(selectors.file_ids_for_team)(team_id=key_of(request).team_id)


def _file_not_found(file_id: str, param: str | None = None) -> ApiError:
    return ApiError(
        404,
        MSG_FILE_NOT_FOUND.format(id=file_id),
        type=errors.NOT_FOUND,
        code="not_found",
        param=param,
    )


async def own_files(request: Request, named: dict[str, Any]) -> None:
    """Each of `named` ({field: file id}) must be one of the team's files, or the call is
    answered 404 as for an unknown file (one query for them all)."""
    if not named:
        return
    for name, file_id in named.items():
        if not isinstance(file_id, str):
            raise ApiError(
                400, errors.MSG_FIELD_NOT_STRING.format(field=name), param=name, code="invalid_type"
            )
        if not fields.is_upstream_id(file_id):
            raise _file_not_found(file_id, name)  # not even shaped like an id: unknown, unasked
    missing = await sync_to_async(selectors.files_not_owned)(
        team_id=key_of(request).team_id, file_ids=set(named.values())
    )
    for name, file_id in named.items():
        if file_id in missing:
            raise _file_not_found(file_id, name)


async def _own_file(request: Request) -> str:
    """The path's file id, escaped for the upstream path, if the file is the team's."""
    file_id = request.path_params["id"]
    if not fields.is_upstream_id(file_id) or await sync_to_async(selectors.files_not_owned)(
        team_id=key_of(request).team_id, file_ids={file_id}
    ):
        raise _file_not_found(file_id)
    return fields.path_segment(file_id)


async def usable_models(request: Request, body: dict[str, Any]) -> None:
    """The models and checkpoint a job body names must not be another team's."""
    key = key_of(request)
    owners = await owned_models.owners()
    named = [(name, "model") for name in MODEL_FIELDS] + [(CHECKPOINT_FIELD, CHECKPOINT_FIELD)]
    for name, param in named:
        value = body.get(name)
        if isinstance(value, str) and not usable(owners, team_id=key.team_id, name=value):
            raise await model_not_found(key, value, param=param)


async def check_job_body(request: Request, body: dict[str, Any]) -> None:
    await own_files(request, fields.file_fields(body))
    await usable_models(request, body)


async def _note_shown(shown: list[dict[str, Any]]) -> None:
    """A team is about to learn its new model's name: if this process's map does not know
    the name yet (recorded by a poller whose broadcast has not arrived, or could not:
    the in-memory layer does not cross processes), reload it before anyone can use it."""
    names = [
        model_key(name) for job in shown if isinstance(name := job.get("model_output_name"), str)
    ]
    if names:
        owners = await owned_models.owners()
        if any(name not in owners for name in names):
            owned_models.clear()


# --- budgets ------------------------------------------------------------------------------
async def hold_budget(
    request: Request, kind: str, model: str, jobs: list[tuple[str, Estimate]]
) -> None:
    """Hold the new jobs' estimates against the key's and team's budgets, or refuse the
    create with `budget_exceeded` (reported to the refusal sink like a call's): 400 when
    an estimate is more than a budget's whole limit, else 429 with Retry-After to the
    budget's reset. The limiter silent: 503 (failure mode "open": unchecked here, its
    start is checked again)."""
    key = key_of(request)
    if not await sync_to_async(budgets.covered)(team_id=key.team_id):
        return
    try:
        verdict = await budgets.ask(
            key_id=key.key_id,
            version=key.config_version,
            kind=kind,
            action="accepted",
            jobs=jobs,
        )
    except budgets.LimiterSilent:
        limiter_silent(request.request_id)  # returns in failure mode "open": checked at start
        return
    if verdict.held:
        return
    assert request.handles is not None  # the team API hands every call its handles
    request.handles.refusals.refused(
        key,
        request.request_id,
        ENDPOINT_OF_KIND[JobKind(kind)],
        model,
        reason=BUDGET_EXCEEDED,
        source=GATEWAY,
        retry_after=verdict.retry_after,
        message=verdict.message,
    )
    if verdict.over_limit:
        raise ApiError(400, verdict.message, code=BUDGET_EXCEEDED)
    raise rate_limited(
        reason=BUDGET_EXCEEDED,
        retry_after=verdict.retry_after,
        message=verdict.message,
        limited_by=GATEWAY,
    )


async def accept_held(
    request: Request, kind: str, body: dict[str, Any], estimate: Estimate | None, **extra: Any
) -> Job:
    """Store a job its budgets hold (`hold_budget` done); should storing fail, the hold
    is let go (nothing else would: the job never existed)."""
    public_id = extra.pop("public_id")
    try:
        return await sync_to_async(services.job_accept)(
            key=key_of(request),
            kind=kind,
            request=body,
            public_id=public_id,
            estimate=estimate,
            **extra,
        )
    except BaseException:
        await budgets.let_go([public_id])
        raise


# --- files ----------------------------------------------------------------------------
async def files_create(request: Request) -> Response:
    response = await send_upstream(request, "/files")
    # Plain upload: the file object; the SDKs' redirect flow: X-Together-File-Id.
    file_id = response.headers.get("x-together-file-id")
    if file_id is None and response.is_success:
        with contextlib.suppress(ValueError, AttributeError):
            file_id = response.json().get("id")
    if fields.is_upstream_id(file_id) and (response.is_success or response.is_redirect):
        await sync_to_async(services.file_record)(
            team_id=key_of(request).team_id, file_id=str(file_id)
        )
    return relay(response)


async def files_list(request: Request) -> Response:
    response = await send_upstream(request, "/files")
    if not response.is_success:
        return relay(response)
    visible = await _visible_files(request)
    listing = response.json()
    rows = listing.get("data", []) if isinstance(listing, dict) else listing
    mine = [row for row in rows if isinstance(row, dict) and row.get("id") in visible]
    return Response.json({**listing, "data": mine} if isinstance(listing, dict) else mine)


async def file_retrieve(request: Request) -> Response:
    return await pass_through(request, f"/files/{await _own_file(request)}")


async def file_delete(request: Request) -> Response:
    return await pass_through(request, f"/files/{await _own_file(request)}")


async def file_preprocess(request: Request) -> Response:
    return await pass_through(request, f"/files/{await _own_file(request)}/preprocess")


async def file_content(request: Request) -> Response | StreamingResponse:
    # Streamed: output files can be large.
    response = await send_upstream(
        request, f"/files/{await _own_file(request)}/content", stream=True
    )
    record_call(request, "files", response.status_code)
    if not response.is_success:
        await response.aread()
        await response.aclose()
        return relay(response)
    return StreamingResponse(
        chunks=response.aiter_raw(),
        status=response.status_code,
        content_type=response.headers.get("content-type", "application/octet-stream").encode(
            "latin-1"
        ),
        on_close=response.aclose,
    )


# --- either kind of job --------------------------------------------------------------
async def listed_jobs(request: Request, kind: str) -> list[dict]:
    jobs = await sync_to_async(selectors.job_list_for_team)(
        team_id=key_of(request).team_id, kind=kind
    )
    shown = await sync_to_async(lambda: [job_json(job) for job in jobs])()
    await _note_shown(shown)
    return shown


async def retrieve_job(request: Request, kind: str) -> Response:
    job = await own_job(request, kind)
    shown = await sync_to_async(job_json)(job)
    await _note_shown([shown])
    return Response.json(shown)


async def _cancel(request: Request, kind: str) -> Response:
    """A queued job is cancelled here and never starts; a running one is cancelled upstream."""
    job = await own_job(request, kind)
    try:
        job = await services.job_cancel(job=job)
    except services.UpstreamRefused as exc:
        return relay(exc.response)
    except UpstreamError as exc:
        raise upstream_failed(exc) from exc
    return Response.json(await shown_job(job))


# --- fine-tunes -----------------------------------------------------------------------
def _fine_tune_body(request: Request) -> dict[str, Any]:
    body = request.json()
    require(body, "training_file", "model")
    return body


async def fine_tunes_create(request: Request) -> Response:
    body = _fine_tune_body(request)
    await check_job_body(request, body)
    public_id = new_public_id(JobKind.FINE_TUNE)
    estimate = None
    if budgets.enabled():
        size = await services.file_size(key=key_of(request), file_id=str(body["training_file"]))
        estimate = fine_tune_estimate(body, size or 0)
        await hold_budget(request, JobKind.FINE_TUNE, str(body["model"]), [(public_id, estimate)])
    job = await accept_held(request, JobKind.FINE_TUNE, body, estimate, public_id=public_id)
    result = await start_now(job)
    if result is not None and result.outcome == "failed" and result.response is not None:
        return relay(result.response)  # Together refused it outright: say so, as Together would
    return Response.json(await shown_job(job))


async def fine_tunes_list(request: Request) -> Response:
    return Response.json({"data": await listed_jobs(request, JobKind.FINE_TUNE)})


async def fine_tune_retrieve(request: Request) -> Response:
    return await retrieve_job(request, JobKind.FINE_TUNE)


async def fine_tune_cancel(request: Request) -> Response:
    return await _cancel(request, JobKind.FINE_TUNE)


async def fine_tune_events(request: Request) -> Response:
    job = await own_job(request, JobKind.FINE_TUNE)
    if not job.upstream_id:
        return Response.json({"data": []})
    return await pass_through(request, f"/fine-tunes/{fields.path_segment(job.upstream_id)}/events")


async def fine_tune_model_limits(request: Request) -> Response:
    """What the together SDK asks before creating a job: the model's training limits."""
    query = parse_qs(request.query_string.decode("latin-1"))
    for model in query.get("model_name", []):
        if not await owned_models.usable(team_id=key_of(request).team_id, name=model):
            raise await model_not_found(key_of(request), model)
    response = await pass_through(request, "/fine-tunes/models/limits")
    record_call(request, "fine_tunes", response.status)
    return response


async def fine_tune_estimate_price(request: Request) -> Response:
    """Together prices a job from its files: the same checks as a create."""
    body = request.json()
    await check_job_body(request, body)
    response = await pass_through(request, "/fine-tunes/estimate-price")
    record_call(request, "fine_tunes", response.status, model=str(body.get("model") or ""))
    return response


# --- batches ----------------------------------------------------------------------------
def _split_requested(request: Request, body: dict) -> bool:
    # Popped from the body: Together does not know the field.
    in_body = body.pop("split", False)
    in_header = request.headers.get(SPLIT_HEADER, "").strip().lower() in TRUE_VALUES
    return in_body is True or str(in_body).lower() in TRUE_VALUES or in_header


def _batch_body(request: Request) -> tuple[dict[str, Any], bool]:
    body = dict(request.json())
    split = _split_requested(request, body)
    require(body, "endpoint", "input_file_id")
    return body, split


async def batches_create(request: Request) -> Response:
    body, split = _batch_body(request)
    await check_job_body(request, body)
    key = key_of(request)
    plan = await _batch_plan(key, body, split)
    if isinstance(plan, Response):
        return plan
    ids = [new_public_id(JobKind.BATCH) for _ in plan.lines]
    estimates = await _batch_hold(request, key, body, plan, ids)
    warning: str | None
    if plan.part_files:
        job, warning = await _batch_accept_split(key, body, plan, ids, estimates)
    else:
        job = await accept_held(
            request,
            JobKind.BATCH,
            body,
            estimates[0] if estimates else None,
            public_id=ids[0],
            request_count=plan.request_count,
        )
        result = await start_now(job)
        if result is not None and result.outcome == "failed" and result.response is not None:
            return relay(result.response)
        warning = result.warning if result is not None and result.outcome == "started" else None
    shown = await shown_job(job)
    if shown["status"] == "QUEUED":
        warning = " ".join(filter(None, [warning, MSG_QUEUED]))
    answer: dict[str, object] = {"job": shown}
    if warning:
        answer["warning"] = warning
    return Response.json(answer, status=201)


async def _batch_plan(
    key: KeyInfo, body: dict[str, Any], split: bool
) -> services.BatchPlan | Response:
    """The batch's input file counted against the key's cap (and split, if asked), or
    Together's refusal to relay."""
    owners = await owned_models.owners()
    try:
        return await services.batch_plan(
            key=key,
            input_file_id=str(body["input_file_id"]),
            split=split,
            model_usable=lambda model: usable(owners, team_id=key.team_id, name=model),
        )
    except services.ModelNotUsable as exc:
        raise await model_not_found(key, exc.model) from exc
    except services.BatchTooLarge as exc:
        raise ApiError(
            400,
            MSG_BATCH_TOO_LARGE.format(count=exc.count, cap=exc.cap),
            param="input_file_id",
            code="batch_too_large",
        ) from exc
    except services.UpstreamRefused as exc:
        return relay(exc.response)
    except UpstreamError as exc:
        raise upstream_failed(exc) from exc


async def _batch_hold(
    request: Request,
    key: KeyInfo,
    body: dict[str, Any],
    plan: services.BatchPlan,
    ids: list[str],
) -> list[Estimate] | None:
    """Each part's estimate, held against the budgets under its id (None: budgets off).
    Refused: the parts Sluice uploaded go."""
    if not budgets.enabled():
        return None
    factor = Decimal(str(settings.SLUICE_BATCH_PRICE_FACTOR))
    model_id = body.get("model_id")
    fallback = model_id if isinstance(model_id, str) else ""
    estimates = [
        batch_estimate(
            lines,
            str(body["endpoint"]),
            fallback,
            lambda m: discounted(prices.price(m), factor),
        )
        for lines in plan.lines
    ]
    try:
        await hold_budget(request, JobKind.BATCH, fallback, list(zip(ids, estimates, strict=True)))
    except ApiError:
        await services.batch_parts_delete(key=key, plan=plan)
        raise
    return estimates


async def _batch_accept_split(
    key: KeyInfo,
    body: dict[str, Any],
    plan: services.BatchPlan,
    ids: list[str],
    estimates: list[Estimate] | None,
) -> tuple[Job, str]:
    """Store a split batch and start its parts; the warning that says it was split."""
    try:
        job = await sync_to_async(services.batch_accept_split)(
            key=key, request=body, plan=plan, part_ids=ids, estimates=estimates
        )
    except BaseException:
        await budgets.let_go(ids)
        raise
    warning = MSG_BATCH_SPLIT.format(
        count=plan.request_count, cap=key.max_batch_requests, parts=len(plan.part_files)
    )
    await start_now(job)  # starts its parts, in fair order with everyone else's
    return job, warning


async def batches_list(request: Request) -> Response:
    return Response.json(
        await listed_jobs(request, JobKind.BATCH)
    )  # a bare array, as Together answers


async def batch_retrieve(request: Request) -> Response:
    return await retrieve_job(request, JobKind.BATCH)


async def batch_cancel(request: Request) -> Response:
    return await _cancel(request, JobKind.BATCH)


# Checked by the router before admission: a body that fails is answered 400 at once,
# without spending the key's request rate or queueing for it.
CHECKED_FIRST: dict[Handler, Callable[[Request], object]] = {
    fine_tunes_create: _fine_tune_body,
    fine_tune_estimate_price: Request.json,
    batches_create: _batch_body,
}

# Literal paths come before `{id}` ones: the router takes the first match.
ROUTES: list[tuple[str, str, str, Handler]] = [
    ("POST", "/v1/files", "files", files_create),
    ("GET", "/v1/files", "files", files_list),
    ("GET", "/v1/files/{id}", "files", file_retrieve),
    ("DELETE", "/v1/files/{id}", "files", file_delete),
    ("GET", "/v1/files/{id}/content", "files", file_content),
    ("POST", "/v1/files/{id}/preprocess", "files", file_preprocess),
    ("GET", "/v1/fine-tunes/models/limits", "fine_tunes", fine_tune_model_limits),
    ("POST", "/v1/fine-tunes/estimate-price", "fine_tunes", fine_tune_estimate_price),
    ("POST", "/v1/fine-tunes", "fine_tunes", fine_tunes_create),
    ("GET", "/v1/fine-tunes", "", fine_tunes_list),
    ("GET", "/v1/fine-tunes/{id}", "", fine_tune_retrieve),
    ("POST", "/v1/fine-tunes/{id}/cancel", "fine_tunes", fine_tune_cancel),
    ("GET", "/v1/fine-tunes/{id}/events", "fine_tunes", fine_tune_events),
    ("POST", "/v1/batches", "batches", batches_create),
    ("GET", "/v1/batches", "", batches_list),
    ("GET", "/v1/batches/{id}", "", batch_retrieve),
    ("POST", "/v1/batches/{id}/cancel", "batches", batch_cancel),
]
