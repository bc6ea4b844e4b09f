"""Together's job endpoints as the job services need them: paths, body shapes, matching.

Fine-tunes and batches differ in small ways (a batch create answers `{job, warning}`,
the batch list is a bare array, fine-tune lists are `{"data": [...]}`); this module
hides those differences. All HTTP still goes through `limiter.upstream.client`; every id
put into a path is escaped as one segment.

Creates (a job, a file) are sent once: after a timeout or a 502 Together may have
made the thing, and a retry would make a second one Sluice never tracks. Reads,
cancels and deletes are safe to repeat and keep the client's retries.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from django.conf import settings

from limiter.jobs.fields import path_segment
from limiter.jobs.models import Job, JobKind
from limiter.upstream import Target, client

logger = logging.getLogger(__name__)

# Videos live under Together's /v2/ (limiter/upstream.py Target.url).
COLLECTION = {
    JobKind.FINE_TUNE: "/fine-tunes",
    JobKind.BATCH: "/batches",
    JobKind.VIDEO: "/v2/videos",
}
# What an upstream job made by an interrupted start is recognised by, besides its time.
MATCHED_FIELDS = {
    JobKind.FINE_TUNE: ("training_file", "model"),
    JobKind.BATCH: ("input_file_id",),
    JobKind.VIDEO: ("model", "prompt"),
}
JSON_HEADERS = {"content-type": "application/json"}
# An upstream job created this long before our claim cannot be the one we started.
CLOCK_SKEW = timedelta(minutes=5)


def start_deadline() -> float:
    """Seconds one start (or poll) call may take, retries included."""
    return settings.SLUICE_JOB_START_DEADLINE


def _deadline(seconds: float | None = None) -> float:
    return time.monotonic() + (seconds if seconds is not None else start_deadline())


async def submit(target: Target, job: Job, *, deadline: float | None = None) -> httpx.Response:
    """Create the job upstream, once. No answer or a 5xx is settled by its marker later."""
    outcome = await client.send(
        target,
        "POST",
        COLLECTION[JobKind(job.kind)],
        content=_json_bytes(job.request),
        headers=JSON_HEADERS,
        deadline=_deadline(deadline),
        max_retries=0,  # not idempotent: see the module docstring
    )
    return outcome.response


async def fetch(target: Target, kind: str, upstream_id: str) -> httpx.Response:
    path = f"{COLLECTION[JobKind(kind)]}/{path_segment(upstream_id)}"
    return (await client.send(target, "GET", path, deadline=_deadline(), max_retries=1)).response


async def cancel(target: Target, kind: str, upstream_id: str) -> httpx.Response:
    path = f"{COLLECTION[JobKind(kind)]}/{path_segment(upstream_id)}/cancel"
    return (await client.send(target, "POST", path, deadline=_deadline())).response


async def list_jobs(target: Target, kind: str) -> list[dict[str, Any]] | None:
    """Every job upstream knows of this kind, or None when it could not be read."""
    response = (
        await client.send(target, "GET", COLLECTION[JobKind(kind)], deadline=_deadline())
    ).response
    if response.status_code != 200:
        logger.warning("listing upstream %s jobs answered %s", kind, response.status_code)
        return None
    data = response.json()
    items = data.get("data", []) if isinstance(data, dict) else data
    return [item for item in items if isinstance(item, dict)]


async def file_content(target: Target, file_id: str) -> httpx.Response:
    return (
        await client.send(
            target, "GET", f"/files/{path_segment(file_id)}/content", deadline=_deadline()
        )
    ).response


async def file_meta(target: Target, file_id: str) -> httpx.Response:
    """The file object (its `bytes`: a fine-tune's estimate is made of its size)."""
    path = f"/files/{path_segment(file_id)}"
    return (await client.send(target, "GET", path, deadline=_deadline())).response


async def file_upload(
    target: Target, *, filename: str, content: bytes, purpose: str
) -> httpx.Response:
    # httpx builds the multipart body; it is sent as plain bytes through the shared client.
    form = httpx.Request(
        "POST",
        "http://multipart.invalid/",
        data={"purpose": purpose, "file_name": filename},
        files={"file": (filename, content, "application/jsonl")},
    )
    body = form.read()
    headers = {"content-type": form.headers["content-type"]}
    outcome = await client.send(
        target,
        "POST",
        "/files",
        content=body,
        headers=headers,
        deadline=_deadline(),
        max_retries=0,  # a retried upload leaves an orphan file behind
    )
    return outcome.response


async def file_delete(target: Target, file_id: str) -> httpx.Response:
    path = f"/files/{path_segment(file_id)}"
    return (await client.send(target, "DELETE", path, deadline=_deadline())).response


def created_object(kind: str, data: Any) -> dict[str, Any]:
    """The job inside a create answer: a batch create wraps it as `{job, warning}`."""
    if kind == JobKind.BATCH and isinstance(data, dict) and isinstance(data.get("job"), dict):
        return data["job"]
    return data if isinstance(data, dict) else {}


def find_started(
    job: Job, items: list[dict[str, Any]], *, taken: set[str]
) -> dict[str, Any] | None:
    """The upstream job an interrupted start of `job` created, if any.

    Fine-tunes carry Sluice's marker in their `suffix` (so in the output model name)
    unless the team chose a suffix; batches have no such field, so they match on their
    input file and creation time, and an id another job already owns is never taken.
    """
    since = (job.claimed_at or job.created_at) - CLOCK_SKEW
    for item in items:
        upstream_id = str(item.get("id") or "")
        if not upstream_id or upstream_id in taken:
            continue
        if job.kind == JobKind.FINE_TUNE and job.request.get("suffix") == job.marker:
            if job.marker in str(item.get("model_output_name") or item.get("suffix") or ""):
                return item
            continue
        fields = MATCHED_FIELDS[JobKind(job.kind)]
        if all(_field(item, name) == job.request.get(name) for name in fields) and _created_since(
            item, since
        ):
            return item
    return None


def _field(item: dict[str, Any], name: str) -> Any:
    # A video job shows its request under `inputs` (Together's video guide).
    inputs = item.get("inputs")
    if name not in item and isinstance(inputs, dict):
        return inputs.get(name)
    return item.get(name)


def _created_since(item: dict[str, Any], since: datetime) -> bool:
    raw = item.get("created_at")
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return datetime.fromtimestamp(raw, UTC) >= since  # a video's: Unix seconds
    try:
        created = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return True  # no usable time: the other fields must do
    if created.tzinfo is None:
        return True
    return created >= since


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data).encode()
