"""Jobs as the team sees them: Together's shapes, with Sluice's id and a `sluice` field.

A job Together has seen is shown as Together last showed it; one still waiting in
Sluice's queue is built from its request, with status "queued" (fine-tunes, a status
Together itself uses) or "QUEUED" (batches). The `id` is always Sluice's public id,
stable from the moment the job is accepted. Secret fields (`wandb_api_key`, any
`*_api_key`, `*_token`, `*_secret`) are never shown, whether from the request or from
Together's view (see `limiter.jobs.fields`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from limiter.jobs.fields import without_secrets
from limiter.jobs.models import BATCH_TERMINAL, Job, JobKind, JobState


def job_json(job: Job) -> dict[str, Any]:
    """Needs `job.parts` prefetched for a split batch."""
    if job.kind == JobKind.FINE_TUNE:
        return _fine_tune(job)
    if job.kind == JobKind.VIDEO:
        return _video(job)
    if job.state == JobState.GROUP:
        return _split_batch(job)
    return _batch(job)


def display_status(job: Job) -> str:
    if job.state in (JobState.QUEUED, JobState.STARTING):
        return "QUEUED" if job.kind == JobKind.BATCH else "queued"
    return job.upstream_status


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _sluice(job: Job, **extra: Any) -> dict[str, Any]:
    return {
        "state": job.state,
        "upstream_id": job.upstream_id,
        "team": job.team.name if job.team_id else None,
        "accepted_at": _iso(job.created_at),
        "error": job.error or None,
        **extra,
    }


def _fine_tune(job: Job) -> dict[str, Any]:
    if job.upstream:
        data = without_secrets(job.upstream)
    else:
        data = without_secrets(job.request)
        data.update(
            object="fine-tune",
            model_output_name=None,
            events=[],
            created_at=_iso(job.created_at),
            updated_at=_iso(job.finished_at or job.created_at),
            started_at=None,
        )
    data.update(id=job.public_id, status=display_status(job), sluice=_sluice(job))
    return data


def _video(job: Job) -> dict[str, Any]:
    """The together SDK's VideoJob; one queued in Sluice is "queued", as on Together."""
    if job.upstream:
        data = without_secrets(job.upstream)
    else:
        request = job.request
        width, height = request.get("width"), request.get("height")
        data = {
            "object": "video",
            "model": request.get("model"),
            "created_at": job.created_at.timestamp(),
            "completed_at": job.finished_at.timestamp() if job.finished_at else None,
            "seconds": str(request.get("seconds") or ""),
            "size": f"{width}x{height}" if width and height else "",
            "error": {"message": job.error, "code": None} if job.error else None,
            "outputs": None,
        }
    data.update(id=job.public_id, status=display_status(job), sluice=_sluice(job))
    return data


def _batch(job: Job) -> dict[str, Any]:
    if job.upstream:
        data = without_secrets(job.upstream)
    else:
        data = {
            "user_id": None,
            "input_file_id": job.request.get("input_file_id"),
            "file_size_bytes": None,
            "job_deadline": None,
            "created_at": _iso(job.created_at),
            "endpoint": job.request.get("endpoint"),
            "progress": 0.0,
            "model_id": job.request.get("model_id"),
            "output_file_id": None,
            "error_file_id": None,
            "error": job.error or None,
            "completed_at": None,
        }
    data.update(
        id=job.public_id,
        status=display_status(job),
        sluice=_sluice(job, request_count=job.request_count),
    )
    return data


def _split_batch(job: Job) -> dict[str, Any]:
    parts = sorted(job.parts.all(), key=lambda part: part.pk)
    shown = [_batch(part) for part in parts]
    counts = [part.request_count or 0 for part in parts]
    total = sum(counts) or 1
    progress = (
        sum(float(p.get("progress") or 0) * n for p, n in zip(shown, counts, strict=True)) / total
    )
    return {
        "id": job.public_id,
        "user_id": None,
        "input_file_id": job.request.get("input_file_id"),
        "file_size_bytes": None,
        "status": split_status([p["status"] for p in shown]),
        "job_deadline": None,
        "created_at": _iso(job.created_at),
        "endpoint": job.request.get("endpoint"),
        "progress": round(progress, 1),
        "model_id": job.request.get("model_id"),
        # Each part has its own output file: see sluice.parts.
        "output_file_id": None,
        "error_file_id": None,
        "error": None,
        "completed_at": max((p.get("completed_at") or "" for p in shown), default="") or None
        if all(p["status"] in BATCH_TERMINAL for p in shown)
        else None,
        "sluice": _sluice(job, request_count=job.request_count, parts=shown),
    }


def split_status(statuses: list[str]) -> str:
    """One status for a split batch: running while any part runs; then the worst ending."""
    if any(status not in BATCH_TERMINAL for status in statuses):
        return "QUEUED" if all(status == "QUEUED" for status in statuses) else "IN_PROGRESS"
    for ending in ("FAILED", "EXPIRED", "CANCELLED"):
        if ending in statuses:
            return ending
    return "COMPLETED"
