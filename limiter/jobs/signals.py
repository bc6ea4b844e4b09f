"""What the jobs app does when the core's records change (connected in apps.py)."""

from __future__ import annotations

from typing import Any

from limiter.jobs.models import Job, JobState
from limiter.models import ApiKey


def queued_jobs_follow_rotation(sender: type, *, old: ApiKey, new: ApiKey, **kwargs: Any) -> None:
    """A rotation is hygiene, not a leak: the old key's queued jobs go on under the new
    one. (A revoked key's queued jobs never start: selectors.key_still_usable.)"""
    Job.objects.filter(key=old, state=JobState.QUEUED).update(key=new, key_prefix=new.prefix)
